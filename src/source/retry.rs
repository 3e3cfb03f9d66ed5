//! Bounded retries with exponential backoff, for transient source faults only.

use std::time::Duration;

use super::SourceError;

/// Run `op` up to `1 + retries` times while it fails with a retryable error,
/// sleeping 1 s, 2 s, 4 s… (capped at 60 s) in between. Auth and host-key
/// failures return at once.
pub fn with_retries<T>(
    retries: u32,
    what: &str,
    mut op: impl FnMut() -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    with_retries_base(retries, what, Duration::from_secs(1), &mut op)
}

pub(crate) fn with_retries_base<T>(
    retries: u32,
    what: &str,
    base: Duration,
    op: &mut dyn FnMut() -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(e) if e.retryable() && attempt < retries => {
                let wait = (base * 2u32.saturating_pow(attempt)).min(Duration::from_secs(60));
                tracing::warn!(attempt = attempt + 1, of = retries + 1, error = %e, wait_ms = wait.as_millis() as u64, "{what} failed, retrying");
                std::thread::sleep(wait);
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_transient_but_not_auth() {
        let mut n = 0;
        let r: Result<(), _> = with_retries_base(3, "x", Duration::from_millis(1), &mut || {
            n += 1;
            Err(SourceError::Transient("down".into()))
        });
        assert!(r.is_err());
        assert_eq!(n, 4);

        let mut n = 0;
        let r: Result<(), _> = with_retries_base(3, "x", Duration::from_millis(1), &mut || {
            n += 1;
            Err(SourceError::Auth("no".into()))
        });
        assert!(r.is_err());
        assert_eq!(n, 1);

        let mut n = 0;
        let r = with_retries_base(3, "x", Duration::from_millis(1), &mut || {
            n += 1;
            if n < 3 {
                Err(SourceError::Transient("down".into()))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r.unwrap(), 3);
    }
}
