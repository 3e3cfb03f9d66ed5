//! `GET/POST /login`, `POST /logout`.
//!
//! What must stay true: one generic message for every failed login (wrong
//! password, unknown e-mail, locked, disabled); a login always sets a new
//! session id; the login POST must be same-origin (no session exists yet
//! to hold a CSRF token).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::form::Form;
use super::{client, forbidden, render, same_origin, with_db, Page};
use crate::web::auth::{sessions, users};
use crate::web::AppState;

/// The one message a failed login shows, whatever the reason.
pub const LOGIN_FAILED: &str = "メールアドレスまたはパスワードが正しくありません。";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
}

#[derive(Deserialize)]
struct LoginQuery {
    expired: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    let notice = q
        .expired
        .map(|_| "セッションの有効期限が切れました。もう一度ログインしてください。");
    render(
        StatusCode::OK,
        "login.html",
        minijinja::context! { notice => notice },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    addr: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Form(f): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers, &uri) {
        return forbidden();
    }
    let client = client(&addr);
    let now = super::now();
    let email = f.email.trim().to_owned();
    let logged = with_db(&state, move |c| {
        users::login(c, &email, &f.password, &client, now).map_err(|e| e.to_string())
    })
    .await;
    match logged {
        Ok(Some(ok)) => (
            [(
                header::SET_COOKIE,
                super::session_cookie(&state, Some(&ok.session)),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        Ok(None) => render(
            StatusCode::UNAUTHORIZED,
            "login.html",
            minijinja::context! { error => LOGIN_FAILED, email => f.email.trim() },
        ),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct TokenForm {
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Form(f): Form<TokenForm>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !page.post_allowed(&headers, &uri, &f.csrf) {
        return forbidden();
    }
    let id = page.id.clone();
    if let Err(r) = with_db(&state, move |c| {
        sessions::delete(c, &id).map_err(|e| e.to_string())
    })
    .await
    {
        return r;
    }
    (
        [(header::SET_COOKIE, super::session_cookie(&state, None))],
        Redirect::to("/login"),
    )
        .into_response()
}
