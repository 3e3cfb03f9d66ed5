//! `milebatch check`: does this configuration have what a run needs?
//!
//! Loading `partners.toml` already proved the file is well formed. This
//! looks at the things a run touches outside it: secrets (environment,
//! files, systemd credentials), key files, `known_hosts`, CA files, local
//! inboxes, the database and `data_dir`, and `[server]` (what `serve` needs:
//! its listen addresses, TLS certificate and key). With `--connect` it also
//! logs in to each partner's server and lists the inbox.
//!
//! What must stay true:
//! - every problem is found, not just the first: one [`Problem`] each,
//!   whose text says what is wrong and what to do about it;
//! - nothing is changed, here or on a partner's server: no file is created,
//!   moved, uploaded or deleted (`--connect` only lists, like a run's first
//!   step; HTTP sends the GET a run would send and does not read the body);
//! - secret values are read only to see that they are there, and never
//!   appear in a message.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, PartnerConfig, ServerConfig};
use crate::source::secret::{check_private, read_secret_file};
use crate::source::{safe_name, After, HostKeyCheck, HttpAuth, SecretRef, SftpAuth, SourceConfig};

/// Something that stops a run, with what to do about it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// `daemon`, `server` or `partner`: the section of partners.toml.
    pub section: &'static str,
    /// The partner it belongs to; `None`: the `[daemon]` or `[server]`
    /// section.
    pub partner: Option<String>,
    pub problem: String,
}

/// What `check` found for one partner.
#[derive(Debug, Default, Serialize)]
pub struct PartnerCheck {
    pub id: String,
    /// Problems: each one stops this partner's runs.
    pub problems: Vec<String>,
    /// What was confirmed, or could not be confirmed here and is not a
    /// problem (a systemd credential outside systemd).
    pub notes: Vec<String>,
    /// `--connect` only.
    pub connect: Option<Connected>,
}

/// The answer of one partner's server to `check --connect`.
#[derive(Debug, Serialize)]
pub struct Connected {
    /// Where, without secrets (`sftp://user@host:22/dir`).
    pub location: String,
    /// `None` when connecting failed (see `error`).
    pub matching_files: Option<usize>,
    pub pattern: String,
    pub error: Option<String>,
    /// The folders a run writes to (empty for HTTP, which has none).
    pub folders: Vec<FolderCheck>,
    /// The name of the probe file written and removed in each folder
    /// (`None` with `--no-write-probe`).
    pub probe_file: Option<String>,
}

/// The whole answer of `check`.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Problems of the `[daemon]` section (database, `data_dir`, `backup_dir`).
    pub daemon: Vec<String>,
    /// `[server]`, for `milebatch serve`.
    pub server: ServerCheck,
    pub partners: Vec<PartnerCheck>,
}

impl Report {
    /// Every problem, the daemon's first, the server's, then each
    /// partner's in order.
    pub fn problems(&self) -> Vec<Problem> {
        let section = |section: &'static str| {
            move |p: &String| Problem {
                section,
                partner: None,
                problem: p.clone(),
            }
        };
        let daemon = self.daemon.iter().map(section("daemon"));
        let server = self.server.problems.iter().map(section("server"));
        let partners = self.partners.iter().flat_map(|pc| {
            pc.problems.iter().map(|p| Problem {
                section: "partner",
                partner: Some(pc.id.clone()),
                problem: p.clone(),
            })
        });
        daemon.chain(server).chain(partners).collect()
    }
}

/// Check everything a run of every partner and `serve` need, without
/// connecting. `today` (in the configured zone) fills HTTP URL templates;
/// `now` dates the server certificate.
pub fn check(
    config: &Config,
    today: chrono::NaiveDate,
    now: chrono::DateTime<chrono::Utc>,
) -> Report {
    let mut daemon = Vec::new();
    let d = &config.daemon;
    // PostgreSQL: reachable, TLS, writable primary, schema version. (For
    // it `d.database` is empty and the SQLite checks below find nothing.)
    if let crate::store::Database::Postgres(t) = &d.store {
        if let Err(p) = crate::store::check_postgres(t) {
            daemon.push(p);
        }
    }
    if let Some(dir) = d.database.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Some(p) = writable_dir("the database's folder", dir) {
            daemon.push(p);
        }
    }
    match std::fs::metadata(&d.database) {
        Ok(m) if !m.is_file() => daemon.push(format!(
            "database {} exists and is not a file: point `database` at a file",
            d.database.display()
        )),
        Ok(_) if !access(&d.database, libc::R_OK | libc::W_OK) => daemon.push(format!(
            "database {} is not readable and writable by this user: run milebatch as its owner, \
             or fix its ownership",
            d.database.display()
        )),
        _ => {}
    }
    if let Some(p) = writable_dir("data_dir", &d.data_dir) {
        daemon.push(p);
    }
    // Scheduled backups are written there (created when missing).
    if let Some(p) = d
        .backup_dir
        .as_ref()
        .filter(|_| d.backup.is_some())
        .and_then(|b| writable_dir("backup_dir", b))
    {
        daemon.push(p);
    }
    // Notification mail: the SMTP password and CA file, read as the
    // sender reads them.
    if let Some(smtp) = &d.smtp {
        let mut pc = PartnerCheck::default();
        if let Some(pw) = &smtp.password {
            check_secret("SMTP password", pw, &mut pc);
        }
        if let Some(ca) = &smtp.ca_file {
            check_ca_file(ca, &mut pc);
        }
        daemon.extend(
            pc.problems
                .into_iter()
                .map(|p| format!("[daemon.smtp] {p}")),
        );
    }
    let partners = config
        .partners
        .iter()
        .map(|p| {
            let mut pc = check_partner(p, today);
            if let Some(problem) = never_runs(p, d, today) {
                pc.problems.push(problem);
            }
            pc
        })
        .collect();
    Report {
        daemon,
        server: check_server(&config.server, now),
        partners,
    }
}

/// What `check` finds about `[server]` (`milebatch serve`): problems stop
/// `serve` from starting or from being safe; warnings do not, yet.
#[derive(Debug, Default, Serialize)]
pub struct ServerCheck {
    pub problems: Vec<String>,
    /// Something to act on before it becomes a problem (a certificate
    /// that expires within [`CERT_WARN_DAYS`]).
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// How long before its expiry a server certificate is warned about.
pub const CERT_WARN_DAYS: i64 = 30;

/// `[server]`: the listen address can be bound on this host, and with TLS
/// the certificate and key are readable PEM, the key is private (like every
/// other secret: no group or other access) and belongs to the certificate,
/// and the certificate is in its validity period (a warning within
/// [`CERT_WARN_DAYS`] of its end). `now` is passed in for the expiry.
pub fn check_server(s: &ServerConfig, now: chrono::DateTime<chrono::Utc>) -> ServerCheck {
    let mut sc = ServerCheck::default();
    for (key, addr) in std::iter::once(("listen", Some(s.listen)))
        .chain(std::iter::once(("metrics_listen", s.metrics_listen)))
    {
        let Some(addr) = addr else { continue };
        // Port 0: proves the address is one of this host's without taking
        // the port a running `serve` may hold.
        match std::net::TcpListener::bind(std::net::SocketAddr::new(addr.ip(), 0)) {
            Ok(_) => sc
                .notes
                .push(format!("{key} {addr}: the address is this host's")),
            Err(e) => sc.problems.push(format!(
                "{key} {addr}: this host cannot listen on {}: {e}: use one of its addresses \
                 (or 0.0.0.0 / [::]) in `[server] {key}`",
                addr.ip()
            )),
        }
    }
    let Some(tls) = &s.tls else {
        sc.notes.push("no tls_cert/tls_key: plain HTTP".into());
        return sc;
    };
    let certs = server_certs(&tls.cert, &mut sc);
    let key = server_key(&tls.key, &mut sc);
    let (Some(certs), Some(key)) = (certs, key) else {
        return sc;
    };
    match rustls::crypto::aws_lc_rs::sign::any_supported_type(&key) {
        Err(e) => sc.problems.push(format!(
            "tls_key {}: not a key rustls can use ({e}): use an RSA, ECDSA or Ed25519 key in PEM",
            tls.key.display()
        )),
        Ok(signer) => {
            let ck = rustls::sign::CertifiedKey::new(certs.clone(), signer);
            match ck.keys_match() {
                Ok(()) => sc.notes.push(format!(
                    "tls_key {} belongs to tls_cert {}",
                    tls.key.display(),
                    tls.cert.display()
                )),
                Err(e) => sc.problems.push(format!(
                    "tls_key {} does not belong to tls_cert {} ({e}): give the key the \
                     certificate was issued for",
                    tls.key.display(),
                    tls.cert.display()
                )),
            }
        }
    }
    cert_validity(&tls.cert, &certs[0], now, &mut sc);
    sc
}

fn server_certs(
    path: &Path,
    sc: &mut ServerCheck,
) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let shown = path.display();
    if let Err(e) = std::fs::File::open(path) {
        sc.problems.push(format!(
            "tls_cert {shown}: {e}: put the server's certificate chain (PEM) there, readable by \
             the user `serve` runs as, or correct `[server] tls_cert`"
        ));
        return None;
    }
    match CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            sc.problems.push(format!(
                "tls_cert {shown} holds no PEM certificate: it must hold \
                 \"-----BEGIN CERTIFICATE-----\" blocks, the server's first"
            ));
            None
        }
        Err(e) => {
            sc.problems.push(format!(
                "tls_cert {shown} cannot be read as PEM ({e}): it must hold \
                 \"-----BEGIN CERTIFICATE-----\" blocks, the server's first"
            ));
            None
        }
    }
}

fn server_key(
    path: &Path,
    sc: &mut ServerCheck,
) -> Option<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let shown = path.display();
    if let Err(e) = std::fs::File::open(path) {
        sc.problems.push(format!(
            "tls_key {shown}: {e}: put the certificate's private key (PEM) there, readable by \
             the user `serve` runs as (mode 600), or correct `[server] tls_key`"
        ));
        return None;
    }
    // Refused like every other secret file (src/source/secret.rs).
    if let Err(e) = check_private(path) {
        sc.problems.push(format!("tls_key: {e}"));
    }
    match PrivateKeyDer::from_pem_file(path) {
        Ok(k) => Some(k),
        Err(e) => {
            sc.problems.push(format!(
                "tls_key {shown} holds no PEM private key ({e}): it must hold a \
                 \"-----BEGIN PRIVATE KEY-----\" (or RSA / EC) block, unencrypted"
            ));
            None
        }
    }
}

fn cert_validity(
    path: &Path,
    cert: &rustls::pki_types::CertificateDer<'_>,
    now: chrono::DateTime<chrono::Utc>,
    sc: &mut ServerCheck,
) {
    let shown = path.display();
    let parsed = match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => c,
        Err(e) => {
            sc.problems.push(format!(
                "tls_cert {shown}: its first certificate cannot be parsed ({e}): replace it"
            ));
            return;
        }
    };
    let v = parsed.validity();
    let at = |t: &x509_parser::time::ASN1Time| {
        chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default()
    };
    let (from, until) = (at(&v.not_before), at(&v.not_after));
    let day = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    if now < from {
        sc.problems.push(format!(
            "tls_cert {shown} is not valid before {}: check the host's clock, or use a \
             certificate valid now",
            day(from)
        ));
    } else if now >= until {
        sc.problems.push(format!(
            "tls_cert {shown} expired at {}: renew it (clients refuse it)",
            day(until)
        ));
    } else if until - now <= chrono::Duration::days(CERT_WARN_DAYS) {
        sc.warnings.push(format!(
            "tls_cert {shown} expires at {} (in {} day(s)): renew it before then",
            day(until),
            (until - now).num_days()
        ));
    } else {
        sc.notes
            .push(format!("tls_cert {shown} is valid until {}", day(until)));
    }
}

/// A schedule that, with its `on_holiday` on the daemon's calendar, has no
/// run ahead (`weekly sat 10:00` with `skip`): the partner would sit idle.
fn never_runs(
    p: &PartnerConfig,
    d: &crate::config::DaemonConfig,
    today: chrono::NaiveDate,
) -> Option<String> {
    use chrono::TimeZone;
    let midnight = d
        .timezone
        .from_local_datetime(&today.and_hms_opt(0, 0, 0)?)
        .earliest()?
        .with_timezone(&chrono::Utc);
    p.plan(d).next_after(midnight).is_none().then(|| {
        format!(
            "schedule {:?} with on_holiday = {:?} never runs: every run falls on a closed day \
             (a weekend, a holiday or `[daemon] closed`) and is skipped; use on_holiday = \"next\" \
             or \"previous\", or a schedule on business days",
            p.schedule.to_string(),
            p.on_holiday.to_string()
        )
    })
}

fn check_partner(p: &PartnerConfig, today: chrono::NaiveDate) -> PartnerCheck {
    let mut pc = PartnerCheck {
        id: p.id.clone(),
        ..Default::default()
    };
    for (what, s) in secrets(&p.source) {
        check_secret(what, s, &mut pc);
    }
    if let Some(w) = p.notify.as_ref().and_then(|n| n.webhook.as_ref()) {
        check_secret("[partner.notify] webhook secret", &w.secret, &mut pc);
        if let Some(ca) = &w.ca_file {
            check_ca_file(ca, &mut pc);
        }
    }
    if let Some(g) = &p.pgp {
        // The keys as a run reads them: parsed, the passphrase tried.
        if let Err(e) = crate::pipeline::pgp::Keys::load(g) {
            pc.problems.push(e.to_string());
        }
        if let Err(e) = crate::pipeline::pgp::Sealer::load(g) {
            pc.problems.push(e.to_string());
        }
    }
    match &p.source {
        SourceConfig::Local(l) => {
            let pickup = &l.pickup;
            // Moving, deleting or copying a report in writes the inbox.
            let writes = pickup.after != After::Keep
                || pickup.move_failed.is_some()
                || pickup.errors_dir.is_some();
            check_inbox(&l.dir, writes, &mut pc);
            let mut subs = Vec::new();
            if let After::Move(s) = &pickup.after {
                subs.push(("after = \"move:…\"", s));
            }
            if let Some(s) = &pickup.move_failed {
                subs.push(("move_failed", s));
            }
            if let Some(s) = &pickup.errors_dir {
                subs.push(("errors_dir", s));
            }
            for (key, sub) in subs {
                check_subfolder(&l.dir, key, sub, &mut pc);
            }
        }
        SourceConfig::Sftp(s) => {
            if let SftpAuth::Key {
                key_file,
                passphrase,
            } = &s.auth
            {
                check_key_file(key_file, passphrase.is_some(), &mut pc);
            }
            if let HostKeyCheck::KnownHosts(kh) = &s.host_key {
                check_known_hosts(kh, &s.host, s.port, &mut pc);
            }
        }
        SourceConfig::Ftp(f) => {
            if let Some(ca) = &f.ca_file {
                check_ca_file(ca, &mut pc);
            }
        }
        SourceConfig::Http(h) => {
            if let Some(ca) = &h.ca_file {
                check_ca_file(ca, &mut pc);
            }
            for (key, url) in [("url", Some(&h.url)), ("errors_url", h.errors_url.as_ref())] {
                if let Some(Err(e)) = url.map(|u| crate::source::http::expand_date(u, today)) {
                    pc.problems
                        .push(format!("`{key}`: {e}: use {{date:%Y%m%d}} (strftime)"));
                }
            }
        }
    }
    pc
}

/// Where each secret of a source is read from, named as `partners.toml`
/// names it.
fn secrets(src: &SourceConfig) -> Vec<(&'static str, &SecretRef)> {
    match src {
        SourceConfig::Local(_) => vec![],
        SourceConfig::Sftp(c) => match &c.auth {
            SftpAuth::Key { passphrase, .. } => {
                passphrase.iter().map(|p| ("key passphrase", p)).collect()
            }
            SftpAuth::Password(p) => vec![("password", p)],
        },
        SourceConfig::Ftp(c) => vec![("password", &c.password)],
        SourceConfig::Http(c) => match &c.auth {
            HttpAuth::None => vec![],
            HttpAuth::Basic { password, .. } => vec![("password", password)],
            HttpAuth::Bearer(t) => vec![("token", t)],
        },
    }
}

fn check_secret(what: &str, s: &SecretRef, pc: &mut PartnerCheck) {
    match s {
        SecretRef::Env(var) => match std::env::var_os(var) {
            None => pc.problems.push(format!(
                "{what}: environment variable {var} is not set: set it where milebatch runs \
                 (under systemd prefer LoadCredential= and `credential = \"NAME\"`)"
            )),
            Some(v) if v.is_empty() => pc.problems.push(format!(
                "{what}: environment variable {var} is set but empty: give it the {what}"
            )),
            Some(v) if v.to_str().is_none() => pc.problems.push(format!(
                "{what}: environment variable {var} is not valid UTF-8: set it again"
            )),
            Some(_) => pc
                .notes
                .push(format!("{what}: environment variable {var} is set")),
        },
        SecretRef::File(path) => {
            if let Some(p) = secret_file(what, path, "the file") {
                pc.problems.push(p);
            } else {
                pc.notes
                    .push(format!("{what}: file {} is readable", path.display()));
            }
        }
        SecretRef::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => {
                let path = Path::new(&dir).join(name);
                let missing = !path.exists();
                if missing {
                    pc.problems.push(format!(
                        "{what}: credential {name:?} is not in $CREDENTIALS_DIRECTORY ({}): add \
                         LoadCredential={name}:/path/to/secret to the unit",
                        Path::new(&dir).display()
                    ));
                } else if let Some(p) = secret_file(what, &path, "the credential's source file") {
                    pc.problems.push(p);
                } else {
                    pc.notes
                        .push(format!("{what}: credential {name:?} is readable"));
                }
            }
            None => pc.notes.push(format!(
                "{what}: credential {name:?} will be read from $CREDENTIALS_DIRECTORY/{name} at \
                 run time (systemd LoadCredential=); $CREDENTIALS_DIRECTORY is not set here, so \
                 it is not checked"
            )),
        },
    }
}

/// A secret file that cannot be used, as a problem; `None` when it can.
fn secret_file(what: &str, path: &Path, owner: &str) -> Option<String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{what}: file {shown} does not exist: create it (mode 0600) or correct the path"
            ))
        }
        Ok(m) if !m.is_file() => {
            return Some(format!(
                "{what}: {shown} is not a file: point the setting at the file holding the {what}"
            ))
        }
        _ => {}
    }
    match read_secret_file(path) {
        Ok(_) => None,
        Err(e) if e.contains("chmod 600") => Some(format!("{what}: {e}")),
        Err(e) if e == "is empty" => Some(format!(
            "{what}: file {shown} is empty: write the {what} into it"
        )),
        Err(e) => Some(format!(
            "{what}: file {shown}: {e}: make {owner} readable by the user milebatch runs as"
        )),
    }
}

fn check_inbox(dir: &Path, writes: bool, pc: &mut PartnerCheck) {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => pc.problems.push(format!(
            "inbox {shown} does not exist: create it (mkdir -p) or correct `dir`"
        )),
        Err(e) => pc.problems.push(format!(
            "inbox {shown} cannot be read: {e}: fix the permissions of it and its parents"
        )),
        Ok(m) if !m.is_dir() => pc.problems.push(format!(
            "inbox {shown} is not a folder: point `dir` at the folder the partner's files arrive in"
        )),
        Ok(_) => match std::fs::read_dir(dir) {
            Err(e) => pc.problems.push(format!(
                "inbox {shown} cannot be listed: {e}: give the user milebatch runs as read \
                 access (under systemd, a folder outside /var/lib/milebatch also needs \
                 ReadWritePaths= in the unit)"
            )),
            // access(2) also says no on a read-only mount: what the unit's
            // ProtectSystem=strict makes of a folder not in ReadWritePaths=.
            Ok(_) if writes && !access(dir, libc::W_OK | libc::X_OK) => pc.problems.push(format!(
                "inbox {shown} is not writable by this user, and files are moved out of it or \
                 reports written into it (`after`, `move_failed`, `errors_dir`): give write \
                 access (under systemd: ReadWritePaths={shown} in the unit), or set them to \
                 \"keep\" / \"none\""
            )),
            Ok(_) => pc.notes.push(format!("inbox {shown} is a readable folder")),
        },
    }
}

/// A sub-folder of a local inbox (`after`, `move_failed`, `errors_dir`): it
/// is created when first needed, but if it is there it must be a real folder
/// (a symlink could lead out of the inbox, and is not followed).
fn check_subfolder(inbox: &Path, key: &str, sub: &str, pc: &mut PartnerCheck) {
    let p = inbox.join(sub);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_symlink() => pc.problems.push(format!(
            "`{key}` folder {} is a symbolic link: files stay inside the inbox, so make it a \
             real folder",
            p.display()
        )),
        Ok(m) if !m.is_dir() => pc.problems.push(format!(
            "`{key}` folder {} exists and is not a folder: remove or rename it",
            p.display()
        )),
        _ => {}
    }
}

/// What the first line of a key file says it is.
#[derive(Debug, PartialEq, Eq)]
enum KeyKind {
    Private { encrypted: bool },
    Public,
    Putty,
    Unknown,
}

fn key_kind(text: &str) -> KeyKind {
    let t = text.trim_start();
    let first = t.lines().next().unwrap_or("").trim();
    match first {
        "-----BEGIN OPENSSH PRIVATE KEY-----" => KeyKind::Private {
            encrypted: openssh_key_encrypted(t),
        },
        "-----BEGIN ENCRYPTED PRIVATE KEY-----" => KeyKind::Private { encrypted: true },
        "-----BEGIN PRIVATE KEY-----" => KeyKind::Private { encrypted: false },
        "-----BEGIN RSA PRIVATE KEY-----"
        | "-----BEGIN EC PRIVATE KEY-----"
        | "-----BEGIN DSA PRIVATE KEY-----" => KeyKind::Private {
            encrypted: t.contains("Proc-Type: 4,ENCRYPTED"),
        },
        f if f.starts_with("ssh-")
            || f.starts_with("ecdsa-")
            || f.starts_with("sk-")
            || f == "-----BEGIN SSH2 PUBLIC KEY-----"
            || f == "-----BEGIN PUBLIC KEY-----" =>
        {
            KeyKind::Public
        }
        f if f.starts_with("PuTTY-User-Key-File") => KeyKind::Putty,
        _ => KeyKind::Unknown,
    }
}

/// An OpenSSH private key names its cipher right after the magic:
/// `openssh-key-v1\0`, then a length-prefixed string, `none` when plain.
fn openssh_key_encrypted(text: &str) -> bool {
    use base64::Engine as _;
    let body: String = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return false;
    };
    const MAGIC: &[u8] = b"openssh-key-v1\0";
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return false;
    };
    let Some(len) = rest.get(..4) else {
        return false;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    rest.get(4..4 + len).is_some_and(|c| c != b"none")
}

fn check_key_file(path: &Path, has_passphrase: bool, pc: &mut PartnerCheck) {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            pc.problems.push(format!(
                "key_file {shown} does not exist: copy the private key there (mode 0600) or \
                 correct `key_file`"
            ));
            return;
        }
        Ok(m) if !m.is_file() => {
            pc.problems.push(format!(
                "key_file {shown} is not a file: point it at the private key"
            ));
            return;
        }
        _ => {}
    }
    if let Err(e) = check_private(path) {
        // Reported, and the content is still looked at: all problems at once.
        pc.problems.push(format!("key_file: {e}"));
    }
    // A key is a few KiB; anything far larger is not one.
    let text = match std::fs::read(path) {
        Ok(b) if b.len() > 1 << 20 => {
            pc.problems.push(format!(
                "key_file {shown} is {} bytes: that is not a private key",
                b.len()
            ));
            return;
        }
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            pc.problems.push(format!(
                "key_file {shown} cannot be read: {e}: make it readable by the user milebatch \
                 runs as"
            ));
            return;
        }
    };
    match key_kind(&text) {
        KeyKind::Private { encrypted: true } if !has_passphrase => pc.problems.push(format!(
            "key_file {shown} is encrypted and no passphrase is configured: add \
             passphrase_env, passphrase_file or passphrase_credential"
        )),
        KeyKind::Private { .. } => pc.notes.push(format!("key_file {shown} is a private key")),
        KeyKind::Public => pc.problems.push(format!(
            "key_file {shown} is a public key: give the private key (the file without .pub)"
        )),
        KeyKind::Putty => pc.problems.push(format!(
            "key_file {shown} is a PuTTY key: convert it with \
             `puttygen KEY.ppk -O private-openssh -o KEY`"
        )),
        KeyKind::Unknown => pc.problems.push(format!(
            "key_file {shown} does not look like a private key (no OpenSSH or PEM \
             \"-----BEGIN … PRIVATE KEY-----\" line): give the private key file"
        )),
    }
}

fn check_known_hosts(path: &Path, host: &str, port: u16, pc: &mut PartnerCheck) {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            pc.problems.push(format!(
                "known_hosts {shown} does not exist: create it with `ssh-keyscan -p {port} \
                 {host} > {shown}` and compare the fingerprint with the partner's"
            ));
            return;
        }
        Err(e) => {
            pc.problems
                .push(format!("known_hosts {shown} cannot be read: {e}"));
            return;
        }
    };
    // libssh2 reads the file during the run: it must accept it.
    let parsed = ssh2::Session::new()
        .and_then(|s| s.known_hosts())
        .and_then(|mut kh| kh.read_file(path, ssh2::KnownHostFileKind::OpenSSH));
    if let Err(e) = parsed {
        pc.problems.push(format!(
            "known_hosts {shown} cannot be parsed ({}): each line must be \
             `HOST KEYTYPE BASE64-KEY`, as ssh-keyscan prints",
            e.message()
        ));
        return;
    }
    let mut bad_line = None;
    let mut hashed = false;
    let mut found = false;
    let want = [
        host.to_ascii_lowercase(),
        format!("[{}]:{port}", host.to_ascii_lowercase()),
    ];
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut fields: Vec<&str> = l.split_whitespace().collect();
        if fields.first().is_some_and(|f| f.starts_with('@')) {
            fields.remove(0);
        }
        if fields.len() < 3 || !base64_ok(fields[2]) {
            bad_line.get_or_insert(i + 1);
            continue;
        }
        if fields[0].starts_with('|') {
            hashed = true;
        } else if fields[0]
            .split(',')
            .any(|h| want.contains(&h.to_ascii_lowercase()))
        {
            found = true;
        }
    }
    if let Some(n) = bad_line {
        pc.problems.push(format!(
            "known_hosts {shown} line {n} is not `HOST KEYTYPE BASE64-KEY`: fix or remove it"
        ));
    } else if !found && !hashed {
        pc.problems.push(format!(
            "known_hosts {shown} has no entry for {}: add the line `ssh-keyscan -p {port} {host}` \
             prints, after comparing its fingerprint with the partner's",
            want[if port == 22 { 0 } else { 1 }]
        ));
    } else {
        pc.notes.push(format!("known_hosts {shown} parses"));
    }
}

fn base64_ok(s: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}

fn check_ca_file(path: &Path, pc: &mut PartnerCheck) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let shown = path.display();
    if let Err(e) = std::fs::metadata(path) {
        pc.problems.push(format!(
            "ca_file {shown}: {e}: put the partner's CA certificate (PEM) there or correct \
             `ca_file`"
        ));
        return;
    }
    let certs =
        CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<Vec<_>, _>>());
    match certs {
        Err(e) => pc.problems.push(format!(
            "ca_file {shown} cannot be read as PEM: {e}: it must hold \
             \"-----BEGIN CERTIFICATE-----\" blocks"
        )),
        Ok(c) if c.is_empty() => pc.problems.push(format!(
            "ca_file {shown} holds no PEM certificate: it must hold \
             \"-----BEGIN CERTIFICATE-----\" blocks"
        )),
        Ok(c) => {
            let mut roots = rustls::RootCertStore::empty();
            let (_, bad) = roots.add_parsable_certificates(c);
            if bad > 0 {
                pc.problems.push(format!(
                    "ca_file {shown}: {bad} certificate(s) in it cannot be parsed: replace them"
                ));
            } else {
                pc.notes.push(format!("ca_file {shown} parses"));
            }
        }
    }
}

/// A folder milebatch writes into: there and writable, or creatable (its
/// nearest existing ancestor is a writable folder).
fn writable_dir(label: &str, dir: &Path) -> Option<String> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Some(format!("{label} {shown} exists and is not a folder")),
        Ok(_) if access(dir, libc::W_OK | libc::X_OK) => return None,
        Ok(_) => {
            return Some(format!(
                "{label} {shown} is not writable by this user: run milebatch as the user that \
                 owns it, or fix its ownership (under systemd, point it into /var/lib/milebatch)"
            ))
        }
        Err(e) if !missing(&e) => return Some(format!("{label} {shown}: {e}")),
        Err(_) => {}
    }
    let mut up: PathBuf = dir.to_path_buf();
    while up.pop() {
        let at = if up.as_os_str().is_empty() {
            Path::new(".")
        } else {
            up.as_path()
        };
        match std::fs::metadata(at) {
            Ok(m) if !m.is_dir() => {
                return Some(format!(
                    "{label} {shown} cannot be created: {} is not a folder",
                    at.display()
                ))
            }
            Ok(_) if access(at, libc::W_OK | libc::X_OK) => return None,
            Ok(_) => {
                return Some(format!(
                    "{label} {shown} does not exist and cannot be created: {} is not writable \
                     by this user",
                    at.display()
                ))
            }
            Err(e) if !missing(&e) => {
                return Some(format!(
                    "{label} {shown} cannot be created: {}: {e}",
                    at.display()
                ))
            }
            Err(_) => {}
        }
        if at == Path::new(".") {
            break;
        }
    }
    Some(format!(
        "{label} {shown} cannot be created: no existing parent folder"
    ))
}

/// Not there, or a parent on the way is not a folder: found by walking up.
fn missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// access(2): may this process (its real IDs, as a run would be) do `mode`?
/// Also false on a read-only file system and for an immutable file, where
/// even root may not write.
fn access(path: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// `check --connect` for one partner: connect as a run would (host key,
/// login), list the inbox and count the files the pattern matches, then
/// look at every server folder a run writes to (see [`check_folders`]).
/// With `probe`, one uniquely named probe file is written into each of them
/// and removed again; without it nothing on the server is changed.
pub fn connect(p: &PartnerConfig, today: chrono::NaiveDate, probe: bool) -> Connected {
    let pickup = p.source.pickup();
    let mut out = Connected {
        location: p.source.to_string(),
        matching_files: None,
        pattern: pickup.pattern.as_str().to_owned(),
        error: None,
        folders: vec![],
        probe_file: None,
    };
    let mut src = match p.source.build(today, p.encoding) {
        Ok(src) => src,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    out.location = src.describe();
    match src.list() {
        Ok(files) => {
            out.matching_files = Some(
                files
                    .iter()
                    .filter(|f| {
                        safe_name(&f.name) && !f.name.starts_with('.') && pickup.matches(&f.name)
                    })
                    .count(),
            )
        }
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    }
    if src.can_tidy() {
        let name = probe.then(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            // A dot name: never a pickup candidate, even if left behind.
            format!(".milebatch-check-probe-{nanos}-{}", std::process::id())
        });
        out.folders = check_folders(src.as_mut(), pickup, name.as_deref());
        // No folder, no probe written.
        out.probe_file = name.filter(|_| !out.folders.is_empty());
    }
    out
}

/// One server folder a run writes to, as `check --connect` found it.
#[derive(Debug, Serialize)]
pub struct FolderCheck {
    /// Relative to the inbox, e.g. `processed`.
    pub dir: String,
    /// The settings that send files there: `after`, `move_failed`,
    /// `errors_dir` (done files travel with their file under `after`).
    pub used_by: Vec<&'static str>,
    /// `None` when asking failed (see `error`).
    pub found: Option<crate::source::Folder>,
    /// Whether the probe file was written and removed; `None`: not probed.
    pub writable: Option<bool>,
    /// What is wrong, said for the person who fixes it.
    pub error: Option<String>,
}

/// The folders a run moves files or uploads reports into, each asked
/// [`Source::folder`](crate::source::Source::folder) and, with a probe name,
/// written to (`upload`, which creates a missing folder as the run would)
/// and cleaned (`remove_in`).
pub fn check_folders(
    src: &mut dyn crate::source::Source,
    pickup: &crate::source::Pickup,
    probe: Option<&str>,
) -> Vec<FolderCheck> {
    use crate::source::Folder;
    let mut wanted: Vec<(String, &'static str)> = vec![];
    if let After::Move(d) = &pickup.after {
        wanted.push((d.clone(), "after"));
    }
    if let Some(d) = &pickup.move_failed {
        wanted.push((d.clone(), "move_failed"));
    }
    if let Some(d) = &pickup.errors_dir {
        wanted.push((d.clone(), "errors_dir"));
    }
    let mut out: Vec<FolderCheck> = vec![];
    for (dir, key) in wanted {
        if let Some(f) = out.iter_mut().find(|f| f.dir == dir) {
            f.used_by.push(key);
            continue;
        }
        out.push(FolderCheck {
            dir,
            used_by: vec![key],
            found: None,
            writable: None,
            error: None,
        });
    }
    for f in &mut out {
        let keys = f.used_by.join("`, `");
        match src.folder(&f.dir) {
            Err(e) => f.error = Some(format!("checking it: {e}")),
            Ok(Folder::NotAFolder) => {
                f.found = Some(Folder::NotAFolder);
                f.error = Some(format!(
                    "it is a file, not a folder: a run would credit a file and then fail \
                     to put anything there (tidy-failed). Move that file away, or set `{keys}` \
                     to another folder"
                ));
            }
            Ok(found) => {
                f.found = Some(found);
                let Some(name) = probe else { continue };
                match src.upload(&f.dir, name, b"written by milebatch check --connect\n") {
                    Err(e) => {
                        f.writable = Some(false);
                        f.error = Some(format!(
                            "writing a probe file there failed: {e}. A run would credit a file \
                             and then fail to put anything there (tidy-failed): give the login \
                             write access, or set `{keys}` to another folder"
                        ));
                    }
                    Ok(()) => match src.remove_in(&f.dir, name) {
                        Ok(()) => f.writable = Some(true),
                        Err(e) => {
                            f.writable = Some(true);
                            f.error = Some(format!(
                                "the probe file {}/{name} was written but could not be removed \
                                 ({e}): delete it by hand, and check that the login may delete \
                                 and rename there",
                                f.dir
                            ));
                        }
                    },
                }
            }
        }
    }
    out
}

impl FolderCheck {
    /// One line for `check --connect`'s text output.
    pub fn for_people(&self) -> String {
        use crate::source::Folder;
        let state = match (self.found, self.writable) {
            _ if self.error.is_some() => "FAILED (see below)".to_owned(),
            (Some(Folder::Missing), Some(true)) => {
                "was missing, created (as the first run would); writable (probe file written and removed)".to_owned()
            }
            (Some(Folder::Missing), None) => {
                "missing; the first run creates it (not written to: --no-write-probe)".to_owned()
            }
            (_, Some(true)) => "ok, writable (probe file written and removed)".to_owned(),
            _ => "ok, a folder (not written to: --no-write-probe)".to_owned(),
        };
        format!(
            "folder {}/ ({}): {state}",
            self.dir,
            self.used_by.join(", ")
        )
    }
}

/// For `check --json`: beside each next run, `null` or where it was moved
/// from and why (`{"from": "2027-01-01", "why": "元日"}`).
pub fn moves_json(runs: &[crate::schedule::Occurrence]) -> Vec<serde_json::Value> {
    runs.iter()
        .map(|o| match &o.moved {
            None => serde_json::Value::Null,
            Some(m) => serde_json::json!({"from": m.from.to_string(), "why": m.why.to_string()}),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_told_apart_by_their_first_line() {
        // The start of an unencrypted and of an encrypted OpenSSH key.
        use base64::Engine as _;
        let key = |cipher: &str| {
            let mut b = b"openssh-key-v1\0".to_vec();
            b.extend((cipher.len() as u32).to_be_bytes());
            b.extend(cipher.as_bytes());
            b.extend([0, 0, 0, 6]);
            b.extend(b"bcrypt");
            let body = base64::engine::general_purpose::STANDARD.encode(b);
            format!(
                "-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n"
            )
        };
        let (plain, enc) = (key("none"), key("aes256-ctr"));
        assert_eq!(key_kind(&plain), KeyKind::Private { encrypted: false });
        assert_eq!(key_kind(&enc), KeyKind::Private { encrypted: true });
        assert_eq!(
            key_kind("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"),
            KeyKind::Private { encrypted: true }
        );
        assert_eq!(
            key_kind("\n-----BEGIN EC PRIVATE KEY-----\nMHcC\n"),
            KeyKind::Private { encrypted: false }
        );
        assert_eq!(key_kind("ssh-ed25519 AAAAC3Nz x@y\n"), KeyKind::Public);
        assert_eq!(
            key_kind("PuTTY-User-Key-File-3: ssh-ed25519\n"),
            KeyKind::Putty
        );
        assert_eq!(key_kind("hunter2\n"), KeyKind::Unknown);
    }

    #[test]
    fn a_folder_is_writable_or_creatable_below_a_writable_one() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(writable_dir("data_dir", d.path()), None);
        assert_eq!(writable_dir("data_dir", &d.path().join("a/b/c")), None);
        std::fs::write(d.path().join("f"), "x").unwrap();
        let e = writable_dir("data_dir", &d.path().join("f/var")).unwrap();
        assert!(e.contains("is not a folder"), "{e}");
        let e = writable_dir("data_dir", &d.path().join("f")).unwrap();
        assert!(e.contains("exists and is not a folder"), "{e}");
    }
}
