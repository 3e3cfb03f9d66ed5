//! Report: the error CSV. Each failed record exactly as the partner sent it
//! (same bytes, so same encoding), a comma, the code, the file's own line
//! ending.
//!
//! What must stay true:
//! - one report per delivery, never overwritten: locally
//!   `reports/<partner>/<received-date>/<file-id>-<stem>.errors.csv`
//!   ([`ReportPlace`]); dry runs write under `reports/<partner>/dry-run/`
//!   only. The name uploaded to the partner stays `<stem>.errors.csv`
//!   ([`upload_name`]);
//! - a report is written to a temp file and renamed into place: a crash
//!   leaves either no report or a complete one. A credited file's report is
//!   in place before the credit commits, and a rerun rewrites the same bytes;
//! - a refused file's report holds every row ([`write_every_row`]): its own
//!   row code for a row that failed on its own, the file code (F…) for every
//!   other row, so that it never reads as a partial credit. It is a second
//!   streaming pass over the archived bytes, merged with the failed lines of
//!   the first pass kept on disk ([`FailedLines`]): memory stays flat;
//! - a file without rows (empty, duplicate) gets the one line `,,,F00x`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::config::{Encoding, Header};

use super::batch::skip_first;
use super::parse::{LineEnding, ParseError, Records};
use super::validate::{Code, FileCode};

/// Where the reports of one delivery go.
#[derive(Debug, Clone)]
pub struct ReportPlace {
    /// `reports/<partner>/<received-date>`, or `reports/<partner>/dry-run`.
    dir: PathBuf,
    stem: String,
    /// The content hash's first 16 hex digits (names dry-run and staged
    /// reports, which have no file id).
    hash: String,
    dry_run: bool,
}

impl ReportPlace {
    /// `received`: the day the file was picked up, in the daemon's zone.
    pub fn new(
        data_dir: &Path,
        partner: &str,
        received: NaiveDate,
        file_name: &str,
        sha256: &str,
        dry_run: bool,
    ) -> ReportPlace {
        let base = data_dir.join("reports").join(partner);
        ReportPlace {
            dir: if dry_run {
                base.join("dry-run")
            } else {
                base.join(received.format("%Y-%m-%d").to_string())
            },
            stem: stem(file_name),
            hash: sha256.chars().take(16).collect(),
            dry_run,
        }
    }

    /// The report of file `file_id` (a dry run's is named by content).
    pub fn path(&self, file_id: i64) -> PathBuf {
        if self.dry_run {
            self.dir
                .join(format!("{}-{}.errors.csv", self.hash, self.stem))
        } else {
            self.dir.join(format!("{file_id}-{}.errors.csv", self.stem))
        }
    }

    /// Where the report of a file that has no id yet (refused, duplicate)
    /// is written before its `files` row exists; renamed to [`Self::path`]
    /// in the transaction that inserts that row. A dry run writes it in
    /// place at once.
    pub fn staging(&self) -> PathBuf {
        if self.dry_run {
            self.path(0)
        } else {
            self.dir
                .join(format!(".staged-{}-{}.errors.csv", self.hash, self.stem))
        }
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

/// A delivered file's name without its extension.
pub fn stem(file_name: &str) -> String {
    // `orders.csv.pgp` reports as `orders`, like `orders.csv`.
    let file_name = super::pgp::strip_suffix(file_name).unwrap_or(file_name);
    // An uploaded name may hold a `/` (`upload::upload_name`): the stem
    // is part of the report's local file name, so it names no folder.
    let file_name = super::upload::local_name(file_name);
    Path::new(&file_name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or(file_name)
}

/// The name a report is uploaded under: `<stem>.errors.csv`, the partner's
/// contract, whatever the local name.
pub fn upload_name(file_name: &str) -> String {
    format!("{}.errors.csv", stem(file_name))
}

pub struct ReportWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    rows: u64,
}

impl ReportWriter {
    pub fn new(path: PathBuf) -> ReportWriter {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.part"));
        ReportWriter {
            path,
            tmp,
            out: None,
            rows: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Append one failed record.
    pub fn write(&mut self, raw: &[u8], code: Code, ending: LineEnding) -> std::io::Result<()> {
        self.write_coded(raw, code.as_str(), ending)
    }

    /// Append `raw`, a comma, `code` and `ending`.
    pub fn write_coded(
        &mut self,
        raw: &[u8],
        code: &str,
        ending: LineEnding,
    ) -> std::io::Result<()> {
        if self.out.is_none() {
            if let Some(dir) = self.path.parent() {
                crate::db::create_private_dir(dir)?;
            }
            self.out = Some(BufWriter::with_capacity(1 << 16, private_file(&self.tmp)?));
        }
        let out = self.out.as_mut().expect("opened above");
        out.write_all(raw)?;
        out.write_all(b",")?;
        out.write_all(code.as_bytes())?;
        out.write_all(ending.as_bytes())?;
        self.rows += 1;
        Ok(())
    }

    /// Make the report durable and visible. `None` when no row failed.
    pub fn finish(mut self) -> std::io::Result<Option<PathBuf>> {
        let Some(out) = self.out.take() else {
            return Ok(None);
        };
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(Some(self.path.clone()))
    }
}

impl Drop for ReportWriter {
    fn drop(&mut self) {
        // Not finished: a refused or failed file leaves no half report.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The report of a file without rows (empty, duplicate): one line of three
/// empty fields and the file code, `,,,F003`.
pub fn write_one_line(
    path: PathBuf,
    code: FileCode,
    ending: LineEnding,
) -> std::io::Result<PathBuf> {
    let mut w = ReportWriter::new(path);
    w.write_coded(b",,", code.as_str(), ending)?;
    Ok(w.finish()?.expect("one line written"))
}

/// How a refused file is read again for its report.
pub struct Reread<'a> {
    pub archive: &'a Path,
    pub encoding: Encoding,
    pub header: Header,
    /// For records without a line end of their own (see `credit`).
    pub default_ending: LineEnding,
}

/// The report of a refused file: every row, as sent, with its own row code
/// (from `failed`, the first pass) or `code`. Rows past the point where the
/// file became unreadable cannot be told apart: one `,,,F002` line stands
/// for them. A file without rows gets the one line `,,,<code>`.
pub fn write_every_row(
    src: &Reread<'_>,
    failed: FailedLines,
    code: FileCode,
    path: PathBuf,
) -> std::io::Result<PathBuf> {
    Ok(reread(src, failed, Some(code), path)?.expect("at least one line written"))
}

/// The report of a credited file written from a second pass (PostgreSQL
/// judges some rows only after all were read): the failed rows, as sent,
/// each with its code from `failed`, exactly as the one-pass writer would
/// have written them. `None` when no row failed.
pub fn write_failed_rows(
    src: &Reread<'_>,
    failed: FailedLines,
    path: PathBuf,
) -> std::io::Result<Option<PathBuf>> {
    if failed.out.is_none() {
        return Ok(None);
    }
    reread(src, failed, None, path)
}

/// Read the archive again and write each row with its own code from
/// `failed`; with `code`, every other row too, with that code.
fn reread(
    src: &Reread<'_>,
    failed: FailedLines,
    code: Option<FileCode>,
    path: PathBuf,
) -> std::io::Result<Option<PathBuf>> {
    let mut failed = failed.into_iter()?.peekable();
    let mut out = ReportWriter::new(path);
    let mut records = Records::new(BufReader::with_capacity(
        256 * 1024,
        File::open(src.archive)?,
    ));
    let mut first = true;
    let mut ending = src.default_ending;
    loop {
        let rec = match records.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            Err(ParseError::Io(e)) => return Err(e),
            Err(_) => {
                if code.is_some() {
                    out.write_coded(b",,", FileCode::F002.as_str(), ending)?;
                }
                break;
            }
        };
        if std::mem::take(&mut first) && skip_first(&rec, src.encoding, src.header) == Ok(true) {
            continue;
        }
        ending = rec.ending.unwrap_or(src.default_ending);
        let mut own = None;
        while let Some(next) = failed.peek() {
            match next {
                Ok((line, _)) if *line < rec.line => {
                    failed.next();
                }
                Ok((line, c)) if *line == rec.line => {
                    own = Some(*c);
                    failed.next();
                    break;
                }
                Ok(_) => break,
                Err(_) => return Err(failed.next().expect("peeked").unwrap_err()),
            }
        }
        let text = match (own, code) {
            (Some(own), _) => own.as_str(),
            (None, Some(code)) => code.as_str(),
            (None, None) => continue,
        };
        out.write_coded(rec.raw, text, ending)?;
    }
    if let (0, Some(code)) = (out.rows(), code) {
        out.write_coded(b",,", code.as_str(), ending)?;
    }
    out.finish()
}

/// The failed lines of a file's first pass, (line, code) in line order, on
/// disk (an unlinked temp file): a refused file's report needs them, and a
/// file may have millions.
pub struct FailedLines {
    dir: PathBuf,
    out: Option<BufWriter<File>>,
}

impl FailedLines {
    /// Spills into an unlinked file in `dir`, created on the first push.
    pub fn new(dir: &Path) -> FailedLines {
        FailedLines {
            dir: dir.to_owned(),
            out: None,
        }
    }

    pub fn push(&mut self, line: u64, code: Code) -> std::io::Result<()> {
        if self.out.is_none() {
            crate::db::create_private_dir(&self.dir)?;
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = self
                .dir
                .join(format!(".failed-lines-{}-{seq}", std::process::id()));
            let f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?
            };
            std::fs::remove_file(&path)?;
            self.out = Some(BufWriter::with_capacity(1 << 16, f));
        }
        let out = self.out.as_mut().expect("opened above");
        out.write_all(&line.to_le_bytes())?;
        out.write_all(&[code.index() as u8])
    }

    /// These lines and `extra` (in line order, none of them here), merged
    /// in line order into a new list spilling into `dir`.
    pub fn merged(self, extra: &[(u64, Code)], dir: &Path) -> std::io::Result<FailedLines> {
        if extra.is_empty() {
            return Ok(self);
        }
        let mut out = FailedLines::new(dir);
        let mut extra = extra.iter().peekable();
        for item in self.into_iter()? {
            let (line, code) = item?;
            while let Some(&&(l, c)) = extra.peek() {
                if l > line {
                    break;
                }
                out.push(l, c)?;
                extra.next();
            }
            out.push(line, code)?;
        }
        for &(l, c) in extra {
            out.push(l, c)?;
        }
        Ok(out)
    }

    fn into_iter(self) -> std::io::Result<impl Iterator<Item = std::io::Result<(u64, Code)>>> {
        let input = match self.out {
            None => None,
            Some(out) => {
                let mut f = out.into_inner().map_err(|e| e.into_error())?;
                f.rewind()?;
                Some(BufReader::with_capacity(1 << 16, f))
            }
        };
        Ok(input.into_iter().flat_map(|mut r| {
            std::iter::from_fn(move || {
                let mut buf = [0u8; 9];
                match r.fill_buf() {
                    Ok([]) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(Err(e)),
                }
                Some(r.read_exact(&mut buf).map(|()| {
                    let line = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                    (line, Code::ALL[buf[8] as usize])
                }))
            })
        }))
    }
}

/// The line ending of a file's first line, read from its first 64 KiB.
pub fn sniff_ending(path: &Path) -> std::io::Result<Option<LineEnding>> {
    let mut head = Vec::with_capacity(1 << 16);
    File::open(path)?.take(1 << 16).read_to_end(&mut head)?;
    Ok(head.iter().position(|b| *b == b'\n').map(|i| {
        if i > 0 && head[i - 1] == b'\r' {
            LineEnding::CrLf
        } else {
            LineEnding::Lf
        }
    }))
}

/// Create (truncate) a file readable by its owner only.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Open (creating owner-only, never truncating) a file.
pub fn private_file_keep(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_per_delivery_and_dry_runs_apart() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let real = ReportPlace::new(
            Path::new("/d"),
            "p",
            day,
            "POINT.csv",
            "abcdef0123456789ff",
            false,
        );
        assert_eq!(
            real.path(7),
            Path::new("/d/reports/p/2026-11-30/7-POINT.errors.csv")
        );
        assert_ne!(real.path(7), real.path(8));
        assert!(real
            .staging()
            .to_string_lossy()
            .starts_with("/d/reports/p/2026-11-30/.staged-"));
        let dry = ReportPlace::new(
            Path::new("/d"),
            "p",
            day,
            "POINT.csv",
            "abcdef0123456789ff",
            true,
        );
        assert_eq!(
            dry.path(7),
            Path::new("/d/reports/p/dry-run/abcdef0123456789-POINT.errors.csv")
        );
        assert_eq!(dry.staging(), dry.path(0));
        assert_eq!(upload_name("POINT.csv"), "POINT.errors.csv");
    }

    #[test]
    fn every_row_keeps_own_codes_and_skips_the_header() {
        let d = tempfile::tempdir().unwrap();
        let archive = d.path().join("a.csv");
        std::fs::write(
            &archive,
            "member,key,miles\r\nA,k1,1\r\nB,k2,x\r\n\r\nC,\"k\r\n3\",3\r\n",
        )
        .unwrap();
        let mut failed = FailedLines::new(d.path());
        failed.push(3, Code::E006).unwrap();
        let src = Reread {
            archive: &archive,
            encoding: Encoding::Utf8,
            header: Header::Auto,
            default_ending: LineEnding::Lf,
        };
        let p = write_every_row(&src, failed, FileCode::F004, d.path().join("r.csv")).unwrap();
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            "A,k1,1,F004\r\nB,k2,x,E006\r\nC,\"k\r\n3\",3,F004\r\n"
        );
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temp file left: {left:?}");
    }

    #[test]
    fn unreadable_rest_and_empty_files_get_one_line() {
        let d = tempfile::tempdir().unwrap();
        let archive = d.path().join("a.csv");
        std::fs::write(&archive, "A,k1,1\n\"open,k,2\n").unwrap();
        let src = Reread {
            archive: &archive,
            encoding: Encoding::Utf8,
            header: Header::No,
            default_ending: LineEnding::CrLf,
        };
        let p = write_every_row(
            &src,
            FailedLines::new(d.path()),
            FileCode::F002,
            d.path().join("r.csv"),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            "A,k1,1,F002\n,,,F002\n"
        );
        std::fs::write(&archive, "").unwrap();
        let p = write_every_row(
            &src,
            FailedLines::new(d.path()),
            FileCode::F003,
            d.path().join("e.csv"),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(p).unwrap(), ",,,F003\r\n");
    }
}
