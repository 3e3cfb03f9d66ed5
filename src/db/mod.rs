//! The SQLite database: opening, pragmas, migrations.
//!
//! What must stay true:
//! - WAL with `synchronous = FULL`: a committed file survives power loss, not
//!   only a process crash. One commit per file makes the fsync cost nothing.
//! - Every writer uses `BEGIN IMMEDIATE` and a `busy_timeout`, so a manual
//!   `once` next to the daemon waits instead of failing with SQLITE_BUSY.
//! - The database file is created owner-only (0600).

mod migrations;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

pub use migrations::MIGRATIONS;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path}: cannot create its folder: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path} has schema version {found}, newer than this milebatch ({known}): upgrade milebatch")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("database {path} does not exist yet: run `milebatch members import` or `milebatch once` first")]
    Missing { path: PathBuf },
    #[error("database {path} has schema version {found}, this milebatch reads {known}: run `milebatch once` (or the daemon) once to migrate it")]
    Version {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// From a concern moved behind `crate::store` (its message already
    /// says "database").
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// SQLite's page cache per connection (negative: KiB). Small on purpose:
/// measured on 1M members x 1M rows, 8-96 MiB caches credit within ~5% of
/// each other (2.3-2.6 s; the member B-trees are read in sorted batches and
/// the OS page cache holds the file), while peak RSS follows the cache:
/// 64+32 MiB gave 153 MiB RSS, 16+8 MiB gives 75 MiB.
const CACHE_KIB: i64 = -16384;

/// Page cache of a lookup connection ([`open_reader`]), negative: KiB.
const READER_CACHE_KIB: i64 = -8192;

// No memory map for the lookup connections. One mapped reader once beat
// pread (2.45 s → 2.26 s for 1M x 1M), but with lookups shared by two
// threads in larger sorted batches, mapping measured no faster (1.16 s vs
// 1.14 s) and took peak RSS from 124 to 217 MiB: mapped member pages count
// as resident, and each page fetched from a map is re-parsed every time
// (`btreeInitPage`), while cached pages stay parsed.

/// How long a writer waits for another writer before giving up. A file's
/// credit holds the write lock for its whole transaction (seconds for a
/// million rows); waiting long is always better than failing a partner's run
/// with SQLITE_BUSY.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Open (creating if needed) and migrate the database at `path`.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let open_err = |source| DbError::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(|source| DbError::Folder {
            path: path.to_owned(),
            source,
        })?;
    }
    if !path.exists() {
        // Create it 0600 ourselves; SQLite would use the umask.
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| DbError::Folder {
                path: path.to_owned(),
                source,
            })?;
    }
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.pragma_update(None, "cache_size", CACHE_KIB)
        .map_err(open_err)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// A read-only connection for the query commands (`status`, `files`,
/// `history`, `balance`): it never creates, migrates or writes the database.
/// (Run as root next to a `DynamicUser=` daemon, the `-wal`/`-shm` files
/// SQLite may create are given the database file's owner by SQLite itself.)
pub fn open_query(path: &Path) -> Result<Connection, DbError> {
    if !path.exists() {
        return Err(DbError::Missing {
            path: path.to_owned(),
        });
    }
    let open_err = |source| DbError::Open {
        path: path.to_owned(),
        source,
    };
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    if version as usize != MIGRATIONS.len() {
        return Err(DbError::Version {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    Ok(conn)
}

/// A second, read-only connection to `conn`'s database, in a read
/// transaction begun now (for lookups on another thread).
pub fn open_reader(conn: &Connection) -> Result<Connection, DbError> {
    let path = PathBuf::from(conn.path().unwrap_or_default());
    let open_err = |source| DbError::Open {
        path: path.clone(),
        source,
    };
    if path.as_os_str().is_empty() {
        // An in-memory or temporary database has no second connection: a
        // lookup there would find no member at all.
        return Err(open_err(rusqlite::Error::InvalidPath(path.clone())));
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let reader = Connection::open_with_flags(&path, flags).map_err(open_err)?;
    reader.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    reader
        .pragma_update(None, "cache_size", READER_CACHE_KIB)
        .map_err(open_err)?;
    reader.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")?;
    Ok(reader)
}

/// A new migrated database in a temp folder (kept while the folder is),
/// for unit tests.
#[cfg(test)]
pub fn temp_db() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = open(&dir.path().join("t.db")).unwrap();
    (dir, conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version as usize > MIGRATIONS.len() {
        return Err(DbError::TooNew {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now as usize > i {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// `mkdir -p` with mode 0700 for the folders we create.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Now, as stored in the database.
pub fn now_text(now: chrono::DateTime<chrono::Utc>) -> String {
    now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/m.db");
        let c = open(&p).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        drop(c);
        open(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn query_connections_read_without_creating_anything() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        let e = open_query(&p).unwrap_err().to_string();
        assert!(e.contains("does not exist yet"), "{e}");
        assert!(!p.exists(), "nothing created");
        {
            let c = open(&p).unwrap();
            c.execute("INSERT INTO members(member_id, status) VALUES ('A', 0)", [])
                .unwrap();
        }
        // The writer closed cleanly: no -wal/-shm left.
        assert!(!d.path().join("m.db-wal").exists());
        let q = open_query(&p).unwrap();
        let n: i64 = q
            .query_row("SELECT count(*) FROM members", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert!(q.execute("DELETE FROM members", []).is_err(), "read-only");
    }

    #[test]
    fn a_reader_needs_a_database_file() {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d.path().join("m.db")).unwrap();
        c.execute("INSERT INTO members(member_id, status) VALUES ('A', 0)", [])
            .unwrap();
        let r = open_reader(&c).unwrap();
        let n: i64 = r
            .query_row("SELECT count(*) FROM members", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert!(r.execute("DELETE FROM members", []).is_err(), "read-only");
        let mem = Connection::open_in_memory().unwrap();
        assert!(open_reader(&mem).is_err());
    }

    #[test]
    fn migrating_keeps_every_ledger_row_and_the_append_only_rule() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        {
            // A database as milebatch left it at schema version 2, with money in it.
            let c = Connection::open(&p).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute_batch(
                "INSERT INTO members(id, member_id, status) VALUES (1, 'A', 0), (2, 'B', 0);
                 INSERT INTO files(id, partner, name, size, sha256, outcome, started_at)
                   VALUES (1, 'p', 'f', 1, 'h', 'credited', 'now');
                 INSERT INTO ledger VALUES (1, 1, 'p', 1, 'k1', 5, 100, 0);
                 INSERT INTO ledger VALUES (1, 2, 'p', 2, 'k2', 7, 100, 0);
                 INSERT INTO balances VALUES (1, 5), (2, 7);",
            )
            .unwrap();
        }
        let c = open(&p).unwrap();
        let rows: Vec<(i64, i64, String, i64, i64)> = c
            .prepare("SELECT file_id, line, partner_key, member, miles FROM ledger ORDER BY line")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![(1, 1, "k1".into(), 1, 5), (1, 2, "k2".into(), 2, 7)]
        );
        let e = c.execute("DELETE FROM ledger", []).unwrap_err();
        assert!(e.to_string().contains("append-only"), "{e}");
    }

    #[test]
    fn ledger_is_append_only() {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d.path().join("m.db")).unwrap();
        c.execute_batch(
            "INSERT INTO members(id, member_id, status) VALUES (1, 'A', 0);
             INSERT INTO files(id, partner, name, size, sha256, outcome, started_at) VALUES (1, 'p', 'f', 1, 'h', 'credited', 'now');
             INSERT INTO ledger(file_id, line, partner, member, partner_key, miles, credited_at, dup)
               VALUES (1, 1, 'p', 1, 'k', 5, 0, 0);",
        )
        .unwrap();
        let e = c.execute("UPDATE ledger SET miles = 6", []).unwrap_err();
        assert!(e.to_string().contains("append-only"), "{e}");
        let e = c.execute("DELETE FROM ledger", []).unwrap_err();
        assert!(e.to_string().contains("append-only"), "{e}");
    }

    #[test]
    fn balance_overflow_is_an_error_not_a_float() {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d.path().join("m.db")).unwrap();
        c.execute_batch(
            "INSERT INTO members(id, member_id, status) VALUES (1, 'A', 0);
             INSERT INTO balances VALUES (1, 9223372036854775800);",
        )
        .unwrap();
        let e = c
            .execute(
                "INSERT INTO balances VALUES (1, 100) ON CONFLICT(member) DO UPDATE SET miles = miles + excluded.miles",
                [],
            )
            .unwrap_err();
        assert!(e.to_string().contains("CHECK"), "{e}");
    }
}
