//! Credit: one file, one SQLite transaction.
//!
//! The file row, every ledger row and every balance change commit together or
//! not at all; the partial unique index on `files(partner, sha256)` makes a
//! second credit of the same content impossible even for two processes racing.
//! A crash anywhere before `COMMIT` leaves the database as if the file had
//! never been seen, and the rerun starts from the archived bytes.
//!
//! The rows stream through: parse → decode → validate → ledger insert (or the
//! error CSV). Memory holds one record and one balance delta per member
//! touched, whatever the file size.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::config::PartnerConfig;
use crate::db::{now_text, DbError};
use crate::members::Lookup;

use super::parse::{LineEnding, ParseError, Records};
use super::report::ReportWriter;
use super::validate::{self, Code};
use super::{decode, Counts, Fetched};

/// What became of one file.
#[derive(Debug)]
pub enum Credited {
    /// Committed (or, in a dry run, validated and rolled back).
    Done {
        file_id: i64,
        counts: Counts,
        report: Option<PathBuf>,
    },
    /// Nothing credited; the reason is for ops.
    Refused {
        counts: Counts,
        reason: String,
        report: Option<PathBuf>,
    },
    /// The same content was credited before.
    Duplicate {
        first_name: String,
        first_at: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for CreditError {
    fn from(e: rusqlite::Error) -> Self {
        CreditError::Db(e.into())
    }
}

/// Why a file is refused before anything is credited.
enum Refusal {
    Unreadable(ParseError),
    Overflow(i64),
}

pub struct CreditJob<'a> {
    pub partner: &'a PartnerConfig,
    pub file: &'a Fetched,
    pub run_id: Option<i64>,
    pub report_path: PathBuf,
    pub now: chrono::DateTime<chrono::Utc>,
    pub dry_run: bool,
}

pub fn credit_file(conn: &mut Connection, job: &CreditJob<'_>) -> Result<Credited, CreditError> {
    let p = job.partner;
    let f = job.file;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some((first_name, first_at)) = tx
        .query_row(
            "SELECT name, COALESCE(finished_at, started_at) FROM files
             WHERE partner = ?1 AND sha256 = ?2 AND outcome = 'credited'",
            params![p.id, f.sha256],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
    {
        return Ok(Credited::Duplicate {
            first_name,
            first_at,
        });
    }
    let started = now_text(job.now);
    tx.execute(
        "INSERT INTO files(partner, run_id, name, size, mtime, sha256, outcome, archive_path, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'credited', ?7, ?8)",
        params![
            p.id,
            job.run_id,
            f.name,
            f.size as i64,
            f.mtime,
            f.sha256,
            f.archive.display().to_string(),
            started
        ],
    )?;
    let file_id = tx.last_insert_rowid();

    let mut report = ReportWriter::new(job.report_path.clone());
    let mut counts = Counts::default();
    let outcome = stream_rows(&tx, job, file_id, &mut report, &mut counts)?;

    let refuse = |reason: String, report: ReportWriter| -> Result<Credited, CreditError> {
        // Keep the report of a refused file: it shows ops why.
        let report = finish_report(report)?;
        Ok(Credited::Refused {
            counts,
            reason,
            report,
        })
    };
    match outcome {
        Err(Refusal::Unreadable(e)) => {
            drop(report);
            return Ok(Credited::Refused {
                counts,
                reason: format!("cannot be read as CSV: {e}"),
                report: None,
            });
        }
        Err(Refusal::Overflow(member)) => {
            return refuse(
                format!("crediting it would overflow the balance of member #{member}"),
                report,
            )
        }
        Ok(()) => {}
    }
    if counts.rows == 0 {
        return refuse("no data rows: the file is empty".into(), report);
    }
    let ratio = counts.failed as f64 / counts.rows as f64;
    if ratio > p.max_error_ratio {
        return refuse(
            format!(
                "{} of {} rows failed ({:.1}%), above max_error_ratio {}",
                counts.failed,
                counts.rows,
                ratio * 100.0,
                p.max_error_ratio
            ),
            report,
        );
    }

    tx.execute(
        "UPDATE files SET rows = ?2, credited = ?3, failed = ?4, failed_by_code = ?5, miles = ?6,
                          report_path = ?7, finished_at = ?8
         WHERE id = ?1",
        params![
            file_id,
            counts.rows as i64,
            counts.credited as i64,
            counts.failed as i64,
            counts.by_code_json(),
            counts.miles as i64,
            (report.rows() > 0).then(|| report.path().display().to_string()),
            now_text(chrono::Utc::now()),
        ],
    )?;
    // The report is in place before the commit: after a crash between the
    // two, the rerun rewrites it byte for byte.
    let report = finish_report(report)?;
    if job.dry_run {
        tx.rollback()?;
    } else {
        tx.commit()?;
    }
    Ok(Credited::Done {
        file_id,
        counts,
        report,
    })
}

fn finish_report(report: ReportWriter) -> Result<Option<PathBuf>, CreditError> {
    let path = report.path().to_owned();
    report
        .finish()
        .map_err(|source| CreditError::Io { path, source })
}

/// Parse, decode, validate and credit every row; failed rows go to `report`.
fn stream_rows(
    tx: &Connection,
    job: &CreditJob<'_>,
    file_id: i64,
    report: &mut ReportWriter,
    counts: &mut Counts,
) -> Result<Result<(), Refusal>, CreditError> {
    let p = job.partner;
    let rules = p.rules();
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CreditError::Io { path, source }
    };
    let input = std::fs::File::open(&job.file.archive).map_err(io_err(&job.file.archive))?;
    let mut records = Records::new(BufReader::with_capacity(256 * 1024, input));
    let mut lookup = Lookup::new(tx)?;
    let mut insert = tx.prepare(
        "INSERT INTO ledger(file_id, line, partner, member, partner_key, miles, credited_at, dup)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
    )?;
    let credited_at = job.now.timestamp();
    let mut deltas: HashMap<i64, i64> = HashMap::new();
    let default_ending = match p.encoding {
        crate::config::Encoding::ShiftJis => LineEnding::CrLf,
        crate::config::Encoding::Utf8 => LineEnding::Lf,
    };
    let mut header_pending = p.header;
    loop {
        let rec = match records.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(ParseError::Io(e)) => return Err(io_err(&job.file.archive)(e)),
            Err(e) => return Ok(Err(Refusal::Unreadable(e))),
        };
        if header_pending {
            header_pending = false;
            continue;
        }
        counts.rows += 1;
        let code = if !decode::record_decodes(rec.raw, p.encoding) {
            Some(Code::E009)
        } else {
            match decode::three_fields(&rec, p.encoding) {
                None => Some(Code::E001),
                Some(fields) => match validate::check(fields, &rules, &mut lookup)? {
                    Err(code) => Some(code),
                    Ok(v) => {
                        let dup = if rules.allow_duplicate_rows {
                            rec.line as i64
                        } else {
                            0
                        };
                        let n = insert.execute(params![
                            file_id,
                            rec.line as i64,
                            p.id,
                            v.member,
                            v.key.as_ref(),
                            v.miles as i64,
                            credited_at,
                            dup
                        ])?;
                        if n == 0 {
                            Some(Code::E008)
                        } else {
                            let d = deltas.entry(v.member).or_insert(0);
                            match d.checked_add(v.miles as i64) {
                                Some(s) => *d = s,
                                None => return Ok(Err(Refusal::Overflow(v.member))),
                            }
                            counts.credited += 1;
                            counts.miles = counts.miles.saturating_add(v.miles);
                            None
                        }
                    }
                },
            }
        };
        if let Some(code) = code {
            counts.fail(code);
            let ending = rec.ending.unwrap_or(default_ending);
            report
                .write(rec.raw, code, ending)
                .map_err(io_err(report.path()))?;
        }
    }
    drop(insert);
    drop(lookup);
    apply_balances(tx, deltas)
}

/// Add the file's per-member totals to the balances, in key order (sequential
/// B-tree access). An overflow trips the table's CHECK and refuses the file.
fn apply_balances(
    tx: &Connection,
    deltas: HashMap<i64, i64>,
) -> Result<Result<(), Refusal>, CreditError> {
    let mut v: Vec<(i64, i64)> = deltas.into_iter().collect();
    v.sort_unstable();
    let mut upsert = tx.prepare(
        "INSERT INTO balances(member, miles) VALUES (?1, ?2)
         ON CONFLICT(member) DO UPDATE SET miles = miles + excluded.miles",
    )?;
    for (member, miles) in v {
        match upsert.execute(params![member, miles]) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_CHECK =>
            {
                return Ok(Err(Refusal::Overflow(member)))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Ok(()))
}
