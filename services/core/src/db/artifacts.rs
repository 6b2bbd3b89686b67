//! Artifacts and their denylists: what is known and decided about each
//! software image. The bytes live in the artifact store under
//! [`Artifact::object_key`]; nothing here reads or writes them.

use chrono::{DateTime, Utc};
use tend_proto::params::ArtifactRef;
use tokio_postgres::Row;
use uuid::Uuid;

use super::page::{Cursor, Page};
use super::{DbError, GenericClient, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub component: String,
    pub version: String,
    pub device_types: Vec<String>,
    pub filename: Option<String>,
    pub expected_sha256: Option<String>,
    pub expected_size: Option<i64>,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub object_key: Option<String>,
    pub status: ArtifactStatus,
    pub released: bool,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl Artifact {
    /// What an instruction carries about the artifact it installs. Only a
    /// ready artifact has a size and a digest; callers install no other.
    pub fn reference(&self) -> ArtifactRef {
        ArtifactRef {
            id: self.id,
            component: self.component.clone(),
            version: self.version.clone(),
            size: self.size.unwrap_or(0).max(0) as u64,
            sha256: self.sha256.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactStatus {
    /// Created, bytes not (yet) uploaded.
    PendingUpload,
    /// Uploaded and checked: may be released, offered and downloaded.
    Ready,
}

impl ArtifactStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactStatus::PendingUpload => "pending_upload",
            ArtifactStatus::Ready => "ready",
        }
    }
}

const COLUMNS: &str = "id, tenant_id, component, version, device_types, filename, \
     expected_sha256, expected_size, sha256, size, object_key, status, released, \
     created_by, created_at";

fn from_row(r: &Row) -> Result<Artifact> {
    let status: String = r.get(11);
    Ok(Artifact {
        id: r.get(0),
        tenant_id: r.get(1),
        component: r.get(2),
        version: r.get(3),
        device_types: r.get(4),
        filename: r.get(5),
        expected_sha256: r.get(6),
        expected_size: r.get(7),
        sha256: r.get(8),
        size: r.get(9),
        object_key: r.get(10),
        status: match status.as_str() {
            "pending_upload" => ArtifactStatus::PendingUpload,
            "ready" => ArtifactStatus::Ready,
            _ => return Err(DbError::Corrupt(format!("artifact status {status:?}"))),
        },
        released: r.get(12),
        created_by: r.get(13),
        created_at: r.get(14),
    })
}

pub struct NewArtifact<'a> {
    pub tenant_id: Uuid,
    pub component: &'a str,
    pub version: &'a str,
    pub device_types: &'a [String],
    pub filename: Option<&'a str>,
    pub expected_sha256: Option<&'a str>,
    pub expected_size: Option<i64>,
    pub created_by: Uuid,
}

pub async fn create(c: &impl GenericClient, new: NewArtifact<'_>) -> Result<Artifact> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO artifacts (id, tenant_id, component, version, device_types, filename,
                                    expected_sha256, expected_size, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING {COLUMNS}"
        ))
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &Uuid::new_v4(),
                &new.tenant_id,
                &new.component,
                &new.version,
                &new.device_types,
                &new.filename,
                &new.expected_sha256,
                &new.expected_size,
                &new.created_by,
            ],
        )
        .await?;
    from_row(&row)
}

pub async fn get(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Option<Artifact>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM artifacts WHERE id = $1 AND tenant_id = $2"
        ))
        .await?;
    c.query_opt(&stmt, &[&id, &tenant_id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The newest ready artifact of `component` at `version` for a device of
/// `device_type`: what a restore from the cloud installs.
pub async fn find_version(
    c: &impl GenericClient,
    tenant_id: Uuid,
    component: &str,
    version: &str,
    device_type: &str,
) -> Result<Option<Artifact>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM artifacts
             WHERE tenant_id = $1 AND component = $2 AND version = $3
               AND $4 = ANY (device_types) AND status = 'ready'
             ORDER BY created_at DESC LIMIT 1"
        ))
        .await?;
    c.query_opt(&stmt, &[&tenant_id, &component, &version, &device_type])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The released artifacts of these components for a device of
/// `device_type`, for the update check: one indexed read whatever the
/// number of components (`artifacts_released_idx`).
pub async fn released_for(
    c: &impl GenericClient,
    tenant_id: Uuid,
    components: &[String],
    device_type: &str,
) -> Result<Vec<Artifact>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM artifacts
             WHERE tenant_id = $1 AND component = ANY ($2) AND released
               AND $3 = ANY (device_types)"
        ))
        .await?;
    let rows = c
        .query(&stmt, &[&tenant_id, &components, &device_type])
        .await?;
    rows.iter().map(from_row).collect()
}

/// Whether the device is on the artifact's denylist.
pub async fn is_denied(c: &impl GenericClient, artifact_id: Uuid, device_id: Uuid) -> Result<bool> {
    Ok(denylist_entry(c, artifact_id, device_id).await?.is_some())
}

/// What a device may download: the artifact of one of its open upgrade
/// or restore commands.
#[derive(Debug, Clone)]
pub struct Download {
    pub object_key: String,
    pub size: i64,
    pub sha256: String,
    pub filename: Option<String>,
    /// Known for artifacts uploaded since MD5s are kept (hawkBit DDI).
    pub md5: Option<String>,
}

/// The artifact `artifact_id` if an open command of the device names it;
/// `None` for anything else (another device's, another tenant's, no open
/// command, not uploaded).
pub async fn download_for(
    c: &impl GenericClient,
    device_id: Uuid,
    artifact_id: Uuid,
) -> Result<Option<Download>> {
    let stmt = c
        .prepare_cached(
            "SELECT a.object_key, a.size, a.sha256, a.filename, a.md5
             FROM commands c JOIN artifacts a ON a.id = c.artifact_id
             WHERE c.device_id = $1 AND c.artifact_id = $2
               AND c.status IN ('queued', 'delivered', 'in_progress')
               AND a.status = 'ready'
             LIMIT 1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&device_id, &artifact_id])
        .await?
        .map(|r| Download {
            object_key: r.get(0),
            size: r.get(1),
            sha256: r.get(2),
            filename: r.get(3),
            md5: r.get(4),
        }))
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub component: Option<String>,
    pub device_type: Option<String>,
}

/// The tenant's artifacts, newest first.
pub async fn list(
    c: &impl GenericClient,
    tenant_id: Uuid,
    filter: &Filter,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Page<Artifact>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM artifacts
             WHERE tenant_id = $1
               AND ($2::text IS NULL OR component = $2)
               AND ($3::text IS NULL OR $3 = ANY (device_types))
               AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
             ORDER BY created_at DESC, id DESC
             LIMIT $6"
        ))
        .await?;
    let rows = c
        .query(
            &stmt,
            &[
                &tenant_id,
                &filter.component,
                &filter.device_type,
                &after.map(|a| a.created_at),
                &after.map(|a| a.id),
                &(limit + 1),
            ],
        )
        .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_rows(items, limit, |a| Cursor {
        created_at: a.created_at,
        id: a.id,
    }))
}

/// What became of an upload that completed in the store. Returned once per
/// upload and matched at once: the size of `Ready` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Completed {
    /// Recorded: the artifact is `ready` with these bytes.
    Ready(Artifact),
    /// Another upload completed first, or the artifact was deleted
    /// meanwhile: the caller deletes its object.
    Lost,
}

/// Records a completed upload, unless another one was recorded first.
pub async fn complete_upload(
    c: &impl GenericClient,
    tenant_id: Uuid,
    id: Uuid,
    object_key: &str,
    stored: &crate::store::Stored,
) -> Result<Completed> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE artifacts SET status = 'ready', object_key = $3, sha256 = $4, size = $5,
                                  sha1 = $6, md5 = $7
             WHERE id = $1 AND tenant_id = $2 AND status = 'pending_upload'
             RETURNING {COLUMNS}"
        ))
        .await?;
    let size = stored.size as i64;
    match c
        .query_opt(
            &stmt,
            &[
                &id,
                &tenant_id,
                &object_key,
                &stored.sha256,
                &size,
                &stored.sha1,
                &stored.md5,
            ],
        )
        .await?
    {
        Some(row) => Ok(Completed::Ready(from_row(&row)?)),
        None => Ok(Completed::Lost),
    }
}

/// Releases or withdraws a ready artifact. `None` when there is no such
/// artifact in the tenant; the caller checks readiness first (the table's
/// check refuses releasing one that is not).
pub async fn set_released(
    c: &impl GenericClient,
    tenant_id: Uuid,
    id: Uuid,
    released: bool,
) -> Result<Option<Artifact>> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE artifacts SET released = $3 WHERE id = $1 AND tenant_id = $2
             RETURNING {COLUMNS}"
        ))
        .await?;
    c.query_opt(&stmt, &[&id, &tenant_id, &released])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// What a delete found.
#[derive(Debug)]
pub enum Delete {
    /// Deleted; its bytes (if any were uploaded) are at this key.
    Deleted(Option<String>),
    /// An open command uses it.
    InUse,
    NotFound,
}

/// Deletes an artifact that no open command uses. The row lock makes a
/// command being queued for it at the same time either finish first (and
/// the delete answers `InUse`) or fail on its foreign key. Run it in a
/// transaction.
pub async fn delete(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Delete> {
    let lock = c
        .prepare_cached(
            "SELECT object_key FROM artifacts WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
        )
        .await?;
    let Some(row) = c.query_opt(&lock, &[&id, &tenant_id]).await? else {
        return Ok(Delete::NotFound);
    };
    let object_key: Option<String> = row.get(0);
    let in_use = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM commands WHERE artifact_id = $1
                            AND status IN ('queued', 'delivered', 'in_progress'))",
        )
        .await?;
    if c.query_one(&in_use, &[&id]).await?.get::<_, bool>(0) {
        return Ok(Delete::InUse);
    }
    let delete = c
        .prepare_cached("DELETE FROM artifacts WHERE id = $1")
        .await?;
    c.execute(&delete, &[&id]).await?;
    Ok(Delete::Deleted(object_key))
}

#[derive(Debug, Clone, PartialEq)]
pub struct DenylistEntry {
    pub device_id: Uuid,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
}

fn entry_from_row(r: &Row) -> DenylistEntry {
    DenylistEntry {
        device_id: r.get(0),
        reason: r.get(1),
        created_at: r.get(2),
        created_by: r.get(3),
    }
}

/// Puts a device on an artifact's denylist; answers the entry and whether
/// it is new. The caller has checked that both belong to the tenant.
pub async fn deny(
    c: &impl GenericClient,
    artifact_id: Uuid,
    device_id: Uuid,
    reason: Option<&str>,
    created_by: Option<Uuid>,
) -> Result<(DenylistEntry, bool)> {
    let insert = c
        .prepare_cached(
            "INSERT INTO artifact_denylist (artifact_id, device_id, reason, created_by)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (artifact_id, device_id) DO NOTHING
             RETURNING device_id, reason, created_at, created_by",
        )
        .await?;
    if let Some(row) = c
        .query_opt(&insert, &[&artifact_id, &device_id, &reason, &created_by])
        .await?
    {
        return Ok((entry_from_row(&row), true));
    }
    let existing = denylist_entry(c, artifact_id, device_id)
        .await?
        .ok_or_else(|| {
            DbError::Corrupt("a denylist entry vanished between two statements".into())
        })?;
    Ok((existing, false))
}

pub async fn denylist_entry(
    c: &impl GenericClient,
    artifact_id: Uuid,
    device_id: Uuid,
) -> Result<Option<DenylistEntry>> {
    let stmt = c
        .prepare_cached(
            "SELECT device_id, reason, created_at, created_by FROM artifact_denylist
             WHERE artifact_id = $1 AND device_id = $2",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&artifact_id, &device_id])
        .await?
        .as_ref()
        .map(entry_from_row))
}

/// Removes a device from an artifact's denylist; answers whether it was on it.
pub async fn allow(c: &impl GenericClient, artifact_id: Uuid, device_id: Uuid) -> Result<bool> {
    let stmt = c
        .prepare_cached("DELETE FROM artifact_denylist WHERE artifact_id = $1 AND device_id = $2")
        .await?;
    Ok(c.execute(&stmt, &[&artifact_id, &device_id]).await? > 0)
}

/// An artifact's denylist, newest first, paged by `(created_at, device_id)`.
pub async fn denylist(
    c: &impl GenericClient,
    artifact_id: Uuid,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Page<DenylistEntry>> {
    let stmt = c
        .prepare_cached(
            "SELECT device_id, reason, created_at, created_by FROM artifact_denylist
             WHERE artifact_id = $1
               AND ($2::timestamptz IS NULL OR (created_at, device_id) < ($2, $3))
             ORDER BY created_at DESC, device_id DESC
             LIMIT $4",
        )
        .await?;
    let rows = c
        .query(
            &stmt,
            &[
                &artifact_id,
                &after.map(|a| a.created_at),
                &after.map(|a| a.id),
                &(limit + 1),
            ],
        )
        .await?;
    let items = rows.iter().map(entry_from_row).collect();
    Ok(Page::from_rows(items, limit, |e: &DenylistEntry| Cursor {
        created_at: e.created_at,
        id: e.device_id,
    }))
}
