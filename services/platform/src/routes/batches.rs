//! Command batches: one command for every device a selector matches, and
//! the batch's progress.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use actix_web::{HttpResponse, get, post, web};
use serde_json::Value;
use tend_core::auth::Role;
use tend_core::db::audit::{self, Target};
use tend_core::db::batches::{self, Candidate};
use tend_core::db::devices::{Admission, Filter, Presence};
use tend_core::db::idempotency as idem;
use tend_core::db::{self, GenericClient};
use tend_core::error::ApiError;
use tend_core::http;
use tend_proto::device::Instruction;
use uuid::Uuid;

use crate::api::{
    CheckedCommand, CommandBatchCreated, CommandBatchOut, CommandSelector, MAX_SELECTOR_IDS,
    NewCommandBatch, check_device_type, check_labels,
};
use crate::caller::Caller;
use crate::client::Client;
use crate::idempotency;
use crate::software;
use crate::state::Shared;

/// How long a batch may take, reading and signing included. A batch for
/// 100,000 devices commits in a few seconds; the request deadline of
/// single-row routes would cut a slow one off just before its commit.
const BATCH_DEADLINE: Duration = Duration::from_secs(60);

/// Commands signed and written together: a batch of 100,000 devices is
/// five parts, each announced by two `commands.queued` events.
const PART: usize = 2 * tend_proto::event::DEVICES_PER_EVENT;

/// Queue a command for many devices
///
/// Queues the same command for every device of the tenant that the
/// selector matches: every condition given must hold (`labels`: each
/// pair). **At least one condition is required**: an empty selector is a
/// 422, so that `{}` sent by mistake never reaches the whole fleet. Ids of
/// other tenants, or unknown ids, are never selected. The command is
/// checked as `POST /devices/{id}/commands` checks it, and each device's
/// command is signed for that device.
///
/// `queued` is below `matched` when devices cannot take the command; they
/// are counted in `skipped` by reason. A restore from the cloud must name
/// its version here. With an `Idempotency-Key` header, the same key and
/// request within 24 hours answer the first batch again. Admins and
/// operators.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator"]))),
    tag = "commands",
    request_body = NewCommandBatch,
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters, unique per request the client means"),
    ),
    responses(
        (status = 201, description = "Queued", body = CommandBatchCreated),
        (status = 400, description = "An invalid Idempotency-Key"),
        (status = 403, description = "A viewer may not queue commands"),
        (status = 422, description = "An empty selector, no device matched, an invalid command, or an Idempotency-Key used for another request"),
    )
)]
#[post("/commands/bulk")]
pub async fn create(
    state: Shared,
    caller: Caller,
    client: Client,
    body: web::Json<NewCommandBatch>,
    req: actix_web::HttpRequest,
    request_id: tracing_actix_web::RequestId,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin, Role::Operator])?;
    let body = body.into_inner();
    let keyed = idempotency::keyed(&req, "POST /commands/bulk", &body)?;
    let command = body.command.check()?;
    let (filter, ids) = selection(&body.selector)?;
    let trace_id = http::trace_id(&req).unwrap_or_else(|| request_id.to_string().replace('-', ""));
    let selector = to_value(&body.selector)?;
    let request = to_value(&body.command)?;

    let created = db::in_tx_by(&state.pool, BATCH_DEADLINE, async |tx| {
        if let Some(k) = &keyed {
            match idem::claim(tx, k.scope(&caller), &k.fingerprint).await? {
                idem::Claim::Fresh => {}
                idem::Claim::Mismatch => return Err(idempotency::mismatch()),
                idem::Claim::Replay(answer) => return Ok(Err(answer)),
            }
        }
        let started = std::time::Instant::now();
        batches::lock_tenant(tx, caller.tenant()).await?;
        let candidates = batches::select(tx, caller.tenant(), &filter, ids.as_deref()).await?;
        if candidates.is_empty() {
            return Err(ApiError::Unprocessable(
                "no device of this tenant matches the selector: nothing was queued".into(),
            ));
        }
        software::check_batchable(tx, caller.tenant(), &command.checked).await?;
        let plan = plan(tx, caller.tenant(), &command, &candidates).await?;

        let batch_id = Uuid::new_v4();
        let created_at = batches::create(
            tx,
            batches::NewBatch {
                id: batch_id,
                tenant_id: caller.tenant(),
                created_by: Some(caller.user()),
                selector: &selector,
                command: &request,
                matched: candidates.len() as i64,
            },
        )
        .await?;
        let expires_at = created_at + chrono::Duration::seconds(command.expires_in_s.into());
        let selected = started.elapsed();
        let shared = batches::Shared {
            batch_id,
            tenant_id: caller.tenant(),
            kind: &body.command.kind,
            created_at,
            expires_at,
            timeout_s: command.timeout_s,
            created_by: Some(caller.user()),
            trace_id: Some(&trace_id),
            component: plan.component.as_deref(),
            key_id: state.signer.key_id(),
        };
        let instructions = |part: &[(Uuid, usize)]| -> Vec<(Instruction, Uuid)> {
            part.iter()
                .map(|&(device, group)| {
                    let instruction = Instruction {
                        id: Uuid::new_v4(),
                        kind: body.command.kind.clone(),
                        params: plan.groups[group].params.clone(),
                        issued_at: created_at,
                        expires_at,
                        timeout_s: command.timeout_s.unsigned_abs(),
                        trace_id: None,
                        key_id: None,
                        signature: None,
                    };
                    (instruction, device)
                })
                .collect()
        };
        let sign = |part: Vec<(Instruction, Uuid)>| {
            let state = state.clone();
            web::block(move || {
                let signatures = state.signer.sign_all(&part);
                (part, signatures)
            })
        };
        // Signing and writing overlap: while PostgreSQL writes one part, the
        // next is signed on the blocking threads.
        let parts: Vec<&[(Uuid, usize)]> = plan.devices.chunks(PART).collect();
        let mut next = parts.first().map(|p| sign(instructions(p)));
        let mut queued = 0;
        for (i, part) in parts.iter().enumerate() {
            let Some(signing) = next.take() else { break };
            let (signed, signatures) = signing
                .await
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing a batch: {e}")))?;
            let signatures = signatures.map_err(ApiError::Internal)?;
            next = parts.get(i + 1).map(|p| sign(instructions(p)));
            let rows: Vec<batches::Signed> = signed
                .iter()
                .zip(signatures)
                .zip(part.iter())
                .map(
                    |(((instruction, device), signature), &(_, group))| batches::Signed {
                        id: instruction.id,
                        device_id: *device,
                        group,
                        signature,
                    },
                )
                .collect();
            queued += batches::queue(tx, &shared, &plan.groups, &rows).await?;
        }
        // Where a large batch spends its time, for the operator who wonders.
        tracing::info!(
            batch.id = %batch_id,
            select_ms = selected.as_millis(),
            write_ms = (started.elapsed() - selected).as_millis(),
            parts = parts.len(),
            "batch {batch_id}: devices read, commands signed and written"
        );
        let mut skipped = plan.skipped;
        let busy = plan.devices.len() as i64 - queued;
        if busy > 0 {
            *skipped.entry("component_busy".into()).or_default() += busy;
        }
        batches::finish(tx, batch_id, queued, &skipped).await?;

        let answer = CommandBatchCreated {
            batch_id,
            matched: candidates.len() as i64,
            queued,
            skipped,
        };
        let summary = serde_json::json!({
            "selector": selector,
            "kind": body.command.kind,
            "matched": answer.matched,
            "queued": answer.queued,
        });
        let entry = client.audit(
            &caller,
            "command_batch.create",
            Target::new("command_batch", batch_id),
            summary,
        );
        audit::record(tx, &entry).await?;
        if let Some(k) = &keyed {
            let stored = idem::Answer {
                status: 201,
                body: to_value(&answer)?,
                nonce: None,
                secrets_key: None,
            };
            idem::store(tx, k.scope(&caller), &stored).await?;
        }
        Ok::<_, ApiError>(Ok(answer))
    })
    .await;
    let answer = match created? {
        Ok(answer) => answer,
        Err(stored) => {
            tracing::info!(key = ?keyed.as_ref().map(|k| &k.key),
                "answered a batch request again for its idempotency key");
            return Ok(idempotency::replay(stored.status, &stored.body));
        }
    };
    metrics::counter!("tend_commands_queued_total", "kind" => body.command.kind.clone())
        .increment(answer.queued.unsigned_abs());
    tracing::info!(batch.id = %answer.batch_id, kind = %body.command.kind, trace_id = %trace_id,
        matched = answer.matched, queued = answer.queued,
        "queued {} command for {} of {} devices in batch {}",
        body.command.kind, answer.queued, answer.matched, answer.batch_id);
    Ok(HttpResponse::Created().json(answer))
}

/// Show a command batch
///
/// The batch's commands counted by status: it is done when none is
/// `queued`, `delivered` or `in_progress`.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The batch", body = CommandBatchOut),
        (status = 404, description = "No such batch in this tenant"),
    )
)]
#[get("/command-batches/{id}")]
pub async fn get(
    state: Shared,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let batch = db::with_client(&state.pool, async |client| {
        batches::get(client, caller.tenant(), *id).await
    })
    .await?
    .ok_or_else(|| ApiError::NotFound("no such command batch".into()))?;
    Ok(HttpResponse::Ok().json(CommandBatchOut {
        id: batch.id,
        created_at: batch.created_at,
        matched: batch.matched,
        by_status: batch.by_status,
    }))
}

/// The selector as a device filter and a list of ids; 422 when it has no
/// condition or an invalid one.
fn selection(s: &CommandSelector) -> Result<(Filter, Option<Vec<Uuid>>), ApiError> {
    let unprocessable = |m: &str| ApiError::Unprocessable(m.into());
    let labels = s.labels.as_ref().filter(|l| !l.is_empty());
    if s.device_type.is_none()
        && labels.is_none()
        && s.status.is_none()
        && s.component.is_none()
        && s.device_ids.is_none()
    {
        return Err(unprocessable(
            "the selector needs at least one condition (device_type, labels, status, component \
             or device_ids): an empty one would reach the whole fleet",
        ));
    }
    let mut filter = Filter::default();
    if let Some(t) = &s.device_type {
        check_device_type(t)?;
        filter.device_type = Some(t.clone());
    }
    if let Some(labels) = labels {
        check_labels(labels)?;
        filter.labels = Some(to_value(labels)?);
    }
    if let Some(status) = &s.status {
        filter.status = Some(
            Presence::parse(status)
                .ok_or_else(|| unprocessable("status must be online, offline or unknown"))?,
        );
    }
    if let Some(component) = &s.component {
        let (name, version) = component
            .split_once(':')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
            .ok_or_else(|| unprocessable("component must be NAME:VERSION"))?;
        filter.component = Some((name.to_owned(), version.to_owned()));
    }
    if let Some(ids) = &s.device_ids
        && ids.len() > MAX_SELECTOR_IDS
    {
        return Err(ApiError::Unprocessable(format!(
            "device_ids names at most {MAX_SELECTOR_IDS} devices; select larger fleets by type or label"
        )));
    }
    Ok((filter, s.device_ids.clone()))
}

/// What a batch will queue: the params of each group of devices, and
/// which device gets which, with the devices that get nothing counted by
/// reason.
struct Plan {
    groups: Vec<batches::Group>,
    /// The component an upgrade or restore changes.
    component: Option<String>,
    /// Each device to queue for, with the index of its group.
    devices: Vec<(Uuid, usize)>,
    skipped: BTreeMap<String, i64>,
}

/// Resolves the command once per device type (an upgrade's artifact must
/// be made for the type; a reboot's params are the same for every type,
/// and its few groups are alike), reads the denylists once, and sorts the
/// devices.
async fn plan(
    tx: &impl GenericClient,
    tenant_id: Uuid,
    command: &CheckedCommand,
    candidates: &[Candidate],
) -> Result<Plan, ApiError> {
    let mut skipped: BTreeMap<String, i64> = BTreeMap::new();
    let mut skip = |reason: &str| *skipped.entry(reason.to_owned()).or_default() += 1;
    let mut groups = Vec::new();
    let mut component = None;
    // None: the command cannot go to devices of this type.
    let mut by_type: HashMap<&str, Option<usize>> = HashMap::new();
    for c in candidates.iter().filter(|c| takes_commands(c)) {
        if by_type.contains_key(c.device_type.as_str()) {
            continue;
        }
        let resolved = software::resolve_for_type(
            tx,
            tenant_id,
            &c.device_type,
            command.checked.clone(),
            command.params.clone(),
        )
        .await;
        let group = match resolved {
            Ok(r) => {
                component = r.component;
                groups.push(batches::Group {
                    params: r.params,
                    artifact_id: r.artifact_id,
                });
                Some(groups.len() - 1)
            }
            Err(ApiError::Unprocessable(_) | ApiError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        by_type.insert(&c.device_type, group);
    }
    let artifacts: Vec<Uuid> = groups.iter().filter_map(|g| g.artifact_id).collect();
    let denied: HashSet<(Uuid, Uuid)> = if artifacts.is_empty() {
        HashSet::new()
    } else {
        batches::denylisted(tx, &artifacts)
            .await?
            .into_iter()
            .collect()
    };
    let mut devices = Vec::with_capacity(candidates.len());
    for c in candidates {
        if c.decommissioned {
            skip("decommissioned");
        } else if !takes_commands(c) {
            skip("not_accepted");
        } else if let Some(group) = by_type.get(c.device_type.as_str()).copied().flatten() {
            match groups[group].artifact_id {
                Some(a) if denied.contains(&(a, c.id)) => skip("denylisted"),
                _ => devices.push((c.id, group)),
            }
        } else {
            skip("device_type");
        }
    }
    Ok(Plan {
        groups,
        component,
        devices,
        skipped,
    })
}

/// Whether a matched device can be sent a command at all.
fn takes_commands(c: &Candidate) -> bool {
    !c.decommissioned && c.admission == Some(Admission::Accepted)
}

fn to_value(v: &impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.into()))
}
