//! Tenants: the unit of isolation. Every other row belongs to one.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{GenericClient, Result};

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Inserts a tenant; a taken name is the unique violation `tenants_name_key`.
pub async fn create(c: &impl GenericClient, name: &str) -> Result<Tenant> {
    let stmt = c
        .prepare_cached("INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING created_at")
        .await?;
    let id = Uuid::new_v4();
    let row = c.query_one(&stmt, &[&id, &name]).await?;
    Ok(Tenant {
        id,
        name: name.to_owned(),
        created_at: row.get(0),
    })
}

pub async fn find_by_name(c: &impl GenericClient, name: &str) -> Result<Option<Tenant>> {
    let stmt = c
        .prepare_cached("SELECT id, name, created_at FROM tenants WHERE name = $1")
        .await?;
    Ok(c.query_opt(&stmt, &[&name]).await?.map(|r| Tenant {
        id: r.get(0),
        name: r.get(1),
        created_at: r.get(2),
    }))
}
