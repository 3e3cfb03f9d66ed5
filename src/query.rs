//! Read-only views of the database for the CLI: files, history, status.
//! None of these take a write lock, so they work while the daemon runs.

use rusqlite::{params, Connection};
use serde::Serialize;

use crate::db::DbError;

#[derive(Debug, Serialize)]
pub struct FileRow {
    pub id: i64,
    pub partner: String,
    pub name: String,
    pub sha256: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub rows: i64,
    pub credited: i64,
    pub failed: i64,
    pub failed_by_code: serde_json::Value,
    pub miles: i64,
    pub report_path: Option<String>,
    pub archive_path: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub tidy: String,
    /// The day the file was received (`started_at`), in the configured
    /// zone: `2026-11-24`. What `--since` compares with.
    pub date: String,
    /// Rows repeating an earlier file's (NULL: not checked).
    pub repeats: Option<i64>,
    /// F001–F007 for a refused or duplicate file.
    pub file_code: Option<String>,
}

/// The outcomes `files --outcome` takes. `refused` also selects
/// `duplicate` (a duplicate is refused whole too); `reversed` is a file
/// credited and then taken back (`milebatch reverse`).
pub const FILE_OUTCOMES: &[&str] = &["credited", "refused", "duplicate", "reversed"];

/// Which files `files` shows, in which order.
#[derive(Debug, Clone, Default)]
pub struct FileFilter<'a> {
    pub partner: Option<&'a str>,
    /// Received at or after this instant.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// One of [`FILE_OUTCOMES`].
    pub outcome: Option<&'a str>,
    /// At most this many rows (`None`: all).
    pub limit: Option<u64>,
    pub newest_first: bool,
}

/// One page of files, and how many match in all.
#[derive(Debug)]
pub struct FilePage {
    pub rows: Vec<FileRow>,
    pub total: u64,
}

pub fn files(
    conn: &Connection,
    f: &FileFilter<'_>,
    tz: chrono_tz::Tz,
) -> Result<FilePage, DbError> {
    // `started_at` is stored by `db::now_text` (RFC 3339 UTC, fixed width),
    // so text order is time order.
    let since = f.since.map(crate::db::now_text);
    let (outcome, also) = match f.outcome {
        Some("refused") => (Some("refused"), Some("duplicate")),
        o => (o, None),
    };
    const WHERE: &str = "WHERE (?1 IS NULL OR partner = ?1) AND (?2 IS NULL OR started_at >= ?2)
           AND (?3 IS NULL OR outcome = ?3 OR outcome = ?4)";
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) FROM files {WHERE}"),
        params![f.partner, since, outcome, also],
        |r| r.get(0),
    )?;
    let mut st = conn.prepare(&format!(
        "SELECT id, partner, name, sha256, outcome,
                COALESCE(reason, (SELECT 'reversed (reversal ' || r.id || ') by ' || r.actor || ' at ' || r.at
                                         || ': ' || r.reason FROM reversals r WHERE r.id = files.reversal)),
                rows, credited, failed, failed_by_code, miles,
                report_path, archive_path, started_at, finished_at, tidy, repeats, file_code
         FROM files {WHERE} ORDER BY id {} LIMIT ?5",
        if f.newest_first { "DESC" } else { "ASC" }
    ))?;
    let limit = f.limit.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
    let rows = st.query_map(params![f.partner, since, outcome, also, limit], |r| {
        let started_at: String = r.get(13)?;
        Ok(FileRow {
            id: r.get(0)?,
            partner: r.get(1)?,
            name: r.get(2)?,
            sha256: r.get(3)?,
            outcome: r.get(4)?,
            reason: r.get(5)?,
            rows: r.get(6)?,
            credited: r.get(7)?,
            failed: r.get(8)?,
            failed_by_code: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
            miles: r.get(10)?,
            report_path: r.get(11)?,
            archive_path: r.get(12)?,
            date: crate::timefmt::parse_stored(&started_at)
                .map(|t| crate::timefmt::local_date(t, tz))
                .unwrap_or_default(),
            started_at,
            finished_at: r.get(14)?,
            tidy: r.get(15)?,
            repeats: r.get(16)?,
            file_code: r.get(17)?,
        })
    })?;
    Ok(FilePage {
        rows: rows.collect::<Result<_, _>>()?,
        total: total as u64,
    })
}

#[derive(Debug, Serialize)]
pub struct HistoryRow {
    pub partner: String,
    pub partner_key: String,
    pub member_id: String,
    /// Negative for a reversal's compensating row.
    pub miles: i64,
    /// The file's name; for an API exchange (file id 0), `API`.
    pub file: String,
    /// 0 for an API exchange.
    pub file_id: i64,
    /// The file's line; for an API exchange, the exchange's id.
    pub line: i64,
    pub credited_at: String,
    /// The reversal that wrote this row (a compensating, negative row).
    pub reversal: Option<i64>,
    /// `pull`, `upload` or `api`.
    pub channel: String,
}

/// Every credit of one partner key, from every channel (files and API
/// exchanges), reversals included: the search the management site offers.
pub fn history(conn: &Connection, partner: &str, key: &str) -> Result<Vec<HistoryRow>, DbError> {
    let mut st = conn.prepare(
        "SELECT l.partner, l.partner_key, COALESCE(m.member_id, '#' || l.member), l.miles,
                CASE WHEN l.file_id = 0 THEN 'API' ELSE COALESCE(f.name, '?') END,
                l.file_id, l.line, l.credited_at, l.reversal,
                CASE WHEN l.file_id = 0 THEN 'api' ELSE COALESCE(f.channel, 'pull') END
         FROM ledger l LEFT JOIN files f ON f.id = l.file_id LEFT JOIN members m ON m.id = l.member
         WHERE l.partner = ?1 AND l.partner_key = ?2
         ORDER BY l.credited_at, l.file_id, l.line, l.reversal IS NOT NULL",
    )?;
    let rows = st.query_map(params![partner, key.trim()], |r| {
        let at: i64 = r.get(7)?;
        Ok(HistoryRow {
            partner: r.get(0)?,
            partner_key: r.get(1)?,
            member_id: r.get(2)?,
            miles: r.get(3)?,
            file: r.get(4)?,
            file_id: r.get(5)?,
            line: r.get(6)?,
            credited_at: chrono::DateTime::from_timestamp(at, 0)
                .map(crate::db::now_text)
                .unwrap_or_default(),
            reversal: r.get(8)?,
            channel: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The last reversal of a partner's credits.
#[derive(Debug, Serialize)]
pub struct LastReversal {
    pub id: i64,
    /// `file 3` or `API exchange 17`.
    pub what: String,
    pub actor: String,
    pub reason: String,
    pub at: String,
    pub rows: i64,
    pub miles: i64,
}

#[derive(Debug, Serialize, Default)]
pub struct LastRun {
    pub started_at: String,
    pub finished_at: Option<String>,
    pub trigger: String,
    pub outcome: Option<String>,
    pub files: i64,
    pub rows: i64,
    pub credited: i64,
    pub failed: i64,
    pub miles: i64,
    pub error: Option<String>,
    /// Files listed and not taken, in total and per reason.
    pub skipped: i64,
    pub skipped_by_reason: serde_json::Value,
    /// The skipped files themselves (the first 100).
    pub skips: serde_json::Value,
}

/// A file whose tidy-up (report upload, move) is still owed.
#[derive(Debug, Serialize)]
pub struct WaitingFile {
    pub id: i64,
    pub name: String,
    pub outcome: String,
    pub report_path: Option<String>,
    /// Why the last attempt failed (`None`: not tried yet).
    pub tidy_error: Option<String>,
    pub tidy_failing_since: Option<String>,
}

/// The latest file of one kind (credited, or refused/duplicate).
#[derive(Debug, Serialize)]
pub struct FileBrief {
    pub id: i64,
    pub name: String,
    pub outcome: String,
    pub at: String,
    pub credited: i64,
    pub miles: i64,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct PartnerStatus {
    pub last_run: Option<LastRun>,
    pub last_success: Option<String>,
    /// Whether the partner is failing now: its last run was not clean, or a
    /// tidy-up (report upload, move) is still failing.
    pub failing: bool,
    /// Since when (the first run of the current failing streak, or the first
    /// failed attempt of a tidy-up still owed).
    pub failing_since: Option<String>,
    pub consecutive_failures: i64,
    /// The latest error, kept after the partner recovers (`failing` tells
    /// whether it is current).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Start of the latest run that found no file although `expect_file`.
    pub last_missed: Option<String>,
    /// Files whose tidy-up is still owed, oldest first.
    pub waiting: Vec<WaitingFile>,
    pub last_credited: Option<FileBrief>,
    pub last_refused: Option<FileBrief>,
    pub last_reversal: Option<LastReversal>,
    /// A "run now" request from the site not yet finished (queued or
    /// running; `crate::run_requests`).
    pub run_request: Option<crate::run_requests::Request>,
}

pub fn partner_status(conn: &Connection, partner: &str) -> Result<PartnerStatus, DbError> {
    use rusqlite::OptionalExtension;
    let json = |t: String, empty: serde_json::Value| serde_json::from_str(&t).unwrap_or(empty);
    let last_run = conn
        .query_row(
            "SELECT started_at, finished_at, trigger, outcome, files, rows, credited, failed, miles, error,
                    skipped, skipped_by_reason, skips
             FROM runs WHERE partner = ?1 AND dry_run = 0 ORDER BY id DESC LIMIT 1",
            [partner],
            |r| {
                Ok(LastRun {
                    started_at: r.get(0)?,
                    finished_at: r.get(1)?,
                    trigger: r.get(2)?,
                    outcome: r.get(3)?,
                    files: r.get(4)?,
                    rows: r.get(5)?,
                    credited: r.get(6)?,
                    failed: r.get(7)?,
                    miles: r.get(8)?,
                    error: r.get(9)?,
                    skipped: r.get(10)?,
                    skipped_by_reason: json(r.get(11)?, serde_json::json!({})),
                    skips: json(r.get(12)?, serde_json::json!([])),
                })
            },
        )
        .optional()?;
    let state = conn
        .query_row(
            "SELECT last_success, consecutive_failures, last_error, last_error_at, failing_since
             FROM partner_state WHERE partner = ?1",
            [partner],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let (last_success, consecutive_failures, last_error, last_error_at, run_failing_since): (
        _,
        i64,
        _,
        _,
        Option<String>,
    ) = state.unwrap_or((None, 0, None, None, None));
    let last_missed = conn
        .query_row(
            "SELECT started_at FROM runs WHERE partner = ?1 AND outcome = 'missed' ORDER BY id DESC LIMIT 1",
            [partner],
            |r| r.get(0),
        )
        .optional()?;
    let mut st = conn.prepare(
        "SELECT id, name, outcome, report_path, tidy_error, tidy_failing_since
         FROM files WHERE partner = ?1 AND tidy = 'pending' ORDER BY id",
    )?;
    let waiting = st
        .query_map([partner], |r| {
            Ok(WaitingFile {
                id: r.get(0)?,
                name: r.get(1)?,
                outcome: r.get(2)?,
                report_path: r.get(3)?,
                tidy_error: r.get(4)?,
                tidy_failing_since: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let latest = |which: &str| {
        conn.query_row(
            &format!(
                "SELECT id, name, outcome, COALESCE(finished_at, started_at), credited, miles, reason
                 FROM files WHERE partner = ?1 AND {which} ORDER BY id DESC LIMIT 1"
            ),
            [partner],
            |r| {
                Ok(FileBrief {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    outcome: r.get(2)?,
                    at: r.get(3)?,
                    credited: r.get(4)?,
                    miles: r.get(5)?,
                    reason: r.get(6)?,
                })
            },
        )
        .optional()
    };
    let last_credited = latest("outcome = 'credited'")?;
    let last_refused = latest("outcome NOT IN ('credited', 'reversed')")?;
    let last_reversal = conn
        .query_row(
            "SELECT id, COALESCE('file ' || file_id, 'API exchange ' || exchange), actor, reason, at, rows, miles
             FROM reversals WHERE partner = ?1 ORDER BY id DESC LIMIT 1",
            [partner],
            |r| {
                Ok(LastReversal {
                    id: r.get(0)?,
                    what: r.get(1)?,
                    actor: r.get(2)?,
                    reason: r.get(3)?,
                    at: r.get(4)?,
                    rows: r.get(5)?,
                    miles: r.get(6)?,
                })
            },
        )
        .optional()?;
    // RFC 3339 UTC texts of the same format compare as times.
    let failing_since = waiting
        .iter()
        .filter_map(|w| w.tidy_failing_since.clone())
        .chain(run_failing_since.filter(|_| consecutive_failures > 0))
        .min();
    Ok(PartnerStatus {
        last_run,
        last_success,
        failing: consecutive_failures > 0 || waiting.iter().any(|w| w.tidy_error.is_some()),
        failing_since,
        consecutive_failures,
        last_error,
        last_error_at,
        last_missed,
        waiting,
        last_credited,
        last_refused,
        last_reversal,
        run_request: crate::run_requests::open_of(conn, partner).map_err(|e| match e {
            crate::run_requests::RequestError::Db(e) => DbError::from(e),
        })?,
    })
}

/// One request of the partner API, as `milebatch exchanges` lists it.
#[derive(Debug, Serialize)]
pub struct ApiExchange {
    pub id: i64,
    pub partner: String,
    /// The API key that sent it (its prefix).
    pub key_prefix: String,
    pub idempotency_key: String,
    /// 201 credited, 422 rejected.
    pub status: i64,
    pub code: Option<String>,
    pub member_id: Option<String>,
    pub partner_key: Option<String>,
    pub miles: Option<i64>,
    pub created_at: String,
}

/// API exchanges (of `partner`, if given), newest first; at most `limit`
/// (0: all).
pub fn api_exchanges(
    conn: &Connection,
    partner: Option<&str>,
    limit: u64,
) -> Result<Vec<ApiExchange>, DbError> {
    let mut st = conn.prepare(
        "SELECT x.id, x.partner, x.key_prefix, x.idem_key, x.status, x.code, m.member_id,
                x.partner_key, x.miles, x.created_at
         FROM api_exchanges x LEFT JOIN members m ON m.id = x.member
         WHERE ?1 IS NULL OR x.partner = ?1
         ORDER BY x.id DESC LIMIT ?2",
    )?;
    let limit = if limit == 0 { -1 } else { limit as i64 };
    let rows = st.query_map(params![partner, limit], |r| {
        Ok(ApiExchange {
            id: r.get(0)?,
            partner: r.get(1)?,
            key_prefix: r.get(2)?,
            idempotency_key: r.get(3)?,
            status: r.get(4)?,
            code: r.get(5)?,
            member_id: r.get(6)?,
            partner_key: r.get(7)?,
            miles: r.get(8)?,
            created_at: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
