//! Exponential backoff with full jitter: the wait is uniform in [0, min(cap, base * 2^attempt)], so a
//! fleet that lost its server does not come back in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The same growth with another longest wait (`drover-sim --reconnect-cap`).
    pub fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Called after a connection worked, so the next failure starts small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_the_growing_ceiling_and_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for attempt in 0..40u32 {
            let ceiling = Duration::from_millis(500)
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(Duration::from_secs(30));
            assert!(b.next_delay() <= ceiling);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn another_cap_bounds_every_wait() {
        let mut b = Backoff::default().with_cap(Duration::from_secs(8));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(8));
        }
    }
}
