//! Users: tenant admins add, list, change and remove them. A change of
//! role, password or state, and a removal, ends the user's sessions on
//! every replica (see [`crate::sessions`]). A tenant always keeps an
//! enabled admin.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use serde_json::{Map, Value, json};
use tend_core::auth::{self, Role};
use tend_core::db::audit::{self, Target};
use tend_core::db::users::{self, TokenState};
use tend_core::db::{self, DbError};
use tend_core::error::ApiError;
use uuid::Uuid;

use super::{PageQuery, page_params};
use crate::api::{NewUser, UserChange, UserList, UserOut, check_password, check_username};
use crate::caller::Caller;
use crate::client::Client;
use crate::state::Shared;

/// Create a user
///
/// Adds a user to the caller's tenant with the role `admin`, `operator`
/// (queues and cancels commands) or `viewer` (reads only). The password
/// must be 12 to 1024 characters and not among the most common passwords.
/// Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
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
    client: Client,
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

    let user = db::in_tx(&state.pool, async |tx| {
        let user = users::create(
            tx,
            users::NewUser {
                tenant_id: caller.tenant(),
                username: &body.username,
                password_hash: &hash,
                role: body.role,
                is_system_admin: false,
            },
        )
        .await?;
        let summary = json!({"username": user.username, "role": user.role});
        audit::record(
            tx,
            &client.audit(
                &caller,
                "user.create",
                Target::new("user", user.id),
                summary,
            ),
        )
        .await?;
        Ok::<_, DbError>(user)
    })
    .await
    .map_err(|e| match e.unique_violation() {
        Some("users_username_key") => ApiError::Conflict("this username is taken".into()),
        _ => e.into(),
    })?;
    state.sessions.note(token_state(&user, false));
    tracing::info!(user.id = %user.id, role = %user.role, "created user {}", user.username);
    Ok(HttpResponse::Created().json(UserOut::from(user)))
}

/// List users
///
/// The tenant's users, newest first. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "users",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of users", body = UserList),
        (status = 403, description = "Not an admin"),
    )
)]
#[get("/users")]
pub async fn list(
    state: Shared,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let (limit, cursor) = page_params(query.limit, query.cursor.as_deref())?;
    let page = db::with_client(&state.pool, async |client| {
        users::list(client, caller.tenant(), cursor, limit).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(UserList {
        items: page.items.into_iter().map(UserOut::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Change a user
///
/// `{role?, disabled?, password?}`: at least one. Any change ends the
/// user's sessions on every replica within 2 seconds; a disabled user
/// cannot log in. The tenant's last enabled admin cannot be demoted or
/// disabled (409). Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "users",
    request_body = UserChange,
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Changed", body = UserOut),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user in this tenant"),
        (status = 409, description = "It would leave the tenant without an enabled admin"),
        (status = 422, description = "Nothing to change, or a password outside the policy"),
    )
)]
#[patch("/users/{id}")]
pub async fn update(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
    body: web::Json<UserChange>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.into_inner();
    if body.role.is_none() && body.disabled.is_none() && body.password.is_none() {
        return Err(ApiError::Unprocessable(
            "give at least one of role, disabled and password".into(),
        ));
    }
    let hash = match body.password {
        Some(password) => {
            check_password(&password)?;
            Some(
                state
                    .hash_work(move |m| auth::hash_password_in(m, &password))
                    .await?,
            )
        }
        None => None,
    };
    let change = users::Change {
        role: body.role,
        disabled: body.disabled,
        password_hash: hash.as_deref(),
    };

    let user = db::in_tx(&state.pool, async |tx| {
        users::lock_tenant(tx, caller.tenant()).await?;
        let before = users::get(tx, caller.tenant(), *id)
            .await?
            .ok_or_else(no_such_user)?;
        let leaves_admin_role = change.role.is_some_and(|r| r != Role::Admin);
        let disables = change.disabled == Some(true);
        if before.role == Role::Admin
            && !before.disabled
            && (leaves_admin_role || disables)
            && users::enabled_admins(tx, caller.tenant()).await? <= 1
        {
            return Err(last_admin());
        }
        let after = users::update(tx, caller.tenant(), *id, &change)
            .await?
            .ok_or_else(no_such_user)?;
        let summary = summary(&before, &after, change.password_hash.is_some());
        audit::record(
            tx,
            &client.audit(
                &caller,
                "user.update",
                Target::new("user", after.id),
                summary,
            ),
        )
        .await?;
        Ok::<_, ApiError>(after)
    })
    .await?;
    state.sessions.note(token_state(&user, false));
    tracing::info!(user.id = %user.id, role = %user.role, disabled = user.disabled,
        "changed user {}; their sessions end", user.username);
    Ok(HttpResponse::Ok().json(UserOut::from(user)))
}

/// Remove a user
///
/// Its sessions end on every replica within 2 seconds; what it created
/// stays. The tenant's last enabled admin cannot be removed (409). Admins
/// only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user in this tenant"),
        (status = 409, description = "It is the tenant's last enabled admin"),
    )
)]
#[delete("/users/{id}")]
pub async fn remove(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let user = db::in_tx(&state.pool, async |tx| {
        users::lock_tenant(tx, caller.tenant()).await?;
        let user = users::get(tx, caller.tenant(), *id)
            .await?
            .ok_or_else(no_such_user)?;
        if user.role == Role::Admin
            && !user.disabled
            && users::enabled_admins(tx, caller.tenant()).await? <= 1
        {
            return Err(last_admin());
        }
        if !users::remove(tx, caller.tenant(), user.id).await? {
            return Err(no_such_user());
        }
        let summary = json!({"username": user.username, "role": user.role});
        audit::record(
            tx,
            &client.audit(
                &caller,
                "user.delete",
                Target::new("user", user.id),
                summary,
            ),
        )
        .await?;
        Ok::<_, ApiError>(user)
    })
    .await?;
    state.sessions.note(TokenState {
        generation: user.token_generation + 1,
        ..token_state(&user, true)
    });
    tracing::info!(user.id = %user.id, "removed user {}; their sessions end", user.username);
    Ok(HttpResponse::NoContent().finish())
}

fn no_such_user() -> ApiError {
    ApiError::NotFound("no such user".into())
}

fn last_admin() -> ApiError {
    ApiError::Conflict(
        "this is the tenant's last enabled admin; make another user admin first".into(),
    )
}

fn token_state(u: &users::User, removed: bool) -> TokenState {
    TokenState {
        id: u.id,
        generation: u.token_generation,
        disabled: u.disabled,
        removed,
        changed_at: chrono::Utc::now(),
    }
}

/// What a change changed, for the audit log: `{field: {from, to}}`, and
/// `password: "changed"`, never the password or its hash.
fn summary(before: &users::User, after: &users::User, password: bool) -> Value {
    let mut m = Map::new();
    if before.role != after.role {
        m.insert(
            "role".into(),
            json!({"from": before.role, "to": after.role}),
        );
    }
    if before.disabled != after.disabled {
        m.insert(
            "disabled".into(),
            json!({"from": before.disabled, "to": after.disabled}),
        );
    }
    if password {
        m.insert("password".into(), json!("changed"));
    }
    Value::Object(m)
}
