//! Partner API keys, as stored: create, list, revoke, and the look-ups an
//! API request makes (`authenticate`, `is_live`, `touch`). The HTTP side
//! (extractors, the one 401, the key cache) is `crate::web::auth`.
//!
//! What must stay true:
//! - a key is 160 random bits from the OS, shown once at creation; only its
//!   SHA-256 is stored, so a copy of the database gives no usable key;
//! - a key acts for its own partner only;
//! - an unknown and a revoked key are the same `None`;
//! - every create and revoke writes an audit row naming the prefix, never
//!   the key, in the same transaction;
//! - the same statements run on SQLite and PostgreSQL.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Exec, Row, StoreError};
use crate::audit;
use crate::db::DbError;
use crate::store_args as args;

/// Every key starts with this, so a leaked one is easy to recognise (and to
/// search for in repositories).
pub const KEY_PREFIX: &str = "mbk_";
/// Random bytes in a key: 160 bits.
pub(crate) const KEY_BYTES: usize = 20;
/// Characters of the key kept in clear as its name: `mbk_` and 8 hex digits.
pub(crate) const SHOWN: usize = KEY_PREFIX.len() + 8;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading random bytes for a key: {0}")]
    Random(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        KeyError::Db(DbError::Store(e))
    }
}

impl From<rusqlite::Error> for KeyError {
    fn from(e: rusqlite::Error) -> Self {
        KeyError::Db(DbError::Sql(e))
    }
}

/// A new key: `key` is shown once and never stored.
#[derive(Debug)]
pub struct Created {
    pub key: String,
    pub info: KeyInfo,
}

/// What is known about a key, without the key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub partner: String,
    pub prefix: String,
    pub label: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// An authenticated API caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: i64,
    pub partner: String,
    pub prefix: String,
    pub last_used_at: Option<String>,
}

impl Caller {
    /// The audit actor name of this key.
    pub fn actor(&self) -> String {
        format!("key:{}", self.prefix)
    }
}

/// Hex SHA-256 of a presented or created key.
pub fn hash(key: &str) -> String {
    // One formatting call: a `format!` per byte was a tenth of the API's
    // key check.
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// `n` random bytes, hex encoded.
fn random_hex(n: usize) -> Result<String, KeyError> {
    super::random_hex(n).map_err(|e| KeyError::Random(e.to_string()))
}

/// Create a key for `partner` (the caller checks the partner exists) and
/// audit it as done by `actor`. One write transaction of its own.
pub fn create<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    label: &str,
    actor: &str,
    client: Option<&str>,
) -> Result<Created, KeyError> {
    let at = chrono::Utc::now();
    let now = crate::db::now_text(at);
    super::write(db, |tx| {
        // A shown prefix is 32 bits: draw again on the rare collision.
        let key = loop {
            let key = format!("{KEY_PREFIX}{}", random_hex(KEY_BYTES)?);
            let taken = tx.query_opt(
                "SELECT 1 FROM api_keys WHERE prefix = ?1",
                args![&key[..SHOWN]],
            )?;
            if taken.is_none() {
                break key;
            }
        };
        let prefix = key[..SHOWN].to_owned();
        tx.execute(
            "INSERT INTO api_keys(partner, prefix, sha256, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![partner, &prefix, &hash(&key), label, &now],
        )?;
        super::audit::append(
            tx,
            &audit::Entry {
                actor,
                action: "api-key-create",
                partner: Some(partner),
                detail: &format!("key {prefix} label {label:?}"),
                client,
            },
            at,
        )?;
        crate::notify::api_key(tx, true, partner, &prefix, label, at)?;
        Ok(Created {
            key,
            info: KeyInfo {
                partner: partner.to_owned(),
                prefix,
                label: label.to_owned(),
                created_at: now.clone(),
                last_used_at: None,
                revoked_at: None,
            },
        })
    })
}

const COLUMNS: &str = "partner, prefix, label, created_at, last_used_at, revoked_at";

fn info(r: &Row) -> Result<KeyInfo, StoreError> {
    Ok(KeyInfo {
        partner: r.text(0)?,
        prefix: r.text(1)?,
        label: r.text(2)?,
        created_at: r.text(3)?,
        last_used_at: r.opt_text(4)?,
        revoked_at: r.opt_text(5)?,
    })
}

/// Every key (of `partner`, if given), revoked ones included, oldest first.
pub fn list<E: Exec + ?Sized>(db: &E, partner: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
    let rows = db.query(
        &format!(
            "SELECT {COLUMNS} FROM api_keys WHERE CAST(?1 AS TEXT) IS NULL OR partner = ?1 ORDER BY partner, id"
        ),
        args![partner],
    )?;
    Ok(rows.iter().map(info).collect::<Result<_, _>>()?)
}

/// Revoke the key named by `prefix` (only among `partner`'s keys, if
/// given). `None`: no such key that is not already revoked.
pub fn revoke<E: Exec + ?Sized>(
    db: &E,
    prefix: &str,
    partner: Option<&str>,
    actor: &str,
    client: Option<&str>,
) -> Result<Option<KeyInfo>, KeyError> {
    let at = chrono::Utc::now();
    super::write(db, |tx| {
        let rows = tx.query(
            &format!(
                "UPDATE api_keys SET revoked_at = ?2 WHERE prefix = ?1 AND revoked_at IS NULL \
                 AND (CAST(?3 AS TEXT) IS NULL OR partner = ?3) RETURNING {COLUMNS}"
            ),
            args![prefix, crate::db::now_text(at).as_str(), partner],
        )?;
        let Some(k) = rows.first().map(info).transpose()? else {
            return Ok(None);
        };
        super::audit::append(
            tx,
            &audit::Entry {
                actor,
                action: "api-key-revoke",
                partner: Some(&k.partner),
                detail: &format!("key {prefix}"),
                client,
            },
            at,
        )?;
        crate::notify::api_key(tx, false, &k.partner, &k.prefix, &k.label, at)?;
        Ok(Some(k))
    })
}

/// The partner a presented key acts for. `None` for an unknown or revoked
/// key alike.
pub fn authenticate<E: Exec + ?Sized>(db: &E, key: &str) -> Result<Option<Caller>, KeyError> {
    if !well_formed(key) {
        return Ok(None);
    }
    caller_by_hash(db, &hash(key))
}

/// Whether `key` could be one of ours at all: anything else is never
/// hashed or looked up.
pub fn well_formed(key: &str) -> bool {
    key.starts_with(KEY_PREFIX) && key.len() <= 128
}

/// The live key whose SHA-256 is `sha`, as [`authenticate`] finds it.
pub fn caller_by_hash<E: Exec + ?Sized>(db: &E, sha: &str) -> Result<Option<Caller>, KeyError> {
    let row = db.query_opt(
        "SELECT id, partner, prefix, last_used_at FROM api_keys \
         WHERE sha256 = ?1 AND revoked_at IS NULL",
        args![sha],
    )?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Caller {
        key_id: r.int(0)?,
        partner: r.text(1)?,
        prefix: r.text(2)?,
        last_used_at: r.opt_text(3)?,
    }))
}

/// Whether key `key_id` still exists unrevoked: what a writer job checks,
/// in its own transaction, for a cached key.
pub fn is_live<E: Exec + ?Sized>(db: &E, key_id: i64) -> Result<bool, StoreError> {
    Ok(db
        .query_opt(
            "SELECT 1 FROM api_keys WHERE id = ?1 AND revoked_at IS NULL",
            args![key_id],
        )?
        .is_some())
}

/// Record that key `key_id` was used at `now` (RFC 3339 UTC).
pub fn touch<E: Exec + ?Sized>(db: &E, key_id: i64, now: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
        args![key_id, now],
    )?;
    Ok(())
}
