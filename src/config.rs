//! `partners.toml`: the typed configuration, loaded and validated in one go.
//!
//! What must stay true:
//! - every error names the file, the key and (where TOML knows it) the line;
//! - relative paths are resolved against the config file's folder, once, here;
//! - no secret value ever lives in this file: sources name *where* a secret is
//!   (`password_env`, `password_file`, `credential`), and a plain `password`
//!   key is refused.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::calendar::{Calendar, ClosedDay};
use crate::schedule::{OnHoliday, Schedule};
use crate::source::SourceConfig;

/// A configuration problem, already formatted for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Said once, with the two ways to name the file (the I/O error is
    /// part of the message, not a source, so `{:#}` does not repeat it).
    #[error(
        "no config file {path}: give the path with `--config PATH` or the \
         MILEBATCH_CONFIG environment variable (default: partners.toml in the \
         current folder)"
    )]
    NotFound { path: PathBuf },
    #[error("cannot read config {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    /// `[server]`: the web process (`milebatch serve`).
    pub server: ServerConfig,
    pub partners: Vec<PartnerConfig>,
}

/// `[server]`: where `milebatch serve` listens, and with which certificate.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain and private key; `None`: plain HTTP, which is
    /// allowed only on a loopback address or with `insecure_plaintext`.
    pub tls: Option<TlsFiles>,
    pub insecure_plaintext: bool,
    /// `metrics_listen`: where `GET /metrics` is served (plain HTTP, a
    /// listener of its own); `None`: no metrics listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How many connections `serve` holds and for how long (the `[server]`
    /// keys of docs/operations-server.md).
    pub limits: ConnLimits,
    /// `public_url`: the site's address as people reach it (e.g.
    /// `https://milebatch.example.jp`), for links in notifications.
    pub public_url: Option<String>,
}

/// `[server]` connection limits. Every one is bounded: a client that
/// sends nothing, or half a request, is closed, never held.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    /// `max_connections`: open connections overall.
    pub max_connections: usize,
    /// `max_connections_per_address`: open connections from one client IP.
    pub max_connections_per_address: usize,
    /// `header_timeout`: a request's headers (HTTP/1.1 and each HTTP/2
    /// stream) and a new connection's first request.
    pub header_timeout: Duration,
    /// `idle_timeout`: a connection with no request in progress.
    pub idle_timeout: Duration,
    /// `tls_handshake_timeout`.
    pub tls_handshake_timeout: Duration,
    /// `http2_keepalive_interval`: PING a quiet HTTP/2 connection this often.
    pub http2_keepalive_interval: Duration,
    /// `http2_keepalive_timeout`: close when a PING is not answered in time.
    pub http2_keepalive_timeout: Duration,
    /// `http2_max_streams`: concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 8192,
            max_connections_per_address: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(20),
            http2_max_streams: 100,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where `milebatch serve` listens when `[server] listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The SQLite file. Empty when `store` is PostgreSQL: a command that
    /// does not run on PostgreSQL yet refuses before it opens anything
    /// (`crate::store::not_on_postgres_yet`).
    pub database: PathBuf,
    /// Where the data lives: `database` as an SQLite file, or a PostgreSQL
    /// URL with its password's place (`crate::store::Database`).
    pub store: crate::store::Database,
    pub data_dir: PathBuf,
    pub timezone: chrono_tz::Tz,
    pub max_concurrent: usize,
    pub shutdown_timeout: Duration,
    /// When the daemon runs `verify` on the live database; `None`: never
    /// (`verify = "off"`).
    pub verify: Option<Schedule>,
    /// When the daemon takes a backup into `backup_dir`; `None`: never.
    pub backup: Option<Schedule>,
    /// Where scheduled backups go (required with `backup`).
    pub backup_dir: Option<PathBuf>,
    /// Scheduled backups kept; older ones the daemon made are deleted.
    pub keep: usize,
    /// `metrics_listen`: where the daemon serves `GET /metrics` (plain
    /// HTTP); `None`: no metrics listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Business days: weekends, national holidays and `closed`.
    pub calendar: Calendar,
    /// `[daemon.smtp]`: the server notification mail goes through.
    pub smtp: Option<crate::notify::SmtpConfig>,
    /// `[daemon.notify]`: what the operator's ops team is sent.
    pub notify: Option<crate::notify::OpsNotify>,
    /// `notify_retry`: the wait before a failed notification's first
    /// retry; it doubles each time, at most an hour, for 24 hours.
    pub notify_retry: Duration,
}

impl DaemonConfig {
    /// A maintenance job's schedule (`verify`, `backup`) on the daemon's
    /// calendar: business-day forms work, runs are never moved.
    pub fn plan<'a>(&'a self, schedule: &'a Schedule) -> crate::schedule::Plan<'a> {
        crate::schedule::Plan {
            schedule,
            on_holiday: OnHoliday::Run,
            calendar: &self.calendar,
            tz: self.timezone,
        }
    }
}

/// `[daemon] verify` when not given.
pub const DEFAULT_VERIFY_SCHEDULE: &str = "weekly sun 05:00";
/// `[daemon] keep` when not given.
pub const DEFAULT_BACKUP_KEEP: usize = 14;

/// Text encodings a partner may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Encoding {
    #[serde(rename = "utf-8", alias = "utf8", alias = "UTF-8")]
    Utf8,
    /// Shift_JIS as Windows writes it: CP932 / Windows-31J.
    #[serde(
        rename = "shift_jis",
        alias = "sjis",
        alias = "cp932",
        alias = "windows-31j",
        alias = "Shift_JIS"
    )]
    ShiftJis,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Utf8 => "utf-8",
            Encoding::ShiftJis => "shift_jis",
        })
    }
}

/// Whether a file's first line is a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Every line is data.
    No,
    /// The first line is a header; a file whose first line is a data row is
    /// refused (F007), never silently short of that row.
    Yes,
    /// The first line is a header when its third field is not a number.
    Auto,
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Header::No => "false",
            Header::Yes => "true",
            Header::Auto => "auto",
        })
    }
}

/// What to do with a file most of whose rows were credited before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResendCheck {
    /// Refuse it whole (F006).
    Refuse,
    /// Credit it, and log a WARN.
    Warn,
    /// Do not look (no repeat count either).
    Off,
}

#[derive(Debug, Clone)]
pub struct PartnerConfig {
    pub id: String,
    pub name: String,
    pub schedule: Schedule,
    pub encoding: Encoding,
    pub header: Header,
    pub max_miles_per_row: u64,
    pub max_error_ratio: f64,
    pub allow_duplicate_rows: bool,
    pub expect_file: ExpectFile,
    /// A run that falls on a closed day: run, move or skip it.
    pub on_holiday: OnHoliday,
    pub resend_check: ResendCheck,
    /// How far back a repeat counts.
    pub resend_window: Duration,
    /// Refuse (or warn) when more than this share of the rows are repeats.
    pub resend_ratio: f64,
    /// E010 for a partner key credited before, in any file.
    pub unique_partner_key: bool,
    pub source: SourceConfig,
    /// `[partner.api]`: the real-time partner API (`milebatch serve`).
    pub api: ApiConfig,
    /// Write (and upload beside the error report) a per-file summary.
    pub summary: bool,
    /// `[partner.pgp]`: encrypted deliveries (`pipeline::pgp`).
    pub pgp: Option<crate::pipeline::pgp::PgpConfig>,
    /// `[partner.notify]`: where this partner hears about its files
    /// (`crate::notify`); `None`: nothing is sent to it, by design.
    pub notify: Option<crate::notify::PartnerNotify>,
}

/// `expect_file`: when a scheduled run that finds no new file is a
/// missed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectFile {
    /// Never (`false`, the default).
    No,
    /// On business days only (`true` / `"business-days"`): partners do not
    /// deliver on weekends, holidays or the operator's closed days.
    BusinessDays,
    /// At every scheduled run, closed days too (`"every-run"`).
    EveryRun,
}

impl fmt::Display for ExpectFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExpectFile::No => "false",
            ExpectFile::BusinessDays => "business-days",
            ExpectFile::EveryRun => "every-run",
        })
    }
}

/// `[partner.api]`: whether the partner may credit through the API, and
/// the limits that bound what a stolen key can do.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub enabled: bool,
    /// Requests per key: a token bucket refilled at `per_second`, holding
    /// at most `burst`.
    pub rate: Rate,
    /// Miles the partner may credit through the API per day (in
    /// `[daemon] timezone`), all keys together.
    pub daily_miles_limit: u64,
    /// `members/verify` calls the partner may make per day, all keys
    /// together.
    pub daily_verify_limit: u64,
}

/// `daily_verify_limit` when not given.
pub const DEFAULT_DAILY_VERIFY_LIMIT: u64 = 100_000;

/// A per-key request rate, `"50/s"` or `"600/m"`, with its burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// The API rate when `[partner.api] rate` is not given.
pub const DEFAULT_API_RATE: &str = "50/s";

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: false,
            rate: parse_rate(DEFAULT_API_RATE).expect("a valid default"),
            daily_miles_limit: 0,
            daily_verify_limit: DEFAULT_DAILY_VERIFY_LIMIT,
        }
    }
}

/// `"N/s"`, `"N/m"` or `"N/h"`, N ≥ 1. The burst defaults to N: a full
/// unit's worth may come at once.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("{s:?} is not a rate: use requests per unit, e.g. \"50/s\", \"600/m\"");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    let secs = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    let per_second = f64::from(n) / secs;
    Ok(Rate {
        per_second,
        burst: n,
    })
}

/// `on_holiday = "run" | "next" | "previous" | "skip"`.
fn parse_on_holiday(text: &str) -> Result<OnHoliday, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "run" => Ok(OnHoliday::Run),
        "next" => Ok(OnHoliday::Next),
        "previous" => Ok(OnHoliday::Previous),
        "skip" => Ok(OnHoliday::Skip),
        _ => Err(format!(
            "{text:?} is not a choice: \"run\" (run on the closed day anyway, the default), \
             \"next\" or \"previous\" (move to the next or previous business day, same time) \
             or \"skip\" (do not run)"
        )),
    }
}

/// `expect_file = true | false | "business-days" | "every-run"`.
fn parse_expect_file(v: &toml::Value) -> Result<ExpectFile, String> {
    match v {
        toml::Value::Boolean(false) => Ok(ExpectFile::No),
        toml::Value::Boolean(true) => Ok(ExpectFile::BusinessDays),
        toml::Value::String(s) if s == "business-days" => Ok(ExpectFile::BusinessDays),
        toml::Value::String(s) if s == "every-run" => Ok(ExpectFile::EveryRun),
        other => Err(format!(
            "{other} is not a choice: true or \"business-days\" (a file is due at every \
             scheduled run on a business day), \"every-run\" (closed days too) or false"
        )),
    }
}

/// `[daemon] closed`: the operator's closed days, each `"MM-DD"` or
/// `"YYYY-MM-DD"`.
fn closed_days(raw: Option<&Vec<Spanned<String>>>, loc: &Locator<'_>) -> Result<Calendar, String> {
    let mut days = Vec::new();
    for entry in raw.into_iter().flatten() {
        let day =
            ClosedDay::parse(entry.get_ref()).map_err(|e| loc.at(entry, "`daemon.closed`", e))?;
        if !days.contains(&day) {
            days.push(day);
        }
    }
    Ok(Calendar::new(days))
}

/// `[daemon] verify` / `backup`: a schedule (the partners' grammar), or
/// `"off"`; `default` when the key is absent.
fn maintenance_schedule(
    raw: Option<&Spanned<String>>,
    default: Option<&str>,
    key: &str,
    loc: &Locator<'_>,
) -> Result<Option<Schedule>, String> {
    let text = match raw {
        None => match default {
            None => return Ok(None),
            Some(d) => return Ok(Some(Schedule::parse(d).expect("a valid default"))),
        },
        Some(t) => t,
    };
    if text.get_ref().trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    Schedule::parse(text.get_ref())
        .map(Some)
        .map_err(|e| loc.at(text, key, format!("{e} (or \"off\")")))
}

impl PartnerConfig {
    /// This partner's schedule with its `on_holiday`, on the daemon's
    /// calendar and in its zone: what the daemon runs and `check` prints.
    pub fn plan<'a>(&'a self, daemon: &'a DaemonConfig) -> crate::schedule::Plan<'a> {
        crate::schedule::Plan {
            schedule: &self.schedule,
            on_holiday: self.on_holiday,
            calendar: &daemon.calendar,
            tz: daemon.timezone,
        }
    }

    /// The validation rules of this partner, as the pipeline needs them.
    pub fn rules(&self) -> crate::pipeline::validate::Rules {
        crate::pipeline::validate::Rules {
            max_miles_per_row: self.max_miles_per_row,
            allow_duplicate_rows: self.allow_duplicate_rows,
        }
    }
}

// ---- raw, as written in TOML -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    server: Option<RawServer>,
    #[serde(default)]
    partner: Vec<RawPartner>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    database: Option<String>,
    database_password_env: Option<String>,
    database_password_file: Option<String>,
    database_password_credential: Option<String>,
    data_dir: Option<String>,
    timezone: Option<Spanned<String>>,
    max_concurrent: Option<Spanned<usize>>,
    shutdown_timeout: Option<Spanned<String>>,
    verify: Option<Spanned<String>>,
    backup: Option<Spanned<String>>,
    backup_dir: Option<Spanned<String>>,
    keep: Option<Spanned<usize>>,
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    metrics_allow_remote: bool,
    closed: Option<Vec<Spanned<String>>>,
    smtp: Option<Spanned<crate::notify::config::RawSmtp>>,
    notify_retry: Option<Spanned<String>>,
    notify: Option<Spanned<crate::notify::config::RawOpsNotify>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    #[serde(default)]
    insecure_plaintext: bool,
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    metrics_allow_remote: bool,
    max_connections: Option<Spanned<u64>>,
    max_connections_per_address: Option<Spanned<u64>>,
    header_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    tls_handshake_timeout: Option<Spanned<String>>,
    http2_keepalive_interval: Option<Spanned<String>>,
    http2_keepalive_timeout: Option<Spanned<String>>,
    http2_max_streams: Option<Spanned<u64>>,
    public_url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    id: Spanned<String>,
    name: Option<String>,
    schedule: Spanned<String>,
    #[serde(default = "default_encoding")]
    encoding: Encoding,
    header: Option<Spanned<toml::Value>>,
    max_miles_per_row: Spanned<u64>,
    #[serde(default = "default_error_ratio")]
    max_error_ratio: Spanned<f64>,
    #[serde(default)]
    allow_duplicate_rows: bool,
    expect_file: Option<Spanned<toml::Value>>,
    on_holiday: Option<Spanned<String>>,
    #[serde(default = "default_resend_check")]
    resend_check: ResendCheck,
    resend_window: Option<Spanned<String>>,
    resend_ratio: Option<Spanned<f64>>,
    unique_partner_key: Option<Spanned<bool>>,
    source: Spanned<crate::source::RawSource>,
    api: Option<Spanned<RawApi>>,
    summary: Option<Spanned<bool>>,
    pgp: Option<Spanned<crate::pipeline::pgp::RawPgp>>,
    notify: Option<Spanned<crate::notify::config::RawPartnerNotify>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default)]
    enabled: bool,
    rate: Option<String>,
    burst: Option<u32>,
    daily_miles_limit: Option<u64>,
    daily_verify_limit: Option<u64>,
}

fn default_resend_check() -> ResendCheck {
    ResendCheck::Refuse
}

/// `resend_window` when absent.
pub const DEFAULT_RESEND_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);

fn default_encoding() -> Encoding {
    Encoding::Utf8
}

fn default_error_ratio() -> Spanned<f64> {
    Spanned::new(0..0, 0.5)
}

/// The largest per-row maximum accepted. Keeps any realistic sum of rows far
/// from `i64` overflow, and is already absurd for one exchange.
pub const MILES_PER_ROW_CEILING: u64 = 1_000_000_000_000;

/// Where a problem sits in the text, for messages.
pub(crate) struct Locator<'a> {
    text: &'a str,
}

impl<'a> Locator<'a> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }
    pub(crate) fn at<T>(&self, s: &Spanned<T>, key: &str, msg: impl fmt::Display) -> String {
        if s.span().end == 0 {
            format!("{key}: {msg}")
        } else {
            format!("line {}: {key}: {msg}", self.line(s.span().start))
        }
    }
}

impl Config {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_owned(),
                    error,
                }
            }
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| invalid(toml_error(&e, text)))?;
        let loc = Locator { text };
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        let d = raw.daemon.unwrap_or_default();
        let timezone = match &d.timezone {
            None => chrono_tz::Asia::Tokyo,
            Some(tz) => tz.get_ref().parse::<chrono_tz::Tz>().map_err(|_| {
                invalid(loc.at(
                    tz,
                    "`daemon.timezone`",
                    format!(
                        "unknown time zone {:?} (an IANA name such as \"Asia/Tokyo\")",
                        tz.get_ref()
                    ),
                ))
            })?,
        };
        let max_concurrent = match &d.max_concurrent {
            None => 4,
            Some(n) if *n.get_ref() == 0 => {
                return Err(invalid(loc.at(
                    n,
                    "`daemon.max_concurrent`",
                    "must be at least 1",
                )))
            }
            Some(n) => *n.get_ref(),
        };
        let shutdown_timeout = match &d.shutdown_timeout {
            None => Duration::from_secs(60),
            Some(s) => parse_duration(s.get_ref())
                .map_err(|m| invalid(loc.at(s, "`daemon.shutdown_timeout`", m)))?,
        };
        let store = crate::store::Database::parse(
            d.database.as_deref().unwrap_or("var/milebatch.db"),
            &crate::store::PasswordKeys {
                env: d.database_password_env.clone(),
                file: d.database_password_file.clone(),
                credential: d.database_password_credential.clone(),
            },
            &resolve,
        )
        .map_err(|m| invalid(format!("`daemon.database`: {m}")))?;
        let daemon = DaemonConfig {
            database: match &store {
                crate::store::Database::Sqlite(p) => p.clone(),
                crate::store::Database::Postgres(_) => PathBuf::new(),
            },
            store,
            data_dir: resolve(d.data_dir.as_deref().unwrap_or("var")),
            timezone,
            max_concurrent,
            shutdown_timeout,
            verify: maintenance_schedule(
                d.verify.as_ref(),
                Some(DEFAULT_VERIFY_SCHEDULE),
                "`daemon.verify`",
                &loc,
            )
            .map_err(invalid)?,
            backup: maintenance_schedule(d.backup.as_ref(), None, "`daemon.backup`", &loc)
                .map_err(invalid)?,
            backup_dir: d.backup_dir.as_ref().map(|p| resolve(p.get_ref())),
            calendar: closed_days(d.closed.as_ref(), &loc).map_err(invalid)?,
            keep: match &d.keep {
                None => DEFAULT_BACKUP_KEEP,
                Some(k) if *k.get_ref() == 0 => {
                    return Err(invalid(loc.at(
                        k,
                        "`daemon.keep`",
                        "must be at least 1 (the backup just taken is one of them)",
                    )))
                }
                Some(k) => *k.get_ref(),
            },
            metrics_listen: metrics_listen(
                d.metrics_listen.as_ref(),
                d.metrics_allow_remote,
                "daemon",
                &loc,
            )
            .map_err(invalid)?,
            smtp: match &d.smtp {
                None => None,
                Some(s) => Some(
                    crate::notify::SmtpConfig::from_raw(s.get_ref(), &resolve)
                        .map_err(|m| invalid(loc.at(s, "`daemon.smtp`", m)))?,
                ),
            },
            notify_retry: match &d.notify_retry {
                None => crate::notify::DEFAULT_RETRY,
                Some(s) => parse_duration(s.get_ref())
                    .map_err(|m| invalid(loc.at(s, "`daemon.notify_retry`", m)))?,
            },
            notify: match &d.notify {
                None => None,
                Some(n) => Some(
                    crate::notify::OpsNotify::from_raw(n.get_ref())
                        .map_err(|m| invalid(loc.at(n, "`daemon.notify`", m)))?,
                ),
            },
        };
        if let (Some(n), None) = (&d.notify, &daemon.smtp) {
            return Err(invalid(loc.at(
                n,
                "`daemon.notify`",
                "sends e-mail: it needs [daemon.smtp], the SMTP server to send through",
            )));
        }
        if let (Some(b), None) = (&d.backup, &daemon.backup_dir) {
            if daemon.backup.is_some() {
                return Err(invalid(loc.at(
                    b,
                    "`daemon.backup`",
                    "needs `backup_dir`: the folder scheduled backups are written to (not the database's own folder)",
                )));
            }
        }

        let server =
            server_config(raw.server.unwrap_or_default(), &loc, &resolve).map_err(invalid)?;

        let mut partners = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for p in raw.partner {
            let id = p.id.get_ref().clone();
            if !valid_id(&id) {
                return Err(invalid(loc.at(
                    &p.id,
                    "`partner.id`",
                    format!("{id:?} is not a valid id: use 1-64 of a-z, 0-9 and '-'"),
                )));
            }
            let line = loc.line(p.id.span().start);
            if let Some(first) = seen.insert(id.clone(), line) {
                return Err(invalid(format!(
                    "line {line}: `partner.id`: {id:?} is already used by the partner on line {first}"
                )));
            }
            let ctx = |key: &str| format!("partner {id:?} `{key}`");
            let schedule = Schedule::parse(p.schedule.get_ref())
                .map_err(|e| invalid(loc.at(&p.schedule, &ctx("schedule"), e)))?;
            let on_holiday = match &p.on_holiday {
                None => OnHoliday::default(),
                Some(v) => parse_on_holiday(v.get_ref())
                    .map_err(|e| invalid(loc.at(v, &ctx("on_holiday"), e)))?,
            };
            let expect_file = match &p.expect_file {
                None => ExpectFile::No,
                Some(v) => parse_expect_file(v.get_ref())
                    .map_err(|e| invalid(loc.at(v, &ctx("expect_file"), e)))?,
            };
            let max_miles = *p.max_miles_per_row.get_ref();
            if max_miles == 0 || max_miles > MILES_PER_ROW_CEILING {
                return Err(invalid(loc.at(
                    &p.max_miles_per_row,
                    &ctx("max_miles_per_row"),
                    format!("must be between 1 and {MILES_PER_ROW_CEILING}"),
                )));
            }
            let ratio = *p.max_error_ratio.get_ref();
            if !(0.0..=1.0).contains(&ratio) {
                return Err(invalid(loc.at(
                    &p.max_error_ratio,
                    &ctx("max_error_ratio"),
                    "must be between 0.0 and 1.0",
                )));
            }
            let header = match &p.header {
                None => Header::Auto,
                Some(v) => match v.get_ref() {
                    toml::Value::Boolean(true) => Header::Yes,
                    toml::Value::Boolean(false) => Header::No,
                    toml::Value::String(s) if s == "auto" => Header::Auto,
                    _ => {
                        return Err(invalid(loc.at(
                            v,
                            &ctx("header"),
                            "must be true, false or \"auto\"",
                        )))
                    }
                },
            };
            let resend_window =
                match &p.resend_window {
                    None => DEFAULT_RESEND_WINDOW,
                    Some(s) => match parse_duration(s.get_ref()) {
                        Ok(d) if d.is_zero() => return Err(invalid(loc.at(
                            s,
                            &ctx("resend_window"),
                            "must be longer than 0 (to turn the check off: resend_check = \"off\")",
                        ))),
                        Ok(d) => d,
                        Err(m) => return Err(invalid(loc.at(s, &ctx("resend_window"), m))),
                    },
                };
            let resend_ratio = match &p.resend_ratio {
                None => 0.5,
                Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
                    return Err(invalid(loc.at(
                        r,
                        &ctx("resend_ratio"),
                        "must be between 0.0 and 1.0",
                    )))
                }
                Some(r) => *r.get_ref(),
            };
            let unique_partner_key = p.unique_partner_key.as_ref().is_some_and(|u| *u.get_ref());
            if let Some(u) = p
                .unique_partner_key
                .as_ref()
                .filter(|_| unique_partner_key && p.allow_duplicate_rows)
            {
                return Err(invalid(loc.at(
                    u,
                    &ctx("unique_partner_key"),
                    "cannot be combined with allow_duplicate_rows = true: a key that is unique per exchange never repeats",
                )));
            }
            let source = SourceConfig::from_raw(p.source.get_ref(), &resolve)
                .map_err(|m| invalid(loc.at(&p.source, &ctx("source"), m)))?;
            let api = match &p.api {
                None => ApiConfig::default(),
                Some(a) => api_config(a.get_ref(), max_miles)
                    .map_err(|m| invalid(loc.at(a, &ctx("api"), m)))?,
            };
            let summary = p.summary.as_ref().is_some_and(|s| *s.get_ref());
            if let (Some(s), SourceConfig::Http(h)) = (p.summary.as_ref(), &source) {
                // One fixed URL for every report: the summary would overwrite
                // the error report there.
                if let Some(u) = h
                    .errors_url
                    .as_ref()
                    .filter(|u| summary && !u.ends_with('/'))
                {
                    return Err(invalid(loc.at(
                        s,
                        &ctx("summary"),
                        format!(
                            "needs an errors_url ending in \"/\" (it is {u:?}): the summary is PUT beside \
                             the error report as <stem>.summary.csv, and a fixed URL would receive both"
                        ),
                    )));
                }
            }
            let pgp = match &p.pgp {
                None => None,
                Some(g) => Some(
                    crate::pipeline::pgp::PgpConfig::from_raw(g.get_ref(), &resolve)
                        .map_err(|m| invalid(loc.at(g, &ctx("pgp"), m)))?,
                ),
            };
            let notify = match &p.notify {
                None => None,
                Some(n) => {
                    let parsed = crate::notify::PartnerNotify::from_raw(n.get_ref(), &resolve)
                        .map_err(|m| invalid(loc.at(n, &ctx("notify"), m)))?;
                    if !parsed.email.is_empty() && daemon.smtp.is_none() {
                        return Err(invalid(loc.at(
                            n,
                            &ctx("notify"),
                            "`email` needs [daemon.smtp], the SMTP server to send through",
                        )));
                    }
                    Some(parsed)
                }
            };
            partners.push(PartnerConfig {
                name: p.name.unwrap_or_else(|| id.clone()),
                id,
                schedule,
                on_holiday,
                encoding: p.encoding,
                header,
                max_miles_per_row: max_miles,
                max_error_ratio: ratio,
                allow_duplicate_rows: p.allow_duplicate_rows,
                expect_file,
                resend_check: p.resend_check,
                resend_window,
                resend_ratio,
                unique_partner_key,
                source,
                api,
                summary,
                pgp,
                notify,
            });
        }
        Ok(Config {
            path: path.to_owned(),
            daemon,
            server,
            partners,
        })
    }

    pub fn partner(&self, id: &str) -> Option<&PartnerConfig> {
        self.partners.iter().find(|p| p.id == id)
    }
}

/// `[server]`, validated: the same policy as plain FTP, so that API keys,
/// passwords and session cookies never cross a network in clear by accident.
fn server_config(
    r: RawServer,
    loc: &Locator<'_>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<ServerConfig, String> {
    let listen = match &r.listen {
        None => DEFAULT_LISTEN.parse().expect("a valid default"),
        Some(l) => l.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
            loc.at(
                l,
                "`server.listen`",
                format!(
                    "{:?} is not an address with a port, like \"127.0.0.1:8443\" or \"[::1]:8443\"",
                    l.get_ref()
                ),
            )
        })?,
    };
    let tls = match (&r.tls_cert, &r.tls_key) {
        (Some(c), Some(k)) => Some(TlsFiles {
            cert: resolve(c.get_ref()),
            key: resolve(k.get_ref()),
        }),
        (None, None) => None,
        (Some(c), None) => {
            return Err(loc.at(
                c,
                "`server.tls_cert`",
                "needs `tls_key` (the certificate's private key, PEM)",
            ))
        }
        (None, Some(k)) => {
            return Err(loc.at(
                k,
                "`server.tls_key`",
                "needs `tls_cert` (the certificate chain, PEM)",
            ))
        }
    };
    if tls.is_none() && !listen.ip().is_loopback() && !r.insecure_plaintext {
        let msg = format!(
            "{listen} is not a loopback address: set `tls_cert` and `tls_key`, or \
             `insecure_plaintext = true` to serve plain HTTP there anyway (API keys and \
             passwords would cross the network unencrypted)"
        );
        return Err(match &r.listen {
            Some(l) => loc.at(l, "`server.listen`", msg),
            None => format!("`server.listen`: {msg}"),
        });
    }
    Ok(ServerConfig {
        listen,
        tls,
        insecure_plaintext: r.insecure_plaintext,
        metrics_listen: metrics_listen(
            r.metrics_listen.as_ref(),
            r.metrics_allow_remote,
            "server",
            loc,
        )?,
        limits: conn_limits(&r, loc)?,
        public_url: match &r.public_url {
            None => None,
            Some(u) => {
                Some(public_url(u.get_ref()).map_err(|m| loc.at(u, "`server.public_url`", m))?)
            }
        },
    })
}

/// `[server]`'s connection limits: every count at least 1, every time at
/// least 1 s (a zero would close every connection, or none).
/// `[server] public_url`: an absolute http(s) URL, kept without a
/// trailing slash.
fn public_url(u: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("{u:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(format!(
            "{u:?} is not the site's address: write it as people open it, e.g. \"https://milebatch.example.jp\""
        ));
    }
    Ok(u.trim_end_matches('/').to_owned())
}

fn conn_limits(r: &RawServer, loc: &Locator<'_>) -> Result<ConnLimits, String> {
    let d = ConnLimits::default();
    let count = |v: &Option<Spanned<u64>>, key: &str, default: u64| -> Result<u64, String> {
        match v {
            None => Ok(default),
            Some(n) if *n.get_ref() == 0 => {
                Err(loc.at(n, &format!("`server.{key}`"), "must be at least 1"))
            }
            Some(n) => Ok(*n.get_ref()),
        }
    };
    let time =
        |v: &Option<Spanned<String>>, key: &str, default: Duration| -> Result<Duration, String> {
            let Some(s) = v else { return Ok(default) };
            let key = format!("`server.{key}`");
            let t = parse_duration(s.get_ref()).map_err(|m| loc.at(s, &key, m))?;
            if t < Duration::from_secs(1) {
                return Err(loc.at(s, &key, "must be at least 1s"));
            }
            Ok(t)
        };
    let streams = count(
        &r.http2_max_streams,
        "http2_max_streams",
        d.http2_max_streams.into(),
    )?;
    Ok(ConnLimits {
        max_connections: count(
            &r.max_connections,
            "max_connections",
            d.max_connections as u64,
        )? as usize,
        max_connections_per_address: count(
            &r.max_connections_per_address,
            "max_connections_per_address",
            d.max_connections_per_address as u64,
        )? as usize,
        header_timeout: time(&r.header_timeout, "header_timeout", d.header_timeout)?,
        idle_timeout: time(&r.idle_timeout, "idle_timeout", d.idle_timeout)?,
        tls_handshake_timeout: time(
            &r.tls_handshake_timeout,
            "tls_handshake_timeout",
            d.tls_handshake_timeout,
        )?,
        http2_keepalive_interval: time(
            &r.http2_keepalive_interval,
            "http2_keepalive_interval",
            d.http2_keepalive_interval,
        )?,
        http2_keepalive_timeout: time(
            &r.http2_keepalive_timeout,
            "http2_keepalive_timeout",
            d.http2_keepalive_timeout,
        )?,
        http2_max_streams: u32::try_from(streams)
            .map_err(|_| "`server.http2_max_streams`: at most 4294967295".to_owned())?,
    })
}

/// `[daemon]` or `[server]` `metrics_listen`: off unless set (the daemon and
/// `serve` on one host would otherwise fight over one default port), and
/// loopback only unless `metrics_allow_remote = true`: the figures name
/// partners and their files, and the listener is plain HTTP without
/// authentication, so exposing it is a decision, never a default.
fn metrics_listen(
    raw: Option<&Spanned<String>>,
    allow_remote: bool,
    section: &str,
    loc: &Locator<'_>,
) -> Result<Option<std::net::SocketAddr>, String> {
    let Some(l) = raw else { return Ok(None) };
    let key = format!("`{section}.metrics_listen`");
    let addr = l.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
        loc.at(
            l,
            &key,
            format!(
                "{:?} is not an address with a port, like \"127.0.0.1:9464\" or \"[::1]:9464\"",
                l.get_ref()
            ),
        )
    })?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(loc.at(
            l,
            &key,
            format!(
                "{addr} is not a loopback address: /metrics is plain HTTP without a login and \
                 names partners and their files; set `metrics_allow_remote = true` in [{section}] \
                 to serve it there anyway (and restrict who can reach it)"
            ),
        ));
    }
    Ok(Some(addr))
}

/// `[partner.api]`, validated. An enabled API needs a daily cap: no key,
/// stolen or not, may credit without bound.
fn api_config(a: &RawApi, max_miles: u64) -> Result<ApiConfig, String> {
    let mut rate = parse_rate(a.rate.as_deref().unwrap_or(DEFAULT_API_RATE))
        .map_err(|m| format!("`rate`: {m}"))?;
    if let Some(b) = a.burst {
        if b == 0 {
            return Err("`burst` must be at least 1".into());
        }
        rate.burst = b;
    }
    let daily_miles_limit = match a.daily_miles_limit {
        Some(0) => return Err("`daily_miles_limit` must be at least 1".into()),
        Some(n) if n > MILES_PER_ROW_CEILING * 1000 => {
            return Err(format!(
                "`daily_miles_limit` must be at most {}",
                MILES_PER_ROW_CEILING * 1000
            ))
        }
        Some(n) => n,
        None if a.enabled => {
            return Err(format!(
                "`daily_miles_limit` is required when `enabled = true` (the most miles all of \
                 the partner's keys together may credit per day, e.g. {})",
                max_miles.saturating_mul(1000)
            ))
        }
        None => 0,
    };
    let daily_verify_limit = match a.daily_verify_limit {
        Some(0) => return Err("`daily_verify_limit` must be at least 1".into()),
        Some(n) => n,
        None => DEFAULT_DAILY_VERIFY_LIMIT,
    };
    Ok(ApiConfig {
        enabled: a.enabled,
        rate,
        daily_miles_limit,
        daily_verify_limit,
    })
}

/// `toml`'s own message carries line, column and a snippet over several
/// lines; operators read logs line by line, so keep it on one.
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message();
    match e.span() {
        Some(span) => {
            let loc = Locator { text };
            let line = loc.line(span.start);
            // Name the key of that line; never echo its value (it could be a
            // secret someone pasted by mistake).
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !msg.contains(*k));
            match key {
                Some(k) => format!("line {line}: `{k}`: {msg}"),
                None => format!("line {line}: {msg}"),
            }
        }
        None => msg.to_string(),
    }
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `"60s"`, `"5m"`, `"1h 30m"`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration (e.g. \"30s\", \"5m\"): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
database = "var/m.db"
data_dir = "var"
timezone = "Asia/Tokyo"

[[partner]]
id = "demo-shop"
name = "Demo Shop"
schedule = "daily 03:00"
encoding = "shift_jis"
header = true
max_miles_per_row = 100000
max_error_ratio = 0.5
allow_duplicate_rows = false
[partner.source]
kind = "local"
dir = "inbox/demo"
"#;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("/etc/mb/partners.toml"))
    }

    #[test]
    fn server_connection_limits_parse_with_defaults_and_bounds() {
        let with = |server: &str| {
            parse(&GOOD.replace(
                "timezone = \"Asia/Tokyo\"\n",
                &format!("timezone = \"Asia/Tokyo\"\n[server]\n{server}\n"),
            ))
        };
        assert_eq!(parse(GOOD).unwrap().server.limits, ConnLimits::default());
        let c = with(
            "max_connections = 100\nmax_connections_per_address = 7\nheader_timeout = \"3s\"\n\
             idle_timeout = \"2m\"\ntls_handshake_timeout = \"4s\"\nhttp2_keepalive_interval = \"5s\"\n\
             http2_keepalive_timeout = \"6s\"\nhttp2_max_streams = 8",
        )
        .unwrap();
        let l = c.server.limits;
        assert_eq!((l.max_connections, l.max_connections_per_address), (100, 7));
        assert_eq!(l.header_timeout, Duration::from_secs(3));
        assert_eq!(l.idle_timeout, Duration::from_secs(120));
        assert_eq!(l.tls_handshake_timeout, Duration::from_secs(4));
        assert_eq!(l.http2_keepalive_interval, Duration::from_secs(5));
        assert_eq!(l.http2_keepalive_timeout, Duration::from_secs(6));
        assert_eq!(l.http2_max_streams, 8);
        let e = with("max_connections = 0").unwrap_err().to_string();
        assert!(
            e.contains("`server.max_connections`: must be at least 1"),
            "{e}"
        );
        let e = with("idle_timeout = \"500ms\"").unwrap_err().to_string();
        assert!(
            e.contains("`server.idle_timeout`: must be at least 1s"),
            "{e}"
        );
        let e = with("header_timeout = \"soon\"").unwrap_err().to_string();
        assert!(e.contains("`server.header_timeout`"), "{e}");
    }

    /// docs/operations-server.md's table says the defaults the code has.
    #[test]
    fn the_documented_server_defaults_are_the_defaults() {
        let doc = include_str!("../docs/operations-server.md");
        let d = ConnLimits::default();
        let secs = |t: Duration| format!("\"{}s\"", t.as_secs());
        for (key, value) in [
            ("max_connections", d.max_connections.to_string()),
            (
                "max_connections_per_address",
                d.max_connections_per_address.to_string(),
            ),
            ("header_timeout", secs(d.header_timeout)),
            ("idle_timeout", secs(d.idle_timeout)),
            ("tls_handshake_timeout", secs(d.tls_handshake_timeout)),
            ("http2_keepalive_interval", secs(d.http2_keepalive_interval)),
            ("http2_keepalive_timeout", secs(d.http2_keepalive_timeout)),
            ("http2_max_streams", d.http2_max_streams.to_string()),
        ] {
            let row = format!("| `{key}` | `{value}` |");
            assert!(doc.contains(&row), "docs/operations-server.md lacks {row}");
        }
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_loopback_unless_allowed() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.daemon.metrics_listen, None);
        assert_eq!(c.server.metrics_listen, None);
        let with = |daemon: &str, server: &str| {
            parse(&GOOD.replace(
                "timezone = \"Asia/Tokyo\"\n",
                &format!("timezone = \"Asia/Tokyo\"\n{daemon}\n[server]\n{server}\n"),
            ))
        };
        let c = with(
            "metrics_listen = \"127.0.0.1:9464\"",
            "metrics_listen = \"[::1]:9465\"",
        )
        .unwrap();
        assert_eq!(
            c.daemon.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(c.server.metrics_listen, Some("[::1]:9465".parse().unwrap()));
        let e = with("metrics_listen = \"0.0.0.0:9464\"", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`daemon.metrics_listen`"), "{e}");
        assert!(e.contains("metrics_allow_remote = true"), "{e}");
        let e = with("", "metrics_listen = \"10.0.0.1:9464\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 8: `server.metrics_listen`"), "{e}");
        let e = with("metrics_listen = \"localhost\"", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an address with a port"), "{e}");
        let c = with(
            "metrics_listen = \"0.0.0.0:9464\"\nmetrics_allow_remote = true",
            "metrics_listen = \"0.0.0.0:9465\"\nmetrics_allow_remote = true",
        )
        .unwrap();
        assert_eq!(
            c.daemon.metrics_listen,
            Some("0.0.0.0:9464".parse().unwrap())
        );
        assert_eq!(
            c.server.metrics_listen,
            Some("0.0.0.0:9465".parse().unwrap())
        );
    }

    #[test]
    fn good_config_resolves_paths_against_its_folder() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.daemon.database, Path::new("/etc/mb/var/m.db"));
        let p = &c.partners[0];
        assert_eq!(p.encoding, Encoding::ShiftJis);
        assert_eq!(p.header, Header::Yes);
        assert_eq!(p.resend_check, ResendCheck::Refuse);
        assert_eq!(p.resend_window, DEFAULT_RESEND_WINDOW);
        assert_eq!(p.resend_ratio, 0.5);
        assert!(!p.unique_partner_key);
        match &p.source {
            SourceConfig::Local(l) => assert_eq!(l.dir, Path::new("/etc/mb/inbox/demo")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_key_and_line() {
        let bad = GOOD.replace("encoding = \"shift_jis\"", "encoding = \"latin1\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 11"), "{e}");
        assert!(e.contains("latin1"), "{e}");

        let bad = GOOD.replace("id = \"demo-shop\"", "id = \"Demo Shop\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 8") && e.contains("`partner.id`"), "{e}");

        let bad = GOOD.replace("daily 03:00", "daily 25:00");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 10") && e.contains("schedule"), "{e}");

        let bad = GOOD.replace("max_error_ratio = 0.5", "max_error_ratio = 1.5");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("line 14") && e.contains("max_error_ratio"),
            "{e}"
        );

        let bad = GOOD.replace("header = true", "headers = true");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 12") && e.contains("headers"), "{e}");
    }

    #[test]
    fn toml_errors_name_the_key_but_never_the_value() {
        let bad = GOOD.replace("header = true", "header = true\nheader = \"s3cret\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 13: `header`"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn colliding_partner_ids_are_refused() {
        let twice = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[partner]]").unwrap()..]);
        let e = parse(&twice).unwrap_err().to_string();
        assert!(e.contains("already used by the partner on line 8"), "{e}");
    }

    #[test]
    fn partner_api_section() {
        let c = parse(GOOD).unwrap();
        assert!(!c.partners[0].api.enabled);
        let t = format!(
            "{GOOD}[partner.api]\nenabled = true\nrate = \"10/m\"\nburst = 5\ndaily_miles_limit = 5000\n"
        );
        let api = parse(&t).unwrap().partners[0].api.clone();
        assert!(api.enabled);
        assert_eq!(api.rate.burst, 5);
        assert_eq!(parse_rate("10/m").unwrap().burst, 10);
        assert!((api.rate.per_second - 10.0 / 60.0).abs() < 1e-9);
        assert_eq!(api.daily_miles_limit, 5000);
        let e = parse(&format!("{GOOD}[partner.api]\nenabled = true\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("daily_miles_limit") && e.contains("line 19"),
            "{e}"
        );
        let e = parse(&format!(
            "{GOOD}[partner.api]\nrate = \"fast\"\ndaily_miles_limit = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"fast\" is not a rate"), "{e}");
        assert_eq!(parse_rate("50/s").unwrap().burst, 50);
        assert!(parse_rate("0/s").is_err() && parse_rate("5/d").is_err());
    }

    #[test]
    fn header_and_resend_keys() {
        let without = GOOD.replace("header = true\n", "");
        assert_eq!(parse(&without).unwrap().partners[0].header, Header::Auto);
        for (text, want) in [("false", Header::No), ("\"auto\"", Header::Auto)] {
            let c = parse(&GOOD.replace("header = true", &format!("header = {text}"))).unwrap();
            assert_eq!(c.partners[0].header, want);
        }
        let e = parse(&GOOD.replace("header = true", "header = \"yes\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 12") && e.contains("true, false or \"auto\""),
            "{e}"
        );

        let more = GOOD.replace(
            "header = true",
            "header = true\nresend_check = \"warn\"\nresend_window = \"30d\"\nresend_ratio = 0.8\nunique_partner_key = true",
        );
        let p = &parse(&more).unwrap().partners[0];
        assert_eq!(p.resend_check, ResendCheck::Warn);
        assert_eq!(p.resend_window, Duration::from_secs(30 * 86400));
        assert_eq!(p.resend_ratio, 0.8);
        assert!(p.unique_partner_key);

        for (bad, needle) in [
            ("resend_check = \"maybe\"", "resend_check"),
            ("resend_window = \"0s\"", "resend_check = \"off\""),
            ("resend_window = \"soon\"", "resend_window"),
            ("resend_ratio = 2.0", "resend_ratio"),
        ] {
            let e = parse(&GOOD.replace("header = true", bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("line 12") && e.contains(needle), "{bad}: {e}");
        }
        let e = parse(&GOOD.replace(
            "allow_duplicate_rows = false",
            "allow_duplicate_rows = true\nunique_partner_key = true",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 16") && e.contains("allow_duplicate_rows"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn summary_key_and_a_fixed_errors_url() {
        assert!(!parse(GOOD).unwrap().partners[0].summary, "off by default");
        let on = GOOD.replace(
            "allow_duplicate_rows = false\n",
            "allow_duplicate_rows = false\nsummary = true\n",
        );
        assert!(parse(&on).unwrap().partners[0].summary);
        let http = |errors_url: &str| {
            on.replace(
                "kind = \"local\"\ndir = \"inbox/demo\"",
                &format!("kind = \"https\"\nurl = \"https://p.example/x.csv\"\nerrors_url = \"{errors_url}\""),
            )
        };
        assert!(parse(&http("https://p.example/reports/")).is_ok());
        let e = parse(&http("https://p.example/reports/errors.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`summary`") && e.contains("ending in \"/\"") && e.contains("line "),
            "{e}"
        );
    }

    #[test]
    fn closed_days_on_holiday_and_expect_file() {
        let c = parse(GOOD).unwrap();
        assert!(c.daemon.calendar.closed().is_empty());
        assert_eq!(c.partners[0].on_holiday, OnHoliday::Run);
        assert_eq!(c.partners[0].expect_file, ExpectFile::No);
        let daemon = |extra: &str| {
            GOOD.replace(
                "timezone = \"Asia/Tokyo\"\n",
                &format!("timezone = \"Asia/Tokyo\"\n{extra}"),
            )
        };
        let c = parse(&daemon("closed = [\"12-31\", \"2027-05-06\", \"12-31\"]\n")).unwrap();
        assert_eq!(
            c.daemon
                .calendar
                .closed()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            ["12-31", "2027-05-06"]
        );
        let e = parse(&daemon("closed = [\"12-31\", \"12/30\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 6: `daemon.closed`") && e.contains("\"12/30\"") && e.contains("MM-DD"),
            "{e}"
        );
        let e = parse(&daemon("closed = [\"02-30\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let partner = |extra: &str| {
            GOOD.replacen(
                "schedule = \"daily 03:00\"\n",
                &format!("schedule = \"daily 03:00\"\n{extra}"),
                1,
            )
        };
        let c = parse(&partner("on_holiday = \"next\"\nexpect_file = true\n")).unwrap();
        assert_eq!(c.partners[0].on_holiday, OnHoliday::Next);
        assert_eq!(c.partners[0].expect_file, ExpectFile::BusinessDays);
        let c = parse(&partner(
            "on_holiday = \"skip\"\nexpect_file = \"every-run\"\n",
        ))
        .unwrap();
        assert_eq!(c.partners[0].on_holiday, OnHoliday::Skip);
        assert_eq!(c.partners[0].expect_file, ExpectFile::EveryRun);
        let e = parse(&partner("on_holiday = \"later\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`on_holiday`") && e.contains("\"later\"") && e.contains("\"previous\""),
            "{e}"
        );
        let e = parse(&partner("expect_file = \"weekdays\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`expect_file`") && e.contains("every-run"),
            "{e}"
        );
    }

    #[test]
    fn daemon_maintenance_schedules() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.daemon.verify.as_ref().unwrap().to_string(),
            "weekly sun 05:00"
        );
        assert!(c.daemon.backup.is_none() && c.daemon.backup_dir.is_none());
        assert_eq!(c.daemon.keep, 14);
        let with = |extra: &str| {
            GOOD.replace(
                "timezone = \"Asia/Tokyo\"\n",
                &format!("timezone = \"Asia/Tokyo\"\n{extra}"),
            )
        };
        let c = parse(&with(
            "verify = \"off\"\nbackup = \"daily 04:00\"\nbackup_dir = \"backups\"\nkeep = 3\n",
        ))
        .unwrap();
        assert!(c.daemon.verify.is_none());
        assert_eq!(c.daemon.backup.as_ref().unwrap().to_string(), "daily 04:00");
        assert_eq!(
            c.daemon.backup_dir.as_deref(),
            Some(Path::new("/etc/mb/backups"))
        );
        assert_eq!(c.daemon.keep, 3);
        let e = parse(&with("backup = \"daily 04:00\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`daemon.backup`") && e.contains("backup_dir"),
            "{e}"
        );
        let e = parse(&with("verify = \"sundays\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 6: `daemon.verify`") && e.contains("\"off\""),
            "{e}"
        );
        let e = parse(&with(
            "backup = \"daily 04:00\"\nbackup_dir = \"b\"\nkeep = 0\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`daemon.keep`"), "{e}");
    }
}
