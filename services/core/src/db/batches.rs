//! Command batches: one request that queues the same command for every
//! device a selector matches (`POST /commands/bulk`).
//!
//! A batch for a fleet is set-based from end to end: the devices are read
//! in one statement, the commands (signed beforehand, in parallel) written
//! in one `INSERT … SELECT FROM unnest(…)`, and announced by a few
//! `commands.queued` events of up to
//! [`tend_proto::event::DEVICES_PER_EVENT`] devices each, written by the
//! same statement. Nothing is done once per device over the
//! wire.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::commands::QUEUED_MANY_EVENTS;
use super::devices::{Admission, Filter, Presence};
use super::{GenericClient, Result};

/// A device the selector matched, with what decides whether it can take
/// the command.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: Uuid,
    pub device_type: String,
    /// `None` when the admission stored is not one tend knows (never, but
    /// a device that is not plainly accepted takes no command).
    pub admission: Option<Admission>,
    pub decommissioned: bool,
}

/// Seed of the advisory-lock keys of [`lock_tenant`] and
/// [`hold_off_batches`] (`hashtextextended(tenant_id, seed)`), apart from
/// the per-device recovery locks of [`super::commands`].
const TENANT_LOCK_SEED: i64 = 18;

/// Holds a tenant's decommissions and rejections off until the batch's
/// transaction ends, so that none can slip between the batch reading a
/// device as admitted and its commit (the decommission would cancel
/// nothing, and the command would wait for a device that is gone).
/// Locking the device rows themselves, as a single command does, would
/// hold 100,000 row locks for seconds against the presence flushes that
/// update the same rows, and could deadlock with them. Batches of one
/// tenant run one at a time.
pub async fn lock_tenant(c: &impl GenericClient, tenant_id: Uuid) -> Result<()> {
    let stmt = c
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1::text, $2))")
        .await?;
    c.execute(&stmt, &[&tenant_id.to_string(), &TENANT_LOCK_SEED])
        .await?;
    Ok(())
}

/// Taken by a decommission or a rejection of one of the tenant's devices:
/// waits while a batch of the tenant is being queued (see
/// [`lock_tenant`]). Shared: decommissions never wait for each other.
pub async fn hold_off_batches(c: &impl GenericClient, tenant_id: Uuid) -> Result<()> {
    let stmt = c
        .prepare_cached("SELECT pg_advisory_xact_lock_shared(hashtextextended($1::text, $2))")
        .await?;
    c.execute(&stmt, &[&tenant_id.to_string(), &TENANT_LOCK_SEED])
        .await?;
    Ok(())
}

/// The tenant's devices that `filter` and `ids` (when given) match. Take
/// [`lock_tenant`] first. A decommissioned device is matched only when
/// named by id: the device list no longer shows it, but whoever names it
/// is told why it got nothing.
pub async fn select(
    c: &impl GenericClient,
    tenant_id: Uuid,
    filter: &Filter,
    ids: Option<&[Uuid]>,
) -> Result<Vec<Candidate>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, device_type, admission, decommissioned_at IS NOT NULL FROM devices
             WHERE tenant_id = $1
               AND ($6::uuid[] IS NULL OR id = ANY($6))
               AND (decommissioned_at IS NULL OR $6::uuid[] IS NOT NULL)
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR device_type = $3)
               AND ($4::jsonb IS NULL OR labels @> $4)
               AND ($5::jsonb IS NULL OR components @> $5)",
        )
        .await?;
    let component = filter
        .component
        .as_ref()
        .map(|(name, version)| serde_json::json!({ name: { "version": version } }));
    let rows = c
        .query(
            &stmt,
            &[
                &tenant_id,
                &filter.status.map(Presence::as_str),
                &filter.device_type,
                &filter.labels,
                &component,
                &ids,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Candidate {
            id: r.get(0),
            device_type: r.get(1),
            admission: Admission::parse(r.get(2)),
            decommissioned: r.get(3),
        })
        .collect())
}

/// The `(artifact, device)` pairs of the denylists of `artifacts`: read
/// once for a whole batch rather than once per device.
pub async fn denylisted(c: &impl GenericClient, artifacts: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
    let stmt = c
        .prepare_cached(
            "SELECT artifact_id, device_id FROM artifact_denylist WHERE artifact_id = ANY($1)",
        )
        .await?;
    Ok(c.query(&stmt, &[&artifacts])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub struct NewBatch<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub created_by: Option<Uuid>,
    pub selector: &'a Value,
    pub command: &'a Value,
    pub matched: i64,
}

/// Records a batch (its outcome follows with [`finish`]) and answers its
/// `created_at`: the transaction's time, which its commands carry too.
pub async fn create(c: &impl GenericClient, new: NewBatch<'_>) -> Result<DateTime<Utc>> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO command_batches (id, tenant_id, created_by, selector, command, matched, queued)
             VALUES ($1, $2, $3, $4, $5, $6, 0)
             RETURNING created_at",
        )
        .await?;
    let matched = i32::try_from(new.matched).unwrap_or(i32::MAX);
    let row = c
        .query_one(
            &stmt,
            &[
                &new.id,
                &new.tenant_id,
                &new.created_by,
                new.selector,
                new.command,
                &matched,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// The values every command of a batch shares.
pub struct Shared<'a> {
    pub batch_id: Uuid,
    pub tenant_id: Uuid,
    pub kind: &'a str,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub timeout_s: i32,
    pub created_by: Option<Uuid>,
    pub trace_id: Option<&'a str>,
    /// The component an upgrade or restore changes.
    pub component: Option<&'a str>,
    pub key_id: &'a str,
}

/// The params of one group of a batch's devices (one per device type for
/// an upgrade or restore, which resolve their artifact by type).
pub struct Group {
    pub params: Value,
    pub artifact_id: Option<Uuid>,
}

/// One command of a batch: its id, its device, the index of its group in
/// the groups passed along, and its signature.
pub struct Signed {
    pub id: Uuid,
    pub device_id: Uuid,
    pub group: usize,
    pub signature: String,
}

/// Queues signed commands of a batch (all of them, or one part) and their
/// `commands.queued` events in one statement; answers how many were
/// queued. A device that already has
/// an upgrade or restore of the component open keeps it and gets nothing
/// (`commands_open_component_key`): the difference is the caller's
/// `component_busy`. Run it in the batch's transaction.
pub async fn queue(
    c: &impl GenericClient,
    shared: &Shared<'_>,
    groups: &[Group],
    commands: &[Signed],
) -> Result<i64> {
    // Only a command that changes a component can meet an open one; the
    // others skip the speculative insertion ON CONFLICT costs every row.
    let on_conflict = if shared.component.is_some() {
        "ON CONFLICT (device_id, component)
                    WHERE component IS NOT NULL AND status IN ('queued', 'delivered', 'in_progress')
                    DO NOTHING"
    } else {
        ""
    };
    let stmt = c
        .prepare_cached(&format!(
            "WITH touched AS (
                 INSERT INTO commands (id, tenant_id, device_id, kind, params, timeout_s,
                                       created_at, expires_at, announced_at, created_by,
                                       trace_id, artifact_id, component, key_id, signature,
                                       batch_id)
                 SELECT u.id, $1, u.device_id, $2, ($3::jsonb[])[u.g], $4, $5, $6, $5, $7, $8,
                        ($9::uuid[])[u.g], $10, $11, u.signature, $12
                 FROM unnest($13::uuid[], $14::uuid[], $15::int[], $16::text[])
                      AS u(id, device_id, g, signature)
                 {on_conflict}
                 RETURNING device_id, tenant_id, batch_id),
             announced AS ({QUEUED_MANY_EVENTS})
             SELECT count(*) FROM touched"
        ))
        .await?;
    let params: Vec<&Value> = groups.iter().map(|g| &g.params).collect();
    let artifacts: Vec<Option<Uuid>> = groups.iter().map(|g| g.artifact_id).collect();
    let ids: Vec<Uuid> = commands.iter().map(|s| s.id).collect();
    let devices: Vec<Uuid> = commands.iter().map(|s| s.device_id).collect();
    // PostgreSQL arrays count from 1.
    let group_index: Vec<i32> = commands
        .iter()
        .map(|s| i32::try_from(s.group + 1).unwrap_or(i32::MAX))
        .collect();
    let signatures: Vec<&str> = commands.iter().map(|s| s.signature.as_str()).collect();
    let row = c
        .query_one(
            &stmt,
            &[
                &shared.tenant_id,
                &shared.kind,
                &params,
                &shared.timeout_s,
                &shared.created_at,
                &shared.expires_at,
                &shared.created_by,
                &shared.trace_id,
                &artifacts,
                &shared.component,
                &shared.key_id,
                &shared.batch_id,
                &ids,
                &devices,
                &group_index,
                &signatures,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Records what came of a batch.
pub async fn finish(
    c: &impl GenericClient,
    id: Uuid,
    queued: i64,
    skipped: &BTreeMap<String, i64>,
) -> Result<()> {
    let stmt = c
        .prepare_cached("UPDATE command_batches SET queued = $2, skipped = $3 WHERE id = $1")
        .await?;
    let skipped = serde_json::to_value(skipped).unwrap_or_default();
    let queued = i32::try_from(queued).unwrap_or(i32::MAX);
    c.execute(&stmt, &[&id, &queued, &skipped]).await?;
    Ok(())
}

/// A batch and where its commands are.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub matched: i64,
    pub by_status: BTreeMap<String, i64>,
}

/// The tenant's batch `id`, its commands counted by status.
pub async fn get(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Option<Batch>> {
    let stmt = c
        .prepare_cached(
            "SELECT created_at, matched FROM command_batches WHERE id = $1 AND tenant_id = $2",
        )
        .await?;
    let Some(row) = c.query_opt(&stmt, &[&id, &tenant_id]).await? else {
        return Ok(None);
    };
    let counts = c
        .prepare_cached("SELECT status, count(*) FROM commands WHERE batch_id = $1 GROUP BY status")
        .await?;
    let by_status = c
        .query(&counts, &[&id])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Some(Batch {
        id,
        created_at: row.get(0),
        matched: i64::from(row.get::<_, i32>(1)),
        by_status,
    }))
}
