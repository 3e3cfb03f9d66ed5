//! One-time messages from a POST to the page it redirects to (POST →
//! 303 → GET), kept per session in this process's memory.
//!
//! Why memory and not the `sessions.data` column: the one thing carried
//! today is a new API key, and a key is never stored (only its hash is);
//! a flash in the database would put it on disk, in the WAL and in every
//! backup. The cost: a flash is lost when `serve` restarts between the
//! POST and its redirect, and the page then says so (the key can be
//! revoked and made again).
//!
//! What must stay true: a flash is read at most once ([`Flashes::take`]
//! removes it), only by the session that made it, and never outlives
//! [`TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a flash waits for its GET: the redirect follows at once, so
/// anything older was abandoned.
pub const TTL: Duration = Duration::from_secs(5 * 60);

/// A key just created on the site, for the page that shows it once.
#[derive(Clone)]
pub struct NewKey {
    pub key: String,
    pub prefix: String,
    pub label: String,
}

#[derive(Default)]
pub struct Flashes {
    // By SHA-256 of the session id, as the session table keys them: the
    // id itself stays only in the cookie.
    keys: Mutex<HashMap<[u8; 32], (Instant, NewKey)>>,
}

fn slot(session_id: &str) -> [u8; 32] {
    Sha256::digest(session_id.as_bytes()).into()
}

impl Flashes {
    /// Keep `key` for the next [`Flashes::take`] of `session_id`
    /// (replacing an unread one).
    pub fn put(&self, session_id: &str, key: NewKey) {
        let mut m = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Abandoned flashes go here, so the map stays small.
        m.retain(|_, (at, _)| now.duration_since(*at) < TTL);
        m.insert(slot(session_id), (now, key));
    }

    /// The flash of `session_id`, removed: a second call gets `None`.
    pub fn take(&self, session_id: &str) -> Option<NewKey> {
        let mut m = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&slot(session_id))
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, k)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> NewKey {
        NewKey {
            key: "mbk_secret".into(),
            prefix: "mbk_sec".into(),
            label: "POS".into(),
        }
    }

    #[test]
    fn taken_once_and_only_by_its_session() {
        let f = Flashes::default();
        f.put("a", k());
        assert!(f.take("b").is_none());
        assert_eq!(f.take("a").unwrap().key, "mbk_secret");
        assert!(f.take("a").is_none());
    }
}
