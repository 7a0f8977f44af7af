//! Bounded retries with exponential backoff and jitter, honouring `retry-after`.

use std::time::Duration;

use rand::Rng;

/// How often and how patiently a failed model call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included; at least 1.
    pub max_attempts: u32,
    /// Delay after the first failure; doubled after each further one.
    pub base_delay: Duration,
    /// No wait exceeds this, whatever the backoff or the provider's `retry-after` says, so one
    /// issue cannot stall the worker for long; the template fallback is always there.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt `failed_attempt` (1-based) failed.
    ///
    /// Backoff is `base × 2^(n-1)` scaled by `jitter` (expected in 0.5..=1.0, so concurrent
    /// callers spread out); a provider's `retry-after` is a lower bound; `max_delay` caps both.
    pub fn delay(
        &self,
        failed_attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).min(20);
        let backoff = self
            .base_delay
            .saturating_mul(1 << exponent)
            .mul_f64(jitter.clamp(0.0, 1.0));
        backoff
            .max(retry_after.unwrap_or(Duration::ZERO))
            .min(self.max_delay)
    }

    /// [`Self::delay`] with random jitter.
    pub(crate) fn jittered_delay(
        &self,
        failed_attempt: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let jitter = rand::rng().random_range(0.5..=1.0);
        self.delay(failed_attempt, retry_after, jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_honours_retry_after_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        let check = |attempt: u32, retry_after_ms: Option<u64>, jitter: f64, expect_ms: u64| {
            let got = policy.delay(attempt, retry_after_ms.map(Duration::from_millis), jitter);
            assert_eq!(got, Duration::from_millis(expect_ms), "attempt {attempt}");
        };
        check(1, None, 1.0, 100);
        check(2, None, 1.0, 200);
        check(3, None, 1.0, 400);
        check(3, None, 0.5, 200);
        check(2, Some(1_000), 1.0, 1_000);
        check(2, Some(10), 1.0, 200);
        check(10, None, 1.0, 2_000);
        check(1, Some(60_000), 1.0, 2_000);
        check(u32::MAX, None, 1.0, 2_000);
    }

    #[test]
    fn jitter_stays_within_half_to_full_backoff() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let delay = policy.jittered_delay(2, None);
            assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_millis(1_000));
        }
    }
}
