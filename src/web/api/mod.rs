//! The partner API, `/api/v1/…`: one file per resource. Every route
//! authenticates with [`ApiKey`](super::auth::api_keys::ApiKey), answers
//! errors as problem+json and reads at most [`MAX_BODY`] bytes of body.

pub mod exchanges;
pub mod limits;

use axum::Router;

use super::AppState;

/// The largest request body the API reads.
pub const MAX_BODY: usize = 16 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new().merge(exchanges::routes())
}
