//! hawkBit DDI (tend-sync): how a device that runs a hawkBit client is
//! found from its tenant's name and its own, what it is offered, and the
//! gateway tokens that may speak for a tenant's devices.
//!
//! A deployment is an `upgrade` command; its action id is the command's
//! `seq`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tend_proto::CommandStatus;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, GenericClient, Result};

/// A DDI device, as its first poll to a replica finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub device_id: Uuid,
    pub tenant_id: Uuid,
    /// Whether the device has sent its attributes (`configData`).
    pub attributes_known: bool,
    /// The action id of its last upgrade that succeeded, if any.
    pub installed: Option<i64>,
    /// The gateway token it was found with, if not its own secret.
    pub gateway: Option<Uuid>,
}

/// What the device columns of a find select, after the tenant and name
/// conditions: id, tenant, whether attributes are known, the last
/// installed action.
const TARGET: &str = "d.id, d.tenant_id, d.reported ? 'attributes',
        (SELECT c.seq FROM commands c
         WHERE c.device_id = d.id AND c.kind = 'upgrade' AND c.status = 'succeeded'
         ORDER BY c.seq DESC LIMIT 1)";

fn target(r: &Row, gateway: Option<Uuid>) -> Target {
    Target {
        device_id: r.get(0),
        tenant_id: r.get(1),
        attributes_known: r.get(2),
        installed: r.get(3),
        gateway,
    }
}

/// The active device named `name` in the tenant named `tenant` whose
/// active credential is the secret hashing to `secret_sha256`. Names need
/// not be unique: the secret tells devices of one name apart.
pub async fn find_by_secret(
    c: &impl GenericClient,
    tenant: &str,
    name: &str,
    secret_sha256: &[u8],
) -> Result<Option<Target>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {TARGET}
             FROM tenants t
             JOIN devices d ON d.tenant_id = t.id AND d.decommissioned_at IS NULL
                              AND d.admission = 'accepted'
             JOIN device_credentials k ON k.device_id = d.id AND k.revoked_at IS NULL
             WHERE t.name = $1 AND d.name = $2 AND k.secret_sha256 = $3
             LIMIT 1"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&tenant, &name, &secret_sha256])
        .await?
        .map(|r| target(&r, None)))
}

/// What a gateway token finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayFind {
    Found(Target),
    /// The token is not an active token of that tenant, or the tenant has
    /// no such device.
    NotFound,
    /// Several active devices of the tenant have that name: a gateway
    /// cannot say which one it speaks for.
    Ambiguous,
}

/// The active device named `name` in the tenant named `tenant`, if
/// `token_sha256` is an active gateway token of that tenant.
pub async fn find_by_gateway(
    c: &impl GenericClient,
    tenant: &str,
    name: &str,
    token_sha256: &[u8],
) -> Result<GatewayFind> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {TARGET}, g.id
             FROM tenants t
             JOIN gateway_tokens g ON g.tenant_id = t.id AND g.revoked_at IS NULL
                                   AND g.token_sha256 = $3
             JOIN devices d ON d.tenant_id = t.id AND d.decommissioned_at IS NULL
                              AND d.admission = 'accepted'
             WHERE t.name = $1 AND d.name = $2
             LIMIT 2"
        ))
        .await?;
    let rows = c.query(&stmt, &[&tenant, &name, &token_sha256]).await?;
    Ok(match rows.as_slice() {
        [] => GatewayFind::NotFound,
        [row] => GatewayFind::Found(target(row, Some(row.get(4)))),
        _ => GatewayFind::Ambiguous,
    })
}

/// The device's open upgrade, if any: its action id and command id. The
/// oldest first; the database allows one per component.
pub async fn open_action(c: &impl GenericClient, device_id: Uuid) -> Result<Option<(i64, Uuid)>> {
    let stmt = c
        .prepare_cached(
            "SELECT seq, id FROM commands
             WHERE device_id = $1 AND kind = 'upgrade'
               AND (status IN ('delivered', 'in_progress')
                    OR (status = 'queued' AND expires_at > now()))
             ORDER BY seq LIMIT 1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&device_id])
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// One deployment: an upgrade command of the device and its artifact.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub seq: i64,
    pub command_id: Uuid,
    pub status: CommandStatus,
    pub artifact: Option<DeployedArtifact>,
    /// What the last feedback recorded (`result`), for `actionHistory`.
    pub result: Option<Value>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The artifact a deployment installs. `sha1` and `md5` are missing for
/// an artifact uploaded before they were kept, until they are computed.
#[derive(Debug, Clone)]
pub struct DeployedArtifact {
    pub id: Uuid,
    pub component: String,
    pub version: String,
    pub filename: Option<String>,
    pub size: i64,
    pub sha256: String,
    pub sha1: Option<String>,
    pub md5: Option<String>,
    pub object_key: String,
}

/// The upgrade with action id `seq` of the device; `None` for another
/// device's, another kind of command, or no such command. With
/// `deliver`, a queued one becomes `delivered` (the device has it now).
pub async fn deployment(
    c: &impl GenericClient,
    device_id: Uuid,
    seq: i64,
    deliver: bool,
) -> Result<Option<Deployment>> {
    if deliver {
        let stmt = c
            .prepare_cached(
                "UPDATE commands SET status = 'delivered', delivered_at = now()
                 WHERE device_id = $1 AND seq = $2 AND kind = 'upgrade'
                   AND status = 'queued' AND expires_at > now()",
            )
            .await?;
        c.execute(&stmt, &[&device_id, &seq]).await?;
    }
    let stmt = c
        .prepare_cached(
            "SELECT c.seq, c.id, c.status, c.result, c.finished_at,
                    a.id, a.component, a.version, a.filename, a.size, a.sha256, a.sha1, a.md5,
                    a.object_key
             FROM commands c
             LEFT JOIN artifacts a ON a.id = c.artifact_id AND a.status = 'ready'
             WHERE c.device_id = $1 AND c.seq = $2 AND c.kind = 'upgrade'",
        )
        .await?;
    let Some(r) = c.query_opt(&stmt, &[&device_id, &seq]).await? else {
        return Ok(None);
    };
    let status: String = r.get(2);
    let artifact_id: Option<Uuid> = r.get(5);
    Ok(Some(Deployment {
        seq: r.get(0),
        command_id: r.get(1),
        status: status
            .parse()
            .map_err(|_| DbError::Corrupt(format!("command status {status:?}")))?,
        result: r.get(3),
        finished_at: r.get(4),
        artifact: artifact_id.map(|id| DeployedArtifact {
            id,
            component: r.get(6),
            version: r.get(7),
            filename: r.get(8),
            size: r.get(9),
            sha256: r.get(10),
            sha1: r.get(11),
            md5: r.get(12),
            object_key: r.get(13),
        }),
    }))
}

/// Records the SHA-1 and MD5 of an artifact uploaded before they were
/// kept.
pub async fn set_digests(
    c: &impl GenericClient,
    artifact: Uuid,
    sha1: &str,
    md5: &str,
) -> Result<()> {
    let stmt = c
        .prepare_cached("UPDATE artifacts SET sha1 = $2, md5 = $3 WHERE id = $1")
        .await?;
    c.execute(&stmt, &[&artifact, &sha1, &md5]).await?;
    Ok(())
}

/// How `PUT configData` changes the attributes a device reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributesMode {
    Merge,
    Replace,
    Remove,
}

/// Changes the device's `reported.attributes`: merges `data` into them,
/// replaces them with it, or removes its keys from them.
pub async fn set_attributes(
    c: &impl GenericClient,
    device_id: Uuid,
    mode: AttributesMode,
    data: &Value,
) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "UPDATE devices SET reported = jsonb_set(reported, '{attributes}',
                 CASE $2::text
                     WHEN 'merge' THEN COALESCE(reported->'attributes', '{}'::jsonb) || $3::jsonb
                     WHEN 'replace' THEN $3::jsonb
                     ELSE COALESCE(reported->'attributes', '{}'::jsonb)
                          - ARRAY(SELECT jsonb_object_keys($3::jsonb))
                 END)
             WHERE id = $1",
        )
        .await?;
    let mode = match mode {
        AttributesMode::Merge => "merge",
        AttributesMode::Replace => "replace",
        AttributesMode::Remove => "remove",
    };
    c.execute(&stmt, &[&device_id, &mode, data]).await?;
    Ok(())
}

/// Records that the device now runs `version` of `component`, as the
/// agent's heartbeat would (`devices.components`).
pub async fn record_installed(
    c: &impl GenericClient,
    device_id: Uuid,
    component: &str,
    version: &str,
) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "UPDATE devices SET components = components || jsonb_build_object($2::text,
                 jsonb_build_object('version', $3::text, 'updated_at', now()))
             WHERE id = $1",
        )
        .await?;
    c.execute(&stmt, &[&device_id, &component, &version])
        .await?;
    Ok(())
}

/// A gateway token, as listed (never the token itself).
#[derive(Debug, Clone)]
pub struct GatewayToken {
    pub id: Uuid,
    pub name: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

fn gateway_token(r: &Row) -> GatewayToken {
    GatewayToken {
        id: r.get(0),
        name: r.get(1),
        created_by: r.get(2),
        created_at: r.get(3),
    }
}

/// Stores a new gateway token of the tenant by its hash.
pub async fn create_gateway_token(
    c: &impl GenericClient,
    tenant_id: Uuid,
    name: &str,
    token_sha256: &[u8],
    created_by: Uuid,
) -> Result<GatewayToken> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO gateway_tokens (id, tenant_id, name, token_sha256, created_by)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING id, name, created_by, created_at",
        )
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &Uuid::new_v4(),
                &tenant_id,
                &name,
                &token_sha256,
                &created_by,
            ],
        )
        .await?;
    Ok(gateway_token(&row))
}

/// The tenant's active gateway tokens, newest first.
pub async fn gateway_tokens(c: &impl GenericClient, tenant_id: Uuid) -> Result<Vec<GatewayToken>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, name, created_by, created_at FROM gateway_tokens
             WHERE tenant_id = $1 AND revoked_at IS NULL
             ORDER BY created_at DESC, id DESC",
        )
        .await?;
    Ok(c.query(&stmt, &[&tenant_id])
        .await?
        .iter()
        .map(gateway_token)
        .collect())
}

/// Revokes an active gateway token of the tenant; false when there is
/// none with that id.
pub async fn revoke_gateway_token(
    c: &impl GenericClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<bool> {
    let stmt = c
        .prepare_cached(
            "UPDATE gateway_tokens SET revoked_at = now()
             WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
        )
        .await?;
    Ok(c.execute(&stmt, &[&id, &tenant_id]).await? == 1)
}

/// Gateway tokens revoked after `since`, with the time of each: they join
/// the sync servers' revocation list beside decommissioned devices.
pub async fn gateway_tokens_revoked_since(
    c: &impl GenericClient,
    since: DateTime<Utc>,
) -> Result<Vec<(Uuid, DateTime<Utc>)>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, revoked_at FROM gateway_tokens
             WHERE revoked_at > $1 ORDER BY revoked_at",
        )
        .await?;
    Ok(c.query(&stmt, &[&since])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
