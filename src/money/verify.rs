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
//!
//! The daemon runs it on `[daemon] verify` ([`scheduled`]): each such run
//! is a `verify_runs` row (migration 13), logged (a failing one at ERROR,
//! naming the first problem), shown by `status`, and rendered for
//! Prometheus by [`metrics_lines`]. `milebatch verify` itself records
//! nothing: it stays read-only.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::Connection;
use serde::Serialize;

use crate::store::{Engine, Exec, StoreError};

use super::digest::{LedgerDigest, Row};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("verify: reading the {0}")]
    Store(#[from] StoreError),
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

impl Report {
    /// The report on a database with nothing in it.
    pub fn empty() -> Report {
        Report {
            ok: true,
            ledger_rows: 0,
            members: 0,
            credited_files: 0,
            files_without_digest: 0,
            reversals: 0,
            mismatches: Vec::new(),
            elapsed_ms: 0,
        }
    }
}

#[derive(Default)]
struct FileAgg {
    rows: u64,
    miles: i128,
    digest: LedgerDigest,
}

/// Verify the database behind `conn` (read-only is enough), on either
/// engine.
pub fn verify(conn: &dyn Exec) -> Result<Report, VerifyError> {
    let started = Instant::now();
    // One snapshot for every query below: a credit committing meanwhile
    // must not look like a mismatch.
    conn.batch(match conn.engine() {
        Engine::Sqlite => "BEGIN",
        Engine::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    })?;
    let result = verify_in_snapshot(conn);
    // A read transaction: ending it cannot lose anything.
    let _ = conn.batch("ROLLBACK");
    let mut report = result?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// One recorded run of the daemon's scheduled verify.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VerifyRun {
    /// RFC 3339 UTC.
    pub at: String,
    pub ok: bool,
    pub problems: u64,
    pub ledger_rows: u64,
    pub seconds: f64,
    /// `kind: subject: detail` of the first mismatch, or why it could not run.
    pub first_problem: Option<String>,
}

/// Verify the database at `db` now, as the daemon's schedule does: record
/// the run in `verify_runs` and log it (ERROR naming the first problem when
/// something does not add up, or when verify could not run at all).
pub fn scheduled(
    db: &std::path::Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<VerifyRun, crate::db::DbError> {
    let started = Instant::now();
    let result: Result<Report, String> = crate::db::open_query(db)
        .map_err(|e| e.to_string())
        .and_then(|c| verify(&c).map_err(|e| e.to_string()));
    let run = match &result {
        Ok(r) => VerifyRun {
            at: crate::db::now_text(now),
            ok: r.ok,
            problems: r.mismatches.len() as u64,
            ledger_rows: r.ledger_rows,
            seconds: r.elapsed_ms as f64 / 1000.0,
            first_problem: r
                .mismatches
                .first()
                .map(|m| format!("{}: {}: {}", m.kind, m.subject, m.detail)),
        },
        Err(e) => VerifyRun {
            at: crate::db::now_text(now),
            ok: false,
            problems: 0,
            ledger_rows: 0,
            seconds: started.elapsed().as_secs_f64(),
            first_problem: Some(format!("verify could not run: {e}")),
        },
    };
    match (&result, &run.first_problem) {
        (Ok(r), _) if r.ok => tracing::info!(
            ledger_rows = run.ledger_rows,
            members = r.members,
            credited_files = r.credited_files,
            seconds = run.seconds,
            "scheduled verify: ok"
        ),
        (Ok(r), first) => {
            // One line each, but a bounded log: `milebatch verify` lists them all.
            const LOG_AT_MOST: usize = 100;
            for m in r.mismatches.iter().take(LOG_AT_MOST) {
                tracing::error!(kind = m.kind, subject = %m.subject, detail = %m.detail, "scheduled verify: MISMATCH");
            }
            if r.mismatches.len() > LOG_AT_MOST {
                tracing::error!(
                    more = r.mismatches.len() - LOG_AT_MOST,
                    "scheduled verify: more mismatches not logged (run `milebatch verify` for all)"
                );
            }
            tracing::error!(
                problems = run.problems,
                first = first.as_deref().unwrap_or(""),
                ledger_rows = run.ledger_rows,
                "scheduled verify FAILED: the ledger does not add up (run `milebatch verify`)"
            );
        }
        (Err(e), _) => tracing::error!(error = %e, "scheduled verify could not run"),
    }
    let conn = crate::db::open(db)?;
    conn.execute(
        "INSERT INTO verify_runs(at, ok, problems, ledger_rows, seconds, first_problem)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            run.at,
            run.ok,
            run.problems as i64,
            run.ledger_rows as i64,
            run.seconds,
            run.first_problem
        ],
    )?;
    Ok(run)
}

/// The latest scheduled verify, if any ran.
pub fn last_run<E: crate::store::Exec + ?Sized>(
    db: &E,
) -> Result<Option<VerifyRun>, crate::store::StoreError> {
    db.query_opt(
        "SELECT at, ok, problems, ledger_rows, seconds, first_problem
         FROM verify_runs ORDER BY id DESC LIMIT 1",
        &[],
    )?
    .map(|r| {
        Ok(VerifyRun {
            at: r.text(0)?,
            ok: r.int(1)? != 0,
            problems: r.int(2)? as u64,
            ledger_rows: r.int(3)? as u64,
            seconds: r.opt_real(4)?.unwrap_or(0.0),
            first_problem: r.opt_text(5)?,
        })
    })
    .transpose()
}

/// The verify gauges in Prometheus text format, from the latest scheduled
/// verify (`verify_runs`): `milebatch_verify_last_ok` (1/0),
/// `milebatch_verify_last_run_timestamp_seconds`, `milebatch_verify_problems`.
/// Before any verify ran, the HELP/TYPE lines only (no sample: "unknown"
/// is not "ok"). A database that cannot be read gives a comment line
/// saying so, and no sample.
pub fn metrics_lines(conn: &Connection) -> String {
    let mut out = String::new();
    let last = last_run(conn);
    let gauges: [(&str, &str, Option<f64>); 3] = {
        let l = last.as_ref().ok().and_then(Option::as_ref);
        [
            (
                "milebatch_verify_last_ok",
                "1 if the last scheduled verify found that the ledger adds up, 0 if not",
                l.map(|l| if l.ok { 1.0 } else { 0.0 }),
            ),
            (
                "milebatch_verify_last_run_timestamp_seconds",
                "Unix time of the last scheduled verify",
                l.and_then(|l| crate::timefmt::parse_stored(&l.at))
                    .map(|t| t.timestamp() as f64),
            ),
            (
                "milebatch_verify_problems",
                "Mismatches the last scheduled verify found",
                l.map(|l| l.problems as f64),
            ),
        ]
    };
    if let Err(e) = &last {
        out.push_str(&format!(
            "# milebatch_verify: cannot read verify_runs: {e}\n"
        ));
    }
    for (name, help, value) in gauges {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        if let Some(v) = value {
            out.push_str(&format!("{name} {v}\n"));
        }
    }
    out
}

fn verify_in_snapshot(conn: &dyn Exec) -> Result<Report, VerifyError> {
    let mut by_member: HashMap<i64, i128> = HashMap::new();
    let mut by_file: HashMap<i64, FileAgg> = HashMap::new();
    let mut by_reversal: HashMap<i64, FileAgg> = HashMap::new();
    let mut ledger_rows = 0u64;
    conn.for_each(
        "SELECT partner, partner_key, file_id, member, miles, dup, line, credited_at, reversal
         FROM ledger",
        &[],
        &mut |r| {
            ledger_rows += 1;
            let (partner, partner_key) = (r.text(0)?, r.text(1)?);
            let row = Row {
                partner: &partner,
                partner_key: &partner_key,
                file_id: r.int(2)?,
                member: r.int(3)?,
                miles: r.int(4)?,
                dup: r.int(5)?,
                line: r.int(6)?,
                credited_at: r.int(7)?,
            };
            *by_member.entry(row.member).or_default() += i128::from(row.miles);
            if let Some(reversal) = r.opt_int(8)? {
                let agg = by_reversal.entry(reversal).or_default();
                agg.rows += 1;
                agg.miles -= i128::from(row.miles);
                agg.digest.add(&row);
            } else if row.file_id != 0 {
                let agg = by_file.entry(row.file_id).or_default();
                agg.rows += 1;
                agg.miles += i128::from(row.miles);
                agg.digest.add(&row);
            }
            Ok(())
        },
    )?;

    let mut mismatches = Vec::new();
    let mut bad_members: Vec<(i64, String)> = Vec::new();
    let mut members = 0u64;
    conn.for_each("SELECT member, miles FROM balances", &[], &mut |r| {
        members += 1;
        let (member, balance) = (r.int(0)?, r.int(1)?);
        let sum = by_member.remove(&member).unwrap_or(0);
        if i128::from(balance) != sum {
            bad_members.push((
                member,
                format!("balance {balance} miles, its ledger rows sum to {sum}"),
            ));
        }
        Ok(())
    })?;
    let mut leftover: Vec<(i64, i128)> = by_member.into_iter().filter(|(_, s)| *s != 0).collect();
    leftover.sort_unstable();
    for (member, sum) in leftover {
        bad_members.push((
            member,
            format!("no balance row, its ledger rows sum to {sum} miles"),
        ));
    }
    bad_members.sort_unstable_by_key(|(m, _)| *m);
    for (member, detail) in bad_members {
        let id = conn
            .query_opt(
                "SELECT member_id FROM members WHERE id = ?1",
                crate::store_args![member],
            )?
            .map(|r| r.text(0))
            .transpose()?;
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

    let mut credited_files = 0u64;
    let mut files_without_digest = 0u64;
    conn.for_each(
        "SELECT id, partner, name, outcome, rows, credited, failed, miles, ledger_digest
         FROM files ORDER BY id",
        &[],
        &mut |r| {
            let id = r.int(0)?;
            let (partner, name, outcome) = (r.text(1)?, r.text(2)?, r.text(3)?);
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
                return Ok(());
            }
            credited_files += 1;
            let agg = agg.unwrap_or_default();
            let (n_rows, credited, failed, miles) = (r.int(4)?, r.int(5)?, r.int(6)?, r.int(7)?);
            let stored = r.opt_text(8)?;
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
            Ok(())
        },
    )?;
    let mut reversals = 0u64;
    conn.for_each(
        "SELECT id, partner, COALESCE('file ' || file_id, 'API exchange ' || exchange),
                rows, miles, ledger_digest
         FROM reversals ORDER BY id",
        &[],
        &mut |r| {
            reversals += 1;
            let id = r.int(0)?;
            let (partner, what) = (r.text(1)?, r.text(2)?);
            let (n_rows, miles) = (r.int(3)?, r.int(4)?);
            let stored = r.text(5)?;
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
            Ok(())
        },
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_runs_are_recorded_and_rendered_for_prometheus() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("m.db");
        let conn = crate::db::open(&db).unwrap();
        // Before any run: the families, no sample ("unknown" is not "ok").
        let m = metrics_lines(&conn);
        assert!(m.contains("# TYPE milebatch_verify_last_ok gauge\n"), "{m}");
        assert!(!m.lines().any(|l| l.starts_with("milebatch_")), "{m}");

        let t = chrono::DateTime::parse_from_rfc3339("2026-11-29T05:00:00+09:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let run = scheduled(&db, t).unwrap();
        assert!(run.ok && run.problems == 0);
        let m = metrics_lines(&conn);
        assert!(m.contains("\nmilebatch_verify_last_ok 1\n"), "{m}");
        assert!(
            m.contains("\nmilebatch_verify_last_run_timestamp_seconds 1795896000\n"),
            "{m}"
        );
        assert!(m.contains("\nmilebatch_verify_problems 0\n"), "{m}");

        // A balance nobody's ledger rows explain.
        conn.execute_batch(
            "INSERT INTO members(id, member_id, status) VALUES (1, 'M1', 0);
             INSERT INTO balances(member, miles) VALUES (1, 5);",
        )
        .unwrap();
        let run = scheduled(&db, t + chrono::Duration::days(7)).unwrap();
        assert!(!run.ok);
        assert_eq!(run.problems, 1);
        assert!(run
            .first_problem
            .as_deref()
            .unwrap()
            .starts_with("balance: member M1"));
        assert_eq!(last_run(&conn).unwrap().unwrap(), run);
        let m = metrics_lines(&conn);
        assert!(m.contains("\nmilebatch_verify_last_ok 0\n"), "{m}");
        assert!(m.contains("\nmilebatch_verify_problems 1\n"), "{m}");
        assert!(
            m.contains("\nmilebatch_verify_last_run_timestamp_seconds 1796500800\n"),
            "{m}"
        );
    }
}
