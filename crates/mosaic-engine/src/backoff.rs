//! Exponential backoff with jitter, shared by the engine's workers.

use std::time::Duration;

/// Delay before attempt `attempts + 1`: `base_ms` doubled per earlier attempt, capped at
/// `max_ms`, with ±20% jitter so that failures of many items do not retry in lockstep.
pub fn jittered(base_ms: u64, max_ms: u64, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let capped = base_ms.saturating_mul(1 << exponent).min(max_ms);
    let jitter = rand::random_range(0.8..=1.2);
    Duration::from_millis((capped as f64 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps_with_bounded_jitter() {
        let check = |attempts: u32, low: u128, high: u128| {
            for _ in 0..50 {
                let delay = jittered(1_000, 60_000, attempts).as_millis();
                assert!((low..=high).contains(&delay), "attempt {attempts}: {delay}");
            }
        };
        check(0, 800, 1_200);
        check(1, 800, 1_200);
        check(2, 1_600, 2_400);
        check(4, 6_400, 9_600);
        check(40, 48_000, 72_000);
    }
}
