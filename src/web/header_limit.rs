//! How big a request's header section may be, and the 431 answer when it is
//! bigger: like every other error, with the security headers and an
//! `application/problem+json` body.
//!
//! What must stay true:
//! - up to [`MAX_HEADER_BYTES`] and [`MAX_HEADER_FIELDS`], a request reaches
//!   the routes; past them, [`refuse`] answers 431 in the edge layer
//!   (so the answer has every header any answer has);
//! - past the connection layer's hard bounds (`conn::MAX_HEADER_BUF`, what
//!   hyper holds in memory for one head, and hyper's 100 fields, the same
//!   count as ours: a larger bound costs every request), HTTP/1.1 gets
//!   hyper's own automatic 431, which `conn` replaces on the wire with [`http1_answer`];
//!   HTTP/2 gets the protocol library's own 431 (its headers are HPACK
//!   encoded on the way out and cannot be replaced): documented in
//!   docs/api.md, and clients that honour `SETTINGS_MAX_HEADER_LIST_SIZE`
//!   never send such a request.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// The header section a request may have: the request target plus every
/// `name: value` line, counted as HTTP/1.1 would send them.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The header fields (lines) a request may have.
pub const MAX_HEADER_FIELDS: usize = 100;

const KIND: &str = "request-header-fields-too-large";
const TITLE: &str = "Request Header Fields Too Large";

/// The size of `req`'s header section in bytes, as [`MAX_HEADER_BYTES`]
/// counts it.
fn header_bytes(req: &Request) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    req.headers()
        .iter()
        // "name: value\r\n"
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target
}

fn problem(detail: String) -> Problem {
    Problem::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, KIND, TITLE).detail(detail)
}

/// The 431 for a header section over the limits, or `None` to go on.
/// Called by the edge layer (`super::edge`) before any route.
pub fn refuse(req: &Request) -> Option<Response> {
    let fields = req.headers().len();
    if fields > MAX_HEADER_FIELDS {
        return Some(
            problem(format!(
                "the request has {fields} header fields; at most {MAX_HEADER_FIELDS} are accepted: send fewer"
            ))
            .into_response(),
        );
    }
    let bytes = header_bytes(req);
    if bytes > MAX_HEADER_BYTES {
        return Some(
            problem(format!(
                "the request's headers are {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted: send fewer or shorter headers"
            ))
            .into_response(),
        );
    }
    None
}

/// The whole HTTP/1.1 answer that replaces hyper's automatic (bare) 431,
/// sent when a head does not even fit the connection's read buffer or has
/// more than hyper's 100 fields. The connection closes after it, as
/// hyper's would.
pub fn http1_answer(tls: bool) -> Vec<u8> {
    let body = serde_json::to_vec(&problem(format!(
        "the request's headers are over {} bytes or more than {MAX_HEADER_FIELDS} fields; at most {MAX_HEADER_BYTES} bytes in {MAX_HEADER_FIELDS} fields are accepted: send fewer or shorter headers",
        super::conn::MAX_HEADER_BUF
    )))
    .unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\n\
         content-type: application/problem+json\r\n\
         cache-control: no-store\r\n\
         content-length: {}\r\n\
         connection: close\r\n\
         date: {}\r\n",
        body.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    for (name, value) in super::security_headers(tls) {
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Whether `bytes`, the start of what hyper writes, is its automatic 431:
/// the status line with no `content-type` in the head (every answer of
/// ours has one).
pub fn is_bare_431(bytes: &[u8]) -> bool {
    if !(bytes.starts_with(b"HTTP/1.1 431 ") || bytes.starts_with(b"HTTP/1.0 431 ")) {
        return false;
    }
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    !bytes[..head_end]
        .to_ascii_lowercase()
        .windows(14)
        .any(|w| w == b"\ncontent-type:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_automatic_431_is_recognised_and_ours_is_not() {
        assert!(is_bare_431(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n"
        ));
        assert!(!is_bare_431(&http1_answer(true)));
        assert!(!is_bare_431(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
    }

    #[test]
    fn the_replacement_is_a_whole_problem_answer() {
        let a = String::from_utf8(http1_answer(true)).unwrap();
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/problem+json"));
        assert!(head.contains("strict-transport-security: max-age=31536000"));
        assert!(head.contains("x-frame-options: DENY"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 431);
        assert_eq!(v["type"], "/problems/request-header-fields-too-large");
    }
}
