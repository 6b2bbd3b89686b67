//! Commands: queue one for a device, list and show them, cancel a queued one.

use actix_web::{HttpResponse, get, post, web};
use tend_core::auth::Role;
use tend_core::db;
use tend_core::db::audit::{self, Target};
use tend_core::db::commands::{self, Cancel};
use tend_core::db::idempotency as idem;
use tend_core::error::ApiError;
use tend_core::http;
use uuid::Uuid;

use super::devices::{find as find_device, no_such_device};
use super::{PageQuery, page_params};
use crate::api::{CheckedCommand, CommandList, CommandOut, NewCommand};
use crate::caller::Caller;
use crate::client::Client;
use crate::idempotency;
use crate::software;
use crate::state::Shared;
use tend_core::db::devices;

/// Queue a command
///
/// Queues a command for a device. The device learns of it at its next
/// heartbeat. Kinds: `reboot` and `shutdown` (params `{}`), and
/// `log_query` (params `{source, since?, until?, pattern?, max_lines?}`:
/// `source` names one of the agent's log sources or `operations`; `since`
/// and `until` are inclusive RFC 3339 times; `pattern` a regular
/// expression; `max_lines` 1 to 10000, default 1000). Admins and operators.
///
/// With an `Idempotency-Key` header, the same key and the same request
/// within 24 hours answer the first answer again (the same command, with
/// `Idempotent-Replayed: true`), and the same key with another request is
/// a 422: a client whose answer was lost may simply ask again.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator"]))),
    tag = "commands",
    request_body = NewCommand,
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The device"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters, unique per request the client means"),
    ),
    responses(
        (status = 201, description = "Queued", body = CommandOut),
        (status = 400, description = "An invalid Idempotency-Key"),
        (status = 403, description = "A viewer may not queue commands"),
        (status = 404, description = "No such device in this tenant"),
        (status = 409, description = "The device is pending or rejected: it takes no commands"),
        (status = 422, description = "Unknown kind, wrong params, timeouts out of range, or an Idempotency-Key used for another request"),
    )
)]
#[post("/devices/{id}/commands")]
pub async fn create(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
    body: web::Json<NewCommand>,
    req: actix_web::HttpRequest,
    request_id: tracing_actix_web::RequestId,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin, Role::Operator])?;
    let body = body.into_inner();
    let keyed = idempotency::keyed(&req, &format!("POST /devices/{id}/commands"), &body)?;
    let CheckedCommand {
        params,
        checked,
        timeout_s,
        expires_in_s,
    } = body.check()?;

    // The caller's W3C trace if it sent one, else this request's id: the
    // command carries it through every service's logs.
    let trace_id = http::trace_id(&req).unwrap_or_else(|| request_id.to_string().replace('-', ""));

    let created = db::in_tx(&state.pool, async |tx| {
        // The key first: a concurrent request with it waits here.
        if let Some(k) = &keyed {
            match idem::claim(tx, k.scope(&caller), &k.fingerprint).await? {
                idem::Claim::Fresh => {}
                idem::Claim::Mismatch => return Err(idempotency::mismatch()),
                idem::Claim::Replay(answer) => return Ok(Err(answer)),
            }
        }
        let device = devices::get_locked(tx, caller.tenant(), *id)
            .await?
            .ok_or_else(no_such_device)?;
        if device.admission != devices::Admission::Accepted {
            return Err(ApiError::Conflict(format!(
                "the device is {}: only an accepted device takes commands",
                device.admission.as_str()
            )));
        }
        let resolved = software::resolve(tx, &device, checked, params).await?;
        let command = commands::create(
            tx,
            commands::NewCommand {
                tenant_id: caller.tenant(),
                device_id: device.id,
                kind: &body.kind,
                params: &resolved.params,
                timeout_s,
                expires_in_s,
                created_by: Some(caller.user()),
                trace_id: Some(&trace_id),
                artifact_id: resolved.artifact_id,
                component: resolved.component.as_deref(),
            },
            &state.signer,
        )
        .await
        .map_err(|e| match e.unique_violation() {
            Some("commands_open_component_key") => ApiError::Conflict(format!(
                "an upgrade or restore of {} is already open for this device; \
                 cancel it or wait for it to end",
                resolved.component.as_deref().unwrap_or("this component")
            )),
            _ => e.into(),
        })?;
        let summary = serde_json::json!({"device_id": device.id, "kind": command.kind});
        let entry = client.audit(
            &caller,
            "command.create",
            Target::new("command", command.id),
            summary,
        );
        audit::record(tx, &entry).await?;
        if let Some(k) = &keyed {
            let answer = idem::Answer {
                status: 201,
                body: serde_json::to_value(CommandOut::from(command.clone()))
                    .map_err(|e| ApiError::Internal(e.into()))?,
                nonce: None,
                secrets_key: None,
            };
            idem::store(tx, k.scope(&caller), &answer).await?;
        }
        Ok::<_, ApiError>(Ok((device, command)))
    })
    .await;
    let (device, command) = match created? {
        Ok(done) => done,
        Err(answer) => {
            tracing::info!(key = ?keyed.as_ref().map(|k| &k.key),
                "answered a command request again for its idempotency key");
            return Ok(idempotency::replay(answer.status, &answer.body));
        }
    };
    metrics::counter!("tend_commands_queued_total", "kind" => command.kind.clone()).increment(1);
    tracing::info!(command.id = %command.id, device.id = %device.id, kind = %command.kind,
        trace_id = %trace_id,
        "queued {} command {} for device {}", command.kind, command.id, device.id);
    Ok(HttpResponse::Created().json(CommandOut::from(command)))
}

/// List a device's commands
///
/// Newest first.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The device"), PageQuery),
    responses(
        (status = 200, description = "A page of commands", body = CommandList),
        (status = 404, description = "No such device in this tenant"),
    )
)]
#[get("/devices/{id}/commands")]
pub async fn list_for_device(
    state: Shared,
    caller: Caller,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = page_params(query.limit, query.cursor.as_deref())?;
    let page = db::with_client(&state.pool, async |client| {
        let device = find_device(client, &caller, *id).await?;
        Ok::<_, ApiError>(
            commands::list_for_device(client, caller.tenant(), device.id, after, limit).await?,
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(CommandList {
        items: page.items.into_iter().map(CommandOut::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show a command
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The command", body = CommandOut),
        (status = 404, description = "No such command in this tenant"),
    )
)]
#[get("/commands/{id}")]
pub async fn get(
    state: Shared,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let command = find_command(&state, &caller, *id).await?;
    Ok(HttpResponse::Ok().json(CommandOut::from(command)))
}

/// Download a command's output
///
/// The `output` of the command's result as plain text (a log query's
/// matching lines, say), for files too large to read inside JSON.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The output", content_type = "text/plain", body = String),
        (status = 404, description = "No such command in this tenant, or no output (yet)"),
    )
)]
#[get("/commands/{id}/output")]
pub async fn output(
    state: Shared,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let command = find_command(&state, &caller, *id).await?;
    let text = command
        .result
        .as_ref()
        .and_then(|r| r.get("output"))
        .and_then(|o| o.as_str())
        .ok_or_else(|| ApiError::NotFound("the command has no output (yet)".into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{}.txt\"", command.id),
        ))
        .body(text.to_owned()))
}

/// Cancel a command
///
/// Cancels a command that is still `queued`. Once the device has received
/// it, cancelling is a 409. Admins and operators.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator"]))),
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Cancelled", body = CommandOut),
        (status = 403, description = "A viewer may not cancel commands"),
        (status = 404, description = "No such command in this tenant"),
        (status = 409, description = "The command was already delivered or ended"),
    )
)]
#[post("/commands/{id}/cancel")]
pub async fn cancel(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin, Role::Operator])?;
    let outcome = db::in_tx(&state.pool, async |tx| {
        let outcome = commands::cancel(tx, caller.tenant(), *id).await?;
        if let Cancel::Cancelled(command) = &outcome {
            let summary = serde_json::json!({"device_id": command.device_id, "kind": command.kind});
            let entry = client.audit(
                &caller,
                "command.cancel",
                Target::new("command", command.id),
                summary,
            );
            audit::record(tx, &entry).await?;
        }
        Ok::<_, db::DbError>(outcome)
    })
    .await?;
    match outcome {
        Cancel::Cancelled(command) => {
            tracing::info!(command.id = %command.id, "cancelled command {}", command.id);
            Ok(HttpResponse::Ok().json(CommandOut::from(command)))
        }
        Cancel::TooLate(status) => Err(ApiError::Conflict(format!(
            "the command is {status}; only a queued command can be cancelled"
        ))),
        Cancel::NotFound => Err(no_such_command()),
    }
}

fn no_such_command() -> ApiError {
    ApiError::NotFound("no such command".into())
}

/// The caller's tenant's command, or 404.
async fn find_command(
    state: &Shared,
    caller: &Caller,
    id: Uuid,
) -> Result<commands::Command, ApiError> {
    db::with_client(&state.pool, async |client| {
        commands::get(client, caller.tenant(), id).await
    })
    .await?
    .ok_or_else(no_such_command)
}
