//! Admin users: a tenant, a role, an argon2 password hash.

use chrono::{DateTime, Utc};
use uuid::Uuid;

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
    })
}

pub async fn find_credentials(
    c: &impl GenericClient,
    username: &str,
) -> Result<Option<Credentials>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, tenant_id, username, role, is_system_admin, created_at, password_hash
             FROM users WHERE username = $1",
        )
        .await?;
    let Some(r) = c.query_opt(&stmt, &[&username]).await? else {
        return Ok(None);
    };
    let role: String = r.get(3);
    Ok(Some(Credentials {
        user: User {
            id: r.get(0),
            tenant_id: r.get(1),
            username: r.get(2),
            role: role
                .parse()
                .map_err(|_| DbError::Corrupt(format!("user role {role:?}")))?,
            is_system_admin: r.get(4),
            created_at: r.get(5),
        },
        password_hash: r.get(6),
    }))
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
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM users)")
        .await?;
    Ok(c.query_one(&stmt, &[]).await?.get(0))
}
