//! Site sessions, stored in SQLite through the project's rusqlite (the
//! published tower-sessions stores link other libsqlite3-sys versions).
//!
//! What must stay true: the database holds only the SHA-256 of a session
//! id, never the id; a session ends after [`IDLE`] without a request, when
//! its user is disabled, or at logout; a login always creates a NEW id
//! (rotation), so an id planted before login is worth nothing after it;
//! every session has its own CSRF token.

use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::passwords::PasswordError;

/// Idle expiry: a session unused this long is gone.
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// A live session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: i64,
    pub email: String,
    /// `None`: an ops user.
    pub partner: Option<String>,
    pub csrf: String,
}

impl Session {
    pub fn is_ops(&self) -> bool {
        self.partner.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session store: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Random(#[from] PasswordError),
}

fn random_token() -> Result<String, PasswordError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| PasswordError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

fn digest(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// Start a session for `user`; returns the new id (for the cookie only).
/// A collision of 256-bit ids is retried, never shared.
pub fn create(conn: &Connection, user: i64, now: i64) -> Result<String, SessionError> {
    // Expired rows of anyone are swept here, so the table stays small.
    conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
    loop {
        let id = random_token()?;
        let csrf = random_token()?;
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO sessions(id_sha256, user, created_at, expires_at, csrf) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                digest(&id),
                user,
                crate::db::now_text(chrono::Utc::now()),
                now + IDLE.as_secs() as i64,
                csrf
            ],
        )?;
        if inserted == 1 {
            return Ok(id);
        }
    }
}

/// How stale a session's stored expiry may get before a request moves it
/// forward: pages are reads, and a write per page would queue every page
/// behind the batch's write lock. A session may so end up to this much
/// before [`IDLE`] after its last request.
pub const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The live session with id `id` at `now`, and its stored expiry (unix
/// seconds). `None` for an unknown, expired or disabled user's session.
/// Reads only.
pub fn find(conn: &Connection, id: &str, now: i64) -> Result<Option<(Session, i64)>, SessionError> {
    Ok(conn
        .query_row(
            "SELECT s.user, u.email, u.partner, s.csrf, s.expires_at FROM sessions s JOIN users u ON u.id = s.user \
             WHERE s.id_sha256 = ?1 AND s.expires_at > ?2 AND u.disabled = 0",
            params![digest(id), now],
            |r| {
                Ok((
                    Session {
                        user: r.get(0)?,
                        email: r.get(1)?,
                        partner: r.get(2)?,
                        csrf: r.get(3)?,
                    },
                    r.get(4)?,
                ))
            },
        )
        .optional()?)
}

/// Whether a session found with `expires_at` at `now` is due for
/// [`extend`] (its expiry is more than [`TOUCH_EVERY`] old).
pub fn needs_extend(expires_at: i64, now: i64) -> bool {
    expires_at - now < (IDLE - TOUCH_EVERY).as_secs() as i64
}

/// Move the idle expiry of session `id` to [`IDLE`] after `now`.
pub fn extend(conn: &Connection, id: &str, now: i64) -> Result<(), SessionError> {
    conn.execute(
        "UPDATE sessions SET expires_at = ?2 WHERE id_sha256 = ?1",
        params![digest(id), now + IDLE.as_secs() as i64],
    )?;
    Ok(())
}

/// The live session with id `id` at `now`, its idle expiry moved forward.
/// `None` for an unknown, expired or disabled user's session.
pub fn touch(conn: &Connection, id: &str, now: i64) -> Result<Option<Session>, SessionError> {
    let found = find(conn, id, now)?;
    if found.is_some() {
        extend(conn, id, now)?;
    }
    Ok(found.map(|(s, _)| s))
}

/// End the session `id` (logout).
pub fn delete(conn: &Connection, id: &str) -> Result<(), SessionError> {
    conn.execute("DELETE FROM sessions WHERE id_sha256 = ?1", [digest(id)])?;
    Ok(())
}

/// End every session of `user` (disabled, or a new password).
pub fn delete_for_user(conn: &Connection, user: i64) -> Result<usize, SessionError> {
    Ok(conn.execute("DELETE FROM sessions WHERE user = ?1", [user])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection, i64) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open(&dir.path().join("t.db")).unwrap();
        conn.execute(
            "INSERT INTO users(email, partner, hash, created_at, password_set_at) \
             VALUES ('a@example.jp', 'shop', 'x', 'now', 'now')",
            [],
        )
        .unwrap();
        let id = conn.last_insert_rowid();
        (dir, conn, id)
    }

    #[test]
    fn only_the_hash_is_stored_and_idle_sessions_expire() {
        let (_d, conn, user) = db();
        let id = create(&conn, user, 1000).unwrap();
        let stored: Vec<u8> = conn
            .query_row("SELECT id_sha256 FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, digest(&id));
        assert_ne!(stored, id.as_bytes());
        let s = touch(&conn, &id, 1000 + 3600).unwrap().unwrap();
        assert_eq!(s.partner.as_deref(), Some("shop"));
        // Used an hour in: idle expiry is now 12 h after that use.
        let idle = IDLE.as_secs() as i64;
        assert!(touch(&conn, &id, 1000 + 3600 + idle - 1).unwrap().is_some());
        assert!(touch(&conn, &id, 1000 + 3600 + 2 * idle).unwrap().is_none());
        assert!(touch(&conn, "made-up", 1000).unwrap().is_none());
    }

    #[test]
    fn a_session_is_extended_only_when_its_expiry_is_stale() {
        let (_d, conn, user) = db();
        let id = create(&conn, user, 1000).unwrap();
        let (_, exp) = find(&conn, &id, 1000).unwrap().unwrap();
        assert_eq!(exp, 1000 + IDLE.as_secs() as i64);
        let every = TOUCH_EVERY.as_secs() as i64;
        assert!(!needs_extend(exp, 1000 + every - 1));
        assert!(needs_extend(exp, 1000 + every + 1));
        extend(&conn, &id, 1000 + every + 1).unwrap();
        let (_, exp2) = find(&conn, &id, 1000 + every + 1).unwrap().unwrap();
        assert_eq!(exp2, 1000 + every + 1 + IDLE.as_secs() as i64);
    }

    #[test]
    fn logout_and_disable_end_sessions() {
        let (_d, conn, user) = db();
        let a = create(&conn, user, 10).unwrap();
        let b = create(&conn, user, 10).unwrap();
        assert_ne!(a, b);
        delete(&conn, &a).unwrap();
        assert!(touch(&conn, &a, 11).unwrap().is_none());
        assert!(touch(&conn, &b, 11).unwrap().is_some());
        conn.execute("UPDATE users SET disabled = 1", []).unwrap();
        assert!(touch(&conn, &b, 12).unwrap().is_none(), "disabled user");
    }
}
