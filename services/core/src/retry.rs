//! Retrying, waiting and telling about outages: the one way every loop of
//! tend's services does it.
//!
//! While a backing service is down, a loop fails the same way on every
//! retry. It should wait longer and longer between attempts ([`Backoff`]),
//! stop waiting the moment the process drains
//! ([`sleep_unless_cancelled`]), and say so in the log when the outage
//! starts and when it ends, not on every attempt ([`Outage`]). At startup,
//! a service waits a bounded time for what it cannot start without
//! ([`at_startup`]) and then exits with the reason.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff between retries, capped.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The backoff of the long-running loops (relay, LISTEN, the event
    /// consumer): a broker or database that restarts is back within
    /// seconds, and 10 s between attempts keeps a long outage from
    /// flooding anything.
    pub fn service() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// The wait before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Remembers whether one part of a loop is failing, so that each outage is
/// logged once when it starts and once when it ends. Shared by reference:
/// a part that fails on one task and recovers on another still logs each
/// change once.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    down: AtomicBool,
}

impl Outage {
    /// `what` names the part that fails, as the log should say it
    /// ("outbox relay", "revocation list refresh").
    pub const fn new(what: &'static str) -> Self {
        Outage {
            what,
            down: AtomicBool::new(false),
        }
    }

    /// Records a failure: a warning if this starts an outage, a debug line
    /// while it lasts. Answers whether it started one.
    pub fn failed(&self, err: impl Display) -> bool {
        let what = self.what;
        let started = !self.down.swap(true, Ordering::Relaxed);
        if started {
            tracing::warn!(error = format!("{err:#}"), "{what} failing: {err:#}");
        } else {
            tracing::debug!(error = format!("{err:#}"), "{what} still failing: {err:#}");
        }
        started
    }

    /// Records a success; logs if this ends an outage, and answers whether
    /// it did.
    pub fn recovered(&self) -> bool {
        let ended = self.down.swap(false, Ordering::Relaxed);
        if ended {
            let what = self.what;
            tracing::info!("{what} recovered");
        }
        ended
    }

    /// Whether the part is failing now.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

/// A ticker for a periodic loop. After a slow round it waits a whole
/// interval rather than catch up with a burst of rounds that would find
/// nothing new.
pub fn ticker(interval: Duration) -> tokio::time::Interval {
    ticker_from(tokio::time::Instant::now(), interval)
}

/// [`ticker`] whose first tick comes at `start` rather than at once.
pub fn ticker_from(start: tokio::time::Instant, interval: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Sleeps for `delay` unless `token` is cancelled first; answers whether the
/// loop should go on.
pub async fn sleep_unless_cancelled(delay: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// How many times a service tries a backing service at startup, and the
/// backoff between tries: 0.25 s doubling up to 8 s, about 24 s of waiting
/// over 8 attempts (plus each attempt's own timeout). Long enough for a
/// service started together with its database or broker (a Kubernetes
/// rollout, `up.sh`) to wait for it, short enough that a wrong URL is
/// reported within half a minute rather than hidden by endless retries.
const STARTUP_ATTEMPTS: u32 = 8;

fn startup_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(8))
}

/// Tries `attempt` until it succeeds, at most [`STARTUP_ATTEMPTS`] times
/// with backoff, logging each failure; the last failure is returned with
/// "cannot reach {what} ({variable})" as its context, which is the
/// one-line reason a service exits with. A TLS handshake refused for a
/// reason the next attempt would meet too (a certificate that does not
/// verify, a server without TLS: [`crate::tls::is_handshake_refusal`])
/// ends the retries at once.
pub async fn at_startup<T, E, F, Fut>(
    what: &str,
    variable: &str,
    mut attempt: F,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = startup_backoff();
    let mut tries = 1;
    loop {
        match attempt().await.map_err(Into::<anyhow::Error>::into) {
            Ok(value) => return Ok(value),
            Err(e) if tries < STARTUP_ATTEMPTS && !crate::tls::is_handshake_refusal(&e) => {
                tracing::warn!(attempt = tries, "{what} not reachable yet: {e:#}");
                tokio::time::sleep(backoff.next_delay()).await;
                tries += 1;
            }
            Err(e) => {
                return Err(e.context(format!("cannot reach {what} ({variable})")));
            }
        }
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
        let o = Outage::new("test");
        assert!(!o.is_down());
        assert!(o.failed(anyhow::anyhow!("broken")));
        assert!(!o.failed(anyhow::anyhow!("still broken")));
        assert!(o.is_down());
        assert!(o.recovered());
        assert!(!o.is_down());
        assert!(!o.recovered());
    }

    #[tokio::test]
    async fn a_cancelled_token_cuts_the_sleep_short() {
        let token = CancellationToken::new();
        token.cancel();
        assert!(!sleep_unless_cancelled(Duration::from_secs(3600), &token).await);
        let live = CancellationToken::new();
        assert!(sleep_unless_cancelled(Duration::from_millis(1), &live).await);
    }

    #[tokio::test(start_paused = true)]
    async fn startup_retries_a_bounded_number_of_times_and_names_the_variable() {
        let mut calls = 0;
        let err = at_startup("PostgreSQL", "TEND_DATABASE_URL", || {
            calls += 1;
            async { Err::<(), _>(anyhow::anyhow!("connection refused")) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, STARTUP_ATTEMPTS);
        assert_eq!(
            format!("{err:#}"),
            "cannot reach PostgreSQL (TEND_DATABASE_URL): connection refused"
        );

        let mut calls = 0;
        let value = at_startup("Redis", "TEND_REDIS_URL", || {
            calls += 1;
            let ok = calls == 3;
            async move {
                if ok {
                    Ok(7)
                } else {
                    Err(anyhow::anyhow!("not yet"))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((value, calls), (7, 3));
    }
}
