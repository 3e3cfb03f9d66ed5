//! The storage layer: the one boundary between milebatch and its database.
//!
//! Shape (docs/postgres.md, "Storage layer", says why):
//! - [`Database`] (`location.rs`) is the registry: `[daemon] database` names
//!   the engine, an SQLite path (the default) or a `postgres://` URL.
//! - [`Exec`] is the engine contract, implemented by an SQLite connection
//!   (`sqlite.rs`) and a PostgreSQL one ([`PgConn`], `postgres.rs`).
//!   Concerns are written once against it, one file per concern, named in
//!   domain words (`run_requests.rs`, `audit.rs`, …): a reader finds every
//!   statement that touches a table in its concern's file.
//! - One SQL text serves both engines (`?N` placeholders, translated once in
//!   [`sql::to_postgres`]); engine-specific code lives only in the engine
//!   files: opening, migrations, locks, bulk load, backup.
//!
//! What must stay true:
//! - a concern function never opens a transaction inside one its caller
//!   holds: the top-level operation calls [`write`] once, and everything
//!   it does commits or rolls back together;
//! - [`Exec::lock`] is taken inside [`write`] before a check-then-insert,
//!   so two hosts (PostgreSQL) act as one writer would (SQLite);
//! - no secret reaches an error message: [`StoreError`] carries the
//!   engine's error and the database as [`Database`] shows it.

pub mod api_keys;
pub mod audit;
mod conn;
mod location;
pub mod members;
mod migrations_pg;
pub mod outbox;
mod postgres;
pub mod run_requests;
mod sql;
mod sqlite;
pub mod strays;

pub use conn::{open as open_writer, Conn};
pub use location::{
    is_loopback_name, Database, PasswordKeys, PgTarget, PgTls, RootCert, CONNECT_TIMEOUT,
};
pub use postgres::{check as check_postgres, connect as connect_postgres, copy_text, PgConn};
pub use sql::{to_postgres, Cell, Row, Value};

/// `n` bytes from the OS's generator (getrandom), hex encoded: API keys
/// and event ids.
pub(crate) fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Which engine is behind an [`Exec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database: {}", pg_message(.0))]
    Postgres(#[from] ::postgres::Error),
    /// Connecting failed: `message` is one line that says what to fix.
    #[error("database {database}: {message}")]
    Connect { database: String, message: String },
    #[error("database {database} has schema version {found}, newer than this milebatch ({known}): upgrade milebatch")]
    TooNew {
        database: String,
        found: i64,
        known: usize,
    },
    /// Sending a COPY's rows failed (the connection broke).
    #[error("database: COPY: {0}")]
    CopyIo(std::io::Error),
    #[error("database: column {column} is not {wanted}")]
    Decode { column: usize, wanted: &'static str },
}

/// tokio-postgres shows a server's error as "db error": the server's own
/// message (and its SQLSTATE) is what tells a person what went wrong.
fn pg_message(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// Back to rusqlite's error, for the SQLite-only callers that still
    /// return one (a store call on an SQLite connection fails with
    /// `Sqlite`; anything else is wrapped).
    pub fn into_sqlite(self) -> rusqlite::Error {
        match self {
            StoreError::Sqlite(e) => e,
            // Unreachable on an SQLite connection; kept as an error, not a panic.
            other => rusqlite::Error::ToSqlConversionFailure(Box::new(other)),
        }
    }
}

/// The engine contract. Every method runs one statement on the caller's
/// connection, inside whatever transaction the caller holds.
///
/// - `sql` is written in SQLite's form with numbered placeholders (`?1`);
///   PostgreSQL gets it through [`to_postgres`]. Write it in the dialect
///   both engines share: `ON CONFLICT`, `RETURNING` (instead of
///   `last_insert_rowid`; a hot one-row insert uses [`Exec::insert_id`]), CTEs; times computed in Rust and bound as text
///   or unix seconds, never `datetime('now')` / `now()`.
/// - Integers are `i64` on both (PostgreSQL's columns are `BIGINT`);
///   `sum()` of a BIGINT is NUMERIC on PostgreSQL, so the shared text reads
///   `CAST(sum(x) AS BIGINT)` (an overflow is then an error, not a float).
/// - Errors are the engine's own, wrapped; a constraint violation is an
///   `Err`, for the caller to turn into an answer.
pub trait Exec {
    fn engine(&self) -> Engine;
    /// Run a statement; the number of rows it changed.
    fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, StoreError>;
    /// Run a query (or a statement with `RETURNING`); every row.
    fn query(&self, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>, StoreError>;
    /// Statements without parameters or results (`BEGIN`, `COMMIT`, DDL).
    fn batch(&self, sql: &str) -> Result<(), StoreError>;
    /// Inside a [`write`]: serialise writers on `scope` until the
    /// transaction ends. SQLite: nothing to do, `BEGIN IMMEDIATE` already
    /// holds the database's one write lock. PostgreSQL: a transaction-level
    /// advisory lock on a hash of `scope`, held across hosts.
    fn lock(&self, scope: &str) -> Result<(), StoreError>;

    /// Run a query and hand each row to `f` as it arrives, never holding
    /// them all (a scan of the whole ledger); `f`'s error stops the scan.
    fn for_each(
        &self,
        sql: &str,
        args: &[Value<'_>],
        f: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// At most one row.
    fn query_opt(&self, sql: &str, args: &[Value<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Run `sql`, an INSERT of one row into a table whose key is `id`
    /// (written without `RETURNING`); the new row's id. For the hot
    /// inserts: SQLite runs every `RETURNING` through a temporary table of
    /// its own, which made the audit row of `members/verify` a tenth of the
    /// call's CPU; there the id is `last_insert_rowid()`.
    fn insert_id(&self, sql: &str, args: &[Value<'_>]) -> Result<i64, StoreError>;
}

/// Run `f` in one write transaction: committed if it returns `Ok`, rolled
/// back otherwise. SQLite: `BEGIN IMMEDIATE` (waits for the write lock, as
/// every writer does); PostgreSQL: `READ COMMITTED`, with [`Exec::lock`]
/// where a check must hold until the commit.
pub fn write<E, T, Er>(db: &E, f: impl FnOnce(&E) -> Result<T, Er>) -> Result<T, Er>
where
    E: Exec + ?Sized,
    Er: From<StoreError>,
{
    db.batch(match db.engine() {
        Engine::Sqlite => "BEGIN IMMEDIATE",
        Engine::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED",
    })?;
    match f(db) {
        Ok(v) => {
            if let Err(e) = db.batch("COMMIT") {
                let _ = db.batch("ROLLBACK");
                return Err(e.into());
            }
            Ok(v)
        }
        Err(e) => {
            // The error that matters is `e`; a failed rollback leaves the
            // transaction to die with the connection.
            let _ = db.batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Why a command refuses a PostgreSQL database for now (exit code 2,
/// before anything is opened). `None`: the command runs on it.
pub fn not_on_postgres_yet(database: &Database, command: &str) -> Option<String> {
    if !database.is_postgres() || AVAILABLE_ON_POSTGRES.contains(&command) {
        return None;
    }
    if command == "backup" || command == "restore" {
        // Not "yet": a copy of one file is SQLite's way, and doing half of
        // it on a server that has its own tools would be worse than none.
        return Some(format!(
            "`milebatch {command}` copies an SQLite file and does not apply to PostgreSQL \
             (`daemon.database` is {database}): use the server's own tools: a synchronous standby \
             (streaming replication) for a host that dies, pgBackRest or pg_basebackup with WAL \
             archiving for point-in-time recovery, `pg_dump -Fc` / `pg_restore` for a logical copy; \
             then `milebatch check` and `milebatch verify` against the restored database. \
             docs/postgres.md, \"Backups on PostgreSQL\", has the steps"
        ));
    }
    Some(format!(
        "`milebatch {command}` is not available on PostgreSQL yet (`daemon.database` is {database}): \
         run it with an SQLite database; docs/postgres.md lists what works on PostgreSQL today"
    ))
}

/// The commands that run on PostgreSQL today (docs/postgres.md, Status).
pub const AVAILABLE_ON_POSTGRES: &[&str] = &[
    "check",
    "status",
    "files",
    "balance",
    "exchanges",
    "once",
    "verify",
    "history",
    "retry",
    "statement",
    "api-key",
    "members",
];
