//! `GET /healthz` (the process answers), `GET /readyz` (the database is
//! reachable and its schema is the one this binary expects) and
//! `GET /ops/daemon.json` (a daemon polled within a minute: 200, else 503;
//! `crate::heartbeat`). No login: monitors read them, and they tell no
//! partner's data.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::problem::Problem;
use super::AppState;
use crate::db;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ops/daemon.json", get(daemon))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn daemon(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = crate::heartbeat::status(&state.config.daemon.database, chrono::Utc::now());
    let code = if status.running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(status),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let path = state.config.daemon.database.clone();
    // `open_query` refuses a missing database and any schema version but
    // this binary's, and the query proves the file is readable.
    let checked = tokio::task::spawn_blocking(move || -> Result<i64, db::DbError> {
        let conn = db::open_query(&path)?;
        Ok(conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?)
    })
    .await;
    let not_ready = |detail: String| {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not Ready")
            .detail(detail)
            .retry_after(5)
    };
    match checked {
        Ok(Ok(_)) => Ok(Json(
            serde_json::json!({"status": "ready", "schema_version": db::MIGRATIONS.len()}),
        )),
        Ok(Err(e)) => Err(not_ready(e.to_string())),
        Err(e) => Err(not_ready(format!("database check failed: {e}"))),
    }
}
