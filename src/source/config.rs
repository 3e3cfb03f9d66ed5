//! `[partner.source]`: the raw TOML keys each kind takes, validated into a
//! typed [`SourceConfig`], and the registry that builds a [`Source`] from it.
//!
//! What must stay true: each kind accepts only its own keys (an unknown or
//! misplaced key is an error naming it), no secret is ever a plain value, and
//! sub-folders stay inside the inbox.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ftp, http, local, sftp, SecretRef, Source, SourceError};
use crate::config::{parse_duration, Encoding};

/// When a listed file may be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// Read whatever is there (the partner renames into place atomically).
    Immediate,
    /// `x.csv` only once `x.csv.done` exists; both are tidied afterwards.
    DoneFile,
    /// Size and mtime unchanged over this long.
    Stable(Duration),
}

/// What to do with the inbox file once it is credited (or refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    Move(String),
    Delete,
    Keep,
}

/// Options every kind shares.
#[derive(Debug, Clone)]
pub struct Pickup {
    pub pattern: glob::Pattern,
    /// `pattern_case = "sensitive"`; by default names match whatever their
    /// case (`*.csv` takes `X.CSV`: Windows partners do not see case).
    pub pattern_case_sensitive: bool,
    /// Files listed larger than this are skipped (`max_size`, default 1 GiB).
    pub max_size: u64,
    /// Whether listing mtimes are exact (seconds, UTC), so that a file's age
    /// can decide `stable:` readiness at once. FTP `LIST` times are minutes
    /// (or days) in the server's zone: FTP files are always watched.
    pub trust_mtime: bool,
    pub ready: Ready,
    pub after: After,
    /// Where refused files go (`None`: left in place).
    pub move_failed: Option<String>,
    /// Server-side folder for error reports (`None`: not uploaded).
    pub errors_dir: Option<String>,
    /// `ignore = ["*.txt", …]`: names that do not match `pattern` and are
    /// not deliveries (a readme, the partner's own notes). Listed as
    /// `ignored` in the run, never reported as needing action. A name that
    /// matches `pattern` is taken whatever `ignore` says.
    pub ignore: Vec<glob::Pattern>,
    pub timeout: Duration,
    pub retries: u32,
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub dir: PathBuf,
    pub pickup: Pickup,
}

#[derive(Debug, Clone)]
pub enum SftpAuth {
    Key {
        key_file: PathBuf,
        passphrase: Option<SecretRef>,
    },
    Password(SecretRef),
}

/// A host-key type, as OpenSSH names it (`ssh-keygen -lf` prints it in
/// brackets: RSA, ECDSA, ED25519).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostKeyKind {
    Ed25519,
    Ecdsa256,
    Ecdsa384,
    Ecdsa521,
    Rsa,
}

impl HostKeyKind {
    /// Every kind, in the order tried when nothing says which one to ask for.
    pub const ALL: [HostKeyKind; 5] = [
        HostKeyKind::Ed25519,
        HostKeyKind::Ecdsa256,
        HostKeyKind::Ecdsa384,
        HostKeyKind::Ecdsa521,
        HostKeyKind::Rsa,
    ];

    /// The key's type name (`ssh-rsa`, `ecdsa-sha2-nistp256`, `ssh-ed25519`…).
    pub fn name(self) -> &'static str {
        match self {
            HostKeyKind::Ed25519 => "ssh-ed25519",
            HostKeyKind::Ecdsa256 => "ecdsa-sha2-nistp256",
            HostKeyKind::Ecdsa384 => "ecdsa-sha2-nistp384",
            HostKeyKind::Ecdsa521 => "ecdsa-sha2-nistp521",
            HostKeyKind::Rsa => "ssh-rsa",
        }
    }

    /// The signature algorithms that ask a server for this kind of key
    /// (an RSA key signs with SHA-2 where the server can).
    pub fn algorithms(self) -> &'static [&'static str] {
        match self {
            HostKeyKind::Rsa => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
            HostKeyKind::Ed25519 => &["ssh-ed25519"],
            HostKeyKind::Ecdsa256 => &["ecdsa-sha2-nistp256"],
            HostKeyKind::Ecdsa384 => &["ecdsa-sha2-nistp384"],
            HostKeyKind::Ecdsa521 => &["ecdsa-sha2-nistp521"],
        }
    }

    /// A key type or signature algorithm name (`rsa-sha2-512` is an RSA key).
    pub fn parse(s: &str) -> Option<HostKeyKind> {
        HostKeyKind::ALL
            .into_iter()
            .find(|k| k.name() == s || k.algorithms().contains(&s))
    }
}

impl fmt::Display for HostKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One pinned host key: `SHA256:…`, with the key's type when the pin names
/// it. Taken as people paste it: the whole `ssh-keygen -lf` line
/// (`256 SHA256:… host (ED25519)`), `ED25519 SHA256:…` (ssh-keygen's type
/// word) or `ssh-ed25519 SHA256:…` (the protocol name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyPin {
    pub kind: Option<HostKeyKind>,
    /// `SHA256:` and unpadded base64.
    pub fingerprint: String,
}

impl HostKeyPin {
    /// `"SHA256:…"`, `"TYPE SHA256:…"` or `"BITS SHA256:… COMMENT (TYPE)"`.
    pub fn parse(text: &str) -> Result<HostKeyPin, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let (kind, fp) = match words[..] {
            [fp] => (None, fp),
            [t, fp] => (Self::kind(text, t, None)?, fp),
            // `ssh-keygen -lf`: bits, fingerprint, comment (any words), (TYPE)
            [bits, fp, .., last]
                if bits.parse::<u32>().is_ok() && last.starts_with('(') && last.ends_with(')') =>
            {
                (Self::kind(text, &last[1..last.len() - 1], Some(bits))?, fp)
            }
            // empty, or other words: not a pin (the check below says so)
            _ => (None, ""),
        };
        if !fp.starts_with("SHA256:") || fp.len() < 20 {
            return Err(format!(
                "`host_key` {text:?} is not a SHA256 fingerprint: paste the line \
                 `ssh-keygen -lf` prints (\"256 SHA256:… host (ED25519)\"), or \
                 \"SHA256:…\", or \"ED25519 SHA256:…\""
            ));
        }
        // the trailing '=' some tools print is accepted and dropped
        Ok(HostKeyPin {
            kind,
            fingerprint: fp.trim_end_matches('=').to_owned(),
        })
    }

    /// A key type as a pin names it: the protocol name (`ssh-ed25519`) or
    /// the word `ssh-keygen -lf` prints (`ED25519`, `RSA`, `ECDSA` — whose
    /// size comes from the line's bits; without them any ECDSA key).
    fn kind(text: &str, t: &str, bits: Option<&str>) -> Result<Option<HostKeyKind>, String> {
        if let Some(k) = HostKeyKind::parse(t) {
            return Ok(Some(k));
        }
        match (t.to_ascii_uppercase().as_str(), bits) {
            ("ED25519", _) => Ok(Some(HostKeyKind::Ed25519)),
            ("RSA", _) => Ok(Some(HostKeyKind::Rsa)),
            ("ECDSA", Some("256")) => Ok(Some(HostKeyKind::Ecdsa256)),
            ("ECDSA", Some("384")) => Ok(Some(HostKeyKind::Ecdsa384)),
            ("ECDSA", Some("521")) => Ok(Some(HostKeyKind::Ecdsa521)),
            ("ECDSA", None) => Ok(None),
            _ => Err(format!(
                "`host_key` {text:?}: unknown key type {t:?} (one of ED25519, ECDSA, RSA \
                 as `ssh-keygen -lf` prints them, or ssh-ed25519, ecdsa-sha2-nistp256, \
                 ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, ssh-rsa)"
            )),
        }
    }

    /// Whether a key the server presented is this pin.
    pub fn matches(&self, kind: Option<HostKeyKind>, fingerprint: &str) -> bool {
        self.fingerprint == fingerprint && (self.kind.is_none() || self.kind == kind)
    }
}

impl fmt::Display for HostKeyPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(k) => write!(f, "{k} {}", self.fingerprint),
            None => f.write_str(&self.fingerprint),
        }
    }
}

#[derive(Debug, Clone)]
pub enum HostKeyCheck {
    /// `host_key`: one pin, or several while a key is being rotated; any
    /// one of them matching is enough.
    Pins(Vec<HostKeyPin>),
    KnownHosts(PathBuf),
}

#[derive(Debug, Clone)]
pub struct SftpConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dir: String,
    pub auth: SftpAuth,
    pub host_key: HostKeyCheck,
    pub pickup: Pickup,
}

#[derive(Debug, Clone)]
pub struct FtpConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dir: String,
    pub password: SecretRef,
    /// Explicit TLS (`kind = "ftps"`); plain only with `insecure_plaintext`.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub pickup: Pickup,
}

#[derive(Debug, Clone)]
pub enum HttpAuth {
    None,
    Basic { user: String, password: SecretRef },
    Bearer(SecretRef),
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// May hold `{date:FORMAT}` (strftime), dated in the daemon's time zone.
    pub url: String,
    pub errors_url: Option<String>,
    pub auth: HttpAuth,
    pub ca_file: Option<PathBuf>,
    pub pickup: Pickup,
}

/// `[partner.source]`, typed.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Local(LocalConfig),
    Sftp(SftpConfig),
    Ftp(FtpConfig),
    Http(HttpConfig),
}

/// `[partner.source]` exactly as written; [`SourceConfig::from_raw`] checks
/// which keys each kind takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    kind: String,
    dir: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    pattern: Option<String>,
    pattern_case: Option<String>,
    ignore: Option<Vec<String>>,
    /// Bytes (an integer) or a size text ("1GiB", "500MB").
    max_size: Option<toml::Value>,
    timeout: Option<String>,
    retries: Option<u32>,
    ready: Option<String>,
    after: Option<String>,
    move_failed: Option<String>,
    errors_dir: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    credential: Option<String>,
    /// Only here to be refused with a helpful message.
    password: Option<toml::Value>,
    key_file: Option<String>,
    passphrase_env: Option<String>,
    passphrase_file: Option<String>,
    passphrase_credential: Option<String>,
    host_key: Option<OneOrMany>,
    known_hosts: Option<String>,
    ca_file: Option<String>,
    insecure_plaintext: Option<bool>,
    url: Option<String>,
    errors_url: Option<String>,
    auth: Option<String>,
}

/// A key that takes one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `max_size` when none is given: 1 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;

impl Pickup {
    /// Whether `name` matches `pattern` (case-insensitively unless
    /// `pattern_case = "sensitive"`).
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.matches_with(name, self.match_options())
    }

    /// The first `ignore` glob `name` matches (same case rule as `pattern`).
    pub fn ignored_by(&self, name: &str) -> Option<&glob::Pattern> {
        let o = self.match_options();
        self.ignore.iter().find(|g| g.matches_with(name, o))
    }

    fn match_options(&self) -> glob::MatchOptions {
        glob::MatchOptions {
            case_sensitive: self.pattern_case_sensitive,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        }
    }
}

impl SourceConfig {
    /// The registry: validate the keys of one kind and build its config.
    pub fn from_raw(
        r: &RawSource,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<SourceConfig, String> {
        if r.password.is_some() {
            return Err(
                "`password` must not be written in partners.toml: use `password_env`, \
                        `password_file` or `credential` (systemd LoadCredential=)"
                    .into(),
            );
        }
        let kind = r.kind.as_str();
        let allowed: &[&str] = match kind {
            "local" => &[
                "dir",
                "pattern",
                "pattern_case",
                "ignore",
                "max_size",
                "ready",
                "after",
                "move_failed",
                "errors_dir",
            ],
            "sftp" => &[
                "host",
                "port",
                "user",
                "dir",
                "pattern",
                "pattern_case",
                "ignore",
                "max_size",
                "timeout",
                "retries",
                "ready",
                "after",
                "move_failed",
                "errors_dir",
                "password_env",
                "password_file",
                "credential",
                "key_file",
                "passphrase_env",
                "passphrase_file",
                "passphrase_credential",
                "host_key",
                "known_hosts",
            ],
            "ftp" | "ftps" => &[
                "host",
                "port",
                "user",
                "dir",
                "pattern",
                "pattern_case",
                "ignore",
                "max_size",
                "timeout",
                "retries",
                "ready",
                "after",
                "move_failed",
                "errors_dir",
                "password_env",
                "password_file",
                "credential",
                "ca_file",
                "insecure_plaintext",
            ],
            "http" | "https" => &[
                "url",
                "errors_url",
                "auth",
                "user",
                "password_env",
                "password_file",
                "credential",
                "ca_file",
                "timeout",
                "retries",
                "max_size",
            ],
            other => {
                return Err(format!(
                "unknown kind {other:?} (one of \"local\", \"sftp\", \"ftp\", \"ftps\", \"http\")"
            ))
            }
        };
        if let Some(extra) = r.present_keys().into_iter().find(|k| !allowed.contains(k)) {
            return Err(format!("`{extra}` does not apply to kind = {kind:?}"));
        }
        let need = |v: &Option<String>, key: &str| -> Result<String, String> {
            match v {
                Some(s) if !s.trim().is_empty() => Ok(s.clone()),
                _ => Err(format!("kind = {kind:?} needs `{key}`")),
            }
        };
        let remote_default_ready = Ready::Stable(Duration::from_secs(60));
        let pickup = |default_ready: Ready| r.pickup(default_ready);
        Ok(match kind {
            "local" => SourceConfig::Local(LocalConfig {
                dir: resolve(&need(&r.dir, "dir")?),
                pickup: pickup(remote_default_ready)?,
            }),
            "sftp" => {
                let auth = match (&r.key_file, r.password_ref(resolve)?) {
                    (Some(_), Some(_)) => {
                        return Err("give either `key_file` or a password, not both".into())
                    }
                    (Some(k), None) => SftpAuth::Key {
                        key_file: resolve(k),
                        passphrase: SecretRef::from_keys(
                            &r.passphrase_env,
                            &r.passphrase_file,
                            &r.passphrase_credential,
                            "passphrase",
                            resolve,
                        )?,
                    },
                    (None, Some(p)) => SftpAuth::Password(p),
                    (None, None) => {
                        return Err(
                            "kind = \"sftp\" needs `key_file` or one of `password_env`, \
                                    `password_file`, `credential`"
                                .into(),
                        )
                    }
                };
                let host_key =
                    match (&r.host_key, &r.known_hosts) {
                        (Some(pins), None) => {
                            let items = pins.items();
                            if items.is_empty() {
                                return Err("`host_key` is an empty list: give at least one \
                                        \"SHA256:…\" fingerprint"
                                    .into());
                            }
                            HostKeyCheck::Pins(
                                items
                                    .into_iter()
                                    .map(HostKeyPin::parse)
                                    .collect::<Result<_, _>>()?,
                            )
                        }
                        (None, Some(kh)) => HostKeyCheck::KnownHosts(resolve(kh)),
                        (Some(_), Some(_)) => {
                            return Err("give either `host_key` or `known_hosts`, not both".into())
                        }
                        (None, None) => return Err(
                            "kind = \"sftp\" needs `host_key` (\"SHA256:…\") or `known_hosts`: \
                                    host key verification is mandatory"
                                .into(),
                        ),
                    };
                SourceConfig::Sftp(SftpConfig {
                    host: need(&r.host, "host")?,
                    port: r.port.unwrap_or(22),
                    user: need(&r.user, "user")?,
                    dir: r.dir.clone().unwrap_or_else(|| ".".into()),
                    auth,
                    host_key,
                    pickup: pickup(remote_default_ready)?,
                })
            }
            "ftp" | "ftps" => {
                let tls = kind == "ftps";
                if !tls && r.insecure_plaintext != Some(true) {
                    return Err(
                        "kind = \"ftp\" sends the password in clear text: use kind = \"ftps\", \
                                or set `insecure_plaintext = true` to accept that"
                            .into(),
                    );
                }
                if tls && r.insecure_plaintext.is_some() {
                    return Err("`insecure_plaintext` does not apply to kind = \"ftps\"".into());
                }
                if !tls && r.ca_file.is_some() {
                    return Err("`ca_file` does not apply to plain kind = \"ftp\"".into());
                }
                SourceConfig::Ftp(FtpConfig {
                    host: need(&r.host, "host")?,
                    port: r.port.unwrap_or(21),
                    user: need(&r.user, "user")?,
                    dir: r.dir.clone().unwrap_or_else(|| ".".into()),
                    password: r.password_ref(resolve)?.ok_or_else(|| {
                        format!("kind = {kind:?} needs one of `password_env`, `password_file`, `credential`")
                    })?,
                    tls,
                    ca_file: r.ca_file.as_deref().map(resolve),
                    pickup: Pickup {
                        trust_mtime: false,
                        ..pickup(remote_default_ready)?
                    },
                })
            }
            _ => {
                let url = need(&r.url, "url")?;
                check_url(&url, "url")?;
                if let Some(u) = &r.errors_url {
                    check_url(u, "errors_url")?;
                }
                let secret = r.password_ref(resolve)?;
                let auth = match (r.auth.as_deref(), secret) {
                    (None | Some("none"), None) => HttpAuth::None,
                    (Some("basic"), Some(p)) => HttpAuth::Basic {
                        user: need(&r.user, "user")?,
                        password: p,
                    },
                    (Some("bearer"), Some(t)) => HttpAuth::Bearer(t),
                    (Some(a @ ("basic" | "bearer")), None) => {
                        return Err(format!(
                        "auth = {a:?} needs one of `password_env`, `password_file`, `credential`"
                    ))
                    }
                    (None | Some("none"), Some(_)) => {
                        return Err(
                            "a password is given but `auth` is not \"basic\" or \"bearer\"".into(),
                        )
                    }
                    (Some(other), _) => {
                        return Err(format!(
                            "unknown auth {other:?} (\"none\", \"basic\" or \"bearer\")"
                        ))
                    }
                };
                if r.user.is_some() && !matches!(auth, HttpAuth::Basic { .. }) {
                    return Err("`user` only applies to auth = \"basic\"".into());
                }
                let mut p = pickup(Ready::Immediate)?;
                // A URL is fetched, never tidied: the server decides what it serves.
                p.after = After::Keep;
                p.move_failed = None;
                // Reports go to `errors_url` when there is one (the folder
                // name is not used by HTTP; it only switches the upload on).
                p.errors_dir = r.errors_url.as_ref().map(|_| "errors".to_owned());
                SourceConfig::Http(HttpConfig {
                    url,
                    errors_url: r.errors_url.clone(),
                    auth,
                    ca_file: r.ca_file.as_deref().map(resolve),
                    pickup: p,
                })
            }
        })
    }

    pub fn pickup(&self) -> &Pickup {
        match self {
            SourceConfig::Local(c) => &c.pickup,
            SourceConfig::Sftp(c) => &c.pickup,
            SourceConfig::Ftp(c) => &c.pickup,
            SourceConfig::Http(c) => &c.pickup,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Local(_) => "local",
            SourceConfig::Sftp(_) => "sftp",
            SourceConfig::Ftp(c) if c.tls => "ftps",
            SourceConfig::Ftp(_) => "ftp",
            SourceConfig::Http(_) => "http",
        }
    }

    /// Connect (where there is anything to connect to) and hand back the
    /// source. `today` dates HTTP URL templates; `encoding` (the partner's,
    /// which its reports are written in) labels HTTP report uploads.
    pub fn build(
        &self,
        today: chrono::NaiveDate,
        encoding: Encoding,
    ) -> Result<Box<dyn Source>, SourceError> {
        Ok(match self {
            SourceConfig::Local(c) => Box::new(local::LocalSource::new(c)),
            SourceConfig::Sftp(c) => Box::new(sftp::SftpSource::connect(c)?),
            SourceConfig::Ftp(c) => Box::new(ftp::FtpSource::connect(c)?),
            SourceConfig::Http(c) => {
                Box::new(http::HttpSource::new(c, today)?.with_report_encoding(encoding))
            }
        })
    }

    /// Where secrets are read from, for `check` to confirm they are readable.
    pub fn secrets(&self) -> Vec<&SecretRef> {
        match self {
            SourceConfig::Local(_) => vec![],
            SourceConfig::Sftp(c) => match &c.auth {
                SftpAuth::Key { passphrase, .. } => passphrase.iter().collect(),
                SftpAuth::Password(p) => vec![p],
            },
            SourceConfig::Ftp(c) => vec![&c.password],
            SourceConfig::Http(c) => match &c.auth {
                HttpAuth::None => vec![],
                HttpAuth::Basic { password, .. } => vec![password],
                HttpAuth::Bearer(t) => vec![t],
            },
        }
    }
}

impl fmt::Display for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceConfig::Local(c) => write!(f, "local {}", c.dir.display()),
            SourceConfig::Sftp(c) => write!(f, "sftp://{}@{}:{}/{}", c.user, c.host, c.port, c.dir),
            SourceConfig::Ftp(c) => write!(
                f,
                "{}://{}@{}:{}/{}",
                if c.tls { "ftps" } else { "ftp" },
                c.user,
                c.host,
                c.port,
                c.dir
            ),
            SourceConfig::Http(c) => write!(f, "{}", c.url),
        }
    }
}

fn check_url(u: &str, key: &str) -> Result<(), String> {
    if let Some(rest) = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
    {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(format!(
                "`{key}` must not carry credentials (user:password@): use `auth` with \
                 `password_env`, `password_file` or `credential`"
            ));
        }
        Ok(())
    } else {
        Err(format!("`{key}` {u:?} must start with https:// or http://"))
    }
}

impl RawSource {
    fn present_keys(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        macro_rules! k {
            ($($f:ident),*) => { $( if self.$f.is_some() { v.push(stringify!($f)); } )* };
        }
        k!(
            dir,
            host,
            port,
            user,
            pattern,
            pattern_case,
            ignore,
            max_size,
            timeout,
            retries,
            ready,
            after,
            move_failed,
            errors_dir,
            password_env,
            password_file,
            credential,
            key_file,
            passphrase_env,
            passphrase_file,
            passphrase_credential,
            host_key,
            known_hosts,
            ca_file,
            insecure_plaintext,
            url,
            errors_url,
            auth
        );
        v
    }

    fn password_ref(&self, resolve: &dyn Fn(&str) -> PathBuf) -> Result<Option<SecretRef>, String> {
        SecretRef::from_keys(
            &self.password_env,
            &self.password_file,
            &self.credential,
            "password",
            resolve,
        )
    }

    fn pickup(&self, default_ready: Ready) -> Result<Pickup, String> {
        let pattern_text = self.pattern.as_deref().unwrap_or("*.csv");
        let pattern = glob::Pattern::new(pattern_text)
            .map_err(|e| format!("`pattern` {pattern_text:?} is not a glob: {e}"))?;
        let pattern_case_sensitive = match self.pattern_case.as_deref() {
            None | Some("insensitive") => false,
            Some("sensitive") => true,
            Some(s) => {
                return Err(format!(
                    "`pattern_case` {s:?}: use \"insensitive\" (the default) or \"sensitive\""
                ))
            }
        };
        let mut ignore = vec![];
        for g in self.ignore.iter().flatten() {
            ignore.push(
                glob::Pattern::new(g).map_err(|e| format!("`ignore` {g:?} is not a glob: {e}"))?,
            );
        }
        let max_size = match &self.max_size {
            None => DEFAULT_MAX_SIZE,
            Some(v) => parse_size(v)?,
        };
        let ready = match self.ready.as_deref() {
            None => default_ready,
            Some("immediate") => Ready::Immediate,
            Some("done-file") => Ready::DoneFile,
            Some(s) if s.starts_with("stable:") => Ready::Stable(
                parse_duration(&s["stable:".len()..]).map_err(|e| format!("`ready`: {e}"))?,
            ),
            Some(s) => {
                return Err(format!(
                    "`ready` {s:?}: use \"done-file\", \"stable:60s\" or \"immediate\""
                ))
            }
        };
        let after = match self.after.as_deref() {
            None => After::Move("processed".into()),
            Some("delete") => After::Delete,
            Some("keep") => After::Keep,
            Some(s) if s.starts_with("move:") => After::Move(subdir(&s["move:".len()..], "after")?),
            Some(s) => {
                return Err(format!(
                    "`after` {s:?}: use \"move:processed/\", \"delete\" or \"keep\""
                ))
            }
        };
        let move_failed = match self.move_failed.as_deref() {
            None => Some("failed".into()),
            Some("keep") => None,
            Some(s) => Some(subdir(s, "move_failed")?),
        };
        let errors_dir = match self.errors_dir.as_deref() {
            None => Some("errors".into()),
            Some("none") => None,
            Some(s) => Some(subdir(s, "errors_dir")?),
        };
        let timeout = match &self.timeout {
            None => Duration::from_secs(30),
            Some(t) => parse_duration(t).map_err(|e| format!("`timeout`: {e}"))?,
        };
        if timeout.is_zero() {
            return Err("`timeout` must be more than 0s".into());
        }
        Ok(Pickup {
            pattern,
            pattern_case_sensitive,
            max_size,
            trust_mtime: true,
            ready,
            after,
            move_failed,
            errors_dir,
            ignore,
            timeout,
            retries: self.retries.unwrap_or(3),
        })
    }
}

/// `max_size`: a positive byte count, as an integer or a text with a unit
/// (`B`, `KB`/`MB`/`GB` = powers of 1000, `KiB`/`MiB`/`GiB` = powers of 1024).
fn parse_size(v: &toml::Value) -> Result<u64, String> {
    let bad = || {
        format!("`max_size` {v}: use a byte count or a size like \"1GiB\", \"500MB\", \"64KiB\"")
    };
    let n = match v {
        toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| bad())?,
        toml::Value::String(s) => {
            let t = s.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (digits, unit) = t.split_at(split);
            let k: u64 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "kb" => 1_000,
                "mb" => 1_000_000,
                "gb" => 1_000_000_000,
                "kib" => 1 << 10,
                "mib" => 1 << 20,
                "gib" => 1 << 30,
                _ => return Err(bad()),
            };
            digits
                .parse::<u64>()
                .ok()
                .and_then(|d| d.checked_mul(k))
                .ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err("`max_size` must be more than 0 bytes".into());
    }
    Ok(n)
}

/// A server-side sub-folder of the inbox: relative, one or more plain names.
fn subdir(s: &str, key: &str) -> Result<String, String> {
    let t = s.trim_end_matches('/');
    if t.is_empty()
        || t.starts_with('/')
        || t.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "`{key}` {s:?} must be a relative folder inside the inbox, like \"processed/\""
        ));
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn build(toml_text: &str) -> Result<SourceConfig, String> {
        let raw: RawSource = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        SourceConfig::from_raw(&raw, &|p: &str| PathBuf::from("/etc/mb").join(p))
    }

    fn refused(toml_text: &str, needle: &str) {
        match build(toml_text) {
            Ok(c) => panic!("accepted {toml_text}: {c:?}"),
            Err(e) => assert!(e.contains(needle), "{e:?} should mention {needle:?}"),
        }
    }

    #[test]
    fn sftp_keys() {
        let c = build(
            r#"kind = "sftp"
               host = "sftp.partner.example"
               user = "mb"
               dir = "/out"
               key_file = "keys/id_ed25519"
               passphrase_env = "KEY_PASS"
               host_key = "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG="
               ready = "done-file"
               after = "delete"
               timeout = "10s"
               retries = 5"#,
        )
        .unwrap();
        let SourceConfig::Sftp(s) = c else { panic!() };
        assert_eq!(s.port, 22);
        assert!(
            matches!(&s.auth, SftpAuth::Key { key_file, passphrase: Some(SecretRef::Env(v)) }
            if key_file == Path::new("/etc/mb/keys/id_ed25519") && v == "KEY_PASS")
        );
        // the trailing '=' some tools print is accepted and dropped
        assert!(matches!(&s.host_key, HostKeyCheck::Pins(p)
            if p == &[HostKeyPin { kind: None, fingerprint: "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into() }]));
        assert_eq!(s.pickup.ready, Ready::DoneFile);
        assert_eq!(s.pickup.after, After::Delete);
        assert_eq!(s.pickup.timeout, Duration::from_secs(10));
        assert_eq!(s.pickup.retries, 5);
        assert_eq!(s.pickup.errors_dir.as_deref(), Some("errors"));

        let base = "kind = \"sftp\"\nhost = \"h\"\nuser = \"u\"\n";
        let c = build(&format!(
            "{base}credential = \"p\"\nknown_hosts = \"kh\"\nport = 2222"
        ))
        .unwrap();
        let SourceConfig::Sftp(s) = c else { panic!() };
        assert_eq!(s.port, 2222);
        assert!(matches!(
            s.auth,
            SftpAuth::Password(SecretRef::Credential(_))
        ));
        assert!(matches!(s.host_key, HostKeyCheck::KnownHosts(_)));
        assert_eq!(s.pickup.ready, Ready::Stable(Duration::from_secs(60)));

        refused(
            &format!("{base}password_env = \"P\""),
            "host key verification is mandatory",
        );
        refused(
            &format!(
                "{base}password = \"hunter2\"\nhost_key = \"SHA256:abcdefghijklmnopqrstuvwxyz\""
            ),
            "must not be written",
        );
        refused(
            &format!("{base}host_key = \"SHA256:abcdefghijklmnopqrstuvwxyz\""),
            "needs `key_file`",
        );
        refused(
            &format!("{base}key_file = \"k\"\npassword_env = \"P\"\nknown_hosts = \"kh\""),
            "not both",
        );
        refused(
            &format!("{base}password_env = \"P\"\nhost_key = \"MD5:aa:bb\""),
            "not a SHA256 fingerprint",
        );
        refused(&format!("{base}password_env = \"P\"\nhost_key = \"SHA256:abcdefghijklmnopqrstuvwxyz\"\nknown_hosts = \"kh\""), "not both");
        refused(
            &format!("{base}password_env = \"P\"\nknown_hosts = \"kh\"\nca_file = \"ca\""),
            "`ca_file` does not apply",
        );
        refused(
            &format!("{base}password_env = \"P\"\npassword_file = \"f\"\nknown_hosts = \"kh\""),
            "one way only",
        );
        refused(
            "kind = \"sftp\"\nuser = \"u\"\npassword_env = \"P\"\nknown_hosts = \"kh\"",
            "needs `host`",
        );
        refused(
            "kind = \"sftp\"\nhost = \"h\"\npassword_env = \"P\"\nknown_hosts = \"kh\"",
            "needs `user`",
        );
        refused(
            &format!("{base}password_env = \"P\"\nknown_hosts = \"kh\"\nafter = \"move:../up\""),
            "relative folder",
        );
        refused(
            &format!("{base}password_env = \"P\"\nknown_hosts = \"kh\"\ntimeout = \"0s\""),
            "more than 0s",
        );
    }

    #[test]
    fn sftp_host_key_pins() {
        let base = "kind = \"sftp\"\nhost = \"h\"\nuser = \"u\"\npassword_env = \"P\"\n";
        let pins = |v: &str| match build(&format!("{base}host_key = {v}")) {
            Ok(SourceConfig::Sftp(s)) => match s.host_key {
                HostKeyCheck::Pins(p) => p,
                other => panic!("{other:?}"),
            },
            other => panic!("{v}: {other:?}"),
        };
        let fp = "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        // typed pins, every type OpenSSH prints; rsa-sha2-* names an RSA key
        for (t, k) in [
            ("ssh-rsa", HostKeyKind::Rsa),
            ("rsa-sha2-512", HostKeyKind::Rsa),
            ("ecdsa-sha2-nistp256", HostKeyKind::Ecdsa256),
            ("ecdsa-sha2-nistp384", HostKeyKind::Ecdsa384),
            ("ecdsa-sha2-nistp521", HostKeyKind::Ecdsa521),
            ("ssh-ed25519", HostKeyKind::Ed25519),
        ] {
            assert_eq!(
                pins(&format!("\"{t} {fp}=\"")),
                [HostKeyPin {
                    kind: Some(k),
                    fingerprint: fp.into()
                }]
            );
        }
        // as people paste them: the whole `ssh-keygen -lf` line (any
        // comment), or ssh-keygen's type word before the fingerprint
        for (line, k) in [
            (
                format!("256 {fp} root@partner (ED25519)"),
                Some(HostKeyKind::Ed25519),
            ),
            (
                format!("256 {fp} no comment (ED25519)"),
                Some(HostKeyKind::Ed25519),
            ),
            (format!("3072 {fp} a b c (RSA)"), Some(HostKeyKind::Rsa)),
            (
                format!("256 {fp} host (ECDSA)"),
                Some(HostKeyKind::Ecdsa256),
            ),
            (
                format!("384 {fp} host (ECDSA)"),
                Some(HostKeyKind::Ecdsa384),
            ),
            (
                format!("521 {fp} host (ECDSA)"),
                Some(HostKeyKind::Ecdsa521),
            ),
            (format!("256 {fp} (ED25519)"), Some(HostKeyKind::Ed25519)),
            (format!("ED25519 {fp}"), Some(HostKeyKind::Ed25519)),
            (format!("RSA {fp}"), Some(HostKeyKind::Rsa)),
            (format!("ECDSA {fp}"), None),
        ] {
            assert_eq!(
                pins(&format!("\"{line}\"")),
                [HostKeyPin {
                    kind: k,
                    fingerprint: fp.into()
                }],
                "{line}"
            );
        }

        // a list, for key rotation: order kept, typed and untyped mixed
        let p = pins(&format!(
            "[\"ssh-ed25519 {fp}\", \"SHA256:0123456789abcdefghijklmnop\"]"
        ));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].kind, Some(HostKeyKind::Ed25519));
        assert_eq!(p[1].kind, None);
        assert_eq!(p[0].to_string(), format!("ssh-ed25519 {fp}"));

        // a typed pin matches only a key of its type; an untyped one any
        assert!(p[0].matches(Some(HostKeyKind::Ed25519), fp));
        assert!(!p[0].matches(Some(HostKeyKind::Rsa), fp));
        assert!(!p[0].matches(Some(HostKeyKind::Ed25519), "SHA256:other"));
        assert!(p[1].matches(Some(HostKeyKind::Rsa), "SHA256:0123456789abcdefghijklmnop"));

        refused(&format!("{base}host_key = []"), "empty list");
        refused(
            &format!("{base}host_key = \"ssh-dss {fp}\""),
            "unknown key type \"ssh-dss\"",
        );
        refused(
            &format!("{base}host_key = \"DSA {fp}\""),
            "unknown key type \"DSA\"",
        );
        refused(
            &format!("{base}host_key = \"256 {fp} host (DSA)\""),
            "unknown key type \"DSA\"",
        );
        refused(
            &format!("{base}host_key = \"ssh-rsa {fp} extra\""),
            "not a SHA256 fingerprint",
        );
        refused(
            &format!("{base}host_key = [\"{fp}\", \"MD5:aa:bb\"]"),
            "not a SHA256 fingerprint",
        );
        refused(
            &format!("{base}host_key = [\"{fp}\"]\nknown_hosts = \"kh\""),
            "not both",
        );
    }

    #[test]
    fn ftp_keys() {
        let c = build(
            r#"kind = "ftps"
               host = "ftp.partner.example"
               user = "mb"
               password_file = "secrets/ftp"
               ca_file = "ca.pem""#,
        )
        .unwrap();
        let SourceConfig::Ftp(f) = &c else { panic!() };
        assert!(f.tls);
        assert_eq!(f.port, 21);
        assert_eq!(f.dir, ".");
        assert_eq!(f.ca_file.as_deref(), Some(Path::new("/etc/mb/ca.pem")));
        assert_eq!(c.kind(), "ftps");

        let c = build(
            r#"kind = "ftp"
               host = "h"
               user = "u"
               password_env = "P"
               insecure_plaintext = true"#,
        )
        .unwrap();
        assert_eq!(c.kind(), "ftp");

        refused(
            "kind = \"ftp\"\nhost = \"h\"\nuser = \"u\"\npassword_env = \"P\"",
            "insecure_plaintext",
        );
        refused("kind = \"ftp\"\nhost = \"h\"\nuser = \"u\"\npassword_env = \"P\"\ninsecure_plaintext = false", "insecure_plaintext");
        refused("kind = \"ftps\"\nhost = \"h\"\nuser = \"u\"\npassword_env = \"P\"\ninsecure_plaintext = true", "does not apply");
        refused("kind = \"ftp\"\nhost = \"h\"\nuser = \"u\"\npassword_env = \"P\"\ninsecure_plaintext = true\nca_file = \"c\"", "does not apply");
        refused(
            "kind = \"ftps\"\nhost = \"h\"\nuser = \"u\"",
            "needs one of `password_env`",
        );
        refused(
            "kind = \"ftps\"\nhost = \"h\"\nuser = \"u\"\npassword = \"x\"",
            "must not be written",
        );
        refused(
            "kind = \"ftps\"\nhost = \"h\"\nuser = \"u\"\npassword_env = \"P\"\nkey_file = \"k\"",
            "`key_file` does not apply",
        );
        refused(
            "kind = \"ftps\"\nuser = \"u\"\npassword_env = \"P\"",
            "needs `host`",
        );
    }

    #[test]
    fn http_keys() {
        let c = build(
            r#"kind = "https"
               url = "https://partner.example/out/exchange-{date:%Y%m%d}.csv"
               errors_url = "https://partner.example/in/"
               auth = "bearer"
               credential = "partner-token"
               ca_file = "ca.pem"
               retries = 1"#,
        )
        .unwrap();
        let SourceConfig::Http(h) = &c else { panic!() };
        assert!(matches!(h.auth, HttpAuth::Bearer(SecretRef::Credential(_))));
        assert_eq!(h.pickup.after, After::Keep);
        assert_eq!(h.pickup.ready, Ready::Immediate);
        assert!(
            h.pickup.errors_dir.is_some(),
            "errors_url switches report upload on"
        );

        let c = build(
            r#"kind = "http"
               url = "http://partner.example/x.csv"
               auth = "basic"
               user = "mb"
               password_env = "P""#,
        )
        .unwrap();
        let SourceConfig::Http(h) = &c else { panic!() };
        assert!(matches!(&h.auth, HttpAuth::Basic { user, .. } if user == "mb"));
        assert!(h.pickup.errors_dir.is_none(), "no errors_url: no upload");

        refused("kind = \"http\"", "needs `url`");
        refused(
            "kind = \"http\"\nurl = \"ftp://x/y.csv\"",
            "must start with https://",
        );
        refused(
            "kind = \"http\"\nurl = \"https://u:pw@x/y.csv\"",
            "must not carry credentials",
        );
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\nauth = \"basic\"",
            "needs one of",
        );
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\nauth = \"basic\"\npassword_env = \"P\"",
            "needs `user`",
        );
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\npassword_env = \"P\"",
            "not \"basic\" or \"bearer\"",
        );
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\nauth = \"digest\"\npassword_env = \"P\"",
            "unknown auth",
        );
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\nuser = \"u\"",
            "only applies",
        );
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\npassword = \"x\"",
            "must not be written",
        );
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\ndir = \"d\"",
            "`dir` does not apply",
        );
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\nafter = \"delete\"",
            "`after` does not apply",
        );
    }

    #[test]
    fn local_and_unknown_kinds() {
        let c = build("kind = \"local\"\ndir = \"inbox\"").unwrap();
        let SourceConfig::Local(l) = &c else { panic!() };
        assert_eq!(l.dir, Path::new("/etc/mb/inbox"));
        refused("kind = \"local\"", "needs `dir`");
        refused(
            "kind = \"local\"\ndir = \"d\"\nhost = \"h\"",
            "`host` does not apply",
        );
        refused("kind = \"scp\"", "unknown kind");
        refused("kind = \"local\"\ndir = \"d\"\nbogus = 1", "unknown field");
    }

    #[test]
    fn pattern_case_and_max_size() {
        let c = build("kind = \"local\"\ndir = \"inbox\"").unwrap();
        let p = c.pickup();
        assert!(p.matches("SAKURA_20261130.CSV"), "default: any case");
        assert!(p.matches("a.csv") && !p.matches("a.txt"));
        assert_eq!(p.max_size, 1 << 30);
        assert!(p.trust_mtime);
        let c = build(
            "kind = \"local\"\ndir = \"inbox\"\npattern = \"EX_*.csv\"\npattern_case = \"sensitive\"\nmax_size = \"500MB\"",
        )
        .unwrap();
        let p = c.pickup();
        assert!(p.matches("EX_1.csv") && !p.matches("ex_1.csv") && !p.matches("EX_1.CSV"));
        assert_eq!(p.max_size, 500_000_000);
        let c = build("kind = \"local\"\ndir = \"i\"\nmax_size = 4096").unwrap();
        assert_eq!(c.pickup().max_size, 4096);
        let c = build("kind = \"local\"\ndir = \"i\"\nmax_size = \"64KiB\"").unwrap();
        assert_eq!(c.pickup().max_size, 65536);
        let ftp = build(
            "kind = \"ftps\"\nhost = \"h\"\nuser = \"u\"\npassword_env = \"P\"\nmax_size = \"1GB\"",
        )
        .unwrap();
        assert!(!ftp.pickup().trust_mtime, "FTP LIST times are not exact");
        refused(
            "kind = \"local\"\ndir = \"i\"\npattern_case = \"upper\"",
            "pattern_case",
        );
        refused(
            "kind = \"local\"\ndir = \"i\"\nmax_size = \"1TB\"",
            "max_size",
        );
        refused("kind = \"local\"\ndir = \"i\"\nmax_size = 0", "more than 0");
        refused("kind = \"local\"\ndir = \"i\"\nmax_size = -5", "max_size");
        refused(
            "kind = \"http\"\nurl = \"https://x/y.csv\"\npattern_case = \"sensitive\"",
            "`pattern_case` does not apply",
        );
    }

    #[test]
    fn subdirs_stay_inside() {
        assert_eq!(subdir("processed/", "after").unwrap(), "processed");
        assert_eq!(subdir("done/2026", "after").unwrap(), "done/2026");
        for bad in ["", "/abs", "../up", "a/../b", "a//b"] {
            assert!(subdir(bad, "after").is_err(), "{bad:?}");
        }
    }
}
