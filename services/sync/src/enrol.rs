//! `POST /device/v1/enrol`: a device with an enrolment token and no
//! identity yet is given one (seed 003).
//!
//! The route is unauthenticated, so it is bounded three ways: a small
//! body, a per-replica rate of enrolments ([`Rate`]), and a token that is
//! 256 random bits found by its SHA-256 (no slow hash to make a guess
//! expensive for the server). An enrolled device is `pending` until an
//! admin accepts it, unless its token accepts at once; while pending, its
//! authentication answers 403 with `Retry-After`, so its agent waits and
//! learns by itself when it was accepted.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use tend_core::auth;
use tend_core::db;
use tend_core::db::audit::{self, Entry, Target};
use tend_core::db::devices::{self, Admission};
use tend_core::db::enrolment::{self, Refusal};
use tend_core::error::ApiError;
use tend_proto::device::{
    EnrolRequest, EnrolResponse, EnrolStatus, is_device_type, labels_problem,
};

use crate::Shared;

/// An enrolment body: a token, a type, a name, a few labels and an
/// inventory.
pub const ENROL_LIMIT: usize = 16 * 1024;

/// Enrolments one replica answers per second (beyond them: 429). A fleet
/// switched on at once enrols within minutes; a flood of bogus tokens costs
/// the database at most this many lookups a second per replica.
const ENROLMENTS_PER_S: u32 = 50;

/// A fixed one-second window of enrolment attempts.
#[derive(Default)]
pub struct Rate(Mutex<Option<(Instant, u32)>>);

impl Rate {
    /// Takes one attempt from this second's share; false when it is spent.
    fn take(&self) -> bool {
        let Ok(mut window) = self.0.lock() else {
            return false;
        };
        let now = Instant::now();
        match window.as_mut() {
            Some((start, count)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *count += 1;
                *count <= ENROLMENTS_PER_S
            }
            _ => {
                *window = Some((now, 1));
                true
            }
        }
    }
}

pub async fn enrol(
    state: Shared,
    req: HttpRequest,
    body: web::Json<EnrolRequest>,
) -> Result<HttpResponse, ApiError> {
    if !state.enrolments.take() {
        return Err(ApiError::TooManyRequests {
            detail: "too many enrolments at once; try again shortly".into(),
            retry_after_s: 1,
        });
    }
    let body = body.into_inner();
    if !body.token.starts_with(auth::ENROLMENT_TOKEN_PREFIX) || body.token.len() > 256 {
        return Err(ApiError::Unauthorized(
            "this is not an enrolment token (they start with tend_enrol_)".into(),
        ));
    }
    if !is_device_type(&body.device_type) {
        return Err(ApiError::Unprocessable(
            "device_type must be 1 to 64 of letters, digits, '.', '_' and '-'".into(),
        ));
    }
    if let Some(why) = labels_problem(&body.labels) {
        return Err(ApiError::Unprocessable(why));
    }
    let name = match body.name.as_deref().map(str::trim) {
        Some(n) if n.is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control) => {
            return Err(ApiError::Unprocessable(
                "name must be 1 to 200 printable characters".into(),
            ));
        }
        Some(n) => n.to_owned(),
        None => String::new(),
    };
    let mut inventory = body.inventory.unwrap_or(Value::Null);
    tend_proto::text::replace_nul(&mut inventory);
    let hash = auth::hash_device_secret(&body.token);
    let secret = auth::new_device_secret();
    let secret_hash = auth::hash_device_secret(&secret);
    let address = tend_core::http::client_address(&req, &state.trusted_proxies);

    let device = db::in_tx(&state.pool, async |tx| {
        let token = match enrolment::take_use(tx, &hash, &body.device_type).await? {
            Ok(token) => token,
            Err(refusal) => return Err(refused(refusal)),
        };
        // The token's labels are the admin's word: they win over the
        // device's.
        let mut labels: serde_json::Map<String, Value> = body
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if let Value::Object(given) = &token.labels {
            labels.extend(given.clone());
        }
        let labels = Value::Object(labels);
        let admission = if token.auto_accept {
            Admission::Accepted
        } else {
            Admission::Pending
        };
        let name = if name.is_empty() {
            format!(
                "{}-{}",
                body.device_type,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        } else {
            name.clone()
        };
        let device = devices::create_admitted(
            tx,
            devices::NewDevice {
                tenant_id: token.tenant_id,
                name: &name,
                device_type: &body.device_type,
                labels: &labels,
                secret_sha256: &secret_hash,
            },
            admission,
            Some(token.id),
        )
        .await?;
        if !inventory.is_null() {
            devices::set_reported(tx, device.id, &json!({ "inventory": inventory })).await?;
        }
        // No actor: the device enrolled itself, with the token named here.
        audit::record(
            tx,
            &Entry {
                tenant_id: token.tenant_id,
                actor_id: None,
                action: "device.enrol",
                target: Target::new("device", device.id),
                address,
                request_id: None,
                summary: json!({
                    "name": device.name,
                    "device_type": device.device_type,
                    "enrolment_token": token.id,
                    "admission": admission.as_str(),
                }),
            },
        )
        .await?;
        Ok::<_, ApiError>(device)
    })
    .await?;
    let status = match device.admission {
        Admission::Accepted => EnrolStatus::Accepted,
        _ => EnrolStatus::Pending,
    };
    tracing::info!(device.id = %device.id, admission = device.admission.as_str(),
        "device {} enrolled itself ({})", device.id, device.admission.as_str());
    Ok(HttpResponse::Created().json(EnrolResponse {
        device_id: device.id,
        secret,
        status,
    }))
}

fn refused(why: Refusal) -> ApiError {
    let detail = match why {
        Refusal::Unknown => "unknown enrolment token",
        Refusal::Revoked => "this enrolment token was revoked",
        Refusal::Expired => "this enrolment token has expired",
        Refusal::UsedUp => "this enrolment token has enrolled as many devices as it may",
        Refusal::WrongType => {
            return ApiError::Forbidden(
                "this enrolment token is for devices of another type".into(),
            );
        }
    };
    ApiError::Unauthorized(detail.into())
}
