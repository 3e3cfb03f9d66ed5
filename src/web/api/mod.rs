//! The partner API, `/api/v1/…`: one file per resource. Every route
//! authenticates with [`ApiKey`](super::auth::api_keys::ApiKey), answers
//! errors as problem+json and reads at most [`MAX_BODY`] bytes of body.

pub mod cursor;
pub mod exchanges;
pub mod limits;
pub mod members;
pub mod openapi;

use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;

use super::auth::api_keys::Caller;
use super::problem::Problem;
use super::AppState;
use crate::config::PartnerConfig;

/// The largest request body the API reads.
pub const MAX_BODY: usize = 16 * 1024;

/// How long the API waits for a whole request body.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn routes() -> Router<AppState> {
    let (router, doc) = openapi::router();
    let doc = std::sync::Arc::new(doc.to_json().unwrap_or_default());
    router
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method Not Allowed",
            )
        })
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
}

pub(crate) fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad Request").detail(detail)
}

/// The caller's partner, if its API is enabled: 403 otherwise. Every API
/// route calls it (reads included, through [`admit`] or directly), so a
/// partner whose API is off gets nothing, not even its own credits back.
/// A look-up in the loaded config: no database round trip.
// The rejection is the answer itself, as axum's own extractors give it.
#[allow(clippy::result_large_err)]
pub(crate) fn enabled<'a>(
    state: &'a AppState,
    caller: &Caller,
) -> Result<&'a PartnerConfig, Response> {
    let Some(partner) = state.config.partner(&caller.partner) else {
        return Err(super::auth::api_keys::unauthorized());
    };
    if !partner.api.enabled {
        return Err(
            Problem::new(StatusCode::FORBIDDEN, "api-disabled", "Forbidden")
                .detail("the API is not enabled for this partner (`[partner.api] enabled`)")
                .into_response(),
        );
    }
    Ok(partner)
}

/// The caller's partner, if its API is enabled (403 otherwise), after
/// taking a token from the key's `bucket` (429 when empty).
#[allow(clippy::result_large_err)]
pub(crate) fn admit<'a>(
    state: &'a AppState,
    caller: &Caller,
    bucket: limits::Bucket,
) -> Result<&'a PartnerConfig, Response> {
    let partner = enabled(state, caller)?;
    let api = &partner.api;
    if let Err(secs) = state
        .limiter
        .take((caller.key_id, bucket), api.rate, Instant::now())
    {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too Many Requests",
        )
        .detail(format!(
            "more than {}/s (burst {}) for this key",
            api.rate.per_second, api.rate.burst
        ))
        .retry_after(secs)
        .into_response());
    }
    Ok(partner)
}

/// A JSON body of type `T`: 415 unless `Content-Type: application/json`,
/// 400 for more than [`MAX_BODY`] bytes or anything `T` does not accept,
/// 408 when it has not arrived whole within [`BODY_READ_TIMEOUT`].
pub(crate) async fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    shape: &str,
) -> Result<T, Response> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported Media Type",
        )
        .detail("send `Content-Type: application/json`")
        .into_response());
    }
    // A body that never completes (slow or stalled client) must not hold
    // the request, and its memory, open without bound.
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(
                bad_request(format!("the body is larger than {MAX_BODY} bytes")).into_response(),
            )
        }
        Err(_) => {
            let mut r = Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request Timeout",
            )
            .detail(format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ))
            .into_response();
            // The rest of the body is never read: the connection cannot
            // carry another request.
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return Err(r);
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        bad_request(format!("the body must be a JSON object {shape}: {e}")).into_response()
    })
}
