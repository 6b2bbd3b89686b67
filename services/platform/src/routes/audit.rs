//! `GET /audit`: the tenant's audit log, newest first, for its admins.

use std::net::IpAddr;

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tend_core::auth::Role;
use tend_core::db::{self, audit};
use tend_core::error::ApiError;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::caller::Caller;
use crate::state::Shared;

/// Who acted; `id` and `username` are null for what tend did itself (an
/// automatic denylisting), and `id` alone for an unknown user.
#[derive(Serialize, ToSchema)]
pub struct AuditActor {
    pub id: Option<Uuid>,
    pub username: Option<String>,
}

/// The object changed: a command's own id for `command.*`, the artifact's
/// for `artifact.*` and `denylist.*`.
#[derive(Serialize, ToSchema)]
pub struct AuditTarget {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: AuditActor,
    /// `<type>.<verb>`: `device.create`, `command.cancel`, …
    pub action: String,
    pub target: AuditTarget,
    /// The client's address (through `TEND_TRUSTED_PROXIES`).
    #[schema(value_type = Option<String>)]
    pub address: Option<IpAddr>,
    pub request_id: Option<String>,
    /// What changed; never a secret.
    pub summary: Value,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// A user id, or a username (as it was when they acted).
    actor: Option<String>,
    /// An exact action (`device.create`), or all of a type with a trailing
    /// dot (`device.`).
    action: Option<String>,
    /// The target's id.
    target: Option<String>,
    /// RFC 3339; rows at or after it.
    since: Option<String>,
    /// RFC 3339; rows before it.
    until: Option<String>,
    /// 1 to 500, default 50.
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// Read the audit log
///
/// The tenant's audit log, newest first: who did what to which object,
/// from which address, when. Filters: `actor` (a user id or a username),
/// `action` (exact, or a prefix ending with a dot: `device.`), `target`
/// (an id), `since` (inclusive) and `until` (exclusive), RFC 3339. Pages
/// with `limit` and `cursor`. Admins only.
#[utoipa::path(
    tag = "audit",
    security(("bearer" = [])),
    params(AuditQuery),
    extensions(("x-tend-roles" = json!(["admin"]))),
    responses(
        (status = 200, description = "A page of the log", body = AuditList),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "Invalid filter, limit or cursor"),
    )
)]
#[get("/audit")]
pub async fn list(
    state: Shared,
    caller: Caller,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let q = query.into_inner();
    let filter = filter(&q)?;
    let limit = q.limit.unwrap_or(db::page::DEFAULT_LIMIT);
    if !(1..=db::page::MAX_LIMIT).contains(&limit) {
        return Err(invalid(format!(
            "limit must be from 1 to {}",
            db::page::MAX_LIMIT
        )));
    }
    let before = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let (rows, more) = db::with_client(&state.pool, async |client| {
        audit::list(client, caller.tenant(), &filter, before, limit).await
    })
    .await?;
    let next_cursor = if more {
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            at: r.at,
            actor: AuditActor {
                id: r.actor_id,
                username: r.actor_username,
            },
            action: r.action,
            target: AuditTarget {
                kind: r.target_type,
                id: r.target_id,
            },
            address: r.address,
            request_id: r.request_id,
            summary: r.summary,
        })
        .collect();
    Ok(HttpResponse::Ok().json(AuditList { items, next_cursor }))
}

fn invalid(why: String) -> ApiError {
    ApiError::Unprocessable(why)
}

/// The longest filter value taken: actions, usernames and ids are short.
const MAX_FILTER_LEN: usize = 200;

fn filter(q: &AuditQuery) -> Result<audit::Filter, ApiError> {
    for (name, value) in [
        ("actor", &q.actor),
        ("action", &q.action),
        ("target", &q.target),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.len() > MAX_FILTER_LEN || v.chars().any(char::is_control))
        {
            return Err(invalid(format!(
                "{name} must be 1 to {MAX_FILTER_LEN} printable characters"
            )));
        }
    }
    if let Some(a) = &q.action
        && !a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
    {
        return Err(invalid(
            "action must be <type>.<verb> (lower case and '_'), or a prefix ending with '.'".into(),
        ));
    }
    let time = |name: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| invalid(format!("{name} must be an RFC 3339 time")))
            })
            .transpose()
    };
    let since = time("since", &q.since)?;
    let until = time("until", &q.until)?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(invalid("since is after until".into()));
    }
    Ok(audit::Filter {
        actor: q.actor.as_deref().map(|a| match a.parse::<Uuid>() {
            Ok(id) => audit::Actor::Id(id),
            Err(_) => audit::Actor::Username(a.to_owned()),
        }),
        action: q.action.clone(),
        target: q.target.clone(),
        since,
        until,
    })
}

/// The cursor is the last row's id (rows are numbered in the order they
/// were written); clients treat it as opaque.
fn decode_cursor(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid("invalid cursor".into()))
}
