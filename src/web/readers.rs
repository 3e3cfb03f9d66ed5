//! A small pool of read-only SQLite connections for request handlers, so a
//! request does not pay for opening the database. Reads never wait for the
//! writer (WAL); every use runs on the blocking pool.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::Connection;

use crate::db::{self, DbError};

/// Idle connections kept for reuse; more may be open while busy.
const KEEP: usize = 8;

pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub fn new(path: PathBuf) -> Readers {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Run `f` with a read-only connection, on the blocking pool.
    pub async fn with<T, E, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let idle = me.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match idle {
                Some(c) => c,
                None => {
                    let c = db::open_query(&me.path)?;
                    c.set_prepared_statement_cache_capacity(64);
                    c
                }
            };
            let out = f(&conn);
            let mut idle = me.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < KEEP && conn.is_autocommit() {
                idle.push(conn);
            }
            out
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}
