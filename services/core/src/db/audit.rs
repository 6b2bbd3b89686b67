//! The audit log: who did what to which object, from where, and when.
//! Every row is written in the transaction of the change it records, so a
//! change without its row (or a row without its change) cannot exist.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{GenericClient, Result};

/// What an action was done to: `{type, id}`. A command's own id for
/// `command.*`, the artifact's for `artifact.*` and `denylist.*`.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: &'static str,
    pub id: Option<String>,
}

impl Target {
    pub fn new(kind: &'static str, id: impl ToString) -> Target {
        Target {
            kind,
            id: Some(id.to_string()),
        }
    }

    /// An object without an id, such as the unknown user of a failed login.
    pub fn unnamed(kind: &'static str) -> Target {
        Target { kind, id: None }
    }
}

/// One audit row before it is written.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub tenant_id: Uuid,
    /// The user who acted; `None` for an unknown user's failed login.
    pub actor_id: Option<Uuid>,
    /// `<type>.<verb>`: `device.create`, `auth.login_failed`, …
    pub action: &'a str,
    pub target: Target,
    pub address: Option<IpAddr>,
    pub request_id: Option<&'a str>,
    /// What changed, never a secret.
    pub summary: Value,
}

/// Appends a row. The actor's username is copied from `users` now, so the
/// row still names them after they are removed.
pub async fn record(c: &impl GenericClient, e: &Entry<'_>) -> Result<()> {
    record_many(c, std::slice::from_ref(e)).await
}

/// Appends rows in one statement: a bulk change writes a row per object
/// it changed without a round trip per row.
pub async fn record_many(c: &impl GenericClient, entries: &[Entry<'_>]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO audit_log
                (tenant_id, actor_id, actor_username, action, target_type, target_id,
                 address, request_id, summary)
             SELECT e.tenant_id, e.actor_id, u.username, e.action, e.target_type, e.target_id,
                    e.address, e.request_id, e.summary
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                         $6::inet[], $7::text[], $8::jsonb[]) WITH ORDINALITY
                  AS e(tenant_id, actor_id, action, target_type, target_id,
                       address, request_id, summary, n)
             LEFT JOIN users u ON u.id = e.actor_id
             ORDER BY e.n",
        )
        .await?;
    let tenants: Vec<Uuid> = entries.iter().map(|e| e.tenant_id).collect();
    let actors: Vec<Option<Uuid>> = entries.iter().map(|e| e.actor_id).collect();
    let actions: Vec<&str> = entries.iter().map(|e| e.action).collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.target.kind).collect();
    let ids: Vec<Option<&str>> = entries.iter().map(|e| e.target.id.as_deref()).collect();
    let addresses: Vec<Option<IpAddr>> = entries.iter().map(|e| e.address).collect();
    let requests: Vec<Option<&str>> = entries.iter().map(|e| e.request_id).collect();
    let summaries: Vec<&Value> = entries.iter().map(|e| &e.summary).collect();
    c.execute(
        &stmt,
        &[
            &tenants, &actors, &actions, &kinds, &ids, &addresses, &requests, &summaries,
        ],
    )
    .await?;
    Ok(())
}

/// One row of the log as `GET /audit` shows it.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor_username: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub address: Option<IpAddr>,
    pub request_id: Option<String>,
    pub summary: Value,
}

/// Who acted: a user id, or a username (as the row recorded it, so a
/// removed user's actions are still found).
#[derive(Debug, Clone)]
pub enum Actor {
    Id(Uuid),
    Username(String),
}

/// The filters of `GET /audit`; each one given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<Actor>,
    /// An exact action (`device.create`), or every action of a type when it
    /// ends with a dot (`device.`).
    pub action: Option<String>,
    pub target: Option<String>,
    /// Inclusive.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive.
    pub until: Option<DateTime<Utc>>,
}

/// A tenant's log, newest first: rows with an id below `before` (the
/// previous page's last), at most `limit`, and whether more follow.
pub async fn list(
    c: &impl GenericClient,
    tenant_id: Uuid,
    filter: &Filter,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<Row>, bool)> {
    let (actor_id, actor_username) = match &filter.actor {
        Some(Actor::Id(id)) => (Some(*id), None),
        Some(Actor::Username(name)) => (None, Some(name.as_str())),
        None => (None, None),
    };
    let (action, prefix) = match filter.action.as_deref() {
        Some(a) if a.ends_with('.') => (None, Some(format!("{}%", escape_like(a)))),
        Some(a) => (Some(a), None),
        None => (None, None),
    };
    let stmt = c
        .prepare_cached(
            "SELECT id, at, actor_id, actor_username, action, target_type, target_id,
                    address, request_id, summary
             FROM audit_log
             WHERE tenant_id = $1
               AND ($2::bigint IS NULL OR id < $2)
               AND ($3::uuid IS NULL OR actor_id = $3)
               AND ($4::text IS NULL OR actor_username = $4)
               AND ($5::text IS NULL OR action = $5)
               AND ($6::text IS NULL OR action LIKE $6)
               AND ($7::text IS NULL OR target_id = $7)
               AND ($8::timestamptz IS NULL OR at >= $8)
               AND ($9::timestamptz IS NULL OR at < $9)
             ORDER BY id DESC
             LIMIT $10",
        )
        .await?;
    let rows = c
        .query(
            &stmt,
            &[
                &tenant_id,
                &before,
                &actor_id,
                &actor_username,
                &action,
                &prefix,
                &filter.target,
                &filter.since,
                &filter.until,
                &(limit + 1),
            ],
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let rows = rows
        .iter()
        .take(limit as usize)
        .map(|r| Row {
            id: r.get(0),
            at: r.get(1),
            actor_id: r.get(2),
            actor_username: r.get(3),
            action: r.get(4),
            target_type: r.get(5),
            target_id: r.get(6),
            address: r.get(7),
            request_id: r.get(8),
            summary: r.get(9),
        })
        .collect();
    Ok((rows, more))
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Key of the advisory lock one sweeper holds at a time ("tendaudi").
const SWEEP_LOCK: i64 = 0x7465_6e64_6175_6469;

/// Sets the retention period the database enforces (at least 1 day; the
/// table's CHECK refuses less).
pub async fn set_retention(c: &impl GenericClient, days: u32) -> Result<()> {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    let stmt = c
        .prepare_cached("UPDATE audit_retention SET days = $1")
        .await?;
    c.execute(&stmt, &[&days]).await?;
    Ok(())
}

/// Deletes up to `batch` rows older than the retention period, oldest
/// first, and answers how many; 0 too when another replica is sweeping.
/// The period is the database's (`audit_retention`): its trigger refuses
/// any younger row, so this statement cannot delete more than it should.
pub async fn sweep(c: &mut deadpool_postgres::Client, batch: i64) -> Result<u64> {
    let tx = c.transaction().await?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SWEEP_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(0);
    }
    let stmt = tx
        .prepare_cached(
            "DELETE FROM audit_log WHERE id IN (
                 SELECT id FROM audit_log
                 WHERE at < now() - make_interval(days => (SELECT days FROM audit_retention))
                 ORDER BY at
                 LIMIT $1)",
        )
        .await?;
    let deleted = tx.execute(&stmt, &[&batch]).await?;
    tx.commit().await?;
    Ok(deleted)
}
