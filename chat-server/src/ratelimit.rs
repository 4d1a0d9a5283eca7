//! Token bucket, pure: the caller passes the time.

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

impl TokenBucket {
    /// `rate` tokens per second, at most `burst` saved up; starts full.
    pub fn new(rate: f64, burst: u32, now_s: f64) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now_s,
        }
    }

    /// Take one token at time `now_s` (seconds); false if the bucket is empty.
    pub fn take(&mut self, now_s: f64) -> bool {
        let elapsed = (now_s - self.last).max(0.0);
        self.last = now_s;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let mut b = TokenBucket::new(50.0, 100, 0.0);
        assert_eq!((0..100).filter(|_| b.take(0.0)).count(), 100);
        assert!(!b.take(0.0));
        // One second later: 50 more.
        assert_eq!((0..100).filter(|_| b.take(1.0)).count(), 50);
        // Never more than the burst, however long idle.
        assert_eq!((0..500).filter(|_| b.take(1000.0)).count(), 100);
    }
}
