//! Partner API keys on the HTTP side: the [`ApiKey`] extractor (a
//! database read each time), the [`CachedApiKey`] one (for write calls,
//! whose writer job checks the key again with [`is_live`]), and the one 401.
//! Creating, listing, revoking and looking keys up is
//! `crate::store::api_keys` (re-exported here), on either engine.
//!
//! What must stay true:
//! - a key acts for its own partner only;
//! - an unknown and a revoked key get the same 401, byte for byte.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rusqlite::Connection;

pub use crate::store::api_keys::{
    authenticate, create, hash, list, revoke, Caller, Created, KeyError, KeyInfo, KEY_PREFIX,
};
use crate::store::api_keys::{caller_by_hash, well_formed};
use crate::web::problem::Problem;
use crate::web::AppState;

/// Whether key `key_id` still exists unrevoked: what a writer job checks,
/// in its own transaction, for a [`CachedApiKey`].
pub fn is_live(conn: &Connection, key_id: i64) -> rusqlite::Result<bool> {
    crate::store::api_keys::is_live(conn, key_id).map_err(crate::store::StoreError::into_sqlite)
}

/// Record that key `key_id` was used at `now` (RFC 3339 UTC).
pub fn touch(conn: &Connection, key_id: i64, now: &str) -> rusqlite::Result<()> {
    crate::store::api_keys::touch(conn, key_id, now).map_err(crate::store::StoreError::into_sqlite)
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

// Creating, listing, authenticating and revoking keys are tested on both
// engines from the same code: tests/store_conformance.rs.
