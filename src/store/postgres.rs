//! The PostgreSQL engine behind [`Exec`]: connecting (TLS through rustls,
//! the password from its secret, a writable primary among the URL's
//! hosts), statements, advisory locks, and migrations.
//!
//! What must stay true:
//! - a connection is only ever made to a writable primary
//!   (`target_session_attrs=read-write` is forced): a standby never takes a
//!   write, and after a failover the next connection finds the new primary;
//! - TLS verifies the server's certificate and name (`PgTls::VerifyFull`),
//!   or there is no TLS and every host is local (checked at config load);
//! - every connect failure is one line that says what to fix, and never
//!   contains the password;
//! - a migration and its `schema_version` row commit together, under one
//!   advisory lock, so two hosts starting at once migrate once.
//!
//! The client is the synchronous `postgres` crate (it drives tokio-postgres
//! on a runtime of its own): the pipeline, the daemon's runs and the CLI
//! are synchronous code. It must not be called from inside an async task
//! (`serve` will use tokio-postgres with a pool: docs/postgres.md).

use std::cell::RefCell;
use std::error::Error as _;
use std::sync::Arc;

use postgres::types::{IsNull, ToSql, Type};

use super::location::{PgTarget, PgTls, RootCert};
use super::migrations_pg::MIGRATIONS;
use super::{Cell, Engine, Exec, Row, StoreError, Value};

/// An open connection to the primary.
pub struct PgConn {
    client: RefCell<postgres::Client>,
    database: String,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("database", &self.database)
            .finish()
    }
}

/// Connect to the writable primary among `target`'s hosts, and migrate
/// (`migrate = false`: only check the schema version, for `check`).
pub fn connect(target: &PgTarget, migrate: bool) -> Result<PgConn, StoreError> {
    let fail = |message: String| StoreError::Connect {
        database: target.url.clone(),
        message,
    };
    let mut config = target.config.clone();
    config.target_session_attrs(postgres::config::TargetSessionAttrs::ReadWrite);
    if let Some(p) = &target.password {
        let secret = p.read().map_err(|e| fail(format!("password: {e}")))?;
        config.password(secret.expose());
    }
    let client = match &target.tls {
        PgTls::Plain => {
            config.ssl_mode(postgres::config::SslMode::Disable);
            config.connect(postgres::NoTls)
        }
        PgTls::VerifyFull(root) => {
            config.ssl_mode(postgres::config::SslMode::Require);
            let tls = tls_config(root).map_err(fail)?;
            config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        }
    }
    .map_err(|e| fail(explain_connect(&e, target)))?;
    let conn = PgConn {
        client: RefCell::new(client),
        database: target.url.clone(),
    };
    if migrate {
        conn.migrate()?;
    } else {
        conn.check_version()?;
    }
    Ok(conn)
}

fn tls_config(root: &RootCert) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match root {
        RootCert::System => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        RootCert::File(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "sslrootcert {}: no PEM certificate in it",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One line for a failed connect: what happened and what to do.
fn explain_connect(e: &postgres::Error, target: &PgTarget) -> String {
    use postgres::error::SqlState;
    let user = target.config.get_user().unwrap_or("?");
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return format!(
                "the server refused user {user:?} ({}): check the password in `database_password_*` and the server's pg_hba.conf",
                db.message()
            );
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return format!(
                "{}: create it (createdb -O {user} …) or fix the URL",
                db.message()
            );
        }
        return format!("the server said: {} ({})", db.message(), code.code());
    }
    // Walk the causes: rustls errors (inside an io::Error from the TLS
    // stream) and io errors sit under tokio-postgres's.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return tls_message(tls);
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.to_string().contains("does not allow writes") {
                return "no host in `daemon.database` is a writable primary (only read-only standbys answered): promote a standby or add the primary's host".to_owned();
            }
            return format!(
                "cannot reach any host ({io}): is PostgreSQL running there, listening on that address and port, and reachable from here?"
            );
        }
        cause = c.source();
    }
    let text = e.to_string();
    if text.contains("timeout") || text.contains("timed out") {
        return format!(
            "cannot reach any host ({text}): is PostgreSQL running there and reachable from here?"
        );
    }
    if text.contains("TLS") || text.contains("tls") || text.contains("SSL") {
        return format!("TLS: {text}: does the server have `ssl = on`?");
    }
    text
}

fn tls_message(tls: &rustls::Error) -> String {
    match tls {
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "TLS: the server's certificate does not name the host in `daemon.database` ({tls}): connect by a name on the certificate, or have a certificate issued for this name"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "TLS: the server's certificate is not trusted ({tls}): check `sslrootcert` names the CA that signed it"
        ),
        _ => format!("TLS: {tls}"),
    }
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Value::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::BOOL) => (*v != 0).to_sql(ty, out),
            (Value::Real(v), &Type::FLOAT8) => v.to_sql(ty, out),
            (Value::Text(v), _) if <&str as ToSql>::accepts(ty) => v.to_sql(ty, out),
            (Value::Blob(v), &Type::BYTEA) => v.to_sql(ty, out),
            (v, ty) => Err(format!("cannot bind {v:?} to a {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in to_sql, with a message naming both types.
        true
    }

    postgres::types::to_sql_checked!();
}

fn cells(row: &postgres::Row) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_();
        let cell = match *ty {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Cell::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Cell::Int(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Cell::Int(v.into())),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Cell::Real),
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Blob),
            _ if <String as postgres::types::FromSql>::accepts(ty) => {
                row.try_get::<_, Option<String>>(i)?.map(Cell::Text)
            }
            _ => {
                return Err(StoreError::Decode {
                    column: i,
                    wanted: "of a type the store reads (bigint, text, bytea, boolean, double)",
                })
            }
        };
        out.push(cell.unwrap_or(Cell::Null));
    }
    Ok(Row(out))
}

fn params<'a>(args: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Exec for PgConn {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, StoreError> {
        let sql = super::to_postgres(sql);
        Ok(self.client.borrow_mut().execute(&*sql, &params(args))?)
    }

    fn query(&self, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let sql = super::to_postgres(sql);
        let rows = self.client.borrow_mut().query(&*sql, &params(args))?;
        rows.iter().map(cells).collect()
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.client.borrow_mut().batch_execute(sql)?)
    }

    fn insert_id(&self, sql: &str, args: &[Value<'_>]) -> Result<i64, StoreError> {
        let row = self.query(&format!("{sql} RETURNING id"), args)?;
        row.first()
            .ok_or(StoreError::Decode {
                column: 0,
                wanted: "a returned id",
            })?
            .int(0)
    }

    fn lock(&self, scope: &str) -> Result<(), StoreError> {
        self.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(?1, 0))",
            crate::store_args![scope],
        )
        .map(drop)
    }
}

impl PgConn {
    /// `COPY … FROM STDIN` (text format) with the rows `write` produces, in
    /// the caller's transaction; the number of rows the server took. Bulk
    /// loads only (members import, file credits, `db copy`): one round trip
    /// for the whole stream instead of one statement per row. Write each
    /// field through [`copy_text`] and end each row with `\n`. An `Err`
    /// from `write` aborts the COPY (nothing of it stays) and is returned.
    pub fn copy_in<T, E>(
        &self,
        sql: &str,
        write: impl FnOnce(&mut dyn std::io::Write) -> Result<T, E>,
    ) -> Result<(T, u64), E>
    where
        E: From<StoreError>,
    {
        use std::io::Write as _;
        let mut client = self.client.borrow_mut();
        let mut w = client.copy_in(sql).map_err(StoreError::from)?;
        // The writer sends a chunk per write call: buffer to 1 MiB chunks.
        let mut buf = std::io::BufWriter::with_capacity(1 << 20, &mut w);
        let out = write(&mut buf);
        let out = match out {
            Ok(v) => v,
            Err(e) => {
                drop(buf);
                // Dropping the writer unfinished aborts the COPY.
                drop(w);
                return Err(e);
            }
        };
        buf.flush().map_err(StoreError::CopyIo)?;
        drop(buf);
        let n = w.finish().map_err(StoreError::from)?;
        Ok((out, n))
    }
}

/// Write `field` to `out` escaped for COPY's text format (backslash, tab,
/// newline, carriage return); `None` is `\N`.
pub fn copy_text(out: &mut dyn std::io::Write, field: Option<&str>) -> std::io::Result<()> {
    let Some(field) = field else {
        return out.write_all(b"\\N");
    };
    let bytes = field.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.write_all(&bytes[from..i])?;
        out.write_all(esc)?;
        from = i + 1;
    }
    out.write_all(&bytes[from..])
}

/// What `milebatch check` says about a PostgreSQL database: `Ok` with a
/// line for people when it is reachable (over verified TLS when so
/// configured), a writable primary, and at a schema this milebatch knows;
/// otherwise the one-line problem. Reads only: nothing is created or
/// migrated.
pub fn check(target: &PgTarget) -> Result<String, String> {
    let conn = connect(target, false).map_err(|e| e.to_string())?;
    if conn.in_recovery().map_err(|e| e.to_string())? {
        return Err(format!(
            "database {}: the server is a read-only standby: point `daemon.database` at the primary (or list every host with target_session_attrs=read-write)",
            target.url
        ));
    }
    let version = conn.schema_version().map_err(|e| e.to_string())?;
    let tls = match target.tls {
        PgTls::Plain => "plain (loopback)",
        PgTls::VerifyFull(_) => "TLS verified",
    };
    Ok(format!(
        "database {}: reachable, {tls}, writable primary, schema version {version} of {}",
        target.url,
        MIGRATIONS.len()
    ))
}

/// The advisory-lock scope of migrations.
const MIGRATION_LOCK: &str = "milebatch:migrate";

impl PgConn {
    /// The schema version (0: an empty database).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let exists = self.query_opt(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'schema_version'",
            &[],
        )?;
        if exists.is_none() {
            return Ok(0);
        }
        Ok(self
            .query_opt("SELECT version FROM schema_version", &[])?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0))
    }

    /// The schema version this milebatch writes (the length of the
    /// migration list).
    pub fn known_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    fn too_new(&self, found: i64) -> StoreError {
        StoreError::TooNew {
            database: self.database.clone(),
            found,
            known: MIGRATIONS.len(),
        }
    }

    fn check_version(&self) -> Result<i64, StoreError> {
        let v = self.schema_version()?;
        if v as usize > MIGRATIONS.len() {
            return Err(self.too_new(v));
        }
        Ok(v)
    }

    /// Apply the migrations this database lacks, each in its own
    /// transaction with its `schema_version` row.
    pub fn migrate(&self) -> Result<(), StoreError> {
        self.check_version()?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let done = super::write(self, |db| -> Result<bool, StoreError> {
                db.lock(MIGRATION_LOCK)?;
                db.batch(
                    "CREATE TABLE IF NOT EXISTS schema_version(
                         one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
                         version BIGINT NOT NULL)",
                )?;
                // Another host may have migrated while we waited.
                let now = db.check_version()?;
                if now as usize > i {
                    return Ok(false);
                }
                db.batch(sql)?;
                db.execute(
                    "INSERT INTO schema_version(one, version) VALUES (TRUE, ?1)
                     ON CONFLICT (one) DO UPDATE SET version = excluded.version",
                    crate::store_args![(i + 1) as i64],
                )?;
                Ok(true)
            })?;
            if done {
                tracing::info!(version = i + 1, "database: PostgreSQL migration applied");
            }
        }
        Ok(())
    }

    /// The server's `pg_is_in_recovery()`: `true` on a standby.
    pub fn in_recovery(&self) -> Result<bool, StoreError> {
        let r = self.query("SELECT pg_is_in_recovery()", &[])?;
        Ok(r.first().map(|r| r.int(0)).transpose()?.unwrap_or(0) != 0)
    }
}

#[cfg(test)]
mod copy_tests {
    #[test]
    fn copy_text_escapes_what_the_text_format_reads_specially() {
        let mut out = Vec::new();
        super::copy_text(&mut out, Some("a\\b\tc\nd\re 日本")).unwrap();
        out.push(b'|');
        super::copy_text(&mut out, None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\\\b\\tc\\nd\\re 日本|\\N"
        );
    }
}
