//! Credit: one file, one SQLite transaction.
//!
//! The file row, every ledger row and every balance change commit together or
//! not at all; the partial unique index on `files(partner, sha256)` makes a
//! second credit of the same content impossible even for two processes racing.
//! A crash anywhere before `COMMIT` leaves the database as if the file had
//! never been seen, and the rerun starts from the archived bytes.
//!
//! The rows stream through in batches ([`super::batch`]): a reader thread
//! parses and decodes the next batch and looks up its members (sharing the
//! look-ups with a helper thread) while this thread validates and credits
//! the current one: ledger inserts and the error CSV in line order. Memory
//! holds a few batches and one balance delta per member, whatever the file
//! size.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::config::{Encoding, PartnerConfig};
use crate::db::{self, now_text, DbError};
use crate::money::digest::{self, LedgerDigest};

use super::batch::{self, Batch, Pre, ReadFailure, BATCH_ROWS};
use super::parse::{LineEnding, ParseError};
use super::report::ReportWriter;
use super::validate::{self, Code};
use super::{Counts, Fetched};

/// Batches decoded ahead of the credit thread.
const BATCHES_AHEAD: usize = 2;

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
        /// The content's file was reversed since: its id.
        reversed_file: Option<i64>,
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
    /// `milebatch retry`: the file whose archived bytes these are. Only a
    /// retry may credit the content of a reversed file again.
    pub retry_of: Option<i64>,
}

pub fn credit_file(conn: &mut Connection, job: &CreditJob<'_>) -> Result<Credited, CreditError> {
    let p = job.partner;
    let f = job.file;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A reversed file's bytes count as credited here: a re-delivery never
    // credits them again, only `milebatch retry` does.
    if let Some((first_name, first_at, reversed_file)) = tx
        .query_row(
            "SELECT name, COALESCE(finished_at, started_at),
                    CASE WHEN outcome = 'reversed' THEN id END
             FROM files
             WHERE partner = ?1 AND sha256 = ?2
               AND (outcome = 'credited' OR (outcome = 'reversed' AND NOT ?3))
             ORDER BY outcome = 'credited' DESC, id DESC LIMIT 1",
            params![p.id, f.sha256, job.retry_of.is_some()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
    {
        return Ok(Credited::Duplicate {
            first_name,
            first_at,
            reversed_file,
        });
    }
    let started = now_text(job.now);
    tx.execute(
        "INSERT INTO files(partner, run_id, name, size, mtime, sha256, outcome, archive_path, started_at,
                           retry_of, tidy)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'credited', ?7, ?8, ?9, CASE WHEN ?9 IS NULL THEN 'pending' ELSE 'done' END)",
        params![
            p.id,
            job.run_id,
            f.name,
            f.size as i64,
            f.mtime,
            f.sha256,
            f.archive.display().to_string(),
            started,
            job.retry_of
        ],
    )?;
    let file_id = tx.last_insert_rowid();

    let mut report = ReportWriter::new(job.report_path.clone());
    let mut counts = Counts::default();
    let mut ledger_digest = LedgerDigest::default();
    let outcome = stream_rows(
        &tx,
        job,
        file_id,
        &mut report,
        &mut counts,
        &mut ledger_digest,
    )?;

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
                          report_path = ?7, finished_at = ?8, ledger_digest = ?9
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
            ledger_digest.to_hex(),
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
    ledger_digest: &mut LedgerDigest,
) -> Result<Result<(), Refusal>, CreditError> {
    let p = job.partner;
    let archive = &job.file.archive;
    let input = std::fs::File::open(archive).map_err(|source| CreditError::Io {
        path: archive.clone(),
        source,
    })?;
    // The reader thread and its lookup helper look members up on read-only
    // connections of their own, in parallel with the inserts here. They open
    // their read transactions after ours began (BEGIN IMMEDIATE): no other
    // writer can commit until we do, and this transaction writes no member,
    // so they see exactly the members this one sees.
    let members = db::open_reader(tx)?;
    let helper_members = db::open_reader(tx)?;
    let (to_credit, batches) = sync_channel(BATCHES_AHEAD);
    let (to_reader, recycled) = std::sync::mpsc::channel();
    let (jobs_tx, jobs) = std::sync::mpsc::channel();
    let (done_tx, done) = sync_channel(1);
    let spawn_err = |source| CreditError::Io {
        path: archive.clone(),
        source,
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("milebatch-lookup".into())
            .spawn_scoped(scope, move || {
                batch::lookup_worker(helper_members, jobs, done_tx)
            })
            .map_err(spawn_err)?;
        let helper = batch::Helper {
            jobs: jobs_tx,
            done,
        };
        let pipe = batch::Pipe {
            out: to_credit,
            recycled,
        };
        std::thread::Builder::new()
            .name("milebatch-read".into())
            .spawn_scoped(scope, move || {
                batch::read_batches(input, p.encoding, p.header, &members, helper, pipe)
            })
            .map_err(spawn_err)?;
        // Returning drops `batches`: a reader still sending then stops, and
        // dropping its helper's job channel stops the helper.
        let tally = Tally {
            counts,
            digest: ledger_digest,
        };
        credit_batches(tx, job, file_id, report, tally, batches, to_reader)
    })
}

/// What the credit adds up as it goes: the file's counts, and the digest of
/// the ledger rows it inserted (stored on the file row, checked by `verify`).
struct Tally<'t> {
    counts: &'t mut Counts,
    digest: &'t mut LedgerDigest,
}

fn credit_batches(
    tx: &Connection,
    job: &CreditJob<'_>,
    file_id: i64,
    report: &mut ReportWriter,
    tally: Tally<'_>,
    batches: Receiver<Result<Batch, ReadFailure>>,
    recycle: std::sync::mpsc::Sender<Batch>,
) -> Result<Result<(), Refusal>, CreditError> {
    let Tally {
        counts,
        digest: ledger_digest,
    } = tally;
    let p = job.partner;
    let rules = p.rules();
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CreditError::Io { path, source }
    };
    let mut insert_many = tx.prepare(&insert_sql(INSERT_ROWS))?;
    let mut insert_one = tx.prepare(&insert_sql(1))?;
    // Bound once: SQLite keeps bindings across executions.
    for st in [&mut insert_many, &mut insert_one] {
        st.raw_bind_parameter(1, file_id)?;
        st.raw_bind_parameter(2, &p.id)?;
        st.raw_bind_parameter(3, job.now.timestamp())?;
    }
    let mut codes: Vec<Option<Code>> = Vec::with_capacity(BATCH_ROWS);
    // A batch's valid rows in the ledger's key order, and per valid row:
    // skipped as a repeat (E008).
    let mut by_key: Vec<u32> = Vec::with_capacity(BATCH_ROWS);
    let mut repeated: Vec<bool> = Vec::with_capacity(BATCH_ROWS);
    let mut line_of = tx.prepare(
        "SELECT line FROM ledger WHERE partner = ?1 AND partner_key = ?2 AND file_id = ?3
                                  AND member = ?4 AND miles = ?5 AND dup = ?6",
    )?;
    let max_id: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM members", [], |r| r.get(0))?;
    let mut deltas = Deltas::new(max_id);
    let default_ending = match p.encoding {
        Encoding::ShiftJis => LineEnding::CrLf,
        Encoding::Utf8 => LineEnding::Lf,
    };
    for batch in batches {
        let batch = match batch {
            Ok(b) => b,
            Err(ReadFailure::Io(e)) => return Err(io_err(&job.file.archive)(e)),
            Err(ReadFailure::Unreadable(e)) => return Ok(Err(Refusal::Unreadable(e))),
            Err(ReadFailure::Db(e)) => return Err(e.into()),
        };
        // Validate every row in line order.
        codes.clear();
        // (line, member, key, miles) of the rows that passed E001–E007
        let mut valid: Vec<(i64, i64, Cow<'_, str>, u64)> = Vec::with_capacity(batch.rows.len());
        for (i, row) in batch.rows.iter().enumerate() {
            codes.push(match row.pre {
                Pre::Failed(code) => Some(code),
                Pre::Fields(_) => {
                    let key = Cow::Borrowed(batch.key(row));
                    match validate::after_lookup(batch.found[i], key, batch.miles(row), &rules) {
                        Err(code) => Some(code),
                        Ok(v) => {
                            valid.push((row.line as i64, v.member, v.key, v.miles));
                            None
                        }
                    }
                }
            });
        }
        // Insert them in the ledger's key order, INSERT_ROWS per statement:
        // neighbouring rows share B-tree pages whatever order the partner
        // writes its keys in (1M rows in shuffled key order: 2.45 s → 1.4 s;
        // in file order the B-tree took one random-position insert per row).
        // Rows with the same key stay in line order, so ON CONFLICT DO
        // NOTHING keeps the first of them exactly as one row at a time in
        // file order would, and skips the repeats (E008). When a statement
        // inserts fewer rows than it was given, the ones it skipped are those
        // whose key the ledger holds under another line. (Not RETURNING: its
        // per-row result buffering cost more than these rare look-ups, 1M
        // rows: 1.54 s → 1.33 s of CPU.)
        by_key.clear();
        by_key.extend(0..valid.len() as u32);
        by_key.sort_unstable_by(|&a, &b| {
            let (line_a, member_a, key_a, miles_a) = &valid[a as usize];
            let (line_b, member_b, key_b, miles_b) = &valid[b as usize];
            (key_a.as_bytes(), member_a, miles_a, line_a).cmp(&(
                key_b.as_bytes(),
                member_b,
                miles_b,
                line_b,
            ))
        });
        repeated.clear();
        repeated.resize(valid.len(), false);
        for chunk in by_key.chunks(INSERT_ROWS) {
            // A full chunk in one statement; the tail one row at a time.
            let (st, per) = if chunk.len() == INSERT_ROWS {
                (&mut insert_many, INSERT_ROWS)
            } else {
                (&mut insert_one, 1)
            };
            for rows in chunk.chunks(per) {
                bind_rows(
                    st,
                    rows.iter().map(|&i| &valid[i as usize]),
                    rules.allow_duplicate_rows,
                )?;
                let inserted = st.raw_execute()?;
                if inserted != rows.len() {
                    let mut kept = 0;
                    for &i in rows {
                        let (line, member, key, miles) = &valid[i as usize];
                        let dup = if rules.allow_duplicate_rows { *line } else { 0 };
                        let holder: i64 = line_of.query_row(
                            params![p.id, key, file_id, member, *miles as i64, dup],
                            |r| r.get(0),
                        )?;
                        repeated[i as usize] = holder != *line;
                        kept += usize::from(holder == *line);
                    }
                    if kept != inserted {
                        // Cannot happen: nothing else writes this file's lines.
                        return Err(DbError::Sql(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
                            Some(format!(
                                "file {file_id}: a ledger insert of {} rows added {inserted}, \
                                 but {kept} of them hold their key",
                                rows.len()
                            )),
                        ))
                        .into());
                    }
                }
            }
        }
        let mut next_repeated = repeated.iter();
        let mut next_valid = valid.iter();
        for (row, code) in batch.rows.iter().zip(codes.iter_mut()) {
            counts.rows += 1;
            if code.is_none() {
                let (line, member, key, miles) = next_valid.next().expect("one per valid row");
                if !next_repeated.next().expect("one per valid row") {
                    if !deltas.add(*member, *miles) {
                        return Ok(Err(Refusal::Overflow(*member)));
                    }
                    // The row exactly as inserted (an overflowing `miles`
                    // refused the file just above).
                    ledger_digest.add(&digest::Row {
                        partner: &p.id,
                        partner_key: key,
                        file_id,
                        member: *member,
                        miles: *miles as i64,
                        dup: if rules.allow_duplicate_rows { *line } else { 0 },
                        line: *line,
                        credited_at: job.now.timestamp(),
                    });
                    counts.credited += 1;
                    counts.miles = counts.miles.saturating_add(*miles);
                } else {
                    *code = Some(Code::E008);
                }
            }
            if let Some(code) = *code {
                counts.fail(code);
                let ending = row.ending.unwrap_or(default_ending);
                report
                    .write(batch.raw(row), code, ending)
                    .map_err(io_err(report.path()))?;
            }
        }
        drop(valid);
        let _ = recycle.send(batch);
    }
    drop((insert_many, insert_one, line_of));
    apply_balances(tx, deltas)
}

/// Ledger rows per INSERT statement: one statement run (cursor opens,
/// foreign-key parent cursors, VDBE setup) serves this many rows.
const INSERT_ROWS: usize = 64;

/// `INSERT INTO ledger … VALUES (…), (…) ON CONFLICT DO NOTHING` for `rows`
/// rows: ?1 file, ?2 partner, ?3 time; then line, member, key, miles, dup
/// per row. Rows go in in the order written.
fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|j| {
            let at = 4 + 5 * j;
            format!(
                "(?1, ?{}, ?2, ?{}, ?{}, ?{}, ?3, ?{})",
                at,
                at + 1,
                at + 2,
                at + 3,
                at + 4
            )
        })
        .collect();
    format!(
        "INSERT INTO ledger(file_id, line, partner, member, partner_key, miles, credited_at, dup)
         VALUES {} ON CONFLICT DO NOTHING",
        values.join(", ")
    )
}

/// Bind (line, member, key, miles) rows to an [`insert_sql`] statement.
fn bind_rows<'r, 'k: 'r>(
    st: &mut rusqlite::Statement<'_>,
    rows: impl Iterator<Item = &'r (i64, i64, Cow<'k, str>, u64)>,
    allow_duplicate_rows: bool,
) -> rusqlite::Result<()> {
    for (j, (line, member, key, miles)) in rows.enumerate() {
        let at = 4 + 5 * j;
        let dup = if allow_duplicate_rows { *line } else { 0 };
        st.raw_bind_parameter(at, *line)?;
        st.raw_bind_parameter(at + 1, *member)?;
        st.raw_bind_parameter(at + 2, key.as_ref())?;
        st.raw_bind_parameter(at + 3, *miles as i64)?;
        st.raw_bind_parameter(at + 4, dup)?;
    }
    Ok(())
}

/// The file's credit per member, summed as it goes. Member keys are dense
/// integers from 1, so a flat array indexed by key is the common case: no
/// hashing, 8 bytes per member, independent of the file's size. Keys beyond
/// the array (a member added by another process meanwhile) use a map.
struct Deltas {
    dense: Vec<i64>,
    sparse: HashMap<i64, i64>,
}

/// Members up to this key get an array slot (at most 256 MiB of address
/// space, touched only where members are credited).
const DENSE_MAX: i64 = 32 << 20;

impl Deltas {
    fn new(max_id: i64) -> Deltas {
        let n = max_id.clamp(0, DENSE_MAX) as usize + 1;
        Deltas {
            // Zeroed by the allocator (calloc): untouched pages cost nothing.
            dense: vec![0; n],
            sparse: HashMap::new(),
        }
    }

    /// Add `miles` to `member`'s delta; false on i64 overflow.
    fn add(&mut self, member: i64, miles: u64) -> bool {
        let Ok(miles) = i64::try_from(miles) else {
            return false;
        };
        let d = match usize::try_from(member)
            .ok()
            .and_then(|i| self.dense.get_mut(i))
        {
            Some(d) => d,
            None => self.sparse.entry(member).or_insert(0),
        };
        match d.checked_add(miles) {
            Some(s) => {
                *d = s;
                true
            }
            None => false,
        }
    }

    /// Every touched member with its delta, in key order.
    fn into_sorted(self) -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = self
            .dense
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != 0)
            .map(|(i, d)| (i as i64, *d))
            .collect();
        v.extend(self.sparse);
        v.sort_unstable();
        v
    }
}

/// Add the file's per-member totals to the balances, in key order (sequential
/// B-tree access), INSERT_ROWS members per statement. An overflow trips the
/// table's CHECK and refuses the file; the statement that tripped it is
/// undone and its members retried one by one, to name the member.
fn apply_balances(tx: &Connection, deltas: Deltas) -> Result<Result<(), Refusal>, CreditError> {
    let upsert_sql = |rows: usize| {
        let values: Vec<String> = (0..rows)
            .map(|j| format!("(?{}, ?{})", 2 * j + 1, 2 * j + 2))
            .collect();
        format!(
            "INSERT INTO balances(member, miles) VALUES {}
             ON CONFLICT(member) DO UPDATE SET miles = miles + excluded.miles",
            values.join(", ")
        )
    };
    let mut upsert_many = tx.prepare(&upsert_sql(INSERT_ROWS))?;
    let mut upsert_one = tx.prepare(&upsert_sql(1))?;
    let is_overflow = |e: &rusqlite::Error| {
        matches!(e, rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_CHECK)
    };
    let deltas = deltas.into_sorted();
    for chunk in deltas.chunks(INSERT_ROWS) {
        if chunk.len() == INSERT_ROWS {
            for (j, (member, miles)) in chunk.iter().enumerate() {
                upsert_many.raw_bind_parameter(2 * j + 1, *member)?;
                upsert_many.raw_bind_parameter(2 * j + 2, *miles)?;
            }
            match upsert_many.raw_execute() {
                Ok(_) => continue,
                Err(e) if is_overflow(&e) => {} // find the member below
                Err(e) => return Err(e.into()),
            }
        }
        for (member, miles) in chunk {
            upsert_one.raw_bind_parameter(1, *member)?;
            upsert_one.raw_bind_parameter(2, *miles)?;
            match upsert_one.raw_execute() {
                Ok(_) => {}
                Err(e) if is_overflow(&e) => return Ok(Err(Refusal::Overflow(*member))),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Ok(()))
}
