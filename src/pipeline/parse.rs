//! Parse: split the raw byte stream into CSV records, streaming.
//!
//! Works on bytes, before decoding, so that each record's exact original
//! bytes are at hand for the error CSV. That is sound for both encodings we
//! accept: in UTF-8 and in Shift_JIS/CP932 the bytes `,` `"` `\r` `\n` never
//! occur inside a multi-byte character.
//!
//! What must stay true:
//! - memory is bounded by [`MAX_RECORD_BYTES`], whatever the file size;
//! - blank lines are not records (trailing ones included);
//! - a record ends where `csv-core` says so, so record boundaries and field
//!   splitting can never disagree.

use std::io::BufRead;

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

/// A record this long is not an exchange row (3 short fields); reading on
/// would only grow memory. The file is refused as unreadable.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: a record longer than {MAX_RECORD_BYTES} bytes: not an exchange file")]
    TooLong { line: u64 },
    #[error("line {line}: a quoted field is never closed")]
    Unterminated { line: u64 },
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// One record, borrowed from the reader until the next call.
pub struct Record<'a> {
    /// The physical line (1-based) the record starts on.
    pub line: u64,
    /// The record's original bytes, without its line terminator.
    pub raw: &'a [u8],
    /// The file's line ending, as far as seen (see [`Records::line_ending`]).
    pub ending: Option<LineEnding>,
    out: &'a [u8],
    ends: &'a [usize],
}

impl<'a> Record<'a> {
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// Field `i`, unquoted, still in the file's encoding.
    pub fn field(&self, i: usize) -> &'a [u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }
    pub fn fields(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).map(|i| self.field(i))
    }
}

/// Which line terminator a file uses, to answer in kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    Lf,
    CrLf,
}

impl LineEnding {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            LineEnding::Lf => b"\n",
            LineEnding::CrLf => b"\r\n",
        }
    }
}

pub struct Records<R> {
    input: R,
    csv: Reader,
    raw: Vec<u8>,
    out: Vec<u8>,
    ends: Vec<usize>,
    /// Newlines consumed before the current record.
    lines_before: u64,
    line_ending: Option<LineEnding>,
    started: bool,
    done: bool,
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl<R: BufRead> Records<R> {
    pub fn new(input: R) -> Records<R> {
        Records {
            input,
            csv: ReaderBuilder::new().build(),
            raw: Vec::with_capacity(256),
            out: vec![0; 256],
            ends: vec![0; 8],
            lines_before: 0,
            line_ending: None,
            started: false,
            done: false,
        }
    }

    /// The terminator of the first line (`None` before any was seen, or for
    /// a one-line file without one).
    pub fn line_ending(&self) -> Option<LineEnding> {
        self.line_ending
    }

    /// The next record, or `None` at the end of the input.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, ParseError> {
        if self.done {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            // A UTF-8 BOM is dropped whatever the declared encoding: Windows
            // tools add it, and it is never data.
            let head = self.input.fill_buf()?;
            if head.starts_with(UTF8_BOM) {
                self.input.consume(UTF8_BOM.len());
            }
        }
        self.raw.clear();
        let (mut nout, mut nend) = (0, 0);
        loop {
            let input = self.input.fill_buf()?;
            // csv-core ends a record at EOF only when called with no input.
            let at_eof = input.is_empty();
            let (res, nin, o, e) =
                self.csv
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nend..]);
            self.raw.extend_from_slice(&input[..nin]);
            self.input.consume(nin);
            nout += o;
            nend += e;
            if self.raw.len() > MAX_RECORD_BYTES {
                return Err(ParseError::TooLong {
                    line: self.start_line(),
                });
            }
            match res {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    let n = self.out.len() * 2;
                    self.out.resize(n, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let n = self.ends.len() * 2;
                    self.ends.resize(n, 0);
                }
                ReadRecordResult::End => {
                    self.done = true;
                    return Ok(None);
                }
                ReadRecordResult::Record => {
                    let line = self.start_line();
                    self.note_line_ending();
                    self.lines_before += self.raw.iter().filter(|b| **b == b'\n').count() as u64;
                    let raw = trim_newlines(&self.raw);
                    if at_eof && raw.iter().filter(|b| **b == b'"').count() % 2 == 1 {
                        return Err(ParseError::Unterminated { line });
                    }
                    return Ok(Some(Record {
                        line,
                        raw,
                        ending: self.line_ending,
                        out: &self.out[..nout],
                        ends: &self.ends[..nend],
                    }));
                }
            }
        }
    }

    /// Leading newlines in `raw` are blank lines (or the `\n` of a CRLF)
    /// skipped before the record proper.
    fn start_line(&self) -> u64 {
        let lead = self
            .raw
            .iter()
            .take_while(|b| **b == b'\n' || **b == b'\r')
            .filter(|b| **b == b'\n')
            .count() as u64;
        self.lines_before + lead + 1
    }

    fn note_line_ending(&mut self) {
        if self.line_ending.is_some() {
            return;
        }
        // The first terminator after the record's content.
        let body = self.raw.iter().position(|b| *b != b'\n' && *b != b'\r');
        if let Some(start) = body {
            if let Some(end) = self.raw[start..]
                .iter()
                .position(|b| *b == b'\n' || *b == b'\r')
            {
                self.line_ending = Some(if self.raw[start + end] == b'\r' {
                    LineEnding::CrLf
                } else {
                    LineEnding::Lf
                });
            }
        }
    }
}

fn trim_newlines(mut s: &[u8]) -> &[u8] {
    while let [b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rec = (u64, Vec<u8>, Vec<Vec<u8>>);

    fn all(input: &[u8]) -> Result<Vec<Rec>, ParseError> {
        let mut r = Records::new(std::io::BufReader::with_capacity(7, input));
        let mut v = Vec::new();
        while let Some(rec) = r.next_record()? {
            v.push((
                rec.line,
                rec.raw.to_vec(),
                rec.fields().map(<[u8]>::to_vec).collect(),
            ));
        }
        Ok(v)
    }

    #[test]
    fn crlf_lf_quotes_blank_lines_and_line_numbers() {
        let v = all(b"a,b,1\r\n\"x,y\",\"k\"\"q\",2\r\n\r\nc,\"multi\nline\",3\n\n\n").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].0, 1);
        assert_eq!(v[0].1, b"a,b,1");
        assert_eq!(v[1].0, 2);
        assert_eq!(v[1].1, b"\"x,y\",\"k\"\"q\",2");
        assert_eq!(
            v[1].2,
            vec![b"x,y".to_vec(), b"k\"q".to_vec(), b"2".to_vec()]
        );
        assert_eq!(v[2].0, 4);
        assert_eq!(v[2].2[1], b"multi\nline");
    }

    #[test]
    fn bom_is_dropped_and_last_line_needs_no_terminator() {
        let v = all(b"\xEF\xBB\xBFa,b,1\nc,d,2").unwrap();
        assert_eq!(v[0].2[0], b"a");
        assert_eq!(v[1].1, b"c,d,2");
        assert_eq!(v[1].0, 2);
    }

    #[test]
    fn line_ending_is_detected() {
        let mut r = Records::new(&b"a,b,1\r\nc,d,2\r\n"[..]);
        r.next_record().unwrap();
        assert_eq!(r.line_ending(), Some(LineEnding::CrLf));
        let mut r = Records::new(&b"a,b,1\nc,d,2\r\n"[..]);
        r.next_record().unwrap();
        assert_eq!(r.line_ending(), Some(LineEnding::Lf));
    }

    #[test]
    fn unterminated_quote_and_huge_lines_are_errors_not_memory() {
        assert!(matches!(
            all(b"a,b,1\n\"open,b,2\nc,d,3\n"),
            Err(ParseError::Unterminated { line: 2 })
        ));
        let mut big = b"ok,k,1\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 10 << 20));
        assert!(matches!(all(&big), Err(ParseError::TooLong { line: 2 })));
    }

    #[test]
    fn empty_input_has_no_records() {
        assert!(all(b"").unwrap().is_empty());
        assert!(all(b"\r\n\n").unwrap().is_empty());
    }
}
