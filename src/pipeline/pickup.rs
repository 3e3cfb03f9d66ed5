//! Pick up: list the inbox, keep what is ready and new, download it, and
//! archive the exact bytes before anything else reads them.
//!
//! What must stay true:
//! - an unsafe name never reaches a path (`source::safe_name`);
//! - a download lands in a temp file, is size-checked and hashed, and only
//!   then renamed into the archive: a dropped connection leaves nothing that
//!   a later step could mistake for a file;
//! - a listing entry already recorded (same name, size and mtime) is not even
//!   downloaded again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::source::{
    retry::with_retries, safe_name, Pickup, Ready, RemoteFile, Source, SourceError,
};

use super::{Fetched, PipelineError};

/// Files in the inbox that are safe, match the pattern, are ready and have
/// not been recorded before.
pub fn candidates(
    source: &mut dyn Source,
    pickup: &Pickup,
    conn: &Connection,
    partner: &str,
    shutdown: &AtomicBool,
) -> Result<Vec<RemoteFile>, PipelineError> {
    let listing = list(source, pickup, partner)?;
    let mut ready: Vec<RemoteFile> = match &pickup.ready {
        Ready::Immediate => matching(&listing, pickup),
        Ready::DoneFile => matching(&listing, pickup)
            .into_iter()
            .filter(|f| {
                let marker = format!("{}.done", f.name);
                listing.iter().any(|g| g.name == marker)
            })
            .collect(),
        Ready::Stable(wait) => {
            let first: Vec<RemoteFile> = matching(&listing, pickup)
                .into_iter()
                .filter(|f| !seen(conn, partner, f).unwrap_or(false))
                .collect();
            if first.is_empty() || wait.is_zero() {
                first
            } else {
                tracing::info!(
                    partner,
                    files = first.len(),
                    wait_s = wait.as_secs(),
                    "waiting for files to be stable"
                );
                if !sleep_unless(*wait, shutdown) {
                    return Ok(vec![]);
                }
                let second = list(source, pickup, partner)?;
                first.into_iter().filter(|f| second.contains(f)).collect()
            }
        }
    };
    let mut fresh = Vec::with_capacity(ready.len());
    for f in ready.drain(..) {
        if seen(conn, partner, &f).map_err(|e| PipelineError::Db(e.into()))? {
            continue;
        }
        fresh.push(f);
    }
    Ok(fresh)
}

fn list(
    source: &mut dyn Source,
    pickup: &Pickup,
    partner: &str,
) -> Result<Vec<RemoteFile>, PipelineError> {
    let all = with_retries(pickup.retries, "listing", || source.list()).map_err(|e| {
        PipelineError::Source {
            partner: partner.to_owned(),
            during: "listing the inbox",
            source: e,
        }
    })?;
    Ok(all
        .into_iter()
        .filter(|f| {
            let ok = safe_name(&f.name);
            if !ok {
                tracing::warn!(partner, name = ?f.name, "skipping a file whose name is unsafe (path separators, '..', control characters or over 255 bytes)");
            }
            ok
        })
        .collect())
}

fn matching(listing: &[RemoteFile], pickup: &Pickup) -> Vec<RemoteFile> {
    listing
        .iter()
        .filter(|f| pickup.pattern.matches(&f.name) && !f.name.starts_with('.'))
        .cloned()
        .collect()
}

/// Sleep `d`, waking early (and returning false) on shutdown.
fn sleep_unless(d: Duration, shutdown: &AtomicBool) -> bool {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if shutdown.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(end - std::time::Instant::now()));
    }
    !shutdown.load(Ordering::Relaxed)
}

/// Whether this exact listing entry was recorded before (any outcome).
/// Without an mtime, name and size are not enough to tell a regenerated file
/// from the old one: such files are downloaded and judged by content
/// ([`unchanged`]).
fn seen(conn: &Connection, partner: &str, f: &RemoteFile) -> rusqlite::Result<bool> {
    if f.mtime.is_none() {
        return Ok(false);
    }
    conn.query_row(
        "SELECT 1 FROM files WHERE partner = ?1 AND name = ?2 AND size = ?3 AND mtime IS ?4 LIMIT 1",
        params![partner, f.name, f.size as i64, f.mtime],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
}

/// Download `f` and archive it under `archive_dir`, content-addressed.
pub fn fetch(
    source: &mut dyn Source,
    pickup: &Pickup,
    f: &RemoteFile,
    partner: &str,
    archive_dir: &Path,
) -> Result<Fetched, PipelineError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PipelineError::Io { path, source }
    };
    crate::db::create_private_dir(archive_dir).map_err(io(archive_dir))?;
    let tmp = archive_dir.join(format!(".{}.part", f.name));
    let result = with_retries(pickup.retries, "download", || {
        let r = source.fetch(f, &tmp);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        let size = std::fs::metadata(&tmp)
            .map_err(|e| SourceError::Permanent(format!("{}: {e}", tmp.display())))?
            .len();
        if size != f.size && f.size != 0 {
            let _ = std::fs::remove_file(&tmp);
            return Err(SourceError::Transient(format!(
                "{}: downloaded {size} bytes, listing said {}",
                f.name, f.size
            )));
        }
        Ok(size)
    });
    let size = result.map_err(|e| PipelineError::Source {
        partner: partner.to_owned(),
        during: "downloading",
        source: e,
    })?;
    // Partner data is owner-only, whatever mode the copy came with.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    }
    let sha256 = hash_file(&tmp).map_err(io(&tmp))?;
    let archive = archive_dir.join(format!("{}-{}", &sha256[..16], f.name));
    let file = std::fs::File::open(&tmp).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &archive).map_err(io(&archive))?;
    if let Ok(dir) = std::fs::File::open(archive_dir) {
        let _ = dir.sync_all();
    }
    Ok(Fetched {
        name: f.name.clone(),
        size,
        mtime: f.mtime,
        sha256,
        archive,
    })
}

pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `data_dir/archive/<partner>`.
pub fn archive_dir(data_dir: &Path, partner: &str) -> PathBuf {
    data_dir.join("archive").join(partner)
}

/// Whether the same name with the same content was recorded before: the
/// same delivery seen again (e.g. an HTTP URL that still serves yesterday's
/// answer), not a new one, so not a duplicate delivery either.
pub fn unchanged(conn: &Connection, partner: &str, f: &Fetched) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM files WHERE partner = ?1 AND name = ?2 AND sha256 = ?3 LIMIT 1",
        params![partner, f.name, f.sha256],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
}
