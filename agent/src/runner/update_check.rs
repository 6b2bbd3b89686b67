//! The scheduled update check (seed 004): every `update_check_s`, with
//! jitter so a fleet started together does not ask together, the agent
//! tells the server what each component runs. The server queues an
//! `upgrade` for what should change, which reaches the agent through the
//! heartbeat loop like any other command.

use std::sync::Arc;
use std::time::Duration;

use tend_proto::device::UpdateCheck;
use tracing::{debug, info, warn};

use super::Agent;
use crate::backoff::jittered;

/// The first check comes within this long of the start (or within one
/// interval, when that is shorter), not a whole interval later.
const FIRST_CHECK_WITHIN: Duration = Duration::from_secs(30);

pub(super) async fn update_check_loop(agent: Arc<Agent>) {
    let Some(interval) = agent.config.software.update_check else {
        return;
    };
    let first = FIRST_CHECK_WITHIN.min(interval);
    tokio::time::sleep(first.mul_f64(rand::random::<f64>())).await;
    loop {
        let check = UpdateCheck {
            components: agent.component_versions(),
        };
        match agent.client.update_check(&check).await {
            Ok(answer) if answer.pending => {
                info!("update check: the server has work for this device");
                agent.work_pending.notify_one();
            }
            Ok(_) => debug!("update check: nothing to change"),
            Err(e) => warn!("update check failed: {e}"),
        }
        tokio::time::sleep(jittered(interval.as_secs())).await;
    }
}
