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
    /// F001–F008 for a refused or duplicate file.
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

/// `milebatch files` and the site's files page, on either engine.
pub fn files<E: crate::store::Exec + ?Sized>(
    db: &E,
    f: &FileFilter<'_>,
    tz: chrono_tz::Tz,
) -> Result<FilePage, DbError> {
    use crate::store_args as args;
    // `started_at` is stored by `db::now_text` (RFC 3339 UTC, fixed width),
    // so text order is time order.
    let since = f.since.map(crate::db::now_text);
    let (outcome, also) = match f.outcome {
        Some("refused") => (Some("refused"), Some("duplicate")),
        o => (o, None),
    };
    // Typed NULL tests: PostgreSQL cannot infer a bare `$1 IS NULL`.
    const WHERE: &str = "WHERE (CAST(?1 AS TEXT) IS NULL OR partner = ?1)
           AND (CAST(?2 AS TEXT) IS NULL OR started_at >= ?2)
           AND (CAST(?3 AS TEXT) IS NULL OR outcome = ?3 OR outcome = ?4)";
    let total = db
        .query_opt(
            &format!("SELECT count(*) FROM files {WHERE}"),
            args![f.partner, since.as_deref(), outcome, also],
        )
        .map_err(DbError::Store)?
        .map_or(Ok(0), |r| r.int(0))
        .map_err(DbError::Store)?;
    // No limit: the count itself (both engines take a number).
    let limit = f
        .limit
        .map_or(total.max(0), |n| n.min(i64::MAX as u64) as i64);
    let rows = db
        .query(
            &format!(
                "SELECT id, partner, name, sha256, outcome,
                        COALESCE(reason, (SELECT 'reversed (reversal ' || r.id || ') by ' || r.actor || ' at ' || r.at
                                                 || ': ' || r.reason FROM reversals r WHERE r.id = files.reversal)),
                        rows, credited, failed, failed_by_code, miles,
                        report_path, archive_path, started_at, finished_at, tidy, repeats, file_code
                 FROM files {WHERE} ORDER BY id {} LIMIT ?5",
                if f.newest_first { "DESC" } else { "ASC" }
            ),
            args![f.partner, since.as_deref(), outcome, also, limit],
        )
        .map_err(DbError::Store)?;
    let rows = rows
        .iter()
        .map(|r| {
            let started_at = r.text(13)?;
            Ok(FileRow {
                id: r.int(0)?,
                partner: r.text(1)?,
                name: r.text(2)?,
                sha256: r.text(3)?,
                outcome: r.text(4)?,
                reason: r.opt_text(5)?,
                rows: r.int(6)?,
                credited: r.int(7)?,
                failed: r.int(8)?,
                failed_by_code: serde_json::from_str(&r.text(9)?).unwrap_or_default(),
                miles: r.int(10)?,
                report_path: r.opt_text(11)?,
                archive_path: r.opt_text(12)?,
                date: crate::timefmt::parse_stored(&started_at)
                    .map(|t| crate::timefmt::local_date(t, tz))
                    .unwrap_or_default(),
                started_at,
                finished_at: r.opt_text(14)?,
                tidy: r.text(15)?,
                repeats: r.opt_int(16)?,
                file_code: r.opt_text(17)?,
            })
        })
        .collect::<Result<Vec<_>, crate::store::StoreError>>()
        .map_err(DbError::Store)?;
    Ok(FilePage {
        rows,
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
    /// `credited_at` as unix seconds (as stored).
    #[serde(skip)]
    pub credited_unix: i64,
    /// The reversal that wrote this row (a compensating, negative row).
    pub reversal: Option<i64>,
    /// `pull`, `upload` or `api`.
    pub channel: String,
}

/// A search of one partner's credits by partner key: the one query behind
/// `milebatch history` and the site's history page and CSV.
#[derive(Debug, Clone)]
pub struct HistorySearch<'a> {
    pub partner: &'a str,
    pub key: &'a str,
    /// `key` is a prefix: a range on the ledger's clustered key
    /// `(partner, partner_key, …)`, never a scan.
    pub prefix: bool,
    /// Credited at or after this (unix seconds; `i64::MIN`: no bound).
    pub from: i64,
    /// Credited before this (unix seconds; `i64::MAX`: no bound).
    pub to: i64,
}

impl<'a> HistorySearch<'a> {
    /// Every credit of exactly `key`, whenever.
    pub fn exact(partner: &'a str, key: &'a str) -> Self {
        HistorySearch {
            partner,
            key,
            prefix: false,
            from: i64::MIN,
            to: i64::MAX,
        }
    }
}

/// The search's condition: a range of the ledger's primary key (pinned by
/// a unit test's query plan).
const HISTORY_WHERE: &str = "WHERE l.partner = ?1 AND l.partner_key >= ?2 AND l.partner_key <= ?3 \
                             AND l.credited_at >= ?4 AND l.credited_at < ?5";

/// Rows of a [`HistorySearch`], and how many match in all.
#[derive(Debug)]
pub struct HistoryPage {
    pub rows: Vec<HistoryRow>,
    pub total: u64,
}

/// Matching rows `offset..offset + limit` (`None`: all), in key order (then
/// time, file, line; a reversal's row after the row it reverses), from
/// every channel (files and API exchanges), reversals included.
pub fn history_search<E: crate::store::Exec + ?Sized>(
    conn: &E,
    s: &HistorySearch<'_>,
    offset: u64,
    limit: Option<u64>,
) -> Result<HistoryPage, DbError> {
    let key = s.key.trim();
    // A prefix is the key range [prefix, prefix || U+10FFFF] (BINARY
    // collation compares UTF-8 bytes).
    let (lo, hi) = if s.prefix {
        (key.to_owned(), format!("{key}\u{10FFFF}"))
    } else {
        (key.to_owned(), key.to_owned())
    };
    const WHERE: &str = HISTORY_WHERE;
    let args = crate::store_args![s.partner, &lo, &hi, s.from, s.to];
    let total = conn
        .query(&format!("SELECT count(*) FROM ledger l {WHERE}"), args)?
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    // "All" is the largest LIMIT: PostgreSQL refuses SQLite's LIMIT -1,
    // and SQLite has no OFFSET without a LIMIT.
    let page = format!(
        "LIMIT {} OFFSET {}",
        limit.unwrap_or(i64::MAX as u64).min(i64::MAX as u64),
        offset.min(i64::MAX as u64)
    );
    let rows = conn.query(
        &format!(
            "SELECT l.partner, l.partner_key, COALESCE(m.member_id, '#' || CAST(l.member AS TEXT)), l.miles,
                    CASE WHEN l.file_id = 0 THEN 'API' ELSE COALESCE(f.name, '?') END,
                    l.file_id, l.line, l.credited_at, l.reversal,
                    CASE WHEN l.file_id = 0 THEN 'api' ELSE COALESCE(f.channel, 'pull') END
             FROM ledger l LEFT JOIN files f ON f.id = l.file_id AND l.file_id <> 0
             LEFT JOIN members m ON m.id = l.member
             {WHERE}
             ORDER BY l.partner_key, l.credited_at, l.file_id, l.line, l.reversal IS NOT NULL
             {page}"
        ),
        args,
    )?;
    let rows = rows
        .into_iter()
        .map(|r| {
            let at = r.int(7)?;
            Ok(HistoryRow {
                partner: r.text(0)?,
                partner_key: r.text(1)?,
                member_id: r.text(2)?,
                miles: r.int(3)?,
                file: r.text(4)?,
                file_id: r.int(5)?,
                line: r.int(6)?,
                credited_at: chrono::DateTime::from_timestamp(at, 0)
                    .map(crate::db::now_text)
                    .unwrap_or_default(),
                credited_unix: at,
                reversal: r.opt_int(8)?,
                channel: r.text(9)?,
            })
        })
        .collect::<Result<_, crate::store::StoreError>>()?;
    Ok(HistoryPage {
        rows,
        total: total as u64,
    })
}

/// Every credit of one partner key (`milebatch history`): a
/// [`history_search`] for exactly `key`, all of it.
pub fn history<E: crate::store::Exec + ?Sized>(
    conn: &E,
    partner: &str,
    key: &str,
) -> Result<Vec<HistoryRow>, DbError> {
    Ok(history_search(conn, &HistorySearch::exact(partner, key), 0, None)?.rows)
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

/// The partner's state for `status` and the ops dashboard, on either
/// engine.
pub fn partner_status<E: crate::store::Exec + ?Sized>(
    db: &E,
    partner: &str,
) -> Result<PartnerStatus, DbError> {
    use crate::store_args as args;
    let json = |t: String, empty: serde_json::Value| serde_json::from_str(&t).unwrap_or(empty);
    let one = |sql: &str| db.query_opt(sql, args![partner]).map_err(DbError::Store);
    let last_run = one(
        "SELECT started_at, finished_at, trigger, outcome, files, rows, credited, failed, miles, error,
                skipped, skipped_by_reason, skips
         FROM runs WHERE partner = ?1 AND dry_run = 0 ORDER BY id DESC LIMIT 1",
    )?
    .map(|r| -> Result<LastRun, crate::store::StoreError> {
        Ok(LastRun {
            started_at: r.text(0)?,
            finished_at: r.opt_text(1)?,
            trigger: r.text(2)?,
            outcome: r.opt_text(3)?,
            files: r.int(4)?,
            rows: r.int(5)?,
            credited: r.int(6)?,
            failed: r.int(7)?,
            miles: r.int(8)?,
            error: r.opt_text(9)?,
            skipped: r.int(10)?,
            skipped_by_reason: json(r.text(11)?, serde_json::json!({})),
            skips: json(r.text(12)?, serde_json::json!([])),
        })
    })
    .transpose()
    .map_err(DbError::Store)?;
    let state = one(
        "SELECT last_success, consecutive_failures, last_error, last_error_at, failing_since
         FROM partner_state WHERE partner = ?1",
    )?
    .map(|r| -> Result<_, crate::store::StoreError> {
        Ok((
            r.opt_text(0)?,
            r.int(1)?,
            r.opt_text(2)?,
            r.opt_text(3)?,
            r.opt_text(4)?,
        ))
    })
    .transpose()
    .map_err(DbError::Store)?;
    let (last_success, consecutive_failures, last_error, last_error_at, run_failing_since) =
        state.unwrap_or((None, 0, None, None, None));
    let last_missed = one(
        "SELECT started_at FROM runs WHERE partner = ?1 AND outcome = 'missed' ORDER BY id DESC LIMIT 1",
    )?
    .map(|r| r.text(0))
    .transpose()
    .map_err(DbError::Store)?;
    let waiting = db
        .query(
            "SELECT id, name, outcome, report_path, tidy_error, tidy_failing_since
             FROM files WHERE partner = ?1 AND tidy = 'pending' ORDER BY id",
            args![partner],
        )
        .and_then(|rows| {
            rows.iter()
                .map(|r| {
                    Ok(WaitingFile {
                        id: r.int(0)?,
                        name: r.text(1)?,
                        outcome: r.text(2)?,
                        report_path: r.opt_text(3)?,
                        tidy_error: r.opt_text(4)?,
                        tidy_failing_since: r.opt_text(5)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(DbError::Store)?;
    let latest = |which: &str| -> Result<Option<FileBrief>, DbError> {
        one(&format!(
            "SELECT id, name, outcome, COALESCE(finished_at, started_at), credited, miles, reason
             FROM files WHERE partner = ?1 AND {which} ORDER BY id DESC LIMIT 1"
        ))?
        .map(|r| {
            Ok(FileBrief {
                id: r.int(0)?,
                name: r.text(1)?,
                outcome: r.text(2)?,
                at: r.text(3)?,
                credited: r.int(4)?,
                miles: r.int(5)?,
                reason: r.opt_text(6)?,
            })
        })
        .transpose()
        .map_err(DbError::Store)
    };
    let last_credited = latest("outcome = 'credited'")?;
    let last_refused = latest("outcome NOT IN ('credited', 'reversed')")?;
    let last_reversal = one(
        "SELECT id, COALESCE('file ' || file_id, 'API exchange ' || exchange), actor, reason, at, rows, miles
         FROM reversals WHERE partner = ?1 ORDER BY id DESC LIMIT 1",
    )?
    .map(|r| -> Result<LastReversal, crate::store::StoreError> {
        Ok(LastReversal {
            id: r.int(0)?,
            what: r.text(1)?,
            actor: r.text(2)?,
            reason: r.text(3)?,
            at: r.text(4)?,
            rows: r.int(5)?,
            miles: r.int(6)?,
        })
    })
    .transpose()
    .map_err(DbError::Store)?;
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
        run_request: crate::run_requests::open_of(db, partner).map_err(|e| match e {
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
pub fn api_exchanges<E: crate::store::Exec + ?Sized>(
    db: &E,
    partner: Option<&str>,
    limit: u64,
) -> Result<Vec<ApiExchange>, DbError> {
    use crate::store_args as args;
    // 0: all (a bound both engines take).
    let limit = if limit == 0 {
        i64::MAX
    } else {
        limit.min(i64::MAX as u64) as i64
    };
    db.query(
        "SELECT x.id, x.partner, x.key_prefix, x.idem_key, x.status, x.code, m.member_id,
                x.partner_key, x.miles, x.created_at
         FROM api_exchanges x LEFT JOIN members m ON m.id = x.member
         WHERE CAST(?1 AS TEXT) IS NULL OR x.partner = ?1
         ORDER BY x.id DESC LIMIT ?2",
        args![partner, limit],
    )
    .and_then(|rows| {
        rows.iter()
            .map(|r| {
                Ok(ApiExchange {
                    id: r.int(0)?,
                    partner: r.text(1)?,
                    key_prefix: r.text(2)?,
                    idempotency_key: r.text(3)?,
                    status: r.int(4)?,
                    code: r.opt_text(5)?,
                    member_id: r.opt_text(6)?,
                    partner_key: r.opt_text(7)?,
                    miles: r.opt_int(8)?,
                    created_at: r.text(9)?,
                })
            })
            .collect()
    })
    .map_err(DbError::Store)
}

/// Where a file's bytes are: its partner, error report and archive (for
/// the site's downloads of the failed rows).
#[derive(Debug, Clone)]
pub struct FilePaths {
    pub partner: String,
    pub report_path: Option<String>,
    pub archive_path: Option<String>,
    pub outcome: String,
}

pub fn file_paths(conn: &Connection, id: i64) -> Result<Option<FilePaths>, DbError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT partner, report_path, archive_path, outcome FROM files WHERE id = ?1",
            [id],
            |r| {
                Ok(FilePaths {
                    partner: r.get(0)?,
                    report_path: r.get(1)?,
                    archive_path: r.get(2)?,
                    outcome: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Earlier files of `partner` by id: (id, name, started_at), for the words
/// of a re-send refusal (F006). Ids of other partners are not returned.
pub fn file_names(
    conn: &Connection,
    partner: &str,
    ids: &[i64],
) -> Result<Vec<(i64, String, String)>, DbError> {
    let mut st = conn
        .prepare_cached("SELECT id, name, started_at FROM files WHERE id = ?1 AND partner = ?2")?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let mut rows = st.query(params![id, partner])?;
        if let Some(r) = rows.next()? {
            out.push((r.get(0)?, r.get(1)?, r.get(2)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ledger rows of partner `shop` (and one of `other`), inserted directly:
    /// (key, file_id, member, miles, line, unix time).
    fn db() -> (tempfile::TempDir, Connection) {
        let (dir, conn) = crate::db::temp_db();
        conn.execute_batch(
            "INSERT INTO members(id, member_id, email, status) VALUES (1, 'M1', NULL, 0), (2, 'M2', NULL, 0);
             INSERT INTO runs(id, partner, trigger, started_at) VALUES (1, 'shop', 'manual', 't');
             INSERT INTO files(id, partner, run_id, name, size, sha256, outcome, rows, credited, failed, miles, started_at, channel)
                 VALUES (7, 'shop', 1, 'f.csv', 1, 'x', 'credited', 3, 3, 0, 6, 't', 'upload');",
        )
        .unwrap();
        for (key, file, member, miles, line, at) in [
            ("K1", 7, 1, 1, 1, 100),
            ("K10", 7, 2, 2, 2, 200),
            ("K2", 7, 1, 3, 3, 300),
            ("K11", 0, 2, 4, 9, 400),
            ("K1", 7, 1, -1, 1, 500),
        ] {
            conn.execute(
                "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at, reversal)
                 VALUES ('shop', ?1, ?2, ?3, ?4, ?5, ?5, ?6, CASE WHEN ?4 < 0 THEN 1 END)",
                params![key, file, member, miles, line, at],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
             VALUES ('other', 'K1', 0, 1, 5, 1, 1, 100)",
            [],
        )
        .unwrap();
        (dir, conn)
    }

    #[test]
    fn history_search_exact_prefix_dates_and_pages() {
        let (_d, conn) = db();
        // Exact: K1 only (not K10, K11), both the credit and its reversal,
        // the reversal after it; never another partner's K1.
        let exact = history(&conn, "shop", " K1 ").unwrap();
        let got: Vec<_> = exact
            .iter()
            .map(|r| (r.partner_key.as_str(), r.miles, r.reversal))
            .collect();
        assert_eq!(got, vec![("K1", 1, None), ("K1", -1, Some(1))]);
        assert_eq!(
            (exact[0].file.as_str(), exact[0].channel.as_str()),
            ("f.csv", "upload")
        );
        let s = |prefix, from, to| HistorySearch {
            partner: "shop",
            key: "K1",
            prefix,
            from,
            to,
        };
        // Prefix: K1, K10, K11 in key order, the API row as channel api.
        let all = history_search(&conn, &s(true, i64::MIN, i64::MAX), 0, None).unwrap();
        assert_eq!(all.total, 4);
        let keys: Vec<_> = all.rows.iter().map(|r| r.partner_key.as_str()).collect();
        assert_eq!(keys, ["K1", "K1", "K10", "K11"]);
        let api = &all.rows[3];
        assert_eq!(
            (
                api.channel.as_str(),
                api.file_id,
                api.line,
                api.file.as_str()
            ),
            ("api", 0, 9, "API")
        );
        // A page: the total stays the whole search.
        let page = history_search(&conn, &s(true, i64::MIN, i64::MAX), 1, Some(2)).unwrap();
        assert_eq!(page.total, 4);
        assert_eq!(
            page.rows.iter().map(|r| r.miles).collect::<Vec<_>>(),
            [-1, 2]
        );
        // Dates: [from, to).
        let window = history_search(&conn, &s(true, 200, 400), 0, None).unwrap();
        assert_eq!(
            window
                .rows
                .iter()
                .map(|r| r.credited_unix)
                .collect::<Vec<_>>(),
            [200]
        );
    }

    #[test]
    fn history_search_seeks_the_ledger_key() {
        let (_d, conn) = db();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM ledger l {HISTORY_WHERE}"
            ))
            .unwrap()
            .query_map(params!["shop", "K1", "K1\u{10FFFF}", 0, 1], |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|p| p.contains(
                "SEARCH l USING PRIMARY KEY (partner=? AND partner_key>? AND partner_key<?)"
            )),
            "{plan:?}"
        );
    }
}
