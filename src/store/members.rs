//! Members on PostgreSQL: the bulk write of `milebatch members import`.
//! `crate::members` reads and checks the file (shared by both engines) and
//! calls these inside one [`super::write`]; SQLite keeps its tuned
//! multi-row upserts there (`members::upsert_sql`). The two must keep one
//! meaning.
//!
//! What must stay true:
//! - the result is SQLite's: each line upserted one at a time in file
//!   order. A member ID already stored keeps its internal `id` (the ledger
//!   and balances point at it) and takes the line's e-mail (NULL when the
//!   line has none) and status; a new one is inserted;
//! - an e-mail that another member holds when its line comes (a stored
//!   member no earlier line has changed, or an earlier line for another
//!   member) is found by [`first_email_taken`] before anything is written,
//!   and its line named, as SQLite's unique index names it a row at a
//!   time; [`upsert_staged`] then writes in an order that check allows
//!   (stored members in line order, then new ones), so the unique index
//!   never fires;
//! - [`stage`] takes the members lock ([`Exec::lock`]): a second importer
//!   (another host) waits until this transaction ends, so the check holds
//!   until the commit; the staging table lives only as long as the
//!   transaction (`ON COMMIT DROP`; a rollback drops it too).

use std::io::Write;

use super::{copy_text, Exec, PgConn, StoreError};

/// The staging table: the file's valid lines, as read.
const CREATE_STAGING: &str = "CREATE TEMP TABLE members_import(
    line      BIGINT NOT NULL,
    member_id TEXT NOT NULL,
    email     TEXT,
    status    BIGINT NOT NULL
) ON COMMIT DROP";

const COPY_STAGING: &str = "COPY members_import(line, member_id, email, status) FROM STDIN";

/// Where the staged lines go, one [`Staging::row`] each.
pub struct Staging<'w> {
    out: &'w mut dyn Write,
}

impl Staging<'_> {
    /// One line of the file: its number, trimmed member ID, normalized
    /// e-mail (`None`: NULL) and status as stored.
    pub fn row(
        &mut self,
        line: u64,
        member_id: &str,
        email: Option<&str>,
        status: i64,
    ) -> std::io::Result<()> {
        write!(self.out, "{line}\t")?;
        copy_text(self.out, Some(member_id))?;
        self.out.write_all(b"\t")?;
        copy_text(self.out, email)?;
        writeln!(self.out, "\t{status}")
    }
}

/// Take the members lock, create the staging table and fill it with the
/// rows `fill` writes, in one COPY. An `Err` from `fill` aborts the COPY.
pub fn stage<T, E>(db: &PgConn, fill: impl FnOnce(&mut Staging<'_>) -> Result<T, E>) -> Result<T, E>
where
    E: From<StoreError>,
{
    db.lock("members")?;
    // The sorts and hashes below over 1M lines: in memory, not in temporary
    // files (the default, 4 MB, spilled them), for this transaction only.
    db.batch("SET LOCAL work_mem = '64MB'")?;
    db.batch(CREATE_STAGING)?;
    let (out, _) = db.copy_in(COPY_STAGING, |w| fill(&mut Staging { out: w }))?;
    // A temporary table is never analysed by autovacuum: without this the
    // planner guesses its size from nothing for the two statements below.
    db.batch("ANALYZE members_import")?;
    Ok(out)
}

/// The first staged line (in file order) whose e-mail another member holds
/// when that line comes: (line, e-mail). `shared_in_file`: whether two
/// lines may give the same e-mail (the caller knows it from reading: 16
/// bytes a line there, where finding it here is a sort or a hash of every
/// line, a second or more for 1M).
///
/// Two ways, as SQLite's unique index would find them one row at a time:
/// - a stored member holds it, and no earlier line has changed that member
///   (a line that gave it another e-mail, or none, freed it);
/// - an earlier line gave it to another member. Of all lines with one
///   e-mail the first holds it, and a later line for another member is
///   taken (a later line for the first one's member is a repeated ID, or
///   comes after a line that is taken already: never the first taken).
pub fn first_email_taken(
    db: &PgConn,
    shared_in_file: bool,
) -> Result<Option<(u64, String)>, StoreError> {
    let mut first: Option<(u64, String)> = None;
    let queries: &[&str] = if shared_in_file {
        &[TAKEN_FROM_STORED, TAKEN_IN_FILE]
    } else {
        &[TAKEN_FROM_STORED]
    };
    for sql in queries {
        if let Some(r) = db.query_opt(sql, &[])? {
            let (line, email) = (r.int(0)? as u64, r.text(1)?);
            if first.as_ref().is_none_or(|(l, _)| line < *l) {
                first = Some((line, email));
            }
        }
    }
    Ok(first)
}

const TAKEN_FROM_STORED: &str = "SELECT s.line, s.email FROM members_import s
    JOIN members m ON m.email = s.email AND m.member_id <> s.member_id
    WHERE NOT EXISTS (
        SELECT 1 FROM members_import e WHERE e.member_id = m.member_id AND e.line < s.line
    )
    ORDER BY s.line LIMIT 1";

const TAKEN_IN_FILE: &str = "SELECT line, email FROM (
        SELECT line, email, member_id,
               first_value(member_id) OVER (PARTITION BY email ORDER BY line) AS first_id
        FROM members_import WHERE email IS NOT NULL
    ) by_email WHERE member_id <> first_id
    ORDER BY line LIMIT 1";

/// SQLite's `upsert_sql`, set-based, in two statements:
/// - the lines of members already stored, in line order: the order
///   [`first_email_taken`] judged, so that an e-mail moving from one stored
///   member to another (freed on an earlier line) never meets the unique
///   index before it is free. The `WHERE` leaves a member whose e-mail and
///   status are already the line's as it is: the same result, without a
///   new row version and index entries for each unchanged member of a
///   re-import;
/// - then the new members, in any order: every e-mail they take is free
///   once the stored members have theirs (the check found none taken), and
///   a plain insert skips `ON CONFLICT`'s speculative insertion (1M new
///   members: about a fifth of the time).
const UPDATE_STORED: &str = "INSERT INTO members(member_id, email, status)
    SELECT s.member_id, s.email, s.status
    FROM members_import s JOIN members m ON m.member_id = s.member_id
    ORDER BY s.line
    ON CONFLICT (member_id) DO UPDATE SET email = excluded.email, status = excluded.status
    WHERE members.email IS DISTINCT FROM excluded.email OR members.status <> excluded.status";

const INSERT_NEW: &str = "INSERT INTO members(member_id, email, status)
    SELECT s.member_id, s.email, s.status FROM members_import s
    WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.member_id = s.member_id)";

/// Write every staged line (after [`first_email_taken`] found none taken;
/// no member ID is staged twice); the number of members inserted or
/// changed.
pub fn upsert_staged(db: &PgConn) -> Result<u64, StoreError> {
    Ok(db.execute(UPDATE_STORED, &[])? + db.execute(INSERT_NEW, &[])?)
}
