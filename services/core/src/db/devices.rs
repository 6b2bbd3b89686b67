//! Devices, their credentials, their presence as last recorded, and
//! decommissioning.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tend_proto::event::Event;
use tokio_postgres::Row;
use uuid::Uuid;

use super::page::{Cursor, Page};
use super::{DbError, GenericClient, Result, outbox};

#[derive(Debug, Clone, PartialEq, Eq, Copy)]
pub enum Presence {
    Unknown,
    Online,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Unknown => "unknown",
            Presence::Online => "online",
            Presence::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<Presence> {
        [Presence::Unknown, Presence::Online, Presence::Offline]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// Whether a device may connect: admin-created devices are accepted; an
/// enrolled one is pending until an admin accepts or rejects it.
#[derive(Debug, Clone, PartialEq, Eq, Copy)]
pub enum Admission {
    Pending,
    Accepted,
    Rejected,
}

impl Admission {
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Pending => "pending",
            Admission::Accepted => "accepted",
            Admission::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Admission> {
        [Admission::Pending, Admission::Accepted, Admission::Rejected]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub struct Device {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub device_type: String,
    pub labels: Value,
    pub status: Presence,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub reported: Value,
    pub created_at: DateTime<Utc>,
    /// `{name: {version, updated_at}}` as the agent last reported them.
    pub components: Value,
    pub admission: Admission,
}

const COLUMNS: &str = "id, tenant_id, name, device_type, labels, status, last_seen_at, \
     reported, created_at, components, admission";

fn from_row(r: &Row) -> Result<Device> {
    let status: String = r.get(5);
    Ok(Device {
        id: r.get(0),
        tenant_id: r.get(1),
        name: r.get(2),
        device_type: r.get(3),
        labels: r.get(4),
        status: Presence::parse(&status)
            .ok_or_else(|| DbError::Corrupt(format!("device status {status:?}")))?,
        last_seen_at: r.get(6),
        reported: r.get(7),
        created_at: r.get(8),
        components: r.get(9),
        admission: {
            let a: String = r.get(10);
            Admission::parse(&a)
                .ok_or_else(|| DbError::Corrupt(format!("device admission {a:?}")))?
        },
    })
}

pub struct NewDevice<'a> {
    pub tenant_id: Uuid,
    pub name: &'a str,
    pub device_type: &'a str,
    pub labels: &'a Value,
    /// SHA-256 of the device's secret; the secret itself is never stored.
    pub secret_sha256: &'a [u8],
}

/// Inserts a device and its credential, accepted. Run it in a transaction.
pub async fn create(c: &impl GenericClient, new: NewDevice<'_>) -> Result<Device> {
    create_admitted(c, new, Admission::Accepted, None).await
}

/// Inserts a device and its credential, admitted as given and, when it
/// enrolled itself, with the token it used. Run it in a transaction.
pub async fn create_admitted(
    c: &impl GenericClient,
    new: NewDevice<'_>,
    admission: Admission,
    enrolment_token_id: Option<Uuid>,
) -> Result<Device> {
    let insert = c
        .prepare_cached(&format!(
            "INSERT INTO devices (id, tenant_id, name, device_type, labels, admission,
                                  enrolment_token_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        ))
        .await?;
    let id = Uuid::new_v4();
    let row = c
        .query_one(
            &insert,
            &[
                &id,
                &new.tenant_id,
                &new.name,
                &new.device_type,
                new.labels,
                &admission.as_str(),
                &enrolment_token_id,
            ],
        )
        .await?;
    let cred = c
        .prepare_cached("INSERT INTO device_credentials (device_id, secret_sha256) VALUES ($1, $2)")
        .await?;
    c.execute(&cred, &[&id, &new.secret_sha256]).await?;
    from_row(&row)
}

/// Inserts many devices and their credentials with two statements, whatever
/// their number: one row each through `unnest` arrays, so provisioning a
/// thousand devices costs two round trips, not two thousand. Returns them in
/// the order given. Run it in a transaction, so that either all exist or
/// none.
pub async fn create_many(c: &impl GenericClient, new: &[NewDevice<'_>]) -> Result<Vec<Device>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = new.iter().map(|_| Uuid::new_v4()).collect();
    let tenants: Vec<Uuid> = new.iter().map(|d| d.tenant_id).collect();
    let names: Vec<&str> = new.iter().map(|d| d.name).collect();
    let types: Vec<&str> = new.iter().map(|d| d.device_type).collect();
    let labels: Vec<&Value> = new.iter().map(|d| d.labels).collect();
    let hashes: Vec<&[u8]> = new.iter().map(|d| d.secret_sha256).collect();

    let insert = c
        .prepare_cached(&format!(
            "INSERT INTO devices (id, tenant_id, name, device_type, labels)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[])
             RETURNING {COLUMNS}"
        ))
        .await?;
    let rows = c
        .query(&insert, &[&ids, &tenants, &names, &types, &labels])
        .await?;
    let cred = c
        .prepare_cached(
            "INSERT INTO device_credentials (device_id, secret_sha256)
             SELECT * FROM unnest($1::uuid[], $2::bytea[])",
        )
        .await?;
    c.execute(&cred, &[&ids, &hashes]).await?;

    // RETURNING promises no order: put the rows back in the caller's.
    let mut by_id = rows
        .iter()
        .map(|r| from_row(r).map(|d| (d.id, d)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    ids.iter()
        .map(|id| {
            by_id
                .remove(id)
                .ok_or_else(|| DbError::Corrupt(format!("device {id} was not inserted")))
        })
        .collect()
}

/// A device of this tenant that is not decommissioned.
pub async fn get(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Option<Device>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM devices
             WHERE id = $1 AND tenant_id = $2 AND decommissioned_at IS NULL"
        ))
        .await?;
    c.query_opt(&stmt, &[&id, &tenant_id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Like [`get`], and holds a share lock on the row until the transaction
/// ends: a command created under it cannot slip past a concurrent
/// decommission (which waits, then cancels it, or wins, and this finds no
/// device).
pub async fn get_locked(
    c: &impl GenericClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<Device>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM devices
             WHERE id = $1 AND tenant_id = $2 AND decommissioned_at IS NULL
             FOR SHARE"
        ))
        .await?;
    c.query_opt(&stmt, &[&id, &tenant_id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub status: Option<Presence>,
    pub device_type: Option<String>,
    /// Every label given must match (`labels @> filter`).
    pub labels: Option<Value>,
    /// A component at a version (`component=NAME:VERSION`).
    pub component: Option<(String, String)>,
    pub admission: Option<Admission>,
}

pub async fn list(
    c: &impl GenericClient,
    tenant_id: Uuid,
    filter: &Filter,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Page<Device>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM devices
             WHERE tenant_id = $1 AND decommissioned_at IS NULL
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR device_type = $3)
               AND ($4::jsonb IS NULL OR labels @> $4)
               AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
               AND ($8::jsonb IS NULL OR components @> $8)
               AND ($9::text IS NULL OR admission = $9)
             ORDER BY created_at DESC, id DESC
             LIMIT $7"
        ))
        .await?;
    let rows = c
        .query(
            &stmt,
            &[
                &tenant_id,
                &filter.status.map(Presence::as_str),
                &filter.device_type,
                &filter.labels,
                &after.map(|a| a.created_at),
                &after.map(|a| a.id),
                &(limit + 1),
                &filter
                    .component
                    .as_ref()
                    .map(|(name, version)| serde_json::json!({ name: { "version": version } })),
                &filter.admission.map(Admission::as_str),
            ],
        )
        .await?;
    let devices = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_rows(devices, limit, |d| Cursor {
        created_at: d.created_at,
        id: d.id,
    }))
}

/// The tenant and type of an active device: what the update check needs
/// to know about the device a token names.
pub async fn identity(c: &impl GenericClient, id: Uuid) -> Result<Option<(Uuid, String)>> {
    let stmt = c
        .prepare_cached(
            "SELECT tenant_id, device_type FROM devices
             WHERE id = $1 AND decommissioned_at IS NULL",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&id])
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// The tenant, secret hash and type of a device with an active credential.
pub async fn find_secret(c: &impl GenericClient, device_id: Uuid) -> Result<Option<Credential>> {
    let stmt = c
        .prepare_cached(
            "SELECT d.tenant_id, k.secret_sha256, d.device_type, d.admission
             FROM device_credentials k JOIN devices d ON d.id = k.device_id
             WHERE k.device_id = $1 AND k.revoked_at IS NULL AND d.decommissioned_at IS NULL",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&device_id])
        .await?
        .map(|r| Credential {
            tenant_id: r.get(0),
            secret_sha256: r.get(1),
            device_type: r.get(2),
            admission: Admission::parse(r.get(3)).unwrap_or(Admission::Rejected),
        }))
}

/// What a device's authentication is checked against, and what its answer
/// tells the device about itself.
#[derive(Debug, Clone)]
pub struct Credential {
    pub tenant_id: Uuid,
    pub secret_sha256: Vec<u8>,
    pub device_type: String,
    /// A pending device's secret is right, but it may not connect yet.
    pub admission: Admission,
}

/// Decommissions a device: hides it, revokes its credential, cancels what it
/// still had queued, and announces the revocation. Run it in a transaction.
/// Returns false when the tenant has no such active device.
pub async fn decommission(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<bool> {
    super::batches::hold_off_batches(c, tenant_id).await?;
    let stmt = c
        .prepare_cached(
            "UPDATE devices SET decommissioned_at = now()
             WHERE id = $1 AND tenant_id = $2 AND decommissioned_at IS NULL",
        )
        .await?;
    if c.execute(&stmt, &[&id, &tenant_id]).await? == 0 {
        return Ok(false);
    }
    let revoke = c
        .prepare_cached(
            "UPDATE device_credentials SET revoked_at = now()
             WHERE device_id = $1 AND revoked_at IS NULL",
        )
        .await?;
    c.execute(&revoke, &[&id]).await?;
    super::commands::cancel_all_queued(c, id).await?;
    outbox::insert(
        c,
        &Event::DeviceDecommissioned {
            device_id: id,
            tenant_id,
        },
    )
    .await?;
    Ok(true)
}

/// Sets what a device reported (an enrolling device's inventory, before
/// its first heartbeat).
pub async fn set_reported(c: &impl GenericClient, id: Uuid, reported: &Value) -> Result<()> {
    let stmt = c
        .prepare_cached("UPDATE devices SET reported = $2 WHERE id = $1")
        .await?;
    c.execute(&stmt, &[&id, reported]).await?;
    Ok(())
}

/// How an admin's accept or reject ended.
#[derive(Debug)]
pub enum Admit {
    Done(Box<Device>),
    /// The tenant has no such active device.
    NotFound,
    /// The device's admission does not allow it (accepting a rejected or
    /// an accepted device, rejecting a rejected one): it is as it was.
    Conflict(Admission),
}

/// Accepts a pending device: it may authenticate from now on. Run it in a
/// transaction.
pub async fn accept(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Admit> {
    let Some(device) = get_for_update(c, tenant_id, id).await? else {
        return Ok(Admit::NotFound);
    };
    if device.admission != Admission::Pending {
        return Ok(Admit::Conflict(device.admission));
    }
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE devices SET admission = 'accepted' WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(Admit::Done(Box::new(from_row(
        &c.query_one(&stmt, &[&id]).await?,
    )?)))
}

/// Rejects a pending or accepted device for good: its credential is
/// revoked, its queued commands cancelled, and every sync replica refuses
/// it as it refuses a decommissioned device. The device stays listed, as
/// `rejected`. Run it in a transaction.
pub async fn reject(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Admit> {
    super::batches::hold_off_batches(c, tenant_id).await?;
    let Some(device) = get_for_update(c, tenant_id, id).await? else {
        return Ok(Admit::NotFound);
    };
    if device.admission == Admission::Rejected {
        return Ok(Admit::Conflict(device.admission));
    }
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE devices SET admission = 'rejected', rejected_at = now()
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .await?;
    let rejected = from_row(&c.query_one(&stmt, &[&id]).await?)?;
    let revoke = c
        .prepare_cached(
            "UPDATE device_credentials SET revoked_at = now()
             WHERE device_id = $1 AND revoked_at IS NULL",
        )
        .await?;
    c.execute(&revoke, &[&id]).await?;
    super::commands::cancel_all_queued(c, id).await?;
    // The sync replicas drop a rejected device's tokens as they drop a
    // decommissioned one's: at once on this event, else at their next poll
    // of the revocation list.
    outbox::insert(
        c,
        &Event::DeviceDecommissioned {
            device_id: id,
            tenant_id,
        },
    )
    .await?;
    Ok(Admit::Done(Box::new(rejected)))
}

/// The tenant's active device, locked for an admission change.
async fn get_for_update(
    c: &impl GenericClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<Device>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM devices
             WHERE id = $1 AND tenant_id = $2 AND decommissioned_at IS NULL
             FOR UPDATE"
        ))
        .await?;
    c.query_opt(&stmt, &[&id, &tenant_id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Devices decommissioned or rejected after `since`, with the time of
/// each: the sync servers' revocation list.
pub async fn decommissioned_since(
    c: &impl GenericClient,
    since: DateTime<Utc>,
) -> Result<Vec<(Uuid, DateTime<Utc>)>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, decommissioned_at AS at FROM devices WHERE decommissioned_at > $1
             UNION ALL
             SELECT id, rejected_at FROM devices WHERE rejected_at > $1
             ORDER BY at",
        )
        .await?;
    Ok(c.query(&stmt, &[&since])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// One device's latest heartbeat, as read from Redis by the monitor.
#[derive(Debug, Clone)]
pub struct Seen {
    pub device_id: Uuid,
    pub at: DateTime<Utc>,
    pub reported: Option<Value>,
}

/// Records heartbeats in bulk: the devices are online, seen at the given
/// times, reporting what they sent. Older news never overwrites newer.
///
/// A row is written only when an admin's query would see a change: the
/// device comes online, what it reported changed (its uptime aside, which
/// changes at every heartbeat), or `last_seen_at` is older than the
/// device's share of `refresh`: between three quarters of it and all of
/// it, fixed per device, so that a fleet that came online together does
/// not refresh together. Redis keeps the exact latest heartbeat, which the
/// API shows; in a steady fleet a device row is rewritten about once per
/// `refresh`, not once per heartbeat. A zero `refresh` writes every
/// heartbeat.
pub async fn record_seen(c: &impl GenericClient, seen: &[Seen], refresh: Duration) -> Result<u64> {
    if seen.is_empty() {
        return Ok(0);
    }
    let stmt = c
        .prepare_cached(
            "UPDATE devices d
             SET last_seen_at = v.at, status = 'online', reported = COALESCE(v.reported, d.reported),
                 components = CASE WHEN jsonb_typeof(v.reported->'components') = 'object' THEN
                     (SELECT COALESCE(jsonb_object_agg(c.name,
                                 CASE WHEN d.components->c.name->>'version' = c.version
                                      THEN d.components->c.name
                                      ELSE jsonb_build_object('version', c.version,
                                                              'updated_at', v.at) END),
                                 '{}'::jsonb)
                      FROM jsonb_each_text(v.reported->'components') AS c(name, version))
                     ELSE d.components END
             FROM unnest($1::uuid[], $2::timestamptz[], $3::jsonb[]) AS v(id, at, reported)
             WHERE d.id = v.id AND d.decommissioned_at IS NULL
               AND (d.last_seen_at IS NULL OR d.last_seen_at < v.at OR d.status <> 'online')
               AND (d.status <> 'online' OR d.last_seen_at IS NULL
                    OR d.last_seen_at <= v.at - $4::bigint * interval '1 millisecond'
                                                * (0.75 + (hashtext(d.id::text) & 1023) / 4092.0)
                    OR (v.reported IS NOT NULL
                        AND (v.reported - 'uptime_s') IS DISTINCT FROM (d.reported - 'uptime_s')))",
        )
        .await?;
    let ids: Vec<Uuid> = seen.iter().map(|s| s.device_id).collect();
    let ats: Vec<DateTime<Utc>> = seen.iter().map(|s| s.at).collect();
    let reported: Vec<Option<Value>> = seen.iter().map(|s| s.reported.clone()).collect();
    let refresh = i64::try_from(refresh.as_millis()).unwrap_or(i64::MAX);
    Ok(c.execute(&stmt, &[&ids, &ats, &reported, &refresh]).await?)
}

/// How many active devices are online, offline and never seen.
pub async fn count_by_status(c: &impl GenericClient) -> Result<Vec<(String, i64)>> {
    let stmt = c
        .prepare_cached(
            "SELECT status, count(*) FROM devices WHERE decommissioned_at IS NULL GROUP BY status",
        )
        .await?;
    Ok(c.query(&stmt, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Marks offline the online devices among `silent` (each with the time of
/// its latest heartbeat, as Redis holds it, when it does) that PostgreSQL
/// did not see after `cutoff` either; `last_seen_at` becomes that
/// heartbeat's time.
/// Returns the devices marked.
pub async fn mark_offline(
    c: &impl GenericClient,
    silent: &[(Uuid, Option<DateTime<Utc>>)],
    cutoff: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if silent.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = c
        .prepare_cached(
            "UPDATE devices d
             SET status = 'offline', last_seen_at = GREATEST(d.last_seen_at, v.at)
             FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at)
             WHERE d.id = v.id AND d.status = 'online' AND d.decommissioned_at IS NULL
               AND (d.last_seen_at IS NULL OR d.last_seen_at < $3)
             RETURNING d.id",
        )
        .await?;
    let ids: Vec<Uuid> = silent.iter().map(|(id, _)| *id).collect();
    let ats: Vec<Option<DateTime<Utc>>> = silent.iter().map(|(_, at)| *at).collect();
    Ok(c.query(&stmt, &[&ids, &ats, &cutoff])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Online devices whose row was last refreshed before `cutoff`, after
/// `after` in id order, at most `limit`, with that `last_seen_at`: the
/// candidates a monitor checks against Redis when it cannot trust the
/// presence set to name every silent device (at its start, and after
/// Redis lost its data).
pub async fn online_seen_before(
    c: &impl GenericClient,
    cutoff: DateTime<Utc>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<(Uuid, Option<DateTime<Utc>>)>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, last_seen_at FROM devices
             WHERE status = 'online' AND decommissioned_at IS NULL
               AND (last_seen_at IS NULL OR last_seen_at < $1) AND id > $2
             ORDER BY id LIMIT $3",
        )
        .await?;
    Ok(c.query(&stmt, &[&cutoff, &after, &limit])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Key of the advisory lock under which one monitor replica at a time moves
/// presence from Redis into PostgreSQL.
const PRESENCE_LOCK: i64 = 0x7465_6e64_7072_6573; // "tendpres"

/// Takes the presence lock until the end of the transaction, unless another
/// monitor replica holds it; then answers false and that replica records
/// presence for this tick. Run it in a transaction.
pub async fn try_lock_presence(c: &impl GenericClient) -> Result<bool> {
    let stmt = c
        .prepare_cached("SELECT pg_try_advisory_xact_lock($1)")
        .await?;
    Ok(c.query_one(&stmt, &[&PRESENCE_LOCK]).await?.get(0))
}
