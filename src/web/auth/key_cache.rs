//! Live API keys this process has looked up lately, so that the API's write
//! calls do not spend a database read on authentication before their
//! writer job (it was about a third of `members/verify`'s CPU).
//!
//! What must stay true:
//! - only a key found live in the database is cached, under its SHA-256
//!   (never the key), for at most [`TTL`]; an unknown key always costs a
//!   read, and a new key works at once;
//! - a cached key is only ever used by a handler whose writer job confirms
//!   the key in its own transaction ([`super::api_keys::is_live`]), so a
//!   key revoked a moment ago, from the site or the CLI, is refused: the
//!   cache saves a read, it never decides;
//! - the map is bounded ([`MOST`] entries).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::api_keys::Caller;

/// How long a looked-up key is trusted as known, before it is read again.
pub const TTL: Duration = Duration::from_secs(30);
/// Most keys kept; when full, the map is emptied (only live keys used
/// within [`TTL`] are in it, so this is a thousand busy keys).
pub const MOST: usize = 1024;

#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl KeyCache {
    /// The caller of the key with SHA-256 `sha`, if it was found live less
    /// than [`TTL`] before `now`.
    pub fn get(&self, sha: &str, now: Instant) -> Option<Caller> {
        let keys = self.lock();
        let (caller, at) = keys.get(sha)?;
        (now.saturating_duration_since(*at) < TTL).then(|| caller.clone())
    }

    /// Remember `caller`, just found live in the database at `now`.
    pub fn put(&self, sha: String, caller: Caller, now: Instant) {
        let mut keys = self.lock();
        if keys.len() >= MOST && !keys.contains_key(&sha) {
            keys.clear();
        }
        keys.insert(sha, (caller, now));
    }

    /// Record that `key_id` was marked used at `at` (RFC 3339), so the
    /// next request does not mark it again.
    pub fn used(&self, key_id: i64, at: &str) {
        for (caller, _) in self.lock().values_mut() {
            if caller.key_id == key_id {
                caller.last_used_at = Some(at.to_owned());
            }
        }
    }

    /// Forget `key_id` (its writer job found it revoked).
    pub fn forget(&self, key_id: i64) {
        self.lock().retain(|_, (c, _)| c.key_id != key_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Caller, Instant)>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(id: i64) -> Caller {
        Caller {
            key_id: id,
            partner: "p".into(),
            prefix: format!("mbk_{id:08}"),
            last_used_at: None,
        }
    }

    #[test]
    fn entries_expire_are_forgotten_and_bounded() {
        let c = KeyCache::default();
        let t0 = Instant::now();
        assert!(c.get("a", t0).is_none());
        c.put("a".into(), caller(1), t0);
        assert_eq!(c.get("a", t0 + TTL / 2).unwrap().key_id, 1);
        assert!(c.get("a", t0 + TTL).is_none(), "expired");
        c.used(1, "2026-11-30T00:00:00Z");
        assert_eq!(
            c.get("a", t0).unwrap().last_used_at.as_deref(),
            Some("2026-11-30T00:00:00Z")
        );
        c.forget(1);
        assert!(c.get("a", t0).is_none(), "forgotten");
        for i in 0..MOST as i64 + 5 {
            c.put(format!("k{i}"), caller(i), t0);
        }
        assert!(c.lock().len() <= MOST);
        assert!(
            c.get(&format!("k{}", MOST + 4), t0).is_some(),
            "the newest is kept"
        );
    }
}
