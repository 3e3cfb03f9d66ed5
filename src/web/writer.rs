//! The group-commit writer: one thread owns the web process's writing
//! SQLite connection. Requests (credits, verify calls) come in over a
//! channel; each batch of waiting requests is one `BEGIN IMMEDIATE`
//! transaction, and each credit in it is all-or-nothing under its own
//! `SAVEPOINT` (a verify call writes one audit row). So concurrent API
//! calls share one commit (one fsync) instead of paying one each.
//!
//! What must stay true:
//! - no answer leaves before the transaction holding it has committed
//!   (WAL, `synchronous = FULL`): a 201 the client saw survives a crash;
//! - an `Idempotency-Key` is claimed by a UNIQUE row in the same
//!   transaction as its ledger row and balance: a key credits at most once,
//!   even across processes and restarts, and its stored answer is replayed;
//! - nothing is written for a key that is not live in the same
//!   transaction (`api_keys::is_live`), whatever the key cache held;
//! - while the batch daemon holds the write lock, the writer waits
//!   (`busy_timeout`); requests queue, they never fail with SQLITE_BUSY.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::db::{self, DbError};
use crate::pipeline::validate::{self, Code, Rules};

/// Most requests in one transaction.
const MAX_BATCH: usize = 512;
/// Requests waiting for the writer; senders wait when it is full.
const QUEUE: usize = 8192;
/// `last_used_at` of a key is refreshed at most this often.
const TOUCH_EVERY_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("the database writer has stopped")]
    Stopped,
    #[error("committing API requests: {0}")]
    Commit(String),
    #[error("starting the database writer thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for WriterError {
    fn from(e: rusqlite::Error) -> Self {
        WriterError::Db(DbError::Sql(e))
    }
}

/// One `POST /api/v1/exchanges`, checked for shape by the handler.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub partner: String,
    /// The calling key: confirmed live in the transaction.
    pub key_id: i64,
    pub key_prefix: String,
    pub idem_key: String,
    /// SHA-256 of the canonical request: "same body" means same hash.
    pub request_sha256: String,
    pub member: String,
    pub partner_key: String,
    /// Miles as CSV text would carry them (`"120"`, or something that
    /// fails E006).
    pub miles: String,
    pub rules: Rules,
    /// E010 for a partner key already in the ledger (from a file or the API).
    pub unique_partner_key: bool,
    pub daily_miles_limit: u64,
    /// Today in the configured zone (`YYYY-MM-DD`), and seconds to its end.
    pub day: String,
    pub secs_to_next_day: u64,
}

/// The writer's answer to an [`Exchange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stored answer (201 credited or 422 rejected); `replayed` when
    /// an earlier request with the same key made it.
    Stored {
        status: u16,
        body: String,
        replayed: bool,
    },
    /// The key was used before with another body.
    KeyReused,
    /// Crediting this would pass the partner's daily cap; nothing stored,
    /// so a retry tomorrow may succeed.
    DailyCap { retry_after: u64 },
    /// The calling key was revoked (or deleted); nothing stored.
    KeyRevoked,
}

/// One `POST /api/v1/members/verify`: look up and audit, in one
/// transaction.
#[derive(Debug, Clone)]
pub struct VerifyCall {
    pub member_id: String,
    pub email: String,
    pub partner: String,
    /// The calling key: confirmed live in the transaction.
    pub key_id: i64,
    /// The audit actor (the calling key) and the key's prefix.
    pub actor: String,
    pub key_prefix: String,
    pub client: Option<String>,
}

enum Job {
    Exchange(Box<Exchange>, oneshot::Sender<Result<Outcome, WriterError>>),
    Verify(
        Box<VerifyCall>,
        oneshot::Sender<Result<Option<bool>, WriterError>>,
    ),
    Touch {
        key_id: i64,
        now: String,
    },
}

/// The handle request handlers use. Cheap to share.
pub struct Writer {
    tx: mpsc::Sender<Job>,
    in_flight: Mutex<HashSet<(String, String)>>,
    tz: chrono_tz::Tz,
}

/// A key is already being processed (answer 409).
#[derive(Debug)]
pub struct InFlight;

impl Writer {
    /// Open the database at `path` on a new thread and start taking
    /// requests. The thread ends when the last `Writer` handle is dropped.
    pub fn start(path: &Path, tz: chrono_tz::Tz) -> Result<Arc<Writer>, WriterError> {
        let conn = db::open(path)?;
        // Every statement of a request stays prepared (rusqlite keeps 16).
        conn.set_prepared_statement_cache_capacity(64);
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("api-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(WriterError::Thread)?;
        Ok(Arc::new(Writer {
            tx,
            in_flight: Mutex::new(HashSet::new()),
            tz,
        }))
    }

    /// The configured zone, for daily limits.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.tz
    }

    /// Credit (or reject, or replay) one exchange; returns once its
    /// transaction has committed. `Err(InFlight)` at once when the same
    /// partner's same key is still being processed.
    pub async fn exchange(&self, x: Exchange) -> Result<Result<Outcome, WriterError>, InFlight> {
        let slot = (x.partner.clone(), x.idem_key.clone());
        if !self.lock().insert(slot.clone()) {
            return Err(InFlight);
        }
        // Free the slot however this ends, a dropped request included: the
        // UNIQUE claim, not this set, is what prevents a double credit.
        let _guard = SlotGuard {
            writer: self,
            slot: Some(slot),
        };
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Job::Exchange(Box::new(x), reply))
            .await
            .is_err()
        {
            return Ok(Err(WriterError::Stopped));
        }
        Ok(answer.await.unwrap_or(Err(WriterError::Stopped)))
    }

    /// Whether the call's member ID and e-mail name the same active member
    /// ([`crate::members::same_active_member`]); returns once the call's
    /// audit row (key prefix and result, never the e-mail) is committed.
    /// `None` when the calling key was revoked: no look-up, no audit row.
    /// The writer's connection does the look-up: its page cache is warm,
    /// where a reader's is emptied by every commit of the writer.
    pub async fn verify(&self, call: VerifyCall) -> Result<Option<bool>, WriterError> {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Job::Verify(Box::new(call), reply))
            .await
            .is_err()
        {
            return Err(WriterError::Stopped);
        }
        answer.await.unwrap_or(Err(WriterError::Stopped))
    }

    /// Refresh a key's `last_used_at` if it is older than a minute, and
    /// return the time sent. Never waits: under a full queue the refresh
    /// is dropped.
    pub fn touch_key(&self, caller: &super::auth::api_keys::Caller) -> Option<String> {
        let now = chrono::Utc::now();
        let stale = caller
            .last_used_at
            .as_deref()
            .and_then(crate::timefmt::parse_stored)
            .is_none_or(|t| (now - t).num_seconds() >= TOUCH_EVERY_SECS);
        if !stale {
            return None;
        }
        let now = db::now_text(now);
        self.tx
            .try_send(Job::Touch {
                key_id: caller.key_id,
                now: now.clone(),
            })
            .ok()
            .map(|()| now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct SlotGuard<'a> {
    writer: &'a Writer,
    slot: Option<(String, String)>,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.slot.take() {
            self.writer.lock().remove(&s);
        }
    }
}

fn run(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch);
    }
}

/// One transaction for `batch`; answers are sent only after the commit.
fn run_batch(conn: &mut Connection, batch: Vec<Job>) {
    let n = batch.len();
    let mut answers = Vec::with_capacity(n);
    let mut verified = Vec::new();
    let result = (|| -> Result<(), WriterError> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for job in batch {
            match job {
                Job::Touch { key_id, now } => {
                    // A failed refresh of `last_used_at` is not worth a
                    // request's answer.
                    if let Err(e) = super::auth::api_keys::touch(conn, key_id, &now) {
                        tracing::warn!(error = %e, key_id, "could not record an API key's last use");
                    }
                }
                Job::Verify(v, reply) => {
                    let out = verify(conn, &v);
                    verified.push((reply, out));
                }
                Job::Exchange(x, reply) => {
                    conn.prepare_cached("SAVEPOINT x")?.execute([])?;
                    let out = exchange(conn, &x);
                    if out.is_err() {
                        conn.prepare_cached("ROLLBACK TO x")?.execute([])?;
                    }
                    conn.prepare_cached("RELEASE x")?.execute([])?;
                    answers.push((reply, out));
                }
            }
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| WriterError::Commit(e.to_string()))
    })();
    match result {
        Ok(()) => {
            tracing::debug!(requests = n, "API batch committed");
            for (reply, out) in answers {
                let _ = reply.send(out);
            }
            for (reply, out) in verified {
                let _ = reply.send(out);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, requests = n, "API batch rolled back");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            for (reply, _) in answers {
                let _ = reply.send(Err(WriterError::Commit(e.to_string())));
            }
            for (reply, _) in verified {
                let _ = reply.send(Err(WriterError::Commit(e.to_string())));
            }
        }
    }
}

/// One exchange inside the batch's transaction.
fn exchange(conn: &Connection, x: &Exchange) -> Result<Outcome, WriterError> {
    // Before anything, a stored answer's replay included: a revoked key
    // gets nothing.
    if !super::auth::api_keys::is_live(conn, x.key_id)? {
        return Ok(Outcome::KeyRevoked);
    }
    let earlier: Option<(String, u16, String)> = conn
        .prepare_cached(
            "SELECT request_sha256, status, body FROM api_exchanges WHERE partner = ?1 AND idem_key = ?2",
        )?
        .query_row(params![x.partner, x.idem_key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    if let Some((sha, status, body)) = earlier {
        return Ok(if sha == x.request_sha256 {
            Outcome::Stored {
                status,
                body,
                replayed: true,
            }
        } else {
            Outcome::KeyReused
        });
    }
    // E009 first, as for a CSV row that cannot be decoded.
    let checked = match validate::text_clean(&[&x.member, &x.partner_key])
        .and_then(|()| validate::member_present(&x.member))
    {
        Err(code) => Err(code),
        Ok(()) => {
            // Cached statements: preparing a `Lookup` (four statements)
            // per request was the writer thread's largest cost.
            let found = crate::members::find_one(conn, &x.member)?;
            validate::after_lookup(found, Cow::Borrowed(&x.partner_key), &x.miles, &x.rules)
                .map(|v| (v.member, v.key.into_owned(), v.miles))
        }
    };
    let now = chrono::Utc::now();
    let created_at = db::now_text(now);
    let id: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM api_exchanges")?
        .query_row([], |r| r.get(0))?;
    let (status, code, body, credit) = match checked {
        Err(code) => (422u16, Some(code), rejected_body(code), None),
        Ok((_, key, _)) if x.unique_partner_key && key_credited(conn, &x.partner, &key)? => {
            (422u16, Some(Code::E010), rejected_body(Code::E010), None)
        }
        Ok((member, key, miles)) => {
            let today: i64 = conn
                .prepare_cached("SELECT miles FROM api_daily WHERE partner = ?1 AND day = ?2")?
                .query_row(params![x.partner, x.day], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            if (today as u64).saturating_add(miles) > x.daily_miles_limit {
                return Ok(Outcome::DailyCap {
                    retry_after: x.secs_to_next_day.max(1),
                });
            }
            let body = serde_json::json!({
                "id": id,
                "partner_key": key,
                "miles": miles,
                "credited_at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
            .to_string();
            (201u16, None, body, Some((member, key, miles)))
        }
    };
    conn.prepare_cached(
        "INSERT INTO api_exchanges(id, partner, idem_key, request_sha256, key_prefix, status, code, body, member, partner_key, miles, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        id,
        x.partner,
        x.idem_key,
        x.request_sha256,
        x.key_prefix,
        status,
        code.map(Code::as_str),
        body,
        credit.as_ref().map(|c| c.0),
        credit.as_ref().map(|c| c.1.as_str()),
        credit.as_ref().map(|c| c.2 as i64),
        created_at,
    ])?;
    if let Some((member, key, miles)) = &credit {
        let miles = *miles as i64;
        conn.prepare_cached(
            "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
             VALUES (?1, ?2, 0, ?3, ?4, ?5, ?5, ?6)",
        )?
        .execute(params![x.partner, key, member, miles, id, now.timestamp()])?;
        conn.prepare_cached(
            "INSERT INTO balances(member, miles) VALUES (?1, ?2)
             ON CONFLICT(member) DO UPDATE SET miles = miles + excluded.miles",
        )?
        .execute(params![member, miles])?;
        conn.prepare_cached(
            "INSERT INTO api_daily(partner, day, miles) VALUES (?1, ?2, ?3)
             ON CONFLICT(partner, day) DO UPDATE SET miles = miles + excluded.miles",
        )?
        .execute(params![x.partner, x.day, miles])?;
    }
    Ok(Outcome::Stored {
        status,
        body,
        replayed: false,
    })
}

/// One verify call inside the batch's transaction: the answer, and its
/// audit row; `None` for a revoked key.
fn verify(conn: &Connection, v: &VerifyCall) -> Result<Option<bool>, WriterError> {
    if !super::auth::api_keys::is_live(conn, v.key_id)? {
        return Ok(None);
    }
    let matched = crate::members::same_active_member(conn, &v.member_id, &v.email)?;
    crate::audit::record(
        conn,
        &crate::audit::Entry {
            actor: &v.actor,
            action: "member-verify",
            partner: Some(&v.partner),
            detail: &format!(
                "key {} result {}",
                v.key_prefix,
                if matched { "match" } else { "no-match" }
            ),
            client: v.client.as_deref(),
        },
    )?;
    Ok(Some(matched))
}

/// Whether `partner` has a ledger row with `key`: one probe of the
/// ledger's primary key, files and API alike.
fn key_credited(conn: &Connection, partner: &str, key: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM ledger WHERE partner = ?1 AND partner_key = ?2)",
    )?
    .query_row(params![partner, key], |r| r.get(0))
}

/// The stored 422 body of a rejected exchange.
fn rejected_body(code: Code) -> String {
    let p = super::problem::Problem::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "rejected",
        "Exchange rejected",
    )
    .code(code.as_str())
    .detail(code_text(code));
    serde_json::to_string(&p).unwrap_or_default()
}

/// What a row code means, for the 422's `detail`.
pub fn code_text(code: Code) -> &'static str {
    match code {
        Code::E001 => "the row does not have exactly 3 columns",
        Code::E002 => "member is empty",
        Code::E003 => "member not found",
        Code::E004 => "member is not active",
        Code::E005 => "partner_key is empty or longer than 64 characters",
        Code::E006 => "miles is not a positive whole number",
        Code::E007 => "miles is above the partner's per-row maximum",
        Code::E008 => "the same exchange appeared earlier",
        Code::E009 => "member or partner_key holds a control character (not text)",
        Code::E010 => "this partner_key was credited before (the partner's keys are unique)",
    }
}
