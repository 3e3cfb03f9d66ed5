//! The management site: server-rendered HTML pages for partner staff and
//! ops (Japanese UI), behind a login.
//!
//! What must stay true:
//! - every page but `/login` and `/static/…` needs a live session
//!   ([`Page::require`]); a partner user only ever sees their own partner's
//!   data, and another partner's id answers 404 exactly like a missing one;
//! - every form is read through [`form::Form`] (a body not whole within
//!   10 s is answered 408), never `axum::Form`;
//! - every POST passes [`Page::post_allowed`] (or, before login,
//!   [`same_origin`]): the session's CSRF token in the form AND a
//!   same-origin `Sec-Fetch-Site`/`Origin`, else 403;
//! - the session cookie is `HttpOnly`, `SameSite=Strict`, and `Secure`
//!   (with the `__Host-` prefix) when served over TLS;
//! - no inline script or style: the CSP forbids them; CSS and JS are
//!   files under `/static/`;
//! - templates escape every value (minijinja auto-escape on `.html`).

pub mod auth;
pub mod conn;
pub mod files;
pub mod flash;
pub mod form;
pub mod history;
pub mod home;
pub mod keys;
pub mod money;
pub mod ops;
pub mod run_now;
pub mod upload;

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use minijinja::Environment;

use super::auth::sessions::{self, Session};
use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/static/site.css", get(css))
        .route("/static/site.js", get(js))
        .merge(auth::routes())
        .merge(home::routes())
        .merge(ops::routes())
        .merge(files::routes())
        .merge(history::routes())
        .merge(upload::routes())
        .merge(keys::routes())
        .merge(run_now::routes())
        .merge(money::routes())
        .layer(axum::middleware::from_fn(auth::remember_target))
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../static/site.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../static/site.js"),
    )
}

fn env() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut e = Environment::new();
        for (name, src) in [
            ("base.html", include_str!("../../../templates/base.html")),
            ("login.html", include_str!("../../../templates/login.html")),
            ("home.html", include_str!("../../../templates/home.html")),
            ("error.html", include_str!("../../../templates/error.html")),
            ("files.html", include_str!("../../../templates/files.html")),
            (
                "history.html",
                include_str!("../../../templates/history.html"),
            ),
            (
                "ops_dashboard.html",
                include_str!("../../../templates/ops_dashboard.html"),
            ),
            (
                "ops_member.html",
                include_str!("../../../templates/ops_member.html"),
            ),
            (
                "ops_audit.html",
                include_str!("../../../templates/ops_audit.html"),
            ),
            (
                "upload.html",
                include_str!("../../../templates/upload.html"),
            ),
            (
                "upload_result.html",
                include_str!("../../../templates/upload_result.html"),
            ),
            ("keys.html", include_str!("../../../templates/keys.html")),
            (
                "key_created.html",
                include_str!("../../../templates/key_created.html"),
            ),
            (
                "key_revoke.html",
                include_str!("../../../templates/key_revoke.html"),
            ),
            (
                "reverse.html",
                include_str!("../../../templates/reverse.html"),
            ),
            (
                "reverse_result.html",
                include_str!("../../../templates/reverse_result.html"),
            ),
        ] {
            e.add_template(name, src).expect("template parses");
        }
        crate::words::register(&mut e);
        e
    })
}

/// Render `name` with `ctx` as an HTML response with `status`.
pub fn render(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    match env().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

/// An HTML error page for people (the API answers problem+json instead).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    render(
        status,
        "error.html",
        minijinja::context! { status => status.as_u16(), message => message },
    )
}

/// A failure inside a handler: logged with detail, shown generically.
pub fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "site request failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "内部エラーが発生しました。しばらくしてからもう一度お試しください。",
    )
}

/// Run `f` with the site's writable connection ([`conn::SiteWriter`]) on a
/// blocking thread. Only for writes (and the reads that decide them).
pub async fn with_db<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    with_db_mut(state, move |c| f(c)).await
}

/// [`with_db`] for functions that need `&mut Connection` (their own
/// transaction).
pub async fn with_db_mut<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    let writer = state.site_writer.clone();
    tokio::task::spawn_blocking(move || writer.with(f))
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// A message for [`with_read`]'s errors (a `DbError` of the pool, or the
/// handler's own).
pub struct ReadError(String);

impl From<crate::db::DbError> for ReadError {
    fn from(e: crate::db::DbError) -> Self {
        ReadError(e.to_string())
    }
}

impl From<String> for ReadError {
    fn from(e: String) -> Self {
        ReadError(e)
    }
}

/// Run `f` with a read-only connection of the pool ([`crate::web::readers`]).
pub async fn with_read<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    state
        .readers
        .with(move |c| f(c).map_err(ReadError))
        .await
        .map_err(|e: ReadError| internal(e.0))
}

/// Every path no route takes. The API and non-browser clients get the
/// problem+json 404; a browser gets the HTML 404, with the menu when it is
/// logged in.
pub async fn fallback(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if !html || uri.path().starts_with("/api/") {
        return super::problem::not_found().await.into_response();
    }
    if cookie(&state, &headers).is_some() {
        if let Ok(page) = Page::require(&state, &headers).await {
            return page.not_found();
        }
    }
    ops::not_found()
}

/// Unix seconds now. (Handlers take it once per request.)
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The session cookie's name: with TLS the `__Host-` prefix makes the
/// browser insist on Secure, Path=/ and no Domain.
pub fn cookie_name(state: &AppState) -> &'static str {
    if state.config.server.tls.is_some() {
        "__Host-mb_session"
    } else {
        "mb_session"
    }
}

/// The `Set-Cookie` value that carries `id` (or clears the cookie).
pub fn session_cookie(state: &AppState, id: Option<&str>) -> HeaderValue {
    let secure = if state.config.server.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let v = match id {
        Some(id) => format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict{secure}",
            cookie_name(state)
        ),
        None => format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            cookie_name(state)
        ),
    };
    HeaderValue::from_str(&v).expect("cookie value is ASCII")
}

/// The session id the request carries, if any.
pub fn cookie(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(state);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The client's address as the audit trail and the login throttle see it.
pub fn client(addr: &ConnectInfo<SocketAddr>) -> String {
    addr.0.ip().to_string()
}

/// Whether a state-changing request comes from our own pages: a browser's
/// `Sec-Fetch-Site` must say `same-origin`, and an `Origin` must be this
/// host. (Old browsers send neither; the CSRF token still guards them.)
/// The host the request was sent to: `Host` (HTTP/1.1) or the URI's
/// authority (HTTP/2 has no `Host` header).
pub fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return false;
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, h)| h);
        if host.is_none() || origin_host != host {
            return false;
        }
    }
    true
}

/// Two strings compared in time that depends only on their lengths.
fn equal_ct(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A request of a logged-in user.
pub struct Page {
    pub session: Session,
    pub id: String,
    /// The configured `name` of the user's partner (`None`: ops).
    pub partner_name: Option<String>,
}

impl Page {
    /// The live session of this request, or a redirect to the login page.
    pub async fn require(state: &AppState, headers: &HeaderMap) -> Result<Page, Response> {
        let Some(id) = cookie(state, headers) else {
            return Err(Redirect::to("/login").into_response());
        };
        let now = now();
        let lookup = id.clone();
        // A read; the expiry is written only when it is stale
        // (`sessions::TOUCH_EVERY`), so pages do not queue behind the
        // batch's write lock.
        let found = with_read(state, move |c| {
            sessions::find(c, &lookup, now).map_err(|e| e.to_string())
        })
        .await?;
        let Some((session, expires_at)) = found else {
            return Err(Redirect::to("/login?expired=1").into_response());
        };
        if sessions::needs_extend(expires_at, now) {
            let lookup = id.clone();
            with_db(state, move |c| {
                sessions::extend(c, &lookup, now).map_err(|e| e.to_string())
            })
            .await?;
        }
        let partner_name = session.partner.as_deref().map(|p| partner_label(state, p));
        Ok(Page {
            session,
            id,
            partner_name,
        })
    }

    /// Whether a POST may go on: same-origin and carrying this session's
    /// token. When not, the handler answers [`forbidden`].
    pub fn post_allowed(&self, headers: &HeaderMap, uri: &Uri, token: &str) -> bool {
        let ok = same_origin(headers, uri) && equal_ct(token, &self.session.csrf);
        if !ok {
            tracing::warn!(
                user = self.session.user,
                "POST refused: cross-site or bad CSRF token"
            );
        }
        ok
    }

    /// An HTML error page with the menu of this user.
    pub fn error(&self, status: StatusCode, message: &str) -> Response {
        render(
            status,
            "error.html",
            minijinja::context! { status => status.as_u16(), message => message, ..self.ctx() },
        )
    }

    /// The 404 of a logged-in user (with the menu): a missing page, another
    /// partner's id and an ops page asked for by a partner user alike.
    pub fn not_found(&self) -> Response {
        self.error(StatusCode::NOT_FOUND, ops::NOT_FOUND)
    }

    /// What every page template gets: who is logged in, the CSRF token.
    pub fn ctx(&self) -> minijinja::Value {
        minijinja::context! {
            user => self.session.email,
            partner => self.session.partner,
            partner_name => self.partner_name,
            ops => self.session.is_ops(),
            csrf => self.session.csrf,
        }
    }
}

/// A partner as people know it: its configured `name` with its id
/// (`ACME ストア（acme）`); the id alone when the name is the id.
pub fn partner_label(state: &AppState, id: &str) -> String {
    match state.config.partners.iter().find(|p| p.id == id) {
        Some(p) if p.name != p.id => format!("{}（{}）", p.name, p.id),
        _ => id.to_owned(),
    }
}

/// Every configured partner as `{id, label}`, for pickers and menus.
pub fn partner_choices(state: &AppState) -> Vec<minijinja::Value> {
    state
        .config
        .partners
        .iter()
        .map(|p| minijinja::context! { id => p.id, label => partner_label(state, &p.id) })
        .collect()
}

pub fn forbidden() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "このリクエストは受け付けられません（別のサイトからの送信、または有効期限切れのフォームです）。ページを開き直してからもう一度お試しください。",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn cross_site_posts_are_not_same_origin() {
        let same_origin = |h: &HeaderMap| same_origin(h, &Uri::from_static("/logout"));
        assert!(same_origin(&h(&[
            ("host", "a.example"),
            ("origin", "https://a.example"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(same_origin(&h(&[("host", "a.example")])));
        assert!(!same_origin(&h(&[
            ("host", "a.example"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "a.example"),
            ("sec-fetch-site", "same-site")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "a.example"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "a.example"),
            ("origin", "null")
        ])));
    }

    #[test]
    fn templates_parse_and_escape() {
        let r = env()
            .get_template("error.html")
            .unwrap()
            .render(minijinja::context! { status => 404, message => "<script>x</script>" })
            .unwrap();
        assert!(r.contains("&lt;script&gt;"), "{r}");
        assert!(!r.contains("<script>x"), "{r}");
        assert!(!r.contains("style="), "no inline style: {r}");
    }

    #[test]
    fn every_template_renders() {
        let row = minijinja::context! { id => 1, at => "t", name => "n", channel => "pull", outcome => "credited",
        outcome_text => "x", reason => "", rows => 1, credited => 1, failed => 0, miles => 5, has_report => true,
        light => "red", light_text => "x", partner_key => "K", member_id => "M", file_id => 1,
        credited_at => "t", actor => "a", action => "b", detail => "d", client => "c" };
        for name in [
            "login.html",
            "home.html",
            "files.html",
            "ops_dashboard.html",
            "ops_member.html",
            "ops_audit.html",
            "upload.html",
            "upload_result.html",
            "keys.html",
            "key_created.html",
            "key_revoke.html",
            "reverse.html",
            "reverse_result.html",
        ] {
            let ctx = minijinja::context! { user => "u", ops => true, csrf => "t", rows => vec![row.clone()],
            q => "q", found => true, shown => "shop", more => 1, next => 5,
                searched => true, total => 1, page => 1, pages => 2, prev => "a=b", csv => "/history.csv?x",
                partners => vec!["shop"], q_partner => "shop", q_mode => "prefix",
                k => row.clone(), f => row.clone(), r => row.clone(), key => "mbk_x",
                daemon => minijinja::context! { running => false, seconds_since_poll => 61 }, prefix => "mbk_1", enabled => false, notice => "n",
                notify => minijinja::context! { pending => 1, failed => 1, unrouted => 0 },
                unsent => vec![minijinja::context! { at => "t", partner => "p", event => "e", channel => "c", target => "x",
                    failed => true, attempts => 2, last_error => "e" }] };
            env()
                .get_template(name)
                .and_then(|t| t.render(ctx))
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn ct_compare() {
        assert!(equal_ct("abc", "abc"));
        assert!(!equal_ct("abc", "abd"));
        assert!(!equal_ct("abc", "ab"));
    }
}
