//! Admin users: a tenant, a role, an argon2 password hash, and the token
//! generation that ends their sessions when they change.
//!
//! A removed user keeps its row with `removed_at` set: what it created
//! still names it, and platform replicas learn of the removal as of any
//! other change (see [`changed_since`]). Every other function here sees
//! present users only.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::page::{Cursor, Page};
use super::{DbError, GenericClient, Result};
use crate::auth::Role;

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub username: String,
    pub role: Role,
    pub is_system_admin: bool,
    pub created_at: DateTime<Utc>,
    /// Written into each token as `gen`; a token of an older generation is
    /// refused.
    pub token_generation: i64,
    /// A disabled user cannot log in and its tokens are refused.
    pub disabled: bool,
}

const COLUMNS: &str =
    "id, tenant_id, username, role, is_system_admin, created_at, token_generation, disabled";

fn from_row(r: &tokio_postgres::Row) -> Result<User> {
    let role: String = r.get(3);
    Ok(User {
        id: r.get(0),
        tenant_id: r.get(1),
        username: r.get(2),
        role: role
            .parse()
            .map_err(|_| DbError::Corrupt(format!("user role {role:?}")))?,
        is_system_admin: r.get(4),
        created_at: r.get(5),
        token_generation: r.get(6),
        disabled: r.get(7),
    })
}

/// A user with the hash needed to check a login. Kept apart from [`User`]
/// so the hash never travels further than the login handler.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

pub struct NewUser<'a> {
    pub tenant_id: Uuid,
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
    pub is_system_admin: bool,
}

/// Inserts a user; a taken username is the unique violation `users_username_key`.
pub async fn create(c: &impl GenericClient, new: NewUser<'_>) -> Result<User> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO users (id, tenant_id, username, password_hash, role, is_system_admin)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
        )
        .await?;
    let id = Uuid::new_v4();
    let row = c
        .query_one(
            &stmt,
            &[
                &id,
                &new.tenant_id,
                &new.username,
                &new.password_hash,
                &new.role.as_str(),
                &new.is_system_admin,
            ],
        )
        .await?;
    Ok(User {
        id,
        tenant_id: new.tenant_id,
        username: new.username.to_owned(),
        role: new.role,
        is_system_admin: new.is_system_admin,
        created_at: row.get(0),
        token_generation: 0,
        disabled: false,
    })
}

/// A present user by username, with its hash, for a login. A disabled user
/// is returned too: the login checks its password before refusing it, so
/// the answer and its timing are those of a wrong password.
pub async fn find_credentials(
    c: &impl GenericClient,
    username: &str,
) -> Result<Option<Credentials>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, password_hash FROM users
             WHERE username = $1 AND removed_at IS NULL"
        ))
        .await?;
    let Some(r) = c.query_opt(&stmt, &[&username]).await? else {
        return Ok(None);
    };
    Ok(Some(Credentials {
        user: from_row(&r)?,
        password_hash: r.get(8),
    }))
}

/// A page of a tenant's present users, newest first.
pub async fn list(
    c: &impl GenericClient,
    tenant_id: Uuid,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Page<User>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM users
             WHERE tenant_id = $1 AND removed_at IS NULL
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
    let users = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_rows(users, limit, |u| Cursor {
        created_at: u.created_at,
        id: u.id,
    }))
}

/// Takes the tenant's lock on changing its users, so that two admins
/// demoting or removing each other at once cannot leave it without an
/// enabled admin. Released at the end of the transaction.
pub async fn lock_tenant(c: &impl GenericClient, tenant_id: Uuid) -> Result<()> {
    let stmt = c
        .prepare_cached("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE")
        .await?;
    c.query_opt(&stmt, &[&tenant_id]).await?;
    Ok(())
}

/// A present user of the tenant; `None` for an unknown id or another
/// tenant's.
pub async fn get(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Option<User>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM users
             WHERE tenant_id = $1 AND id = $2 AND removed_at IS NULL"
        ))
        .await?;
    c.query_opt(&stmt, &[&tenant_id, &id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// How many enabled admins the tenant has.
pub async fn enabled_admins(c: &impl GenericClient, tenant_id: Uuid) -> Result<i64> {
    let stmt = c
        .prepare_cached(
            "SELECT count(*) FROM users
             WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled AND removed_at IS NULL",
        )
        .await?;
    Ok(c.query_one(&stmt, &[&tenant_id]).await?.get(0))
}

/// What a change of a user sets; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password_hash: Option<&'a str>,
}

/// Applies a change and bumps the user's token generation, which ends its
/// sessions on every replica. Returns the user as it is now.
pub async fn update(
    c: &impl GenericClient,
    tenant_id: Uuid,
    id: Uuid,
    change: &Change<'_>,
) -> Result<Option<User>> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE users SET
                role = coalesce($3, role),
                disabled = coalesce($4, disabled),
                password_hash = coalesce($5, password_hash),
                token_generation = token_generation + 1,
                changed_at = now()
             WHERE tenant_id = $1 AND id = $2 AND removed_at IS NULL
             RETURNING {COLUMNS}"
        ))
        .await?;
    c.query_opt(
        &stmt,
        &[
            &tenant_id,
            &id,
            &change.role.map(Role::as_str),
            &change.disabled,
            &change.password_hash,
        ],
    )
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Removes a user: its row stays, marked removed, and its tokens end.
/// False for an unknown id or another tenant's.
pub async fn remove(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<bool> {
    let stmt = c
        .prepare_cached(
            "UPDATE users SET removed_at = now(), changed_at = now(),
                token_generation = token_generation + 1
             WHERE tenant_id = $1 AND id = $2 AND removed_at IS NULL",
        )
        .await?;
    Ok(c.execute(&stmt, &[&tenant_id, &id]).await? == 1)
}

/// What a platform replica needs to know of a user to accept its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    pub id: Uuid,
    pub generation: i64,
    pub disabled: bool,
    pub removed: bool,
    pub changed_at: DateTime<Utc>,
}

fn token_state(r: &tokio_postgres::Row) -> TokenState {
    TokenState {
        id: r.get(0),
        generation: r.get(1),
        disabled: r.get(2),
        removed: r.get::<_, Option<DateTime<Utc>>>(3).is_some(),
        changed_at: r.get(4),
    }
}

/// Every user changed after `since` (created, changed, disabled or
/// removed), and every user not removed before `removed_after`: called
/// with `since` unset, it loads all present users and the recently removed.
pub async fn changed_since(
    c: &impl GenericClient,
    since: Option<DateTime<Utc>>,
    removed_after: DateTime<Utc>,
) -> Result<Vec<TokenState>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, token_generation, disabled, removed_at, changed_at FROM users
             WHERE ($1::timestamptz IS NULL OR changed_at > $1)
               AND (removed_at IS NULL OR removed_at > $2)",
        )
        .await?;
    Ok(c.query(&stmt, &[&since, &removed_after])
        .await?
        .iter()
        .map(token_state)
        .collect())
}

/// One user's token state, present or removed; `None` for an id that never
/// was a user's.
pub async fn token_state_of(c: &impl GenericClient, id: Uuid) -> Result<Option<TokenState>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, token_generation, disabled, removed_at, changed_at FROM users
             WHERE id = $1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&id]).await?.as_ref().map(token_state))
}

/// Key of the advisory lock that serializes creating the bootstrap admin.
const BOOTSTRAP_LOCK: i64 = 0x7465_6e64_626f_6f74; // "tendboot"

/// Takes the transaction's lock on creating the bootstrap admin, so that
/// replicas starting together create one admin, not one each. Released at
/// the end of the transaction.
pub async fn lock_bootstrap(c: &impl GenericClient) -> Result<()> {
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK])
        .await?;
    Ok(())
}

pub async fn any_exists(c: &impl GenericClient) -> Result<bool> {
    let stmt = c
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE removed_at IS NULL)")
        .await?;
    Ok(c.query_one(&stmt, &[]).await?.get(0))
}
