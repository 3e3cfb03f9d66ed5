//! [`Form`]: the body of every site form but the upload (which streams to
//! disk under its own idle deadline, `upload::IDLE`).
//!
//! What must stay true: a form body that has not arrived whole within
//! [`FORM_READ_TIMEOUT`] is answered 408 and its connection closed, so a
//! slow or stalled client cannot hold a request (and its task) open without
//! bound; the API's JSON bodies have the same rule (`api::json_body`). The
//! header read has its own deadline in hyper (`[server] header_timeout`, `web::conn`).

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// How long a site form's body may take to arrive.
pub const FORM_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An `application/x-www-form-urlencoded` body of type `T`, as
/// `axum::Form` reads it (same limits and rejections), within
/// [`FORM_READ_TIMEOUT`].
pub struct Form<T>(pub T);

impl<T, S> FromRequest<S> for Form<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match tokio::time::timeout(FORM_READ_TIMEOUT, axum::Form::<T>::from_request(req, state))
            .await
        {
            Ok(Ok(axum::Form(v))) => Ok(Form(v)),
            // Every form of ours sends every field (the CSRF token among
            // them): a body that does not fit is not from our pages, and
            // gets the documented 403 page, as a wrong token does.
            Ok(Err(
                axum::extract::rejection::FormRejection::FailedToDeserializeForm(_)
                | axum::extract::rejection::FormRejection::FailedToDeserializeFormBody(_)
                | axum::extract::rejection::FormRejection::InvalidFormContentType(_),
            )) => {
                tracing::warn!("site form body missing fields or not a form: 403");
                Err(super::forbidden())
            }
            Ok(Err(rejection)) => Err(rejection.into_response()),
            Err(_) => {
                tracing::info!(
                    timeout_s = FORM_READ_TIMEOUT.as_secs(),
                    "site form body did not arrive in time: 408"
                );
                Err((
                    StatusCode::REQUEST_TIMEOUT,
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; charset=utf-8"),
                        ),
                        // The rest of the body is never read: the connection
                        // cannot carry another request.
                        (header::CONNECTION, HeaderValue::from_static("close")),
                    ],
                    format!(
                        "送信が {} 秒以内に届きませんでした。もう一度送信してください。\n",
                        FORM_READ_TIMEOUT.as_secs()
                    ),
                )
                    .into_response())
            }
        }
    }
}
