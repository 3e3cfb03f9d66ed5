//! "Run now" requests: the management site records one (`serve` holds no
//! transfer credentials, so it cannot run a partner itself); the daemon
//! (`milebatch run`) polls for queued ones, runs the partner under the same
//! per-partner lock as a scheduled run, and records the run and its
//! outcome here.
//!
//! What must stay true:
//! - a request is `queued` (not started), `running` (started, not
//!   finished) or `done` (finished: `run_id` and `outcome`); every step is
//!   a single-row UPDATE guarded by the previous state, so two pollers can
//!   never both start one request;
//! - a partner has at most one open (queued or running) request: asking
//!   again while one is open returns that one;
//! - every request is audited (`run-now`) in the transaction that records
//!   it;
//! - the same statements run on SQLite and PostgreSQL (`crate::store`);
//!   "one open request per partner" is a check-then-insert under
//!   [`Exec::lock`] on the partner, so it holds across hosts too.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Exec, Row, StoreError};
use crate::audit;
use crate::store_args as args;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("run requests: {0}")]
    Db(#[from] StoreError),
}

/// One request, as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Request {
    pub id: i64,
    pub partner: String,
    pub requested_by: String,
    pub requested_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub run_id: Option<i64>,
    pub outcome: Option<String>,
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Queued,
    Running,
    Done,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
        }
    }
}

/// How long a request may stay queued before the site says the daemon is
/// not picking it up (it polls every [`POLL`]).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How often the daemon looks for queued requests.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(2);

impl Request {
    pub fn state(&self) -> State {
        match (&self.started_at, &self.finished_at) {
            (_, Some(_)) => State::Done,
            (Some(_), None) => State::Running,
            (None, None) => State::Queued,
        }
    }

    /// Queued for longer than [`STALE_AFTER`] at `now`: no daemon is
    /// taking requests.
    pub fn stale(&self, now: DateTime<Utc>) -> bool {
        self.state() == State::Queued
            && DateTime::parse_from_rfc3339(&self.requested_at).is_ok_and(|t| {
                now.signed_duration_since(t)
                    > chrono::Duration::from_std(STALE_AFTER).unwrap_or_default()
            })
    }
}

const COLUMNS: &str =
    "id, partner, requested_by, requested_at, started_at, finished_at, run_id, outcome";

fn request_of(r: &Row) -> Result<Request, StoreError> {
    Ok(Request {
        id: r.int(0)?,
        partner: r.text(1)?,
        requested_by: r.text(2)?,
        requested_at: r.text(3)?,
        started_at: r.opt_text(4)?,
        finished_at: r.opt_text(5)?,
        run_id: r.opt_int(6)?,
        outcome: r.opt_text(7)?,
    })
}

fn requests_of(rows: Vec<Row>) -> Result<Vec<Request>, RequestError> {
    Ok(rows.iter().map(request_of).collect::<Result<_, _>>()?)
}

/// Ask for a run of `partner` now (the caller checks the partner exists).
/// Returns the request and whether it is new (`false`: one was already
/// open, and is returned instead). One write transaction of its own.
pub fn request<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    actor: &str,
    client: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(Request, bool), RequestError> {
    super::write(db, |tx| {
        tx.lock(&format!("run-request:{partner}"))?;
        if let Some(open) = open_of(tx, partner)? {
            return Ok((open, false));
        }
        let rows = tx.query(
            &format!(
                "INSERT INTO run_requests(partner, requested_by, requested_at) VALUES (?1, ?2, ?3) \
                 RETURNING {COLUMNS}"
            ),
            args![partner, actor, crate::db::now_text(now).as_str()],
        )?;
        let r = requests_of(rows)?.pop().ok_or(StoreError::Decode {
            column: 0,
            wanted: "the inserted request",
        })?;
        super::audit::append(
            tx,
            &audit::Entry {
                actor,
                action: "run-now",
                partner: Some(partner),
                detail: &format!("run request {}", r.id),
                client,
            },
            now,
        )?;
        Ok((r, true))
    })
}

/// The open (queued or running) request of `partner`, if any.
pub fn open_of<E: Exec + ?Sized>(db: &E, partner: &str) -> Result<Option<Request>, RequestError> {
    Ok(db
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM run_requests WHERE partner = ?1 AND finished_at IS NULL \
                 ORDER BY id LIMIT 1"
            ),
            args![partner],
        )?
        .as_ref()
        .map(request_of)
        .transpose()?)
}

/// Every queued request, oldest first (what the daemon polls).
pub fn queued<E: Exec + ?Sized>(db: &E) -> Result<Vec<Request>, RequestError> {
    requests_of(db.query(
        &format!(
            "SELECT {COLUMNS} FROM run_requests WHERE started_at IS NULL AND finished_at IS NULL ORDER BY id"
        ),
        &[],
    )?)
}

/// The latest `n` requests of `partner`, newest first.
pub fn recent<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    n: i64,
) -> Result<Vec<Request>, RequestError> {
    requests_of(db.query(
        &format!("SELECT {COLUMNS} FROM run_requests WHERE partner = ?1 ORDER BY id DESC LIMIT ?2"),
        args![partner, n],
    )?)
}

/// Mark request `id` started, if it is still queued. `false`: someone else
/// started (or finished) it.
pub fn claim<E: Exec + ?Sized>(db: &E, id: i64, now: DateTime<Utc>) -> Result<bool, RequestError> {
    Ok(db.execute(
        "UPDATE run_requests SET started_at = ?2 WHERE id = ?1 AND started_at IS NULL AND finished_at IS NULL",
        args![id, crate::db::now_text(now).as_str()],
    )? == 1)
}

/// Put a claimed request back in the queue (the daemon stopped before the
/// run could start): the next daemon runs it.
pub fn unclaim<E: Exec + ?Sized>(db: &E, id: i64) -> Result<(), RequestError> {
    db.execute(
        "UPDATE run_requests SET started_at = NULL WHERE id = ?1 AND finished_at IS NULL",
        args![id],
    )?;
    Ok(())
}

/// Record how request `id` ended: the run it became (if one started) and
/// its outcome.
pub fn finish<E: Exec + ?Sized>(
    db: &E,
    id: i64,
    now: DateTime<Utc>,
    run_id: Option<i64>,
    outcome: &str,
) -> Result<(), RequestError> {
    db.execute(
        "UPDATE run_requests SET finished_at = ?2, run_id = ?3, outcome = ?4, \
         started_at = COALESCE(started_at, ?2) WHERE id = ?1 AND finished_at IS NULL",
        args![id, crate::db::now_text(now).as_str(), run_id, outcome],
    )?;
    Ok(())
}

/// At daemon start: requests left `running` by a daemon that died are
/// finished as `interrupted` (the run itself, if any, rolled back with the
/// process or finished: `runs` says which). Returns how many.
pub fn interrupt_running<E: Exec + ?Sized>(
    db: &E,
    now: DateTime<Utc>,
) -> Result<usize, RequestError> {
    Ok(db.execute(
        "UPDATE run_requests SET finished_at = ?1, outcome = 'interrupted' \
         WHERE started_at IS NOT NULL AND finished_at IS NULL",
        args![crate::db::now_text(now).as_str()],
    )? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::db::temp_db as db;

    // The request life cycle, the audit row, claims and interruption are
    // tested on both engines from the same code: tests/store_conformance.rs.

    #[test]
    fn a_request_queued_over_a_minute_is_stale() {
        let (_d, conn) = db();
        let then = Utc::now() - chrono::Duration::seconds(61);
        let (r, _) = request(&conn, "a", "x", None, then).unwrap();
        assert!(r.stale(Utc::now()));
        assert!(!r.stale(then + chrono::Duration::seconds(30)));
        claim(&conn, r.id, Utc::now()).unwrap();
        let r = recent(&conn, "a", 1).unwrap().remove(0);
        assert!(!r.stale(Utc::now()), "running is not stale");
    }
}
