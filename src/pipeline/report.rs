//! Report: the error CSV. Each failed record exactly as the partner sent it
//! (same bytes, so same encoding), a comma, the code, the file's own line
//! ending.
//!
//! Written to a temp file and renamed into place before the credit commits:
//! a crash leaves either no report or a complete one, and a rerun rewrites
//! the same bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::parse::LineEnding;
use super::validate::Code;

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
        if self.out.is_none() {
            if let Some(dir) = self.path.parent() {
                crate::db::create_private_dir(dir)?;
            }
            self.out = Some(BufWriter::with_capacity(1 << 16, private_file(&self.tmp)?));
        }
        let out = self.out.as_mut().expect("opened above");
        out.write_all(raw)?;
        out.write_all(b",")?;
        out.write_all(code.as_str().as_bytes())?;
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
