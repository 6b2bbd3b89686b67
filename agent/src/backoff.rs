//! Retry delays and heartbeat jitter.
//!
//! A fleet that lost its server all retries at once when it comes back;
//! randomising every delay spreads that thundering herd out.

use std::time::Duration;

/// Exponential backoff with jitter: each delay is drawn from the upper half
/// of a window that doubles per attempt, up to `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

/// First retry after about a second: quick enough for a blip, slow enough
/// not to hammer a server that is restarting.
pub const BASE: Duration = Duration::from_secs(1);
/// The longest wait between retries, so a device notices a recovered server
/// within a minute.
pub const CAP: Duration = Duration::from_secs(60);

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BASE, CAP)
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let window = self
            .base
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        window / 2 + window.mul_f64(rand::random_range(0.0..=0.5))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The longest delay this backoff waits.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

/// `seconds` ±10 %, at least one second, so devices started together drift
/// apart instead of heartbeating in lockstep.
pub fn jittered(seconds: u64) -> Duration {
    Duration::from_secs(seconds.max(1)).mul_f64(rand::random_range(0.9..=1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(500) && first <= BASE);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= CAP));
        assert!(delays.last().unwrap() >= &(CAP / 2));
        backoff.reset();
        assert!(backoff.next_delay() <= BASE);
    }

    #[test]
    fn heartbeat_jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(30);
            assert!(d >= Duration::from_secs(27) && d <= Duration::from_secs(33));
        }
        assert!(jittered(0) >= Duration::from_millis(900));
    }
}
