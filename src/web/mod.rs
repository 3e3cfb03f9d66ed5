//! `milebatch serve`: the web process. One server for the partner API
//! (`/api/v1/…`), the management site and the health probes, over rustls.
//!
//! What must stay true:
//! - `web` calls into `pipeline`, `query`, `members` and `db`; nothing
//!   outside `web` imports it;
//! - this process holds no transfer credentials (partners' SFTP/FTP/HTTP
//!   secrets): it never builds a `Source`;
//! - plain HTTP only on loopback or with `insecure_plaintext` (enforced by
//!   `config`, warned about here on every start);
//! - every response carries the security headers of [`security_headers`];
//!   every error is `application/problem+json` ([`problem`]);
//! - the listener and the shutdown signal are passed in (mini-redis style),
//!   so tests bind port 0 and stop the server in milliseconds.

pub mod api;
pub mod auth;
pub mod conn;
pub mod drain;
pub mod edge;
pub mod header_limit;
pub mod health;
pub mod nofile;
pub mod problem;
pub mod ratelog;
pub mod readers;
pub mod site;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue};
use axum::Router;
use tokio::sync::watch;

use crate::config::Config;

/// How long open connections get to finish on shutdown.
const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    // The cause is in the message, not a `source`: `{e:#}` would print it twice.
    #[error("cannot load the TLS certificate {cert} and key {key} (`[server] tls_cert`, `tls_key`): {error}")]
    Tls {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Writer(#[from] writer::WriterError),
    #[error(transparent)]
    Cursor(#[from] api::cursor::CursorError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every handler may use. Cheap to clone: one reference count (axum
/// clones the state for every request, and a clone per field showed in
/// the API's profile).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    /// Read-only connections for handlers.
    pub readers: Arc<readers::Readers>,
    /// The one writing connection (group commit), for API credits.
    pub writer: Arc<writer::Writer>,
    /// API keys found live lately (write calls confirm them in their job).
    pub keys: Arc<auth::key_cache::KeyCache>,
    /// Per-key request rates of the partner API.
    pub limiter: Arc<api::limits::Limiter>,
    /// `members/verify` calls per partner today.
    pub verify_quota: Arc<api::limits::DailyQuota>,
    /// The management site's one writable connection (sessions, audit).
    pub site_writer: Arc<site::conn::SiteWriter>,
    /// The site's one-time messages from a POST to its redirect.
    pub site_flash: Arc<site::flash::Flashes>,
    /// Request counters and latencies for `/metrics`.
    pub http_metrics: Arc<crate::metrics::HttpMetrics>,
    /// Seals the paging cursors: read once here, never per request.
    pub cursor_key: Arc<api::cursor::CursorKey>,
}

impl AppState {
    /// The state for `config`: opens (and migrates) the database.
    pub fn new(config: Arc<Config>) -> Result<AppState, WebError> {
        let db = config.daemon.database.clone();
        let writer = writer::Writer::start(&db, config.daemon.timezone)?;
        let cursor_key = api::cursor::CursorKey::load(&crate::db::open(&db)?)?;
        Ok(AppState(Arc::new(Shared {
            writer,
            cursor_key: Arc::new(cursor_key),
            readers: Arc::new(readers::Readers::new(db.clone())),
            site_writer: Arc::new(site::conn::SiteWriter::new(db)),
            site_flash: Arc::default(),
            keys: Arc::default(),
            limiter: Arc::default(),
            verify_quota: Arc::default(),
            http_metrics: Arc::default(),
            config,
        })))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The whole application: every route, with the layers every response gets.
pub fn router(state: AppState) -> Router {
    let metrics = state.http_metrics.clone();
    let tls = state.config.server.tls.is_some();
    let app = Router::new()
        .merge(health::routes())
        .merge(site::routes())
        .merge(api::routes())
        .fallback(site::fallback)
        .with_state(state);
    edge::layer(app, metrics, tls)
}

/// Over HTTPS, browsers are told to use nothing else for a year.
const HSTS: &str = "max-age=31536000";

/// Security headers on every response (pages, API, errors). A handler that
/// needs another value sets its own; these fill in what is missing.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    // No inline script or style anywhere, no framing, no plugins.
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// The security headers every answer carries: [`SECURITY_HEADERS`], and
/// with `tls` `Strict-Transport-Security` too.
pub fn security_headers(tls: bool) -> impl Iterator<Item = (HeaderName, &'static str)> {
    let hsts = tls.then_some((header::STRICT_TRANSPORT_SECURITY, HSTS));
    SECURITY_HEADERS.into_iter().chain(hsts)
}

/// [`security_headers`] on `r` (`edge` calls it for every response). A
/// handler's own value of one of them stays, but for HSTS.
pub fn add_security_headers(r: &mut axum::response::Response, tls: bool) {
    let h = r.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    if tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
}

/// The TLS configuration of `[server]` (`None`: plain HTTP), loaded
/// before `serve` says it is listening, so that a missing or unreadable
/// file fails the start.
pub async fn load_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, WebError> {
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .map_err(|error| WebError::Tls {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            error,
        })?;
    Ok(Some(rustls.get_inner()))
}

/// Serve `config`'s application on `listener` (over `tls`, from
/// [`load_tls`]) until `shutdown` turns true, then let open requests
/// finish (at most [`GRACE`]). With `metrics_listener`, `GET /metrics` is
/// served there too (plain HTTP).
pub async fn serve(
    config: Arc<Config>,
    tls: Option<Arc<rustls::ServerConfig>>,
    listener: std::net::TcpListener,
    metrics_listener: Option<std::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WebError> {
    let metrics_stop = shutdown.clone();
    let addr = listener.local_addr().map_err(|source| WebError::Serve {
        addr: config.server.listen,
        source,
    })?;
    let serve_err = |source| WebError::Serve { addr, source };
    listener.set_nonblocking(true).map_err(serve_err)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(serve_err)?;
    let state = AppState::new(config.clone())?;
    let http_metrics = state.http_metrics.clone();
    if let Some(l) = metrics_listener {
        let m = Arc::new(crate::metrics::Metrics::new(
            config.daemon.database.clone(),
            config.partners.iter().map(|p| p.id.clone()).collect(),
            Some(state.http_metrics.clone()),
        ));
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(m, l, metrics_stop).await {
                tracing::error!(error = %e, "metrics listener stopped");
            }
        });
    }
    let limits = config.server.limits.clone();
    if tls.is_some() {
        tracing::info!(%addr, ?limits, "serving HTTPS");
    } else {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "plain HTTP on a non-loopback address (insecure_plaintext = true): API keys, passwords and session cookies cross the network unencrypted");
        }
        tracing::info!(%addr, ?limits, "serving plain HTTP");
    }
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                return;
            }
        }
        tracing::info!("shutting down: no new connections, open requests may finish");
    });
    conn::run(
        listener,
        tls,
        router(state),
        limits,
        http_metrics,
        shutdown,
        GRACE,
    )
    .await;
    Ok(())
}
