//! Credit on PostgreSQL: one file, one transaction, set-based.
//!
//! The same rules as [`super::credit`] (its module doc says what must stay
//! true), built the way PostgreSQL is fast: the rows that pass E001–E007
//! stream into a temporary table with one `COPY`, then a handful of
//! statements judge them all at once (E010, E008, re-sends, a balance
//! overflow) and insert the ledger rows and the balances, instead of
//! probing and inserting batch by batch over the network. Rows judged in
//! SQL are only known after every row was read, so the error CSV is
//! written from a second pass over the archive (as a refused file's is).
//!
//! What must stay true besides:
//! - the outcome, counts, codes, report bytes and ledger digest of a file
//!   are those the SQLite path gives for it (`tests/store_pipeline.rs`
//!   runs the same files through both);
//! - one partner's credits are serialised across hosts by an advisory lock
//!   taken first in the transaction, so the duplicate check and the E010 /
//!   re-send judgements see every earlier credit of that partner;
//! - a credit shares the members lock that `members import` takes alone:
//!   the members a file is judged against do not change under it.

use std::borrow::Cow;
use std::path::Path;

use crate::config::ResendCheck;
use crate::members::MemberReader;
use crate::money::digest;
use crate::store::{copy_text, Exec, PgConn, StoreError};

use super::batch::{Pre, ReadFailure};
use super::credit::{
    duplicate_of, finish_file_row, insert_file_row, judge, overflow_reason, refused, with_batches,
    CreditError, CreditJob, Credited, Streamed, NOT_REVERSED,
};
use super::report::{self, FailedLines, Reread};
use super::validate::{self, Code, FileCode};
use super::Counts;

/// What the transaction came to, before it ends.
enum InTx {
    Duplicate(Credited),
    Refused {
        failed: FailedLines,
        code: FileCode,
        reason: String,
        counts: Counts,
    },
    Done(Credited),
}

pub(super) fn credit_file(c: &PgConn, job: &CreditJob<'_>) -> Result<Credited, CreditError> {
    c.batch("BEGIN ISOLATION LEVEL READ COMMITTED")?;
    match in_transaction(c, job) {
        Ok(InTx::Duplicate(d)) => {
            c.batch("ROLLBACK")?;
            Ok(d)
        }
        Ok(InTx::Refused {
            failed,
            code,
            reason,
            counts,
        }) => {
            c.batch("ROLLBACK")?;
            refused(job, failed, code, reason, counts)
        }
        Ok(InTx::Done(done)) => {
            c.batch(if job.dry_run { "ROLLBACK" } else { "COMMIT" })?;
            Ok(done)
        }
        Err(e) => {
            // The error that matters is `e`; a failed rollback leaves the
            // transaction to die with the connection.
            let _ = c.batch("ROLLBACK");
            Err(e)
        }
    }
}

fn in_transaction(c: &PgConn, job: &CreditJob<'_>) -> Result<InTx, CreditError> {
    let p = job.partner;
    c.lock(&format!("credit:{}", p.id))?;
    // The members stay as they are until the commit: `members import`
    // holds this lock alone (`store::members`), credits share it. The
    // look-up connections start after it is held, so every row of the file
    // sees one state of the members, as on SQLite (one writer at a time).
    c.execute(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended(?1, 0))",
        crate::store_args!["members"],
    )?;
    if let Some(dup) = duplicate_of(c, job)? {
        return Ok(InTx::Duplicate(dup));
    }
    let file_id = insert_file_row(c, job)?;
    c.batch(
        "CREATE TEMP TABLE incoming(
             line BIGINT NOT NULL, member BIGINT NOT NULL, partner_key TEXT NOT NULL,
             miles BIGINT NOT NULL, dup BIGINT NOT NULL, code TEXT
         ) ON COMMIT DROP",
    )?;
    let report_path = job.reports.path(file_id);
    let dir = report_path.parent().unwrap_or(Path::new(".")).to_owned();
    let mut failed = FailedLines::new(&dir);
    let mut counts = Counts::default();
    let mut st = Streamed::without_deltas();
    stream_rows(c, job, file_id, &mut failed, &mut counts, &mut st)?;

    // Judge in SQL what needs the ledger: E010, then E008 among the rest.
    let args = crate::store_args![&p.id, file_id];
    if p.unique_partner_key {
        c.execute(
            &format!("{E010_SQL} AND {NOT_REVERSED})) AS e WHERE incoming.line = e.line"),
            args,
        )?;
    }
    if !p.rules().allow_duplicate_rows {
        c.execute(E008_SQL, &[])?;
    }
    let mut late: Vec<(u64, Code)> = Vec::new();
    for r in c.query(
        "SELECT line, code, member, partner_key, miles, dup FROM incoming
         WHERE code IS NOT NULL ORDER BY line",
        &[],
    )? {
        let code = if r.text(1)? == "E010" {
            Code::E010
        } else {
            Code::E008
        };
        let (line, member, key, miles, dup) =
            (r.int(0)?, r.int(2)?, r.text(3)?, r.int(4)?, r.int(5)?);
        // Counted as credited while streaming; not credited after all.
        counts.credited -= 1;
        counts.miles = counts.miles.saturating_sub(miles as u64);
        counts.fail(code);
        st.digest.remove(&digest::Row {
            partner: &p.id,
            partner_key: &key,
            file_id,
            member,
            miles,
            dup,
            line,
            credited_at: job.now.timestamp(),
        });
        late.push((line as u64, code));
    }
    let failed = failed
        .merged(&late, &dir)
        .map_err(|source| CreditError::Io {
            path: dir.clone(),
            source,
        })?;
    if p.resend_check != ResendCheck::Off {
        let window = i64::try_from(p.resend_window.as_secs()).unwrap_or(i64::MAX);
        let since = job.now.timestamp().saturating_sub(window);
        for r in c.query(
            &format!("{RESEND_SQL} AND {NOT_REVERSED}) AS e FROM incoming i WHERE i.code IS NULL) x WHERE e IS NOT NULL GROUP BY e"),
            crate::store_args![&p.id, file_id, since],
        )? {
            st.resent_from.insert(r.int(0)?, r.int(1)? as u64);
        }
    }

    let judged = judge(job, &mut counts, &mut st);
    let refusal = match judged.refusal {
        Some(r) => Some(r),
        None => add_balances(c)?.map(|member| (FileCode::F005, overflow_reason(member))),
    };
    if let Some((code, reason)) = refusal {
        return Ok(InTx::Refused {
            failed,
            code,
            reason,
            counts,
        });
    }
    let inserted = c.execute(
        "INSERT INTO ledger(file_id, line, partner, member, partner_key, miles, credited_at, dup)
         SELECT CAST(?2 AS BIGINT), line, ?1, member, partner_key, miles, CAST(?3 AS BIGINT), dup
         FROM incoming
         WHERE code IS NULL ORDER BY partner_key, member, miles, dup",
        crate::store_args![&p.id, file_id, job.now.timestamp()],
    )?;
    if inserted != counts.credited {
        // Cannot happen: every row left is one the file credits.
        return Err(CreditError::Db(
            StoreError::Decode {
                column: 0,
                wanted: "as many ledger rows inserted as rows credited",
            }
            .into(),
        ));
    }
    let src = Reread {
        archive: &job.file.archive,
        encoding: p.encoding,
        header: p.header,
        default_ending: job.default_ending(),
    };
    // The report is in place before the commit: after a crash between the
    // two, the rerun rewrites it byte for byte.
    let report =
        report::write_failed_rows(&src, failed, report_path.clone()).map_err(|source| {
            CreditError::Io {
                path: report_path.clone(),
                source,
            }
        })?;
    let shown = report.as_ref().map(|r| r.display().to_string());
    finish_file_row(c, job, file_id, &counts, shown.as_deref(), st.digest)?;
    Ok(InTx::Done(Credited::Done {
        file_id,
        counts,
        report,
        warning: judged.resend,
    }))
}

/// E010 under `unique_partner_key`: every row of a key an earlier file
/// credited (and no reversal took back), and every row of a key new to
/// the ledger whose (member, miles) differs from the key's first row in
/// this file. Completed with [`NOT_REVERSED`], two parentheses and the
/// join back to `incoming`.
const E010_SQL: &str = "UPDATE incoming SET code = 'E010' FROM (
    SELECT x.line FROM (
        SELECT i.line, i.member, i.miles,
               first_value(i.member) OVER w AS member0, first_value(i.miles) OVER w AS miles0,
               i.partner_key
        FROM incoming i WINDOW w AS (PARTITION BY i.partner_key ORDER BY i.line)
    ) x
    WHERE x.member <> x.member0 OR x.miles <> x.miles0
       OR EXISTS (SELECT 1 FROM ledger l
                  WHERE l.partner = ?1 AND l.partner_key = x.partner_key AND l.miles > 0
                    AND l.file_id <> ?2";

/// E008: a row that repeats (key, member, miles, dup) of an earlier line
/// of this file, as the ledger's key would refuse it.
const E008_SQL: &str = "UPDATE incoming SET code = 'E008' FROM (
    SELECT line, row_number() OVER (PARTITION BY partner_key, member, miles, dup ORDER BY line) AS n
    FROM incoming WHERE code IS NULL
) d WHERE incoming.line = d.line AND d.n > 1";

/// Re-sends: per credited row, the latest earlier file within the window
/// holding the same (key, member, miles); counted per such file.
/// Completed with [`NOT_REVERSED`] and the grouping.
const RESEND_SQL: &str = "SELECT e, count(*) FROM (
    SELECT (SELECT max(l.file_id) FROM ledger l
            WHERE l.partner = ?1 AND l.partner_key = i.partner_key AND l.member = i.member
              AND l.miles = i.miles AND l.file_id <> ?2 AND l.credited_at >= ?3";

/// Add the file's credits to the balances. `Some(member)`: that member's
/// balance would pass the largest BIGINT (nothing added; the file is
/// refused F005). The overflow is rare: the add runs first and only when
/// PostgreSQL refuses it is the member looked for, back at a savepoint.
fn add_balances(c: &PgConn) -> Result<Option<i64>, CreditError> {
    c.batch("SAVEPOINT balances")?;
    let added = c.execute(
        "INSERT INTO balances(member, miles)
         SELECT member, sum(miles) FROM incoming WHERE code IS NULL GROUP BY member ORDER BY member
         ON CONFLICT(member) DO UPDATE SET miles = balances.miles + excluded.miles",
        &[],
    );
    match added {
        Ok(_) => {
            c.batch("RELEASE SAVEPOINT balances")?;
            Ok(None)
        }
        Err(StoreError::Postgres(e))
            if e.code() == Some(&postgres::error::SqlState::NUMERIC_VALUE_OUT_OF_RANGE) =>
        {
            c.batch("ROLLBACK TO SAVEPOINT balances")?;
            let member = c
                .query_opt(OVERFLOW_SQL, &[])?
                .map(|r| r.int(0))
                .transpose()?;
            // Out of range, yet no member over: another reason; say so.
            Ok(Some(member.ok_or(StoreError::Postgres(e))?))
        }
        Err(e) => Err(e.into()),
    }
}

/// The first member (by id) whose balance this file would take past the
/// largest BIGINT (sums are NUMERIC: no overflow while checking).
const OVERFLOW_SQL: &str = "SELECT d.member FROM (
    SELECT member, sum(miles) AS s FROM incoming WHERE code IS NULL GROUP BY member
) d LEFT JOIN balances b ON b.member = d.member
WHERE COALESCE(b.miles, 0) + d.s > 9223372036854775807 ORDER BY d.member LIMIT 1";

/// Read, decode, look up and validate every row (two look-up threads on
/// connections of their own), and COPY those that pass into `incoming`.
fn stream_rows(
    c: &PgConn,
    job: &CreditJob<'_>,
    file_id: i64,
    failed: &mut FailedLines,
    counts: &mut Counts,
    st: &mut Streamed,
) -> Result<(), CreditError> {
    let p = job.partner;
    let archive = &job.file.archive;
    let io = |source| CreditError::Io {
        path: archive.clone(),
        source,
    };
    let members = [
        MemberReader::Postgres(Box::new(c.another()?)),
        MemberReader::Postgres(Box::new(c.another()?)),
    ];
    let rules = p.rules();
    with_batches(job, members, |batches, to_reader| {
        c.copy_in(
            "COPY incoming(line, member, partner_key, miles, dup) FROM STDIN",
            |w| -> Result<(), CreditError> {
                let put = |e| CreditError::Db(StoreError::CopyIo(e).into());
                for batch in batches {
                    let batch = match batch {
                        Ok(b) => b,
                        Err(ReadFailure::Io(e)) => return Err(io(e)),
                        Err(ReadFailure::Unreadable(e)) => {
                            st.unreadable = Some(e);
                            break;
                        }
                        Err(ReadFailure::Db(e)) => return Err(e.into()),
                    };
                    st.header_missing |= batch.header_missing;
                    for (i, row) in batch.rows.iter().enumerate() {
                        counts.rows += 1;
                        let judged = match row.pre {
                            Pre::Failed(code) => Err(code),
                            Pre::Fields(_) => validate::after_lookup(
                                batch.found[i],
                                Cow::Borrowed(batch.key(row)),
                                batch.miles(row),
                                &rules,
                            ),
                        };
                        let v = match judged {
                            Err(code) => {
                                counts.fail(code);
                                failed
                                    .push(row.line, code)
                                    .map_err(|source| CreditError::Io {
                                        path: archive.clone(),
                                        source,
                                    })?;
                                continue;
                            }
                            Ok(v) => v,
                        };
                        let line = row.line as i64;
                        let dup = if rules.allow_duplicate_rows { line } else { 0 };
                        counts.credited += 1;
                        counts.miles = counts.miles.saturating_add(v.miles);
                        let Ok(miles) = i64::try_from(v.miles) else {
                            // Refused (F005), as SQLite's sum refuses it;
                            // the row cannot be a BIGINT.
                            st.overflow.get_or_insert(v.member);
                            continue;
                        };
                        st.digest.add(&digest::Row {
                            partner: &p.id,
                            partner_key: &v.key,
                            file_id,
                            member: v.member,
                            miles,
                            dup,
                            line,
                            credited_at: job.now.timestamp(),
                        });
                        write!(w, "{line}\t{}\t", v.member).map_err(put)?;
                        copy_text(w, Some(&v.key)).map_err(put)?;
                        writeln!(w, "\t{miles}\t{dup}").map_err(put)?;
                    }
                    let _ = to_reader.send(batch);
                }
                Ok(())
            },
        )
        .map(drop)
    })
}
