//! Per-key request rate: a token bucket per API key, in memory (a restart
//! refills every bucket, which only ever lets a burst through again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::Rate;

/// Which of a key's buckets: each kind of call has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Exchanges,
    Verify,
}

#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<(i64, Bucket), Tokens>>,
}

struct Tokens {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// Take one token of `key`'s bucket at `now`; `Err(secs)` to wait
    /// when it is empty.
    pub fn take(&self, key: (i64, Bucket), rate: Rate, now: Instant) -> Result<(), u64> {
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = all.entry(key).or_insert(Tokens {
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

/// Calls per partner per day (in the configured zone), in memory: a
/// restart of `serve` starts the day's count again.
#[derive(Default)]
pub struct DailyQuota {
    counts: Mutex<HashMap<String, (chrono::NaiveDate, u64)>>,
}

impl DailyQuota {
    /// Count one call of `partner` at `now`; `Err(secs to the next day)`
    /// once `limit` calls were made today.
    pub fn take(
        &self,
        partner: &str,
        limit: u64,
        now: chrono::DateTime<chrono::Utc>,
        tz: chrono_tz::Tz,
    ) -> Result<(), u64> {
        let today = now.with_timezone(&tz).date_naive();
        let mut all = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = all.entry(partner.to_owned()).or_insert((today, 0));
        if c.0 != today {
            *c = (today, 0);
        }
        if c.1 >= limit {
            let next = today
                .succ_opt()
                .map(|d| crate::timefmt::start_of_day(d, tz))
                .unwrap_or(now);
            return Err((next - now).num_seconds().max(1) as u64);
        }
        c.1 += 1;
        Ok(())
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
        let k1 = (1, Bucket::Exchanges);
        for _ in 0..3 {
            assert!(l.take(k1, rate, t).is_ok());
        }
        assert_eq!(l.take(k1, rate, t), Err(1));
        assert!(
            l.take((2, Bucket::Exchanges), rate, t).is_ok(),
            "buckets are per key"
        );
        assert!(
            l.take((1, Bucket::Verify), rate, t).is_ok(),
            "and per kind of call"
        );
        assert!(l.take(k1, rate, t + Duration::from_millis(500)).is_ok());
        assert!(l.take(k1, rate, t + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn daily_quota_resets_at_local_midnight() {
        let q = DailyQuota::default();
        let tz = chrono_tz::Asia::Tokyo;
        // 23:59:30 JST
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-29T14:59:30Z")
            .unwrap()
            .to_utc();
        assert!(q.take("p", 2, t, tz).is_ok());
        assert!(q.take("p", 2, t, tz).is_ok());
        assert_eq!(q.take("p", 2, t, tz), Err(30));
        assert!(q.take("other", 2, t, tz).is_ok());
        assert!(q
            .take("p", 2, t + chrono::Duration::seconds(31), tz)
            .is_ok());
    }
}
