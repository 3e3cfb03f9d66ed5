//! `POST /api/v1/exchanges`: one exchange credited exactly once, keyed by
//! the `Idempotency-Key` header; the row rules and codes of a CSV row.
//!
//! What must stay true: the handler only checks the request's shape
//! (auth, content type, key, JSON) and limits; every decision about money
//! (validation, replay, the daily cap, the credit) is made by the writer
//! inside the transaction that commits it.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::web::auth::api_keys::{unauthorized, ApiKey, CachedApiKey};
use crate::web::problem::{internal, Problem};
use crate::web::writer::{Exchange, Outcome};
use crate::web::AppState;

/// The 201 body (written by `writer.rs`, stored and replayed as is).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Credited {
    /// The exchange's id, for `GET /api/v1/exchanges/{id}`.
    pub id: i64,
    pub partner_key: String,
    pub miles: u64,
    /// RFC 3339 UTC.
    pub credited_at: String,
}

/// The request body. Unknown fields are refused (400), so a typo such as
/// `"mile"` is never silently ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExchange {
    /// A member ID (`NM…`) or a registered e-mail.
    pub member: String,
    /// The partner's own key of the exchange, 1–64 characters.
    pub partner_key: String,
    /// A whole number ≥ 1, at most the partner's `max_miles_per_row`.
    /// Judged on its JSON text by the CSV rule: digits only (a sign, a
    /// fraction or an exponent is E006), and a value above the maximum is
    /// E007 however large, 2^64 and beyond included.
    #[schema(value_type = i64, minimum = 1)]
    pub miles: Box<serde_json::value::RawValue>,
}

use super::bad_request;

/// 1–255 printable ASCII characters.
pub fn valid_idempotency_key(k: &[u8]) -> bool {
    (1..=255).contains(&k.len()) && k.iter().all(|b| (0x20..=0x7e).contains(b))
}

#[utoipa::path(
    post,
    path = "/api/v1/exchanges",
    request_body = NewExchange,
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "1–255 printable ASCII characters, unique per exchange; the same key replays the first answer. Exactly one: two are a 400")),
    responses(
        (status = 201, description = "Credited, committed before this answer", body = Credited),
        (status = 400, description = "Bad JSON, fields or types, a number JSON cannot hold, no or two Idempotency-Key headers, body over 16 KiB", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or revoked key", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The partner's API is not enabled", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The same Idempotency-Key is still being processed (Retry-After)", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Rejected with a row code (`code`: E002–E007, E009, E010), or the Idempotency-Key was used with another body", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive whole within 10 s", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The key's rate or the partner's daily miles limit (Retry-After)", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 500, description = "The database failed; nothing was done", body = super::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    CachedApiKey(caller): CachedApiKey,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let partner = match super::admit(&state, &caller, super::limits::Bucket::Exchanges) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let api = &partner.api;
    // The key is checked before the body is read: a request without one
    // is refused without reading it.
    // Two keys are two answers to "which exchange is this?": refused
    // rather than one of them picked.
    if headers.get_all("idempotency-key").iter().nth(1).is_some() {
        return bad_request("send one `Idempotency-Key` header, not several").into_response();
    }
    let idem_key = match headers.get("idempotency-key") {
        Some(v) if valid_idempotency_key(v.as_bytes()) => {
            v.to_str().unwrap_or_default().to_owned()
        }
        Some(_) => {
            return bad_request("`Idempotency-Key` must be 1 to 255 printable ASCII characters")
                .into_response()
        }
        None => return bad_request(
            "the `Idempotency-Key` header is required (a unique value per exchange, reused only to retry it)",
        )
        .into_response(),
    };
    let req: NewExchange =
        match super::json_body(&headers, body, "{\"member\", \"partner_key\", \"miles\"}").await {
            Ok(r) => r,
            Err(r) => return r,
        };
    // Miles as a CSV row would carry them: the number's JSON text, so that
    // one rule judges both ("-5", "5.0", "1e3" E006; any run of digits
    // above the maximum E007, however long). JSON's own limits (an f64)
    // never apply: 1e309 is E006 like "1e309" in a file, not a 400.
    let miles = req.miles.get().to_owned();
    if !miles.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return bad_request("`miles` must be a JSON number, such as 120").into_response();
    }
    let canonical = serde_json::json!([req.member, req.partner_key, miles]).to_string();
    let request_sha256 = format!("{:x}", Sha256::digest(canonical.as_bytes()));
    let now = chrono::Utc::now();
    let tz = state.writer.tz();
    let today = now.with_timezone(&tz).date_naive();
    let next = today
        .succ_opt()
        .map(|d| crate::timefmt::start_of_day(d, tz))
        .unwrap_or(now);
    let x = Exchange {
        partner: partner.id.clone(),
        key_id: caller.key_id,
        key_prefix: caller.prefix.clone(),
        idem_key,
        request_sha256,
        member: req.member,
        partner_key: req.partner_key,
        miles,
        rules: partner.rules(),
        unique_partner_key: partner.unique_partner_key,
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
        Ok(Ok(Outcome::KeyRevoked)) => {
            state.keys.forget(caller.key_id);
            unauthorized()
        }
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

/// One credit as the API shows it: from the API (`channel` `api`, its
/// exchange `id`) or from a file (`pull` or `upload`, with the file's id
/// and line). Never the member or a balance.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Credit {
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub partner_key: String,
    pub miles: i64,
    pub credited_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    /// Whether this credit was taken back (`milebatch reverse`). Its miles
    /// stay as credited; the reversal is described in `reversal`.
    pub reversed: bool,
    /// The reversal that took this credit back; `null` when not reversed.
    pub reversal: Option<Reversal>,
}

/// How a credit was taken back. Who did it stays in our audit trail.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Reversal {
    /// The reversal's id (the same for every credit of a reversed file).
    pub id: i64,
    /// When (RFC 3339 UTC).
    pub reversed_at: String,
    /// Why, as written by the operator who reversed it.
    pub reason: String,
}

/// The reversal named by columns `at` (id), `at + 1` (when) and `at + 2`
/// (why) of `r`: NULL columns when the credit was not reversed.
fn reversal_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Option<Reversal>> {
    Ok(match r.get::<_, Option<i64>>(at)? {
        None => None,
        Some(id) => Some(Reversal {
            id,
            reversed_at: r.get::<_, Option<String>>(at + 1)?.unwrap_or_default(),
            reason: r.get::<_, Option<String>>(at + 2)?.unwrap_or_default(),
        }),
    })
}

/// A credit row `l`'s compensating row (same key, miles negated: one
/// primary-key probe) and its `reversals` row, as `rl` and `v`.
const REVERSAL_JOIN: &str = "LEFT JOIN ledger rl ON rl.partner = l.partner AND rl.partner_key = l.partner_key
       AND rl.file_id = l.file_id AND rl.member = l.member AND rl.miles = -l.miles AND rl.dup = l.dup
     LEFT JOIN reversals v ON v.id = rl.reversal";

/// A page of [`search`].
pub const PAGE: i64 = 100;

fn not_found() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not Found").into_response()
}

fn unix_text(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// `GET /api/v1/exchanges/{id}`: one of the caller's own API credits.
/// Another partner's id, a rejected exchange and no exchange at all are
/// the same 404.
#[utoipa::path(
    get,
    path = "/api/v1/exchanges/{id}",
    params(("id" = i64, Path, description = "The id a 201 gave")),
    responses(
        (status = 200, description = "The credit", body = Credit),
        (status = 401, description = "Missing, unknown or revoked key", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The partner's API is not enabled", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such credit of this partner", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 500, description = "The database failed", body = super::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn one(
    State(state): State<AppState>,
    ApiKey(caller): ApiKey,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = super::enabled(&state, &caller) {
        return r;
    }
    let Ok(id) = id.parse::<i64>() else {
        return not_found();
    };
    let partner = caller.partner.clone();
    let found = state
        .readers
        .with(move |c| -> Result<Option<Credit>, crate::db::DbError> {
            use rusqlite::OptionalExtension as _;
            Ok(c.query_row(
                &format!(
                    "SELECT l.partner_key, l.miles, l.credited_at, v.id, v.at, v.reason
                     FROM api_exchanges x
                     JOIN ledger l ON l.partner = x.partner AND l.partner_key = x.partner_key
                       AND l.file_id = 0 AND l.member = x.member AND l.miles = x.miles AND l.dup = x.id
                     {REVERSAL_JOIN}
                     WHERE x.id = ?1 AND x.partner = ?2 AND x.status = 201"
                ),
                rusqlite::params![id, partner],
                |r| {
                    let reversal = reversal_at(r, 3)?;
                    Ok(Credit {
                        channel: "api".into(),
                        id: Some(id),
                        partner_key: r.get(0)?,
                        miles: r.get(1)?,
                        credited_at: unix_text(r.get(2)?),
                        file_id: None,
                        line: None,
                        reversed: reversal.is_some(),
                        reversal,
                    })
                },
            )
            .optional()?)
        })
        .await;
    match found {
        Ok(Some(c)) => axum::Json(c).into_response(),
        Ok(None) => not_found(),
        Err(e) => internal(&e).into_response(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// The partner key whose credits are listed (required: 400 without it,
    /// or with nothing but spaces).
    #[param(required = true, value_type = String, min_length = 1, pattern = "\\S")]
    pub partner_key: Option<String>,
    /// RFC 3339; credits at or after it.
    #[param(value_type = String, format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; credits before it.
    #[param(value_type = String, format = DateTime)]
    pub to: Option<String>,
    /// `next_cursor` of the previous page, as given, with the same
    /// `partner_key`: a cursor this server did not give out is a 400.
    #[param(value_type = String, pattern = "^[A-Za-z0-9_-]{64}$")]
    pub cursor: Option<String>,
}

/// A page of credits.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: `search` builds it as JSON
pub struct CreditPage {
    credits: Vec<Credit>,
    /// Pass back as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

use super::cursor::Position as Cursor;

fn parse_time(name: &str, v: Option<&str>) -> Result<Option<i64>, Problem> {
    let Some(v) = v else { return Ok(None) };
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp()))
        .map_err(|_| {
            bad_request(format!(
                "`{name}` must be an RFC 3339 time such as 2026-11-29T00:00:00+09:00"
            ))
        })
}

/// `GET /api/v1/exchanges?partner_key=&from=&to=&cursor=`: every credit of
/// one of the caller's partner keys, from the API and from files, `PAGE`
/// at a time; `next_cursor` fetches the next page.
#[utoipa::path(
    get,
    path = "/api/v1/exchanges",
    params(SearchQuery),
    responses(
        (status = 200, description = "Credits of the partner key, from the API and from files, 100 a page", body = CreditPage),
        (status = 400, description = "No `partner_key`, an unknown parameter, a time that is not RFC 3339, or a cursor this server did not give out", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or revoked key", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The partner's API is not enabled", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 500, description = "The database failed", body = super::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn search(
    State(state): State<AppState>,
    ApiKey(caller): ApiKey,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = super::enabled(&state, &caller) {
        return r;
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_request(e.body_text()).into_response(),
    };
    let Some(key) = q
        .partner_key
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
    else {
        return bad_request("`partner_key` is required: the credits of one partner key are listed")
            .into_response();
    };
    let (from, to) = match (
        parse_time("from", q.from.as_deref()),
        parse_time("to", q.to.as_deref()),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    let after = match q
        .cursor
        .as_deref()
        .map(|c| state.cursor_key.open(&caller.partner, &key, c))
    {
        None => Cursor::START,
        Some(Some(c)) => c,
        Some(None) => return bad_request(
            "`cursor` is not one this API gave out for this partner_key: pass `next_cursor` of the previous page as it is, with the same partner_key",
        )
        .into_response(),
    };
    let partner = caller.partner.clone();
    let scope_key = key.clone();
    let page = state
        .readers
        .with(
            move |c| -> Result<(Vec<Credit>, Option<Cursor>), crate::db::DbError> {
                // Credits only: a compensating row shows as its credit's
                // `reversal`, not as an entry of its own.
                let mut st = c.prepare_cached(&format!(
                    "SELECT l.file_id, l.member, l.miles, l.dup, l.line, l.credited_at, f.channel,
                        v.id, v.at, v.reason
                 FROM ledger l LEFT JOIN files f ON f.id = l.file_id AND l.file_id <> 0
                 {REVERSAL_JOIN}
                 WHERE l.partner = ?1 AND l.partner_key = ?2
                   AND (l.file_id, l.member, l.miles, l.dup) > (?3, ?4, ?5, ?6)
                   AND l.reversal IS NULL
                   AND (?7 IS NULL OR l.credited_at >= ?7) AND (?8 IS NULL OR l.credited_at < ?8)
                 ORDER BY l.file_id, l.member, l.miles, l.dup
                 LIMIT ?9"
                ))?;
                let mut out = Vec::new();
                let mut last = None;
                let mut rows = st.query(rusqlite::params![
                    partner,
                    key,
                    after.0,
                    after.1,
                    after.2,
                    after.3,
                    from,
                    to,
                    PAGE + 1
                ])?;
                while let Some(r) = rows.next()? {
                    if out.len() as i64 == PAGE {
                        return Ok((out, last));
                    }
                    let file_id: i64 = r.get(0)?;
                    let dup: i64 = r.get(3)?;
                    last = Some(Cursor(file_id, r.get(1)?, r.get(2)?, dup));
                    let api = file_id == 0;
                    let reversal = reversal_at(r, 7)?;
                    out.push(Credit {
                        channel: if api {
                            "api".into()
                        } else {
                            r.get::<_, Option<String>>(6)?
                                .unwrap_or_else(|| "pull".into())
                        },
                        id: api.then_some(dup),
                        partner_key: key.clone(),
                        miles: r.get(2)?,
                        credited_at: unix_text(r.get(5)?),
                        file_id: (!api).then_some(file_id),
                        line: (!api).then_some(r.get(4)?),
                        reversed: reversal.is_some(),
                        reversal,
                    });
                }
                Ok((out, None))
            },
        )
        .await;
    match page {
        Ok((credits, next)) => axum::Json(serde_json::json!({
            "credits": credits,
            "next_cursor": next.map(|c| state.cursor_key.seal(&caller.partner, &scope_key, c)),
        }))
        .into_response(),
        Err(e) => internal(&e).into_response(),
    }
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
