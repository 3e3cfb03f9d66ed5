//! The notifications outbox: events and their deliveries (what
//! `crate::notify` sends, and to whom).
//!
//! What must stay true:
//! - [`enqueue`] runs inside the caller's transaction, the one that writes
//!   what the event reports (a credit, a refusal, a run, a key, a
//!   reversal): an event exists exactly when that commits;
//! - an event's `event_id` never changes: every retry of every delivery
//!   carries it, so a receiver can drop a second copy;
//! - a delivery is sent only under its lease ([`claim`]): two senders (the
//!   daemon and a `once`, or two daemons) never send it at the same time;
//!   a sender that dies leaves the lease to run out, and the delivery is
//!   sent again, with the same event id;
//! - events and deliveries are never deleted here: `state` says what
//!   became of each.

use super::{Exec, StoreError};
use crate::store_args as args;

/// One event, as written.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: String,
    pub kind: String,
    pub partner: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// JSON object: the event's own fields.
    pub data: String,
}

/// One delivery that is due, with its event.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub channel: String,
    pub target: String,
    pub attempts: i64,
    pub give_up_at: i64,
    pub event: Event,
}

/// A delivery for people (`status`, the ops page).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryInfo {
    pub event_id: String,
    pub kind: String,
    pub partner: Option<String>,
    pub channel: String,
    pub target: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: String,
}

/// Pending and failed deliveries, and events not yet routed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct Counts {
    pub pending: i64,
    pub failed: i64,
    pub unrouted: i64,
}

/// A new event id: `evt_` and 24 random hex digits.
pub fn new_event_id() -> Result<String, StoreError> {
    let hex = super::random_hex(12).map_err(|e| StoreError::Connect {
        database: "outbox".into(),
        message: format!("no randomness for an event id: {e}"),
    })?;
    Ok(format!("evt_{hex}"))
}

/// Write an event in the caller's transaction; its id.
pub fn enqueue<E: Exec + ?Sized>(
    db: &E,
    kind: &str,
    partner: Option<&str>,
    data: &serde_json::Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<String, StoreError> {
    let event_id = new_event_id()?;
    db.execute(
        "INSERT INTO outbox(event_id, kind, partner, created_at, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![
            event_id.as_str(),
            kind,
            partner,
            crate::db::now_text(now).as_str(),
            data.to_string().as_str()
        ],
    )?;
    Ok(event_id)
}

const EVENT: &str = "o.event_id, o.kind, o.partner, o.created_at, o.data";

fn event(r: &super::Row, at: usize) -> Result<Event, StoreError> {
    Ok(Event {
        event_id: r.text(at)?,
        kind: r.text(at + 1)?,
        partner: r.opt_text(at + 2)?,
        created_at: r.text(at + 3)?,
        data: r.text(at + 4)?,
    })
}

/// Events not routed yet, oldest first.
pub fn unrouted<E: Exec + ?Sized>(db: &E, limit: i64) -> Result<Vec<Event>, StoreError> {
    db.query(
        &format!("SELECT {EVENT} FROM outbox o WHERE o.routed = 0 ORDER BY o.id LIMIT ?1"),
        args![limit],
    )?
    .iter()
    .map(|r| event(r, 0))
    .collect()
}

/// One channel an event goes to.
pub struct Route<'a> {
    pub channel: &'a str,
    pub target: &'a str,
    /// Unix seconds: not before (a digest waits for its hour).
    pub next_at: i64,
    pub give_up_at: i64,
}

/// Give `event_id` its deliveries and mark it routed, in the caller's
/// transaction. No route: the event is routed to nobody (a partner without
/// `[partner.notify]`), by design.
pub fn route<E: Exec + ?Sized>(
    db: &E,
    event_id: &str,
    routes: &[Route<'_>],
) -> Result<(), StoreError> {
    for r in routes {
        db.execute(
            "INSERT INTO deliveries(event_id, channel, target, state, next_at, give_up_at) \
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5) ON CONFLICT(event_id, channel) DO NOTHING",
            args![event_id, r.channel, r.target, r.next_at, r.give_up_at],
        )?;
    }
    db.execute(
        "UPDATE outbox SET routed = 1 WHERE event_id = ?1",
        args![event_id],
    )?;
    Ok(())
}

/// Pending deliveries due at `now` (unix seconds) and not leased, oldest
/// first.
pub fn due<E: Exec + ?Sized>(db: &E, now: i64, limit: i64) -> Result<Vec<Due>, StoreError> {
    due_where(db, now, limit, None)
}

/// The due deliveries of one event (`notify test`: found whatever else
/// is waiting ahead of it).
pub fn due_of_event<E: Exec + ?Sized>(
    db: &E,
    event_id: &str,
    now: i64,
) -> Result<Vec<Due>, StoreError> {
    due_where(db, now, i64::MAX, Some(event_id))
}

fn due_where<E: Exec + ?Sized>(
    db: &E,
    now: i64,
    limit: i64,
    event_id: Option<&str>,
) -> Result<Vec<Due>, StoreError> {
    db.query(
        &format!(
            "SELECT d.id, d.channel, d.target, d.attempts, d.give_up_at, {EVENT} \
             FROM deliveries d JOIN outbox o ON o.event_id = d.event_id \
             WHERE d.state = 'pending' AND d.next_at <= ?1 \
               AND (d.lease_until IS NULL OR d.lease_until < ?1) \
               AND (CAST(?3 AS TEXT) IS NULL OR d.event_id = ?3) \
             ORDER BY d.next_at, d.id LIMIT ?2"
        ),
        args![now, limit, event_id],
    )?
    .iter()
    .map(|r| {
        Ok(Due {
            id: r.int(0)?,
            channel: r.text(1)?,
            target: r.text(2)?,
            attempts: r.int(3)?,
            give_up_at: r.int(4)?,
            event: event(r, 5)?,
        })
    })
    .collect()
}

/// Take the lease of delivery `id` until `until` (unix seconds); `false`
/// when another sender holds it or it is no longer pending.
pub fn claim<E: Exec + ?Sized>(db: &E, id: i64, now: i64, until: i64) -> Result<bool, StoreError> {
    Ok(db.execute(
        "UPDATE deliveries SET lease_until = ?3 \
         WHERE id = ?1 AND state = 'pending' AND (lease_until IS NULL OR lease_until < ?2)",
        args![id, now, until],
    )? == 1)
}

/// Delivery `id` was accepted by its receiver.
pub fn sent<E: Exec + ?Sized>(db: &E, id: i64, at: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE deliveries SET state = 'sent', sent_at = ?2, attempts = attempts + 1, \
         lease_until = NULL, last_error = NULL WHERE id = ?1",
        args![id, at],
    )?;
    Ok(())
}

/// Delivery `id` failed this attempt: try again at `next_at`, or give up
/// (`failed`) when `next_at` is `None`.
pub fn attempt_failed<E: Exec + ?Sized>(
    db: &E,
    id: i64,
    error: &str,
    next_at: Option<i64>,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE deliveries SET attempts = attempts + 1, lease_until = NULL, last_error = ?2, \
         state = CASE WHEN CAST(?3 AS BIGINT) IS NULL THEN 'failed' ELSE 'pending' END, \
         next_at = COALESCE(CAST(?3 AS BIGINT), next_at) WHERE id = ?1",
        args![id, error, next_at],
    )?;
    Ok(())
}

/// Failed deliveries are counted (and alarmed on) for this long after
/// their event; `notify list` still shows older ones.
pub const FAILED_SHOWN: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// How many deliveries are pending, how many failed for events of the
/// last [`FAILED_SHOWN`] before `now`, and how many events wait for
/// routing. `notify test` deliveries are not counted: their result was
/// printed to whoever asked, and a failed test must not stay an alarm.
pub fn counts<E: Exec + ?Sized>(
    db: &E,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Counts, StoreError> {
    let since = crate::db::now_text(now - FAILED_SHOWN);
    let r = db.query_opt(
        "SELECT (SELECT count(*) FROM deliveries d JOIN outbox o ON o.event_id = d.event_id \
                 WHERE d.state = 'pending' AND o.kind <> 'test'), \
                (SELECT count(*) FROM deliveries d JOIN outbox o ON o.event_id = d.event_id \
                 WHERE d.state = 'failed' AND o.kind <> 'test' AND o.created_at >= ?1), \
                (SELECT count(*) FROM outbox WHERE routed = 0)",
        args![since.as_str()],
    )?;
    Ok(match r {
        Some(r) => Counts {
            pending: r.int(0)?,
            failed: r.int(1)?,
            unrouted: r.int(2)?,
        },
        None => Counts::default(),
    })
}

/// The latest deliveries not sent (pending or failed), newest first;
/// `notify test` ones are left out (see [`counts`]).
pub fn unsent<E: Exec + ?Sized>(db: &E, limit: i64) -> Result<Vec<DeliveryInfo>, StoreError> {
    db.query(
        "SELECT o.event_id, o.kind, o.partner, d.channel, d.target, d.state, d.attempts, \
                d.last_error, o.created_at \
         FROM deliveries d JOIN outbox o ON o.event_id = d.event_id \
         WHERE d.state <> 'sent' AND o.kind <> 'test' ORDER BY d.id DESC LIMIT ?1",
        args![limit],
    )?
    .iter()
    .map(|r| {
        Ok(DeliveryInfo {
            event_id: r.text(0)?,
            kind: r.text(1)?,
            partner: r.opt_text(2)?,
            channel: r.text(3)?,
            target: r.text(4)?,
            state: r.text(5)?,
            attempts: r.int(6)?,
            last_error: r.opt_text(7)?,
            created_at: r.text(8)?,
        })
    })
    .collect()
}
