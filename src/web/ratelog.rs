//! A WARN that a client can trigger at will (a refused connection, an IP
//! address as TLS server name) is logged at most once per period, with the
//! number of occurrences it stood for: an attacker must not flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

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
