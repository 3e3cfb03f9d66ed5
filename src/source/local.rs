//! A folder on this machine (a mount, or the demo inbox).
//!
//! Symlinks are never followed: a link in the inbox could point anywhere on
//! the host, so only regular files count.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{LocalConfig, RemoteFile, Source, SourceError};

pub struct LocalSource {
    dir: PathBuf,
}

impl LocalSource {
    pub fn new(c: &LocalConfig) -> LocalSource {
        LocalSource { dir: c.dir.clone() }
    }

    fn regular(&self, name: &str) -> Result<PathBuf, SourceError> {
        let p = self.dir.join(name);
        let meta = fs::symlink_metadata(&p).map_err(|e| io_err(&p, e))?;
        if !meta.file_type().is_file() {
            return Err(SourceError::Permanent(format!(
                "{} is not a regular file (symlinks are not followed)",
                p.display()
            )));
        }
        Ok(p)
    }
}

fn io_err(p: &Path, e: io::Error) -> SourceError {
    // A local folder has no transient faults worth retrying.
    SourceError::Permanent(format!("{}: {e}", p.display()))
}

impl Source for LocalSource {
    fn describe(&self) -> String {
        format!("local {}", self.dir.display())
    }

    fn list(&mut self) -> Result<Vec<RemoteFile>, SourceError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))? {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            // `DirEntry::metadata` does not traverse symlinks.
            let meta = entry.metadata().map_err(|e| io_err(&entry.path(), e))?;
            if !meta.file_type().is_file() {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(dir = %self.dir.display(), name = ?entry.file_name(), "skipping a file whose name is not UTF-8");
                continue;
            };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            out.push(RemoteFile {
                name,
                size: meta.len(),
                mtime,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn fetch(&mut self, file: &RemoteFile, dest: &Path) -> Result<(), SourceError> {
        let src = self.regular(&file.name)?;
        let n = fs::copy(&src, dest).map_err(|e| io_err(&src, e))?;
        if n != file.size {
            return Err(super::size_changed(src.display(), file.size, n));
        }
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), SourceError> {
        let p = self.dir.join(name);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&p, e)),
            _ => Ok(()),
        }
    }

    fn move_to(&mut self, name: &str, dir: &str) -> Result<(), SourceError> {
        let to_dir = self.dir.join(dir);
        fs::create_dir_all(&to_dir).map_err(|e| io_err(&to_dir, e))?;
        let from = self.dir.join(name);
        match fs::rename(&from, to_dir.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| io_err(&from, e)),
        }
    }

    fn folder(&mut self, dir: &str) -> Result<super::Folder, SourceError> {
        let p = self.dir.join(dir);
        match fs::metadata(&p) {
            Ok(m) if m.is_dir() => Ok(super::Folder::Folder),
            Ok(_) => Ok(super::Folder::NotAFolder),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(super::Folder::Missing),
            Err(e) => Err(io_err(&p, e)),
        }
    }

    fn upload(&mut self, dir: &str, name: &str, data: &[u8]) -> Result<(), SourceError> {
        let to_dir = self.dir.join(dir);
        fs::create_dir_all(&to_dir).map_err(|e| io_err(&to_dir, e))?;
        let tmp = to_dir.join(format!(".{name}.part"));
        fs::write(&tmp, data).map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, to_dir.join(name)).map_err(|e| io_err(&tmp, e))
    }
}
