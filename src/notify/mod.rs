//! Notifications: partners (and the operator's ops team) hear about their
//! files without looking. E-mail over SMTP (`email.rs`) and signed
//! webhooks (`webhook.rs`), delivered from the outbox (`store::outbox`).
//!
//! The path of an event:
//! 1. what it reports writes it, in the same transaction
//!    ([`file_credited_with_errors`], [`file_refused`], …, each a call to
//!    `store::outbox::enqueue`): an event exists exactly when that commits,
//!    whichever process wrote it (`once`, the daemon, `serve`, the CLI);
//! 2. [`deliver`] (the daemon every [`INTERVAL`], `once` at its end,
//!    `notify test`) routes new events to the channels configured now
//!    (`[partner.notify]`, `[daemon.notify]`), one delivery each, then
//!    sends what is due, each under a lease;
//! 3. a failed attempt is retried with backoff ([`backoff`]) for
//!    [`GIVE_UP_AFTER`] from the event, then marked `failed` (shown by
//!    `status`, the ops page and `/metrics`).
//!
//! What must stay true:
//! - sending never happens inside a credit's transaction, and a dead SMTP
//!   server or webhook never delays or fails a credit: delivery is a
//!   separate step with its own time limits;
//! - an event id is sent unchanged on every retry (receivers de-duplicate
//!   on it); a crash after a send and before it is marked sent sends the
//!   same id again, never a new one;
//! - a partner without `[partner.notify]` gets nothing, by design.

pub mod config;
mod email;
mod webhook;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::Config;
use crate::store::{self, outbox, Exec, StoreError};

pub use config::{OpsNotify, PartnerNotify, SmtpConfig};

/// How often the daemon looks for events to send.
pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// After this long since the event, a delivery that still fails is
/// `failed` and is not tried again.
pub const GIVE_UP_AFTER: i64 = 24 * 3600;
/// `webhook_timeout` when not given (SMTP has `[daemon.smtp] timeout`).
pub const WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What happened, as event types: the names in the config, the webhook's
/// `type` and the outbox's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file credited, some of its rows failed (an error file is ready).
    FileErrors,
    /// A file refused whole (F001–F008): nothing credited.
    FileRefused,
    /// A scheduled run found no file where one was expected (`expect_file`).
    DeliveryMissed,
    /// The error report or summary could not be written back to the
    /// partner's server.
    ReportUndelivered,
    KeyCreated,
    KeyRevoked,
    /// Some of the partner's credits were reversed.
    CreditsReversed,
    /// `milebatch notify test`.
    Test,
}

impl Kind {
    /// Every kind a config can name (not `test`).
    pub const CONFIGURABLE: [Kind; 7] = [
        Kind::FileErrors,
        Kind::FileRefused,
        Kind::DeliveryMissed,
        Kind::ReportUndelivered,
        Kind::KeyCreated,
        Kind::KeyRevoked,
        Kind::CreditsReversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FileErrors => "file.credited_with_errors",
            Kind::FileRefused => "file.refused",
            Kind::DeliveryMissed => "delivery.missed",
            Kind::ReportUndelivered => "report.undelivered",
            Kind::KeyCreated => "api_key.created",
            Kind::KeyRevoked => "api_key.revoked",
            Kind::CreditsReversed => "credits.reversed",
            Kind::Test => "test",
        }
    }

    /// The event in a few Japanese words (ops mail, the ops dashboard).
    pub fn title_ja(self) -> &'static str {
        match self {
            Kind::FileErrors => "一部の行がエラー",
            Kind::FileRefused => "ファイルを拒否",
            Kind::DeliveryMissed => "ファイル未着",
            Kind::ReportUndelivered => "結果ファイルを書き込めない",
            Kind::KeyCreated => "API キー作成",
            Kind::KeyRevoked => "API キー無効化",
            Kind::CreditsReversed => "積算の取り消し",
            Kind::Test => "テスト通知",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::CONFIGURABLE
            .into_iter()
            .chain([Kind::Test])
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("partner {0:?} has no [partner.notify] section: nothing to send to")]
    NotConfigured(String),
}

// ---- 1. Writing events (inside the caller's transaction) ----------------

/// A committed file's fields, as every file event carries them.
pub struct FileFacts<'a> {
    pub id: i64,
    pub name: &'a str,
    pub channel: &'a str,
    /// When the file was received (RFC 3339 UTC, as stored).
    pub received_at: String,
    pub rows: u64,
    pub credited: u64,
    pub failed: u64,
    pub miles: u64,
    /// `{"E003": 2, …}`.
    pub failed_by_code: serde_json::Value,
    pub file_code: Option<&'a str>,
}

impl FileFacts<'_> {
    fn json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "name": self.name,
            "channel": self.channel,
            "received_at": self.received_at,
            "rows": self.rows,
            "credited": self.credited,
            "failed": self.failed,
            "miles": self.miles,
            "failed_by_code": self.failed_by_code,
            "file_code": self.file_code,
        })
    }
}

/// A file credited with failed rows.
pub fn file_credited_with_errors<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    file: &FileFacts<'_>,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    outbox::enqueue(
        db,
        Kind::FileErrors.as_str(),
        Some(partner),
        &json!({ "file": file.json() }),
        now,
    )
}

/// A file refused whole (its `file_code` set). `reason` is the technical
/// one, for ops only.
pub fn file_refused<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    file: &FileFacts<'_>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    outbox::enqueue(
        db,
        Kind::FileRefused.as_str(),
        Some(partner),
        &json!({ "file": file.json(), "reason": reason }),
        now,
    )
}

/// A scheduled run of an `expect_file` partner found no new file.
pub fn delivery_missed<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    run_id: i64,
    run_at: &str,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    outbox::enqueue(
        db,
        Kind::DeliveryMissed.as_str(),
        Some(partner),
        &json!({ "run": { "id": run_id, "at": run_at } }),
        now,
    )
}

/// The error report (or summary) of file `file_id` could not be written
/// back to the partner's server; the daemon keeps trying.
pub fn report_undelivered<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    file_id: i64,
    name: &str,
    error: &str,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    outbox::enqueue(
        db,
        Kind::ReportUndelivered.as_str(),
        Some(partner),
        &json!({ "file": { "id": file_id, "name": name }, "error": error }),
        now,
    )
}

/// An API key created or revoked (`created`: which). Only the key's
/// prefix and label: never the key, never who (the audit trail has who).
pub fn api_key<E: Exec + ?Sized>(
    db: &E,
    created: bool,
    partner: &str,
    prefix: &str,
    label: &str,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let kind = if created {
        Kind::KeyCreated
    } else {
        Kind::KeyRevoked
    };
    outbox::enqueue(
        db,
        kind.as_str(),
        Some(partner),
        &json!({ "key": { "prefix": prefix, "label": label } }),
        now,
    )
}

/// Credits of `partner` reversed: `what` says which (`{"file": id}` or
/// `{"exchange": id}`), with the rows and miles taken back.
pub fn credits_reversed<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    reversal_id: i64,
    what: serde_json::Value,
    rows: u64,
    miles: u64,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    outbox::enqueue(
        db,
        Kind::CreditsReversed.as_str(),
        Some(partner),
        &json!({ "reversal": { "id": reversal_id, "of": what, "rows": rows, "miles": miles } }),
        now,
    )
}

// ---- 2. Routing and sending -------------------------------------------

/// What one [`deliver`] pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    pub sent: u64,
    /// Failed this time, to be tried again.
    pub retrying: u64,
    /// Failed for good (past [`GIVE_UP_AFTER`]).
    pub failed: u64,
    /// One line per failed attempt (`channel target: error`).
    pub errors: Vec<String>,
}

/// `[daemon] notify_retry` when not given.
pub const DEFAULT_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// The wait before attempt `n + 1` after `n` failed ones: `first`
/// (`[daemon] notify_retry`), doubling, at most an hour.
pub fn backoff(failed_attempts: i64, first: std::time::Duration) -> i64 {
    let n = failed_attempts.clamp(1, 20) as u32;
    let first = first.as_secs().max(1) as i64;
    first.saturating_mul(1i64 << (n - 1)).min(3600)
}

fn unix(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

/// The next digest instant after `now`.
fn next_digest(at: chrono::NaiveTime, tz: chrono_tz::Tz, now: DateTime<Utc>) -> i64 {
    use chrono::TimeZone;
    let local = now.with_timezone(&tz).date_naive();
    for day in 0..3 {
        let d = local + chrono::Duration::days(day);
        if let Some(t) = tz.from_local_datetime(&d.and_time(at)).earliest() {
            if t.with_timezone(&Utc) > now {
                return t.timestamp();
            }
        }
    }
    unix(now) + 24 * 3600
}

/// Give every new event its deliveries, per the config as it is now.
fn route_new(config: &Config, db: &dyn Exec, now: DateTime<Utc>) -> Result<(), StoreError> {
    loop {
        let events = outbox::unrouted(db, 100)?;
        if events.is_empty() {
            return Ok(());
        }
        for ev in events {
            let created = crate::timefmt::parse_stored(&ev.created_at).unwrap_or(now);
            let give_up = unix(created) + GIVE_UP_AFTER;
            let kind = Kind::parse(&ev.kind);
            let partner = ev.partner.as_deref().and_then(|p| config.partner(p));
            let notify = partner.and_then(|p| p.notify.as_ref());
            let wanted = |list: &[Kind]| kind.is_some_and(|k| k == Kind::Test || list.contains(&k));
            let mut routes: Vec<(&str, String, i64)> = Vec::new();
            if let Some(n) = notify {
                if !n.email.is_empty() && wanted(&n.email_events) {
                    routes.push(("email", mailbox_list(&n.email), unix(now)));
                }
                if let Some(w) = n.webhook.as_ref().filter(|w| wanted(&w.events)) {
                    routes.push(("webhook", w.url.to_string(), unix(now)));
                }
            }
            if let Some(ops) = &config.daemon.notify {
                if kind.is_some_and(|k| k != Kind::Test && ops.events.contains(&k)) {
                    let at = ops
                        .digest
                        .map_or(unix(now), |t| next_digest(t, config.daemon.timezone, now));
                    routes.push(("ops", mailbox_list(&ops.email), at));
                }
            }
            let routes: Vec<outbox::Route<'_>> = routes
                .iter()
                .map(|(channel, target, next_at)| outbox::Route {
                    channel,
                    target,
                    next_at: *next_at,
                    // A digest waits for its hour: its day of retries starts then.
                    give_up_at: if *channel == "ops" {
                        give_up.max(*next_at + GIVE_UP_AFTER)
                    } else {
                        give_up
                    },
                })
                .collect();
            store::write(db, |tx| outbox::route(tx, &ev.event_id, &routes))?;
        }
    }
}

fn mailbox_list(m: &[lettre::message::Mailbox]) -> String {
    m.iter()
        .map(|m| m.email.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long a sender holds a delivery: past its time limit, so it never
/// runs out while the attempt can still succeed.
fn lease_secs(config: &Config) -> i64 {
    let longest = config
        .partners
        .iter()
        .filter_map(|p| p.notify.as_ref()?.webhook.as_ref().map(|w| w.timeout))
        .chain(config.daemon.smtp.as_ref().map(|s| s.timeout))
        .max()
        .unwrap_or(WEBHOOK_TIMEOUT);
    (longest.as_secs() as i64) * 2 + 10
}

/// Route new events, then send every delivery that is due, until `stop`
/// is set (checked between sends). Blocking: the daemon runs it on a
/// blocking thread.
pub fn deliver(
    config: &Config,
    db: &dyn Exec,
    now: DateTime<Utc>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Delivered, NotifyError> {
    route_new(config, db, now)?;
    let mut done = Delivered::default();
    let due = outbox::due(db, unix(now), 200)?;
    let lease = lease_secs(config);
    // A digest is one mail for every ops event due at once.
    let digest = config
        .daemon
        .notify
        .as_ref()
        .is_some_and(|o| o.digest.is_some());
    let (ops, each): (Vec<_>, Vec<_>) = due.into_iter().partition(|d| d.channel == "ops" && digest);
    let mut batches: Vec<Vec<outbox::Due>> = each.into_iter().map(|d| vec![d]).collect();
    if !ops.is_empty() {
        batches.push(ops);
    }
    // A server that failed once in this pass is not tried again in it: a
    // dead SMTP server that takes its whole timeout must not hold the
    // pass (or `once`) for every delivery behind it. Those wait, unclaimed
    // and unchanged, for the next pass.
    let mut broken = std::collections::HashSet::new();
    let server = |d: &outbox::Due| match d.channel.as_str() {
        "webhook" => d.target.clone(),
        _ => "smtp".to_owned(),
    };
    for batch in batches {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        if broken.contains(&server(&batch[0])) {
            continue;
        }
        let Some((claimed, result)) = claim_and_send(config, db, batch, lease)? else {
            continue;
        };
        let at = crate::db::now_text(Utc::now());
        for d in &claimed {
            match &result {
                Ok(()) => {
                    outbox::sent(db, d.id, &at)?;
                    done.sent += 1;
                    tracing::info!(event = %d.event.event_id, kind = %d.event.kind, channel = %d.channel, target = %d.target, "notification sent");
                }
                Err(e) => {
                    broken.insert(server(d));
                    let next =
                        unix(Utc::now()) + backoff(d.attempts + 1, config.daemon.notify_retry);
                    let next = (next <= d.give_up_at).then_some(next);
                    outbox::attempt_failed(db, d.id, e, next)?;
                    if next.is_some() {
                        done.retrying += 1;
                    } else {
                        done.failed += 1;
                    }
                    done.errors.push(format!("{} {}: {e}", d.channel, d.target));
                    tracing::warn!(event = %d.event.event_id, kind = %d.event.kind, channel = %d.channel,
                        target = %d.target, attempts = d.attempts + 1, gave_up = next.is_none(),
                        error = %e, "notification not delivered");
                }
            }
        }
    }
    Ok(done)
}

/// Claim `batch` (the deliveries another sender holds drop out) and send
/// what was claimed as one message; `None` when nothing was claimed.
#[allow(clippy::type_complexity)]
fn claim_and_send(
    config: &Config,
    db: &dyn Exec,
    batch: Vec<outbox::Due>,
    lease: i64,
) -> Result<Option<(Vec<outbox::Due>, Result<(), String>)>, StoreError> {
    let now_s = unix(Utc::now());
    let mut claimed = Vec::new();
    for d in batch {
        if outbox::claim(db, d.id, now_s, now_s + lease)? {
            claimed.push(d);
        }
    }
    if claimed.is_empty() {
        return Ok(None);
    }
    let result = send(config, &claimed);
    Ok(Some((claimed, result)))
}

/// Send one delivery (or a digest of ops deliveries).
fn send(config: &Config, batch: &[outbox::Due]) -> Result<(), String> {
    let first = &batch[0];
    let partner = first
        .event
        .partner
        .as_deref()
        .and_then(|p| config.partner(p));
    match first.channel.as_str() {
        "webhook" => {
            let hook = partner
                .and_then(|p| p.notify.as_ref())
                .and_then(|n| n.webhook.as_ref())
                .ok_or("the partner's webhook is no longer configured")?;
            webhook::send(config, hook, partner.expect("checked above"), &first.event)
        }
        "email" => {
            let n = partner
                .and_then(|p| p.notify.as_ref())
                .filter(|n| !n.email.is_empty())
                .ok_or("the partner's e-mail addresses are no longer configured")?;
            let msg = email::partner_message(config, partner.expect("checked above"), &first.event);
            email::send(config, &n.email, &msg)
        }
        "ops" => {
            let ops = config
                .daemon
                .notify
                .as_ref()
                .ok_or("[daemon.notify] is no longer configured")?;
            let events: Vec<&outbox::Event> = batch.iter().map(|d| &d.event).collect();
            let msg = email::ops_message(config, &events);
            email::send(config, &ops.email, &msg)
        }
        other => Err(format!("unknown channel {other:?}")),
    }
}

/// `milebatch notify test --partner ID`: write a `test` event for the
/// partner and send it now on each of its channels. The result per
/// channel: `(channel, target, Ok | the error)`.
#[allow(clippy::type_complexity)]
pub fn test(
    config: &Config,
    db: &dyn Exec,
    partner: &str,
    now: DateTime<Utc>,
) -> Result<(String, Vec<(String, String, Result<(), String>)>), NotifyError> {
    let p = config
        .partner(partner)
        .filter(|p| p.notify.is_some())
        .ok_or_else(|| NotifyError::NotConfigured(partner.to_owned()))?;
    let event_id = store::write(db, |tx| {
        outbox::enqueue(tx, Kind::Test.as_str(), Some(&p.id), &json!({}), now)
    })?;
    route_new(config, db, now)?;
    let mut results = Vec::new();
    for d in outbox::due_of_event(db, &event_id, unix(now))? {
        let Some((mut claimed, r)) = claim_and_send(config, db, vec![d], lease_secs(config))?
        else {
            continue;
        };
        let d = claimed.remove(0);
        match &r {
            Ok(()) => outbox::sent(db, d.id, &crate::db::now_text(Utc::now()))?,
            // A test is not retried: it was asked for now.
            Err(e) => outbox::attempt_failed(db, d.id, e, None)?,
        }
        results.push((d.channel, d.target, r));
    }
    Ok((event_id, results))
}

/// The link to a file on the site, when `[server] public_url` is set.
fn file_link(config: &Config, partner: &str, file_id: i64) -> Option<String> {
    config.server.public_url.as_ref().map(|u| {
        format!(
            "{}/files/{file_id}?partner={partner}",
            u.trim_end_matches('/')
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(
            (1..=9)
                .map(|n| backoff(n, DEFAULT_RETRY))
                .collect::<Vec<_>>(),
            vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
        );
        assert_eq!(backoff(1, std::time::Duration::from_secs(1)), 1);
        assert_eq!(backoff(40, std::time::Duration::from_secs(1)), 3600);
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::CONFIGURABLE.into_iter().chain([Kind::Test]) {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("file"), None);
    }

    #[test]
    fn digest_is_the_next_local_time() {
        let tz = chrono_tz::Asia::Tokyo;
        let now: DateTime<Utc> = "2026-12-04T00:00:00Z".parse().unwrap(); // 09:00 JST
        let at = chrono::NaiveTime::from_hms_opt(8, 30, 0).unwrap();
        // 08:30 JST has passed today: tomorrow's.
        assert_eq!(
            next_digest(at, tz, now),
            "2026-12-04T23:30:00Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
                .timestamp()
        );
        let at = chrono::NaiveTime::from_hms_opt(18, 0, 0).unwrap();
        assert_eq!(
            next_digest(at, tz, now),
            "2026-12-04T09:00:00Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
                .timestamp()
        );
    }
}
