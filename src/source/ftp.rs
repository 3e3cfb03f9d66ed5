//! FTP and explicit FTPS over `suppaftp` (sync API).
//!
//! What must stay true:
//! - `ftps` is explicit TLS (`AUTH TLS`) on control and data connections,
//!   verified against the system roots plus `ca_file`; verification is never
//!   switched off;
//! - every socket (control and each passive data connection) has read and
//!   write timeouts, since suppaftp itself only bounds the connect;
//! - transfers are binary (`TYPE I`): bytes arrive exactly as stored;
//! - after a transient fault the connection is dropped and the next call
//!   reconnects.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use suppaftp::list::File as ListEntry;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpStream, ImplFtpStream, RustlsConnector, RustlsFtpStream, TlsStream};

use super::{FtpConfig, RemoteFile, Source, SourceError};

const READ_BUF: usize = 1 << 20;

enum Conn {
    Plain(FtpStream),
    Tls(RustlsFtpStream),
}

/// Run the same code on either kind of connection.
macro_rules! on {
    ($conn:expr, $f:ident => $body:expr) => {
        match $conn {
            Conn::Plain($f) => $body,
            Conn::Tls($f) => $body,
        }
    };
}

pub struct FtpSource {
    c: FtpConfig,
    conn: Option<Conn>,
    /// Whether the server answered `MLSD` (learned on first listing).
    mlsd: Option<bool>,
}

impl FtpSource {
    pub fn connect(c: &FtpConfig) -> Result<FtpSource, SourceError> {
        let mut s = FtpSource {
            c: c.clone(),
            conn: None,
            mlsd: None,
        };
        s.conn = Some(s.open()?);
        Ok(s)
    }

    fn open(&self) -> Result<Conn, SourceError> {
        let c = &self.c;
        let timeout = c.pickup.timeout;
        let tcp = super::connect_tcp(&c.host, c.port, timeout, connect_bounded)?;
        let data_builder = move |addr: SocketAddr| {
            connect_bounded(addr, timeout).map_err(FtpError::ConnectionError)
        };
        let password = c.password.read().map_err(SourceError::Permanent)?;
        let ctx = |what: &str| format!("{what} ({}:{})", c.host, c.port);
        let mut conn = if c.tls {
            let connector = tls_connector(c.ca_file.as_deref())?;
            let plain = RustlsFtpStream::connect_with_stream(tcp)
                .map_err(|e| map_err(e, &ctx("greeting")))?
                .passive_stream_builder(data_builder);
            let secure = plain
                .into_secure(connector, &c.host)
                .map_err(|e| map_err(e, &ctx("starting TLS (AUTH TLS)")))?;
            Conn::Tls(secure)
        } else {
            let plain = FtpStream::connect_with_stream(tcp)
                .map_err(|e| map_err(e, &ctx("greeting")))?
                .passive_stream_builder(data_builder);
            Conn::Plain(plain)
        };
        on!(&mut conn, f => {
            f.set_mode(suppaftp::Mode::Passive);
            f.login(c.user.as_str(), password.expose())
                .map_err(|e| map_err(e, &format!("logging in as {}", c.user)))?;
            f.transfer_type(FileType::Binary)
                .map_err(|e| map_err(e, "switching to binary mode"))?;
            if !c.dir.is_empty() && c.dir != "." {
                f.cwd(&c.dir)
                    .map_err(|e| map_err(e, &format!("changing to {}", c.dir)))?;
            }
        });
        Ok(conn)
    }

    fn conn(&mut self) -> Result<&mut Conn, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(self.open()?);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Drop the connection after a transient failure (or whenever a
    /// transfer broke off and left it in an unknown state).
    fn after<T>(&mut self, r: Result<T, SourceError>, drop_always: bool) -> Result<T, SourceError> {
        if r.is_err() && (drop_always || matches!(r, Err(SourceError::Transient(_)))) {
            self.conn = None;
        }
        r
    }

    fn list_inner(&mut self) -> Result<Vec<RemoteFile>, SourceError> {
        let use_mlsd = self.mlsd != Some(false);
        let conn = self.conn()?;
        let (lines, mlsd) = on!(conn, f => {
            let mut got = None;
            if use_mlsd {
                match f.mlsd(None) {
                    Ok(l) => got = Some((l, true)),
                    Err(FtpError::UnexpectedResponse(r))
                        if matches!(r.status.code(), 500 | 501 | 502 | 504) => {}
                    Err(e) => return Err(map_err(e, "listing (MLSD)")),
                }
            }
            match got {
                Some(g) => g,
                None => (f.list(None).map_err(|e| map_err(e, "listing (LIST)"))?, false),
            }
        });
        self.mlsd = Some(mlsd);
        let mut out = Vec::new();
        for line in lines {
            let parsed = if mlsd {
                suppaftp::list::ListParser::parse_mlsd(&line)
            } else {
                ListEntry::try_from(line.as_str())
            };
            let entry = match parsed {
                Ok(e) => e,
                Err(_) => {
                    tracing::warn!(line = %line, "skipping a listing line that does not parse");
                    continue;
                }
            };
            if !entry.is_file() || entry.is_symlink() {
                continue;
            }
            if entry.name() == "." || entry.name() == ".." {
                continue;
            }
            let mtime = entry
                .modified()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs() as i64)
                .filter(|t| *t > 0);
            out.push(RemoteFile {
                name: entry.name().to_owned(),
                size: entry.size() as u64,
                mtime,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Whether `name` is (still) a file in the inbox.
    fn present(&mut self, name: &str) -> Result<bool, SourceError> {
        Ok(self.list_inner()?.iter().any(|f| f.name == name))
    }

    fn mkdir_p(&mut self, dir: &str) -> Result<(), SourceError> {
        let conn = self.conn()?;
        let mut prefix = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            on!(&mut *conn, f => match f.mkdir(&prefix) {
                Ok(()) => {}
                // 550 is what servers answer for "exists" (and for "not
                // allowed": the rename that follows reports that one).
                Err(FtpError::UnexpectedResponse(r)) if r.status.code() == 550 => {}
                Err(e) => return Err(map_err(e, &format!("creating {prefix}"))),
            });
        }
        Ok(())
    }

    fn rename_over(&mut self, from: &str, to: &str) -> Result<(), SourceError> {
        let conn = self.conn()?;
        on!(conn, f => match f.rename(from, to) {
            Ok(()) => Ok(()),
            Err(FtpError::UnexpectedResponse(r)) if r.status.code() == 550 || r.status.code() == 553 => {
                // Some servers refuse to rename over an existing file.
                let _ = f.rm(to);
                f.rename(from, to)
                    .map_err(|e| map_err(e, &format!("renaming {from} to {to}")))
            }
            Err(e) => Err(map_err(e, &format!("renaming {from} to {to}"))),
        })
    }
}

/// TCP connect with a timeout, and read/write timeouts on the socket.
fn connect_bounded(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// rustls with the system roots plus `ca_file`, always verifying.
fn tls_connector(ca_file: Option<&Path>) -> Result<RustlsConnector, SourceError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| SourceError::Permanent(format!("ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(SourceError::Permanent(format!(
                "ca_file {}: no PEM certificate in it",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| SourceError::Permanent(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Permanent(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(RustlsConnector::from(Arc::new(config)))
}

/// What an FTP error means for retrying.
fn map_err(e: FtpError, what: &str) -> SourceError {
    match e {
        FtpError::UnexpectedResponse(r) => {
            let code = r.status.code();
            let text = String::from_utf8_lossy(&r.body).trim().to_owned();
            let msg = format!("{what}: server replied {text}");
            match code {
                530 => SourceError::Auth(msg),
                400..=499 => SourceError::Transient(msg),
                _ => SourceError::Permanent(msg),
            }
        }
        FtpError::ConnectionError(io) => {
            // rustls reports certificate problems as I/O errors on the first
            // read or write; those are not going to pass by themselves.
            let tls = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(|t| t.to_string());
            match tls {
                Some(t) => SourceError::Permanent(format!("{what}: TLS: {t}")),
                None => SourceError::Transient(format!("{what}: {io}")),
            }
        }
        FtpError::SecureError(s) => SourceError::Permanent(format!("{what}: TLS: {s}")),
        FtpError::BadResponse | FtpError::DataConnectionAlreadyOpen => {
            SourceError::Transient(format!("{what}: {e}"))
        }
        other => SourceError::Permanent(format!("{what}: {other}")),
    }
}

fn retr<T: TlsStream>(
    f: &mut ImplFtpStream<T>,
    name: &str,
    dest: &Path,
) -> Result<u64, SourceError> {
    let what = format!("downloading {name}");
    let mut stream = f.retr_as_stream(name).map_err(|e| map_err(e, &what))?;
    let copied = super::download_to(&mut stream, dest, READ_BUF, |e, _| {
        map_err(FtpError::ConnectionError(e), &what)
    });
    // Always read the completion reply, but the copy's error is the cause.
    let finished = stream.finish();
    let n = copied?;
    finished.map_err(|e| map_err(e, &what))?;
    Ok(n)
}

impl Source for FtpSource {
    fn describe(&self) -> String {
        format!(
            "{}://{}@{}:{}/{}",
            if self.c.tls { "ftps" } else { "ftp" },
            self.c.user,
            self.c.host,
            self.c.port,
            self.c.dir
        )
    }

    fn list(&mut self) -> Result<Vec<RemoteFile>, SourceError> {
        let r = self.list_inner();
        self.after(r, false)
    }

    fn fetch(&mut self, file: &RemoteFile, dest: &Path) -> Result<(), SourceError> {
        let r = (|| {
            let conn = self.conn()?;
            let n = on!(conn, f => retr(f, &file.name, dest))?;
            if file.size != 0 && n != file.size {
                return Err(super::size_changed(&file.name, file.size, n));
            }
            Ok(())
        })();
        // A broken-off transfer leaves the control connection in an unknown
        // state: start the next call on a fresh one.
        self.after(r, true)
    }

    fn remove(&mut self, name: &str) -> Result<(), SourceError> {
        let r = (|| {
            let conn = self.conn()?;
            let r = on!(conn, f => f.rm(name));
            match r {
                Ok(()) => Ok(()),
                Err(FtpError::UnexpectedResponse(resp)) if resp.status.code() == 550 => {
                    if self.present(name)? {
                        Err(map_err(
                            FtpError::UnexpectedResponse(resp),
                            &format!("deleting {name}"),
                        ))
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(map_err(e, &format!("deleting {name}"))),
            }
        })();
        self.after(r, false)
    }

    fn move_to(&mut self, name: &str, dir: &str) -> Result<(), SourceError> {
        let r = (|| {
            self.mkdir_p(dir)?;
            if !self.present(name)? {
                // Moved by an earlier, interrupted tidy (or by the partner).
                return Ok(());
            }
            self.rename_over(name, &format!("{dir}/{name}"))
        })();
        self.after(r, false)
    }

    fn upload(&mut self, dir: &str, name: &str, data: &[u8]) -> Result<(), SourceError> {
        let r = (|| {
            self.mkdir_p(dir)?;
            let tmp = format!("{dir}/.{name}.part");
            let conn = self.conn()?;
            on!(conn, f => {
                f.put_file(&tmp, &mut &data[..])
                    .map_err(|e| map_err(e, &format!("uploading {tmp}")))
            })?;
            self.rename_over(&tmp, &format!("{dir}/{name}"))
        })();
        self.after(r, false)
    }
}
