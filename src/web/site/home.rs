//! `GET /`: the start page after login: who is logged in, and the pages
//! their role may use.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::{render, Page};
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(home))
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match Page::require(&state, &headers).await {
        Ok(page) => render(StatusCode::OK, "home.html", page.ctx()),
        Err(r) => r,
    }
}
