//! Exponential backoff with jitter: every peer retrying a failed bucket at the same
//! instant would hammer it in lockstep, so each delay is randomised.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::error::StorageError;

/// How often and how patiently an operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Delay cap before the second attempt; doubles per attempt.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The delay before attempt `attempt + 1` (`attempt` ≥ 1 failed so far): uniformly
    /// random in `[cap/2, cap]`, `cap = min(max_delay, base_delay · 2^(attempt-1))`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        if cap_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or the attempts are
    /// used up; returns the last error.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StorageError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.max_attempts.max(1) => {
                    let delay = self.delay(attempt);
                    tracing::debug!(attempt, ?delay, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let p =
            RetryPolicy { max_attempts: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for _ in 0..200 {
            let d1 = p.delay(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&d1), "{d1:?}");
            let d3 = p.delay(3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&d3), "{d3:?}");
            let d40 = p.delay(40);
            assert!((Duration::from_millis(500)..=Duration::from_secs(1)).contains(&d40), "{d40:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| p.delay(5)).collect();
        assert!(distinct.len() > 1, "no jitter");
    }

    fn unavailable() -> StorageError {
        StorageError::Unavailable { bucket: "b".into(), key: "k".into(), reason: "down".into() }
    }

    #[tokio::test]
    async fn retries_only_retryable_errors_and_stops_after_max_attempts() {
        let p =
            RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) };
        let mut calls = 0;
        let r: Result<(), _> = p
            .run(|_| {
                calls += 1;
                async { Err(unavailable()) }
            })
            .await;
        assert!(matches!(r, Err(StorageError::Unavailable { .. })));
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<(), _> = p
            .run(|_| {
                calls += 1;
                async { Err(StorageError::NotFound { bucket: "b".into(), key: "k".into() }) }
            })
            .await;
        assert!(matches!(r, Err(StorageError::NotFound { .. })));
        assert_eq!(calls, 1);

        let r = p.run(|attempt| async move { if attempt < 2 { Err(unavailable()) } else { Ok(attempt) } }).await;
        assert_eq!(r.unwrap(), 2);
    }
}
