//! A small pool of read-only SQLite connections for request handlers, so a
//! request does not pay for opening the database. Reads never wait for the
//! writer (WAL); every use runs on the blocking pool.
//!
//! What must stay true: at most [`SIZE`] reads run at once and each finds
//! a warm connection (its statement cache and page cache filled). Without
//! the bound, 64 concurrent requests opened and closed connections beyond
//! the idle ones on every burst: SQL parsed again, pages read again.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::db::{self, DbError};

/// Reads running at once, and connections kept: enough to keep two CPUs
/// busy while some reads wait on the disk; more only adds threads.
pub const SIZE: usize = 16;

pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    pub fn new(path: PathBuf) -> Readers {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(SIZE),
        }
    }

    /// Run `f` with a read-only connection, on the blocking pool.
    pub async fn with<T, E, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        // Never closed, so acquiring only fails if it were.
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let me = self.clone();
        let out = tokio::task::spawn_blocking(move || {
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
            if idle.len() < SIZE && conn.is_autocommit() {
                idle.push(conn);
            }
            out
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        drop(permit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// 64 concurrent reads: never more than SIZE at once, and afterwards
    /// at most SIZE warm connections are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_are_bounded_and_connections_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        drop(db::open(&path).unwrap());
        let readers = Arc::new(Readers::new(path));
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (r, now, most) = (readers.clone(), now.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                r.with(move |c| {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    let v: i64 = c.query_row("SELECT 1", [], |r| r.get(0))?;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, DbError>(v)
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= SIZE, "{most} reads at once");
        assert!(most > 1, "reads ran one at a time: {most}");
        assert!(readers.idle.lock().unwrap().len() <= SIZE);
    }
}
