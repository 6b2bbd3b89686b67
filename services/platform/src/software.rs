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
                        &device.device_type,
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
                    let last = commands::last_good_artifact(c, device.id, &p.component)
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
                        &device.device_type,
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

/// The tenant's artifact `id`, if it may be installed on `device`.
async fn installable(
    c: &impl GenericClient,
    device: &Device,
    id: Uuid,
) -> Result<Artifact, ApiError> {
    let artifact = artifacts::get(c, device.tenant_id, id)
        .await?
        .ok_or_else(|| refuse(format!("no such artifact: {id}")))?;
    if artifact.status != ArtifactStatus::Ready {
        return Err(refuse(format!(
            "artifact {id} is not ready: upload its bytes first"
        )));
    }
    if !artifact.device_types.contains(&device.device_type) {
        return Err(refuse(format!(
            "artifact {id} is not made for device type {} (only {})",
            device.device_type,
            artifact.device_types.join(", ")
        )));
    }
    if let Some(entry) = artifacts::denylist_entry(c, artifact.id, device.id).await? {
        let why = entry.reason.map(|r| format!(": {r}")).unwrap_or_default();
        return Err(refuse(format!(
            "device {} is on the denylist of artifact {id}{why}",
            device.id
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
