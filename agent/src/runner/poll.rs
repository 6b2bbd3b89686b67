//! The heartbeat loop and the fetch of pending instructions.
//!
//! The heartbeat is how the server learns the device is alive and how the
//! device learns there is work: it never waits for an action. With
//! long-polling the server holds it until work arrives, so a command
//! reaches the device at once. A fetched batch runs on a task of its own
//! ([`super::instruction`]); while it runs the agent heartbeats on but does
//! not fetch.

use std::sync::Arc;
use std::time::Duration;

use tend_proto::device::{Heartbeat, Instruction};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::Agent;
use crate::backoff::{Backoff, jittered};
use crate::client::ClientError;
use crate::fault;
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

/// Heartbeats, and fetches when the server says work is pending, until the
/// caller stops awaiting it (at shutdown). `batch` is the batch task last
/// started, which the caller waits for when it stops.
pub(super) async fn heartbeat_loop(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    batch: &mut Option<JoinHandle<Option<()>>>,
) {
    let mut backoff = Backoff::default();
    // The server's interval, learnt from a plain heartbeat: long-polls ask
    // to be held that long, so the request rate stays that of polling.
    let mut interval_s: Option<u64> = None;
    loop {
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
                if answer.pending {
                    fetch(agent, shutdown, batch).await;
                }
                match wait_s {
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
                }
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
async fn fetch(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    batch: &mut Option<JoinHandle<Option<()>>>,
) {
    if batch.as_ref().is_some_and(|b| !b.is_finished()) {
        debug!("instructions pending; the previous ones are still being handled");
        return;
    }
    match agent.client.instructions().await {
        Ok(instructions) if instructions.is_empty() => {}
        Ok(instructions) => {
            debug!(count = instructions.len(), "fetched instructions");
            fault::hit("after_fetch", Ids(&instructions));
            *batch =
                Some(tokio::spawn(shutdown.clone().run_until_cancelled_owned(
                    agent.clone().handle_batch(instructions),
                )));
        }
        Err(e) => warn!("cannot fetch instructions: {e}"),
    }
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
