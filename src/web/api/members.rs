//! `POST /api/v1/members/verify`: does this member ID belong to the member
//! with this e-mail, and is that member active? For partners that let
//! their users type a NetMile user ID.
//!
//! What must stay true: every "no" (no such member ID, no such e-mail, a
//! mismatch, an inactive member) is the same answer: the same status, the
//! same body, and the same time (the answer waits until [`FLOOR`] has
//! passed). No member attribute is ever returned.
//! Every call is audited, with the key's prefix and the result, never the
//! e-mail; the answer leaves only once its audit row is committed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::web::auth::api_keys::{unauthorized, CachedApiKey};
use crate::web::problem::internal;
use crate::web::writer::VerifyCall;
use crate::web::AppState;

/// The least time a verify call takes before its answer, whatever it is.
/// What it hides is the difference between a hit and a miss of one
/// member look-up (a B-tree more or less: microseconds), so 1 ms is ample. Every millisecond of it is
/// latency for the caller and, for a client with a fixed number of
/// connections, throughput (bench/api.sh: 3 ms held 64 connections to
/// about 12,500 calls/s).
pub const FLOOR: Duration = Duration::from_millis(1);

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// A member ID (`NM…`).
    pub member_id: String,
    /// The e-mail the user gave (any case).
    pub email: String,
}

/// The answer: nothing but yes or no.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: `verify` builds it as JSON
pub struct VerifyAnswer {
    #[schema(rename = "match")]
    matched: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/members/verify",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "`match` is true only for the same active member; every no is identical", body = VerifyAnswer),
        (status = 400, description = "Bad JSON, fields or types, body over 16 KiB", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or revoked key", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The partner's API is not enabled", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive whole within 10 s", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The key's rate or the partner's daily verify limit (Retry-After)", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 500, description = "The database failed; nothing was done", body = super::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn verify(
    State(state): State<AppState>,
    CachedApiKey(caller): CachedApiKey,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let partner = match super::admit(&state, &caller, super::limits::Bucket::Verify) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Err(secs) = state.verify_quota.take(
        &partner.id,
        partner.api.daily_verify_limit,
        chrono::Utc::now(),
        state.writer.tz(),
    ) {
        return crate::web::problem::Problem::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "daily-limit",
            "Too Many Requests",
        )
        .detail(format!(
            "the partner's {} verify calls for today are used up",
            partner.api.daily_verify_limit
        ))
        .retry_after(secs)
        .into_response();
    }
    let req: VerifyRequest =
        match super::json_body(&headers, body, "{\"member_id\", \"email\"}").await {
            Ok(r) => r,
            Err(r) => return r,
        };
    // One writer job: the look-up and its audit row in one transaction.
    let matched = match state
        .writer
        .verify(VerifyCall {
            member_id: req.member_id,
            email: req.email,
            partner: partner.id.clone(),
            key_id: caller.key_id,
            actor: caller.actor(),
            key_prefix: caller.prefix.clone(),
            client: Some(peer.ip().to_string()),
        })
        .await
    {
        Ok(Some(m)) => m,
        Ok(None) => {
            state.keys.forget(caller.key_id);
            return unauthorized();
        }
        Err(e) => return internal(&e).into_response(),
    };
    tokio::time::sleep_until((start + FLOOR).into()).await;
    let mut r = Json(serde_json::json!({ "match": matched })).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}
