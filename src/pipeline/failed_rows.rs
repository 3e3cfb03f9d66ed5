//! What a partner does after a partly failed file: the failed rows alone,
//! as sent (without their codes), as a file to fix and send again; the
//! first failed rows with their line numbers for the screen; and whether a
//! file with undecodable rows (E009) is in the other encoding.
//!
//! What must stay true: the error report itself is never changed (it is
//! the partner contract); the file to re-send holds each failed row's bytes
//! exactly as the partner sent them (its encoding and line ending), and
//! the header line first when the partner's files have one (else the
//! re-send would be refused, F007); only the error report's rows are in
//! it, so a re-send never repeats a credited row. The file is read whole
//! (an upload is at most `web::site::upload::MAX_UPLOAD`).

use std::io::Read;
use std::path::Path;

use crate::config::{Encoding, Header};

#[derive(Debug, thiserror::Error)]
pub enum FailedRowsError {
    #[error("failed rows: {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// One failed row, for the screen.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct FailedRow {
    /// The line of the file it starts on (1 = the first line).
    pub line: u64,
    /// The row as sent, decoded for display (an undecodable byte shows as
    /// U+FFFD: display only, never credited).
    pub text: String,
    /// E001…E010.
    pub code: String,
}

fn read(path: &Path) -> Result<Vec<u8>, FailedRowsError> {
    std::fs::read(path).map_err(|source| FailedRowsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn reader<R: Read>(r: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(r)
}

/// Each record of `bytes` as (its raw bytes without line ends, its first
/// line number, its fields). csv's positions put a CRLF's `\n` at the
/// start of the next record: the raw bytes are trimmed of line ends at
/// both sides, and the line counted from the `\n`s before them.
fn records(bytes: &[u8]) -> Vec<(&[u8], u64, csv::ByteRecord)> {
    let mut out = Vec::new();
    let mut rdr = reader(bytes);
    let mut rec = csv::ByteRecord::new();
    let (mut counted_to, mut line) = (0usize, 1u64);
    while let Ok(true) = rdr.read_byte_record(&mut rec) {
        let mut start = rec.position().map_or(0, |p| p.byte()) as usize;
        let mut end = (rdr.position().byte() as usize).min(bytes.len());
        while start < end && matches!(bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        while end > start && matches!(bytes[end - 1], b'\r' | b'\n') {
            end -= 1;
        }
        line += bytes[counted_to..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        counted_to = start;
        out.push((&bytes[start..end], line, rec.clone()));
    }
    out
}

/// The error report's rows: (the row's raw bytes without `,Exxx`, its
/// code).
fn report_rows(report: &[u8]) -> Vec<(&[u8], String)> {
    records(report)
        .into_iter()
        .map(|(raw, _, rec)| {
            let code = rec.get(rec.len().saturating_sub(1)).unwrap_or_default();
            // The report writes `raw,CODE`: take the code back off.
            let raw = raw
                .strip_suffix(code)
                .and_then(|r| r.strip_suffix(b","))
                .unwrap_or(raw);
            (raw, String::from_utf8_lossy(code).into_owned())
        })
        .collect()
}

/// The line ending a file uses (CRLF if it has any).
fn ending_of(bytes: &[u8]) -> &'static [u8] {
    if bytes.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    }
}

fn display(raw: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Utf8 => String::from_utf8_lossy(raw).into_owned(),
        Encoding::ShiftJis => encoding_rs::SHIFT_JIS
            .decode_without_bom_handling(raw)
            .0
            .into_owned(),
    }
}

/// The first `limit` failed rows of `report` with their line numbers in
/// `archive` (the file as received), in file order.
pub fn first(
    report: &Path,
    archive: &Path,
    encoding: Encoding,
    limit: usize,
) -> Result<Vec<FailedRow>, FailedRowsError> {
    let report_bytes = read(report)?;
    let archive_bytes = read(archive)?;
    let mut file = records(&archive_bytes).into_iter();
    let mut out = Vec::new();
    for (raw, code) in report_rows(&report_bytes).into_iter().take(limit) {
        // The report keeps file order: walk the file until this row.
        let Some((_, line, _)) = file.by_ref().find(|(r, _, _)| *r == raw) else {
            break;
        };
        out.push(FailedRow {
            line,
            text: display(raw, encoding),
            code,
        });
    }
    Ok(out)
}

/// The failed rows of `report`, without their codes, as the partner sent
/// them: a file to fix and upload again. With `header = true`, the
/// archive's first line comes first.
pub fn for_resend(
    report: &Path,
    archive: &Path,
    header: Header,
) -> Result<Vec<u8>, FailedRowsError> {
    let report_bytes = read(report)?;
    let ending = ending_of(&report_bytes);
    let mut out = Vec::with_capacity(report_bytes.len());
    if header == Header::Yes {
        let archive_bytes = read(archive)?;
        let first_end = archive_bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(archive_bytes.len(), |i| i + 1);
        out.extend_from_slice(&archive_bytes[..first_end]);
    }
    for (raw, _) in report_rows(&report_bytes) {
        out.extend_from_slice(raw);
        out.extend_from_slice(ending);
    }
    Ok(out)
}

/// When a file has rows that do not decode in `declared`: the encoding
/// the file's first MiB does decode in, if it is the other one.
pub fn other_encoding(archive: &Path, declared: Encoding) -> Option<Encoding> {
    let mut head = Vec::new();
    std::fs::File::open(archive)
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut head)
        .ok()?;
    // Whole lines only: a cut character is not a wrong encoding.
    let end = head
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(head.len(), |i| i + 1);
    let head = &head[..end];
    if head.is_ascii() || head.contains(&0) {
        return None;
    }
    match declared {
        Encoding::ShiftJis => std::str::from_utf8(head).is_ok().then_some(Encoding::Utf8),
        Encoding::Utf8 => encoding_rs::SHIFT_JIS
            .decode_without_bom_handling_and_without_replacement(head)
            .is_some()
            .then_some(Encoding::ShiftJis),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(
        archive: &[u8],
        report: &[u8],
    ) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.csv");
        let r = d.path().join("a.errors.csv");
        std::fs::write(&a, archive).unwrap();
        std::fs::write(&r, report).unwrap();
        (d, a, r)
    }

    #[test]
    fn failed_rows_come_back_as_sent_with_line_numbers() {
        let archive = b"member,key,miles\r\nM1,K1,10\r\nM404,\"K,2\",20\r\nM3,K3,x\r\nM4,K4,5\r\n";
        let report = b"M404,\"K,2\",20,E003\r\nM3,K3,x,E006\r\n";
        let (_d, a, r) = files(archive, report);
        let rows = first(&r, &a, Encoding::Utf8, 100).unwrap();
        assert_eq!(
            rows,
            vec![
                FailedRow {
                    line: 3,
                    text: "M404,\"K,2\",20".into(),
                    code: "E003".into()
                },
                FailedRow {
                    line: 4,
                    text: "M3,K3,x".into(),
                    code: "E006".into()
                },
            ]
        );
        assert_eq!(first(&r, &a, Encoding::Utf8, 1).unwrap().len(), 1);
        let again = for_resend(&r, &a, Header::Yes).unwrap();
        assert_eq!(again, b"member,key,miles\r\nM404,\"K,2\",20\r\nM3,K3,x\r\n");
        let again = for_resend(&r, &a, Header::Auto).unwrap();
        assert_eq!(again, b"M404,\"K,2\",20\r\nM3,K3,x\r\n");
    }

    #[test]
    fn the_other_encoding_is_recognised() {
        let utf8 = "M1,顧客1,10\n".as_bytes();
        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("M1,顧客1,10\n");
        let (_d, a, _) = files(utf8, b"");
        assert_eq!(other_encoding(&a, Encoding::ShiftJis), Some(Encoding::Utf8));
        let (_d2, b, _) = files(&sjis, b"");
        assert_eq!(other_encoding(&b, Encoding::Utf8), Some(Encoding::ShiftJis));
        let (_d3, c, _) = files(b"M1,K1,10\n", b"");
        assert_eq!(other_encoding(&c, Encoding::Utf8), None);
    }
}
