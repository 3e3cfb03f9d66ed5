//! The member store: import from CSV, and the one-probe lookup the
//! validator uses.
//!
//! A member is named by member ID or registered e-mail. A value with an `@`
//! is an e-mail (trimmed, compared lower-cased); anything else is a member ID
//! (trimmed). So every lookup is exactly one index probe.
//!
//! The members file's first line is a header by the same rule as partner
//! files (`Header`): with `auto` it is a header when its e-mail field has
//! no `@` and its status field is not a known status, so a header in any
//! language (`会員ID,メールアドレス,状態`) is skipped and a member line never is.
//!
//! An import is all or nothing, and means the same on both engines: each
//! line, in file order, upserts its member (a stored one keeps its
//! internal id and takes the line's e-mail, NULL when empty, and status);
//! the first bad line in the file is the one named, whether it is
//! malformed, repeats a member ID, or gives an e-mail another member holds
//! at that point. Reading and checking lines ([`read_lines`]) and choosing
//! the error ([`settle`]) are shared; SQLite writes with its multi-row
//! upserts ([`upsert_rows`]), PostgreSQL with one COPY and one set-based
//! upsert (`store::members`). Tests: `tests/postgres_cli.rs` runs the same
//! files through both and compares every answer and the members left.

use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Statement};

use crate::config::{Encoding, Header};
use crate::db::DbError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
    Withdrawn,
}

impl Status {
    pub fn from_db(v: i64) -> Status {
        match v {
            0 => Status::Active,
            1 => Status::Suspended,
            _ => Status::Withdrawn,
        }
    }
    pub(crate) fn to_db(self) -> i64 {
        match self {
            Status::Active => 0,
            Status::Suspended => 1,
            Status::Withdrawn => 2,
        }
    }
    fn parse(s: &str) -> Option<Status> {
        let s = s.trim();
        [Status::Active, Status::Suspended, Status::Withdrawn]
            .into_iter()
            .find(|st| s.eq_ignore_ascii_case(st.name()))
    }
    fn name(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Withdrawn => "withdrawn",
        }
    }
}

/// The form of an e-mail used for matching.
pub fn normalize_email(s: &str) -> String {
    s.trim().to_lowercase()
}

/// A member found by a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The internal integer key (ledger and balances use it).
    pub id: i64,
    pub status: Status,
}

/// Which unique index a lookup value probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    MemberId,
    Email,
}

/// The form of `value` (as the partner wrote it) that is looked up, written
/// into `buf`: trimmed; an e-mail (it has an `@`) also lower-cased. The one
/// definition of matching, for [`Lookup::find`] and batched lookups alike.
pub fn lookup_key(value: &str, buf: &mut String) -> KeyKind {
    let v = value.trim();
    buf.clear();
    if v.contains('@') {
        if v.is_ascii() {
            // The common case, without allocating.
            buf.push_str(v);
            buf.make_ascii_lowercase();
        } else {
            buf.push_str(&v.to_lowercase());
        }
        KeyKind::Email
    } else {
        buf.push_str(v);
        KeyKind::MemberId
    }
}

/// One look-up of `value` (as a partner wrote it) through `conn`'s
/// statement cache: for callers that look up one member per transaction
/// (the API writer), where preparing a [`Lookup`] each time would cost
/// more than the probe.
pub fn find_one(conn: &Connection, value: &str) -> Result<Option<Found>, DbError> {
    let mut key = String::new();
    let sql = match lookup_key(value, &mut key) {
        KeyKind::Email => "SELECT id, status FROM members WHERE email = ?1",
        KeyKind::MemberId => "SELECT id, status FROM members WHERE member_id = ?1",
    };
    Ok(conn
        .prepare_cached(sql)?
        .query_row([&key], |r| {
            Ok(Found {
                id: r.get(0)?,
                status: Status::from_db(r.get(1)?),
            })
        })
        .optional()?)
}

/// Whether `member_id` and `email` name the same active member: the
/// answer of the API's `members/verify`. E-mails are unique and stored
/// normalized, so "the member with this e-mail is the member with this ID"
/// is "the member with this ID has this e-mail": one look-up, by ID (a
/// second one by e-mail was a third of a verify call's database work).
/// A miss reads one B-tree less than a hit; the caller's timing floor
/// hides that (microseconds).
pub fn same_active_member(
    conn: &Connection,
    member_id: &str,
    email: &str,
) -> Result<bool, DbError> {
    let found: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT status, email FROM members WHERE member_id = ?1")?
        .query_row([member_id.trim()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match found {
        Some((status, Some(stored))) => {
            Status::from_db(status) == Status::Active && stored == normalize_email(email)
        }
        _ => false,
    })
}

/// Prepared lookups, held for the life of one transaction.
pub struct Lookup<'c> {
    by_id: Statement<'c>,
    by_email: Statement<'c>,
    many_by_id: Statement<'c>,
    many_by_email: Statement<'c>,
    key_buf: String,
}

impl<'c> Lookup<'c> {
    pub fn new(conn: &'c Connection) -> Result<Lookup<'c>, DbError> {
        Ok(Lookup {
            by_id: conn.prepare("SELECT id, status FROM members WHERE member_id = ?1")?,
            by_email: conn.prepare("SELECT id, status FROM members WHERE email = ?1")?,
            many_by_id: conn.prepare(MANY_BY_ID)?,
            many_by_email: conn.prepare(MANY_BY_EMAIL)?,
            key_buf: String::new(),
        })
    }

    /// Find a member by ID or e-mail; `value` is as the partner wrote it.
    pub fn find(&mut self, value: &str) -> Result<Option<Found>, DbError> {
        let mut buf = std::mem::take(&mut self.key_buf);
        let kind = lookup_key(value, &mut buf);
        let found = self.find_key(kind, &buf);
        self.key_buf = buf;
        found
    }

    /// Find a member by a value already in [`lookup_key`] form: one probe.
    pub fn find_key(&mut self, kind: KeyKind, key: &str) -> Result<Option<Found>, DbError> {
        let row = |r: &rusqlite::Row<'_>| {
            Ok(Found {
                id: r.get(0)?,
                status: Status::from_db(r.get(1)?),
            })
        };
        let st = match kind {
            KeyKind::Email => &mut self.by_email,
            KeyKind::MemberId => &mut self.by_id,
        };
        Ok(st.query_row([key], row).optional()?)
    }

    /// [`Lookup::find_key`] for many keys of one kind in one statement:
    /// `out[i]` is the member of the `i`th key of `keys`. The same index
    /// probes, but one statement run per batch instead of one per key
    /// (cursors opened once, no per-key bind/step/reset); sorted keys make
    /// neighbouring probes share B-tree pages.
    pub fn find_many(
        &mut self,
        kind: KeyKind,
        keys: &KeyList,
        out: &mut Vec<Option<Found>>,
    ) -> Result<(), DbError> {
        out.clear();
        out.resize(keys.len(), None);
        if keys.is_empty() {
            return Ok(());
        }
        let st = match kind {
            KeyKind::Email => &mut self.many_by_email,
            KeyKind::MemberId => &mut self.many_by_id,
        };
        let mut rows = st.query([keys.as_json()])?;
        while let Some(r) = rows.next()? {
            let i = r.get::<_, i64>(0)? as usize;
            let id: Option<i64> = r.get(1)?;
            if let Some(id) = id {
                out[i] = Some(Found {
                    id,
                    status: Status::from_db(r.get(2)?),
                });
            }
        }
        Ok(())
    }
}

/// Batched member look-ups, whichever engine holds the members: the
/// reading side of a file's credit (`pipeline::batch`) calls only this.
pub trait FindMany {
    /// `out[i]`: the member of the `i`th key of `keys` (all of `kind`).
    fn find_many(
        &mut self,
        kind: KeyKind,
        keys: &KeyList,
        out: &mut Vec<Option<Found>>,
    ) -> Result<(), DbError>;
}

impl FindMany for Lookup<'_> {
    fn find_many(
        &mut self,
        kind: KeyKind,
        keys: &KeyList,
        out: &mut Vec<Option<Found>>,
    ) -> Result<(), DbError> {
        Lookup::find_many(self, kind, keys, out)
    }
}

/// A connection a look-up thread owns: an SQLite reader (opened inside the
/// credit's transaction, see `pipeline::credit`) or a PostgreSQL one (its
/// own connection; members are not written by a credit, so any committed
/// state it reads is the credit's too).
pub enum MemberReader {
    Sqlite(Connection),
    Postgres(Box<crate::store::PgConn>),
}

impl MemberReader {
    /// The look-ups, prepared on this connection.
    pub fn lookup(&self) -> Result<Box<dyn FindMany + '_>, DbError> {
        Ok(match self {
            MemberReader::Sqlite(c) => Box::new(Lookup::new(c)?),
            MemberReader::Postgres(c) => Box::new(PgLookup(c)),
        })
    }
}

/// [`FindMany`] on PostgreSQL: the same JSON array of keys, unnested with
/// its positions, joined to the unique index.
struct PgLookup<'c>(&'c crate::store::PgConn);

impl FindMany for PgLookup<'_> {
    fn find_many(
        &mut self,
        kind: KeyKind,
        keys: &KeyList,
        out: &mut Vec<Option<Found>>,
    ) -> Result<(), DbError> {
        use crate::store::Exec;
        out.clear();
        out.resize(keys.len(), None);
        if keys.is_empty() {
            return Ok(());
        }
        // A key never holds U+0000 (which PostgreSQL text cannot): a row
        // with a control character fails E009 before any look-up.
        let rows = self.0.query(
            match kind {
                KeyKind::Email => PG_MANY_BY_EMAIL,
                KeyKind::MemberId => PG_MANY_BY_ID,
            },
            crate::store_args![keys.as_json()],
        )?;
        for r in rows {
            let i = r.int(0)? as usize;
            if let (Some(slot), Some(id)) = (out.get_mut(i), r.opt_int(1)?) {
                *slot = Some(Found {
                    id,
                    status: Status::from_db(r.int(2)?),
                });
            }
        }
        Ok(())
    }
}

const PG_MANY_BY_ID: &str = "SELECT j.i - 1, m.id, m.status
     FROM json_array_elements_text(CAST(?1 AS TEXT)::json) WITH ORDINALITY AS j(v, i)
     JOIN members m ON m.member_id = j.v";
const PG_MANY_BY_EMAIL: &str = "SELECT j.i - 1, m.id, m.status
     FROM json_array_elements_text(CAST(?1 AS TEXT)::json) WITH ORDINALITY AS j(v, i)
     JOIN members m ON m.email = j.v";

/// Keys for [`Lookup::find_many`], kept as the JSON array of strings that
/// `json_each` reads: adding a key is a copy (escaped only when it holds a
/// quote, a backslash or a control character), not a serialisation of the
/// whole batch.
#[derive(Debug, Clone)]
pub struct KeyList {
    json: String,
    len: usize,
}

impl Default for KeyList {
    fn default() -> KeyList {
        KeyList {
            json: "[]".into(),
            len: 0,
        }
    }
}

impl KeyList {
    pub fn clear(&mut self) {
        self.json.clear();
        self.json.push_str("[]");
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `key` (in [`lookup_key`] form).
    pub fn push(&mut self, key: &str) {
        use std::fmt::Write;
        self.json.pop(); // the closing ']'
        if self.len > 0 {
            self.json.push(',');
        }
        self.json.push('"');
        if key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            for c in key.chars() {
                match c {
                    '"' => self.json.push_str("\\\""),
                    '\\' => self.json.push_str("\\\\"),
                    c if (c as u32) < 0x20 => {
                        let _ = write!(self.json, "\\u{:04x}", c as u32);
                    }
                    c => self.json.push(c),
                }
            }
        } else {
            self.json.push_str(key);
        }
        self.json.push_str("\"]");
        self.len += 1;
    }

    pub(crate) fn as_json(&self) -> &str {
        &self.json
    }
}

// `json_each` yields the array in order, each key once; the LEFT JOIN probes
// the unique index like `find_key` does (text = text, BINARY collation).
const MANY_BY_ID: &str = "SELECT j.key, m.id, m.status FROM json_each(?1) AS j
     LEFT JOIN members m ON m.member_id = j.value";
const MANY_BY_EMAIL: &str = "SELECT j.key, m.id, m.status FROM json_each(?1) AS j
     LEFT JOIN members m ON m.email = j.value";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Row {
        file: String,
        line: u64,
        message: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::store::StoreError> for ImportError {
    fn from(e: crate::store::StoreError) -> Self {
        ImportError::Db(DbError::Store(e))
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ImportSummary {
    pub rows: u64,
}

/// The database an import writes to: SQLite (its tuned multi-row upserts)
/// or PostgreSQL (one COPY, one set-based upsert: `store::members`). The
/// reading, the checks, the errors and the result are the same.
pub enum Target<'a> {
    Sqlite(&'a mut Connection),
    Postgres(&'a crate::store::PgConn),
}

impl<'a> From<&'a mut Connection> for Target<'a> {
    fn from(c: &'a mut Connection) -> Self {
        Target::Sqlite(c)
    }
}

impl<'a> From<&'a crate::store::PgConn> for Target<'a> {
    fn from(c: &'a crate::store::PgConn) -> Self {
        Target::Postgres(c)
    }
}

/// Upsert members from `member_id,email,status` CSV in `encoding`, its
/// first line a header as `header` says (see the module doc). All or
/// nothing: one bad line imports none, and a member ID on two lines is a
/// bad line.
pub fn import<'a>(
    db: impl Into<Target<'a>>,
    path: &Path,
    encoding: Encoding,
    header: Header,
) -> Result<ImportSummary, ImportError> {
    let (f, file, expect) = open_file(path)?;
    import_inner(db.into(), f, &file, encoding, header, expect)
}

/// The members file, its name for errors, and how many member IDs to make
/// room for up front.
fn open_file(path: &Path) -> Result<(std::fs::File, String, usize), ImportError> {
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| ImportError::Io {
        file: file.clone(),
        source,
    })?;
    // A members line is about 40 bytes: room for that many IDs up front.
    let expect = f.metadata().map_or(0, |m| m.len() / 40);
    Ok((f, file, expect as usize))
}

/// [`import_encoded`] of UTF-8 input.
pub fn import_from(
    conn: &mut Connection,
    input: impl Read,
    file: &str,
) -> Result<ImportSummary, ImportError> {
    import_encoded(conn, input, file, Encoding::Utf8)
}

/// Import CSV `input` in `encoding` (header `auto`); `file` names it in errors.
pub fn import_encoded<'a>(
    db: impl Into<Target<'a>>,
    input: impl Read,
    file: &str,
    encoding: Encoding,
) -> Result<ImportSummary, ImportError> {
    import_inner(db.into(), input, file, encoding, Header::Auto, 0)
}

/// One valid members line, as both engines' writers take it.
struct MemberLine<'a> {
    line: u64,
    /// Trimmed.
    member_id: &'a str,
    /// Trimmed and lower-cased (the form look-ups match); `None`: the line
    /// has none, and the member's e-mail becomes NULL.
    email: Option<&'a str>,
    status: Status,
}

/// Read and check a members file: `put` gets each valid line, in file
/// order, until the end (`Ok(lines)`), the first bad line, or `put`'s first
/// `Err` (that error). The member IDs seen come back either way, for
/// [`settle`]. Shared by both engines: every rule about a line is here.
fn read_lines(
    input: impl Read,
    file: &str,
    encoding: Encoding,
    header: Header,
    expect: usize,
    mut put: impl FnMut(MemberLine<'_>) -> Result<(), ImportError>,
) -> (SeenIds, Result<u64, ImportError>) {
    use crate::pipeline::parse::ParseError;
    // The exchange files' parser: the same quoting rules, BOM handling,
    // blank lines and line numbers (CRLF or LF), and a bounded record size.
    let mut records =
        crate::pipeline::parse::Records::new(std::io::BufReader::with_capacity(1 << 20, input));
    let mut seen = SeenIds::with_capacity(expect);
    let mut rows = 0;
    let mut email_buf = String::new();
    let mut first = true;
    let mut read = || -> Result<(), ImportError> {
        loop {
            let rec = match records.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(ParseError::TooLong { line }) => {
                    return Err(ImportError::Row {
                        file: file.to_owned(),
                        line,
                        message: format!(
                            "a record longer than {} bytes: not a members file",
                            crate::pipeline::parse::MAX_RECORD_BYTES
                        ),
                    })
                }
                Err(ParseError::Unterminated { line }) => {
                    return Err(ImportError::Row {
                        file: file.to_owned(),
                        line,
                        message: "a quoted field is never closed".into(),
                    })
                }
                Err(ParseError::Io(source)) => {
                    return Err(ImportError::Io {
                        file: file.to_owned(),
                        source,
                    })
                }
            };
            let line = rec.line;
            let bad = |message: String| ImportError::Row {
                file: file.to_owned(),
                line,
                message,
            };
            if first {
                first = false;
                let looks_like_header = rec.len() == 3 && {
                    // Undecodable bytes are no header: the line is then
                    // reported as the data row it is.
                    let field = |i| crate::pipeline::decode::decode(rec.field(i), encoding);
                    matches!(
                        (field(1), field(2)),
                        (Some(email), Some(status))
                            if !email.contains('@') && Status::parse(&status).is_none()
                    )
                };
                match header {
                    Header::Auto if looks_like_header => continue,
                    Header::Yes if looks_like_header => continue,
                    Header::Yes => {
                        return Err(bad(
                            "--header true, but line 1 is a member (its e-mail has an '@' \
                             or its status is a status), not a header: use --header auto \
                             or --header false to import it"
                                .into(),
                        ))
                    }
                    Header::Auto | Header::No => {}
                }
            }
            if rec.len() != 3 {
                return Err(bad(format!(
                    "expected 3 columns (member_id,email,status), found {}",
                    rec.len()
                )));
            }
            let text = |i: usize| {
                let t = crate::pipeline::decode::decode(rec.field(i), encoding)
                    .ok_or_else(|| bad(not_decodable(i, encoding)))?;
                // PostgreSQL text cannot hold U+0000, so neither engine
                // stores it: one rule, one message, whichever is behind.
                if t.contains('\0') {
                    return Err(bad(format!(
                        "column {} has a NUL character (U+0000): no member ID, e-mail \
                         or status holds one",
                        i + 1
                    )));
                }
                Ok(t)
            };
            let member_id = text(0)?;
            let member_id = member_id.trim();
            if member_id.is_empty() || member_id.contains('@') {
                return Err(bad(format!(
                    "member_id {member_id:?} must be non-empty and have no '@'"
                )));
            }
            seen.push(member_id, line);
            let email = text(1)?;
            let email = email.trim();
            let email = if email.is_empty() {
                None
            } else if lookup_key(email, &mut email_buf) == KeyKind::Email {
                // Trimmed and lower-cased: the form lookups match.
                Some(email_buf.as_str())
            } else {
                return Err(bad(format!(
                    "email {:?} has no '@'",
                    normalize_email(email)
                )));
            };
            let status_text = text(2)?;
            let status = Status::parse(&status_text).ok_or_else(|| {
                bad(format!(
                    "status {:?}: use active, suspended or withdrawn",
                    status_text.as_ref()
                ))
            })?;
            put(MemberLine {
                line,
                member_id,
                email,
                status,
            })?;
            rows += 1;
        }
    };
    let read = read();
    (seen, read.map(|()| rows))
}

/// The import's verdict once every line read has been written: `ended` is
/// how reading and writing ended (the writer's error first when both
/// failed: its lines come before the bad line read). A repeated member ID
/// is found only now; it is reported if its second line comes before the
/// line of that error, so the first bad line in the file is the one named.
fn settle(
    file: &str,
    ended: Result<u64, ImportError>,
    seen: &mut SeenIds,
) -> Result<u64, ImportError> {
    let repeat = seen.first_repeat().map(|(first, again)| ImportError::Row {
        file: file.to_owned(),
        line: again,
        message: format!(
            "member_id is the same as on line {first}: list each member once \
             (nothing was imported)"
        ),
    });
    match (ended, repeat) {
        (
            Err(e @ ImportError::Row { line, .. }),
            Some(r @ ImportError::Row { line: again, .. }),
        ) => Err(if again < line { r } else { e }),
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(rows), None) => Ok(rows),
    }
}

/// The message for a line whose e-mail another member holds (the same on
/// both engines).
fn email_taken(email: &str) -> String {
    format!("email {email:?} is already registered to another member")
}

/// The import, with room for `expect` member IDs made up front.
fn import_inner(
    db: Target<'_>,
    input: impl Read,
    file: &str,
    encoding: Encoding,
    header: Header,
    expect: usize,
) -> Result<ImportSummary, ImportError> {
    match db {
        Target::Sqlite(c) => import_sqlite(c, input, file, encoding, header, expect),
        Target::Postgres(c) => import_postgres(c, input, file, encoding, header, expect),
    }
}

/// The import on SQLite: the tuned multi-row upserts ([`upsert_rows`]) in
/// one `BEGIN IMMEDIATE`.
fn import_sqlite(
    conn: &mut Connection,
    input: impl Read,
    file: &str,
    encoding: Encoding,
    header: Header,
    expect: usize,
) -> Result<ImportSummary, ImportError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(DbError::from)?;
    let rows = {
        let mut upsert_many = tx
            .prepare(&upsert_sql(UPSERT_ROWS))
            .map_err(DbError::from)?;
        let mut upsert_one = tx.prepare(&upsert_sql(1)).map_err(DbError::from)?;
        let mut pending: Vec<PendingMember> =
            (0..UPSERT_ROWS).map(|_| Default::default()).collect();
        let mut filled = 0;
        let (mut seen, read) = read_lines(input, file, encoding, header, expect, |m| {
            let slot = &mut pending[filled];
            slot.line = m.line;
            slot.member_id.clear();
            slot.member_id.push_str(m.member_id);
            slot.email.clear();
            slot.has_email = m.email.is_some();
            slot.email.push_str(m.email.unwrap_or(""));
            slot.status = m.status.to_db();
            filled += 1;
            if filled == UPSERT_ROWS {
                filled = 0;
                upsert_rows(&mut upsert_many, &mut upsert_one, &pending, file)?;
            }
            Ok(())
        });
        // The lines before a bad line go in first: an error among them is
        // reported, as it would be one row at a time.
        let flushed = upsert_rows(&mut upsert_many, &mut upsert_one, &pending[..filled], file);
        settle(file, flushed.and(read), &mut seen)?
    };
    tx.commit().map_err(DbError::from)?;
    Ok(ImportSummary { rows })
}

/// The import on PostgreSQL: the lines stream into a staging table (one
/// COPY), the first e-mail held by another member is looked for there
/// (naming its line, as SQLite's unique index does one row at a time),
/// then one set-based upsert; one transaction, under the members lock.
fn import_postgres(
    db: &crate::store::PgConn,
    input: impl Read,
    file: &str,
    encoding: Encoding,
    header: Header,
    expect: usize,
) -> Result<ImportSummary, ImportError> {
    use crate::store::members as pg;
    crate::store::write(db, |db| {
        // Whether two lines give one e-mail: rare, and cheap to know here
        // (the same hashes as for member IDs); only then does the check
        // look for it among the staged lines.
        let mut emails = SeenIds::with_capacity(expect);
        let (mut seen, read) = pg::stage(db, |staging| {
            let (seen, read) = read_lines(input, file, encoding, header, expect, |m| {
                if let Some(email) = m.email {
                    emails.push(email, m.line);
                }
                staging
                    .row(m.line, m.member_id, m.email, m.status.to_db())
                    .map_err(|e| crate::store::StoreError::CopyIo(e).into())
            });
            match read {
                // A failed send aborts the COPY; a bad line only ends
                // reading, and the lines before it stay staged.
                Err(e @ ImportError::Db(DbError::Store(crate::store::StoreError::CopyIo(_)))) => {
                    Err(e)
                }
                read => Ok((seen, read)),
            }
        })?;
        // Only lines before a bad line are staged, so an e-mail among them
        // comes first, as on SQLite.
        let shared = emails.first_repeat().is_some();
        drop(emails);
        let taken = pg::first_email_taken(db, shared)?.map(|(line, email)| ImportError::Row {
            file: file.to_owned(),
            line,
            message: email_taken(&email),
        });
        let ended = match taken {
            Some(e) => Err(e),
            None => read,
        };
        let rows = settle(file, ended, &mut seen)?;
        pg::upsert_staged(db)?;
        Ok(ImportSummary { rows })
    })
}

fn not_decodable(column: usize, encoding: Encoding) -> String {
    match encoding {
        Encoding::Utf8 => format!(
            "column {} is not UTF-8: the file must be UTF-8 (convert with \
             iconv -f CP932 -t UTF-8), or pass --encoding shift_jis",
            column + 1
        ),
        Encoding::ShiftJis => format!(
            "column {} cannot be decoded as Shift_JIS (CP932): check the file's encoding",
            column + 1
        ),
    }
}

/// The member IDs of one import file (on PostgreSQL its e-mails too), with
/// the line of each: not the IDs
/// themselves but 96 bits of SipHash per ID packed with its line into one
/// `u128`, appended in file order (no random access while reading) and
/// sorted once at the end, where a repeated ID shows as two neighbours with
/// the same upper 96 bits. 16 bytes a member; two different IDs are taken
/// for the same only on a 96-bit collision (about 1 in 10^16 for 3M IDs).
#[derive(Default)]
struct SeenIds(Vec<u128>);

impl SeenIds {
    fn with_capacity(n: usize) -> SeenIds {
        SeenIds(Vec::with_capacity(n))
    }

    /// Note `id` on `line` (lines past 2^32 - 1 are noted as that: no real
    /// members file has them).
    fn push(&mut self, id: &str, line: u64) {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        let high = h.finish();
        // SipHash of a longer message: independent of `high`.
        0xA5u8.hash(&mut h);
        let check = h.finish() as u32;
        self.push_hashed(high, check, line);
    }

    fn push_hashed(&mut self, high: u64, check: u32, line: u64) {
        let line = line.min(u64::from(u32::MAX)) as u32;
        self.0
            .push((u128::from(high) << 64) | (u128::from(check) << 32) | u128::from(line));
    }

    /// The repeat whose second line comes first in the file: (its first
    /// line, that second line).
    fn first_repeat(&mut self) -> Option<(u64, u64)> {
        self.0.sort_unstable();
        let mut best: Option<(u64, u64)> = None;
        // Within one ID the lines ascend: the pair of its first two lines
        // has the smallest second line.
        for w in self.0.windows(2) {
            if w[0] >> 32 == w[1] >> 32 {
                let (first, again) = (u64::from(w[0] as u32), u64::from(w[1] as u32));
                if best.is_none_or(|(_, b)| again < b) {
                    best = Some((first, again));
                }
            }
        }
        best
    }
}

/// Members per upsert statement: one statement run (cursor opens, VDBE
/// setup, statement journal) serves this many rows. 1M members: 16 rows
/// 1.40 s, 64 rows 1.29 s, 256 rows 1.21 s, 1024 rows 1.20 s.
const UPSERT_ROWS: usize = 256;

/// The upsert of `rows` members. PostgreSQL's twin is
/// `store::members::UPSERT_STAGED`: change both or neither.
fn upsert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|j| format!("(?{}, ?{}, ?{})", 3 * j + 1, 3 * j + 2, 3 * j + 3))
        .collect();
    format!(
        "INSERT INTO members(member_id, email, status) VALUES {}
         ON CONFLICT(member_id) DO UPDATE SET email = excluded.email, status = excluded.status",
        values.join(", ")
    )
}

/// A validated member line waiting for its upsert statement.
#[derive(Default)]
struct PendingMember {
    line: u64,
    member_id: String,
    email: String,
    has_email: bool,
    status: i64,
}

/// Upsert `rows` in file order: a full statement's worth at once, else (or
/// when that statement fails: SQLite undoes just that statement) one by
/// one, so that an error names its line exactly as a row at a time would.
fn upsert_rows(
    many: &mut Statement<'_>,
    one: &mut Statement<'_>,
    rows: &[PendingMember],
    file: &str,
) -> Result<(), ImportError> {
    let bind = |st: &mut Statement<'_>, j: usize, r: &PendingMember| {
        st.raw_bind_parameter(3 * j + 1, r.member_id.as_str())?;
        st.raw_bind_parameter(3 * j + 2, r.has_email.then_some(r.email.as_str()))?;
        st.raw_bind_parameter(3 * j + 3, r.status)
    };
    if rows.len() == UPSERT_ROWS {
        for (j, r) in rows.iter().enumerate() {
            bind(many, j, r).map_err(DbError::from)?;
        }
        match many.raw_execute() {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation => {} // below
            Err(e) => return Err(ImportError::Db(e.into())),
        }
    }
    for r in rows {
        bind(one, 0, r).map_err(DbError::from)?;
        one.raw_execute().map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                ImportError::Row {
                    file: file.to_owned(),
                    line: r.line,
                    message: email_taken(&r.email),
                }
            }
            e => ImportError::Db(e.into()),
        })?;
    }
    Ok(())
}

/// A member's balance, looked up by ID or e-mail (one probe, as
/// [`Lookup`] makes it), on either engine.
pub fn balance<E: crate::store::Exec + ?Sized>(
    db: &E,
    value: &str,
) -> Result<Option<(String, Status, i64)>, DbError> {
    let mut key = String::new();
    let column = match lookup_key(value, &mut key) {
        KeyKind::Email => "email",
        KeyKind::MemberId => "member_id",
    };
    let row = db
        .query_opt(
            &format!(
                "SELECT m.member_id, m.status, COALESCE(b.miles, 0)
                 FROM members m LEFT JOIN balances b ON b.member = m.id WHERE m.{column} = ?1"
            ),
            crate::store_args![key.as_str()],
        )
        .map_err(DbError::Store)?;
    row.map(|r| Ok((r.text(0)?, Status::from_db(r.int(1)?), r.int(2)?)))
        .transpose()
        .map_err(DbError::Store)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::db::temp_db as db;

    #[test]
    fn only_the_same_active_member_matches() {
        let (_d, mut c) = db();
        import_from(
            &mut c,
            "A1,a@x.jp,active\nB1,b@x.jp,active\nS1,s@x.jp,suspended\nN1,,active\n".as_bytes(),
            "m",
        )
        .unwrap();
        assert!(same_active_member(&c, "A1", "A@X.JP ").unwrap());
        assert!(!same_active_member(&c, "A1", "b@x.jp").unwrap(), "mismatch");
        assert!(!same_active_member(&c, "S1", "s@x.jp").unwrap(), "inactive");
        assert!(
            !same_active_member(&c, "Z9", "a@x.jp").unwrap(),
            "no such id"
        );
        assert!(
            !same_active_member(&c, "A1", "z@x.jp").unwrap(),
            "no such e-mail"
        );
        assert!(
            !same_active_member(&c, "N1", "").unwrap(),
            "no e-mail on file"
        );
        assert!(
            !same_active_member(&c, "N1", " ").unwrap(),
            "no e-mail on file"
        );
    }

    #[test]
    fn import_and_lookup_by_id_or_email() {
        let (_d, mut c) = db();
        let csv = "member_id,email,status\nNM1,Taro@Example.JP,active\nNM2,,suspended\n";
        assert_eq!(
            import_from(&mut c, csv.as_bytes(), "m.csv").unwrap().rows,
            2
        );
        let mut l = Lookup::new(&c).unwrap();
        let a = l.find("NM1").unwrap().unwrap();
        assert_eq!(l.find("  taro@example.jp ").unwrap(), Some(a));
        assert_eq!(l.find("TARO@EXAMPLE.JP").unwrap(), Some(a));
        assert_eq!(l.find("NM2").unwrap().unwrap().status, Status::Suspended);
        assert_eq!(l.find("nm1").unwrap(), None);
        assert_eq!(l.find("nobody@example.jp").unwrap(), None);
        drop(l);
        // The one-off look-up of the API writer answers the same.
        for v in [
            "NM1",
            "  taro@example.jp ",
            "TARO@EXAMPLE.JP",
            "NM2",
            "nm1",
            "nobody@example.jp",
        ] {
            assert_eq!(
                find_one(&c, v).unwrap(),
                Lookup::new(&c).unwrap().find(v).unwrap(),
                "{v}"
            );
        }
    }

    #[test]
    fn import_errors_name_the_line_as_row_by_row() {
        // Members are upserted many per statement: a duplicate e-mail in a
        // full statement, in the tail, and before a bad line must still name
        // the first bad line.
        const U: usize = UPSERT_ROWS;
        const LINES: usize = 3 * U + U / 2;
        let csv = |dup_at: usize, bad_at: Option<usize>| {
            let mut s = String::new();
            for i in 1..=LINES {
                let email = if i == dup_at { 7 } else { i };
                let status = if Some(i) == bad_at {
                    "sleeping"
                } else {
                    "active"
                };
                s.push_str(&format!("N{i},u{email}@x.jp,{status}\n"));
            }
            s
        };
        let dup = |line: usize| format!("m.csv:{line}: email \"u7@x.jp\" is already registered");
        for (dup_at, bad_at, want) in [
            (U + 6, None, dup(U + 6)),
            (LINES - 1, None, dup(LINES - 1)),
            (U + 6, Some(U + 26), dup(U + 6)),
            (
                U + 56,
                Some(U + 26),
                format!("m.csv:{}: status \"sleeping\"", U + 26),
            ),
        ] {
            let (_d, mut c) = db();
            let e = import_from(&mut c, csv(dup_at, bad_at).as_bytes(), "m.csv")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&want), "{e} (want {want})");
            let n: i64 = c
                .query_row("SELECT count(*) FROM members", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 0, "all or nothing");
        }
        let (_d, mut c) = db();
        for _ in 0..2 {
            let rows = import_from(&mut c, csv(0, None).as_bytes(), "m")
                .unwrap()
                .rows;
            assert_eq!(rows, LINES as u64);
        }
        let mut l = Lookup::new(&c).unwrap();
        assert_eq!(l.find("u150@x.jp").unwrap(), l.find("N150").unwrap());
    }

    #[test]
    fn find_many_agrees_with_find_key() {
        let (_d, mut c) = db();
        let csv = "NM1,a@x.jp,active\n\"N\"\"Q\\1\",\"b,\"\"q\"\"@x.jp\",suspended\n\
                   髙橋①,髙@x.jp,withdrawn\n12345,\u{1}@x.jp,active\n";
        assert_eq!(import_from(&mut c, csv.as_bytes(), "m").unwrap().rows, 4);
        let mut l = Lookup::new(&c).unwrap();
        let ids = [
            "12345",
            "NM1",
            "NM1",
            "N\"Q\\1",
            "nobody",
            "髙橋①",
            "",
            "a@x.jp",
        ];
        let emails = [
            "a@x.jp",
            "b,\"q\"@x.jp",
            "髙@x.jp",
            "\u{1}@x.jp",
            "zz@x.jp",
            "NM1",
        ];
        for (kind, keys) in [(KeyKind::MemberId, &ids[..]), (KeyKind::Email, &emails[..])] {
            let mut list = KeyList::default();
            keys.iter().for_each(|k| list.push(k));
            let mut got = Vec::new();
            l.find_many(kind, &list, &mut got).unwrap();
            let want: Vec<_> = keys.iter().map(|k| l.find_key(kind, k).unwrap()).collect();
            assert_eq!(got, want, "{kind:?}");
            assert!(got.iter().filter(|f| f.is_some()).count() >= 4, "{got:?}");
        }
    }

    #[test]
    fn key_list_is_the_json_array_of_its_keys() {
        let keys = [
            "NM1",
            "a\"b",
            "back\\slash",
            "tab\tnew\nline\r\u{1}\u{1f}",
            "\u{7f}髙橋①",
            "",
            "user@example.jp",
        ];
        let mut list = KeyList::default();
        assert_eq!(list.as_json(), "[]");
        for (i, k) in keys.iter().enumerate() {
            list.push(k);
            assert_eq!(list.len(), i + 1);
            let back: Vec<String> = serde_json::from_str(list.as_json()).unwrap();
            assert_eq!(back, keys[..=i], "{}", list.as_json());
        }
        list.clear();
        assert!(list.is_empty());
        assert_eq!(list.as_json(), "[]");
    }

    #[test]
    fn import_upserts_and_is_all_or_nothing() {
        let (_d, mut c) = db();
        import_from(&mut c, "NM1,a@x.jp,active\n".as_bytes(), "m.csv").unwrap();
        import_from(&mut c, "NM1,b@x.jp,withdrawn\n".as_bytes(), "m.csv").unwrap();
        let mut l = Lookup::new(&c).unwrap();
        assert_eq!(l.find("b@x.jp").unwrap().unwrap().status, Status::Withdrawn);
        assert_eq!(l.find("a@x.jp").unwrap(), None);
        drop(l);
        let e = import_from(
            &mut c,
            "NM2,c@x.jp,active\nNM3,d@x.jp,sleeping\n".as_bytes(),
            "m.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("m.csv:2") && e.contains("sleeping"), "{e}");
        let mut l = Lookup::new(&c).unwrap();
        assert_eq!(
            l.find("NM2").unwrap(),
            None,
            "nothing of a failed import stays"
        );
    }

    #[test]
    fn line_numbers_are_right_with_crlf_and_lf() {
        for nl in ["\n", "\r\n"] {
            let csv = [
                "member_id,email,status",
                "NM1,a@x.jp,active",
                "",
                "NM2,b@x.jp,sleeping",
            ]
            .join(nl);
            let (_d, mut c) = db();
            let e = import_from(&mut c, csv.as_bytes(), "m.csv")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("m.csv:4: status"), "{nl:?}: {e}");
        }
    }

    #[test]
    fn a_member_id_twice_refuses_the_import_naming_both_lines() {
        let (_d, mut c) = db();
        let csv = "NM1,a@x.jp,active\r\nNM2,b@x.jp,active\r\n NM1 ,c@x.jp,active\r\n";
        let e = import_from(&mut c, csv.as_bytes(), "m.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("m.csv:3: member_id is the same as on line 1"),
            "{e}"
        );
        let n: i64 = c
            .query_row("SELECT count(*) FROM members", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "all or nothing");
        // The first bad line is reported, a repeat or not.
        let later_bad = format!("{csv}NM4,d@x.jp,sleeping\n");
        let e = import_from(&mut c, later_bad.as_bytes(), "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.csv:3: member_id"), "{e}");
        let earlier_bad = format!("NM0,z@x.jp,sleeping\n{csv}");
        let e = import_from(&mut c, earlier_bad.as_bytes(), "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.csv:1: status"), "{e}");
    }

    #[test]
    fn shift_jis_files_need_the_encoding_and_then_import() {
        let (bytes, _, _) = encoding_rs::SHIFT_JIS.encode("髙橋01,t@x.jp,active\r\n");
        let (_d, mut c) = db();
        let e = import_from(&mut c, &bytes[..], "m.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.csv:1: column 1 is not UTF-8")
                && e.contains("iconv -f CP932 -t UTF-8")
                && e.contains("--encoding shift_jis"),
            "{e}"
        );
        import_encoded(&mut c, &bytes[..], "m.csv", Encoding::ShiftJis).unwrap();
        let mut l = Lookup::new(&c).unwrap();
        assert!(l.find("髙橋01").unwrap().is_some());
        assert_eq!(l.find("t@x.jp").unwrap(), l.find("髙橋01").unwrap());
    }

    #[test]
    fn seen_ids_find_the_repeat_that_comes_first() {
        let mut s = SeenIds::default();
        assert_eq!(s.first_repeat(), None);
        for (id, line) in [
            ("NM1", 1),
            ("NM2", 2),
            ("NM3", 3),
            ("NM2", 7),
            ("NM1", 5),
            ("NM1", 9),
        ] {
            s.push(id, line);
        }
        assert_eq!(s.first_repeat(), Some((1, 5)));
        // The same 64 high bits with another check are two different IDs.
        let mut s = SeenIds::default();
        s.push_hashed(7, 1, 10);
        s.push_hashed(7, 2, 11);
        assert_eq!(s.first_repeat(), None);
        s.push_hashed(7, 2, 20);
        assert_eq!(s.first_repeat(), Some((11, 20)));
    }
}
