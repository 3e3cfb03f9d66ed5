//! `POST /api/v1/members/verify`: does this member ID belong to the member
//! with this e-mail, and is that member active? For partners that let
//! their users type a NetMile user ID.
//!
//! What must stay true: every "no" (no such member ID, no such e-mail, a
//! mismatch, an inactive member) is the same answer: the same status, the
//! same body, and the same time (both look-ups always run, and the answer
//! waits until [`FLOOR`] has passed). No member attribute is ever returned.
//! Every call is audited, with the key's prefix and the result, never the
//! e-mail; the answer leaves only once its audit row is committed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::{Connection, OptionalExtension};
use serde::Deserialize;

use crate::members::{normalize_email, Status};
use crate::web::auth::api_keys::ApiKey;
use crate::web::problem::internal;
use crate::web::writer::AuditRow;
use crate::web::AppState;

/// The least time a verify call takes before its answer, whatever it is.
/// What it hides is the difference between a hit and a miss of two index
/// probes (microseconds), so 1 ms is ample. Every millisecond of it is
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

/// Whether `member_id` and `email` name the same active member. Both
/// look-ups always run.
pub fn matches(conn: &Connection, member_id: &str, email: &str) -> rusqlite::Result<bool> {
    let by_id: Option<(i64, i64)> = conn
        .prepare_cached("SELECT id, status FROM members WHERE member_id = ?1")?
        .query_row([member_id.trim()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let by_email: Option<i64> = conn
        .prepare_cached("SELECT id FROM members WHERE email = ?1")?
        .query_row([normalize_email(email)], |r| r.get(0))
        .optional()?;
    Ok(match (by_id, by_email) {
        (Some((a, status)), Some(b)) => a == b && Status::from_db(status) == Status::Active,
        _ => false,
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/members/verify",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "`match` is true only for the same active member; every no is identical", body = VerifyAnswer),
        (status = 400, body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive whole within 10 s", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 500, description = "The database failed; nothing was done", body = super::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn verify(
    State(state): State<AppState>,
    ApiKey(caller): ApiKey,
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
    let looked = state
        .readers
        .with(move |c| matches(c, &req.member_id, &req.email).map_err(crate::db::DbError::from))
        .await;
    let matched = match looked {
        Ok(m) => m,
        Err(e) => return internal(&e).into_response(),
    };
    let audit = state
        .writer
        .audit(AuditRow {
            actor: caller.actor(),
            action: "member-verify",
            partner: partner.id.clone(),
            detail: format!(
                "key {} result {}",
                caller.prefix,
                if matched { "match" } else { "no-match" }
            ),
            client: Some(peer.ip().to_string()),
        })
        .await;
    if let Err(e) = audit {
        return internal(&e).into_response();
    }
    tokio::time::sleep_until((start + FLOOR).into()).await;
    let mut r = Json(serde_json::json!({ "match": matched })).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_active_member_matches() {
        let d = tempfile::tempdir().unwrap();
        let mut c = crate::db::open(&d.path().join("m.db")).unwrap();
        crate::members::import_from(
            &mut c,
            "A1,a@x.jp,active\nB1,b@x.jp,active\nS1,s@x.jp,suspended\n".as_bytes(),
            "m",
        )
        .unwrap();
        assert!(matches(&c, "A1", "A@X.JP ").unwrap());
        assert!(!matches(&c, "A1", "b@x.jp").unwrap(), "mismatch");
        assert!(!matches(&c, "S1", "s@x.jp").unwrap(), "inactive");
        assert!(!matches(&c, "Z9", "a@x.jp").unwrap(), "no such id");
        assert!(!matches(&c, "A1", "z@x.jp").unwrap(), "no such e-mail");
    }
}
