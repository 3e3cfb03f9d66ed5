//! A WARN that a client can trigger at will (a refused connection, an IP
//! address as TLS server name) is logged at most once per period, with the
//! number of occurrences it stood for: an attacker must not flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::Context;

/// "Log now?" for one kind of warning, lock-free.
pub struct WarnEvery {
    base: Instant,
    period_ms: u64,
    /// Milliseconds since `base` of the last warning logged, plus one (0:
    /// never logged).
    last: AtomicU64,
    /// Occurrences not logged since the last warning.
    skipped: AtomicU64,
}

impl WarnEvery {
    pub fn new(period: Duration) -> WarnEvery {
        WarnEvery {
            base: Instant::now(),
            period_ms: period.as_millis() as u64,
            last: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// One occurrence at `now`: `Some(occurrences skipped since the last
    /// warning)` when it is to be logged, `None` when it is only counted.
    pub fn due(&self, now: Instant) -> Option<u64> {
        let t = now.saturating_duration_since(self.base).as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && t < last + self.period_ms {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self
            .last
            .compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Some(self.skipped.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// TLS clients that named an IP address as server (SNI), since start: the
/// source of `milebatch_tls_sni_ip_address_total`.
pub static SNI_IP_ADDRESS: AtomicU64 = AtomicU64::new(0);

/// Where rustls logs, once per ClientHello, what a client did wrong in it
/// (an IP address as SNI, a duplicate name).
pub const RUSTLS_HELLO_TARGET: &str = "rustls::msgs::handshake";

/// A tracing layer for rustls's per-handshake warnings, which any client
/// can trigger at will: counted ([`SNI_IP_ADDRESS`]) and logged again at
/// most once a minute with the number they stand for. The log output
/// itself is set not to print them (see `cli::output::init_tracing`).
pub struct RustlsWarnings {
    sni_ip: WarnEvery,
    other: WarnEvery,
}

impl Default for RustlsWarnings {
    fn default() -> Self {
        RustlsWarnings {
            sni_ip: WarnEvery::new(Duration::from_secs(60)),
            other: WarnEvery::new(Duration::from_secs(60)),
        }
    }
}

/// The `message` field of an event.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for RustlsWarnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // rustls logs through the `log` crate: its target is in the
        // normalized metadata.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if meta.target() != RUSTLS_HELLO_TARGET || *meta.level() > tracing::Level::WARN {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let now = Instant::now();
        if message.0.contains("IP address") {
            SNI_IP_ADDRESS.fetch_add(1, Ordering::Relaxed);
            if let Some(skipped) = self.sni_ip.due(now) {
                tracing::warn!(
                    since_last_warning = skipped,
                    "a TLS client sent an IP address as server name (SNI); the name is ignored and the handshake goes on (counted in milebatch_tls_sni_ip_address_total; logged at most once a minute)"
                );
            }
        } else if let Some(skipped) = self.other.due(now) {
            tracing::warn!(
                since_last_warning = skipped,
                tls = %message.0,
                "a TLS client's hello was not as the protocol says (logged at most once a minute)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_a_period_with_the_count_skipped() {
        let w = WarnEvery::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(w.due(t0), Some(0));
        for s in 1..60 {
            assert_eq!(w.due(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(w.due(t0 + Duration::from_secs(61)), Some(59));
        assert_eq!(w.due(t0 + Duration::from_secs(62)), None);
    }
}
