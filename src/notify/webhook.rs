//! Webhooks: an event as JSON, POSTed to the partner's URL and signed the
//! way partners know from Stripe:
//!
//! ```text
//! Milebatch-Signature: t=1764835200,v1=<hex HMAC-SHA256 of "1764835200.<body>">
//! ```
//!
//! under the partner's webhook secret. The receiver recomputes the HMAC
//! over the timestamp, a dot and the raw body, compares in constant time,
//! and refuses a timestamp too far from its clock (docs/notifications.md
//! has the check in a few languages).
//!
//! What must stay true: TLS is verified (system roots plus
//! `webhook_ca_file`); any 2xx is delivered, anything else (or no answer
//! within `webhook_timeout`) is retried with the same body and
//! event id, a fresh timestamp and signature.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::config::Webhook;
use crate::config::{Config, PartnerConfig};
use crate::store::outbox::Event;

/// The JSON a partner receives for `ev`.
pub fn body(config: &Config, p: &PartnerConfig, ev: &Event) -> String {
    let mut data: Value = serde_json::from_str(&ev.data).unwrap_or_else(|_| json!({}));
    // The technical reason is for ops; the partner gets the file code.
    if let Some(m) = data.as_object_mut() {
        m.remove("reason");
    }
    let created = crate::timefmt::parse_stored(&ev.created_at)
        .map(|t| crate::timefmt::rfc3339(t, config.daemon.timezone))
        .unwrap_or_else(|| ev.created_at.clone());
    json!({
        "id": ev.event_id,
        "type": ev.kind,
        "created": created,
        "partner": { "id": p.id, "name": p.name },
        "data": data,
    })
    .to_string()
}

/// `t=<unix>,v1=<hex hmac>` over `"<t>.<body>"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={hex}")
}

/// POST `ev` to the partner's webhook; the error in one line.
pub fn send(config: &Config, hook: &Webhook, p: &PartnerConfig, ev: &Event) -> Result<(), String> {
    let secret = hook.read_secret()?;
    let body = body(config, p, ev);
    let now = chrono::Utc::now().timestamp();
    let mut b = reqwest::blocking::Client::builder()
        .timeout(hook.timeout)
        .connect_timeout(hook.timeout)
        // A redirect would carry the signed body somewhere not configured.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("milebatch/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &hook.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("webhook_ca_file {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("webhook_ca_file {}: {e}", ca.display()))?;
        b = b.tls_certs_merge(certs);
    }
    let client = b.build().map_err(|e| format!("HTTP client setup: {e}"))?;
    let resp = client
        .post(hook.url.clone())
        .header("Content-Type", "application/json")
        .header(
            "Milebatch-Signature",
            signature(secret.expose().as_bytes(), now, &body),
        )
        .header("Milebatch-Event-Id", &ev.event_id)
        .body(body)
        .send()
        .map_err(|e| crate::source::http::chain(&e))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{} answered {status}", hook.url))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_stripes_scheme() {
        // Computed independently: printf '%s' '1700000000.{"a":1}' |
        //   openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            super::signature(b"whsec_test", 1_700_000_000, "{\"a\":1}"),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }
}
