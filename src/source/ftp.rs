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
                    // Not implemented (500-504) or refused (550 from
                    // proftpd's `<Limit MLSD> DenyAll`, IIS without the
                    // feature): LIST says the same in another format.
                    Err(FtpError::UnexpectedResponse(r)) if (500..600).contains(&r.status.code()) => {
                        tracing::debug!(reply = %String::from_utf8_lossy(&r.body).trim(), "MLSD refused; listing with LIST");
                    }
                    Err(e) => return Err(map_err(e, "listing (MLSD)")),
                }
            }
            match got {
                Some(g) => g,
                None => (f.list(None).map_err(|e| map_err(e, "listing (LIST)"))?, false),
            }
        });
        self.mlsd = Some(mlsd);
        let now = chrono::Utc::now().timestamp();
        let mut out = Vec::new();
        for line in lines {
            let entry = if mlsd {
                suppaftp::list::ListParser::parse_mlsd(&line)
                    .ok()
                    .map(|e| Listed {
                        kind: if e.is_symlink() {
                            Kind::Other
                        } else if e.is_file() {
                            Kind::File
                        } else {
                            Kind::Dir
                        },
                        name: e.name().to_owned(),
                        size: e.size() as u64,
                        mtime: e
                            .modified()
                            .duration_since(UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs() as i64)
                            .filter(|t| *t > 0),
                    })
            } else {
                parse_list_line(&line, now)
            };
            let Some(entry) = entry else {
                tracing::warn!(line = %line, "skipping a listing line that does not parse");
                continue;
            };
            if entry.kind != Kind::File || entry.name == "." || entry.name == ".." {
                continue;
            }
            out.push(RemoteFile {
                name: entry.name,
                size: entry.size,
                mtime: entry.mtime,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// Symlinks, devices…: never picked up.
    Other,
}

/// One line of a directory listing, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    kind: Kind,
    name: String,
    size: u64,
    mtime: Option<i64>,
}

/// One line of a `LIST` answer, in either format servers use:
///
/// - UNIX (`ls -l`; vsftpd, proftpd, IIS set to UNIX style):
///   `-rw-r--r--   1 owner group    1234 Nov 29 18:12 POINT.csv`;
/// - MS-DOS (IIS's default): `11-29-26  06:12PM       1234 POINT.csv`,
///   `11-29-26  06:12PM       <DIR>          processed`.
///
/// Names keep their inner spaces and any script (they are the rest of the
/// line). Times without a zone are read as UTC: they only need to compare
/// with themselves from one listing to the next. `now` (seconds) places a
/// UNIX date without a year. `None`: a line in neither format (a "total"
/// line, a banner).
fn parse_list_line(line: &str, now: i64) -> Option<Listed> {
    let line = line.trim_end_matches(['\r', '\n']);
    parse_dos(line).or_else(|| parse_unix(line, now))
}

/// Splits off the first whitespace-separated word; the rest keeps its
/// leading whitespace.
fn word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

fn parse_dos(line: &str) -> Option<Listed> {
    use chrono::{NaiveDate, NaiveTime};
    let (date, rest) = word(line)?;
    let (time, rest) = word(rest)?;
    let d: Vec<&str> = date.split('-').collect();
    let [m, day, y] = d[..] else { return None };
    let (m, day): (u32, u32) = (m.parse().ok()?, day.parse().ok()?);
    let y: i32 = match y.len() {
        4 => y.parse().ok()?,
        // POSIX's rule for two-digit years (strptime %y)
        2 => match y.parse::<i32>().ok()? {
            v @ 0..=68 => 2000 + v,
            v => 1900 + v,
        },
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(y, m, day)?;
    let upper = time.to_ascii_uppercase();
    let time = if let Some(t) = upper
        .strip_suffix("AM")
        .or_else(|| upper.strip_suffix("PM"))
    {
        let t = NaiveTime::parse_from_str(t, "%H:%M").ok()?;
        let h = chrono::Timelike::hour(&t);
        if !(1..=12).contains(&h) {
            return None;
        }
        let h = h % 12 + if upper.ends_with("PM") { 12 } else { 0 };
        NaiveTime::from_hms_opt(h, chrono::Timelike::minute(&t), 0)?
    } else {
        NaiveTime::parse_from_str(&upper, "%H:%M").ok()?
    };
    let (size, rest) = word(rest)?;
    let name = rest.trim_start();
    if name.is_empty() {
        return None;
    }
    let (kind, size) = if size.eq_ignore_ascii_case("<DIR>") {
        (Kind::Dir, 0)
    } else {
        (Kind::File, size.replace(',', "").parse().ok()?)
    };
    Some(Listed {
        kind,
        name: name.to_owned(),
        size,
        mtime: Some(date.and_time(time).and_utc().timestamp()),
    })
}

fn parse_unix(line: &str, now: i64) -> Option<Listed> {
    use chrono::{Datelike, NaiveDate, NaiveTime};
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let (perms, mut rest) = word(line)?;
    let kind = match perms.as_bytes().first()? {
        b'-' => Kind::File,
        b'd' => Kind::Dir,
        b'l' | b'b' | b'c' | b'p' | b's' => Kind::Other,
        _ => return None,
    };
    if perms.len() < 10 {
        return None;
    }
    // links, owner, [group], size, then the date: find the month, whose
    // word before is the size (some servers leave out the group).
    let mut words = Vec::new();
    for _ in 0..5 {
        let (w, r) = word(rest)?;
        words.push(w);
        rest = r;
        if words.len() >= 3 {
            if let Some(mi) = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(w)) {
                let size: u64 = words[words.len() - 2].parse().ok()?;
                let (day, r) = word(rest)?;
                let (t, r) = word(r)?;
                // exactly one space separates the date from the name
                let name = r.strip_prefix(' ').unwrap_or(r);
                if name.is_empty() {
                    return None;
                }
                let name = match kind {
                    Kind::Other => name.split(" -> ").next().unwrap_or(name),
                    _ => name,
                };
                let day: u32 = day.parse().ok()?;
                let mon = mi as u32 + 1;
                let now_d = chrono::DateTime::from_timestamp(now, 0)?.date_naive();
                let (year, time) = if t.contains(':') {
                    // recent: this year, or last year if that is in the future
                    let time = NaiveTime::parse_from_str(t, "%H:%M").ok()?;
                    let mut y = now_d.year();
                    if NaiveDate::from_ymd_opt(y, mon, day)? > now_d + chrono::Days::new(1) {
                        y -= 1;
                    }
                    (y, time)
                } else {
                    (t.parse().ok()?, NaiveTime::MIN)
                };
                let date = NaiveDate::from_ymd_opt(year, mon, day)?;
                return Some(Listed {
                    kind,
                    name: name.to_owned(),
                    size,
                    mtime: Some(date.and_time(time).and_utc().timestamp()),
                });
            }
        }
    }
    None
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
                // vsftpd's "500 OOPS: …" is its own fault (a helper process
                // died; it ends the session after it), not a refusal of the
                // command: a new session may well work. Seen on a restarted
                // vsftpd in tests/source_ftp.rs.
                _ if text.contains("OOPS: ") => SourceError::Transient(msg),
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

    fn folder(&mut self, dir: &str) -> Result<super::Folder, SourceError> {
        let r = (|| {
            let conn = self.conn()?;
            on!(conn, f => {
                // FTP has no stat: a folder is what CWD enters (and CWD
                // back restores the inbox as the working folder); what CWD
                // refuses but SIZE measures is a file.
                let home = f.pwd().map_err(|e| map_err(e, "PWD"))?;
                match f.cwd(dir) {
                    Ok(()) => {
                        f.cwd(&home).map_err(|e| map_err(e, &format!("changing back to {home}")))?;
                        Ok(super::Folder::Folder)
                    }
                    Err(FtpError::UnexpectedResponse(r)) if r.status.code() == 550 => {
                        match f.size(dir) {
                            Ok(_) => Ok(super::Folder::NotAFolder),
                            Err(FtpError::UnexpectedResponse(r)) if r.status.code() == 550 => {
                                Ok(super::Folder::Missing)
                            }
                            Err(e) => Err(map_err(e, &format!("checking {dir}"))),
                        }
                    }
                    Err(e) => Err(map_err(e, &format!("checking {dir}"))),
                }
            })
        })();
        self.after(r, false)
    }

    fn remove_in(&mut self, dir: &str, name: &str) -> Result<(), SourceError> {
        // Not `remove`: its "550 and no longer listed" rule looks at the
        // inbox only, and would call a refused delete here done.
        let path = format!("{dir}/{name}");
        let r = (|| {
            let conn = self.conn()?;
            on!(conn, f => f.rm(&path)).map_err(|e| map_err(e, &format!("deleting {path}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsftpd_oops_is_transient_a_bad_command_is_not() {
        let reply = |text: &str| {
            FtpError::UnexpectedResponse(suppaftp::types::Response::new(
                suppaftp::Status::BadCommand,
                text.as_bytes().to_vec(),
            ))
        };
        let oops = map_err(reply("500 OOPS: priv_sock_send_cmd\r\n"), "listing");
        assert!(matches!(oops, SourceError::Transient(_)), "{oops:?}");
        let bad = map_err(reply("500 Unknown command.\r\n"), "listing");
        assert!(matches!(bad, SourceError::Permanent(_)), "{bad:?}");
    }

    /// 2026-11-29T20:00:00Z
    const NOW: i64 = 1_796_068_800;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Option<i64> {
        Some(
            chrono::NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, 0)
                .unwrap()
                .and_utc()
                .timestamp(),
        )
    }

    fn file(name: &str, size: u64, mtime: Option<i64>) -> Option<Listed> {
        Some(Listed {
            kind: Kind::File,
            name: name.into(),
            size,
            mtime,
        })
    }

    /// IIS 10 in its default MS-DOS style (two-digit years, 12-hour
    /// clock, `<DIR>`), as recorded from `LIST` on a Windows partner's
    /// server, and with "four-digit years" switched on.
    #[test]
    fn ms_dos_listing_from_iis() {
        let recorded = "11-29-26  06:12PM       <DIR>          processed\r\n\
                        11-29-26  06:12PM                 1234 POINT.csv\r\n\
                        11-28-26  09:05AM                56789 point exchange 2026.csv\r\n\
                        11-28-26  12:30AM                  321 ポイント交換.csv\r\n\
                        01-02-99  12:00PM                    0 old.csv\r\n\
                        11-29-2026  06:12PM              1234 four digits.csv\r\n";
        let got: Vec<_> = recorded
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| parse_list_line(l, NOW))
            .collect();
        assert_eq!(
            got,
            [
                Some(Listed {
                    kind: Kind::Dir,
                    name: "processed".into(),
                    size: 0,
                    mtime: at(2026, 11, 29, 18, 12)
                }),
                file("POINT.csv", 1234, at(2026, 11, 29, 18, 12)),
                file("point exchange 2026.csv", 56789, at(2026, 11, 28, 9, 5)),
                file("ポイント交換.csv", 321, at(2026, 11, 28, 0, 30)),
                file("old.csv", 0, at(1999, 1, 2, 12, 0)),
                file("four digits.csv", 1234, at(2026, 11, 29, 18, 12)),
            ]
        );
        // the example, with single spaces
        assert_eq!(
            parse_list_line("11-29-26  06:12PM       1234 POINT.csv", NOW),
            file("POINT.csv", 1234, at(2026, 11, 29, 18, 12))
        );
    }

    /// UNIX style as vsftpd, proftpd and IIS (UNIX mode) send it.
    #[test]
    fn unix_listing() {
        let recorded = [
            // vsftpd (numeric owner), this year
            "-rw-r--r--    1 1001     1001         1000 Nov 29 19:10 a.csv",
            // proftpd, a date with a year, a name with spaces
            "-rw-r--r--   1 mbtest   mbtest      56789 Nov 28  2025 point exchange 2026.csv",
            // a Japanese name, a name whose spaces are doubled
            "-rw-r--r--   1 mbtest   mbtest        321 Nov 29 18:12 ポイント交換.csv",
            "-rw-r--r--   1 mbtest   mbtest          7 Nov 29 18:12 two  spaces.csv",
            // IIS in UNIX style
            "-rwxrwxrwx   1 owner    group            1234 Nov 29 18:12 POINT.csv",
            // no group column
            "-rw-r--r--   1 ftp          42 Dec 31 23:59 nogroup.csv",
            "drwxr-xr-x   2 mbtest   mbtest       4096 Nov 29 18:12 processed",
            "lrwxrwxrwx   1 mbtest   mbtest          5 Nov 29 18:12 link.csv -> a.csv",
        ];
        let got: Vec<_> = recorded.iter().map(|l| parse_list_line(l, NOW)).collect();
        assert_eq!(got[0], file("a.csv", 1000, at(2026, 11, 29, 19, 10)));
        assert_eq!(
            got[1],
            file("point exchange 2026.csv", 56789, at(2025, 11, 28, 0, 0))
        );
        assert_eq!(
            got[2],
            file("ポイント交換.csv", 321, at(2026, 11, 29, 18, 12))
        );
        assert_eq!(got[3], file("two  spaces.csv", 7, at(2026, 11, 29, 18, 12)));
        assert_eq!(got[4], file("POINT.csv", 1234, at(2026, 11, 29, 18, 12)));
        // Dec 31 is in the future on Nov 29: last year's
        assert_eq!(got[5], file("nogroup.csv", 42, at(2025, 12, 31, 23, 59)));
        assert_eq!(
            got[6].as_ref().map(|l| (l.kind, l.name.as_str())),
            Some((Kind::Dir, "processed"))
        );
        assert_eq!(
            got[7].as_ref().map(|l| (l.kind, l.name.as_str())),
            Some((Kind::Other, "link.csv"))
        );
    }

    #[test]
    fn other_lines_do_not_parse() {
        for l in [
            "total 12",
            "",
            "garbage",
            "13-45-26  06:12PM       1234 bad-date.csv",
            "11-29-26  06:12PM       12x4 bad-size.csv",
            "11-29-26  06:12PM       1234",
            "-rw-r--r--   1 u g notasize Nov 29 18:12 x.csv",
            "-rw-r--r--   1 u g 12 Nov 29 18:12",
        ] {
            assert_eq!(parse_list_line(l, NOW), None, "{l:?}");
        }
    }
}
