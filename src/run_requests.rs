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
//!   it.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::audit;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("run requests: {0}")]
    Db(#[from] rusqlite::Error),
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

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Request> {
    Ok(Request {
        id: r.get(0)?,
        partner: r.get(1)?,
        requested_by: r.get(2)?,
        requested_at: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        run_id: r.get(6)?,
        outcome: r.get(7)?,
    })
}

/// Ask for a run of `partner` now (the caller checks the partner exists).
/// Returns the request and whether it is new (`false`: one was already
/// open, and is returned instead).
pub fn request(
    conn: &mut Connection,
    partner: &str,
    actor: &str,
    client: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(Request, bool), RequestError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some(open) = open_of(&tx, partner)? {
        return Ok((open, false));
    }
    tx.execute(
        "INSERT INTO run_requests(partner, requested_by, requested_at) VALUES (?1, ?2, ?3)",
        params![partner, actor, crate::db::now_text(now)],
    )?;
    let id = tx.last_insert_rowid();
    audit::record(
        &tx,
        &audit::Entry {
            actor,
            action: "run-now",
            partner: Some(partner),
            detail: &format!("run request {id}"),
            client,
        },
    )?;
    let r = tx.query_row(
        &format!("SELECT {COLUMNS} FROM run_requests WHERE id = ?1"),
        [id],
        row,
    )?;
    tx.commit()?;
    Ok((r, true))
}

/// The open (queued or running) request of `partner`, if any.
pub fn open_of(conn: &Connection, partner: &str) -> Result<Option<Request>, RequestError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM run_requests WHERE partner = ?1 AND finished_at IS NULL \
                 ORDER BY id LIMIT 1"
            ),
            [partner],
            row,
        )
        .optional()?)
}

/// Every queued request, oldest first (what the daemon polls).
pub fn queued(conn: &Connection) -> Result<Vec<Request>, RequestError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM run_requests WHERE started_at IS NULL AND finished_at IS NULL ORDER BY id"
    ))?;
    let rows = st.query_map([], row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The latest `n` requests of `partner`, newest first.
pub fn recent(conn: &Connection, partner: &str, n: i64) -> Result<Vec<Request>, RequestError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM run_requests WHERE partner = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = st
        .query_map(params![partner, n], row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Mark request `id` started, if it is still queued. `false`: someone else
/// started (or finished) it.
pub fn claim(conn: &Connection, id: i64, now: DateTime<Utc>) -> Result<bool, RequestError> {
    Ok(conn.execute(
        "UPDATE run_requests SET started_at = ?2 WHERE id = ?1 AND started_at IS NULL AND finished_at IS NULL",
        params![id, crate::db::now_text(now)],
    )? == 1)
}

/// Put a claimed request back in the queue (the daemon stopped before the
/// run could start): the next daemon runs it.
pub fn unclaim(conn: &Connection, id: i64) -> Result<(), RequestError> {
    conn.execute(
        "UPDATE run_requests SET started_at = NULL WHERE id = ?1 AND finished_at IS NULL",
        [id],
    )?;
    Ok(())
}

/// Record how request `id` ended: the run it became (if one started) and
/// its outcome.
pub fn finish(
    conn: &Connection,
    id: i64,
    now: DateTime<Utc>,
    run_id: Option<i64>,
    outcome: &str,
) -> Result<(), RequestError> {
    conn.execute(
        "UPDATE run_requests SET finished_at = ?2, run_id = ?3, outcome = ?4, \
         started_at = COALESCE(started_at, ?2) WHERE id = ?1 AND finished_at IS NULL",
        params![id, crate::db::now_text(now), run_id, outcome],
    )?;
    Ok(())
}

/// At daemon start: requests left `running` by a daemon that died are
/// finished as `interrupted` (the run itself, if any, rolled back with the
/// process or finished: `runs` says which). Returns how many.
pub fn interrupt_running(conn: &Connection, now: DateTime<Utc>) -> Result<usize, RequestError> {
    Ok(conn.execute(
        "UPDATE run_requests SET finished_at = ?1, outcome = 'interrupted' \
         WHERE started_at IS NOT NULL AND finished_at IS NULL",
        [crate::db::now_text(now)],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::db::temp_db as db;

    #[test]
    fn a_request_goes_queued_running_done_once_and_is_audited() {
        let (_d, mut conn) = db();
        let now = Utc::now();
        let (r, new) = request(&mut conn, "shop", "user:o@x", Some("127.0.0.1"), now).unwrap();
        assert!(new);
        assert_eq!(r.state(), State::Queued);
        // Asking again while it is open gives the same request.
        let (again, new) = request(&mut conn, "shop", "user:o@x", None, now).unwrap();
        assert!(!new);
        assert_eq!(again.id, r.id);
        assert_eq!(queued(&conn).unwrap(), vec![r.clone()]);
        assert!(claim(&conn, r.id, now).unwrap());
        assert!(!claim(&conn, r.id, now).unwrap(), "claimed once only");
        assert!(queued(&conn).unwrap().is_empty());
        assert_eq!(
            open_of(&conn, "shop").unwrap().unwrap().state(),
            State::Running
        );
        finish(&conn, r.id, now, Some(7), "ok").unwrap();
        let done = recent(&conn, "shop", 5).unwrap();
        assert_eq!(done[0].state(), State::Done);
        assert_eq!(
            (done[0].run_id, done[0].outcome.as_deref()),
            (Some(7), Some("ok"))
        );
        assert!(open_of(&conn, "shop").unwrap().is_none());
        let audited: i64 = conn
            .query_row(
                "SELECT count(*) FROM audit WHERE action = 'run-now' AND partner = 'shop' AND client = '127.0.0.1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(audited, 1, "one audit row per request, not per ask");
    }

    #[test]
    fn unclaimed_requests_queue_again_and_dead_runs_are_interrupted() {
        let (_d, mut conn) = db();
        let now = Utc::now();
        let (a, _) = request(&mut conn, "a", "x", None, now).unwrap();
        let (b, _) = request(&mut conn, "b", "x", None, now).unwrap();
        assert!(claim(&conn, a.id, now).unwrap());
        unclaim(&conn, a.id).unwrap();
        assert_eq!(queued(&conn).unwrap().len(), 2);
        assert!(claim(&conn, b.id, now).unwrap());
        assert_eq!(interrupt_running(&conn, now).unwrap(), 1);
        let b = recent(&conn, "b", 1).unwrap().remove(0);
        assert_eq!(
            (b.state(), b.outcome.as_deref()),
            (State::Done, Some("interrupted"))
        );
        assert_eq!(queued(&conn).unwrap()[0].id, a.id);
    }

    #[test]
    fn a_request_queued_over_a_minute_is_stale() {
        let (_d, mut conn) = db();
        let then = Utc::now() - chrono::Duration::seconds(61);
        let (r, _) = request(&mut conn, "a", "x", None, then).unwrap();
        assert!(r.stale(Utc::now()));
        assert!(!r.stale(then + chrono::Duration::seconds(30)));
        claim(&conn, r.id, Utc::now()).unwrap();
        let r = recent(&conn, "a", 1).unwrap().remove(0);
        assert!(!r.stale(Utc::now()), "running is not stale");
    }
}
