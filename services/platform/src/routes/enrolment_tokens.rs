//! Enrolment tokens: with one, a device's agent that has no identity yet
//! enrols itself at tend-sync (`POST /device/v1/enrol`) and gets its id and
//! secret (seed 003). Shown once, stored hashed, optionally restricted to a
//! device type, a number of uses and an expiry; revocable.

use actix_web::{HttpResponse, delete, get, post, web};
use serde_json::json;
use tend_core::auth::{self, Role};
use tend_core::db::audit::{self, Target};
use tend_core::db::{self, enrolment};
use tend_core::error::ApiError;
use uuid::Uuid;

use super::{PageQuery, page_params};
use crate::api::{
    DEFAULT_ENROLMENT_EXPIRES_IN_S, EnrolmentTokenList, EnrolmentTokenOut,
    MAX_ENROLMENT_EXPIRES_IN_S, MAX_ENROLMENT_USES, NewEnrolmentToken, check_device_type,
    check_labels, check_seconds,
};
use crate::caller::Caller;
use crate::client::Client;
use crate::state::Shared;

/// Create an enrolment token
///
/// The token (`tend_enrol_…`) is in this answer only; tend keeps its
/// hash. A device's agent configured with it (`enrolment_token`) enrols
/// itself once and waits `pending` until an admin accepts it, or is
/// accepted at once with `auto_accept`. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "enrolment",
    request_body = NewEnrolmentToken,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; `token` is shown once", body = EnrolmentTokenOut),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "Invalid device type, labels, uses or expiry"),
    )
)]
#[post("/enrolment-tokens")]
pub async fn create(
    state: Shared,
    caller: Caller,
    client: Client,
    body: web::Json<NewEnrolmentToken>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.into_inner();
    if let Some(t) = &body.device_type {
        check_device_type(t)?;
    }
    check_labels(&body.labels)?;
    if let Some(uses) = body.uses
        && !(1..=MAX_ENROLMENT_USES).contains(&uses)
    {
        return Err(ApiError::Unprocessable(format!(
            "uses must be a whole number from 1 to {MAX_ENROLMENT_USES}"
        )));
    }
    let expires_in_s = check_seconds(
        "expires_in_s",
        body.expires_in_s,
        DEFAULT_ENROLMENT_EXPIRES_IN_S,
        MAX_ENROLMENT_EXPIRES_IN_S,
    )?;
    let labels = serde_json::to_value(&body.labels).map_err(|e| ApiError::Internal(e.into()))?;
    let token = auth::new_enrolment_token();
    let hash = auth::hash_device_secret(&token);
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(expires_in_s.into());

    let created = db::in_tx(&state.pool, async |tx| {
        let created = enrolment::create(
            tx,
            enrolment::NewToken {
                tenant_id: caller.tenant(),
                token_sha256: &hash,
                device_type: body.device_type.as_deref(),
                labels: &labels,
                uses: body.uses,
                auto_accept: body.auto_accept,
                expires_at,
                created_by: caller.user(),
            },
        )
        .await?;
        let summary = json!({
            "device_type": created.device_type,
            "labels": created.labels,
            "uses": created.uses,
            "auto_accept": created.auto_accept,
            "expires_at": created.expires_at,
        });
        audit::record(
            tx,
            &client.audit(
                &caller,
                "enrolment_token.create",
                Target::new("enrolment_token", created.id),
                summary,
            ),
        )
        .await?;
        Ok::<_, db::DbError>(created)
    })
    .await?;
    tracing::info!(enrolment_token.id = %created.id, "created enrolment token {}", created.id);
    Ok(HttpResponse::Created().json(EnrolmentTokenOut {
        token: Some(token),
        ..EnrolmentTokenOut::from(created)
    }))
}

/// List enrolment tokens
///
/// The tenant's enrolment tokens, newest first, revoked and expired ones
/// included, never the tokens themselves. Pages with `limit` and `cursor`.
/// Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "enrolment",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of tokens", body = EnrolmentTokenList),
        (status = 400, description = "Invalid limit or cursor"),
        (status = 403, description = "Not an admin"),
    )
)]
#[get("/enrolment-tokens")]
pub async fn list(
    state: Shared,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let (limit, after) = page_params(query.limit, query.cursor.as_deref())?;
    let page = db::with_client(&state.pool, async |client| {
        enrolment::list(client, caller.tenant(), after, limit).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(EnrolmentTokenList {
        items: page
            .items
            .into_iter()
            .map(EnrolmentTokenOut::from)
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Revoke an enrolment token
///
/// It enrols no device from now on; the devices it enrolled keep their
/// identity. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "enrolment",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such active token in this tenant"),
    )
)]
#[delete("/enrolment-tokens/{id}")]
pub async fn revoke(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let revoked = db::in_tx(&state.pool, async |tx| {
        if !enrolment::revoke(tx, caller.tenant(), *id).await? {
            return Ok(false);
        }
        audit::record(
            tx,
            &client.audit(
                &caller,
                "enrolment_token.revoke",
                Target::new("enrolment_token", *id),
                json!({}),
            ),
        )
        .await?;
        Ok::<_, db::DbError>(true)
    })
    .await?;
    if !revoked {
        return Err(ApiError::NotFound("no such enrolment token".into()));
    }
    tracing::info!(enrolment_token.id = %*id, "revoked enrolment token {}", *id);
    Ok(HttpResponse::NoContent().finish())
}
