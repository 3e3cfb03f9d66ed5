//! Site accounts: the `milebatch user …` commands and the login decision.
//!
//! What must stay true: a failed login says nothing about why (the caller
//! shows one generic message; the reason goes only to the audit trail);
//! after [`ACCOUNT_MAX_FAILURES`] wrong passwords an account is locked for
//! [`LOCK`], and after [`CLIENT_MAX_FAILURES`] failures within [`LOCK`] so
//! is the client address, whatever accounts it tries; a locked account is
//! refused even with the right password; every login, ok or failed, and
//! every account change is one audit row (no password in it).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::passwords::{self, PasswordError};
use super::sessions;
use crate::audit;

/// Wrong passwords in a row before an account is locked.
pub const ACCOUNT_MAX_FAILURES: i64 = 5;
/// Failed logins from one client address (any accounts) before it is locked.
pub const CLIENT_MAX_FAILURES: i64 = 20;
/// How long a lock lasts, and the window client failures are counted in.
pub const LOCK: i64 = 15 * 60;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Session(#[from] sessions::SessionError),
    #[error("a user {0} already exists (`milebatch user list`)")]
    Exists(String),
    #[error("no user {0} (`milebatch user list` shows them)")]
    NoSuchUser(String),
    #[error("{0:?} is not an e-mail address")]
    BadEmail(String),
}

/// What `user add` / `user passwd` hand back: printed once, never stored.
pub struct InitialPassword(pub String);

fn check_email(email: &str) -> Result<(), UserError> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !d.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(UserError::BadEmail(email.to_owned()))
    }
}

/// Create a user of `partner` (`None`: ops) with a generated password.
pub fn add(
    conn: &Connection,
    email: &str,
    partner: Option<&str>,
    actor: &str,
) -> Result<InitialPassword, UserError> {
    check_email(email)?;
    let password = passwords::generate()?;
    let hash = passwords::hash(&password)?;
    let now = crate::db::now_text(chrono::Utc::now());
    let n = conn.execute(
        "INSERT OR IGNORE INTO users(email, partner, hash, created_at, password_set_at) \
         VALUES (?1, ?2, ?3, ?4, ?4)",
        params![email, partner, hash, now],
    )?;
    if n == 0 {
        return Err(UserError::Exists(email.to_owned()));
    }
    let id = conn.last_insert_rowid();
    audit::record(
        conn,
        &audit::Entry {
            actor,
            action: "user-add",
            partner,
            detail: &format!(
                "user {id}, {}",
                if partner.is_some() { "partner" } else { "ops" }
            ),
            client: None,
        },
    )?;
    Ok(InitialPassword(password))
}

fn user_id(conn: &Connection, email: &str) -> Result<i64, UserError> {
    conn.query_row("SELECT id FROM users WHERE email = ?1", [email], |r| {
        r.get(0)
    })
    .optional()?
    .ok_or_else(|| UserError::NoSuchUser(email.to_owned()))
}

/// A new generated password for `email`: unlocks the account and ends its
/// sessions.
pub fn reset_password(
    conn: &Connection,
    email: &str,
    actor: &str,
) -> Result<InitialPassword, UserError> {
    let id = user_id(conn, email)?;
    let password = passwords::generate()?;
    let hash = passwords::hash(&password)?;
    conn.execute(
        "UPDATE users SET hash = ?2, failed_logins = 0, locked_until = NULL, password_set_at = ?3 \
         WHERE id = ?1",
        params![id, hash, crate::db::now_text(chrono::Utc::now())],
    )?;
    sessions::delete_for_user(conn, id)?;
    audit::record(
        conn,
        &audit::Entry {
            actor,
            action: "user-passwd",
            partner: None,
            detail: &format!("user {id}"),
            client: None,
        },
    )?;
    Ok(InitialPassword(password))
}

/// Disable `email` and end its sessions. It can no longer log in.
pub fn disable(conn: &Connection, email: &str, actor: &str) -> Result<(), UserError> {
    let id = user_id(conn, email)?;
    conn.execute("UPDATE users SET disabled = 1 WHERE id = ?1", [id])?;
    sessions::delete_for_user(conn, id)?;
    audit::record(
        conn,
        &audit::Entry {
            actor,
            action: "user-disable",
            partner: None,
            detail: &format!("user {id}"),
            client: None,
        },
    )?;
    Ok(())
}

/// Enable `email` again after [`disable`]: it can log in with its
/// password; its failed-login count and lock are cleared too.
pub fn enable(conn: &Connection, email: &str, actor: &str) -> Result<(), UserError> {
    let id = user_id(conn, email)?;
    conn.execute(
        "UPDATE users SET disabled = 0, failed_logins = 0, locked_until = NULL WHERE id = ?1",
        [id],
    )?;
    audit::record(
        conn,
        &audit::Entry {
            actor,
            action: "user-enable",
            partner: None,
            detail: &format!("user {id}"),
            client: None,
        },
    )?;
    Ok(())
}

/// One line of `user list`.
#[derive(Debug, Serialize)]
pub struct UserRow {
    pub email: String,
    /// `None`: ops.
    pub partner: Option<String>,
    pub disabled: bool,
    pub failed_logins: i64,
    /// Locked until (unix seconds), if locked now.
    pub locked_until: Option<i64>,
    pub created_at: String,
}

pub fn list(conn: &Connection, now: i64) -> Result<Vec<UserRow>, UserError> {
    let mut st = conn.prepare(
        "SELECT email, partner, disabled, failed_logins, locked_until, created_at \
         FROM users ORDER BY partner IS NOT NULL, partner, email",
    )?;
    let rows = st
        .query_map([], |r| {
            Ok(UserRow {
                email: r.get(0)?,
                partner: r.get(1)?,
                disabled: r.get::<_, i64>(2)? != 0,
                failed_logins: r.get(3)?,
                locked_until: r.get::<_, Option<i64>>(4)?.filter(|&t| t > now),
                created_at: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// A login that worked.
#[derive(Debug)]
pub struct LoggedIn {
    pub user: i64,
    /// The new session id (rotated: always a fresh one).
    pub session: String,
}

/// Check `email`/`password` from `client` at `now` (unix seconds). On
/// success a new session is created; on failure the counters move. Either
/// way one audit row is written.
pub fn login(
    conn: &Connection,
    email: &str,
    password: &str,
    client: &str,
    now: i64,
) -> Result<Option<LoggedIn>, UserError> {
    // (id, hash, partner, disabled, locked_until)
    type Account = (i64, String, Option<String>, bool, Option<i64>);
    let account: Option<Account> = conn
        .query_row(
            "SELECT id, hash, partner, disabled, locked_until FROM users WHERE email = ?1",
            [email],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, i64>(3)? != 0,
                    r.get(4)?,
                ))
            },
        )
        .optional()?;
    let client_locked: bool = conn
        .query_row(
            "SELECT locked_until > ?2 FROM login_throttle WHERE client = ?1",
            params![client, now],
            |r| r.get::<_, Option<bool>>(0),
        )
        .optional()?
        .flatten()
        .unwrap_or(false);
    // Always pay for one verification, so timing does not tell whether the
    // account exists or is locked.
    let hash = account
        .as_ref()
        .map(|a| a.1.as_str())
        .unwrap_or_else(|| passwords::dummy_hash());
    let password_ok = passwords::verify(password, hash);
    let refusal = match &account {
        _ if client_locked => Some("client address locked"),
        None => Some("unknown account"),
        Some((_, _, _, true, _)) => Some("disabled"),
        Some((_, _, _, _, Some(until))) if *until > now => Some("account locked"),
        Some(_) if !password_ok => Some("wrong password"),
        Some(_) => None,
    };
    let actor = match &account {
        Some(_) => format!("user:{}", email.to_lowercase()),
        None => "anonymous".to_owned(),
    };
    let partner = account.as_ref().and_then(|a| a.2.clone());
    let Some(reason) = refusal else {
        let user = account.as_ref().map(|a| a.0).unwrap_or_default();
        conn.execute(
            "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?1",
            [user],
        )?;
        let session = sessions::create(conn, user, now)?;
        audit::record(
            conn,
            &audit::Entry {
                actor: &actor,
                action: "login",
                partner: partner.as_deref(),
                detail: &format!("user {user}"),
                client: Some(client),
            },
        )?;
        return Ok(Some(LoggedIn { user, session }));
    };
    let mut detail = reason.to_owned();
    if let Some((id, ..)) = &account {
        if reason == "wrong password" {
            let failures: i64 = conn.query_row(
                "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = ?1 RETURNING failed_logins",
                [id],
                |r| r.get(0),
            )?;
            if failures >= ACCOUNT_MAX_FAILURES {
                conn.execute(
                    "UPDATE users SET failed_logins = 0, locked_until = ?2 WHERE id = ?1",
                    params![id, now + LOCK],
                )?;
                detail.push_str(&format!("; account locked for {} min", LOCK / 60));
            }
        }
    }
    // Count against the address: a new window once the old one is over.
    let failures: i64 = conn.query_row(
        "INSERT INTO login_throttle(client, failures, window_start) VALUES (?1, 1, ?2) \
         ON CONFLICT(client) DO UPDATE SET \
           failures = CASE WHEN window_start + ?3 <= ?2 THEN 1 ELSE failures + 1 END, \
           window_start = CASE WHEN window_start + ?3 <= ?2 THEN ?2 ELSE window_start END \
         RETURNING failures",
        params![client, now, LOCK],
        |r| r.get(0),
    )?;
    if failures >= CLIENT_MAX_FAILURES && !client_locked {
        conn.execute(
            "UPDATE login_throttle SET locked_until = ?2, failures = 0, window_start = ?2 WHERE client = ?1",
            params![client, now + LOCK],
        )?;
        detail.push_str(&format!("; client address locked for {} min", LOCK / 60));
    }
    tracing::info!(client, reason, "login refused");
    audit::record(
        conn,
        &audit::Entry {
            actor: &actor,
            action: "login-failed",
            partner: partner.as_deref(),
            detail: &detail,
            client: Some(client),
        },
    )?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::db::temp_db as db;

    #[test]
    fn login_works_with_the_printed_password_only() {
        let (_d, conn) = db();
        let InitialPassword(pw) = add(&conn, "Staff@Shop.example", Some("shop"), "cli:t").unwrap();
        assert!(matches!(
            add(&conn, "staff@shop.example", None, "cli:t"),
            Err(UserError::Exists(_))
        ));
        let a = login(&conn, "staff@shop.example", &pw, "127.0.0.1", 100)
            .unwrap()
            .unwrap();
        let b = login(&conn, "staff@shop.example", &pw, "127.0.0.1", 101)
            .unwrap()
            .unwrap();
        assert_ne!(a.session, b.session, "a new session id at each login");
        assert!(
            login(&conn, "staff@shop.example", "wrong", "127.0.0.1", 102)
                .unwrap()
                .is_none()
        );
        assert!(login(&conn, "nobody@shop.example", &pw, "127.0.0.1", 103)
            .unwrap()
            .is_none());
        let actions: Vec<String> = conn
            .prepare("SELECT action FROM audit ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            actions,
            ["user-add", "login", "login", "login-failed", "login-failed"]
        );
        let details: String = conn
            .query_row(
                "SELECT group_concat(detail || actor, '|') FROM audit",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!details.contains(&pw), "no password in the audit trail");
    }

    #[test]
    fn account_locks_after_failures_even_for_the_right_password() {
        let (_d, conn) = db();
        let InitialPassword(pw) = add(&conn, "a@shop.example", Some("shop"), "cli:t").unwrap();
        for i in 0..ACCOUNT_MAX_FAILURES {
            assert!(login(&conn, "a@shop.example", "nope", "10.0.0.1", 100 + i)
                .unwrap()
                .is_none());
        }
        assert!(
            login(&conn, "a@shop.example", &pw, "10.0.0.2", 200)
                .unwrap()
                .is_none(),
            "locked"
        );
        assert!(
            login(&conn, "a@shop.example", &pw, "10.0.0.2", 100 + LOCK + 10)
                .unwrap()
                .is_some(),
            "the lock ends"
        );
        // A new password (ops) unlocks at once.
        for i in 0..ACCOUNT_MAX_FAILURES {
            login(&conn, "a@shop.example", "nope", "10.0.0.3", 5000 + i).unwrap();
        }
        let InitialPassword(pw2) = reset_password(&conn, "a@shop.example", "cli:t").unwrap();
        assert!(login(&conn, "a@shop.example", &pw2, "10.0.0.3", 5010)
            .unwrap()
            .is_some());
    }

    #[test]
    fn client_address_locks_across_accounts() {
        let (_d, conn) = db();
        let InitialPassword(pw) = add(&conn, "b@shop.example", Some("shop"), "cli:t").unwrap();
        for i in 0..CLIENT_MAX_FAILURES {
            login(
                &conn,
                &format!("x{i}@shop.example"),
                "nope",
                "10.9.9.9",
                100,
            )
            .unwrap();
        }
        assert!(login(&conn, "b@shop.example", &pw, "10.9.9.9", 101)
            .unwrap()
            .is_none());
        assert!(login(&conn, "b@shop.example", &pw, "10.9.9.8", 101)
            .unwrap()
            .is_some());
        assert!(login(&conn, "b@shop.example", &pw, "10.9.9.9", 101 + LOCK)
            .unwrap()
            .is_some());
    }

    #[test]
    fn disabled_users_cannot_log_in() {
        let (_d, conn) = db();
        let InitialPassword(pw) = add(&conn, "c@shop.example", None, "cli:t").unwrap();
        disable(&conn, "c@shop.example", "cli:t").unwrap();
        assert!(login(&conn, "c@shop.example", &pw, "::1", 1)
            .unwrap()
            .is_none());
        assert!(matches!(
            disable(&conn, "zz@shop.example", "cli:t"),
            Err(UserError::NoSuchUser(_))
        ));
        assert!(matches!(
            add(&conn, "not-an-email", None, "cli:t"),
            Err(UserError::BadEmail(_))
        ));
    }

    #[test]
    fn an_enabled_user_logs_in_again_with_its_password() {
        let (_d, conn) = db();
        let InitialPassword(pw) = add(&conn, "e@shop.example", Some("shop"), "cli:t").unwrap();
        disable(&conn, "e@shop.example", "cli:t").unwrap();
        assert!(list(&conn, 1).unwrap()[0].disabled);
        enable(&conn, "e@shop.example", "cli:t").unwrap();
        assert!(!list(&conn, 1).unwrap()[0].disabled);
        assert!(login(&conn, "e@shop.example", &pw, "::1", 1)
            .unwrap()
            .is_some());
        assert!(matches!(
            enable(&conn, "zz@shop.example", "cli:t"),
            Err(UserError::NoSuchUser(_))
        ));
    }
}
