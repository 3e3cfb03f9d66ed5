//! Partner API keys: created, listed and revoked by the CLI (and the site's
//! key page) through the plain functions here, and checked on every API
//! request by the [`ApiKey`] extractor (a database read each time) or the
//! [`CachedApiKey`] one (for write calls, whose writer job checks the key
//! again with [`is_live`]).
//!
//! What must stay true:
//! - a key is 160 random bits from the OS, shown once at creation; only its
//!   SHA-256 is stored, so a copy of the database gives no usable key;
//! - a key acts for its own partner only;
//! - an unknown and a revoked key get the same 401, byte for byte;
//! - every create and revoke writes an audit row naming the prefix, never
//!   the key.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit;
use crate::db::DbError;
use crate::web::problem::Problem;
use crate::web::AppState;

/// Every key starts with this, so a leaked one is easy to recognise (and to
/// search for in repositories).
pub const KEY_PREFIX: &str = "mbk_";
/// Random bytes in a key: 160 bits.
const KEY_BYTES: usize = 20;
/// Characters of the key kept in clear as its name: `mbk_` and 8 hex digits.
const SHOWN: usize = KEY_PREFIX.len() + 8;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading random bytes for a key: {0}")]
    Random(String),
    #[error(transparent)]
    Db(#[from] DbError),
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

/// Hex SHA-256 of a presented or created key.
pub fn hash(key: &str) -> String {
    // One formatting call: a `format!` per byte was a tenth of the API's
    // key check.
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// `n` bytes from the OS's generator (getrandom, as for passwords and
/// session ids), hex encoded.
fn random_hex(n: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Create a key for `partner` (the caller checks the partner exists) and
/// audit it as done by `actor`.
pub fn create(
    conn: &mut Connection,
    partner: &str,
    label: &str,
    actor: &str,
    client: Option<&str>,
) -> Result<Created, KeyError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = crate::db::now_text(chrono::Utc::now());
    // A shown prefix is 32 bits: draw again on the rare collision.
    let key = loop {
        let key = format!("{KEY_PREFIX}{}", random_hex(KEY_BYTES)?);
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM api_keys WHERE prefix = ?1)",
            [&key[..SHOWN]],
            |r| r.get(0),
        )?;
        if !taken {
            break key;
        }
    };
    let prefix = key[..SHOWN].to_owned();
    tx.execute(
        "INSERT INTO api_keys(partner, prefix, sha256, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![partner, prefix, hash(&key), label, now],
    )?;
    audit::record(
        &tx,
        &audit::Entry {
            actor,
            action: "api-key-create",
            partner: Some(partner),
            detail: &format!("key {prefix} label {label:?}"),
            client,
        },
    )?;
    tx.commit()?;
    Ok(Created {
        key,
        info: KeyInfo {
            partner: partner.to_owned(),
            prefix,
            label: label.to_owned(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        },
    })
}

const COLUMNS: &str = "partner, prefix, label, created_at, last_used_at, revoked_at";

fn info(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    Ok(KeyInfo {
        partner: r.get(0)?,
        prefix: r.get(1)?,
        label: r.get(2)?,
        created_at: r.get(3)?,
        last_used_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

/// Every key (of `partner`, if given), revoked ones included, oldest first.
pub fn list(conn: &Connection, partner: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE ?1 IS NULL OR partner = ?1 ORDER BY partner, id"
    ))?;
    let rows = st.query_map([partner], info)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revoke the key named by `prefix` (only among `partner`'s keys, if
/// given). `None`: no such key that is not already revoked.
pub fn revoke(
    conn: &mut Connection,
    prefix: &str,
    partner: Option<&str>,
    actor: &str,
    client: Option<&str>,
) -> Result<Option<KeyInfo>, KeyError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = crate::db::now_text(chrono::Utc::now());
    let n = tx.execute(
        "UPDATE api_keys SET revoked_at = ?2 WHERE prefix = ?1 AND revoked_at IS NULL \
         AND (?3 IS NULL OR partner = ?3)",
        params![prefix, now, partner],
    )?;
    if n == 0 {
        return Ok(None);
    }
    let k = tx.query_row(
        &format!("SELECT {COLUMNS} FROM api_keys WHERE prefix = ?1"),
        [prefix],
        info,
    )?;
    audit::record(
        &tx,
        &audit::Entry {
            actor,
            action: "api-key-revoke",
            partner: Some(&k.partner),
            detail: &format!("key {prefix}"),
            client,
        },
    )?;
    tx.commit()?;
    Ok(Some(k))
}

/// The partner a presented key acts for. `None` for an unknown or revoked
/// key alike.
pub fn authenticate(conn: &Connection, key: &str) -> Result<Option<Caller>, KeyError> {
    if !well_formed(key) {
        return Ok(None);
    }
    caller_by_hash(conn, &hash(key))
}

/// Whether `key` could be one of ours at all: anything else is never
/// hashed or looked up.
fn well_formed(key: &str) -> bool {
    key.starts_with(KEY_PREFIX) && key.len() <= 128
}

/// The live key whose SHA-256 is `sha`, as [`authenticate`] finds it.
fn caller_by_hash(conn: &Connection, sha: &str) -> Result<Option<Caller>, KeyError> {
    // Cached: every API request authenticates on a pooled reader.
    Ok(conn
        .prepare_cached(
            "SELECT id, partner, prefix, last_used_at FROM api_keys \
             WHERE sha256 = ?1 AND revoked_at IS NULL",
        )?
        .query_row([sha], |r| {
            Ok(Caller {
                key_id: r.get(0)?,
                partner: r.get(1)?,
                prefix: r.get(2)?,
                last_used_at: r.get(3)?,
            })
        })
        .optional()?)
}

/// Whether key `key_id` still exists unrevoked: what a writer job checks,
/// in its own transaction, for a [`CachedApiKey`].
pub fn is_live(conn: &Connection, key_id: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM api_keys WHERE id = ?1 AND revoked_at IS NULL)",
    )?
    .query_row([key_id], |r| r.get(0))
}

/// Record that key `key_id` was used at `now` (RFC 3339 UTC).
pub fn touch(conn: &Connection, key_id: i64, now: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
        params![key_id, now],
    )?;
    Ok(())
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

/// The one 401: the same for a missing, malformed, unknown or revoked key.
pub fn unauthorized() -> Response {
    let mut r = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
        .detail("send a valid API key as `Authorization: Bearer KEY`")
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"milebatch\""),
    );
    r
}

/// The calling key, from `Authorization: Bearer KEY`, for a partner that
/// still exists in the configuration: read from the database on every
/// request.
pub struct ApiKey(pub Caller);

/// The calling key as this process found it live at most
/// [`key_cache::TTL`](super::key_cache::TTL) ago. Only for handlers whose
/// writer job confirms the key with [`is_live`] in its own transaction
/// (and answers [`unauthorized`] when it is not): the cache saves the
/// read, the job decides.
pub struct CachedApiKey(pub Caller);

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let sha = presented(parts).ok_or_else(unauthorized)?;
        let found = look_up(state, sha).await?;
        admitted(state, found).map(ApiKey)
    }
}

impl FromRequestParts<AppState> for CachedApiKey {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let sha = presented(parts).ok_or_else(unauthorized)?;
        let now = std::time::Instant::now();
        if let Some(caller) = state.keys.get(&sha, now) {
            return admitted(state, Some(caller)).map(CachedApiKey);
        }
        let found = look_up(state, sha.clone()).await?;
        if let Some(c) = &found {
            state.keys.put(sha, c.clone(), now);
        }
        admitted(state, found).map(CachedApiKey)
    }
}

/// The SHA-256 of the key in `Authorization: Bearer KEY`, hashed once per
/// request, when that is the header and the key is well formed.
fn presented(parts: &Parts) -> Option<String> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && well_formed(key)).then(|| hash(key))
}

/// The caller of the key hashed `sha`, read now from the database.
async fn look_up(state: &AppState, sha: String) -> Result<Option<Caller>, Response> {
    state
        .readers
        .with(move |c| caller_by_hash(c, &sha))
        .await
        .map_err(|e| crate::web::problem::internal(&e).into_response())
}

/// A live key of a configured partner is let in (and its use recorded);
/// anything else is the one 401.
// The rejection is the answer itself, as axum's own extractors give it.
#[allow(clippy::result_large_err)]
fn admitted(state: &AppState, found: Option<Caller>) -> Result<Caller, Response> {
    match found {
        Some(caller) if state.config.partner(&caller.partner).is_some() => {
            if let Some(at) = state.writer.touch_key(&caller) {
                state.keys.used(caller.key_id, &at);
            }
            Ok(caller)
        }
        _ => Err(unauthorized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_authenticate_revoke() {
        let d = tempfile::tempdir().unwrap();
        let mut c = crate::db::open(&d.path().join("k.db")).unwrap();
        let a = create(&mut c, "shop", "web shop", "cli:ops", None).unwrap();
        let b = create(&mut c, "other", "", "cli:ops", None).unwrap();
        assert!(a.key.starts_with(KEY_PREFIX));
        assert_eq!(a.key.len(), KEY_PREFIX.len() + 2 * KEY_BYTES);
        assert_ne!(a.key, b.key);
        assert_eq!(a.info.prefix, &a.key[..SHOWN]);
        // Only the hash is stored.
        let stored: String = c
            .query_row(
                "SELECT group_concat(sha256 || prefix || label) FROM api_keys",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!stored.contains(&a.key[SHOWN..]), "{stored}");

        assert_eq!(list(&c, None).unwrap().len(), 2);
        assert_eq!(list(&c, Some("shop")).unwrap(), vec![a.info.clone()]);
        let who = authenticate(&c, &a.key).unwrap().unwrap();
        assert_eq!(who.partner, "shop");
        assert!(authenticate(&c, "mbk_0000").unwrap().is_none());
        assert!(authenticate(&c, &a.key[..a.key.len() - 1])
            .unwrap()
            .is_none());

        // Another partner cannot revoke it; its own partner can.
        assert!(revoke(&mut c, &a.info.prefix, Some("other"), "x", None)
            .unwrap()
            .is_none());
        let r = revoke(&mut c, &a.info.prefix, Some("shop"), "cli:ops", None)
            .unwrap()
            .unwrap();
        assert!(r.revoked_at.is_some());
        assert!(authenticate(&c, &a.key).unwrap().is_none());
        assert!(
            revoke(&mut c, &a.info.prefix, None, "x", None)
                .unwrap()
                .is_none(),
            "already revoked"
        );
        assert!(authenticate(&c, &b.key).unwrap().is_some());

        let audited: i64 = c
            .query_row(
                "SELECT count(*) FROM audit WHERE action IN ('api-key-create', 'api-key-revoke') AND detail NOT LIKE '%' || ?1 || '%'",
                [&a.key[SHOWN..]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(audited, 3);
    }
}
