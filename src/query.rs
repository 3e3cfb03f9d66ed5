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
    /// Rows repeating an earlier file's (NULL: not checked).
    pub repeats: Option<i64>,
    /// F001–F007 for a refused or duplicate file.
    pub file_code: Option<String>,
}

pub fn files(conn: &Connection, partner: Option<&str>) -> Result<Vec<FileRow>, DbError> {
    let mut st = conn.prepare(
        "SELECT id, partner, name, sha256, outcome, reason, rows, credited, failed, failed_by_code, miles,
                report_path, archive_path, started_at, finished_at, tidy, repeats, file_code
         FROM files WHERE (?1 IS NULL OR partner = ?1) ORDER BY id",
    )?;
    let rows = st.query_map(params![partner], |r| {
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
            started_at: r.get(13)?,
            finished_at: r.get(14)?,
            tidy: r.get(15)?,
            repeats: r.get(16)?,
            file_code: r.get(17)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Serialize)]
pub struct HistoryRow {
    pub partner: String,
    pub partner_key: String,
    pub member_id: String,
    pub miles: i64,
    pub file: String,
    pub line: i64,
    pub credited_at: String,
}

/// Every credit of one partner key: the search the management site offers.
pub fn history(conn: &Connection, partner: &str, key: &str) -> Result<Vec<HistoryRow>, DbError> {
    let mut st = conn.prepare(
        "SELECT l.partner, l.partner_key, m.member_id, l.miles, f.name, l.line, l.credited_at
         FROM ledger l JOIN files f ON f.id = l.file_id JOIN members m ON m.id = l.member
         WHERE l.partner = ?1 AND l.partner_key = ?2
         ORDER BY l.credited_at, l.file_id, l.line",
    )?;
    let rows = st.query_map(params![partner, key.trim()], |r| {
        let at: i64 = r.get(6)?;
        Ok(HistoryRow {
            partner: r.get(0)?,
            partner_key: r.get(1)?,
            member_id: r.get(2)?,
            miles: r.get(3)?,
            file: r.get(4)?,
            line: r.get(5)?,
            credited_at: chrono::DateTime::from_timestamp(at, 0)
                .map(crate::db::now_text)
                .unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
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
}

#[derive(Debug, Serialize, Default)]
pub struct PartnerStatus {
    pub last_run: Option<LastRun>,
    pub last_success: Option<String>,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
    /// Start of the latest run that found no file although `expect_file`.
    pub last_missed: Option<String>,
}

pub fn partner_status(conn: &Connection, partner: &str) -> Result<PartnerStatus, DbError> {
    use rusqlite::OptionalExtension;
    let last_run = conn
        .query_row(
            "SELECT started_at, finished_at, trigger, outcome, files, rows, credited, failed, miles, error
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
                })
            },
        )
        .optional()?;
    let state = conn
        .query_row(
            "SELECT last_success, consecutive_failures, last_error FROM partner_state WHERE partner = ?1",
            [partner],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (last_success, consecutive_failures, last_error) = state.unwrap_or((None, 0, None));
    let last_missed = conn
        .query_row(
            "SELECT started_at FROM runs WHERE partner = ?1 AND outcome = 'missed' ORDER BY id DESC LIMIT 1",
            [partner],
            |r| r.get(0),
        )
        .optional()?;
    Ok(PartnerStatus {
        last_run,
        last_success,
        consecutive_failures,
        last_error,
        last_missed,
    })
}
