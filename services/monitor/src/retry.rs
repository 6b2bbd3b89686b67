//! Backoff and quiet failure logging for the monitor's background loops.
//!
//! While a backing service is down, a loop fails the same way on every
//! retry. It should wait longer and longer between attempts, and say so in
//! the log when the outage starts and when it ends, not on every attempt.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff between retries, capped.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt; each call doubles the following one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the shortest wait, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// The backoff of the relay and LISTEN loops: a broker or database that
/// restarts is back within seconds, and 10 s between attempts keeps a long
/// outage from flooding anything.
pub(crate) fn service_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(10))
}

/// Remembers whether one part of a loop is failing, so that each outage is
/// logged once when it starts and once when it ends.
#[derive(Debug)]
pub(crate) struct Outage {
    what: &'static str,
    down: bool,
}

impl Outage {
    pub(crate) fn new(what: &'static str) -> Self {
        Outage { what, down: false }
    }

    /// Records a failure; logs a warning if this starts an outage.
    pub(crate) fn failed(&mut self, err: &anyhow::Error) {
        let what = self.what;
        if self.down {
            tracing::debug!(error = format!("{err:#}"), "{what} still failing: {err:#}");
        } else {
            tracing::warn!(error = format!("{err:#}"), "{what} failing: {err:#}");
        }
        self.down = true;
    }

    /// Records a success; logs if this ends an outage.
    pub(crate) fn recovered(&mut self) {
        if self.down {
            let what = self.what;
            tracing::info!("{what} recovered");
        }
        self.down = false;
    }
}

/// A ticker for a periodic loop. After a slow round it waits a whole
/// interval rather than catch up with a burst of rounds that would find
/// nothing new.
pub(crate) fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Sleeps for `delay` unless `token` is cancelled first; answers whether the
/// loop should go on.
pub(crate) async fn sleep_unless_cancelled(delay: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn an_outage_is_remembered_until_a_success() {
        let mut o = Outage::new("test");
        assert!(!o.down);
        o.failed(&anyhow::anyhow!("broken"));
        o.failed(&anyhow::anyhow!("still broken"));
        assert!(o.down);
        o.recovered();
        assert!(!o.down);
    }

    #[tokio::test]
    async fn a_cancelled_token_cuts_the_sleep_short() {
        let token = CancellationToken::new();
        token.cancel();
        assert!(!sleep_unless_cancelled(Duration::from_secs(3600), &token).await);
        let live = CancellationToken::new();
        assert!(sleep_unless_cancelled(Duration::from_millis(1), &live).await);
    }
}
