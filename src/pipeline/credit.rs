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
//!
//! Before a batch's rows go in, the ledger is probed for them in key order,
//! 64 per statement, a prefix seek each on the ledger's `(partner,
//! partner_key, …)` key: a row that repeats (member, key, miles) of a row
//! credited in an earlier file within `resend_window` is a *repeat*; under
//! `unique_partner_key` a key credited before fails E010.
//!
//! A refused file (F002–F007) rolls back whole; its report, every row with
//! its own code or the file code, is written after the rollback by a second
//! streaming pass (see [`super::report`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use rusqlite::{params, Connection, TransactionBehavior};

use crate::store::{Exec, StoreError};

use crate::config::{Encoding, PartnerConfig, ResendCheck};
use crate::db::{self, now_text, DbError};
use crate::members::MemberReader;
use crate::money::digest::{self, LedgerDigest};

use super::batch::{self, Batch, Pre, ReadFailure, BATCH_ROWS};
use super::parse::{LineEnding, ParseError};
use super::report::{self, FailedLines, ReportPlace, ReportWriter, Reread};
use super::validate::{self, Code, FileCode};
use super::{Channel, Counts, Fetched};

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
        /// `resend_check = "warn"` and the file looks like a re-send.
        warning: Option<String>,
    },
    /// Nothing credited; the reason is for ops, the code for the partner.
    Refused {
        code: FileCode,
        counts: Counts,
        reason: String,
        /// The every-row report, at [`ReportPlace::staging`].
        report: PathBuf,
    },
    /// The same content was credited before.
    Duplicate {
        first_id: i64,
        first_name: String,
        first_at: String,
        /// The content's file was reversed since: its id.
        reversed_file: Option<i64>,
        /// The data rows of that file: the same bytes hold the same rows,
        /// so a duplicate shows what it held without reading it again.
        rows: u64,
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

impl From<StoreError> for CreditError {
    fn from(e: StoreError) -> Self {
        CreditError::Db(e.into())
    }
}

impl From<rusqlite::Error> for CreditError {
    fn from(e: rusqlite::Error) -> Self {
        CreditError::Db(e.into())
    }
}

/// What the pass over the rows found besides the counts.
pub(super) struct Streamed {
    /// The file stopped being CSV here; rows before it were counted.
    pub unreadable: Option<ParseError>,
    /// `header = true`, and the first line is a data row.
    pub header_missing: bool,
    /// A member whose credit from this file alone overflows.
    pub overflow: Option<i64>,
    /// Per earlier file id: this file's rows that repeat one of its rows.
    pub resent_from: HashMap<i64, u64>,
    /// SQLite: the per-member sums, applied at the end (PostgreSQL sums in SQL).
    deltas: Deltas,
    /// Of the ledger rows inserted (stored on the file row, checked by
    /// `verify`).
    pub digest: LedgerDigest,
}

pub struct CreditJob<'a> {
    pub partner: &'a PartnerConfig,
    pub file: &'a Fetched,
    pub run_id: Option<i64>,
    /// Where this delivery's report goes (see [`ReportPlace`]).
    pub reports: ReportPlace,
    pub now: chrono::DateTime<chrono::Utc>,
    pub dry_run: bool,
    /// `milebatch retry`: the file whose archived bytes these are. Only a
    /// retry may credit the content of a reversed file again.
    pub retry_of: Option<i64>,
    /// How the file came (`files.channel`).
    pub channel: Channel,
}

impl CreditJob<'_> {
    /// `files.tidy` of a new row: only a delivery pulled from the partner's
    /// server has anything to tidy there (a retry and an upload have not).
    pub fn tidy_state(&self) -> &'static str {
        if self.retry_of.is_none() && self.channel == Channel::Pull {
            "pending"
        } else {
            "done"
        }
    }

    /// File `id` of this job, as its notification event reports it.
    pub fn facts(
        &self,
        id: i64,
        counts: &Counts,
        file_code: Option<FileCode>,
    ) -> crate::notify::FileFacts<'_> {
        crate::notify::FileFacts {
            id,
            name: &self.file.name,
            channel: self.channel.as_str(),
            received_at: now_text(self.now),
            rows: counts.rows,
            credited: counts.credited,
            failed: counts.failed,
            miles: counts.miles,
            failed_by_code: counts.by_code_value(),
            file_code: file_code.map(FileCode::as_str),
        }
    }

    /// The ending of a report line for a record without its own.
    pub(super) fn default_ending(&self) -> LineEnding {
        match self.partner.encoding {
            Encoding::ShiftJis => LineEnding::CrLf,
            Encoding::Utf8 => LineEnding::Lf,
        }
    }

    /// The one-line report of a duplicate (`,,,F001`), at
    /// [`ReportPlace::staging`], in the file's own line ending.
    pub fn duplicate_report(&self) -> Result<PathBuf, CreditError> {
        let io = |source| CreditError::Io {
            path: self.file.archive.clone(),
            source,
        };
        let ending = report::sniff_ending(&self.file.archive)
            .map_err(io)?
            .unwrap_or(self.default_ending());
        let path = self.reports.staging();
        report::write_one_line(path.clone(), FileCode::F001, ending)
            .map_err(|source| CreditError::Io { path, source })
    }

    /// A file refused before any row is read (F008: it could not be
    /// decrypted or its signature failed): nothing to credit, and a
    /// one-line report `,,,F008` at [`ReportPlace::staging`], in the
    /// partner's usual line ending (the bytes say nothing about it).
    pub fn refused_unread(&self, code: FileCode, reason: String) -> Result<Credited, CreditError> {
        let path = self.reports.staging();
        let report = report::write_one_line(path.clone(), code, self.default_ending())
            .map_err(|source| CreditError::Io { path, source })?;
        Ok(Credited::Refused {
            code,
            counts: Counts::default(),
            reason,
            report,
        })
    }
}

/// Credit one file, on whichever engine `conn` is.
pub fn credit_file(
    conn: &mut crate::store::Conn,
    job: &CreditJob<'_>,
) -> Result<Credited, CreditError> {
    match conn {
        crate::store::Conn::Sqlite(c) => credit_file_sqlite(c, job),
        crate::store::Conn::Postgres(c) => super::credit_pg::credit_file(c, job),
    }
}

fn credit_file_sqlite(conn: &mut Connection, job: &CreditJob<'_>) -> Result<Credited, CreditError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(dup) = duplicate_of(&*tx, job)? {
        return Ok(dup);
    }
    let file_id = insert_file_row(&*tx, job)?;

    let report_path = job.reports.path(file_id);
    let mut report = ReportWriter::new(report_path.clone());
    let mut failed = FailedLines::new(report_path.parent().unwrap_or(Path::new(".")));
    let mut counts = Counts::default();
    let mut st = stream_rows(&tx, job, file_id, &mut report, &mut failed, &mut counts)?;
    let judged = judge(job, &mut counts, &mut st);
    let refusal = match judged.refusal {
        Some(r) => Some(r),
        None => match apply_balances(&tx, std::mem::replace(&mut st.deltas, Deltas::new(0)))? {
            Err(member) => Some((FileCode::F005, overflow_reason(member))),
            Ok(()) => None,
        },
    };
    if let Some((code, reason)) = refusal {
        drop(report); // the failed-rows-only report: never shown for a refused file
        tx.rollback()?;
        return refused(job, failed, code, reason, counts);
    }
    drop(failed);
    let report_path = (report.rows() > 0).then(|| report.path().display().to_string());
    finish_file_row(
        &*tx,
        job,
        file_id,
        &counts,
        report_path.as_deref(),
        st.digest,
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
        warning: judged.resend,
    })
}

/// The earlier credit of the same content, if any: then this delivery is
/// a duplicate. A reversed file's bytes count as credited here: a
/// re-delivery never credits them again, only `milebatch retry` does.
pub(super) fn duplicate_of(
    db: &dyn Exec,
    job: &CreditJob<'_>,
) -> Result<Option<Credited>, StoreError> {
    let row = db.query_opt(
        "SELECT id, name, COALESCE(finished_at, started_at),
                CASE WHEN outcome = 'reversed' THEN id END, rows
         FROM files
         WHERE partner = ?1 AND sha256 = ?2
           AND (outcome = 'credited' OR (outcome = 'reversed' AND ?3 = 0))
         ORDER BY outcome = 'credited' DESC, id DESC LIMIT 1",
        crate::store_args![
            &job.partner.id,
            &job.file.sha256,
            i64::from(job.retry_of.is_some())
        ],
    )?;
    let Some(r) = row else {
        return Ok(None);
    };
    Ok(Some(Credited::Duplicate {
        first_id: r.int(0)?,
        first_name: r.text(1)?,
        first_at: r.text(2)?,
        reversed_file: r.opt_int(3)?,
        rows: r.int(4)?.max(0) as u64,
    }))
}

/// The file's row, `credited` until the transaction says otherwise; its id.
pub(super) fn insert_file_row(db: &dyn Exec, job: &CreditJob<'_>) -> Result<i64, StoreError> {
    let f = job.file;
    db.insert_id(
        "INSERT INTO files(partner, run_id, name, size, mtime, sha256, outcome, archive_path, started_at,
                           retry_of, tidy, channel)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'credited', ?7, ?8, ?9, ?10, ?11)",
        crate::store_args![
            &job.partner.id,
            job.run_id,
            &f.name,
            f.size as i64,
            f.mtime,
            &f.sha256,
            &f.archive.display().to_string(),
            &now_text(job.now),
            job.retry_of,
            job.tidy_state(),
            job.channel.as_str(),
        ],
    )
}

/// What the rows say about the file as a whole.
pub(super) struct Judged {
    /// Refused before its balances are applied (every F code but a
    /// balance overflow found while applying them).
    pub refusal: Option<(FileCode, String)>,
    /// The file looks like a re-send (for the warning or F006).
    pub resend: Option<String>,
}

/// Judge the streamed file: counts' `repeats` filled in, and the refusal,
/// in the order the codes are checked (F002, F007, F003, F004, F006, F005
/// of the file alone).
pub(super) fn judge(job: &CreditJob<'_>, counts: &mut Counts, st: &mut Streamed) -> Judged {
    let p = job.partner;
    let checked = p.resend_check != ResendCheck::Off;
    let repeats: u64 = st.resent_from.values().sum();
    counts.repeats = checked.then_some(repeats);
    let over = checked && counts.rows > 0 && repeats as f64 / counts.rows as f64 > p.resend_ratio;
    let resend = over.then(|| resend_sentence(&st.resent_from, repeats, counts.rows));
    let refusal = if let Some(e) = st.unreadable.take() {
        Some((FileCode::F002, format!("cannot be read as CSV: {e}")))
    } else if st.header_missing {
        Some((
            FileCode::F007,
            "header = true but the first line is a data row: its third field has a digit. \
             Nothing was credited, so that row is not lost. If this partner's files have no \
             header line, set header = \"auto\" (or false) and re-deliver the file"
                .to_owned(),
        ))
    } else if counts.rows == 0 {
        Some((FileCode::F003, "no data rows: the file is empty".to_owned()))
    } else if counts.failed as f64 / counts.rows as f64 > p.max_error_ratio {
        Some((
            FileCode::F004,
            format!(
                "{} of {} rows failed ({:.1}%), above max_error_ratio {}",
                counts.failed,
                counts.rows,
                counts.failed as f64 / counts.rows as f64 * 100.0,
                p.max_error_ratio
            ),
        ))
    } else if let (Some(why), ResendCheck::Refuse) = (&resend, p.resend_check) {
        Some((
            FileCode::F006,
            format!(
                "{why} (more than resend_ratio {} within resend_window {}); if these are \
                 new exchanges, re-deliver with resend_check = \"warn\" for this partner",
                p.resend_ratio,
                days_or_duration(p.resend_window)
            ),
        ))
    } else {
        st.overflow
            .map(|member| (FileCode::F005, overflow_reason(member)))
    };
    Judged { refusal, resend }
}

/// A refused file, after its transaction rolled back: its every-row
/// report, from a second pass over the archive.
pub(super) fn refused(
    job: &CreditJob<'_>,
    failed: FailedLines,
    code: FileCode,
    reason: String,
    counts: Counts,
) -> Result<Credited, CreditError> {
    let p = job.partner;
    let src = Reread {
        archive: &job.file.archive,
        encoding: p.encoding,
        header: p.header,
        default_ending: job.default_ending(),
    };
    let path = job.reports.staging();
    let report = report::write_every_row(&src, failed, code, path.clone())
        .map_err(|source| CreditError::Io { path, source })?;
    Ok(Credited::Refused {
        code,
        counts,
        reason,
        report,
    })
}

/// The credited file's row completed, and its event (in the credit's
/// transaction: the event exists exactly when the credit does, and a dry
/// run rolls both back).
pub(super) fn finish_file_row(
    db: &dyn Exec,
    job: &CreditJob<'_>,
    file_id: i64,
    counts: &Counts,
    report_path: Option<&str>,
    digest: LedgerDigest,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE files SET rows = ?2, credited = ?3, failed = ?4, failed_by_code = ?5, miles = ?6,
                          report_path = ?7, finished_at = ?8, repeats = ?9, ledger_digest = ?10
         WHERE id = ?1",
        crate::store_args![
            file_id,
            counts.rows as i64,
            counts.credited as i64,
            counts.failed as i64,
            &counts.by_code_json(),
            counts.miles as i64,
            report_path,
            &now_text(chrono::Utc::now()),
            counts.repeats.map(|r| r as i64),
            &digest.to_hex(),
        ],
    )?;
    if counts.failed > 0 {
        crate::notify::file_credited_with_errors(
            db,
            &job.partner.id,
            &job.facts(file_id, counts, None),
            job.now,
        )?;
    }
    Ok(())
}

pub(super) fn overflow_reason(member: i64) -> String {
    format!("crediting it would overflow the balance of member #{member}")
}

/// "looks like a re-send of file 18: 2,412 of 2,450 rows already credited"
fn resend_sentence(from: &HashMap<i64, u64>, repeats: u64, rows: u64) -> String {
    let mut ids: Vec<(i64, u64)> = from.iter().map(|(id, n)| (*id, *n)).collect();
    // The files most repeated first; at most five named.
    ids.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let named: Vec<String> = ids.iter().take(5).map(|(id, _)| id.to_string()).collect();
    let files = match ids.len() {
        1 => format!("file {}", named[0]),
        n if n <= 5 => format!("files {}", named.join(", ")),
        n => format!("files {} and {} more", named.join(", "), n - 5),
    };
    format!(
        "looks like a re-send of {files}: {} of {} rows already credited",
        thousands(repeats),
        thousands(rows)
    )
}

/// `90d` rather than humantime's `2months 29days 2h 52m 48s`.
fn days_or_duration(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// 2450 → "2,450".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn finish_report(report: ReportWriter) -> Result<Option<PathBuf>, CreditError> {
    let path = report.path().to_owned();
    report
        .finish()
        .map_err(|source| CreditError::Io { path, source })
}

impl Streamed {
    /// Nothing seen yet; per-member sums kept in SQL, not here.
    pub(super) fn without_deltas() -> Streamed {
        Streamed {
            unreadable: None,
            header_missing: false,
            overflow: None,
            resent_from: HashMap::new(),
            deltas: Deltas::new(0),
            digest: LedgerDigest::default(),
        }
    }
}

/// Parse, decode, validate and credit every row; failed rows go to `report`
/// (and their lines to `failed`).
fn stream_rows(
    tx: &Connection,
    job: &CreditJob<'_>,
    file_id: i64,
    report: &mut ReportWriter,
    failed: &mut FailedLines,
    counts: &mut Counts,
) -> Result<Streamed, CreditError> {
    // The reader thread and its lookup helper look members up on read-only
    // connections of their own, in parallel with the inserts here. They open
    // their read transactions after ours began (BEGIN IMMEDIATE): no other
    // writer can commit until we do, and this transaction writes no member,
    // so they see exactly the members this one sees.
    let members = [
        MemberReader::Sqlite(db::open_reader(tx)?),
        MemberReader::Sqlite(db::open_reader(tx)?),
    ];
    with_batches(job, members, |batches, recycle| {
        let sinks = Sinks {
            report,
            failed,
            counts,
        };
        credit_batches(tx, job, file_id, sinks, batches, recycle)
    })
}

/// Run `consume` on the file's batches as a reader thread makes them (and
/// a helper thread shares its member look-ups), on the two `members`
/// connections; `consume` sends each batch back for reuse when done.
/// Returning drops the batches' receiver: a reader still sending then
/// stops, and dropping its helper's job channel stops the helper.
pub(super) fn with_batches<T>(
    job: &CreditJob<'_>,
    members: [MemberReader; 2],
    consume: impl FnOnce(
        Receiver<Result<Batch, ReadFailure>>,
        std::sync::mpsc::Sender<Batch>,
    ) -> Result<T, CreditError>,
) -> Result<T, CreditError> {
    let p = job.partner;
    let archive = &job.file.archive;
    let io = |source| CreditError::Io {
        path: archive.clone(),
        source,
    };
    let input = std::fs::File::open(archive).map_err(io)?;
    let [members, helper_members] = members;
    let (to_credit, batches) = sync_channel(BATCHES_AHEAD);
    let (to_reader, recycled) = std::sync::mpsc::channel();
    let (jobs_tx, jobs) = std::sync::mpsc::channel();
    let (done_tx, done) = sync_channel(1);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("milebatch-lookup".into())
            .spawn_scoped(scope, move || {
                batch::lookup_worker(helper_members, jobs, done_tx)
            })
            .map_err(io)?;
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
            .map_err(io)?;
        consume(batches, to_reader)
    })
}

/// Where the per-row outcomes go.
struct Sinks<'s> {
    report: &'s mut ReportWriter,
    failed: &'s mut FailedLines,
    counts: &'s mut Counts,
}

/// A valid row: (line, member, key, miles).
type ValidRow<'k> = (i64, i64, Cow<'k, str>, u64);

fn credit_batches(
    tx: &Connection,
    job: &CreditJob<'_>,
    file_id: i64,
    sinks: Sinks<'_>,
    batches: Receiver<Result<Batch, ReadFailure>>,
    recycle: std::sync::mpsc::Sender<Batch>,
) -> Result<Streamed, CreditError> {
    let Sinks {
        report,
        failed,
        counts,
    } = sinks;
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
    let mut history = History::new(tx, job, file_id)?;
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
    let mut out = Streamed {
        unreadable: None,
        header_missing: false,
        overflow: None,
        resent_from: HashMap::new(),
        deltas: Deltas::new(max_id),
        digest: LedgerDigest::default(),
    };
    let default_ending = job.default_ending();
    for batch in batches {
        let batch = match batch {
            Ok(b) => b,
            Err(ReadFailure::Io(e)) => return Err(io_err(&job.file.archive)(e)),
            Err(ReadFailure::Unreadable(e)) => {
                out.unreadable = Some(e);
                break;
            }
            Err(ReadFailure::Db(e)) => return Err(e.into()),
        };
        out.header_missing |= batch.header_missing;
        // Validate every row in line order.
        codes.clear();
        let mut valid: Vec<ValidRow<'_>> = Vec::with_capacity(batch.rows.len());
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
        // What the ledger already holds for these keys: repeats of earlier
        // files, and E010. E010 rows are not inserted.
        history.judge(&valid, &by_key)?;
        by_key.retain(|&i| !history.e010[i as usize]);
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
        let mut next_valid = 0usize;
        for (row, code) in batch.rows.iter().zip(codes.iter_mut()) {
            counts.rows += 1;
            if code.is_none() {
                let v = next_valid;
                next_valid += 1;
                let (line, member, key, miles) = &valid[v];
                if history.e010[v] {
                    *code = Some(Code::E010);
                } else if repeated[v] {
                    *code = Some(Code::E008);
                } else {
                    if out.overflow.is_none() && !out.deltas.add(*member, *miles) {
                        // Refused at the end (F005); the rows after it are
                        // still checked, so that each keeps its own code.
                        out.overflow = Some(*member);
                    }
                    counts.credited += 1;
                    counts.miles = counts.miles.saturating_add(*miles);
                    // The row exactly as inserted (a `miles` beyond i64
                    // overflowed just above, and the file is refused).
                    out.digest.add(&digest::Row {
                        partner: &p.id,
                        partner_key: key,
                        file_id,
                        member: *member,
                        miles: *miles as i64,
                        dup: if rules.allow_duplicate_rows { *line } else { 0 },
                        line: *line,
                        credited_at: job.now.timestamp(),
                    });
                    if let Some(earlier) = history.earlier[v] {
                        *out.resent_from.entry(earlier).or_default() += 1;
                    }
                }
            }
            if let Some(code) = *code {
                counts.fail(code);
                let ending = row.ending.unwrap_or(default_ending);
                report
                    .write(batch.raw(row), code, ending)
                    .map_err(io_err(report.path()))?;
                failed.push(row.line, code).map_err(io_err(report.path()))?;
            }
        }
        drop(valid);
        let _ = recycle.send(batch);
    }
    Ok(out)
}

/// Rows (re-send probe) or distinct partner keys (E010 probe) per ledger
/// probe statement.
const PROBE_ROWS: usize = 64;

/// The re-send probe: ?1 partner, ?2 this file, ?3 the window's start; then
/// (row index, key, member, miles) per row. `CROSS JOIN` keeps the rows
/// outside: left to itself, SQLite 3.54 scans the partner's whole ledger
/// once per statement and looks the rows up inside (1M rows: minutes, not a
/// second).
fn repeats_sql() -> String {
    let values: Vec<String> = (0..PROBE_ROWS)
        .map(|j| {
            let at = 4 + 4 * j;
            format!("(?{}, ?{}, ?{}, ?{})", at, at + 1, at + 2, at + 3)
        })
        .collect();
    format!(
        "WITH v(i, k, m, mi) AS (VALUES {})
         SELECT v.i, l.file_id FROM v CROSS JOIN ledger l
           ON l.partner = ?1 AND l.partner_key = v.k AND l.member = v.m AND l.miles = v.mi
         WHERE l.file_id <> ?2 AND l.credited_at >= ?3 AND {NOT_REVERSED}",
        values.join(", ")
    )
}

/// A credit `l` that no reversal took back: its compensating row has the
/// same key with the miles negated (`money::reverse`). One primary-key
/// probe, made only for the rows that match otherwise. The re-send check
/// and E010 ignore reversed credits: after a reversal, the partner's
/// corrected file is not a re-send, and its keys are free again.
pub(super) const NOT_REVERSED: &str = "NOT EXISTS (SELECT 1 FROM ledger r
    WHERE r.partner = l.partner AND r.partner_key = l.partner_key AND r.file_id = l.file_id
      AND r.member = l.member AND r.miles = -l.miles AND r.dup = l.dup)";

/// The E010 probe: ?1 partner, then the distinct keys.
fn keys_sql() -> String {
    let list: Vec<String> = (0..PROBE_ROWS).map(|j| format!("?{}", j + 2)).collect();
    format!(
        "SELECT partner_key, file_id, member, miles FROM ledger l
         WHERE partner = ?1 AND partner_key IN ({}) AND miles > 0 AND {NOT_REVERSED}",
        list.join(", ")
    )
}

/// The ledger's rows for a batch's partner keys, judged per valid row.
struct History<'c> {
    /// Re-sends (`None`: `resend_check = "off"`): per row, the earlier
    /// files' ledger rows with the same (key, member, miles) in the window.
    /// Only true repeats come back, by row index: in the steady state every
    /// key has history, and returning it all cost more than the seeks.
    repeats: Option<rusqlite::Statement<'c>>,
    /// E010 (`None`: not `unique_partner_key`): every ledger row of each
    /// distinct key, this file's earlier batches included.
    keys_probe: Option<rusqlite::Statement<'c>>,
    file_id: i64,
    /// Per valid row of the batch: the latest earlier file holding the same
    /// (member, key, miles) within the window.
    earlier: Vec<Option<i64>>,
    /// Per valid row: fails E010.
    e010: Vec<bool>,
    /// The E010 probe's answer: (key, file, member, miles).
    found: Vec<(String, i64, i64, u64)>,
    keys: Vec<u32>,
}

impl<'c> History<'c> {
    fn new(tx: &'c Connection, job: &CreditJob<'_>, file_id: i64) -> rusqlite::Result<History<'c>> {
        let p = job.partner;
        let repeats = if p.resend_check != ResendCheck::Off {
            let mut st = tx.prepare(&repeats_sql())?;
            let window = i64::try_from(p.resend_window.as_secs()).unwrap_or(i64::MAX);
            st.raw_bind_parameter(1, &p.id)?;
            st.raw_bind_parameter(2, file_id)?;
            st.raw_bind_parameter(3, job.now.timestamp().saturating_sub(window))?;
            Some(st)
        } else {
            None
        };
        let keys_probe = if p.unique_partner_key {
            let mut st = tx.prepare(&keys_sql())?;
            st.raw_bind_parameter(1, &p.id)?;
            Some(st)
        } else {
            None
        };
        Ok(History {
            repeats,
            keys_probe,
            file_id,
            earlier: Vec::new(),
            e010: Vec::new(),
            found: Vec::new(),
            keys: Vec::new(),
        })
    }

    /// Fill `earlier` and `e010` for `valid`, whose indexes `by_key` lists in
    /// key order (so that neighbouring probes share B-tree pages).
    fn judge(&mut self, valid: &[ValidRow<'_>], by_key: &[u32]) -> rusqlite::Result<()> {
        self.earlier.clear();
        self.earlier.resize(valid.len(), None);
        self.e010.clear();
        self.e010.resize(valid.len(), false);
        if by_key.is_empty() {
            return Ok(());
        }
        if let Some(probe) = self.repeats.as_mut() {
            for chunk in by_key.chunks(PROBE_ROWS) {
                // A short last chunk repeats its last row: one statement for all.
                for j in 0..PROBE_ROWS {
                    let i = chunk[j.min(chunk.len() - 1)];
                    let (_, member, key, miles) = &valid[i as usize];
                    let at = 4 + 4 * j;
                    probe.raw_bind_parameter(at, i)?;
                    probe.raw_bind_parameter(at + 1, key.as_ref())?;
                    probe.raw_bind_parameter(at + 2, *member)?;
                    probe.raw_bind_parameter(at + 3, *miles as i64)?;
                }
                let mut rows = probe.raw_query();
                while let Some(r) = rows.next()? {
                    let (i, file): (u32, i64) = (r.get(0)?, r.get(1)?);
                    let e = &mut self.earlier[i as usize];
                    *e = Some(e.map_or(file, |was| was.max(file)));
                }
            }
        }
        let Some(probe) = self.keys_probe.as_mut() else {
            return Ok(());
        };
        // The start (in `by_key`) of each distinct key.
        self.keys.clear();
        for (pos, &i) in by_key.iter().enumerate() {
            if pos == 0 || valid[by_key[pos - 1] as usize].2 != valid[i as usize].2 {
                self.keys.push(pos as u32);
            }
        }
        let ends: Vec<usize> = self.keys[1..]
            .iter()
            .map(|&e| e as usize)
            .chain([by_key.len()])
            .collect();
        for (starts, ends) in self.keys.chunks(PROBE_ROWS).zip(ends.chunks(PROBE_ROWS)) {
            for j in 0..PROBE_ROWS {
                let start = starts[j.min(starts.len() - 1)];
                let key = &valid[by_key[start as usize] as usize].2;
                probe.raw_bind_parameter(j + 2, key.as_ref())?;
            }
            self.found.clear();
            let mut rows = probe.raw_query();
            while let Some(r) = rows.next()? {
                self.found
                    .push((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64));
            }
            drop(rows);
            self.found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (&start, &end) in starts.iter().zip(ends) {
                let group = &by_key[start as usize..end];
                let key = valid[group[0] as usize].2.as_ref();
                let lo = self.found.partition_point(|h| h.0.as_str() < key);
                let hi = self.found.partition_point(|h| h.0.as_str() <= key);
                Self::judge_unique(
                    valid,
                    group,
                    &self.found[lo..hi],
                    self.file_id,
                    &mut self.e010,
                );
            }
        }
        Ok(())
    }

    /// E010 under `unique_partner_key`, for one key's rows of a batch: all of
    /// them when an earlier file credited the key; otherwise every row but
    /// the key's first in this file and its exact repeats (E008, decided by
    /// the insert).
    fn judge_unique(
        valid: &[ValidRow<'_>],
        group: &[u32],
        hist: &[(String, i64, i64, u64)],
        file_id: i64,
        e010: &mut [bool],
    ) {
        if hist.iter().any(|h| h.1 != file_id) {
            for &i in group {
                e010[i as usize] = true;
            }
            return;
        }
        let kept = match hist.first() {
            // Credited by an earlier batch of this file.
            Some(h) => (h.2, h.3),
            None => {
                let first = group
                    .iter()
                    .min_by_key(|&&i| valid[i as usize].0)
                    .expect("a group has rows");
                let (_, member, _, miles) = &valid[*first as usize];
                (*member, *miles)
            }
        };
        for &i in group {
            let (_, member, _, miles) = &valid[i as usize];
            e010[i as usize] = (*member, *miles) != kept;
        }
    }
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
/// `Ok(Err(member))`: that member's balance would overflow.
fn apply_balances(tx: &Connection, deltas: Deltas) -> Result<Result<(), i64>, CreditError> {
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
                Err(e) if is_overflow(&e) => return Ok(Err(*member)),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_sentences() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(2450), "2,450");
        assert_eq!(thousands(1_234_567), "1,234,567");
        let one = HashMap::from([(18, 2412)]);
        assert_eq!(
            resend_sentence(&one, 2412, 2450),
            "looks like a re-send of file 18: 2,412 of 2,450 rows already credited"
        );
        let many: HashMap<i64, u64> = (1..=7).map(|id| (id, 10 + id as u64)).collect();
        assert_eq!(
            resend_sentence(&many, 98, 100),
            "looks like a re-send of files 7, 6, 5, 4, 3 and 2 more: 98 of 100 rows already credited"
        );
        assert_eq!(
            days_or_duration(crate::config::DEFAULT_RESEND_WINDOW),
            "90d"
        );
        assert_eq!(days_or_duration(std::time::Duration::from_secs(7200)), "2h");
    }

    /// Both probes seek the ledger by (partner, partner_key) per row or key:
    /// a plan that scans the partner's ledger instead is quadratic.
    #[test]
    fn probes_seek_the_ledger_key() {
        let d = tempfile::tempdir().unwrap();
        let c = crate::db::open(&d.path().join("m.db")).unwrap();
        for sql in [repeats_sql(), keys_sql()] {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = st.raw_query();
            let mut plan = Vec::new();
            while let Some(r) = rows.next().unwrap() {
                plan.push(r.get::<_, String>(3).unwrap());
            }
            let search = plan
                .iter()
                .position(|l| l.contains("USING PRIMARY KEY (partner=? AND partner_key=?)"));
            assert!(search.is_some(), "{plan:?}");
            assert!(
                plan.iter()
                    .all(|l| !l.starts_with("SCAN l") && !l.starts_with("SCAN ledger")),
                "{plan:?}"
            );
            if let Some(values) = plan.iter().position(|l| l == "SCAN v") {
                assert!(values < search.unwrap(), "the rows outside: {plan:?}");
            }
        }
    }
}
