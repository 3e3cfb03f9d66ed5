//! The registry of engines: `[daemon] database` names the engine. A
//! `postgres://` (or `postgresql://`) URL is PostgreSQL; anything else is
//! the path of an SQLite file, exactly as before PostgreSQL existed.
//!
//! What must stay true:
//! - a password never sits in the URL (refused here, at config load): it
//!   comes from `database_password_env` / `_file` / `_credential`, like
//!   every other secret, and no message or log line shows it;
//! - a PostgreSQL connection is either TLS with the server's certificate
//!   and name verified (`sslmode=verify-full` and `sslrootcert`), or plain
//!   to loopback or UNIX-socket hosts only;
//! - [`Database`]'s `Display` is safe to print.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::source::secret::SecretRef;

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum Database {
    /// An SQLite file (the default, `var/milebatch.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (one or more hosts). Boxed: the connection
    /// settings are large, and most installs are SQLite.
    Postgres(Box<PgTarget>),
}

/// How the PostgreSQL server is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// No TLS: every host is loopback or a UNIX socket.
    Plain,
    /// TLS, the server's certificate chained to these roots and its name
    /// checked against the host connected to.
    VerifyFull(RootCert),
}

/// `sslrootcert`: a PEM file of CA certificates, or `system` (the
/// operating system's roots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

/// A PostgreSQL database to connect to: everything but the password.
#[derive(Clone)]
pub struct PgTarget {
    /// Hosts, port(s), user, database, `target_session_attrs`, timeouts.
    /// Never holds a password.
    pub(crate) config: postgres::Config,
    pub tls: PgTls,
    pub password: Option<SecretRef>,
    /// The URL as given (it has no password): what messages show.
    pub url: String,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("password", &self.password)
            .finish()
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(t) => f.write_str(&t.url),
        }
    }
}

/// How long one connection attempt to one host may take when the URL does
/// not say (`connect_timeout`): a dead host must not hang a command.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `database_password_*` keys, as given.
#[derive(Debug, Default, Clone)]
pub struct PasswordKeys {
    pub env: Option<String>,
    pub file: Option<String>,
    pub credential: Option<String>,
}

impl Database {
    /// `[daemon] database` and its password keys. `resolve` makes a relative
    /// path absolute (against the config file's folder). `Err`: a one-line
    /// message saying what to change.
    pub fn parse(
        raw: &str,
        password: &PasswordKeys,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Database, String> {
        let password_ref = SecretRef::from_keys(
            &password.env,
            &password.file,
            &password.credential,
            "database password",
            resolve,
        )?;
        if !is_postgres_url(raw) {
            if password_ref.is_some() {
                return Err(
                    "`database_password_*` is for a postgres:// database; an SQLite file has no password: remove it"
                        .into(),
                );
            }
            return Ok(Database::Sqlite(resolve(raw)));
        }
        parse_postgres(raw, password_ref, resolve).map(|t| Database::Postgres(Box::new(t)))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }
}

fn is_postgres_url(raw: &str) -> bool {
    raw.starts_with("postgres://") || raw.starts_with("postgresql://")
}

fn parse_postgres(
    raw: &str,
    password: Option<SecretRef>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<PgTarget, String> {
    // tokio-postgres knows neither `verify-full` nor `sslrootcert`: they are
    // taken out here, and TLS is set up by us (src/store/postgres.rs).
    let (base, query) = raw.split_once('?').unwrap_or((raw, ""));
    let mut sslmode = None;
    let mut rootcert = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => sslmode = Some(v.to_owned()),
            "sslrootcert" => rootcert = Some(percent_decode(v)?),
            "password" => return Err(no_password_message()),
            _ => rest.push(pair),
        }
    }
    let stripped = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config: postgres::Config = stripped.parse().map_err(|e| {
        format!("not a PostgreSQL URL this milebatch understands ({e}); e.g. postgres://milebatch@db1.example,db2.example:5432/milebatch?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=/etc/milebatch/db-ca.pem")
    })?;
    if config.get_password().is_some() {
        return Err(no_password_message());
    }
    if config.get_user().is_none() {
        return Err(
            "names no user: write it before the host, e.g. postgres://milebatch@db.example/milebatch"
                .into(),
        );
    }
    if config.get_hosts().is_empty() {
        return Err("names no host: e.g. postgres://milebatch@127.0.0.1:5432/milebatch".into());
    }
    if config.get_dbname().is_none() {
        return Err("names no database: add it after the host, e.g. postgres://milebatch@db.example/milebatch".into());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("milebatch");
    }
    let local = all_local(&config);
    let tls = match sslmode.as_deref() {
        Some("verify-full") => {
            let root = match rootcert.as_deref() {
                None => {
                    return Err("`sslmode=verify-full` needs `sslrootcert`: the CA file that signed the server's certificate (or `sslrootcert=system` for the system's CAs)".into())
                }
                Some("system") => RootCert::System,
                Some(p) => RootCert::File(resolve(p)),
            };
            PgTls::VerifyFull(root)
        }
        Some("disable") | None if local => {
            if rootcert.is_some() {
                return Err("`sslrootcert` is given but TLS is not: add `sslmode=verify-full`".into());
            }
            PgTls::Plain
        }
        Some("disable") | None => {
            return Err("a PostgreSQL host that is not loopback must be reached over verified TLS: add `sslmode=verify-full&sslrootcert=/path/to/ca.pem` to the URL".into())
        }
        Some(other) => {
            return Err(format!(
                "`sslmode={other}` does not check the server's name: use `sslmode=verify-full` with `sslrootcert` (or `sslmode=disable` for a loopback or UNIX-socket host)"
            ))
        }
    };
    Ok(PgTarget {
        config,
        tls,
        password,
        url: raw.to_owned(),
    })
}

fn no_password_message() -> String {
    "must not contain a password (it would be in every copy of partners.toml): remove it and give it with `database_password_env`, `database_password_file` or `database_password_credential`".into()
}

/// Every host is a UNIX socket folder or a loopback address.
fn all_local(config: &postgres::Config) -> bool {
    use postgres::config::Host;
    config.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => is_loopback_name(name),
    }) && config.get_hostaddrs().iter().all(|a| a.is_loopback())
}

/// `localhost`, or a loopback address (`[::1]` with or without brackets).
pub fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `%2F` and friends in `sslrootcert` (a path in a URL).
fn percent_decode(v: &str) -> Result<String, String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`sslrootcert={v}` has a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`sslrootcert={v}` is not UTF-8"))
}

/// The folder a path's relative parts are resolved against, for tests.
#[cfg(test)]
fn resolve_in(dir: &'static str) -> impl Fn(&str) -> PathBuf {
    move |p: &str| std::path::Path::new(dir).join(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(raw: &str) -> Result<Database, String> {
        Database::parse(raw, &PasswordKeys::default(), &resolve_in("/etc/mb"))
    }

    fn env_password() -> PasswordKeys {
        PasswordKeys {
            env: Some("MILEBATCH_DB_PASSWORD".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_path_is_sqlite_as_before() {
        match parse("var/m.db").unwrap() {
            Database::Sqlite(p) => assert_eq!(p, Path::new("/etc/mb/var/m.db")),
            other => panic!("{other:?}"),
        }
        let e = Database::parse("var/m.db", &env_password(), &resolve_in("/x")).unwrap_err();
        assert!(e.contains("SQLite file has no password"), "{e}");
    }

    #[test]
    fn the_issue_url_with_a_password_env_is_verified_tls_on_two_hosts() {
        let d = Database::parse(
            "postgres://milebatch@db1.example,db2.example:5432/milebatch?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=ca.pem",
            &env_password(),
            &resolve_in("/etc/mb"),
        )
        .unwrap();
        let Database::Postgres(t) = d else {
            panic!("not postgres")
        };
        assert_eq!(t.config.get_hosts().len(), 2);
        assert_eq!(
            t.config.get_target_session_attrs(),
            postgres::config::TargetSessionAttrs::ReadWrite
        );
        assert_eq!(
            t.tls,
            PgTls::VerifyFull(RootCert::File("/etc/mb/ca.pem".into()))
        );
        assert_eq!(t.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(
            t.password,
            Some(SecretRef::Env("MILEBATCH_DB_PASSWORD".into()))
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_with_what_to_do() {
        for url in [
            "postgres://mb:s3cret@127.0.0.1/mb",
            "postgres://mb@127.0.0.1/mb?password=s3cret",
        ] {
            let e = parse(url).unwrap_err();
            assert!(e.contains("must not contain a password"), "{e}");
            assert!(e.contains("database_password_env"), "{e}");
            assert!(!e.contains("s3cret"), "the secret is not echoed: {e}");
        }
    }

    #[test]
    fn plain_only_to_loopback_or_a_socket_and_verify_full_only() {
        for ok in [
            "postgres://mb@127.0.0.1:5432/mb",
            "postgres://mb@localhost/mb?sslmode=disable",
            "postgres://mb@[::1]:5433/mb",
            "postgresql://mb@%2Frun%2Fpostgresql/mb",
        ] {
            match parse(ok) {
                Ok(Database::Postgres(t)) => assert_eq!(t.tls, PgTls::Plain, "{ok}"),
                other => panic!("{ok}: {other:?}"),
            }
        }
        let e = parse("postgres://mb@db.example/mb").unwrap_err();
        assert!(e.contains("sslmode=verify-full"), "{e}");
        let e = parse("postgres://mb@127.0.0.1,db.example/mb?sslmode=disable").unwrap_err();
        assert!(e.contains("not loopback"), "{e}");
        let e = parse("postgres://mb@db.example/mb?sslmode=require").unwrap_err();
        assert!(e.contains("does not check the server's name"), "{e}");
        let e = parse("postgres://mb@db.example/mb?sslmode=verify-full").unwrap_err();
        assert!(e.contains("needs `sslrootcert`"), "{e}");
        match parse("postgres://mb@db.example/mb?sslmode=verify-full&sslrootcert=system") {
            Ok(Database::Postgres(t)) => {
                assert_eq!(t.tls, PgTls::VerifyFull(RootCert::System))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_parts_say_what_to_add() {
        assert!(parse("postgres://127.0.0.1/mb")
            .unwrap_err()
            .contains("no user"));
        assert!(parse("postgres://mb@127.0.0.1")
            .unwrap_err()
            .contains("no database"));
        assert!(parse("postgres://mb@127.0.0.1/mb?bogus=1")
            .unwrap_err()
            .contains("not a PostgreSQL URL"));
    }
}
