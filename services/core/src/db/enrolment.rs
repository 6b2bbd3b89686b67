//! Enrolment tokens: with one, a device's agent that has no identity yet
//! asks tend-sync for its own (seed 003). Stored as the SHA-256 of the
//! token, never the token; each enrolment takes one use atomically.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::page::{Cursor, Page};
use super::{GenericClient, Result};

/// An enrolment token, as listed (never the token itself).
#[derive(Debug, Clone)]
pub struct EnrolmentToken {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub device_type: Option<String>,
    pub labels: Value,
    /// How many devices it may enrol in all; `None`: any number until it
    /// expires.
    pub uses: Option<i32>,
    pub uses_left: Option<i32>,
    pub used: i32,
    pub auto_accept: bool,
    pub expires_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, device_type, labels, uses, uses_left, used, auto_accept, \
     expires_at, created_by, created_at, revoked_at";

fn from_row(r: &Row) -> EnrolmentToken {
    EnrolmentToken {
        id: r.get(0),
        tenant_id: r.get(1),
        device_type: r.get(2),
        labels: r.get(3),
        uses: r.get(4),
        uses_left: r.get(5),
        used: r.get(6),
        auto_accept: r.get(7),
        expires_at: r.get(8),
        created_by: r.get(9),
        created_at: r.get(10),
        revoked_at: r.get(11),
    }
}

pub struct NewToken<'a> {
    pub tenant_id: Uuid,
    pub token_sha256: &'a [u8],
    pub device_type: Option<&'a str>,
    pub labels: &'a Value,
    pub uses: Option<i32>,
    pub auto_accept: bool,
    pub expires_at: DateTime<Utc>,
    pub created_by: Uuid,
}

/// Stores a new token by its hash.
pub async fn create(c: &impl GenericClient, new: NewToken<'_>) -> Result<EnrolmentToken> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO enrolment_tokens
                 (id, tenant_id, token_sha256, device_type, labels, uses, uses_left,
                  auto_accept, expires_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9)
             RETURNING {COLUMNS}"
        ))
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &Uuid::new_v4(),
                &new.tenant_id,
                &new.token_sha256,
                &new.device_type,
                new.labels,
                &new.uses,
                &new.auto_accept,
                &new.expires_at,
                &new.created_by,
            ],
        )
        .await?;
    Ok(from_row(&row))
}

/// The tenant's tokens, newest first, revoked ones included (with
/// `revoked_at`), so an admin sees what enrolled a device.
pub async fn list(
    c: &impl GenericClient,
    tenant_id: Uuid,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Page<EnrolmentToken>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM enrolment_tokens
             WHERE tenant_id = $1
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC
             LIMIT $4"
        ))
        .await?;
    let rows = c
        .query(
            &stmt,
            &[
                &tenant_id,
                &after.map(|a| a.created_at),
                &after.map(|a| a.id),
                &(limit + 1),
            ],
        )
        .await?;
    let tokens = rows.iter().map(from_row).collect();
    Ok(Page::from_rows(tokens, limit, |t: &EnrolmentToken| {
        Cursor {
            created_at: t.created_at,
            id: t.id,
        }
    }))
}

/// Revokes an active token of the tenant; false when there is none (an
/// unknown id, another tenant's, or one revoked before).
pub async fn revoke(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<bool> {
    let stmt = c
        .prepare_cached(
            "UPDATE enrolment_tokens SET revoked_at = now()
             WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
        )
        .await?;
    Ok(c.execute(&stmt, &[&id, &tenant_id]).await? == 1)
}

/// Why a token enrols no device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Revoked,
    Expired,
    UsedUp,
    /// The token is for devices of another type.
    WrongType,
}

/// Takes one use of the token whose hash is `token_sha256` for a device
/// of `device_type`, in one statement, so that two devices racing for the
/// last use cannot both have it. Returns the token (its tenant, labels and
/// whether it accepts at once), or why it may not be used. Run it in the
/// transaction that creates the device, so a failed creation gives the
/// use back.
pub async fn take_use(
    c: &impl GenericClient,
    token_sha256: &[u8],
    device_type: &str,
) -> Result<std::result::Result<EnrolmentToken, Refusal>> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE enrolment_tokens
             SET uses_left = uses_left - 1, used = used + 1
             WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > now()
               AND (uses_left IS NULL OR uses_left > 0)
               AND (device_type IS NULL OR device_type = $2)
             RETURNING {COLUMNS}"
        ))
        .await?;
    if let Some(row) = c.query_opt(&stmt, &[&token_sha256, &device_type]).await? {
        return Ok(Ok(from_row(&row)));
    }
    // Refused: say why, to a caller who holds the token anyway.
    let why = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM enrolment_tokens WHERE token_sha256 = $1"
        ))
        .await?;
    let refusal = match c
        .query_opt(&why, &[&token_sha256])
        .await?
        .map(|r| from_row(&r))
    {
        None => Refusal::Unknown,
        Some(t) if t.revoked_at.is_some() => Refusal::Revoked,
        Some(t) if t.expires_at <= Utc::now() => Refusal::Expired,
        Some(t) if t.uses_left.is_some_and(|n| n <= 0) => Refusal::UsedUp,
        Some(_) => Refusal::WrongType,
    };
    Ok(Err(refusal))
}
