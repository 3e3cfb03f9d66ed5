//! The daemon's heartbeat: each time `milebatch run` polls for "run now"
//! requests it writes the time to a small file beside the database
//! (`<database>.daemon`); the site's dashboard and `GET /ops/daemon.json`
//! read it to say whether a daemon is polling.
//!
//! What must stay true: writing the heartbeat never waits for the
//! database's write lock (a long credit must not make a live daemon look
//! dead), so it is a file, replaced atomically (write, then rename);
//! a daemon that has not written for [`STALE_AFTER`] is reported as not
//! running; a missing or unreadable file is "never polled", not an error
//! for the page.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// After this long without a poll, the daemon is reported as not running.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("daemon heartbeat {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The heartbeat file of `database`.
pub fn path(database: &Path) -> PathBuf {
    let mut p = database.as_os_str().to_owned();
    p.push(".daemon");
    PathBuf::from(p)
}

/// Record a poll at `now` by process `pid`.
pub fn beat(database: &Path, now: DateTime<Utc>, pid: u32) -> Result<(), HeartbeatError> {
    let path = path(database);
    let tmp = {
        let mut t = path.as_os_str().to_owned();
        t.push(".tmp");
        PathBuf::from(t)
    };
    let text = format!("{}\n{pid}\n", crate::db::now_text(now));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| HeartbeatError::Write { path, source })
}

/// What a monitor and the dashboard are told.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DaemonStatus {
    /// Polled within [`STALE_AFTER`].
    pub running: bool,
    /// The last poll, RFC 3339 UTC (`None`: never).
    pub last_poll: Option<String>,
    /// Seconds since the last poll.
    pub seconds_since_poll: Option<i64>,
    pub pid: Option<u32>,
    pub stale_after_seconds: u64,
}

/// The daemon's state as of `now`.
pub fn status(database: &Path, now: DateTime<Utc>) -> DaemonStatus {
    let text = std::fs::read_to_string(path(database)).unwrap_or_default();
    let mut lines = text.lines();
    let at = lines.next().and_then(crate::timefmt::parse_stored);
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let since = at.map(|t| (now - t).num_seconds());
    DaemonStatus {
        running: since.is_some_and(|s| s <= STALE_AFTER.as_secs() as i64),
        last_poll: at.map(crate::db::now_text),
        seconds_since_poll: since,
        pid: at.and(pid),
        stale_after_seconds: STALE_AFTER.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_is_running_for_a_minute_then_stale() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("m.db");
        let t0 = crate::timefmt::parse_stored("2026-12-03T01:00:00Z").unwrap();
        let never = status(&db, t0);
        assert!(!never.running && never.last_poll.is_none());
        beat(&db, t0, 42).unwrap();
        assert_eq!(path(&db), dir.path().join("m.db.daemon"));
        let s = status(&db, t0 + chrono::Duration::seconds(60));
        assert!(s.running, "{s:?}");
        assert_eq!(s.pid, Some(42));
        assert_eq!(s.seconds_since_poll, Some(60));
        let s = status(&db, t0 + chrono::Duration::seconds(61));
        assert!(!s.running, "{s:?}");
        assert_eq!(s.last_poll.as_deref(), Some("2026-12-03T01:00:00.000Z"));
    }
}
