//! `milebatch backup` and `milebatch restore`: a consistent copy of the one
//! database that holds the money, taken while the daemon and `serve` run,
//! and putting one back.
//!
//! What must stay true:
//! - The copy is one read snapshot (`VACUUM INTO` on a read-only
//!   connection): writers go on, and the copy holds whole transactions only.
//! - The copy is private (0600) from its first byte, is written under a
//!   temporary name and renamed only once complete and synced, and is
//!   checked with `verify` before the command says it is good.
//! - `restore` never overwrites a database that any process has open, and
//!   never destroys the database it replaces: that one, with its WAL, is
//!   moved aside under a dated name.
//! - Scheduled backups ([`scheduled`], `[daemon] backup`) are named
//!   `milebatch-YYYYMMDDTHHMMSSZ.db` (UTC) in `backup_dir`; retention
//!   (`keep`) deletes only files with exactly that name shape, oldest first,
//!   and only after the new backup verified. Each is a `backup_runs` row.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::verify::{self, Report, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists: choose a new name (a backup never overwrites a file)")]
    Exists { path: PathBuf },
    #[error("database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("database {path} is open in process {pid} ({command}): stop it (the daemon, `serve`, a `once`) before restoring")]
    InUse {
        path: PathBuf,
        pid: i32,
        command: String,
    },
    #[error("{path} does not verify, so it is not restored: {mismatches} mismatch(es); run `milebatch --config … verify` on a config pointing at it to see them")]
    SourceBad { path: PathBuf, mismatches: usize },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub verify: Report,
}

/// Copy the database at `db` to `dest` (which must not exist), then verify
/// the copy.
pub fn backup(db: &Path, dest: &Path) -> Result<BackupReport, BackupError> {
    if dest.exists() {
        return Err(BackupError::Exists {
            path: dest.to_owned(),
        });
    }
    let partial = with_suffix(dest, ".partial");
    // VACUUM INTO needs a missing or empty file: an empty one, 0600, so the
    // copy is never readable by others, not even for a moment.
    let _ = std::fs::remove_file(&partial);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(&partial))?;
    let result = (|| {
        let conn = crate::db::open_query(db)?;
        let sql_err = |source| BackupError::Sql {
            path: db.to_owned(),
            source,
        };
        conn.execute(
            "VACUUM INTO ?1",
            [partial.to_str().ok_or_else(|| BackupError::Io {
                path: partial.clone(),
                source: std::io::Error::other("the path is not UTF-8"),
            })?],
        )
        .map_err(sql_err)?;
        drop(conn);
        sync_file(&partial)?;
        let report = verify_file(&partial)?;
        Ok::<_, BackupError>(report)
    })();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, dest).map_err(io(dest))?;
    sync_dir(dest)?;
    let bytes = std::fs::metadata(dest).map_err(io(dest))?.len();
    tracing::info!(path = %dest.display(), bytes, ok = report.ok, "backup written");
    Ok(BackupReport {
        path: dest.to_owned(),
        bytes,
        verify: report,
    })
}

/// What one scheduled backup did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupRun {
    /// RFC 3339 UTC.
    pub at: String,
    pub path: Option<String>,
    pub bytes: Option<u64>,
    /// Written and verified.
    pub ok: bool,
    /// Older scheduled backups deleted by `keep`.
    pub deleted: u64,
    pub error: Option<String>,
}

/// The file name of a scheduled backup taken at `now`.
pub fn scheduled_name(now: chrono::DateTime<chrono::Utc>) -> String {
    format!("milebatch-{}.db", now.format("%Y%m%dT%H%M%SZ"))
}

/// Whether `name` is one the daemon made ([`scheduled_name`]'s shape, exactly):
/// retention never touches anything else in `backup_dir`.
pub fn is_scheduled_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == "milebatch-20261129T040000Z.db".len()
        && name.starts_with("milebatch-")
        && name.ends_with("Z.db")
        && b[10..18].iter().all(u8::is_ascii_digit)
        && b[18] == b'T'
        && b[19..25].iter().all(u8::is_ascii_digit)
}

/// Take the daemon's scheduled backup of `db` into `dir` (created 0700 if
/// missing), then delete the oldest scheduled backups beyond `keep`. Logged
/// (ERROR when it fails or does not verify) and recorded in `backup_runs`.
pub fn scheduled(
    db: &Path,
    dir: &Path,
    keep: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<BackupRun, crate::db::DbError> {
    let dest = dir.join(scheduled_name(now));
    let mut run = BackupRun {
        at: crate::db::now_text(now),
        path: Some(dest.display().to_string()),
        bytes: None,
        ok: false,
        deleted: 0,
        error: None,
    };
    let result = crate::db::create_private_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
        .and_then(|()| backup(db, &dest).map_err(|e| e.to_string()));
    match result {
        Ok(r) if r.verify.ok => {
            run.ok = true;
            run.bytes = Some(r.bytes);
            match prune(dir, keep) {
                Ok(n) => run.deleted = n,
                Err(e) => {
                    run.error = Some(format!("backup written, but retention failed: {e}"));
                    tracing::error!(dir = %dir.display(), error = %e, "scheduled backup: old backups could not be deleted");
                }
            }
            tracing::info!(path = %dest.display(), bytes = r.bytes, deleted = run.deleted, keep, "scheduled backup: written and verified");
        }
        Ok(r) => {
            run.bytes = Some(r.bytes);
            let e = format!(
                "the copy does not verify ({} mismatch(es)): the live database has them too; run `milebatch verify`; no old backup deleted",
                r.verify.mismatches.len()
            );
            tracing::error!(path = %dest.display(), error = %e, "scheduled backup FAILED");
            run.error = Some(e);
        }
        Err(e) => {
            tracing::error!(path = %dest.display(), error = %e, "scheduled backup FAILED");
            run.path = None;
            run.error = Some(e);
        }
    }
    let conn = crate::db::open(db)?;
    conn.execute(
        "INSERT INTO backup_runs(at, path, bytes, ok, deleted, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            run.at,
            run.path,
            run.bytes.map(|b| b as i64),
            run.ok,
            run.deleted as i64,
            run.error
        ],
    )?;
    Ok(run)
}

/// Delete the oldest scheduled backups in `dir` beyond `keep`; how many.
fn prune(dir: &Path, keep: usize) -> std::io::Result<u64> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_scheduled_name(n))
        .collect();
    // The name is the UTC time: text order is time order.
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in &names[..excess] {
        std::fs::remove_file(dir.join(n))?;
        tracing::info!(path = %dir.join(n).display(), "scheduled backup: deleted (beyond keep)");
    }
    Ok(excess as u64)
}

/// The latest scheduled backup, if any ran.
pub fn last_run<E: crate::store::Exec + ?Sized>(
    db: &E,
) -> Result<Option<BackupRun>, crate::store::StoreError> {
    db.query_opt(
        "SELECT at, path, bytes, ok, deleted, error FROM backup_runs ORDER BY id DESC LIMIT 1",
        &[],
    )?
    .map(|r| {
        Ok(BackupRun {
            at: r.text(0)?,
            path: r.opt_text(1)?,
            bytes: r.opt_int(2)?.map(|b| b as u64),
            ok: r.int(3)? != 0,
            deleted: r.int(4)? as u64,
            error: r.opt_text(5)?,
        })
    })
    .transpose()
}

/// `verify` on a database file (read-only).
pub fn verify_file(path: &Path) -> Result<Report, BackupError> {
    let conn = crate::db::open_query(path)?;
    Ok(verify::verify(&conn)?)
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub restored_from: PathBuf,
    pub database: PathBuf,
    /// Where the replaced database went (with its `-wal`), if there was one.
    pub previous: Option<PathBuf>,
}

/// Put the backup at `src` in place of the database at `db`: refused while
/// any process has `db` open, and if `src` does not verify.
pub fn restore(
    src: &Path,
    db: &Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<RestoreReport, BackupError> {
    let report = verify_file(src)?;
    if !report.ok {
        return Err(BackupError::SourceBad {
            path: src.to_owned(),
            mismatches: report.mismatches.len(),
        });
    }
    // Held until the new file is in place: a process opening the database
    // meanwhile finds the lock taken and waits (busy_timeout).
    let _guard = exclusive_use(db)?;
    let tmp = with_suffix(db, ".restoring");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut from = std::fs::File::open(src).map_err(io(src))?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        std::io::copy(&mut from, &mut to).map_err(io(&tmp))?;
        to.sync_all().map_err(io(&tmp))?;
    }
    let mut previous = None;
    if db.exists() {
        let aside = with_suffix(
            db,
            &format!(".before-restore-{}", now.format("%Y%m%dT%H%M%SZ")),
        );
        std::fs::rename(db, &aside).map_err(io(db))?;
        // The WAL belongs to the old file: moved with it, never replayed
        // into the restored one.
        for ext in ["-wal", "-journal"] {
            let f = with_suffix(db, ext);
            if f.exists() {
                std::fs::rename(&f, with_suffix(&aside, ext)).map_err(io(&f))?;
            }
        }
        let shm = with_suffix(db, "-shm");
        if shm.exists() {
            std::fs::remove_file(&shm).map_err(io(&shm))?;
        }
        previous = Some(aside);
    }
    std::fs::rename(&tmp, db).map_err(io(db))?;
    sync_dir(db)?;
    tracing::warn!(from = %src.display(), database = %db.display(), previous = ?previous, "database restored");
    Ok(RestoreReport {
        restored_from: src.to_owned(),
        database: db.to_owned(),
        previous,
    })
}

/// Proof that no process has the database open: every SQLite connection to
/// a WAL database holds a shared lock on the "DMS" byte of its `-shm` file
/// (offset 128 in SQLite's unix VFS) for as long as it is open. Taking that
/// byte exclusively fails if any connection exists anywhere; holding it
/// keeps new ones out.
struct ShmGuard {
    _file: Option<std::fs::File>,
}

const SHM_DMS_OFFSET: i64 = 128;

fn exclusive_use(db: &Path) -> Result<ShmGuard, BackupError> {
    use std::os::fd::AsRawFd;
    let shm = with_suffix(db, "-shm");
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&shm)
    {
        Ok(f) => f,
        // No -shm: nobody has the database open in WAL mode.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ShmGuard { _file: None }),
        Err(e) => return Err(io(&shm)(e)),
    };
    // SAFETY: a plain-old-data struct, zeroed, then filled in.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = SHM_DMS_OFFSET as _;
    lock.l_len = 1;
    // SAFETY: a valid open descriptor and a valid flock struct.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut lock) } == 0 {
        return Ok(ShmGuard { _file: Some(file) });
    }
    // Who holds it, to name them.
    // SAFETY: as above.
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_WRLCK as _;
    probe.l_whence = libc::SEEK_SET as _;
    probe.l_start = SHM_DMS_OFFSET as _;
    probe.l_len = 1;
    // SAFETY: as above.
    let pid = if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) } == 0 {
        probe.l_pid
    } else {
        0
    };
    let command = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.replace('\0', " ").trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    Err(BackupError::InUse {
        path: db.to_owned(),
        pid,
        command,
    })
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_file(p: &Path) -> Result<(), BackupError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io(p))
}

fn sync_dir(p: &Path) -> Result<(), BackupError> {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retention_deletes_only_the_daemons_oldest_backups() {
        let t = chrono::Utc.with_ymd_and_hms(2026, 11, 29, 4, 0, 0).unwrap();
        assert_eq!(scheduled_name(t), "milebatch-20261129T040000Z.db");
        assert!(is_scheduled_name(&scheduled_name(t)));
        for other in [
            "milebatch-20261129T040000Z.db.partial",
            "milebatch-20261129T0400Z.db",
            "milebatch-2026112xT040000Z.db",
            "xmilebatch-20261129T040000Z.db",
            "milebatch.db",
            "notes.txt",
        ] {
            assert!(!is_scheduled_name(other), "{other}");
        }
        let d = tempfile::tempdir().unwrap();
        let mut names = vec![];
        for h in 0..5 {
            let n = scheduled_name(t + chrono::Duration::hours(h));
            std::fs::write(d.path().join(&n), b"x").unwrap();
            names.push(n);
        }
        std::fs::write(d.path().join("milebatch.db"), b"live").unwrap();
        std::fs::write(d.path().join("milebatch-manual.db"), b"mine").unwrap();
        assert_eq!(prune(d.path(), 2).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "milebatch-20261129T070000Z.db",
                "milebatch-20261129T080000Z.db",
                "milebatch-manual.db",
                "milebatch.db"
            ]
        );
        assert_eq!(prune(d.path(), 2).unwrap(), 0);
    }
}
