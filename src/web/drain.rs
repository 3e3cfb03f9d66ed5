//! An early answer (401, 403, 415, 429, …) is sent only after the request
//! body it did not read has been read and discarded (bounded): answering
//! and then resetting the unread HTTP/2 stream makes Debian 12's curl
//! 7.88.1 fail with `(92) HTTP/2 stream … was not closed cleanly` and no
//! status at all.
//!
//! What must stay true: a request without a body pays one check, no
//! allocation; a draining never reads more than [`DRAIN_MAX`] bytes nor
//! waits more than [`DRAIN_WAIT`]; a 408 (the body did not arrive) is
//! never drained.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

/// The most an early answer reads of an unread body: well above the API's
/// 16 KiB; a bigger body is left unread (the stream is reset).
pub const DRAIN_MAX: usize = 64 * 1024;

/// How long an early answer waits for the unread body.
pub const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Run `next` on `req`; an early answer first reads what is left of the
/// request body (see the module docs). Called by the edge layer.
pub async fn run_draining(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (tx, mut rx) = oneshot::channel();
    let req = req.map(|b| {
        Body::new(Returning {
            inner: Some(b),
            back: Some(tx),
        })
    });
    let resp = next.run(req).await;
    // The handler has returned: the body is dropped by now, or handed back.
    if resp.status() != StatusCode::REQUEST_TIMEOUT {
        if let Ok(rest) = rx.try_recv() {
            // Errors are the client's (gone, too big, too slow): the answer
            // goes out as it is either way.
            let _ = tokio::time::timeout(DRAIN_WAIT, axum::body::to_bytes(rest, DRAIN_MAX)).await;
        }
    }
    resp
}

/// The request body as handlers see it; dropped unfinished, it hands the
/// rest back to [`run_draining`].
struct Returning {
    inner: Option<Body>,
    back: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.inner.take(), self.back.take()) {
            if !body.is_end_stream() {
                let _ = back.send(body);
            }
        }
    }
}
