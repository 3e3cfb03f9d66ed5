//! The audit trail: one row per sensitive action, whoever does it (a CLI
//! user, an API key, a site user, the daemon).
//!
//! What must stay true: rows are only ever appended (triggers refuse UPDATE
//! and DELETE); `detail` never holds a secret, a password, an API key or a
//! member's e-mail in clear.

use rusqlite::Connection;

/// One audited action.
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    /// Who: `cli:<unix user>`, `user:<email>`, `key:<prefix>`, `daemon`.
    pub actor: &'a str,
    /// What, as a short stable verb: `login`, `login-failed`, `upload`,
    /// `download`, `api-key-create`, `run-now`, `reverse`, `retry`, …
    pub action: &'a str,
    /// The partner concerned, if any.
    pub partner: Option<&'a str>,
    /// Free text for people (ids, counts, outcome). No secrets.
    pub detail: &'a str,
    /// The client's address, for web requests.
    pub client: Option<&'a str>,
}

/// Append `e` with the current time (the statement is
/// `crate::store::audit::append`, shared by both engines).
pub fn record(conn: &Connection, e: &Entry<'_>) -> rusqlite::Result<i64> {
    crate::store::audit::append(conn, e, chrono::Utc::now())
        .map_err(crate::store::StoreError::into_sqlite)
}

/// What the audit log page and its CSV ask for; `None`: any.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub action: Option<String>,
    /// Part of the actor (`user:…@…`, `cli:…`, `key:…`).
    pub actor: Option<String>,
    pub partner: Option<String>,
    /// Stored-time bounds (RFC 3339 UTC text): `from <= at < until`.
    pub from: Option<String>,
    pub until: Option<String>,
    /// Rows older than this id (the next page).
    pub before: Option<i64>,
}

/// One audit row as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub partner: String,
    pub detail: String,
    pub client: String,
}

/// The newest `limit` rows matching `f`, newest first.
pub fn search(conn: &Connection, f: &Filter, limit: i64) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare_cached(
        "SELECT id, at, actor, action, COALESCE(partner, ''), detail, COALESCE(client, '') \
         FROM audit WHERE id < ?1 AND (?2 IS NULL OR action = ?2) \
         AND (?3 IS NULL OR instr(actor, ?3) > 0) AND (?4 IS NULL OR partner = ?4) \
         AND (?5 IS NULL OR at >= ?5) AND (?6 IS NULL OR at < ?6) \
         ORDER BY id DESC LIMIT ?7",
    )?;
    let rows = st
        .query_map(
            rusqlite::params![
                f.before.unwrap_or(i64::MAX),
                f.action,
                f.actor,
                f.partner,
                f.from,
                f.until,
                limit
            ],
            |r| {
                Ok(Row {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    partner: r.get(4)?,
                    detail: r.get(5)?,
                    client: r.get(6)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The CLI's actor name: `cli:` and the login name of the process's user.
pub fn cli_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", process_uid()));
    format!("cli:{user}")
}

fn process_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_appended_and_never_changed() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open(&dir.path().join("t.db")).unwrap();
        let id = record(
            &conn,
            &Entry {
                actor: "cli:ops",
                action: "reverse",
                partner: Some("shop"),
                detail: "file 3",
                client: None,
            },
        )
        .unwrap();
        let (actor, action): (String, String) = conn
            .query_row("SELECT actor, action FROM audit WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((actor.as_str(), action.as_str()), ("cli:ops", "reverse"));
        assert!(conn.execute("UPDATE audit SET actor = 'x'", []).is_err());
        assert!(conn.execute("DELETE FROM audit", []).is_err());
    }
}
