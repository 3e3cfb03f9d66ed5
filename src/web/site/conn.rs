//! The site's database access: reads through the web process's read-only
//! pool ([`crate::web::readers`]), writes (session touch, logins, audit
//! rows, key changes, run requests) through ONE writable connection behind
//! a mutex, opened (and migration-checked) once, on first use.
//!
//! What must stay true:
//! - no request opens the database itself: opening means the migration
//!   check and the pragmas, far more than the statement it would run;
//! - the writable connection has [`crate::db::BUSY_TIMEOUT`], so a write
//!   that meets the batch's write lock (a file's credit transaction) waits
//!   for it, never fails with `SQLITE_BUSY`;
//! - a handler holds the write connection only for its writes: anything
//!   slow to read (a search, a CSV export, a file) is read first, through
//!   the pool.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::Connection;

pub struct SiteWriter {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl SiteWriter {
    pub fn new(path: PathBuf) -> SiteWriter {
        SiteWriter {
            path,
            conn: Mutex::new(None),
        }
    }

    /// Run `f` with the writable connection (opened on first use). Blocking:
    /// call from the blocking pool.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(crate::db::open(&self.path).map_err(|e| e.to_string())?);
        }
        let conn = guard.as_mut().expect("opened above");
        // A handler that failed inside a transaction must not leave it open
        // for the next one.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let out = f(conn);
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        out
    }
}
