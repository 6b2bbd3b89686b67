//! The artifact routes' bodies, with their validation and OpenAPI schemas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tend_core::db::artifacts::{Artifact, DenylistEntry};
use tend_core::error::ApiError;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{check_device_type, unprocessable};

/// The most device types one artifact may list.
pub const MAX_DEVICE_TYPES: usize = 64;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"component": "firmware", "version": "1.2.0", "device_types": ["kiosk"]}))]
pub struct NewArtifact {
    /// The component it installs, as the agent's `[components.NAME]` names
    /// it (`agent` for the agent itself): 1 to 64 of letters, digits, `.`,
    /// `_` and `-`.
    #[schema(example = "app")]
    pub component: String,
    /// 1 to 64 of `A-Z a-z 0-9 . _ + ~ -`; compared as a semantic version
    /// when it parses as one.
    #[schema(example = "1.4.2")]
    pub version: String,
    /// The device types it may be installed on (1 to 64).
    #[schema(example = json!(["kiosk-v2"]))]
    pub device_types: Vec<String>,
    /// The file name shown to admins and used for downloads.
    pub filename: Option<String>,
    /// The SHA-256 the upload must have (64 hex digits), if known.
    pub sha256: Option<String>,
    /// The size in bytes the upload must have, if known.
    pub size: Option<i64>,
}

/// `PATCH /artifacts/{id}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"released": false}))]
pub struct ArtifactPatch {
    /// A released artifact is offered at every update check of a device of
    /// a listed type that runs an older version.
    pub released: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactOut {
    pub id: Uuid,
    pub component: String,
    pub version: String,
    pub device_types: Vec<String>,
    pub filename: Option<String>,
    /// Bytes, once uploaded.
    pub size: Option<i64>,
    /// Lowercase hex SHA-256 of the bytes, computed by the server at upload.
    pub sha256: Option<String>,
    /// `pending_upload` or `ready`.
    pub status: &'static str,
    pub released: bool,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
}

impl From<Artifact> for ArtifactOut {
    fn from(a: Artifact) -> Self {
        ArtifactOut {
            id: a.id,
            component: a.component,
            version: a.version,
            device_types: a.device_types,
            filename: a.filename,
            size: a.size,
            sha256: a.sha256,
            status: a.status.as_str(),
            released: a.released,
            created_at: a.created_at,
            created_by: a.created_by,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactList {
    pub items: Vec<ArtifactOut>,
    pub next_cursor: Option<String>,
}

/// `PUT /artifacts/{id}/denylist/{device_id}`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "crashes on this hardware"}))]
pub struct DenyBody {
    /// Why the device must not get this artifact (at most 1000 characters).
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DenylistEntryOut {
    pub device_id: Uuid,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The admin who added it; null when tend added it after a rollback.
    pub created_by: Option<Uuid>,
}

impl From<DenylistEntry> for DenylistEntryOut {
    fn from(e: DenylistEntry) -> Self {
        DenylistEntryOut {
            device_id: e.device_id,
            reason: e.reason,
            created_at: e.created_at,
            created_by: e.created_by,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DenylistList {
    pub items: Vec<DenylistEntryOut>,
    pub next_cursor: Option<String>,
}

/// A component name: what the agent's `[components.NAME]` can hold.
pub fn check_component(v: &str) -> Result<(), ApiError> {
    if !tend_proto::params::is_component_name(v) {
        return Err(unprocessable(
            "component must be 1 to 64 of letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

pub fn check_version(v: &str) -> Result<(), ApiError> {
    if !tend_proto::version::is_valid(v) {
        return Err(unprocessable(
            "version must be 1 to 64 of letters, digits, '.', '_', '+', '~' and '-'",
        ));
    }
    Ok(())
}

/// Checks a new artifact's fields; answers the declared SHA-256 in lowercase.
pub fn check_new_artifact(a: &NewArtifact) -> Result<Option<String>, ApiError> {
    check_component(&a.component)?;
    check_version(&a.version)?;
    if a.device_types.is_empty() || a.device_types.len() > MAX_DEVICE_TYPES {
        return Err(unprocessable(format!(
            "device_types must list 1 to {MAX_DEVICE_TYPES} device types"
        )));
    }
    for t in &a.device_types {
        check_device_type(t)?;
    }
    if let Some(name) = &a.filename
        && (name.is_empty()
            || name.len() > 255
            || name.contains('/')
            || name.contains('\\')
            || name.chars().any(char::is_control))
    {
        return Err(unprocessable(
            "filename must be 1 to 255 printable characters without '/' or '\\'",
        ));
    }
    if let Some(size) = a.size
        && size < 0
    {
        return Err(unprocessable("size must not be negative"));
    }
    a.sha256
        .as_deref()
        .map(|h| {
            if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(h.to_ascii_lowercase())
            } else {
                Err(unprocessable("sha256 must be 64 hexadecimal digits"))
            }
        })
        .transpose()
}

/// A denylist reason: bounded and printable.
pub fn check_reason(reason: Option<&str>) -> Result<(), ApiError> {
    if let Some(r) = reason
        && (r.chars().count() > 1000 || r.chars().any(|c| c.is_control() && c != '\n'))
    {
        return Err(unprocessable(
            "reason must be at most 1000 printable characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(component: &str, version: &str, types: &[&str]) -> NewArtifact {
        NewArtifact {
            component: component.into(),
            version: version.into(),
            device_types: types.iter().map(|t| t.to_string()).collect(),
            filename: None,
            sha256: None,
            size: None,
        }
    }

    #[test]
    fn a_new_artifact_names_a_component_a_version_and_device_types() {
        assert!(check_new_artifact(&new("app", "1.4.2", &["kiosk-v2"])).is_ok());
        assert!(check_new_artifact(&new("app", "1.4.2", &[])).is_err());
        assert!(check_new_artifact(&new("app", "1.4 2", &["kiosk"])).is_err());
        assert!(check_new_artifact(&new("../app", "1", &["kiosk"])).is_err());
        assert!(check_new_artifact(&new("app", "1", &["kiosk v2"])).is_err());
        let mut a = new("app", "1", &["kiosk"]);
        a.sha256 = Some("AB".repeat(32));
        assert_eq!(check_new_artifact(&a).unwrap(), Some("ab".repeat(32)));
        a.sha256 = Some("xyz".into());
        assert!(check_new_artifact(&a).is_err());
        let mut a = new("app", "1", &["kiosk"]);
        a.filename = Some("../etc/passwd".into());
        assert!(check_new_artifact(&a).is_err());
        a.filename = None;
        a.size = Some(-1);
        assert!(check_new_artifact(&a).is_err());
    }
}
