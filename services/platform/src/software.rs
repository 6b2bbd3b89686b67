//! What an `upgrade` or `restore` installs, decided when the command is
//! created: the artifact is resolved and checked against the device (ready,
//! made for its type, not on its denylist), and its reference is written
//! into the params, so the agent knows the component, version, size and
//! digest before it fetches a byte.

use serde_json::Value;
use tend_core::db::artifacts::{self, Artifact, ArtifactStatus};
use tend_core::db::devices::Device;
use tend_core::db::{GenericClient, commands};
use tend_core::error::ApiError;
use tend_proto::params::{CommandParams, RestoreSource};
use uuid::Uuid;

/// A command's params as stored and sent, with what the record keeps
/// beside them.
pub struct Resolved {
    pub params: Value,
    /// The artifact it installs, if any.
    pub artifact_id: Option<Uuid>,
    /// The component it changes: one open command per component.
    pub component: Option<String>,
}

/// Resolves `checked` (the params of the request, checked) for `device`.
/// Kinds that install nothing keep their params as sent.
pub async fn resolve(
    c: &impl GenericClient,
    device: &Device,
    checked: CommandParams,
    sent: Value,
) -> Result<Resolved, ApiError> {
    let target = Target {
        tenant_id: device.tenant_id,
        device_type: &device.device_type,
        device: Some(device.id),
    };
    resolve_for(c, target, checked, sent).await
}

/// Resolves `checked` for every device of `device_type` of a batch. The
/// denylist is not looked at here: the batch reads it once for all its
/// devices. Run [`check_batchable`] first: what it refuses would fail
/// here for every type.
pub async fn resolve_for_type(
    c: &impl GenericClient,
    tenant_id: Uuid,
    device_type: &str,
    checked: CommandParams,
    sent: Value,
) -> Result<Resolved, ApiError> {
    let target = Target {
        tenant_id,
        device_type,
        device: None,
    };
    resolve_for(c, target, checked, sent).await
}

/// Refuses, for a whole batch, what no device of it could take: an
/// upgrade to an unknown or unready artifact, and a restore from the cloud
/// without a version (which would be one lookup of each device's own
/// history).
pub async fn check_batchable(
    c: &impl GenericClient,
    tenant_id: Uuid,
    checked: &CommandParams,
) -> Result<(), ApiError> {
    match checked {
        CommandParams::Upgrade(p) => ready_artifact(c, tenant_id, p.artifact_id).await.map(drop),
        CommandParams::Restore(p) if p.source == RestoreSource::Cloud && p.version.is_none() => {
            Err(refuse(format!(
                "a restore of {} from the cloud for many devices must name its version",
                p.component
            )))
        }
        _ => Ok(()),
    }
}

/// What a command is resolved for: one device, or every device of a type
/// (`device: None`).
#[derive(Clone, Copy)]
struct Target<'a> {
    tenant_id: Uuid,
    device_type: &'a str,
    device: Option<Uuid>,
}

async fn resolve_for(
    c: &impl GenericClient,
    device: Target<'_>,
    checked: CommandParams,
    sent: Value,
) -> Result<Resolved, ApiError> {
    match checked {
        CommandParams::Upgrade(mut p) => {
            let artifact = installable(c, device, p.artifact_id).await?;
            p.artifact = Some(artifact.reference());
            Ok(Resolved {
                params: to_value(&p)?,
                artifact_id: Some(artifact.id),
                component: Some(artifact.component),
            })
        }
        CommandParams::Restore(mut p) => {
            let artifact = match (p.source, p.version.as_deref()) {
                (RestoreSource::Backup, _) => None,
                (RestoreSource::Cloud, Some(version)) => {
                    let found = artifacts::find_version(
                        c,
                        device.tenant_id,
                        &p.component,
                        version,
                        device.device_type,
                    )
                    .await?
                    .ok_or_else(|| {
                        refuse(format!(
                            "no ready artifact of {} {version} for device type {}",
                            p.component, device.device_type
                        ))
                    })?;
                    Some(installable(c, device, found.id).await?)
                }
                (RestoreSource::Cloud, None) => {
                    let Some(device_id) = device.device else {
                        return Err(refuse(format!(
                            "a restore of {} from the cloud for many devices must name its version",
                            p.component
                        )));
                    };
                    let last = commands::last_good_artifact(c, device_id, &p.component)
                        .await?
                        .ok_or_else(|| {
                            refuse(format!(
                                "the device never ran a version of {} installed by tend; \
                                 name the version to restore",
                                p.component
                            ))
                        })?;
                    Some(installable(c, device, last).await?)
                }
                // A peer is checked against a digest the device trusts:
                // the platform's, when it knows the version.
                (RestoreSource::Peer, Some(version)) => {
                    match artifacts::find_version(
                        c,
                        device.tenant_id,
                        &p.component,
                        version,
                        device.device_type,
                    )
                    .await?
                    {
                        Some(found) => Some(installable(c, device, found.id).await?),
                        None => None,
                    }
                }
                (RestoreSource::Peer, None) => None,
            };
            p.artifact = artifact.as_ref().map(Artifact::reference);
            let component = p.component.clone();
            Ok(Resolved {
                params: to_value(&p)?,
                artifact_id: artifact.map(|a| a.id),
                component: Some(component),
            })
        }
        CommandParams::Reboot | CommandParams::Shutdown | CommandParams::LogQuery(_) => {
            Ok(Resolved {
                params: sent,
                artifact_id: None,
                component: None,
            })
        }
    }
}

/// The tenant's artifact `id`, if it is ready to be installed anywhere.
async fn ready_artifact(
    c: &impl GenericClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Artifact, ApiError> {
    let artifact = artifacts::get(c, tenant_id, id)
        .await?
        .ok_or_else(|| refuse(format!("no such artifact: {id}")))?;
    if artifact.status != ArtifactStatus::Ready {
        return Err(refuse(format!(
            "artifact {id} is not ready: upload its bytes first"
        )));
    }
    Ok(artifact)
}

/// The tenant's artifact `id`, if it may be installed on `device` (its
/// denylist is checked when the target is one device).
async fn installable(
    c: &impl GenericClient,
    device: Target<'_>,
    id: Uuid,
) -> Result<Artifact, ApiError> {
    let artifact = ready_artifact(c, device.tenant_id, id).await?;
    if !artifact
        .device_types
        .iter()
        .any(|t| t == device.device_type)
    {
        return Err(refuse(format!(
            "artifact {id} is not made for device type {} (only {})",
            device.device_type,
            artifact.device_types.join(", ")
        )));
    }
    if let Some(device_id) = device.device
        && let Some(entry) = artifacts::denylist_entry(c, artifact.id, device_id).await?
    {
        let why = entry.reason.map(|r| format!(": {r}")).unwrap_or_default();
        return Err(refuse(format!(
            "device {device_id} is on the denylist of artifact {id}{why}"
        )));
    }
    Ok(artifact)
}

fn to_value(p: &impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(p).map_err(|e| ApiError::Internal(e.into()))
}

fn refuse(why: String) -> ApiError {
    ApiError::Unprocessable(why)
}
