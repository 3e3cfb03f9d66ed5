//! Batches: the reading side of [`super::credit`]. A reader thread parses
//! and decodes the archived file into batches of rows and looks up the
//! member of every row, while the credit thread inserts the batch before.
//!
//! What must stay true:
//! - rows leave in file order, each batch whole: a batch's rows are either
//!   all sent or the reader stops with the failure that ended the file;
//! - every lookup connection reads the same members as the credit
//!   transaction (see [`super::credit`]: they are opened inside it);
//! - memory is bounded by [`BATCH_ROWS`] / [`BATCH_BYTES`] times the batches
//!   in flight, whatever the file size.

use std::io::BufReader;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use crate::config::{Encoding, Header};
use crate::db::DbError;
use crate::members::{lookup_key, FindMany, Found, KeyKind, KeyList, MemberReader};

use super::decode;
use super::parse::{LineEnding, ParseError, Record, Records};
use super::validate::{self, Code};

/// Rows per batch. Large enough that a batch's sorted member lookups walk
/// the member indexes nearly in order, sharing pages (128k rows of 1M
/// members: about one key in 8), small enough that the batches in flight
/// stay a few tens of MiB. Measured on 1M members x 1M rows: 32k rows 1.53 s
/// and 77 MiB peak, 64k 1.43 s / 99 MiB, 128k 1.14 s / 124 MiB (with the
/// slimmer rows below); beyond 128k the gain stops.
pub const BATCH_ROWS: usize = 128 * 1024;

/// A batch also ends at this many bytes of records and decoded text: rows
/// may be long (up to the parser's record limit), and memory must not follow
/// them. Exchange rows are short: BATCH_ROWS of them are about 9 MiB.
pub const BATCH_BYTES: usize = 16 << 20;

/// One record as the reader thread left it: where its bytes are (for the
/// error CSV), and either its fields, ready for the lookup, or the code it
/// already failed with. Offsets are `u32`: a batch ends at [`BATCH_BYTES`]
/// plus one record, and records are short (see `parse::MAX_RECORD_BYTES`).
pub struct Row {
    pub line: u64,
    /// The record's bytes as sent: `raw[0]..raw[1]` in [`Batch::raw`].
    raw: [u32; 2],
    /// Where the decoded member, key and miles start and end in the text:
    /// `text[0]..text[1]`, `text[1]..text[2]`, `text[2]..text[3]`.
    text: [u32; 4],
    pub ending: Option<LineEnding>,
    pub pre: Pre,
}

#[derive(Clone, Copy)]
pub enum Pre {
    /// E009, E001 or E002: decided without the database.
    Failed(Code),
    /// Fields decoded; the member (in [`lookup_key`] form) is of this kind.
    Fields(KeyKind),
}

/// Records in file order.
#[derive(Default)]
pub struct Batch {
    /// The records' bytes as sent.
    raw: Vec<u8>,
    /// Their decoded fields.
    text: String,
    pub rows: Vec<Row>,
    /// `found[i]`: the member row `i` names (rows with fields only).
    pub found: Vec<Option<Found>>,
    /// Set on the batch holding the first line when `header = true` but
    /// that line is a data row (kept as data: the file is refused, F007).
    pub header_missing: bool,
}

impl Batch {
    /// A record's bytes as sent.
    pub fn raw(&self, row: &Row) -> &[u8] {
        &self.raw[row.raw[0] as usize..row.raw[1] as usize]
    }

    fn field(&self, row: &Row, i: usize) -> &str {
        &self.text[row.text[i] as usize..row.text[i + 1] as usize]
    }

    /// The member a row names, in [`lookup_key`] form.
    pub fn member(&self, row: &Row) -> &str {
        self.field(row, 0)
    }

    /// The partner key, as decoded.
    pub fn key(&self, row: &Row) -> &str {
        self.field(row, 1)
    }

    /// The miles, as decoded.
    pub fn miles(&self, row: &Row) -> &str {
        self.field(row, 2)
    }

    fn clear(&mut self) {
        self.header_missing = false;
        self.raw.clear();
        self.text.clear();
        self.rows.clear();
    }

    fn is_full(&self) -> bool {
        self.rows.len() >= BATCH_ROWS || self.raw.len() + self.text.len() >= BATCH_BYTES
    }

    /// Append a record: its bytes, and the decoded fields of a record that
    /// got as far as the lookup.
    fn push(
        &mut self,
        line: u64,
        raw: &[u8],
        ending: Option<LineEnding>,
        pre: Pre,
        fields: [&str; 3],
    ) {
        let raw_start = self.raw.len() as u32;
        self.raw.extend_from_slice(raw);
        let mut text = [self.text.len() as u32; 4];
        for (i, f) in fields.iter().enumerate() {
            self.text.push_str(f);
            text[i + 1] = self.text.len() as u32;
        }
        self.rows.push(Row {
            line,
            raw: [raw_start, self.raw.len() as u32],
            text,
            ending,
            pre,
        });
    }
}

/// Why the reader stopped early: the rows before it are in earlier batches.
pub enum ReadFailure {
    Io(std::io::Error),
    Unreadable(ParseError),
    Db(DbError),
}

/// Where the reader sends batches, and gets used ones back for reuse.
pub struct Pipe {
    pub out: SyncSender<Result<Batch, ReadFailure>>,
    pub recycled: Receiver<Batch>,
}

/// `header = true`, and the first line is a data row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderMissing;

/// Whether a file's first record is skipped as its header. Under
/// `header = true`, a first record whose third field has a digit
/// ([`validate::is_number`]) is a data row: `Err`, and it is kept as data.
/// Under `auto` the first record is a header only when it decodes and has a
/// third field without a digit; anything else stays data, so that a
/// doubtful line ends up credited or in the error report, never dropped.
pub fn skip_first(
    rec: &Record<'_>,
    encoding: Encoding,
    header: Header,
) -> Result<bool, HeaderMissing> {
    let third_is_number = || {
        if rec.len() < 3 || !decode::record_decodes(rec.raw, encoding) {
            return None;
        }
        decode::decode(rec.field(2), encoding).map(|f| validate::is_number(&f))
    };
    match header {
        Header::No => Ok(false),
        Header::Yes if third_is_number() == Some(true) => Err(HeaderMissing),
        Header::Yes => Ok(true),
        Header::Auto => Ok(third_is_number() == Some(false)),
    }
}

/// The reader thread: parse and decode `input` into batches, look up their
/// members (sharing the lookups with `helper`), and send them down `pipe`.
pub fn read_batches(
    input: std::fs::File,
    encoding: Encoding,
    header: Header,
    members: &MemberReader,
    helper: Helper,
    pipe: Pipe,
) {
    let Pipe { out, recycled } = pipe;
    let mut resolver = match Resolver::new(members, helper) {
        Ok(r) => r,
        Err(e) => {
            let _ = out.send(Err(ReadFailure::Db(e)));
            return;
        }
    };
    let mut send = |mut batch: Batch| {
        let msg = match resolver.resolve(&mut batch) {
            Ok(()) => Ok(batch),
            Err(e) => Err(ReadFailure::Db(e)),
        };
        let failed = msg.is_err();
        out.send(msg).is_ok() && !failed
    };
    let mut records = Records::new(BufReader::with_capacity(256 * 1024, input));
    let mut first = true;
    let mut key_buf = String::new();
    let fresh = |recycled: &Receiver<Batch>| {
        let mut b = recycled.try_recv().unwrap_or_default();
        b.clear();
        b
    };
    let mut batch = fresh(&recycled);
    loop {
        let rec = match records.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                let failure = match e {
                    ParseError::Io(e) => ReadFailure::Io(e),
                    e => ReadFailure::Unreadable(e),
                };
                if batch.rows.is_empty() || send(batch) {
                    let _ = out.send(Err(failure));
                }
                return;
            }
        };
        if std::mem::take(&mut first) {
            match skip_first(&rec, encoding, header) {
                Ok(true) => {
                    tracing::debug!(line = rec.line, %header, "first line skipped as the header");
                    continue;
                }
                Ok(false) => {}
                Err(HeaderMissing) => batch.header_missing = true,
            }
        }
        let pre = if !decode::record_decodes(rec.raw, encoding) {
            Err(Code::E009)
        } else {
            match decode::three_fields(&rec, encoding) {
                None => Err(Code::E001),
                Some(fields) => validate::member_present(&fields[0]).map(|()| fields),
            }
        };
        match pre {
            Err(code) => batch.push(
                rec.line,
                rec.raw,
                rec.ending,
                Pre::Failed(code),
                ["", "", ""],
            ),
            Ok([member, key, miles]) => {
                let kind = lookup_key(&member, &mut key_buf);
                batch.push(
                    rec.line,
                    rec.raw,
                    rec.ending,
                    Pre::Fields(kind),
                    [&key_buf, &key, &miles],
                );
            }
        }
        if batch.is_full() {
            let full = std::mem::replace(&mut batch, fresh(&recycled));
            if !send(full) {
                return; // the credit thread stopped, or a lookup failed
            }
        }
    }
    if !batch.rows.is_empty() {
        send(batch);
    }
}

/// Keys of both kinds (indexed by `KeyKind as usize`) and, once looked up,
/// their members: `found[k][i]` is the member of `keys[k]`'s `i`th key.
#[derive(Default)]
pub struct LookupJob {
    keys: [KeyList; 2],
    found: [Vec<Option<Found>>; 2],
}

impl LookupJob {
    fn run(&mut self, lookup: &mut dyn FindMany) -> Result<(), DbError> {
        for kind in [KeyKind::MemberId, KeyKind::Email] {
            let k = kind as usize;
            lookup.find_many(kind, &self.keys[k], &mut self.found[k])?;
        }
        Ok(())
    }
}

/// The reader's end of a [`lookup_worker`].
pub struct Helper {
    pub jobs: Sender<LookupJob>,
    pub done: Receiver<Result<LookupJob, DbError>>,
}

/// A second lookup thread on a connection of its own: the member lookups
/// are most of the reading side's work, and this shares them out, so the
/// reader, this worker and the credit thread keep both cores busy.
pub fn lookup_worker(
    members: MemberReader,
    jobs: Receiver<LookupJob>,
    done: SyncSender<Result<LookupJob, DbError>>,
) {
    let mut lookup = match members.lookup() {
        Ok(l) => l,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    for mut job in jobs {
        let r = job.run(lookup.as_mut()).map(|()| job);
        let failed = r.is_err();
        if done.send(r).is_err() || failed {
            return;
        }
    }
}

/// A row's place in the batch's lookup order: its key's kind, its first 16
/// bytes (big-endian, so integer order is byte order) and where the whole
/// key is, so that sorting touches neither the rows nor, mostly, the text.
#[derive(Clone, Copy)]
struct Sorted {
    prefix: u128,
    start: u32,
    len: u32,
    row: u32,
    kind: KeyKind,
}

impl Sorted {
    fn key<'t>(&self, text: &'t str) -> &'t str {
        &text[self.start as usize..(self.start + self.len) as usize]
    }

    fn cmp(&self, other: &Sorted, text: &str) -> std::cmp::Ordering {
        (self.kind, self.prefix)
            .cmp(&(other.kind, other.prefix))
            .then_with(|| self.key(text).cmp(other.key(text)))
    }

    fn same_key(&self, other: &Sorted, text: &str) -> bool {
        self.kind == other.kind
            && self.prefix == other.prefix
            && self.len == other.len
            && (self.len <= 16 || self.key(text) == other.key(text))
    }
}

struct Resolver<'c> {
    lookup: Box<dyn FindMany + 'c>,
    helper: Helper,
    order: Vec<Sorted>,
    /// Where each distinct key starts in `order`, per kind.
    starts: [Vec<u32>; 2],
    mine: LookupJob,
    /// The helper's job, back from its last round.
    spare: Option<LookupJob>,
}

impl<'c> Resolver<'c> {
    fn new(members: &'c MemberReader, helper: Helper) -> Result<Resolver<'c>, DbError> {
        Ok(Resolver {
            lookup: members.lookup()?,
            helper,
            order: Vec::new(),
            starts: Default::default(),
            mine: LookupJob::default(),
            spare: Some(LookupJob::default()),
        })
    }

    /// Fill `batch.found`: every distinct key probed once, in index order
    /// (neighbouring probes share B-tree pages), the lower half of each
    /// kind's keys here and the upper half by the helper, at the same time.
    fn resolve(&mut self, batch: &mut Batch) -> Result<(), DbError> {
        let text = batch.text.as_str();
        self.order.clear();
        for (i, row) in batch.rows.iter().enumerate() {
            if let Pre::Fields(kind) = row.pre {
                let [start, end, ..] = row.text;
                let key = &text.as_bytes()[start as usize..end as usize];
                let mut prefix = [0u8; 16];
                let n = key.len().min(16);
                prefix[..n].copy_from_slice(&key[..n]);
                self.order.push(Sorted {
                    prefix: u128::from_be_bytes(prefix),
                    start,
                    len: end - start,
                    row: i as u32,
                    kind,
                });
            }
        }
        self.order.sort_unstable_by(|a, b| a.cmp(b, text));
        for s in &mut self.starts {
            s.clear();
        }
        for (pos, s) in self.order.iter().enumerate() {
            if pos == 0 || !self.order[pos - 1].same_key(s, text) {
                self.starts[s.kind as usize].push(pos as u32);
            }
        }
        let mut theirs = self.spare.take().unwrap_or_default();
        for k in 0..2 {
            let starts = &self.starts[k];
            let half = starts.len() / 2;
            for (job, part) in [
                (&mut self.mine, &starts[..half]),
                (&mut theirs, &starts[half..]),
            ] {
                job.keys[k].clear();
                for &pos in part {
                    job.keys[k].push(self.order[pos as usize].key(text));
                }
            }
        }
        let h = &self.helper;
        h.jobs.send(theirs).map_err(|_| helper_gone())?;
        self.mine.run(self.lookup.as_mut())?;
        let theirs = h.done.recv().map_err(|_| helper_gone())??;
        // One member per distinct key, in `order`'s order: per kind, this
        // thread's half, then the helper's. `starts` are in that order too
        // (kind by kind, ascending), and each key's rows run to the next
        // start.
        let found = &mut batch.found;
        found.clear();
        found.resize(batch.rows.len(), None);
        let members = self.mine.found[0]
            .iter()
            .chain(&theirs.found[0])
            .chain(&self.mine.found[1])
            .chain(&theirs.found[1]);
        let starts = self.starts[0].iter().chain(&self.starts[1]);
        assert_eq!(
            members.clone().count(),
            starts.clone().count(),
            "one member per distinct key"
        );
        let ends = starts
            .clone()
            .skip(1)
            .map(|&e| e as usize)
            .chain([self.order.len()]);
        for ((&start, end), member) in starts.zip(ends).zip(members) {
            for s in &self.order[start as usize..end] {
                found[s.row as usize] = *member;
            }
        }
        self.spare = Some(theirs);
        Ok(())
    }
}

fn helper_gone() -> DbError {
    DbError::Sql(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
        Some("the member lookup thread stopped".into()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(bytes: &[u8], enc: Encoding, header: Header) -> Result<bool, HeaderMissing> {
        let mut r = Records::new(bytes);
        let rec = r.next_record().unwrap().unwrap();
        skip_first(&rec, enc, header)
    }

    #[test]
    fn first_line_header_or_data() {
        let u = Encoding::Utf8;
        assert_eq!(first(b"member,key,miles", u, Header::Auto), Ok(true));
        assert_eq!(first(b"M1,k,10", u, Header::Auto), Ok(false));
        assert_eq!(
            first(b"M1,k,5.0", u, Header::Auto),
            Ok(false),
            "bad miles stay data"
        );
        assert_eq!(
            first(b"member,key", u, Header::Auto),
            Ok(false),
            "no third field: data"
        );
        assert_eq!(
            first(b"\xff,k,miles", u, Header::Auto),
            Ok(false),
            "undecodable: data"
        );
        assert_eq!(first(b"member,key,miles", u, Header::Yes), Ok(true));
        assert_eq!(first(b"M1,k,10", u, Header::Yes), Err(HeaderMissing));
        assert_eq!(first(b"member,key,miles", u, Header::No), Ok(false));
        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("会員,キー,マイル");
        assert_eq!(first(&sjis, Encoding::ShiftJis, Header::Auto), Ok(true));
        assert_eq!(first(&sjis, Encoding::ShiftJis, Header::Yes), Ok(true));
    }
}
