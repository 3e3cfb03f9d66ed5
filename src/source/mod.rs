//! Where partner files come from, and where error reports go back to.
//!
//! One trait ([`Source`]), one file per kind (`local`, `sftp`, `ftp`, `http`),
//! one registry ([`SourceConfig::build`], in `config.rs` with the parsing of
//! `[partner.source]`). The pipeline only ever sees the trait.
//!
//! What must stay true:
//! - a remote name is untrusted: [`safe_name`] is checked before a name is
//!   used anywhere, and names are never joined into local paths by a source;
//! - `fetch` writes to the path it is given and checks the size it was told;
//!   the caller owns temp files and renames;
//! - every error says whether trying again can help ([`SourceError::retryable`]).

pub mod config;
pub mod ftp;
pub mod http;
pub mod local;
pub mod retry;
pub mod secret;
pub mod sftp;

use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use config::{
    After, FtpConfig, HostKeyCheck, HostKeyKind, HostKeyPin, HttpAuth, HttpConfig, LocalConfig,
    Pickup, RawSource, Ready, SftpAuth, SftpConfig, SourceConfig,
};
pub use secret::SecretRef;

/// One file as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    pub size: u64,
    /// Seconds since the epoch, as the server reports it (`None` if it doesn't).
    pub mtime: Option<i64>,
}

/// What went wrong talking to a partner's server.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Connection refused or dropped, timeout, server busy (5xx, 4xx FTP
    /// replies): worth another try with backoff.
    #[error("{0}")]
    Transient(String),
    /// Wrong credentials or refused login: retrying will not help and may lock
    /// the account.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server's identity is not the configured one. Never retried.
    #[error("host key verification failed: {0}")]
    HostKey(String),
    /// TLS certificate not trusted, bad configuration, unsupported operation,
    /// a file that changed size under us: needs a human.
    #[error("{0}")]
    Permanent(String),
}

impl SourceError {
    pub fn retryable(&self) -> bool {
        matches!(self, SourceError::Transient(_))
    }
}

/// A partner's server (or folder), seen as a flat directory of files.
///
/// Error contract: every method returns [`SourceError::Transient`] only for
/// faults that may pass (network, timeouts, 5xx); authentication and host
/// identity failures are never `Transient`. After a `Transient` error the
/// next call reconnects if the session is gone, so a retry starts clean. No
/// method panics on anything the server sends; every network call is bounded
/// by the configured `timeout`.
pub trait Source: Send {
    /// A human-readable location without secrets, e.g. `sftp://u@host:22/in`.
    fn describe(&self) -> String;

    /// Regular files in the inbox directory (not recursive). Names come back
    /// as the server sent them; the caller filters them with [`safe_name`].
    fn list(&mut self) -> Result<Vec<RemoteFile>, SourceError>;

    /// Download `file` into `dest` (created or truncated) and check that the
    /// byte count equals `file.size` when the listing knew it.
    fn fetch(&mut self, file: &RemoteFile, dest: &Path) -> Result<(), SourceError>;

    /// Delete a file from the inbox (missing file: `Ok`, so a retried tidy
    /// that already happened succeeds).
    fn remove(&mut self, name: &str) -> Result<(), SourceError>;

    /// Move an inbox file into the sub-directory `dir` (created if missing),
    /// replacing a same-named file there. A name no longer in the inbox is
    /// `Ok` (an earlier, interrupted tidy moved it).
    fn move_to(&mut self, name: &str, dir: &str) -> Result<(), SourceError>;

    /// Store `data` as `dir/name` on the server (created if missing,
    /// replaced if present), written under a temporary name and renamed so a
    /// reader never sees half of it.
    fn upload(&mut self, dir: &str, name: &str, data: &[u8]) -> Result<(), SourceError>;

    /// Whether the inbox can be tidied (`move`/`remove`). HTTP cannot.
    fn can_tidy(&self) -> bool {
        true
    }

    /// What the sub-folder `dir` of the inbox (as `move_to` and `upload`
    /// take it) is on the server now. Only reads: `check --connect` asks
    /// this of every folder a run writes to. Sources that cannot tidy (HTTP)
    /// have no folders and answer `Permanent`.
    fn folder(&mut self, dir: &str) -> Result<Folder, SourceError>;

    /// Delete `dir/name` (a file `upload` stored). Missing: `Ok`. Used by
    /// `check --connect` to take its probe file away again.
    fn remove_in(&mut self, dir: &str, name: &str) -> Result<(), SourceError> {
        self.remove(&format!("{dir}/{name}"))
    }
}

/// A sub-folder of the inbox, as [`Source::folder`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Folder {
    /// Not there: the run creates it (and `check --connect`'s probe does).
    Missing,
    /// A folder (a symlink to one counts, as the server follows it).
    Folder,
    /// Something else (a file) is in the way: a run would credit files and
    /// then fail to tidy them.
    NotAFolder,
}

/// Connect to `host:port`, trying each address it resolves to with
/// `connect` (each attempt bounded by `timeout`). Every failure is transient:
/// a server that is down or unreachable may come back.
pub(crate) fn connect_tcp(
    host: &str,
    port: u16,
    timeout: Duration,
    connect: impl Fn(std::net::SocketAddr, Duration) -> std::io::Result<std::net::TcpStream>,
) -> Result<std::net::TcpStream, SourceError> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| SourceError::Transient(format!("resolving {host}:{port}: {e}")))?
        .collect();
    let mut last = None;
    for a in addrs {
        match connect(a, timeout) {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(SourceError::Transient(format!(
        "connecting to {host}:{port}: {}",
        last.map(|e| e.to_string())
            .unwrap_or_else(|| "no address".into())
    )))
}

/// Copy a download into a new file at `dest`, `buf_size` bytes at a time:
/// the one copy loop of the remote sources. A read error goes through
/// `read_err` (with the bytes copied before it); a local write error is
/// Permanent. Returns the bytes copied.
pub(crate) fn download_to(
    src: &mut impl std::io::Read,
    dest: &Path,
    buf_size: usize,
    mut read_err: impl FnMut(std::io::Error, u64) -> SourceError,
) -> Result<u64, SourceError> {
    use std::io::Write;
    let local = |e: std::io::Error| SourceError::Permanent(format!("{}: {e}", dest.display()));
    let mut out = std::fs::File::create(dest).map_err(local)?;
    let mut buf = vec![0u8; buf_size];
    let mut n = 0u64;
    loop {
        let k = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e, n)),
        };
        out.write_all(&buf[..k]).map_err(local)?;
        n += k as u64;
    }
    out.flush().map_err(local)?;
    Ok(n)
}

/// A file read whole but not at the size its listing gave: it changed while
/// being read. Transient: the next run fetches it again.
pub(crate) fn size_changed(what: impl fmt::Display, listed: u64, read: u64) -> SourceError {
    SourceError::Transient(format!(
        "{what}: size changed while reading ({listed} bytes listed, {read} read)"
    ))
}

/// Whether a name from a listing may be used at all: not empty, no path
/// separators, no `.`/`..`, no control characters, at most 255 bytes.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_refused() {
        assert!(safe_name("exchange-20261124.csv"));
        assert!(safe_name("交換.csv"));
        for bad in [
            "", ".", "..", "../x.csv", "a/b.csv", "a\\b", "x\n.csv", "x\u{7f}",
        ] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert!(!safe_name(&"a".repeat(256)));
        assert!(safe_name(&"a".repeat(255)));
    }
}
