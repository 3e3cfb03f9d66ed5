//! Per-key request rate: a token bucket per API key, in memory (a restart
//! refills every bucket, which only ever lets a burst through again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::Rate;

#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<i64, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// Take one token of `key`'s bucket at `now`; `Err(secs)` to wait
    /// when it is empty.
    pub fn take(&self, key: i64, rate: Rate, now: Instant) -> Result<(), u64> {
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = all.entry(key).or_insert(Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let l = Limiter::default();
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.take(1, rate, t).is_ok());
        }
        assert_eq!(l.take(1, rate, t), Err(1));
        assert!(l.take(2, rate, t).is_ok(), "buckets are per key");
        assert!(l.take(1, rate, t + Duration::from_millis(500)).is_ok());
        assert!(l.take(1, rate, t + Duration::from_millis(500)).is_err());
    }
}
