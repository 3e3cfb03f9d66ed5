//! `POST /api/v1/exchanges`: one exchange credited exactly once, keyed by
//! the `Idempotency-Key` header; the row rules and codes of a CSV row.
//!
//! What must stay true: the handler only checks the request's shape
//! (auth, content type, key, JSON) and limits; every decision about money
//! (validation, replay, the daily cap, the credit) is made by the writer
//! inside the transaction that commits it.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::MAX_BODY;
use crate::web::auth::api_keys::ApiKey;
use crate::web::problem::{internal, Problem};
use crate::web::writer::{Exchange, Outcome};
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/exchanges", post(create))
}

/// The request body. Unknown fields are refused (400), so a typo such as
/// `"mile"` is never silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewExchange {
    /// A member ID (`NM…`) or a registered e-mail.
    pub member: String,
    pub partner_key: String,
    /// A positive whole number.
    pub miles: serde_json::Number,
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad Request").detail(detail)
}

/// 1–255 printable ASCII characters.
pub fn valid_idempotency_key(k: &[u8]) -> bool {
    (1..=255).contains(&k.len()) && k.iter().all(|b| (0x20..=0x7e).contains(b))
}

async fn create(
    State(state): State<AppState>,
    ApiKey(caller): ApiKey,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(partner) = state.config.partner(&caller.partner) else {
        return crate::web::auth::api_keys::unauthorized();
    };
    let api = &partner.api;
    if !api.enabled {
        return Problem::new(StatusCode::FORBIDDEN, "api-disabled", "Forbidden")
            .detail("the API is not enabled for this partner (`[partner.api] enabled`)")
            .into_response();
    }
    if let Err(secs) = state.limiter.take(caller.key_id, api.rate, Instant::now()) {
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too Many Requests",
        )
        .detail(format!(
            "more than {}/s (burst {}) for this key",
            api.rate.per_second, api.rate.burst
        ))
        .retry_after(secs)
        .into_response();
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported Media Type",
        )
        .detail("send `Content-Type: application/json`")
        .into_response();
    }
    let idem_key = match headers.get("idempotency-key") {
        Some(v) if valid_idempotency_key(v.as_bytes()) => v.to_str().unwrap_or_default().to_owned(),
        Some(_) => {
            return bad_request("`Idempotency-Key` must be 1 to 255 printable ASCII characters")
                .into_response()
        }
        None => {
            return bad_request("the `Idempotency-Key` header is required (a unique value per exchange, reused only to retry it)")
                .into_response()
        }
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return bad_request(format!("the body is larger than {MAX_BODY} bytes")).into_response();
    };
    let req: NewExchange = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "the body must be a JSON object {{\"member\", \"partner_key\", \"miles\"}}: {e}"
            ))
            .into_response()
        }
    };
    // Miles as a CSV row would carry them: a JSON integer keeps its digits;
    // a negative number or a fraction fails E006 like "-5" or "5.0" does.
    let miles = match req.miles.as_u64() {
        Some(m) => m.to_string(),
        None => "-".to_owned(),
    };
    let canonical =
        serde_json::json!([req.member, req.partner_key, req.miles.to_string()]).to_string();
    let request_sha256 = Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = chrono::Utc::now();
    let tz = state.writer.tz();
    let today = now.with_timezone(&tz).date_naive();
    let next = today
        .succ_opt()
        .map(|d| crate::timefmt::start_of_day(d, tz))
        .unwrap_or(now);
    let x = Exchange {
        partner: partner.id.clone(),
        key_prefix: caller.prefix.clone(),
        idem_key,
        request_sha256,
        member: req.member,
        partner_key: req.partner_key,
        miles,
        rules: partner.rules(),
        daily_miles_limit: api.daily_miles_limit,
        day: today.format("%Y-%m-%d").to_string(),
        secs_to_next_day: (next - now).num_seconds().max(1) as u64,
    };
    match state.writer.exchange(x).await {
        Err(_) => Problem::new(StatusCode::CONFLICT, "in-flight", "Conflict")
            .detail("a request with this Idempotency-Key is still being processed: retry later")
            .retry_after(1)
            .into_response(),
        Ok(Err(e)) => internal(&e).into_response(),
        Ok(Ok(Outcome::KeyReused)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
        )
        .detail("this Idempotency-Key was used before with a different body")
        .into_response(),
        Ok(Ok(Outcome::DailyCap { retry_after })) => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "daily-limit",
            "Too Many Requests",
        )
        .detail(format!(
            "this exchange would pass the partner's daily limit of {} miles",
            api.daily_miles_limit
        ))
        .retry_after(retry_after)
        .into_response(),
        Ok(Ok(Outcome::Stored {
            status,
            body,
            replayed,
        })) => stored(status, body, replayed),
    }
}

/// A stored answer, as first given or replayed.
fn stored(status: u16, body: String, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ctype = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys() {
        assert!(valid_idempotency_key(b"a"));
        assert!(valid_idempotency_key(&[b'x'; 255]));
        assert!(!valid_idempotency_key(&[b'x'; 256]));
        assert!(!valid_idempotency_key(b""));
        assert!(!valid_idempotency_key(b"tab\there"));
        assert!(!valid_idempotency_key("鍵".as_bytes()));
    }
}
