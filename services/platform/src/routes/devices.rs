//! Devices: provisioning with a one-time secret, one at a time or a
//! thousand in one transaction, listing, decommissioning.

use actix_web::dev::{JsonBody, Payload};
use actix_web::{FromRequest, HttpRequest, HttpResponse, delete, get, post, web};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::json;
use tend_core::auth::{self, Role};
use tend_core::db::audit::{self, Target};
use tend_core::db::devices::{self, Admission, Admit, Filter, Presence};
use tend_core::db::idempotency as idem;
use tend_core::db::{self, GenericClient};
use tend_core::error::ApiError;
use uuid::Uuid;

use super::page_params;
use crate::api::{
    CreatedDevice, CreatedDevices, Credentials, DeviceList, DeviceOut, MAX_BULK_DEVICES, NewDevice,
    NewDevices, check_device_type, check_labels, check_name,
};
use crate::caller::Caller;
use crate::client::Client;
use crate::idempotency;
use crate::state::Shared;

/// Register a device
///
/// Creates a device and its credentials. The secret is in this answer only:
/// the platform keeps its hash. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "devices",
    request_body = NewDevice,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; `credentials.secret` is shown once", body = CreatedDevice),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "Invalid name, type or labels"),
    )
)]
#[post("/devices")]
pub async fn create(
    state: Shared,
    caller: Caller,
    client: Client,
    body: web::Json<NewDevice>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.into_inner();
    let labels = checked_labels(&body)?;
    let secret = auth::new_device_secret();
    let hash = auth::hash_device_secret(&secret);

    // The device, its credentials and the audit row: all or none.
    let device = db::in_tx(&state.pool, async |tx| {
        let device = devices::create(
            tx,
            devices::NewDevice {
                tenant_id: caller.tenant(),
                name: &body.name,
                device_type: &body.device_type,
                labels: &labels,
                secret_sha256: &hash,
            },
        )
        .await?;
        let summary = json!({"name": device.name, "device_type": device.device_type});
        audit::record(
            tx,
            &client.audit(
                &caller,
                "device.create",
                Target::new("device", device.id),
                summary,
            ),
        )
        .await?;
        Ok::<_, db::DbError>(device)
    })
    .await?;
    tracing::info!(device.id = %device.id, "registered device {} ({})", device.id, device.name);
    Ok(HttpResponse::Created().json(CreatedDevice {
        credentials: Credentials {
            device_id: device.id,
            secret,
        },
        device: device.into(),
    }))
}

/// Register devices in bulk
///
/// Creates 1 to 1000 devices and their credentials in one transaction: all
/// of them, or none when one is invalid. Each item is as for
/// `POST /devices`; the answer lists them with their secrets, shown once,
/// in the order of the request. The body may be up to 4 MiB. Admins only.
///
/// With an `Idempotency-Key` header, the same key and the same request
/// within 24 hours answer the first answer again, secrets included, and the
/// same key with another request is a 422. The secrets are not stored:
/// they are derived from a random nonce with the platform's signing key,
/// and derived again for a replay; after that key was replaced, a replay
/// is a 409.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "devices",
    request_body = NewDevices,
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters, unique per request the client means"),
    ),
    responses(
        (status = 201, description = "Created, in request order; each `credentials.secret` is shown once", body = CreatedDevices),
        (status = 403, description = "Not an admin"),
        (status = 400, description = "An invalid Idempotency-Key"),
        (status = 409, description = "A replay whose secrets the current signing key cannot derive"),
        (status = 413, description = "The body is over 4 MiB"),
        (status = 422, description = "No devices, more than 1000, an invalid item (nothing was created), or an Idempotency-Key used for another request"),
    )
)]
#[post("/devices/bulk")]
pub async fn create_bulk(
    state: Shared,
    caller: Caller,
    client: Client,
    req: HttpRequest,
    body: BulkJson<NewDevices>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let keyed = idempotency::keyed(&req, "POST /devices/bulk", &body.0)?;
    let items = body.0.devices;
    if items.is_empty() || items.len() > MAX_BULK_DEVICES {
        return Err(ApiError::Unprocessable(format!(
            "devices must hold 1 to {MAX_BULK_DEVICES} items, not {}",
            items.len()
        )));
    }
    // Everything is checked before anything is written: one bad item
    // refuses the whole request, with its index.
    let labels = items
        .iter()
        .enumerate()
        .map(|(i, d)| {
            checked_labels(d).map_err(|e| match e {
                ApiError::Unprocessable(m) => ApiError::Unprocessable(format!("devices[{i}]: {m}")),
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // With a key, secrets derived from a nonce, so that a replay can show
    // them again; otherwise random.
    let nonce: Option<[u8; 32]> = keyed.as_ref().map(|_| auth::new_nonce());
    let secrets: Vec<String> = (0..items.len() as u32)
        .map(|i| match &nonce {
            Some(n) => state.signer.derive_secret(n, i),
            None => auth::new_device_secret(),
        })
        .collect();
    let hashes: Vec<_> = secrets
        .iter()
        .map(|s| auth::hash_device_secret(s))
        .collect();
    let new: Vec<devices::NewDevice> = items
        .iter()
        .zip(&labels)
        .zip(&hashes)
        .map(|((d, labels), hash)| devices::NewDevice {
            tenant_id: caller.tenant(),
            name: &d.name,
            device_type: &d.device_type,
            labels,
            secret_sha256: hash,
        })
        .collect();

    let created = db::in_tx(&state.pool, async |tx| {
        // The key first: a concurrent request with it waits here.
        if let Some(k) = &keyed {
            match idem::claim(tx, k.scope(&caller), &k.fingerprint).await? {
                idem::Claim::Fresh => {}
                idem::Claim::Mismatch => return Err(idempotency::mismatch()),
                idem::Claim::Replay(answer) => return Ok(Err(answer)),
            }
        }
        let created = devices::create_many(tx, &new).await?;
        // One `device.create` row per device, as for `POST /devices`, so a
        // device's history reads the same however it was registered.
        let entries: Vec<_> = created
            .iter()
            .map(|device| {
                let summary = json!({
                    "name": device.name, "device_type": device.device_type, "bulk": true,
                });
                client.audit(
                    &caller,
                    "device.create",
                    Target::new("device", device.id),
                    summary,
                )
            })
            .collect();
        audit::record_many(tx, &entries).await?;
        if let (Some(k), Some(n)) = (&keyed, &nonce) {
            // The answer without its secrets.
            let items: Vec<DeviceOut> = created.iter().cloned().map(DeviceOut::from).collect();
            let answer = idem::Answer {
                status: 201,
                body: serde_json::to_value(items).map_err(|e| ApiError::Internal(e.into()))?,
                nonce: Some(n.to_vec()),
                secrets_key: Some(state.signer.key_id().to_owned()),
            };
            idem::store(tx, k.scope(&caller), &answer).await?;
        }
        Ok::<_, ApiError>(Ok(created))
    })
    .await?;
    let created = match created {
        Ok(created) => created,
        Err(answer) => return replay_bulk(&state, answer),
    };
    tracing::info!(
        devices = created.len(),
        "registered {} devices in bulk",
        created.len()
    );
    let items = created
        .into_iter()
        .zip(secrets)
        .map(|(device, secret)| CreatedDevice {
            credentials: Credentials {
                device_id: device.id,
                secret,
            },
            device: device.into(),
        })
        .collect();
    Ok(HttpResponse::Created().json(CreatedDevices { items }))
}

/// A bulk registration answered again: its devices as they were, each with
/// its secret derived again from the stored nonce.
fn replay_bulk(state: &Shared, answer: idem::Answer) -> Result<HttpResponse, ApiError> {
    let (Some(nonce), Some(key)) = (answer.nonce, answer.secrets_key) else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "a bulk idempotency key stored without its nonce"
        )));
    };
    if key != state.signer.key_id() {
        return Err(ApiError::Conflict(
            "this request was done, but its device secrets were made with a signing key \
             that has since been replaced and cannot be shown again"
                .into(),
        ));
    }
    let mut items = match answer.body {
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "a bulk idempotency answer that is not a list"
            )));
        }
    };
    for (i, item) in items.iter_mut().enumerate() {
        let id = item.get("id").cloned().unwrap_or(Value::Null);
        if let Value::Object(m) = item {
            m.insert(
                "credentials".into(),
                json!({"device_id": id, "secret": state.signer.derive_secret(&nonce, i as u32)}),
            );
        }
    }
    tracing::info!(
        devices = items.len(),
        "answered a bulk registration again for its idempotency key"
    );
    Ok(idempotency::replay(answer.status, &json!({"items": items})))
}

/// A device's name, type and labels checked as `POST /devices` does; its
/// labels as the JSON object to store.
fn checked_labels(d: &NewDevice) -> Result<Value, ApiError> {
    check_name("name", &d.name)?;
    check_device_type(&d.device_type)?;
    check_labels(&d.labels)?;
    serde_json::to_value(&d.labels).map_err(|e| ApiError::Internal(e.into()))
}

/// The largest bulk body: a thousand devices of about 4 KiB each, names
/// and labels included. The API's 64 KiB holds only a few hundred.
const BULK_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// A JSON body read with [`BULK_BODY_LIMIT`] instead of the API's limit
/// (actix's `JsonConfig` cannot be set for one `#[post]` route), its errors
/// mapped as `tend_core::http::json_config` maps them.
pub struct BulkJson<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for BulkJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = JsonBody::<T>::new(req, payload, None, true).limit(BULK_BODY_LIMIT);
        Box::pin(async move {
            body.await
                .map(BulkJson)
                .map_err(|err| tend_core::http::json_error(err, BULK_BODY_LIMIT))
        })
    }
}

/// List devices
///
/// The caller's tenant's devices, newest first. Filters: `status`
/// (`online`, `offline`, `unknown`), `device_type`, `label=key:value`
/// (repeatable; all must match), `component=NAME:VERSION` and `admission`
/// (`pending`, `accepted`, `rejected`: enrolled devices wait `pending`
/// for an admin). Pages with `limit` (1 to 500, default 50)
/// and `cursor` (the previous page's `next_cursor`).
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "devices",
    security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "online, offline or unknown"),
        ("device_type" = Option<String>, Query),
        ("label" = Option<String>, Query, description = "key:value, repeatable"),
        ("component" = Option<String>, Query, description = "NAME:VERSION: devices running that version of that component"),
        ("admission" = Option<String>, Query, description = "pending, accepted or rejected"),
        ("limit" = Option<i64>, Query),
        ("cursor" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "A page of devices", body = DeviceList),
        (status = 400, description = "Invalid filter, limit or cursor"),
    )
)]
#[get("/devices")]
pub async fn list(
    state: Shared,
    caller: Caller,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let mut filter = Filter::default();
    let mut labels = serde_json::Map::new();
    let (mut limit, mut cursor) = (None, None);
    for (k, v) in query.into_inner() {
        match k.as_str() {
            "status" => {
                filter.status = Some(Presence::parse(&v).ok_or_else(|| {
                    ApiError::BadRequest("status must be online, offline or unknown".into())
                })?)
            }
            "device_type" => filter.device_type = Some(v),
            "admission" => {
                filter.admission = Some(Admission::parse(&v).ok_or_else(|| {
                    ApiError::BadRequest("admission must be pending, accepted or rejected".into())
                })?)
            }
            "component" => {
                let (name, version) = v
                    .split_once(':')
                    .ok_or_else(|| ApiError::BadRequest("component must be NAME:VERSION".into()))?;
                filter.component = Some((name.to_owned(), version.to_owned()));
            }
            "label" => {
                let (lk, lv) = v
                    .split_once(':')
                    .ok_or_else(|| ApiError::BadRequest("label must be key:value".into()))?;
                labels.insert(lk.to_owned(), Value::String(lv.to_owned()));
            }
            "limit" => {
                limit = Some(
                    v.parse::<i64>()
                        .map_err(|_| ApiError::BadRequest("limit must be a whole number".into()))?,
                )
            }
            "cursor" => cursor = Some(v),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    if !labels.is_empty() {
        filter.labels = Some(Value::Object(labels));
    }
    let (limit, after) = page_params(limit, cursor.as_deref())?;
    let page = db::with_client(&state.pool, async |client| {
        devices::list(client, caller.tenant(), &filter, after, limit).await
    })
    .await?;
    let mut items = page.items;
    state.latest.apply(&mut items).await;
    Ok(HttpResponse::Ok().json(DeviceList {
        items: items.into_iter().map(DeviceOut::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show a device
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin", "operator", "viewer"]))),
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The device", body = DeviceOut),
        (status = 404, description = "No such device in this tenant"),
    )
)]
#[get("/devices/{id}")]
pub async fn get(
    state: Shared,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let device =
        db::with_client(&state.pool, async |client| find(client, &caller, *id).await).await?;
    let mut devices = [device];
    state.latest.apply(&mut devices).await;
    let [device] = devices;
    Ok(HttpResponse::Ok().json(DeviceOut::from(device)))
}

/// Decommission a device
///
/// Removes the device from the API, revokes its credentials on every sync
/// server within seconds, and cancels its queued commands. Its command
/// history is kept. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Decommissioned"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such device in this tenant"),
    )
)]
#[delete("/devices/{id}")]
pub async fn decommission(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let found = db::in_tx(&state.pool, async |tx| {
        let found = devices::decommission(tx, caller.tenant(), *id).await?;
        if found {
            let entry = client.audit(
                &caller,
                "device.delete",
                Target::new("device", *id),
                json!({}),
            );
            audit::record(tx, &entry).await?;
        }
        Ok::<_, db::DbError>(found)
    })
    .await?;
    if !found {
        return Err(no_such_device());
    }
    tracing::info!(device.id = %id, "decommissioned device {id}");
    Ok(HttpResponse::NoContent().finish())
}

/// Accept a pending device
///
/// A device that enrolled itself with an enrolment token may connect from
/// now on: its agent, which retries while it waits, authenticates at its
/// next try. 409 unless the device is `pending`. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Accepted", body = DeviceOut),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such device in this tenant"),
        (status = 409, description = "The device is not pending"),
    )
)]
#[post("/devices/{id}/accept")]
pub async fn accept(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    admit(&state, &caller, &client, *id, Admission::Accepted).await
}

/// Reject a device
///
/// A pending (or accepted) device never connects again: its credentials
/// are refused by every sync server within seconds, as a decommissioned
/// device's, and its queued commands are cancelled. It stays listed as
/// `rejected`; decommission it to remove it. 409 when it was rejected
/// before. Admins only.
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["admin"]))),
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Rejected", body = DeviceOut),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such device in this tenant"),
        (status = 409, description = "The device was rejected before"),
    )
)]
#[post("/devices/{id}/reject")]
pub async fn reject(
    state: Shared,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    admit(&state, &caller, &client, *id, Admission::Rejected).await
}

/// Accepts or rejects a device, with its audit row, in one transaction.
async fn admit(
    state: &Shared,
    caller: &Caller,
    client: &Client,
    id: Uuid,
    to: Admission,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let (action, verb) = match to {
        Admission::Rejected => ("device.reject", "rejected"),
        _ => ("device.accept", "accepted"),
    };
    let device = db::in_tx(&state.pool, async |tx| {
        let done = match to {
            Admission::Rejected => devices::reject(tx, caller.tenant(), id).await?,
            _ => devices::accept(tx, caller.tenant(), id).await?,
        };
        let device = match done {
            Admit::Done(device) => *device,
            Admit::NotFound => return Err(no_such_device()),
            Admit::Conflict(now) => {
                return Err(ApiError::Conflict(format!(
                    "the device is {}; only a pending device can be {verb}{}",
                    now.as_str(),
                    if to == Admission::Rejected {
                        " (or an accepted one)"
                    } else {
                        ""
                    }
                )));
            }
        };
        let summary = json!({"name": device.name, "device_type": device.device_type});
        audit::record(
            tx,
            &client.audit(caller, action, Target::new("device", device.id), summary),
        )
        .await?;
        Ok::<_, ApiError>(device)
    })
    .await?;
    tracing::info!(device.id = %device.id, "{verb} device {}", device.id);
    Ok(HttpResponse::Ok().json(DeviceOut::from(device)))
}

pub(super) fn no_such_device() -> ApiError {
    ApiError::NotFound("no such device".into())
}

/// The caller's tenant's device, or 404.
pub(super) async fn find(
    c: &impl GenericClient,
    caller: &Caller,
    id: Uuid,
) -> Result<devices::Device, ApiError> {
    devices::get(c, caller.tenant(), id)
        .await?
        .ok_or_else(no_such_device)
}
