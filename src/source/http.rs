//! HTTP(S) GET of a (date-templated) URL over `reqwest`; error reports PUT back.
//!
//! What must stay true:
//! - TLS is always verified (system roots plus `ca_file`);
//! - credentials travel in the `Authorization` header (marked sensitive),
//!   never in the URL; a URL with a password in it is refused, and URLs in
//!   logs and errors carry neither userinfo nor query string;
//! - 404/410 mean "nothing today", not an error;
//! - a body shorter than its `Content-Length` is a (transient) error.
//!
//! `list` sends the GET and keeps the response; `fetch` streams that same
//! response to disk, so a file is requested once per run.

use std::path::Path;

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, LAST_MODIFIED};
use reqwest::StatusCode;

use super::{HttpAuth, HttpConfig, RemoteFile, Source, SourceError};
use crate::config::Encoding;

const READ_BUF: usize = 1 << 20;

pub struct HttpSource {
    url: String,
    errors_url: Option<String>,
    name: String,
    client: Client,
    /// The response `list` got, body not yet read.
    pending: Option<(RemoteFile, Response)>,
    /// `charset` of the report PUT: the partner's encoding, which the
    /// report is written in.
    report_charset: &'static str,
}

impl HttpSource {
    pub fn new(c: &HttpConfig, today: chrono::NaiveDate) -> Result<HttpSource, SourceError> {
        let url = expand_date(&c.url, today).map_err(SourceError::Permanent)?;
        let errors_url = c
            .errors_url
            .as_deref()
            .map(|u| expand_date(u, today))
            .transpose()
            .map_err(SourceError::Permanent)?;
        let parsed = check_url(&url, "url")?;
        if let Some(u) = &errors_url {
            check_url(u, "errors_url")?;
        }
        let name = parsed
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                SourceError::Permanent(format!("url {} does not end in a file name", redact(&url)))
            })?
            .to_owned();

        let mut headers = HeaderMap::new();
        let auth_value = match &c.auth {
            HttpAuth::None => None,
            HttpAuth::Basic { user, password } => {
                use base64::Engine as _;
                let pw = password.read().map_err(SourceError::Permanent)?;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", pw.expose()));
                Some(format!("Basic {token}"))
            }
            HttpAuth::Bearer(t) => {
                let t = t.read().map_err(SourceError::Permanent)?;
                Some(format!("Bearer {}", t.expose()))
            }
        };
        if let Some(v) = auth_value {
            let mut v = HeaderValue::from_str(&v).map_err(|_| {
                SourceError::Permanent(
                    "the credential contains characters not allowed in an HTTP header".into(),
                )
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }

        let mut b = Client::builder()
            .timeout(c.pickup.timeout)
            .connect_timeout(c.pickup.timeout)
            .default_headers(headers)
            .user_agent(concat!("milebatch/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| SourceError::Permanent(format!("ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| SourceError::Permanent(format!("ca_file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(SourceError::Permanent(format!(
                    "ca_file {}: no PEM certificate in it",
                    ca.display()
                )));
            }
            b = b.tls_certs_merge(certs);
        }
        let client = b
            .build()
            .map_err(|e| SourceError::Permanent(format!("HTTP client setup: {}", chain(&e))))?;
        Ok(HttpSource {
            url,
            errors_url,
            name,
            client,
            pending: None,
            report_charset: charset_label(Encoding::Utf8),
        })
    }

    /// Label report uploads with the partner's encoding (default UTF-8).
    pub fn with_report_encoding(mut self, enc: Encoding) -> HttpSource {
        self.report_charset = charset_label(enc);
        self
    }

    fn get(&self) -> Result<Option<Response>, SourceError> {
        let what = format!("GET {}", redact(&self.url));
        let resp = self
            .client
            .get(&self.url)
            .send()
            .map_err(|e| req_err(e, &what))?;
        match resp.status() {
            StatusCode::OK => Ok(Some(resp)),
            StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::NO_CONTENT => Ok(None),
            s => Err(status_err(s, &what)),
        }
    }
}

/// The IANA charset name of a partner encoding (CP932 is labelled
/// `Shift_JIS`, the name Windows and browsers read it by).
pub fn charset_label(enc: Encoding) -> &'static str {
    match enc {
        Encoding::Utf8 => "utf-8",
        Encoding::ShiftJis => "Shift_JIS",
    }
}

/// Replace every `{date:FORMAT}` (strftime) with `today`.
pub fn expand_date(template: &str, today: chrono::NaiveDate) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("{date:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "{date:".len()..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed {{date:…}} in {template:?}"))?;
        let fmt = &after[..end];
        let items: Vec<_> = chrono::format::StrftimeItems::new(fmt).collect();
        if items
            .iter()
            .any(|i| matches!(i, chrono::format::Item::Error))
        {
            return Err(format!("bad date format {fmt:?} in {template:?}"));
        }
        write!(out, "{}", today.format_with_items(items.into_iter()))
            .map_err(|_| format!("date format {fmt:?} does not apply to a date"))?;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn check_url(u: &str, key: &str) -> Result<reqwest::Url, SourceError> {
    let parsed = reqwest::Url::parse(u)
        .map_err(|e| SourceError::Permanent(format!("{key} {}: {e}", redact(u))))?;
    if parsed.password().is_some() || !parsed.username().is_empty() {
        return Err(SourceError::Permanent(format!(
            "{key} {} carries credentials: use auth = \"basic\" with password_env/_file/credential",
            redact(u)
        )));
    }
    Ok(parsed)
}

/// A URL fit for logs: no userinfo, no query string (pre-signed URLs carry
/// their signature there), no fragment.
pub fn redact(u: &str) -> String {
    match reqwest::Url::parse(u) {
        Ok(mut p) => {
            let _ = p.set_username("");
            let _ = p.set_password(None);
            let had_query = p.query().is_some();
            p.set_query(None);
            p.set_fragment(None);
            let mut s = p.to_string();
            if had_query {
                s.push_str("?…");
            }
            s
        }
        Err(_) => "<unparsable url>".into(),
    }
}

/// An error with its causes, without the URL reqwest would print (also
/// the notification senders' one line).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        // reqwest's connector does not always keep the rustls error as a
        // typed source; rustls' own wording identifies it then.
        let text = c.to_string();
        if text.contains("invalid peer certificate") || text.contains("peer is incompatible") {
            return true;
        }
        cur = c.source();
    }
    false
}

fn req_err(e: reqwest::Error, what: &str) -> SourceError {
    let e = e.without_url();
    let msg = format!("{what}: {}", chain(&e));
    // An untrusted certificate, a bad URL, a redirect loop: needs a human.
    if is_tls_failure(&e) || e.is_builder() || e.is_redirect() {
        SourceError::Permanent(msg)
    } else {
        // connect, timeout, request, body: the network, worth another try
        SourceError::Transient(msg)
    }
}

fn status_err(s: StatusCode, what: &str) -> SourceError {
    let msg = format!("{what}: HTTP {s}");
    match s.as_u16() {
        // `Auth` prints as "authentication failed: …".
        401 => SourceError::Auth(msg),
        // Logged in (or no login needed), but not allowed: a server-side
        // permission, not our credentials. Not retried either.
        403 => SourceError::Permanent(format!(
            "{msg}: forbidden (check the server's permissions for this path)"
        )),
        408 | 429 | 500..=599 => SourceError::Transient(msg),
        _ => SourceError::Permanent(msg),
    }
}

fn header_u64(resp: &Response, name: reqwest::header::HeaderName) -> Option<u64> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        redact(&self.url)
    }

    fn list(&mut self) -> Result<Vec<RemoteFile>, SourceError> {
        self.pending = None;
        let Some(resp) = self.get()? else {
            return Ok(vec![]);
        };
        let mtime = resp
            .headers()
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(|t| t.timestamp());
        let f = RemoteFile {
            name: self.name.clone(),
            size: header_u64(&resp, CONTENT_LENGTH).unwrap_or(0),
            mtime,
        };
        self.pending = Some((f.clone(), resp));
        Ok(vec![f])
    }

    fn fetch(&mut self, file: &RemoteFile, dest: &Path) -> Result<(), SourceError> {
        let what = format!("GET {}", redact(&self.url));
        let mut resp = match self.pending.take() {
            Some((f, r)) if f == *file => r,
            _ => match self.get()? {
                Some(r) => r,
                None => {
                    return Err(SourceError::Transient(format!(
                        "{what}: the file is gone since it was listed"
                    )))
                }
            },
        };
        let expect = header_u64(&resp, CONTENT_LENGTH);
        let n = super::download_to(&mut resp, dest, READ_BUF, |e, n| {
            SourceError::Transient(format!(
                "{what}: body broke off after {n} bytes: {}",
                chain(&e)
            ))
        })?;
        if let Some(len) = expect {
            if n != len {
                return Err(SourceError::Transient(format!(
                    "{what}: got {n} bytes, Content-Length said {len}"
                )));
            }
        }
        if file.size != 0 && n != file.size {
            return Err(SourceError::Transient(format!(
                "{what}: got {n} bytes, the listing said {}",
                file.size
            )));
        }
        Ok(())
    }

    fn remove(&mut self, _name: &str) -> Result<(), SourceError> {
        Ok(())
    }

    fn move_to(&mut self, _name: &str, _dir: &str) -> Result<(), SourceError> {
        Ok(())
    }

    fn folder(&mut self, dir: &str) -> Result<super::Folder, SourceError> {
        Err(SourceError::Permanent(format!(
            "{dir}: an HTTP source has no folders"
        )))
    }

    /// PUT the report to `errors_url` (with the report's name appended when
    /// it ends in `/`); without `errors_url` there is nowhere to put it.
    fn upload(&mut self, _dir: &str, name: &str, data: &[u8]) -> Result<(), SourceError> {
        let Some(base) = &self.errors_url else {
            return Ok(());
        };
        let url = if base.ends_with('/') {
            format!("{base}{name}")
        } else {
            base.clone()
        };
        let what = format!("PUT {}", redact(&url));
        let resp = self
            .client
            .put(&url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("text/csv; charset={}", self.report_charset),
            )
            .body(data.to_vec())
            .send()
            .map_err(|e| req_err(e, &what))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_err(resp.status(), &what))
        }
    }

    fn can_tidy(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_templates_expand() {
        let d = chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        assert_eq!(
            expand_date("https://x/exchange-{date:%Y%m%d}.csv", d).unwrap(),
            "https://x/exchange-20261124.csv"
        );
        assert_eq!(
            expand_date("https://x/{date:%Y}/{date:%m-%d}.csv", d).unwrap(),
            "https://x/2026/11-24.csv"
        );
        assert_eq!(
            expand_date("https://x/a.csv", d).unwrap(),
            "https://x/a.csv"
        );
        assert!(expand_date("https://x/{date:%Y", d).is_err());
        assert!(expand_date("https://x/{date:%Q}", d).is_err());
    }

    #[test]
    fn statuses_say_what_to_fix() {
        let e = status_err(StatusCode::UNAUTHORIZED, "PUT x");
        assert!(matches!(e, SourceError::Auth(_)));
        assert!(
            e.to_string()
                .starts_with("authentication failed: PUT x: HTTP 401"),
            "{e}"
        );
        let e = status_err(StatusCode::FORBIDDEN, "PUT x");
        assert!(!e.retryable());
        assert!(!e.to_string().contains("authentication"), "{e}");
        assert!(
            e.to_string()
                .ends_with("forbidden (check the server's permissions for this path)"),
            "{e}"
        );
        assert!(status_err(StatusCode::SERVICE_UNAVAILABLE, "GET x").retryable());
        assert_eq!(charset_label(Encoding::ShiftJis), "Shift_JIS");
        assert_eq!(charset_label(Encoding::Utf8), "utf-8");
    }

    #[test]
    fn urls_in_logs_carry_no_secrets() {
        assert_eq!(
            redact("https://u:pw@h.example/a.csv?sig=abc"),
            "https://h.example/a.csv?…"
        );
        assert!(check_url("https://u:pw@h.example/a.csv", "url").is_err());
        assert!(check_url("https://h.example/a.csv", "url").is_ok());
    }
}
