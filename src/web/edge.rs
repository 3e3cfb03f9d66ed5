//! The one layer around the whole application, in this order: the header
//! cap (`header_limit`, 431), the early-answer drain (`drain`), the
//! security headers, and the request counted in `/metrics` by route,
//! status and latency (the whole answer, headers included).
//!
//! What must stay true: one layer, not one per concern. Every axum layer
//! is a future and a boxed clone of the router per request: with four of
//! them `members/verify` took a third more CPU a call than with this one
//! (docs/performance.md).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use std::time::Instant;

use crate::metrics::{self, HttpMetrics};

/// `app` (holding every route already: the route layer reaches only
/// those) with the edge layer; `tls` adds HSTS to the security headers.
pub fn layer(app: Router, metrics: Arc<HttpMetrics>, tls: bool) -> Router {
    app.route_layer(axum::middleware::from_fn(metrics::remember_route))
        .layer(axum::middleware::from_fn_with_state((metrics, tls), edge))
}

async fn edge(
    State((m, tls)): State<(Arc<HttpMetrics>, bool)>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let mut resp = match super::header_limit::refuse(&req) {
        Some(r) => r,
        None => super::drain::run_draining(req, next).await,
    };
    super::add_security_headers(&mut resp, tls);
    m.observe(
        metrics::route_of(&resp),
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}
