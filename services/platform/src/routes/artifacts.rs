//! Artifacts: software images created with their metadata, uploaded once
//! (streamed, hashed on the way), released to be offered at update
//! checks, and denied to devices they must never reach.

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, put, web};
use serde::Deserialize;
use serde_json::json;
use tend_core::auth::Role;
use tend_core::db::artifacts::{self, ArtifactStatus, Completed, Delete, Filter};
use tend_core::db::audit::{self, Target};
use tend_core::db::{self, GenericClient, devices};
use tend_core::error::ApiError;
use utoipa::IntoParams;
use uuid::Uuid;

use super::devices::no_such_device;
use super::{PageQuery, page_params};
use crate::api::{
    ArtifactList, ArtifactOut, ArtifactPatch, DenyBody, DenylistEntryOut, DenylistList,
    NewArtifact, check_new_artifact, check_reason,
};
use crate::caller::Caller;
use crate::client::Client;
use crate::state::Shared;

/// Create an artifact
///
/// Records a software image's metadata; its bytes follow with
/// `PUT /artifacts/{id}/content`. A `sha256` or `size` given here is what
/// the upload must match. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "artifacts",
    request_body = NewArtifact,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created, `pending_upload`", body = ArtifactOut),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "Invalid component, version, device types, filename, sha256 or size"),
    )
)]
#[post("/artifacts")]
pub async fn create(
    state: Shared,
    caller: Caller,
    client: Client,
    body: web::Json<NewArtifact>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.into_inner();
    let sha256 = check_new_artifact(&body)?;
    if let Some(size) = body.size
        && size as u64 > state.artifact_max_bytes
    {
        return Err(ApiError::Unprocessable(format!(
            "size is over the largest artifact this platform takes ({} bytes)",
            state.artifact_max_bytes
        )));
    }
    let artifact = db::in_tx(&state.pool, async |tx| {
        let artifact = artifacts::create(
            tx,
            artifacts::NewArtifact {
                tenant_id: caller.tenant(),
                component: &body.component,
                version: &body.version,
                device_types: &body.device_types,
                filename: body.filename.as_deref(),
                expected_sha256: sha256.as_deref(),
                expected_size: body.size,
                created_by: caller.user(),
            },
        )
        .await?;
        let summary = json!({
            "component": artifact.component,
            "version": artifact.version,
            "device_types": artifact.device_types,
        });
        let entry = client.audit(
            &caller,
            "artifact.create",
            Target::new("artifact", artifact.id),
            summary,
        );
        audit::record(tx, &entry).await?;
        Ok::<_, db::DbError>(artifact)
    })
    .await?;
    tracing::info!(artifact.id = %artifact.id, component = %artifact.component,
        version = %artifact.version,
        "created artifact {} ({} {})", artifact.id, artifact.component, artifact.version);
    Ok(HttpResponse::Created().json(ArtifactOut::from(artifact)))
}

/// Upload an artifact's bytes
///
/// The body is the image itself (`application/octet-stream`), streamed to
/// the artifact store and hashed on the way: any size up to the
/// platform's limit, never held in memory. A `sha256` or `size` declared
/// at creation that does not match is a 422, and nothing is kept. Once an
/// upload completed the artifact is `ready`, and another upload is a 409.
/// Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "artifacts",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Uploaded and `ready`", body = ArtifactOut),
        (status = 400, description = "The upload was cut short"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such artifact in this tenant"),
        (status = 409, description = "The artifact already has its bytes"),
        (status = 413, description = "Over the platform's artifact size limit"),
        (status = 422, description = "The bytes do not match the declared sha256 or size"),
        (status = 503, description = "The artifact store does not answer"),
    )
)]
#[put("/artifacts/{id}/content")]
pub async fn upload(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let artifact = find(&state, &caller, *id).await?;
    if artifact.status == ArtifactStatus::Ready {
        return Err(already_uploaded());
    }
    let limit = state.artifact_max_bytes;
    let declared_length = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit as usize));
    }
    // Each upload writes an object of its own; the first to complete is
    // recorded, so two uploads at once never mix their bytes.
    let key = format!("{}.{}", artifact.id, Uuid::new_v4());
    let stored = state.store.put_stream(&key, body, limit).await?;
    let mismatch = match (&artifact.expected_sha256, artifact.expected_size) {
        (_, Some(size)) if size as u64 != stored.size => Some(format!(
            "the upload has {} bytes, not the {size} declared",
            stored.size
        )),
        (Some(sha), _) if *sha != stored.sha256 => Some(format!(
            "the upload's sha256 is {}, not the {sha} declared",
            stored.sha256
        )),
        _ => None,
    };
    if let Some(why) = mismatch {
        discard(&state, &key).await;
        return Err(ApiError::Unprocessable(format!("{why}; nothing was kept")));
    }
    let completed = db::in_tx(&state.pool, async |tx| {
        let completed =
            artifacts::complete_upload(tx, caller.tenant(), artifact.id, &key, &stored).await?;
        if let Completed::Ready(artifact) = &completed {
            let summary = json!({"size": stored.size, "sha256": stored.sha256});
            let entry = client.audit(
                &caller,
                "artifact.upload",
                Target::new("artifact", artifact.id),
                summary,
            );
            audit::record(tx, &entry).await?;
        }
        Ok::<_, db::DbError>(completed)
    })
    .await;
    match completed {
        Ok(Completed::Ready(artifact)) => {
            tracing::info!(artifact.id = %artifact.id, size = stored.size,
                "uploaded artifact {} ({} bytes)", artifact.id, stored.size);
            Ok(HttpResponse::Ok().json(ArtifactOut::from(artifact)))
        }
        Ok(Completed::Lost) => {
            discard(&state, &key).await;
            Err(already_uploaded())
        }
        Err(e) => {
            // Whether the row was updated is unknown only if the database
            // stopped answering; the object is then kept, as the row may
            // name it.
            if !e.is_unavailable() {
                discard(&state, &key).await;
            }
            Err(e.into())
        }
    }
}

fn already_uploaded() -> ApiError {
    ApiError::Conflict("the artifact already has its bytes; create a new artifact".into())
}

/// Deletes an object nobody will record; a failure leaves an orphan
/// object, which is logged.
async fn discard(state: &Shared, key: &str) {
    if let Err(e) = state.store.delete(key).await {
        tracing::warn!(key, "cannot delete the unused object {key}: {e}");
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ArtifactQuery {
    component: Option<String>,
    device_type: Option<String>,
    /// 1 to 500, default 50.
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// List artifacts
///
/// Newest first; filters `component` and `device_type`.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "artifacts",
    security(("bearer" = [])),
    params(ArtifactQuery),
    responses(
        (status = 200, description = "A page of artifacts", body = ArtifactList),
        (status = 400, description = "Invalid limit or cursor"),
    )
)]
#[get("/artifacts")]
pub async fn list(
    state: Shared,
    caller: Caller,
    query: web::Query<ArtifactQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let (limit, after) = page_params(query.limit, query.cursor.as_deref())?;
    let filter = Filter {
        component: query.component,
        device_type: query.device_type,
    };
    let page = db::with_client(&state.pool, async |client| {
        artifacts::list(client, caller.tenant(), &filter, after, limit).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(ArtifactList {
        items: page.items.into_iter().map(ArtifactOut::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show an artifact
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "artifacts",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The artifact", body = ArtifactOut),
        (status = 404, description = "No such artifact in this tenant"),
    )
)]
#[get("/artifacts/{id}")]
pub async fn get(
    state: Shared,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ArtifactOut::from(find(&state, &caller, *id).await?)))
}

/// Release or withdraw an artifact
///
/// A released artifact is offered at the update check of every device of
/// a listed type that runs an older version of its component (never to a
/// device on its denylist). Only a `ready` artifact can be released.
/// Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "artifacts",
    request_body = ArtifactPatch,
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Changed", body = ArtifactOut),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such artifact in this tenant"),
        (status = 409, description = "Not uploaded yet"),
    )
)]
#[patch("/artifacts/{id}")]
pub async fn update(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
    body: web::Json<ArtifactPatch>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let released = body.released;
    let artifact = db::in_tx(&state.pool, async |tx| {
        let artifact = find_in(tx, &caller, *id).await?;
        if released && artifact.status != ArtifactStatus::Ready {
            return Err(ApiError::Conflict(
                "upload the artifact's bytes before releasing it".into(),
            ));
        }
        let artifact = artifacts::set_released(tx, caller.tenant(), artifact.id, released)
            .await?
            .ok_or_else(no_such_artifact)?;
        let action = if released {
            "artifact.release"
        } else {
            "artifact.withdraw"
        };
        let summary = json!({"component": artifact.component, "version": artifact.version});
        let entry = client.audit(
            &caller,
            action,
            Target::new("artifact", artifact.id),
            summary,
        );
        audit::record(tx, &entry).await?;
        Ok::<_, ApiError>(artifact)
    })
    .await?;
    tracing::info!(artifact.id = %artifact.id, released,
        "artifact {} {}", artifact.id, if released { "released" } else { "withdrawn" });
    Ok(HttpResponse::Ok().json(ArtifactOut::from(artifact)))
}

/// Delete an artifact
///
/// Deletes the artifact and its bytes. Commands that used it keep their
/// history. Refused while an open command uses it. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "artifacts",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such artifact in this tenant"),
        (status = 409, description = "An open command uses it"),
    )
)]
#[delete("/artifacts/{id}")]
pub async fn remove(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let deleted = db::in_tx(&state.pool, async |tx| {
        let deleted = artifacts::delete(tx, caller.tenant(), *id).await?;
        if let Delete::Deleted(_) = &deleted {
            let entry = client.audit(
                &caller,
                "artifact.delete",
                Target::new("artifact", *id),
                json!({}),
            );
            audit::record(tx, &entry).await?;
        }
        Ok::<_, db::DbError>(deleted)
    })
    .await?;
    match deleted {
        Delete::Deleted(key) => {
            if let Some(key) = key {
                discard(&state, &key).await;
            }
            tracing::info!(artifact.id = %id, "deleted artifact {id}");
            Ok(HttpResponse::NoContent().finish())
        }
        Delete::InUse => Err(ApiError::Conflict(
            "an open command uses this artifact; cancel it or wait for it to end".into(),
        )),
        Delete::NotFound => Err(no_such_artifact()),
    }
}

/// List an artifact's denylist
///
/// The devices this artifact is never offered or sent to, newest first.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "artifacts",
    security(("bearer" = [])),
    params(("id" = Uuid, Path), PageQuery),
    responses(
        (status = 200, description = "A page of denylist entries", body = DenylistList),
        (status = 404, description = "No such artifact in this tenant"),
    )
)]
#[get("/artifacts/{id}/denylist")]
pub async fn denylist(
    state: Shared,
    caller: Caller,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = page_params(query.limit, query.cursor.as_deref())?;
    let page = db::with_client(&state.pool, async |client| {
        let artifact = find_in(client, &caller, *id).await?;
        Ok::<_, ApiError>(artifacts::denylist(client, artifact.id, after, limit).await?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(DenylistList {
        items: page.items.into_iter().map(DenylistEntryOut::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show a denylist entry
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "artifacts",
    security(("bearer" = [])),
    params(("id" = Uuid, Path), ("device_id" = Uuid, Path)),
    responses(
        (status = 200, description = "The device is on the denylist", body = DenylistEntryOut),
        (status = 404, description = "No such artifact or device in this tenant, or not on the denylist"),
    )
)]
#[get("/artifacts/{id}/denylist/{device_id}")]
pub async fn denylist_entry(
    state: Shared,
    caller: Caller,
    ids: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, device_id) = ids.into_inner();
    let entry = db::with_client(&state.pool, async |client| {
        let (artifact, device) = find_pair(client, &caller, id, device_id).await?;
        artifacts::denylist_entry(client, artifact, device)
            .await?
            .ok_or_else(|| ApiError::NotFound("the device is not on this denylist".into()))
    })
    .await?;
    Ok(HttpResponse::Ok().json(DenylistEntryOut::from(entry)))
}

/// Deny an artifact to a device
///
/// The artifact is never offered to the device at an update check, and an
/// explicit `upgrade` to it is refused. 201 when added, 200 when the
/// device was already on the denylist (the entry is unchanged). Admins
/// only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "artifacts",
    request_body = DenyBody,
    security(("bearer" = [])),
    params(("id" = Uuid, Path), ("device_id" = Uuid, Path)),
    responses(
        (status = 201, description = "Added", body = DenylistEntryOut),
        (status = 200, description = "Already on the denylist", body = DenylistEntryOut),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such artifact or device in this tenant"),
        (status = 422, description = "Invalid reason"),
    )
)]
#[put("/artifacts/{id}/denylist/{device_id}")]
pub async fn deny(
    state: Shared,
    caller: Caller,
    client: Client,
    ids: web::Path<(Uuid, Uuid)>,
    body: Option<web::Json<DenyBody>>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let (id, device_id) = ids.into_inner();
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    check_reason(body.reason.as_deref())?;
    // A device already on the denylist changes nothing, so leaves no row.
    let (entry, added) = db::in_tx(&state.pool, async |tx| {
        let (artifact, device) = find_pair(tx, &caller, id, device_id).await?;
        let (entry, added) = artifacts::deny(
            tx,
            artifact,
            device,
            body.reason.as_deref(),
            Some(caller.user()),
        )
        .await?;
        if added {
            let summary = json!({"device_id": device, "reason": body.reason});
            let row = client.audit(
                &caller,
                "denylist.add",
                Target::new("artifact", artifact),
                summary,
            );
            audit::record(tx, &row).await?;
        }
        Ok::<_, ApiError>((entry, added))
    })
    .await?;
    if added {
        tracing::info!(artifact.id = %id, device.id = %device_id,
            "artifact {id} denied to device {device_id}");
        Ok(HttpResponse::Created().json(DenylistEntryOut::from(entry)))
    } else {
        Ok(HttpResponse::Ok().json(DenylistEntryOut::from(entry)))
    }
}

/// Allow an artifact to a device again
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "artifacts",
    security(("bearer" = [])),
    params(("id" = Uuid, Path), ("device_id" = Uuid, Path)),
    responses(
        (status = 204, description = "Removed from the denylist"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such artifact or device in this tenant, or not on the denylist"),
    )
)]
#[delete("/artifacts/{id}/denylist/{device_id}")]
pub async fn allow(
    state: Shared,
    caller: Caller,
    client: Client,
    ids: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let (id, device_id) = ids.into_inner();
    let removed = db::in_tx(&state.pool, async |tx| {
        let (artifact, device) = find_pair(tx, &caller, id, device_id).await?;
        let removed = artifacts::allow(tx, artifact, device).await?;
        if removed {
            let entry = client.audit(
                &caller,
                "denylist.remove",
                Target::new("artifact", artifact),
                json!({"device_id": device}),
            );
            audit::record(tx, &entry).await?;
        }
        Ok::<_, ApiError>(removed)
    })
    .await?;
    if !removed {
        return Err(ApiError::NotFound(
            "the device is not on this denylist".into(),
        ));
    }
    tracing::info!(artifact.id = %id, device.id = %device_id,
        "artifact {id} allowed to device {device_id} again");
    Ok(HttpResponse::NoContent().finish())
}

fn no_such_artifact() -> ApiError {
    ApiError::NotFound("no such artifact".into())
}

/// The caller's tenant's artifact, or 404.
async fn find(state: &Shared, caller: &Caller, id: Uuid) -> Result<artifacts::Artifact, ApiError> {
    db::with_client(&state.pool, async |client| {
        find_in(client, caller, id).await
    })
    .await
}

async fn find_in(
    c: &impl GenericClient,
    caller: &Caller,
    id: Uuid,
) -> Result<artifacts::Artifact, ApiError> {
    artifacts::get(c, caller.tenant(), id)
        .await?
        .ok_or_else(no_such_artifact)
}

/// The ids of the caller's tenant's artifact and device, or 404.
async fn find_pair(
    c: &impl GenericClient,
    caller: &Caller,
    artifact: Uuid,
    device: Uuid,
) -> Result<(Uuid, Uuid), ApiError> {
    let artifact = find_in(c, caller, artifact).await?;
    let device = devices::get(c, caller.tenant(), device)
        .await?
        .ok_or_else(no_such_device)?;
    Ok((artifact.id, device.id))
}
