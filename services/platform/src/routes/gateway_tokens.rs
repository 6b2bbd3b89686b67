//! Gateway tokens: credentials with which a tenant's gateway speaks
//! hawkBit DDI for any of the tenant's devices (`Authorization:
//! GatewayToken <token>` at tend-sync). Shown once, stored hashed,
//! revocable; a revoked token is refused by every sync replica within 2
//! seconds.

use actix_web::{HttpResponse, delete, get, post, web};
use serde_json::json;
use tend_core::auth::{self, Role};
use tend_core::db::audit::{self, Target};
use tend_core::db::{self, ddi};
use tend_core::error::ApiError;
use uuid::Uuid;

use crate::api::{GatewayTokenList, GatewayTokenOut, NewGatewayToken, check_name};
use crate::caller::Caller;
use crate::client::Client;
use crate::state::Shared;

/// Create a gateway token
///
/// The token is in this answer only; tend keeps its hash. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "gateway-tokens",
    request_body = NewGatewayToken,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; `token` is shown once", body = GatewayTokenOut),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "Invalid name"),
    )
)]
#[post("/gateway-tokens")]
pub async fn create(
    state: Shared,
    caller: Caller,
    client: Client,
    body: web::Json<NewGatewayToken>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let name = body.into_inner().name.unwrap_or_else(|| "gateway".into());
    check_name("name", &name)?;
    // As strong as a device secret, and hashed the same way.
    let token = auth::new_device_secret();
    let hash = auth::hash_device_secret(&token);
    let created = db::in_tx(&state.pool, async |tx| {
        let created =
            ddi::create_gateway_token(tx, caller.tenant(), &name, &hash, caller.user()).await?;
        let entry = client.audit(
            &caller,
            "gateway_token.create",
            Target::new("gateway_token", created.id),
            json!({"name": name}),
        );
        audit::record(tx, &entry).await?;
        Ok::<_, db::DbError>(created)
    })
    .await?;
    tracing::info!(gateway_token.id = %created.id, "created gateway token {}", created.id);
    Ok(HttpResponse::Created().json(GatewayTokenOut {
        token: Some(token),
        ..GatewayTokenOut::from(created)
    }))
}

/// List gateway tokens
///
/// The tenant's active gateway tokens, newest first, without the tokens.
/// Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "gateway-tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The active tokens", body = GatewayTokenList),
        (status = 403, description = "Not an admin"),
    )
)]
#[get("/gateway-tokens")]
pub async fn list(state: Shared, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let tokens = db::with_client(&state.pool, async |client| {
        ddi::gateway_tokens(client, caller.tenant()).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(GatewayTokenList {
        items: tokens.into_iter().map(GatewayTokenOut::from).collect(),
    }))
}

/// Revoke a gateway token
///
/// Every sync replica refuses it within 2 seconds. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "gateway-tokens",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such active token in this tenant"),
    )
)]
#[delete("/gateway-tokens/{id}")]
pub async fn revoke(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let revoked = db::in_tx(&state.pool, async |tx| {
        let revoked = ddi::revoke_gateway_token(tx, caller.tenant(), *id).await?;
        if revoked {
            let entry = client.audit(
                &caller,
                "gateway_token.revoke",
                Target::new("gateway_token", *id),
                json!({}),
            );
            audit::record(tx, &entry).await?;
        }
        Ok::<_, db::DbError>(revoked)
    })
    .await?;
    if !revoked {
        return Err(ApiError::NotFound("no such gateway token".into()));
    }
    tracing::info!(gateway_token.id = %*id, "revoked gateway token {}", *id);
    Ok(HttpResponse::NoContent().finish())
}
