//! `POST /users`: tenant admins add users with a role.

use actix_web::{HttpResponse, post, web};
use tend_core::auth::{self, Role};
use tend_core::db::{self, users};
use tend_core::error::ApiError;

use crate::api::{NewUser, UserOut, check_password, check_username};
use crate::caller::Caller;
use crate::state::Shared;

/// Create a user
///
/// Adds a user to the caller's tenant with the role `admin`, `operator`
/// (queues and cancels commands) or `viewer` (reads only). Admins only.
#[utoipa::path(
    tag = "users",
    request_body = NewUser,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = UserOut),
        (status = 403, description = "Not an admin"),
        (status = 409, description = "The username is taken"),
        (status = 422, description = "Invalid username, password or role"),
    )
)]
#[post("/users")]
pub async fn create(
    state: Shared,
    caller: Caller,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.into_inner();
    check_username(&body.username)?;
    check_password(&body.password)?;
    let password = body.password;
    let hash = state
        .hash_work(move |m| auth::hash_password_in(m, &password))
        .await?;

    let user = db::with_client(&state.pool, async |client| {
        users::create(
            client,
            users::NewUser {
                tenant_id: caller.tenant(),
                username: &body.username,
                password_hash: &hash,
                role: body.role,
                is_system_admin: false,
            },
        )
        .await
    })
    .await
    .map_err(|e| match e.unique_violation() {
        Some("users_username_key") => ApiError::Conflict("this username is taken".into()),
        _ => e.into(),
    })?;
    tracing::info!(user.id = %user.id, role = %user.role, "created user {}", user.username);
    Ok(HttpResponse::Created().json(UserOut {
        id: user.id,
        username: user.username,
        role: user.role,
    }))
}
