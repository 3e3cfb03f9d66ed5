//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the partner
//! API, generated from the handlers' `#[utoipa::path]` annotations.
//!
//! What must stay true: the API's routes are registered only here, through
//! `utoipa_axum::routes!`, so a route cannot exist without its document
//! entry (and `tests/api.rs` checks each documented path answers).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{exchanges, members};
use crate::web::AppState;

/// An error, `application/problem+json` (RFC 9457).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: `web::problem::Problem` is what is sent
pub struct Problem {
    /// `/problems/<kind>`, stable for clients to match on.
    #[schema(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: Option<String>,
    /// The row code of a rejected exchange (422 `/problems/rejected` only).
    code: Option<RowCode>,
}

/// The row codes `POST /api/v1/exchanges` can answer: those of a CSV row
/// that apply to one exchange (E001 and E008 are about a file's columns
/// and repeats; an exchange has neither). `tests/api_answers.rs` reaches
/// every one of them on the running server.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub enum RowCode {
    /// `member` is empty.
    E002,
    /// `member` not found.
    E003,
    /// The member is not active.
    E004,
    /// `partner_key` is empty or longer than 64 characters.
    E005,
    /// `miles` is not a positive whole number, or is 2^64 or more.
    E006,
    /// `miles` is above the partner's per-row maximum.
    E007,
    /// `member` or `partner_key` holds a control character (not text).
    E009,
    /// `partner_key` was credited before (`unique_partner_key`).
    E010,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "milebatch partner API",
        description = "Credit point exchanges exactly once, read them back, verify members. \
                       Every error is application/problem+json. See docs/api.md."
    ),
    modifiers(&BearerKey),
    components(schemas(Problem, RowCode))
)]
struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from `milebatch api-key create`"))
                    .build(),
            ),
        );
    }
}

/// The API's routes and their document.
pub fn router() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(exchanges::create, exchanges::search))
        .routes(routes!(exchanges::one))
        .routes(routes!(members::verify))
        .split_for_parts()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_once() {
        let (_, doc) = router();
        let v: serde_json::Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3.1"), "{v}");
        let mut paths: Vec<String> = v["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| format!("{m} {p}"))
            })
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "get /api/v1/exchanges",
                "get /api/v1/exchanges/{id}",
                "post /api/v1/exchanges",
                "post /api/v1/members/verify",
            ]
        );
    }
}
