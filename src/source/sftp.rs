//! SFTP over `ssh2` (blocking; the daemon calls sources off the async runtime).
//!
//! What must stay true:
//! - the server's host key is checked (fingerprint or known_hosts) right
//!   after the handshake and **before** any credential is sent;
//! - every blocking libssh2 call is bounded by the configured timeout
//!   (`Session::set_timeout`; libssh2's default is to wait forever);
//! - after a transient fault the session is dropped and the next call
//!   reconnects, so a retry starts clean.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ssh2::{
    CheckResult, ErrorCode, HashType, HostKeyType, KnownHostFileKind, OpenFlags, OpenType,
    RenameFlags, Session, Sftp,
};

use super::secret::check_private;
use super::{HostKeyCheck, RemoteFile, SftpAuth, SftpConfig, Source, SourceError};

/// Read buffer for downloads. libssh2 pipelines SFTP read requests up to
/// the size of the buffer it is given, so a big buffer is what makes a
/// download fast on a link with latency.
const READ_BUF: usize = 4 << 20;

// libssh2 error codes (session level) and SFTP status codes we tell apart.
const LIBSSH2_ERROR_FILE: i32 = -16;
const LIBSSH2_ERROR_METHOD_NONE: i32 = -17;
const LIBSSH2_ERROR_AUTHENTICATION_FAILED: i32 = -18;
const LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED: i32 = -19;
const LIBSSH2_ERROR_PASSWORD_EXPIRED: i32 = -15;
const LIBSSH2_ERROR_INVAL: i32 = -34;
const LIBSSH2_ERROR_KEYFILE_AUTH_FAILED: i32 = -48;
const LIBSSH2_ERROR_ALGO_UNSUPPORTED: i32 = -51;
const FX_NO_SUCH_FILE: i32 = 2;
const FX_FAILURE: i32 = 4;
const FX_NO_CONNECTION: i32 = 6;
const FX_CONNECTION_LOST: i32 = 7;
const FX_NO_SUCH_PATH: i32 = 10;
const FX_FILE_ALREADY_EXISTS: i32 = 11;

struct Conn {
    // Field order matters: the SFTP channel is closed before the session.
    sftp: Sftp,
    _sess: Session,
}

pub struct SftpSource {
    c: SftpConfig,
    conn: Option<Conn>,
}

impl SftpSource {
    /// Connect, verify the host key, log in and open the SFTP channel.
    pub fn connect(c: &SftpConfig) -> Result<SftpSource, SourceError> {
        let mut s = SftpSource {
            c: c.clone(),
            conn: None,
        };
        s.sftp()?;
        Ok(s)
    }

    fn open(&self) -> Result<Conn, SourceError> {
        let c = &self.c;
        let timeout = c.pickup.timeout;
        let tcp = super::connect_tcp(&c.host, c.port, timeout, |a, t| {
            TcpStream::connect_timeout(&a, t)
        })?;
        let _ = tcp.set_nodelay(true);
        let mut sess = Session::new()
            .map_err(|e| SourceError::Permanent(format!("creating an SSH session: {e}")))?;
        sess.set_timeout(timeout.as_millis().clamp(1, u32::MAX as u128) as u32);
        sess.set_tcp_stream(tcp);
        sess.handshake()
            .map_err(|e| SourceError::Transient(format!("SSH handshake with {}: {e}", c.host)))?;

        self.verify_host_key(&sess)?;

        match &c.auth {
            SftpAuth::Key {
                key_file,
                passphrase,
            } => {
                check_private(key_file).map_err(|e| {
                    SourceError::Permanent(format!("key file {}: {e}", key_file.display()))
                })?;
                let pass = match passphrase {
                    Some(p) => Some(p.read().map_err(SourceError::Permanent)?),
                    None => None,
                };
                sess.userauth_pubkey_file(
                    &c.user,
                    None,
                    key_file,
                    pass.as_ref().map(|p| p.expose()),
                )
                .map_err(|e| auth_err(&c.user, &format!("key {}", key_file.display()), e))?;
            }
            SftpAuth::Password(p) => {
                let pw = p.read().map_err(SourceError::Permanent)?;
                sess.userauth_password(&c.user, pw.expose())
                    .map_err(|e| auth_err(&c.user, "password", e))?;
            }
        }
        if !sess.authenticated() {
            return Err(SourceError::Auth(format!(
                "{} was not accepted by {}",
                c.user, c.host
            )));
        }
        let sftp = sess
            .sftp()
            .map_err(|e| map_err(e, "starting the SFTP subsystem"))?;
        Ok(Conn { sftp, _sess: sess })
    }

    fn verify_host_key(&self, sess: &Session) -> Result<(), SourceError> {
        let c = &self.c;
        let (key, kind) = sess
            .host_key()
            .ok_or_else(|| SourceError::HostKey(format!("{} sent no host key", c.host)))?;
        let seen = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(
                sess.host_key_hash(HashType::Sha256)
                    .ok_or_else(|| SourceError::HostKey("cannot hash the host key".into()))?
            )
        );
        let seen_text = format!("{} key {seen}", key_type_name(kind));
        match &c.host_key {
            HostKeyCheck::Fingerprint(want) => {
                if *want != seen {
                    return Err(SourceError::HostKey(format!(
                        "{}:{} presented {seen_text}, but host_key is {want}",
                        c.host, c.port
                    )));
                }
            }
            HostKeyCheck::KnownHosts(path) => {
                let mut kh = sess
                    .known_hosts()
                    .map_err(|e| SourceError::Permanent(format!("known_hosts: {}", e.message())))?;
                kh.read_file(path, KnownHostFileKind::OpenSSH)
                    .map_err(|e| {
                        SourceError::Permanent(format!(
                            "reading known_hosts {}: {}",
                            path.display(),
                            e.message()
                        ))
                    })?;
                match kh.check_port(&c.host, c.port, key) {
                    CheckResult::Match => {}
                    CheckResult::Mismatch => {
                        return Err(SourceError::HostKey(format!(
                            "{}:{} presented {seen_text}, which does not match its entry in {}",
                            c.host,
                            c.port,
                            path.display()
                        )))
                    }
                    CheckResult::NotFound => {
                        return Err(SourceError::HostKey(format!(
                            "{}:{} is not in {} (it presented {seen_text})",
                            c.host,
                            c.port,
                            path.display()
                        )))
                    }
                    CheckResult::Failure => {
                        return Err(SourceError::HostKey(format!(
                            "checking {}:{} ({seen_text}) against {} failed",
                            c.host,
                            c.port,
                            path.display()
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// The live SFTP channel, connecting first if there is none.
    fn sftp(&mut self) -> Result<&Sftp, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(self.open()?);
        }
        Ok(&self.conn.as_ref().expect("just connected").sftp)
    }

    /// Run `op` on the channel; a transient failure drops the session so the
    /// next call reconnects.
    fn with<T>(
        &mut self,
        op: impl FnOnce(&Sftp) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let r = op(self.sftp()?);
        if matches!(r, Err(SourceError::Transient(_))) {
            self.conn = None;
        }
        r
    }

    fn path(&self, name: &str) -> PathBuf {
        remote_join(&self.c.dir, name)
    }
}

fn remote_join(dir: &str, name: &str) -> PathBuf {
    let d = dir.trim_end_matches('/');
    if d.is_empty() && dir.starts_with('/') {
        PathBuf::from(format!("/{name}"))
    } else if d.is_empty() {
        PathBuf::from(name)
    } else {
        PathBuf::from(format!("{d}/{name}"))
    }
}

fn key_type_name(k: HostKeyType) -> &'static str {
    match k {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => "unknown-type",
    }
}

fn auth_err(user: &str, how: &str, e: ssh2::Error) -> SourceError {
    match e.code() {
        ErrorCode::Session(
            LIBSSH2_ERROR_AUTHENTICATION_FAILED
            | LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED
            | LIBSSH2_ERROR_PASSWORD_EXPIRED
            | LIBSSH2_ERROR_KEYFILE_AUTH_FAILED
            | LIBSSH2_ERROR_METHOD_NONE,
        ) => SourceError::Auth(format!("user {user} with {how}: {}", e.message())),
        ErrorCode::Session(LIBSSH2_ERROR_FILE) => SourceError::Permanent(format!(
            "user {user} with {how}: cannot use the key file: {}",
            e.message()
        )),
        _ => map_err(e, &format!("logging in as {user}")),
    }
}

fn is_code(e: &ssh2::Error, codes: &[i32]) -> bool {
    matches!(e.code(), ErrorCode::SFTP(c) if codes.contains(&c))
}

/// What an `ssh2` error means for retrying.
fn map_err(e: ssh2::Error, what: &str) -> SourceError {
    let msg = format!("{what}: {} ({})", e.message(), e.code());
    match e.code() {
        ErrorCode::SFTP(FX_NO_CONNECTION | FX_CONNECTION_LOST) => SourceError::Transient(msg),
        // Missing file, permission denied, generic failure, quota…: the
        // server answered and said no; asking again will not change that.
        ErrorCode::SFTP(_) => SourceError::Permanent(msg),
        ErrorCode::Session(
            LIBSSH2_ERROR_AUTHENTICATION_FAILED
            | LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED
            | LIBSSH2_ERROR_PASSWORD_EXPIRED
            | LIBSSH2_ERROR_KEYFILE_AUTH_FAILED,
        ) => SourceError::Auth(msg),
        ErrorCode::Session(
            LIBSSH2_ERROR_FILE | LIBSSH2_ERROR_INVAL | LIBSSH2_ERROR_ALGO_UNSUPPORTED,
        ) => SourceError::Permanent(msg),
        // Timeouts, socket errors, disconnects, closed channels, protocol
        // errors from a connection cut mid-packet: the session is gone,
        // a new one may work.
        ErrorCode::Session(_) => SourceError::Transient(msg),
    }
}

fn io_err(e: std::io::Error, what: &str) -> SourceError {
    // Errors from reading an SFTP file handle come back as io::Error; the
    // ssh2 error inside names the cause but its code is lost. A timeout or
    // a dropped connection is what happens mid-transfer.
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            SourceError::Permanent(format!("{what}: {e}"))
        }
        _ => SourceError::Transient(format!("{what}: {e}")),
    }
}

impl Source for SftpSource {
    fn describe(&self) -> String {
        format!(
            "sftp://{}@{}:{}/{}",
            self.c.user, self.c.host, self.c.port, self.c.dir
        )
    }

    fn list(&mut self) -> Result<Vec<RemoteFile>, SourceError> {
        let dir = PathBuf::from(&self.c.dir);
        let entries = self.with(|sftp| {
            sftp.readdir(&dir)
                .map_err(|e| map_err(e, &format!("listing {}", dir.display())))
        })?;
        let mut out = Vec::new();
        for (path, st) in entries {
            // OpenSSH answers READDIR with lstat() attributes: a symlink shows
            // as a symlink, never as its target.
            if !st.is_file() {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                tracing::warn!(dir = %dir.display(), name = ?path, "skipping a file whose name is not UTF-8");
                continue;
            };
            out.push(RemoteFile {
                name: name.to_owned(),
                size: st.size.unwrap_or(0),
                mtime: st.mtime.map(|t| t as i64),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn fetch(&mut self, file: &RemoteFile, dest: &Path) -> Result<(), SourceError> {
        let src = self.path(&file.name);
        self.with(|sftp| {
            let what = format!("downloading {}", src.display());
            let mut remote = sftp
                .open_mode(&src, OpenFlags::READ, 0, OpenType::File)
                .map_err(|e| map_err(e, &what))?;
            let n = super::download_to(&mut remote, dest, READ_BUF, |e, _| io_err(e, &what))?;
            if file.size != 0 && n != file.size {
                return Err(super::size_changed(src.display(), file.size, n));
            }
            Ok(())
        })
    }

    fn remove(&mut self, name: &str) -> Result<(), SourceError> {
        let p = self.path(name);
        self.with(|sftp| match sftp.unlink(&p) {
            Err(e) if is_code(&e, &[FX_NO_SUCH_FILE, FX_NO_SUCH_PATH]) => Ok(()),
            r => r.map_err(|e| map_err(e, &format!("deleting {}", p.display()))),
        })
    }

    fn move_to(&mut self, name: &str, dir: &str) -> Result<(), SourceError> {
        let from = self.path(name);
        let to_dir = self.path(dir);
        let to = remote_join(&to_dir.to_string_lossy(), name);
        self.with(|sftp| {
            mkdir_p(sftp, &to_dir)?;
            match sftp.lstat(&from) {
                Ok(_) => rename_over(sftp, &from, &to),
                // Moved by an earlier, interrupted tidy (or by the partner).
                Err(e) if is_code(&e, &[FX_NO_SUCH_FILE, FX_NO_SUCH_PATH]) => Ok(()),
                Err(e) => Err(map_err(e, &format!("checking {}", from.display()))),
            }
        })
    }

    fn upload(&mut self, dir: &str, name: &str, data: &[u8]) -> Result<(), SourceError> {
        let to_dir = self.path(dir);
        let tmp = remote_join(&to_dir.to_string_lossy(), &format!(".{name}.part"));
        let to = remote_join(&to_dir.to_string_lossy(), name);
        self.with(|sftp| {
            mkdir_p(sftp, &to_dir)?;
            let what = format!("uploading {}", tmp.display());
            let mut f = sftp
                .open_mode(
                    &tmp,
                    OpenFlags::WRITE | OpenFlags::TRUNCATE,
                    0o644,
                    OpenType::File,
                )
                .map_err(|e| map_err(e, &what))?;
            f.write_all(data).map_err(|e| io_err(e, &what))?;
            f.close().map_err(|e| map_err(e, &what))?;
            drop(f);
            rename_over(sftp, &tmp, &to)
        })
    }
}

/// Create `dir` and its parents, accepting ones that exist.
fn mkdir_p(sftp: &Sftp, dir: &Path) -> Result<(), SourceError> {
    match sftp.lstat(dir) {
        Ok(st) if st.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(SourceError::Permanent(format!(
                "{} exists and is not a directory",
                dir.display()
            )))
        }
        Err(e) if is_code(&e, &[FX_NO_SUCH_FILE, FX_NO_SUCH_PATH]) => {}
        Err(e) => return Err(map_err(e, &format!("checking {}", dir.display()))),
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() && parent != Path::new("/") {
            mkdir_p(sftp, parent)?;
        }
    }
    match sftp.mkdir(dir, 0o755) {
        Ok(()) => Ok(()),
        // OpenSSH (SFTP v3) says FAILURE for "exists"; a race with another
        // client creating it is fine if it is a directory now.
        Err(e) if is_code(&e, &[FX_FAILURE, FX_FILE_ALREADY_EXISTS]) => match sftp.lstat(dir) {
            Ok(st) if st.is_dir() => Ok(()),
            _ => Err(map_err(e, &format!("creating {}", dir.display()))),
        },
        Err(e) => Err(map_err(e, &format!("creating {}", dir.display()))),
    }
}

/// Rename replacing the target. OpenSSH's SFTP v3 RENAME refuses an existing
/// target and ignores the OVERWRITE flag, so a target in the way is removed
/// first (the target is ours: a processed file or an earlier report).
fn rename_over(sftp: &Sftp, from: &Path, to: &Path) -> Result<(), SourceError> {
    let what = || format!("renaming {} to {}", from.display(), to.display());
    match sftp.rename(from, to, Some(RenameFlags::OVERWRITE | RenameFlags::ATOMIC)) {
        Ok(()) => Ok(()),
        Err(e) if is_code(&e, &[FX_FAILURE, FX_FILE_ALREADY_EXISTS]) => {
            match sftp.unlink(to) {
                Ok(()) => {}
                Err(e2) if is_code(&e2, &[FX_NO_SUCH_FILE, FX_NO_SUCH_PATH]) => {
                    return Err(map_err(e, &what()))
                }
                Err(e2) => return Err(map_err(e2, &format!("replacing {}", to.display()))),
            }
            sftp.rename(from, to, Some(RenameFlags::OVERWRITE | RenameFlags::ATOMIC))
                .map_err(|e| map_err(e, &what()))
        }
        Err(e) => Err(map_err(e, &what())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_join_plainly() {
        assert_eq!(remote_join(".", "a.csv"), PathBuf::from("./a.csv"));
        assert_eq!(remote_join("/in/", "a.csv"), PathBuf::from("/in/a.csv"));
        assert_eq!(remote_join("/", "a.csv"), PathBuf::from("/a.csv"));
        assert_eq!(remote_join("in", "a.csv"), PathBuf::from("in/a.csv"));
    }
}
