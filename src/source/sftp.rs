//! SFTP over `ssh2` (blocking; the daemon calls sources off the async runtime).
//!
//! What must stay true:
//! - the server's host key is checked (pins or known_hosts) right after the
//!   handshake and **before** any credential is sent; a server with several
//!   host keys is asked for the pinned type first, then for each other type
//!   on a new connection, and a refusal names every key it presented;
//! - a session ends with SSH_MSG_DISCONNECT (`Conn`'s `Drop`), not a reset;
//! - a download never asks for a byte at or past the file's size
//!   (`UpToSize`): servers log every such request;
//! - every blocking libssh2 call is bounded by the configured timeout
//!   (`Session::set_timeout`; libssh2's default is to wait forever);
//! - after a transient fault the session is dropped and the next call
//!   reconnects, so a retry starts clean.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ssh2::{
    CheckResult, DisconnectCode, ErrorCode, HashType, HostKeyType, KnownHostFileKind, MethodType,
    OpenFlags, OpenType, RenameFlags, Session, Sftp,
};

use super::secret::check_private;
use super::{HostKeyCheck, HostKeyKind, RemoteFile, SftpAuth, SftpConfig, Source, SourceError};

/// Read buffer for downloads. libssh2 pipelines SFTP read requests up to
/// four times the buffer it is given, so a big buffer is what makes a
/// download fast on a link with latency (`UpToSize` shrinks it near the
/// end of a file).
const READ_BUF: usize = 4 << 20;

// libssh2 error codes (session level) and SFTP status codes we tell apart.
const LIBSSH2_ERROR_KEX_FAILURE: i32 = -5;
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
    // Taken (closed) before the session says goodbye in `drop`.
    sftp: Option<Sftp>,
    sess: Session,
}

impl Conn {
    fn sftp(&self) -> &Sftp {
        self.sftp.as_ref().expect("open until dropped")
    }
}

impl Drop for Conn {
    /// Close the SFTP channel, then end the session with SSH_MSG_DISCONNECT,
    /// so the partner's server logs a clean logout instead of a reset.
    fn drop(&mut self) {
        // A session dropped after a fault may be dead: do not wait long.
        let t = self.sess.timeout();
        self.sess
            .set_timeout(if t == 0 { 2000 } else { t.min(2000) });
        drop(self.sftp.take());
        say_goodbye(&self.sess, DisconnectCode::ByApplication);
    }
}

fn say_goodbye(sess: &Session, why: DisconnectCode) {
    if let Err(e) = sess.disconnect(Some(why), "milebatch: session done", None) {
        tracing::debug!(error = %e, "SSH disconnect");
    }
}

pub struct SftpSource {
    c: SftpConfig,
    conn: Option<Conn>,
}

/// One key a server presented during the host-key check.
struct Offered {
    kind: Option<HostKeyKind>,
    fingerprint: String,
    /// known_hosts only: whether the file has an entry for the host that
    /// this key contradicted.
    mismatch: bool,
}

impl Offered {
    fn text(&self) -> String {
        match self.kind {
            Some(k) => format!("{k} {}", self.fingerprint),
            None => format!("unknown-type {}", self.fingerprint),
        }
    }
}

/// What one handshake with a given host-key preference found.
enum Probe {
    /// The key matched: a verified session, not yet logged in.
    Verified(Session),
    /// The server presented this key, and it did not match.
    Refused(Offered),
    /// The server has no key of the kinds asked for.
    NotOffered,
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
        let sess = self.verified_session()?;

        let logged_in = (|| {
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
            sess.sftp()
                .map_err(|e| map_err(e, "starting the SFTP subsystem"))
        })();
        match logged_in {
            Ok(sftp) => Ok(Conn {
                sftp: Some(sftp),
                sess,
            }),
            Err(e) => {
                say_goodbye(&sess, DisconnectCode::ByApplication);
                Err(e)
            }
        }
    }

    /// A session whose host key matched `host_key` (or `known_hosts`).
    ///
    /// libssh2 takes whichever key type comes first in its preference list
    /// that the server also has, so a server with several host keys shows
    /// only one per handshake. The first handshake asks for the pinned
    /// types (or known_hosts' types) first; if the key it gets does not
    /// match, each other type the server may have is asked for in turn, on
    /// a new connection. No credential is sent before a key matched.
    fn verified_session(&self) -> Result<Session, SourceError> {
        let c = &self.c;
        let known = match &c.host_key {
            HostKeyCheck::KnownHosts(path) => Some(KnownHostsFile::read(path)?),
            HostKeyCheck::Pins(_) => None,
        };
        let wanted: Vec<HostKeyKind> = match (&c.host_key, &known) {
            (HostKeyCheck::Pins(pins), _) => pins.iter().filter_map(|p| p.kind).collect(),
            (_, Some(k)) => k.kinds.clone(),
            _ => vec![],
        };
        let mut order: Vec<HostKeyKind> = Vec::new();
        for k in wanted.into_iter().chain(HostKeyKind::ALL) {
            if !order.contains(&k) {
                order.push(k);
            }
        }

        let mut offered: Vec<Offered> = Vec::new();
        // First handshake: every kind, the wanted ones first.
        match self.probe(&order, known.as_ref())? {
            Probe::Verified(s) => return Ok(s),
            Probe::Refused(o) => offered.push(o),
            Probe::NotOffered => {}
        }
        // Then each kind not seen yet, alone.
        for k in order {
            if offered.iter().any(|o| o.kind == Some(k)) {
                continue;
            }
            match self.probe(&[k], known.as_ref())? {
                Probe::Verified(s) => return Ok(s),
                Probe::Refused(o) => offered.push(o),
                Probe::NotOffered => {}
            }
        }
        Err(self.refusal(&offered))
    }

    fn refusal(&self, offered: &[Offered]) -> SourceError {
        let c = &self.c;
        let keys = if offered.is_empty() {
            "no host key of a type milebatch supports".to_owned()
        } else {
            offered
                .iter()
                .map(Offered::text)
                .collect::<Vec<_>>()
                .join(", ")
        };
        SourceError::HostKey(match &c.host_key {
            HostKeyCheck::Pins(pins) => format!(
                "{}:{} presented {keys}, but host_key is {}",
                c.host,
                c.port,
                pins.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            HostKeyCheck::KnownHosts(path) if offered.iter().any(|o| o.mismatch) => format!(
                "{}:{} presented {keys}, which does not match its entry in {}",
                c.host,
                c.port,
                path.display()
            ),
            HostKeyCheck::KnownHosts(path) => format!(
                "{}:{} is not in {} (it presented {keys})",
                c.host,
                c.port,
                path.display()
            ),
        })
    }

    /// One TCP connection and SSH handshake asking for `kinds` (in that
    /// order), and the check of the key the server presented.
    fn probe(
        &self,
        kinds: &[HostKeyKind],
        known: Option<&KnownHostsFile>,
    ) -> Result<Probe, SourceError> {
        let c = &self.c;
        let timeout = c.pickup.timeout;
        let tcp = super::connect_tcp(&c.host, c.port, timeout, |a, t| {
            TcpStream::connect_timeout(&a, t)
        })?;
        let _ = tcp.set_nodelay(true);
        let mut sess = Session::new()
            .map_err(|e| SourceError::Permanent(format!("creating an SSH session: {e}")))?;
        sess.set_timeout(timeout.as_millis().clamp(1, u32::MAX as u128) as u32);
        let supported = sess
            .supported_algs(MethodType::HostKey)
            .map_err(|e| SourceError::Permanent(format!("libssh2 host key types: {e}")))?;
        let prefs: Vec<&str> = kinds
            .iter()
            .flat_map(|k| k.algorithms().iter().copied())
            .filter(|a| supported.contains(a))
            .collect();
        if prefs.is_empty() {
            return Ok(Probe::NotOffered);
        }
        sess.method_pref(MethodType::HostKey, &prefs.join(","))
            .map_err(|e| SourceError::Permanent(format!("host key preference: {e}")))?;
        sess.set_tcp_stream(tcp);
        if let Err(e) = sess.handshake() {
            // Asking for one type the server lacks fails the key exchange;
            // any other failure is the network's or the server's.
            if kinds.len() < HostKeyKind::ALL.len()
                && e.code() == ErrorCode::Session(LIBSSH2_ERROR_KEX_FAILURE)
            {
                return Ok(Probe::NotOffered);
            }
            return Err(SourceError::Transient(format!(
                "SSH handshake with {}: {e}",
                c.host
            )));
        }
        let (key, raw_kind) = sess
            .host_key()
            .ok_or_else(|| SourceError::HostKey(format!("{} sent no host key", c.host)))?;
        let kind = key_kind(raw_kind);
        let fingerprint = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(
                sess.host_key_hash(HashType::Sha256)
                    .ok_or_else(|| SourceError::HostKey("cannot hash the host key".into()))?
            )
        );
        let (ok, mismatch) = match (&c.host_key, known) {
            (HostKeyCheck::Pins(pins), _) => {
                (pins.iter().any(|p| p.matches(kind, &fingerprint)), false)
            }
            (HostKeyCheck::KnownHosts(_), Some(kh)) => {
                match kh.check(&sess, &c.host, c.port, key)? {
                    CheckResult::Match => (true, false),
                    CheckResult::Mismatch => (false, true),
                    CheckResult::NotFound => (false, false),
                    CheckResult::Failure => {
                        return Err(SourceError::HostKey(format!(
                            "checking {}:{} ({fingerprint}) against {} failed",
                            c.host,
                            c.port,
                            kh.path.display()
                        )))
                    }
                }
            }
            (HostKeyCheck::KnownHosts(_), None) => unreachable!("known_hosts is read first"),
        };
        if ok {
            tracing::debug!(host = %c.host, key_type = kind.map(|k| k.name()).unwrap_or("unknown"), fingerprint = %fingerprint, "host key verified");
            Ok(Probe::Verified(sess))
        } else {
            say_goodbye(&sess, DisconnectCode::HostKeyNotVerifiable);
            Ok(Probe::Refused(Offered {
                kind,
                fingerprint,
                mismatch,
            }))
        }
    }

    /// The live SFTP channel, connecting first if there is none.
    fn sftp(&mut self) -> Result<&Sftp, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(self.open()?);
        }
        Ok(self.conn.as_ref().expect("just connected").sftp())
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

fn key_kind(k: HostKeyType) -> Option<HostKeyKind> {
    match k {
        HostKeyType::Rsa => Some(HostKeyKind::Rsa),
        HostKeyType::Ecdsa256 => Some(HostKeyKind::Ecdsa256),
        HostKeyType::Ecdsa384 => Some(HostKeyKind::Ecdsa384),
        HostKeyType::Ecdsa521 => Some(HostKeyKind::Ecdsa521),
        HostKeyType::Ed25519 => Some(HostKeyKind::Ed25519),
        HostKeyType::Dss | HostKeyType::Unknown => None,
    }
}

/// A known_hosts file (libssh2 parses it into each session) and the key
/// types it holds, which are asked for first.
struct KnownHostsFile {
    path: PathBuf,
    kinds: Vec<HostKeyKind>,
}

impl KnownHostsFile {
    fn read(path: &Path) -> Result<KnownHostsFile, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SourceError::Permanent(format!("reading known_hosts {}: {e}", path.display()))
        })?;
        let mut kinds = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let mut first = words.next();
            if first.is_some_and(|w| w.starts_with('@')) {
                first = words.next(); // @cert-authority / @revoked marker
            }
            if first.is_none_or(|w| w.starts_with('#')) {
                continue;
            }
            if let Some(k) = words.next().and_then(HostKeyKind::parse) {
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
        }
        Ok(KnownHostsFile {
            path: path.to_owned(),
            kinds,
        })
    }

    fn check(
        &self,
        sess: &Session,
        host: &str,
        port: u16,
        key: &[u8],
    ) -> Result<CheckResult, SourceError> {
        let mut kh = sess
            .known_hosts()
            .map_err(|e| SourceError::Permanent(format!("known_hosts: {}", e.message())))?;
        kh.read_file(&self.path, KnownHostFileKind::OpenSSH)
            .map_err(|e| {
                SourceError::Permanent(format!(
                    "reading known_hosts {}: {}",
                    self.path.display(),
                    e.message()
                ))
            })?;
        Ok(kh.check_port(host, port, key))
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
            let size = open_size(&mut remote, &what)?;
            if file.size != 0 && size != file.size {
                return Err(super::size_changed(src.display(), file.size, size));
            }
            let mut bounded = UpToSize {
                file: &mut remote,
                size,
                read: 0,
            };
            let n = super::download_to(&mut bounded, dest, READ_BUF, |e, _| io_err(e, &what))?;
            // Read up to the size, never past it: a file that grew shows in
            // its size now, one that shrank in a short read.
            let now = open_size(&mut remote, &what)?;
            if n != size || now != size {
                return Err(super::size_changed(src.display(), size, n.max(now)));
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

    fn folder(&mut self, dir: &str) -> Result<super::Folder, SourceError> {
        let p = self.path(dir);
        // stat, not lstat: the server follows a symlink to a folder when
        // the run moves a file into it.
        self.with(|sftp| match sftp.stat(&p) {
            Ok(st) if st.is_dir() => Ok(super::Folder::Folder),
            Ok(_) => Ok(super::Folder::NotAFolder),
            Err(e) if is_code(&e, &[FX_NO_SUCH_FILE, FX_NO_SUCH_PATH]) => {
                Ok(super::Folder::Missing)
            }
            Err(e) => Err(map_err(e, &format!("checking {}", p.display()))),
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

/// The size of an open remote file (fstat on the handle).
fn open_size(f: &mut ssh2::File, what: &str) -> Result<u64, SourceError> {
    let st = f.stat().map_err(|e| map_err(e, what))?;
    st.size
        .ok_or_else(|| SourceError::Permanent(format!("{what}: the server did not say its size")))
}

/// A reader that asks libssh2 for no byte at or past `size`.
///
/// libssh2 pipelines read requests up to four times the buffer it is
/// given, past the end of the file if the buffer allows, and every request
/// past the end is a "read offset greater than size" line in some servers'
/// logs. So each read gets at most a quarter of what is left; the last few
/// bytes start afresh (a seek drops the read-ahead) with a buffer that
/// asks for one request starting before the end.
struct UpToSize<'a> {
    file: &'a mut ssh2::File,
    size: u64,
    read: u64,
}

impl std::io::Read for UpToSize<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        let left = self.size - self.read;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let quarter = left / 4;
        let ask = if quarter == 0 {
            // Fewer than 4 bytes left: one request from where we are.
            self.file.seek(SeekFrom::Start(self.read))?;
            left
        } else {
            quarter
        };
        let ask = ask.min(buf.len() as u64) as usize;
        let n = self.file.read(&mut buf[..ask])?;
        self.read += n as u64;
        Ok(n)
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
