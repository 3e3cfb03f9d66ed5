//! `GET/POST /login`, `POST /logout`.
//!
//! What must stay true: one generic message for every failed login (wrong
//! password, unknown e-mail, locked, disabled), with the same neutral hint
//! about waiting (it says nothing about whether the address exists); a
//! login always sets a new session id; the login POST must be same-origin
//! (no session exists yet to hold a CSRF token); after a login the user
//! goes back to the page first asked for, but only ever to a path of this
//! site ([`local_target`]), never to another host.

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

/// Shown under every failed login alike (a locked account cannot be told
/// apart from a wrong password or an unknown address).
pub const LOGIN_HINT: &str = "何度も失敗した場合は、しばらく時間をおいてからもう一度お試しください。それでもログインできない場合は、運用担当者にお問い合わせください。";

/// `next` if it is a path of this site to return to after the login:
/// starts with one `/` (not `//` or `/\`, which browsers read as another
/// host), holds no control character, and is not the login page itself.
pub fn local_target(next: &str) -> Option<&str> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control() || c == '\\')
        && !next.starts_with("/login")
        && next.len() <= 2000;
    ok.then_some(next)
}

/// A page asked for without a live session is answered with a redirect to
/// the login page ([`Page::require`]); for a GET this layer adds where the
/// user was going (`next=`), so the login returns there.
pub async fn remember_target(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let target = (req.method() == axum::http::Method::GET)
        .then(|| req.uri().path_and_query().map(|p| p.as_str().to_owned()))
        .flatten()
        .filter(|t| local_target(t).is_some() && t != "/");
    let mut res = next.run(req).await;
    let Some(target) = target else {
        return res;
    };
    let location = res
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    if let Some(loc) = location.filter(|l| l == "/login" || l == "/login?expired=1") {
        let sep = if loc.contains('?') { '&' } else { '?' };
        let with: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &target)
            .finish();
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{loc}{sep}{with}")) {
            res.headers_mut().insert(header::LOCATION, v);
        }
    }
    res
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
}

#[derive(Deserialize)]
struct LoginQuery {
    expired: Option<String>,
    next: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    let notice = q
        .expired
        .map(|_| "セッションの有効期限が切れました。もう一度ログインしてください。");
    let next = q.next.as_deref().and_then(local_target);
    render(
        StatusCode::OK,
        "login.html",
        minijinja::context! { notice => notice, next => next },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
    /// Where to go after the login (see [`local_target`]).
    #[serde(default)]
    next: String,
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
    let password = f.password.clone();
    let logged = with_db(&state, move |c| {
        users::login(c, &email, &password, &client, now).map_err(|e| e.to_string())
    })
    .await;
    let next = local_target(&f.next);
    match logged {
        Ok(Some(ok)) => (
            [(
                header::SET_COOKIE,
                super::session_cookie(&state, Some(&ok.session)),
            )],
            Redirect::to(next.unwrap_or("/")),
        )
            .into_response(),
        Ok(None) => render(
            StatusCode::UNAUTHORIZED,
            "login.html",
            minijinja::context! {
                error => LOGIN_FAILED, hint => LOGIN_HINT, email => f.email.trim(), next => next
            },
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

#[cfg(test)]
mod tests {
    use super::local_target;

    #[test]
    fn only_paths_of_this_site_are_returned_to() {
        assert_eq!(local_target("/history?key=A"), Some("/history?key=A"));
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "/\\/evil.example",
            "/login?next=/x",
            "",
            "history",
            "/a\nb",
        ] {
            assert_eq!(local_target(bad), None, "{bad:?}");
        }
    }
}
