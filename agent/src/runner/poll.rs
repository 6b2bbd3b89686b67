//! The heartbeat loop and the fetch of pending instructions.
//!
//! The heartbeat is how the server learns the device is alive and how the
//! device learns there is work: it never waits for an action. With
//! long-polling the server holds it until work arrives, so a command
//! reaches the device at once. A fetched batch runs on a task of its own
//! ([`super::instruction`]); while it runs the agent heartbeats on but does
//! not fetch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tend_proto::device::{Heartbeat, Instruction};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Agent;
use crate::backoff::{Backoff, jittered};
use crate::client::ClientError;
use crate::fault;
use crate::limits::MAX_INSTRUCTIONS_PER_FETCH;
use crate::system;

impl Agent {
    /// A heartbeat; `wait_s` asks the server to hold it (long-poll).
    fn heartbeat(&self, wait_s: Option<u32>) -> Heartbeat {
        Heartbeat {
            agent_version: self.agent_version(),
            boot_id: Some(self.boot_id.clone()),
            uptime_s: system::uptime_s(),
            inventory: Some(self.inventory.clone()),
            components: Some(self.component_versions()),
            wait_s,
        }
    }
}

/// How long a long-polling agent waits for the batch it just fetched
/// before asking again while the server still says work is pending.
const LONG_POLL_PENDING_PAUSE: Duration = Duration::from_secs(1);

/// The longest interval between heartbeats, whatever the server says.
const MAX_INTERVAL_S: u64 = 3600;

/// Heartbeats sent back to back before [`Pace`] spaces them out.
const PACE_BURST: f64 = 10.0;
/// Heartbeats per second, at most, once the burst is spent.
const PACE_PER_S: f64 = 2.0;

/// Keeps a server that answers every heartbeat at once with
/// `next_heartbeat_s = 0` (and never holds a long-poll) from making the
/// agent spin: a few heartbeats back to back are normal (work arrived, a
/// batch ended), a steady stream of them is not. A token bucket: up to
/// [`PACE_BURST`] at once, then [`PACE_PER_S`] a second.
#[derive(Debug)]
struct Pace {
    tokens: f64,
    at: std::time::Instant,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            tokens: PACE_BURST,
            at: std::time::Instant::now(),
        }
    }

    /// How long to wait before the next heartbeat (usually zero).
    fn next_delay(&mut self) -> Duration {
        self.next_delay_at(std::time::Instant::now())
    }

    fn next_delay_at(&mut self, now: std::time::Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PACE_PER_S).min(PACE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / PACE_PER_S);
        // The token earned while waiting is the one this heartbeat spends.
        self.tokens = 0.0;
        self.at = now + wait;
        wait
    }
}

/// Heartbeats, and fetches when the server says work is pending, until the
/// caller stops awaiting it (at shutdown). `batch` is the batch task last
/// started, which the caller waits for when it stops.
pub(super) async fn heartbeat_loop(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    batch: &mut Option<JoinHandle<Option<()>>>,
) {
    let mut backoff = Backoff::default();
    // Fetches that fail (an answer too large or malformed, say) space the
    // heartbeats out too: the server keeps saying work is pending.
    let mut fetch_backoff = Backoff::default();
    let mut pace = Pace::new();
    // The server's interval, learnt from a plain heartbeat: long-polls ask
    // to be held that long, so the request rate stays that of polling.
    let mut interval_s: Option<u64> = None;
    loop {
        let pause = pace.next_delay();
        if !pause.is_zero() {
            debug!(
                pause_ms = pause.as_millis() as u64,
                "heartbeats come too fast; pausing"
            );
            tokio::time::sleep(pause).await;
        }
        let wait_s = interval_s
            .filter(|_| agent.config.long_poll)
            .map(|s| u32::try_from(s).unwrap_or(u32::MAX));
        let delay = match agent.client.heartbeat(&agent.heartbeat(wait_s)).await {
            Ok(answer) => {
                backoff.reset();
                agent.heartbeats.send_modify(|n| *n += 1);
                agent.link_up();
                debug!(
                    pending = answer.pending,
                    next_heartbeat_s = answer.next_heartbeat_s,
                    "heartbeat sent"
                );
                // Clamped: a broken or hostile server must not silence the
                // device for ever (or make it poll without pause).
                let next_s = answer.next_heartbeat_s.min(MAX_INTERVAL_S);
                if wait_s.is_none() {
                    interval_s = Some(next_s.max(1));
                }
                let fetch_failed = answer.pending && !fetch(agent, shutdown, batch).await;
                if !fetch_failed {
                    fetch_backoff.reset();
                }
                let delay = match wait_s {
                    // Woken for work: once the batch is handled (its
                    // reports end "pending"), be held again at once. A batch
                    // still busy after a pause (a long log query) is asked
                    // about again then: the server answers a pending device
                    // without holding it, so this bounds that to one request
                    // per pause.
                    Some(_) if answer.pending => {
                        if let Some(running) = batch.as_mut().filter(|b| !b.is_finished())
                            && tokio::time::timeout(LONG_POLL_PENDING_PAUSE, running)
                                .await
                                .is_ok()
                        {
                            *batch = None;
                        }
                        Duration::ZERO
                    }
                    Some(_) => Duration::from_secs(next_s),
                    // The first heartbeat only learnt the interval: start
                    // being held at once rather than after a whole interval.
                    None if agent.config.long_poll => Duration::ZERO,
                    None => jittered(next_s),
                };
                if fetch_failed {
                    delay.max(fetch_backoff.next_delay())
                } else {
                    delay
                }
            }
            Err(ClientError::Pending { retry_after }) => {
                // Not a failure: the server answers, and says when to ask
                // again whether an admin accepted this device.
                info!(
                    retry_in_ms = retry_after.as_millis() as u64,
                    "this device waits for an admin to accept its enrolment"
                );
                retry_after
            }
            Err(e) => {
                agent.link_down();
                let delay = backoff.next_delay();
                let retry_in_ms = delay.as_millis() as u64;
                match e {
                    ClientError::AuthRefused => error!(
                        retry_in_ms,
                        "heartbeat failed: {e} (wrong device_id or secret, or the device was decommissioned)"
                    ),
                    _ => warn!(retry_in_ms, "heartbeat failed: {e}"),
                }
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // An update check queued work: ask at once.
            () = agent.work_pending.notified() => {}
        }
    }
}

/// Fetches pending instructions unless the previous batch is still being
/// handled; its instructions come back in the next fetch if still pending.
/// Returns false when the fetch failed.
async fn fetch(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    batch: &mut Option<JoinHandle<Option<()>>>,
) -> bool {
    if batch.as_ref().is_some_and(|b| !b.is_finished()) {
        debug!("instructions pending; the previous ones are still being handled");
        return true;
    }
    match agent.client.instructions().await {
        Ok(instructions) if instructions.is_empty() => true,
        Ok(instructions) => {
            let instructions = bounded(instructions);
            debug!(count = instructions.len(), "fetched instructions");
            fault::hit("after_fetch", Ids(&instructions));
            *batch =
                Some(tokio::spawn(shutdown.clone().run_until_cancelled_owned(
                    agent.clone().handle_batch(instructions),
                )));
            true
        }
        Err(e) => {
            warn!("cannot fetch instructions: {e}");
            false
        }
    }
}

/// A fetched list with each id once (the first time it appears) and at
/// most [`MAX_INSTRUCTIONS_PER_FETCH`] instructions: what the server still
/// holds after these are reported comes with the next fetch.
fn bounded(mut instructions: Vec<Instruction>) -> Vec<Instruction> {
    let mut seen = HashSet::new();
    instructions.retain(|i| seen.insert(i.id));
    if instructions.len() > MAX_INSTRUCTIONS_PER_FETCH {
        warn!(
            count = instructions.len(),
            "the server sent {} instructions at once; handling the first {MAX_INSTRUCTIONS_PER_FETCH}",
            instructions.len()
        );
        instructions.truncate(MAX_INSTRUCTIONS_PER_FETCH);
    }
    instructions
}

/// The ids of a batch, space-separated, for the fault points' message.
struct Ids<'a>(&'a [Instruction]);

impl std::fmt::Display for Ids<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, instruction) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}", instruction.id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn instruction(id: Uuid) -> Instruction {
        Instruction {
            id,
            kind: "reboot".into(),
            params: serde_json::json!({}),
            issued_at: Utc::now(),
            expires_at: Utc::now(),
            timeout_s: 60,
            trace_id: None,
            key_id: None,
            signature: None,
        }
    }

    #[test]
    fn a_fetched_list_is_cut_to_its_bound_with_each_id_once() {
        let repeated = Uuid::new_v4();
        let mut list = vec![instruction(repeated); 500];
        list.extend((0..500).map(|_| instruction(Uuid::new_v4())));
        let kept = bounded(list);
        assert_eq!(kept.len(), MAX_INSTRUCTIONS_PER_FETCH);
        assert_eq!(kept[0].id, repeated);
        assert_eq!(kept.iter().filter(|i| i.id == repeated).count(), 1);
        let few = vec![instruction(repeated), instruction(repeated)];
        assert_eq!(bounded(few).len(), 1);
    }

    #[test]
    fn heartbeats_that_come_back_at_once_are_paced_after_a_burst() {
        let mut pace = Pace::new();
        let mut now = pace.at;
        for _ in 0..PACE_BURST as usize {
            assert_eq!(pace.next_delay_at(now), Duration::ZERO);
        }
        // Spent: each further heartbeat waits its turn.
        let wait = pace.next_delay_at(now);
        assert_eq!(wait, Duration::from_millis(500));
        now += wait;
        assert_eq!(pace.next_delay_at(now), Duration::from_millis(500));
        // After a quiet while, a burst is allowed again.
        now += Duration::from_secs(60);
        for _ in 0..PACE_BURST as usize {
            assert_eq!(pace.next_delay_at(now), Duration::ZERO);
        }
        assert!(pace.next_delay_at(now) > Duration::ZERO);
    }
}
