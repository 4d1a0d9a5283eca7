//! Retry schedule: exponential backoff with full jitter, capped, and a give-up point.

/// When to try again after `attempts` failed attempts (1 = the first try failed):
/// a delay drawn from `[d/2, d]` with `d = min(base · 2^(attempts-1), cap)`, where `jitter`
/// (in `[0, 1)`) picks the point. Half the delay is fixed so a retry never comes at once;
/// the other half spreads retries of many notifications over time.
pub fn delay_ms(attempts: u32, base_ms: u64, cap_ms: u64, jitter: f64) -> u64 {
    let exp = attempts.saturating_sub(1).min(62);
    let d = base_ms.saturating_mul(1u64 << exp).min(cap_ms).max(1);
    let j = jitter.clamp(0.0, 1.0);
    d / 2 + ((d - d / 2) as f64 * j) as u64
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryIn(u64),
    GiveUp,
}

/// The decision after `attempts` failed attempts with at most `max_attempts` in all.
pub fn next(attempts: u32, max_attempts: u32, base_ms: u64, cap_ms: u64, jitter: f64) -> Next {
    if attempts >= max_attempts {
        Next::GiveUp
    } else {
        Next::RetryIn(delay_ms(attempts, base_ms, cap_ms, jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_until_the_cap_and_jitters_within_half() {
        assert_eq!(delay_ms(1, 1000, 60_000, 0.0), 500);
        assert_eq!(delay_ms(1, 1000, 60_000, 0.999_999), 999);
        assert_eq!(delay_ms(2, 1000, 60_000, 0.0), 1000);
        assert_eq!(delay_ms(3, 1000, 60_000, 1.0), 4000);
        assert_eq!(delay_ms(10, 1000, 60_000, 1.0), 60_000);
        assert_eq!(delay_ms(10, 1000, 60_000, 0.0), 30_000);
        // No overflow for absurd attempt counts.
        assert_eq!(delay_ms(u32::MAX, 1000, 60_000, 1.0), 60_000);
    }

    #[test]
    fn gives_up_after_the_last_attempt() {
        assert_eq!(next(1, 3, 100, 1000, 0.0), Next::RetryIn(50));
        assert_eq!(next(2, 3, 100, 1000, 0.0), Next::RetryIn(100));
        assert_eq!(next(3, 3, 100, 1000, 0.0), Next::GiveUp);
    }
}
