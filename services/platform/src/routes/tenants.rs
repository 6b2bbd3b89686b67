//! `POST /tenants`: system admins create tenants with their first admin.

use actix_web::{HttpResponse, post, web};
use serde_json::json;
use tend_core::auth::{self, Role};
use tend_core::db::audit::{self, Target};
use tend_core::db::{self, DbError, tenants, users};
use tend_core::error::ApiError;

use crate::api::{NewTenant, TenantOut, check_name, check_password, check_username};
use crate::caller::Caller;
use crate::client::Client;
use crate::state::Shared;

/// Create a tenant
///
/// Creates a tenant and its first admin user. System admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["system_admin"]))),
    tag = "tenants",
    request_body = NewTenant,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = TenantOut),
        (status = 403, description = "Not a system admin"),
        (status = 409, description = "The tenant name or the username is taken"),
        (status = 422, description = "Invalid name, username or password"),
    )
)]
#[post("/tenants")]
pub async fn create(
    state: Shared,
    caller: Caller,
    client: Client,
    body: web::Json<NewTenant>,
) -> Result<HttpResponse, ApiError> {
    caller.require_system_admin()?;
    let body = body.into_inner();
    check_name("name", &body.name)?;
    check_username(&body.admin.username)?;
    check_password(&body.admin.password)?;
    let password = body.admin.password;
    let hash = state
        .hash_work(move |m| auth::hash_password_in(m, &password))
        .await?;

    let tenant = db::in_tx(&state.pool, async |tx| {
        let tenant = tenants::create(tx, &body.name).await?;
        users::create(
            tx,
            users::NewUser {
                tenant_id: tenant.id,
                username: &body.admin.username,
                password_hash: &hash,
                role: Role::Admin,
                is_system_admin: false,
            },
        )
        .await?;
        // In the system admin's own tenant's log: the actor's tenant is
        // where their actions are read.
        let summary = json!({"name": tenant.name, "admin": body.admin.username});
        let entry = client.audit(
            &caller,
            "tenant.create",
            Target::new("tenant", tenant.id),
            summary,
        );
        audit::record(tx, &entry).await?;
        Ok::<_, DbError>(tenant)
    })
    .await
    .map_err(conflict)?;
    tracing::info!(tenant.id = %tenant.id, "created tenant {:?}", tenant.name);
    Ok(HttpResponse::Created().json(TenantOut {
        id: tenant.id,
        name: tenant.name,
    }))
}

fn conflict(e: DbError) -> ApiError {
    match e.unique_violation() {
        Some("tenants_name_key") => ApiError::Conflict("a tenant with this name exists".into()),
        Some("users_username_key") => ApiError::Conflict("this username is taken".into()),
        _ => e.into(),
    }
}
