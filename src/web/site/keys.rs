//! `GET /keys`: a partner user's API keys (prefix, label, created, last
//! used, revoked); `POST /keys`: a new key, then 303 to `GET
//! /keys/created`, which shows it once (from the session's flash, so a
//! reload never posts again); `GET/POST /keys/{prefix}/revoke`: revoke,
//! after a confirmation page.
//!
//! What must stay true: only partner users have this page (ops manage keys
//! with `milebatch api-key`), each only its own partner's keys: another
//! partner's prefix answers the same 404 as a missing one. A created key
//! is on exactly one response (the first `GET /keys/created`, `no-store`)
//! and never stored or logged (its flash is in memory, `flash.rs`); `api_keys::create`/`revoke` write the audit rows.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::flash;
use super::form::Form;
use super::{client, forbidden, render, with_db_mut, with_read, Page};
use crate::timefmt;
use crate::web::auth::api_keys;
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/keys", get(list).post(create))
        .route("/keys/created", get(created))
        .route("/keys/{prefix}/revoke", get(confirm).post(revoke))
}

/// The longest label a key may carry (characters).
const LABEL_MAX: usize = 100;

#[derive(Serialize)]
struct Row {
    prefix: String,
    label: String,
    created: String,
    last_used: String,
    revoked: String,
}

/// The page of a partner user; ops and anonymous get 404 / the login page.
async fn partner_page(state: &AppState, headers: &HeaderMap) -> Result<(Page, String), Response> {
    let page = Page::require(state, headers).await?;
    match page.session.partner.clone() {
        Some(p) => Ok((page, p)),
        None => Err(page.not_found()),
    }
}

fn row(k: api_keys::KeyInfo, tz: chrono_tz::Tz) -> Row {
    let people = |t: Option<String>| {
        t.map(|t| timefmt::stored_for_people(&t, tz))
            .unwrap_or_default()
    };
    Row {
        prefix: k.prefix,
        label: k.label,
        created: timefmt::stored_for_people(&k.created_at, tz),
        last_used: people(k.last_used_at),
        revoked: people(k.revoked_at),
    }
}

async fn keys_of(state: &AppState, partner: &str) -> Result<Vec<Row>, Response> {
    let tz = state.config.daemon.timezone;
    let who = partner.to_owned();
    let keys = with_read(state, move |c| {
        api_keys::list(c, Some(&who)).map_err(|e| e.to_string())
    })
    .await?;
    // Newest first: the key just made is at the top.
    Ok(keys.into_iter().rev().map(|k| row(k, tz)).collect())
}

fn api_enabled(state: &AppState, partner: &str) -> bool {
    state.config.partner(partner).is_some_and(|p| p.api.enabled)
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (page, partner) = match partner_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rows = match keys_of(&state, &partner).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let ctx = minijinja::context! {
        rows => rows, enabled => api_enabled(&state, &partner), ..page.ctx()
    };
    render(StatusCode::OK, "keys.html", ctx)
}

#[derive(Deserialize)]
struct CreateForm {
    csrf: String,
    #[serde(default)]
    label: String,
}

async fn create(
    State(state): State<AppState>,
    addr: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Form(f): Form<CreateForm>,
) -> Response {
    let (page, partner) = match partner_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !page.post_allowed(&headers, &uri, &f.csrf) {
        return forbidden();
    }
    let label = f.label.trim().to_owned();
    if label.is_empty() || label.chars().count() > LABEL_MAX || label.chars().any(char::is_control)
    {
        let rows = match keys_of(&state, &partner).await {
            Ok(r) => r,
            Err(r) => return r,
        };
        let ctx = minijinja::context! {
            rows => rows, enabled => api_enabled(&state, &partner), label => f.label,
            error => format!("名前（用途）を 1〜{LABEL_MAX} 文字で入力してください。"),
            ..page.ctx()
        };
        return render(StatusCode::UNPROCESSABLE_ENTITY, "keys.html", ctx);
    }
    let actor = format!("user:{}", page.session.email);
    let client = client(&addr);
    let who = partner.clone();
    let created = with_db_mut(&state, move |c| {
        api_keys::create(c, &who, &label, &actor, Some(&client)).map_err(|e| e.to_string())
    })
    .await;
    match created {
        Ok(k) => {
            tracing::info!(partner = %partner, prefix = %k.info.prefix, "API key created on the site");
            state.site_flash.put(
                &page.id,
                flash::NewKey {
                    key: k.key,
                    prefix: k.info.prefix,
                    label: k.info.label,
                },
            );
            // 303: the browser GETs the result, so a reload asks for that
            // page again instead of posting the form (a second key).
            Redirect::to("/keys/created").into_response()
        }
        Err(r) => r,
    }
}

/// The key just made, once: the flash is taken by this request, so a
/// reload shows only that the key can no longer be shown.
async fn created(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (page, partner) = match partner_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ctx = match state.site_flash.take(&page.id) {
        Some(k) => minijinja::context! {
            key => k.key, prefix => k.prefix, label => k.label,
            enabled => api_enabled(&state, &partner), ..page.ctx()
        },
        None => minijinja::context! { gone => true, ..page.ctx() },
    };
    render(StatusCode::OK, "key_created.html", ctx)
}

/// The key `prefix` of `partner`, or `None` (missing, or another partner's).
async fn own_key(state: &AppState, partner: &str, prefix: String) -> Result<Option<Row>, Response> {
    let tz = state.config.daemon.timezone;
    let who = partner.to_owned();
    let keys = with_read(state, move |c| {
        api_keys::list(c, Some(&who)).map_err(|e| e.to_string())
    })
    .await?;
    Ok(keys
        .into_iter()
        .find(|k| k.prefix == prefix)
        .map(|k| row(k, tz)))
}

async fn confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(prefix): Path<String>,
) -> Response {
    let (page, partner) = match partner_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match own_key(&state, &partner, prefix).await {
        Ok(Some(k)) => render(
            StatusCode::OK,
            "key_revoke.html",
            minijinja::context! { k => k, ..page.ctx() },
        ),
        Ok(None) => page.not_found(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    csrf: String,
}

async fn revoke(
    State(state): State<AppState>,
    addr: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(prefix): Path<String>,
    Form(f): Form<RevokeForm>,
) -> Response {
    let (page, partner) = match partner_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !page.post_allowed(&headers, &uri, &f.csrf) {
        return forbidden();
    }
    let actor = format!("user:{}", page.session.email);
    let client = client(&addr);
    let who = partner.clone();
    let asked = prefix.clone();
    let done = with_db_mut(&state, move |c| {
        api_keys::revoke(c, &asked, Some(&who), &actor, Some(&client)).map_err(|e| e.to_string())
    })
    .await;
    match done {
        Ok(Some(_)) => {
            tracing::info!(partner = %partner, prefix = %prefix, "API key revoked on the site");
            let rows = match keys_of(&state, &partner).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            let ctx = minijinja::context! {
                rows => rows, enabled => api_enabled(&state, &partner),
                notice => format!("API キー {prefix} を失効させました。このキーでの API 呼び出しはすべて拒否されます。"),
                ..page.ctx()
            };
            render(StatusCode::OK, "keys.html", ctx)
        }
        // Already revoked, another partner's, or no such key.
        Ok(None) => match own_key(&state, &partner, prefix).await {
            Ok(Some(_)) => page.error(
                StatusCode::CONFLICT,
                "この API キーはすでに失効しています。",
            ),
            Ok(None) => page.not_found(),
            Err(r) => r,
        },
        Err(r) => r,
    }
}
