//! `milebatch reverse`: take a wrong credit back.
//!
//! What must stay true:
//! - Nothing is deleted or edited in the ledger: each credited row of the
//!   file (or the API exchange) gets one compensating row with the same key
//!   and the miles negated, naming its `reversals` row (who, why, when).
//! - The rows, the balance reductions, the `reversals` row, the file's
//!   `reversed` outcome and the audit row commit in one transaction; a crash
//!   anywhere leaves nothing of it.
//! - No balance goes below zero: if any member has spent miles the reversal
//!   would take back, the whole reversal is refused, naming every such
//!   member and the shortfall, and nothing changes.
//! - Twice is once: a file or exchange has at most one reversal (a unique
//!   index), and asking again answers with the first one and changes nothing.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::digest::{LedgerDigest, Row};

#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    #[error("reverse: database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("reverse {target}: it records {credited} credited rows but {found} were found in the ledger; nothing changed: run `milebatch verify`")]
    Incomplete {
        target: Target,
        credited: i64,
        found: i64,
    },
}

/// What to reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every credited row of a file (`files.id`).
    File(i64),
    /// One API exchange: its ledger row has file_id 0 and dup = this id.
    Exchange(i64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::File(id) => write!(f, "file {id}"),
            Target::Exchange(id) => write!(f, "API exchange {id}"),
        }
    }
}

/// A member whose balance is too low for the reversal.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Shortfall {
    pub member_id: String,
    pub balance: i64,
    pub to_reverse: i64,
    pub shortfall: i64,
}

/// The recorded reversal.
#[derive(Debug, Clone, Serialize)]
pub struct Reversal {
    pub id: i64,
    pub partner: String,
    pub file_id: Option<i64>,
    pub exchange: Option<i64>,
    pub actor: String,
    pub reason: String,
    pub at: String,
    pub rows: i64,
    pub miles: i64,
    pub members: i64,
}

#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    /// Reversed now.
    Reversed(Reversal),
    /// Reversed before; nothing changed.
    AlreadyReversed(Reversal),
    /// Nothing changed, for this reason (no such file, not credited, …).
    Refused { reason: String },
    /// Nothing changed: these balances are too low.
    Shortfall { members: Vec<Shortfall> },
}

/// Reverse `target` for `actor` (as in the audit trail) because of `reason`;
/// `client` is the web client's address for the audit row (`None` from the
/// CLI).
pub fn reverse(
    conn: &mut Connection,
    target: Target,
    reason: &str,
    actor: &str,
    client: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Outcome, ReverseError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Ok(Outcome::Refused {
            reason: "a reason is required (--reason TEXT): it is kept with the reversal".into(),
        });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(done) = find(&tx, target)? {
        return Ok(Outcome::AlreadyReversed(done));
    }
    let partner = match target {
        Target::File(id) => {
            let file: Option<(String, String, String)> = tx
                .query_row(
                    "SELECT partner, name, outcome FROM files WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match file {
                None => {
                    return Ok(Outcome::Refused {
                        reason: format!("there is no file {id} (see `milebatch files`)"),
                    })
                }
                Some((_, name, outcome)) if outcome != "credited" => {
                    return Ok(Outcome::Refused {
                        reason: format!(
                            "file {id} ({name}) is {outcome}: nothing of it was credited, so there is nothing to reverse"
                        ),
                    })
                }
                Some((partner, _, _)) => partner,
            }
        }
        Target::Exchange(id) => {
            let partner: Option<String> = tx
                .query_row(
                    "SELECT partner FROM ledger WHERE file_id = 0 AND dup = ?1 AND reversal IS NULL LIMIT 1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            match partner {
                None => {
                    return Ok(Outcome::Refused {
                        reason: format!("no API exchange {id} was credited"),
                    })
                }
                Some(p) => p,
            }
        }
    };
    let at = crate::db::now_text(now);
    let (file_id, exchange) = match target {
        Target::File(id) => (Some(id), None),
        Target::Exchange(id) => (None, Some(id)),
    };
    // The row first, for its id; its totals once the rows are written.
    tx.execute(
        "INSERT INTO reversals(partner, file_id, exchange, actor, reason, at, rows, miles, members, ledger_digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0, 0, '')",
        params![partner, file_id, exchange, actor, reason, at],
    )?;
    let reversal_id = tx.last_insert_rowid();

    // One pass over the reversed rows, writing each compensating row as it
    // goes. A scan: the ledger has no index by file (every credited row
    // would pay for one), and a reversal is a rare, manual act. The rows
    // written meanwhile have `reversal` set, so the scan never takes them.
    let (sql, key) = match target {
        Target::File(id) => (
            "SELECT partner, partner_key, file_id, member, miles, dup, line FROM ledger
             WHERE file_id = ?1 AND reversal IS NULL",
            id,
        ),
        Target::Exchange(id) => (
            "SELECT partner, partner_key, file_id, member, miles, dup, line FROM ledger
             WHERE file_id = 0 AND dup = ?1 AND reversal IS NULL",
            id,
        ),
    };
    let mut digest = LedgerDigest::default();
    let mut per_member: BTreeMap<i64, i64> = BTreeMap::new();
    let (mut rows, mut miles) = (0i64, 0i64);
    {
        let mut select = tx.prepare(sql)?;
        let mut insert = tx.prepare(
            "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at, reversal)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut found = select.query([key])?;
        while let Some(r) = found.next()? {
            let partner: String = r.get(0)?;
            let partner_key: String = r.get(1)?;
            let row = Row {
                partner: &partner,
                partner_key: &partner_key,
                file_id: r.get(2)?,
                member: r.get(3)?,
                miles: -r.get::<_, i64>(4)?,
                dup: r.get(5)?,
                line: r.get(6)?,
                credited_at: now.timestamp(),
            };
            insert.execute(params![
                row.partner,
                row.partner_key,
                row.file_id,
                row.member,
                row.miles,
                row.dup,
                row.line,
                row.credited_at,
                reversal_id
            ])?;
            digest.add(&row);
            *per_member.entry(row.member).or_default() -= row.miles;
            rows += 1;
            miles -= row.miles;
        }
    }

    // Every credited row of the file must have been taken back: the file
    // row's count is the independent figure (`verify` keeps them equal).
    if let Target::File(id) = target {
        let credited: i64 =
            tx.query_row("SELECT credited FROM files WHERE id = ?1", [id], |r| {
                r.get(0)
            })?;
        if credited != rows {
            return Err(ReverseError::Incomplete {
                target,
                credited,
                found: rows,
            });
        }
    }

    // Every balance first, then refuse whole or reduce them all.
    let mut short = Vec::new();
    {
        let mut balance =
            tx.prepare("SELECT b.miles, m.member_id FROM members m LEFT JOIN balances b ON b.member = m.id WHERE m.id = ?1")?;
        for (&member, &take) in &per_member {
            let (have, member_id): (Option<i64>, String) = balance
                .query_row([member], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((None, format!("#{member} (not in the member store)")));
            let have = have.unwrap_or(0);
            if have < take {
                short.push(Shortfall {
                    member_id,
                    balance: have,
                    to_reverse: take,
                    shortfall: take - have,
                });
            }
        }
    }
    if !short.is_empty() {
        tx.rollback()?;
        return Ok(Outcome::Shortfall { members: short });
    }
    {
        let mut reduce = tx.prepare("UPDATE balances SET miles = miles - ?2 WHERE member = ?1")?;
        for (&member, &take) in &per_member {
            reduce.execute(params![member, take])?;
        }
    }
    tx.execute(
        "UPDATE reversals SET rows = ?2, miles = ?3, members = ?4, ledger_digest = ?5 WHERE id = ?1",
        params![
            reversal_id,
            rows,
            miles,
            per_member.len() as i64,
            digest.to_hex()
        ],
    )?;
    if let Some(id) = file_id {
        tx.execute(
            "UPDATE files SET outcome = 'reversed', reversal = ?2 WHERE id = ?1",
            params![id, reversal_id],
        )?;
    }
    crate::audit::record(
        &tx,
        &crate::audit::Entry {
            actor,
            action: "reverse",
            partner: Some(&partner),
            detail: &format!(
                "{target}: reversal {reversal_id}, {rows} rows, {miles} miles, {} members; reason: {reason}",
                per_member.len()
            ),
            client,
        },
    )?;
    let what = match target {
        Target::File(id) => serde_json::json!({ "file": id }),
        Target::Exchange(id) => serde_json::json!({ "exchange": id }),
    };
    crate::notify::credits_reversed(
        &*tx,
        &partner,
        reversal_id,
        what,
        rows as u64,
        miles as u64,
        now,
    )
    .map_err(crate::store::StoreError::into_sqlite)?;
    let done = find(&tx, target)?.expect("inserted above");
    tx.commit()?;
    tracing::info!(reversal = done.id, partner = %done.partner, %target, rows, miles, "reversed");
    Ok(Outcome::Reversed(done))
}

/// The reversal of `target`, if there is one.
pub fn find(conn: &Connection, target: Target) -> Result<Option<Reversal>, ReverseError> {
    let (column, id) = match target {
        Target::File(id) => ("file_id", id),
        Target::Exchange(id) => ("exchange", id),
    };
    Ok(conn
        .query_row(
            &format!(
                "SELECT id, partner, file_id, exchange, actor, reason, at, rows, miles, members
                 FROM reversals WHERE {column} = ?1"
            ),
            [id],
            |r| {
                Ok(Reversal {
                    id: r.get(0)?,
                    partner: r.get(1)?,
                    file_id: r.get(2)?,
                    exchange: r.get(3)?,
                    actor: r.get(4)?,
                    reason: r.get(5)?,
                    at: r.get(6)?,
                    rows: r.get(7)?,
                    miles: r.get(8)?,
                    members: r.get(9)?,
                })
            },
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use crate::db::MIGRATIONS;

    #[test]
    fn the_ledger_rebuild_keeps_every_row_the_key_and_the_triggers() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        // Rows written before the rebuild (migration 11, index 10) must
        // survive it.
        let rebuild = MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE TABLE reversals"))
            .expect("the reversals migration");
        for sql in &MIGRATIONS[..rebuild] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO members(id, member_id, status) VALUES (1, 'M1', 0);
             INSERT INTO files(id, partner, name, size, sha256, outcome, started_at)
                 VALUES (1, 'shop', 'a.csv', 1, 'x', 'credited', 't');
             INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
                 VALUES ('shop', 'K1', 1, 1, 10, 0, 1, 5), ('shop', 'K2', 1, 1, 20, 0, 2, 5);",
        )
        .unwrap();
        for sql in &MIGRATIONS[rebuild..] {
            conn.execute_batch(sql).unwrap();
        }
        let rows: Vec<(String, i64, i64, Option<i64>)> = conn
            .prepare("SELECT partner_key, miles, line, reversal FROM ledger ORDER BY line")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [("K1".into(), 10, 1, None), ("K2".into(), 20, 2, None)]
        );
        // Negative miles go in; zero does not; the key is still unique.
        let insert = "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at, reversal)
                      VALUES ('shop', 'K1', 1, 1, ?1, 0, 1, 6, 1)";
        conn.execute(insert, [-10]).unwrap();
        assert!(conn.execute(insert, [0]).is_err());
        assert!(conn.execute(insert, [-10]).is_err(), "the same key twice");
        assert!(conn.execute("UPDATE ledger SET miles = 1", []).is_err());
        assert!(conn.execute("DELETE FROM ledger", []).is_err());
    }
}
