//! The audit log: who did what to which object, from where, and when.
//! Every row is written in the transaction of the change it records, so a
//! change without its row (or a row without its change) cannot exist.

use std::net::IpAddr;

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
    let stmt = c
        .prepare_cached(
            "INSERT INTO audit_log
                (tenant_id, actor_id, actor_username, action, target_type, target_id,
                 address, request_id, summary)
             VALUES ($1, $2, (SELECT username FROM users WHERE id = $2), $3, $4, $5,
                     $6, $7, $8)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &e.tenant_id,
            &e.actor_id,
            &e.action,
            &e.target.kind,
            &e.target.id,
            &e.address,
            &e.request_id,
            &e.summary,
        ],
    )
    .await?;
    Ok(())
}
