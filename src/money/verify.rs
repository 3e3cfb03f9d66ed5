//! `milebatch verify`: proof that the money adds up.
//!
//! Checked, in one read snapshot of the database:
//! - every member's balance equals the sum of their ledger rows (a member
//!   with ledger rows and no balance row, or a balance with no rows, too);
//! - every credited file's ledger rows match the file row: their number is
//!   `credited`, their miles sum to `miles`, `rows = credited + failed`,
//!   and their digest ([`super::digest`]) is the one stored at commit;
//! - every reversal's compensating rows (`ledger.reversal`) match its
//!   `reversals` row: their number, the miles taken back, their digest;
//! - no ledger row names a file that was not credited (file id 0 is an API
//!   exchange and belongs to no file), or a reversal that does not exist.
//!
//! A reversed file (outcome `reversed`) is checked like a credited one: its
//! own rows are still there, untouched, beside the compensating ones.
//!
//! What must stay true: it only reads (safe next to the daemon, on a
//! read-only connection), and it reads the ledger once, sequentially, so a
//! million rows verify in well under 3 s.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::Serialize;

use super::digest::{LedgerDigest, Row};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("verify: reading the database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("verify: ledger row of file {file_id} has a {column} that is not {expected}")]
    BadValue {
        file_id: i64,
        column: &'static str,
        expected: &'static str,
    },
}

/// One thing that does not add up.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    /// `balance`, `file-counts`, `file-digest`, `reversal-counts`,
    /// `reversal-digest` or `stray-rows`.
    pub kind: &'static str,
    /// Who: `member M0001 (#1)`, `file 3 (shop, orders.csv)`.
    pub subject: String,
    /// What differs, with both figures.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub ledger_rows: u64,
    pub members: u64,
    pub credited_files: u64,
    /// Credited before digests were stored (schema 7): counts and miles
    /// checked, digest not.
    pub files_without_digest: u64,
    pub reversals: u64,
    pub mismatches: Vec<Mismatch>,
    pub elapsed_ms: u64,
}

#[derive(Default)]
struct FileAgg {
    rows: u64,
    miles: i128,
    digest: LedgerDigest,
}

/// Verify the database behind `conn` (read-only is enough).
pub fn verify(conn: &Connection) -> Result<Report, VerifyError> {
    let started = Instant::now();
    // One snapshot for every query below: a credit committing meanwhile
    // must not look like a mismatch.
    conn.execute_batch("BEGIN")?;
    let result = verify_in_snapshot(conn);
    // A read transaction: ending it cannot lose anything.
    let _ = conn.execute_batch("ROLLBACK");
    let mut report = result?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn verify_in_snapshot(conn: &Connection) -> Result<Report, VerifyError> {
    let mut by_member: HashMap<i64, i128> = HashMap::new();
    let mut by_file: HashMap<i64, FileAgg> = HashMap::new();
    let mut by_reversal: HashMap<i64, FileAgg> = HashMap::new();
    let mut ledger_rows = 0u64;
    {
        let mut st = conn.prepare(
            "SELECT partner, partner_key, file_id, member, miles, dup, line, credited_at, reversal
             FROM ledger",
        )?;
        let mut rows = st.raw_query();
        while let Some(r) = rows.next()? {
            ledger_rows += 1;
            let file_id = r.get::<_, i64>(2)?;
            let text = |i: usize, column: &'static str| -> Result<&str, VerifyError> {
                match r.get_ref(i)? {
                    ValueRef::Text(t) => {
                        std::str::from_utf8(t).map_err(|_| VerifyError::BadValue {
                            file_id,
                            column,
                            expected: "UTF-8 text",
                        })
                    }
                    _ => Err(VerifyError::BadValue {
                        file_id,
                        column,
                        expected: "text",
                    }),
                }
            };
            let row = Row {
                partner: text(0, "partner")?,
                partner_key: text(1, "partner_key")?,
                file_id,
                member: r.get(3)?,
                miles: r.get(4)?,
                dup: r.get(5)?,
                line: r.get(6)?,
                credited_at: r.get(7)?,
            };
            *by_member.entry(row.member).or_default() += i128::from(row.miles);
            if let Some(reversal) = r.get::<_, Option<i64>>(8)? {
                let agg = by_reversal.entry(reversal).or_default();
                agg.rows += 1;
                agg.miles -= i128::from(row.miles);
                agg.digest.add(&row);
            } else if file_id != 0 {
                let agg = by_file.entry(file_id).or_default();
                agg.rows += 1;
                agg.miles += i128::from(row.miles);
                agg.digest.add(&row);
            }
        }
    }

    let mut mismatches = Vec::new();
    let mut bad_members: Vec<(i64, String)> = Vec::new();
    let mut members = 0u64;
    {
        let mut st = conn.prepare("SELECT member, miles FROM balances")?;
        let mut rows = st.raw_query();
        while let Some(r) = rows.next()? {
            members += 1;
            let member: i64 = r.get(0)?;
            let balance: i64 = r.get(1)?;
            let sum = by_member.remove(&member).unwrap_or(0);
            if i128::from(balance) != sum {
                bad_members.push((
                    member,
                    format!("balance {balance} miles, its ledger rows sum to {sum}"),
                ));
            }
        }
    }
    let mut leftover: Vec<(i64, i128)> = by_member.into_iter().filter(|(_, s)| *s != 0).collect();
    leftover.sort_unstable();
    for (member, sum) in leftover {
        bad_members.push((
            member,
            format!("no balance row, its ledger rows sum to {sum} miles"),
        ));
    }
    bad_members.sort_unstable_by_key(|(m, _)| *m);
    {
        let mut name = conn.prepare("SELECT member_id FROM members WHERE id = ?1")?;
        for (member, detail) in bad_members {
            let id: Option<String> =
                name.query_row([member], |r| r.get(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
            let subject = match id {
                Some(id) => format!("member {id} (#{member})"),
                None => format!("member #{member} (not in the member store)"),
            };
            mismatches.push(Mismatch {
                kind: "balance",
                subject,
                detail,
            });
        }
    }

    let mut credited_files = 0u64;
    let mut files_without_digest = 0u64;
    {
        let mut st = conn.prepare(
            "SELECT id, partner, name, outcome, rows, credited, failed, miles, ledger_digest
             FROM files ORDER BY id",
        )?;
        let mut rows = st.raw_query();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let partner: String = r.get(1)?;
            let name: String = r.get(2)?;
            let outcome: String = r.get(3)?;
            let subject = format!("file {id} ({partner}, {name})");
            let agg = by_file.remove(&id);
            if outcome != "credited" && outcome != "reversed" {
                if let Some(agg) = agg {
                    mismatches.push(Mismatch {
                        kind: "stray-rows",
                        subject,
                        detail: format!(
                            "outcome {outcome}, yet {} ledger rows ({} miles) name it",
                            agg.rows, agg.miles
                        ),
                    });
                }
                continue;
            }
            credited_files += 1;
            let agg = agg.unwrap_or_default();
            let (n_rows, credited, failed, miles): (i64, i64, i64, i64) =
                (r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?);
            let stored: Option<String> = r.get(8)?;
            let mut differs = Vec::new();
            if i128::from(credited) != i128::from(agg.rows) {
                differs.push(format!(
                    "recorded {credited} credited rows, the ledger holds {}",
                    agg.rows
                ));
            }
            if i128::from(miles) != agg.miles {
                differs.push(format!(
                    "recorded {miles} miles, its ledger rows sum to {}",
                    agg.miles
                ));
            }
            if credited.checked_add(failed) != Some(n_rows) {
                differs.push(format!(
                    "recorded {n_rows} rows, but {credited} credited + {failed} failed"
                ));
            }
            if !differs.is_empty() {
                mismatches.push(Mismatch {
                    kind: "file-counts",
                    subject: subject.clone(),
                    detail: differs.join("; "),
                });
            }
            match stored {
                None => files_without_digest += 1,
                Some(stored) if stored != agg.digest.to_hex() => mismatches.push(Mismatch {
                    kind: "file-digest",
                    subject,
                    detail: format!(
                        "its ledger rows' digest is {}, the one stored at commit {stored}: \
                         a ledger row was changed, added or removed",
                        agg.digest.to_hex()
                    ),
                }),
                Some(_) => {}
            }
        }
    }
    let mut reversals = 0u64;
    {
        let mut st = conn.prepare(
            "SELECT id, partner, COALESCE('file ' || file_id, 'API exchange ' || exchange),
                    rows, miles, ledger_digest
             FROM reversals ORDER BY id",
        )?;
        let mut rows = st.raw_query();
        while let Some(r) = rows.next()? {
            reversals += 1;
            let id: i64 = r.get(0)?;
            let partner: String = r.get(1)?;
            let what: String = r.get(2)?;
            let (n_rows, miles): (i64, i64) = (r.get(3)?, r.get(4)?);
            let stored: String = r.get(5)?;
            let subject = format!("reversal {id} ({partner}, {what})");
            let agg = by_reversal.remove(&id).unwrap_or_default();
            let mut differs = Vec::new();
            if i128::from(n_rows) != i128::from(agg.rows) {
                differs.push(format!(
                    "recorded {n_rows} rows, the ledger holds {}",
                    agg.rows
                ));
            }
            if i128::from(miles) != agg.miles {
                differs.push(format!(
                    "recorded {miles} miles taken back, its ledger rows take back {}",
                    agg.miles
                ));
            }
            if !differs.is_empty() {
                mismatches.push(Mismatch {
                    kind: "reversal-counts",
                    subject: subject.clone(),
                    detail: differs.join("; "),
                });
            }
            if stored != agg.digest.to_hex() {
                mismatches.push(Mismatch {
                    kind: "reversal-digest",
                    subject,
                    detail: format!(
                        "its ledger rows' digest is {}, the one stored at commit {stored}: \
                         a ledger row was changed, added or removed",
                        agg.digest.to_hex()
                    ),
                });
            }
        }
    }
    let mut stray_reversals: Vec<(i64, FileAgg)> = by_reversal.into_iter().collect();
    stray_reversals.sort_unstable_by_key(|(id, _)| *id);
    for (id, agg) in stray_reversals {
        mismatches.push(Mismatch {
            kind: "stray-rows",
            subject: format!("reversal {id} (no such reversal)"),
            detail: format!(
                "{} ledger rows (taking back {} miles) name a reversal that does not exist",
                agg.rows, agg.miles
            ),
        });
    }
    let mut stray: Vec<(i64, FileAgg)> = by_file.into_iter().collect();
    stray.sort_unstable_by_key(|(id, _)| *id);
    for (id, agg) in stray {
        mismatches.push(Mismatch {
            kind: "stray-rows",
            subject: format!("file {id} (no such file)"),
            detail: format!(
                "{} ledger rows ({} miles) name a file that does not exist",
                agg.rows, agg.miles
            ),
        });
    }

    Ok(Report {
        ok: mismatches.is_empty(),
        ledger_rows,
        members,
        credited_files,
        files_without_digest,
        reversals,
        mismatches,
        elapsed_ms: 0,
    })
}
