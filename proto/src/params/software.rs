//! The params of the commands that change a device's software: `upgrade`
//! and `restore` (seeds 002 to 004, and seed 001's `restore`).
//!
//! An admin names what to install (`artifact_id`, or a component and a
//! source); the platform resolves the artifact when the command is created
//! and writes [`ArtifactRef`] into the params, so the agent knows the
//! component, version, size and digest of what it will fetch before it
//! fetches a byte, and checks what it fetched against that digest.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::ParamsError;

/// The artifact a command installs, as the platform resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    pub id: Uuid,
    pub component: String,
    pub version: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
}

/// `upgrade` params: `{artifact_id}`; the platform adds `artifact`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpgradeParams {
    /// The artifact to install on its component.
    pub artifact_id: Uuid,
    /// Set by the platform when the command is created; anything an admin
    /// sends here is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
}

/// Where `restore` takes the known-good version from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RestoreSource {
    /// The agent's local copy of the previous version.
    #[default]
    Backup,
    /// The artifact of `version`, or of the last version the device ran
    /// healthy, from the cloud.
    Cloud,
    /// A healthy device of the same type on the device's LAN.
    Peer,
}

/// `restore` params: `{component, source?, version?}`; the platform adds
/// `artifact` when it knows which one (always for `cloud`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    /// The component to put back, as the agent's `[components.NAME]`.
    pub component: String,
    #[serde(default)]
    pub source: RestoreSource,
    /// The version to restore (`cloud`, `peer`); for `cloud` without it,
    /// the last version the device ran healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Set by the platform; anything an admin sends here is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
}

/// Whether `name` can name a component: 1 to 64 of ASCII letters, digits,
/// `.`, `_` and `-`, and not `.` or `..` (it becomes a table name in the
/// agent's config and a directory name on the device).
pub fn is_component_name(name: &str) -> bool {
    super::is_source_name(name)
}

fn from_value<T: serde::de::DeserializeOwned>(
    kind: &str,
    params: &Value,
) -> Result<T, ParamsError> {
    if !params.is_object() {
        return Err(ParamsError::Invalid(format!(
            "{kind} params must be an object"
        )));
    }
    serde_json::from_value(params.clone())
        .map_err(|e| ParamsError::Invalid(format!("invalid {kind} params: {e}")))
}

fn check_artifact(a: &ArtifactRef) -> Result<(), ParamsError> {
    if !is_component_name(&a.component)
        || !crate::version::is_valid(&a.version)
        || a.sha256.len() != 64
        || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ParamsError::Invalid(
            "artifact must name a component, a version and a 64-digit sha256".into(),
        ));
    }
    Ok(())
}

pub(super) fn parse_upgrade(params: &Value) -> Result<UpgradeParams, ParamsError> {
    let p: UpgradeParams = from_value("upgrade", params)?;
    if let Some(a) = &p.artifact {
        check_artifact(a)?;
    }
    Ok(p)
}

pub(super) fn parse_restore(params: &Value) -> Result<RestoreParams, ParamsError> {
    let p: RestoreParams = from_value("restore", params)?;
    if !is_component_name(&p.component) {
        return Err(ParamsError::Invalid(
            "component must be 1 to 64 of letters, digits, '.', '_' and '-'".into(),
        ));
    }
    if let Some(v) = &p.version
        && !crate::version::is_valid(v)
    {
        return Err(ParamsError::Invalid(
            "version must be 1 to 64 of letters, digits, '.', '_', '+', '~' and '-'".into(),
        ));
    }
    if p.source == RestoreSource::Backup && p.version.is_some() {
        return Err(ParamsError::Invalid(
            "a restore from the backup takes no version: the backup holds one".into(),
        ));
    }
    if let Some(a) = &p.artifact {
        check_artifact(a)?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_upgrade_names_an_artifact_and_nothing_else() {
        let id = Uuid::new_v4();
        let p = parse_upgrade(&json!({ "artifact_id": id })).unwrap();
        assert_eq!((p.artifact_id, p.artifact), (id, None));
        assert!(parse_upgrade(&json!({})).is_err());
        assert!(parse_upgrade(&json!({ "artifact_id": "nope" })).is_err());
        assert!(parse_upgrade(&json!({ "artifact_id": id, "force": true })).is_err());
        assert!(parse_upgrade(&json!([id])).is_err());
        let resolved = json!({ "artifact_id": id, "artifact": {
            "id": id, "component": "app", "version": "1.2.3", "size": 10, "sha256": "a".repeat(64) } });
        assert!(parse_upgrade(&resolved).unwrap().artifact.is_some());
    }

    #[test]
    fn a_restore_names_a_component_and_where_from() {
        let p = parse_restore(&json!({ "component": "app" })).unwrap();
        assert_eq!(p.source, RestoreSource::Backup);
        let p =
            parse_restore(&json!({ "component": "app", "source": "cloud", "version": "1.2.3" }))
                .unwrap();
        assert_eq!(
            (p.source, p.version.as_deref()),
            (RestoreSource::Cloud, Some("1.2.3"))
        );
        assert!(parse_restore(&json!({ "component": "app", "source": "peer" })).is_ok());
        assert!(parse_restore(&json!({ "component": "app", "source": "usb" })).is_err());
        assert!(parse_restore(&json!({ "component": "../app" })).is_err());
        assert!(
            parse_restore(&json!({ "component": "app", "version": "1 2", "source": "cloud" }))
                .is_err()
        );
        assert!(parse_restore(&json!({ "component": "app", "version": "1.0.0" })).is_err());
        assert!(parse_restore(&json!({})).is_err());
    }
}
