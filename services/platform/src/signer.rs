//! Signs the commands tend-sync queued.
//!
//! An update check (seed 004) is answered by tend-sync, which queues the
//! `upgrade` it decides on but holds no signing key: the command waits
//! unsigned, neither announced nor deliverable, until a platform replica
//! takes it here. The platform does not sign blindly what it finds in the
//! table: it resolves the artifact again against the device (an `upgrade`
//! of a ready artifact made for its type, not on its denylist, with the
//! very reference the params carry) and ends anything else `cancelled`,
//! so a row written into PostgreSQL by hand is never signed into an
//! instruction the platform would not have issued.

use std::time::Duration;

use tend_core::db::{self, commands, devices};
use tend_core::error::ApiError;
use tend_core::retry::{Outage, sleep_unless_cancelled};
use tend_proto::CommandKind;
use tend_proto::params::{self, CommandParams};
use tokio_util::sync::CancellationToken;

use crate::software;
use crate::state::Shared;

/// How often a replica looks for unsigned commands: an update check's
/// upgrade reaches its device within about this long.
const POLL: Duration = Duration::from_secs(1);
/// Commands signed per transaction.
const BATCH: i64 = 100;

pub async fn run(state: Shared, stop: CancellationToken) {
    let outage = Outage::new("signing of queued commands");
    while sleep_unless_cancelled(POLL, &stop).await {
        loop {
            match db::bounded(sign_batch(&state)).await {
                Ok(n) => {
                    outage.recovered();
                    if n < BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    outage.failed(&e);
                    break;
                }
            }
        }
    }
}

/// Signs or refuses one batch; answers how many commands it took.
async fn sign_batch(state: &Shared) -> Result<usize, ApiError> {
    db::in_tx(&state.pool, async |tx| {
        let unsigned = commands::unsigned(tx, BATCH).await?;
        let taken = unsigned.len();
        for command in unsigned {
            match signable(tx, &command).await? {
                Ok(()) => {
                    let signed = commands::sign(tx, command, &state.signer).await?;
                    metrics::counter!("tend_commands_queued_total", "kind" => signed.kind.clone())
                        .increment(1);
                    tracing::info!(command.id = %signed.id, device.id = %signed.device_id,
                        trace_id = signed.trace_id.as_deref().unwrap_or(""),
                        "signed {} command {} queued by an update check", signed.kind, signed.id);
                }
                Err(reason) => {
                    tracing::warn!(command.id = %command.id, device.id = %command.device_id,
                        "not signing command {}: {reason}", command.id);
                    commands::refuse_unsigned(
                        tx,
                        command.id,
                        &format!("the platform did not sign it: {reason}"),
                    )
                    .await?;
                }
            }
        }
        Ok::<_, ApiError>(taken)
    })
    .await
}

/// Whether the platform would have queued `command` itself: the inner
/// error is the reason it is not signed.
async fn signable(
    tx: &impl db::GenericClient,
    command: &commands::Command,
) -> Result<Result<(), String>, ApiError> {
    if command.kind != CommandKind::Upgrade.as_str() {
        return Ok(Err(format!(
            "only an update check's upgrade is signed after it is queued, not `{}`",
            command.kind
        )));
    }
    let checked = match params::parse(CommandKind::Upgrade, &command.params) {
        Ok(p @ CommandParams::Upgrade(_)) => p,
        Ok(_) => return Ok(Err("params are not an upgrade's".into())),
        Err(e) => return Ok(Err(format!("params: {e}"))),
    };
    let Some(device) = devices::get(tx, command.tenant_id, command.device_id).await? else {
        return Ok(Err("its device is not in its tenant".into()));
    };
    match software::resolve(tx, &device, checked, command.params.clone()).await {
        Ok(resolved) if resolved.params == command.params => Ok(Ok(())),
        Ok(_) => Ok(Err(
            "its artifact reference is not the artifact's as stored".into(),
        )),
        Err(ApiError::Unprocessable(why) | ApiError::NotFound(why) | ApiError::Conflict(why)) => {
            Ok(Err(why))
        }
        Err(e) => Err(e),
    }
}
