//! The `Idempotency-Key` header of `POST /devices/{id}/commands` and
//! `POST /devices/bulk`: the same key and the same request within 24 hours
//! answer the first answer again; the same key with another request is a
//! 422. Keys are scoped by tenant and user; the rows live in PostgreSQL
//! ([`tend_core::db::idempotency`]), so every replica answers alike.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use tend_core::db::{self, idempotency};
use tend_core::error::ApiError;
use tend_core::retry::{Outage, sleep_unless_cancelled};
use tokio_util::sync::CancellationToken;

use crate::caller::Caller;
use crate::state::Shared;

pub const HEADER: &str = "Idempotency-Key";
/// Set on an answer returned again.
pub const REPLAYED: &str = "Idempotent-Replayed";
/// The longest key: room for a UUID and a prefix, or a client's own scheme.
pub const MAX_KEY_LEN: usize = 255;

/// How often a replica deletes expired keys; any replica may, at any time.
const SWEEP: Duration = Duration::from_secs(600);

/// A request's key and fingerprint, when it sent a key.
pub struct Keyed {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

impl Keyed {
    pub fn scope<'a>(&'a self, caller: &Caller) -> idempotency::Scope<'a> {
        idempotency::Scope {
            tenant_id: caller.tenant(),
            user_id: caller.user(),
            key: &self.key,
        }
    }
}

/// The request's `Idempotency-Key` (1 to 255 printable ASCII characters,
/// else 400) and the fingerprint of `route` and `body`.
pub fn keyed(
    req: &HttpRequest,
    route: &str,
    body: &impl Serialize,
) -> Result<Option<Keyed>, ApiError> {
    let Some(value) = req.headers().get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            (1..=MAX_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| (0x20..=0x7e).contains(&b))
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{HEADER} must be 1 to {MAX_KEY_LEN} printable ASCII characters"
            ))
        })?;
    let body = serde_json::to_vec(body).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Some(Keyed {
        key: key.to_owned(),
        fingerprint: idempotency::fingerprint(route, &body),
    }))
}

/// The 422 for a key used before with another request.
pub fn mismatch() -> ApiError {
    ApiError::Unprocessable(format!(
        "this {HEADER} was used for another request within 24 hours; use a new key"
    ))
}

/// The stored answer, answered again.
pub fn replay(status: i16, body: &serde_json::Value) -> HttpResponse {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    HttpResponse::build(status)
        .insert_header((REPLAYED, "true"))
        .json(body)
}

/// Deletes expired keys until cancelled.
pub async fn sweep(state: Shared, stop: CancellationToken) {
    let outage = Outage::new("idempotency key sweep");
    while sleep_unless_cancelled(SWEEP, &stop).await {
        let swept = db::with_client(&state.pool, async |c| idempotency::sweep(c).await).await;
        match swept {
            Ok(n) => {
                outage.recovered();
                if n > 0 {
                    tracing::debug!(keys = n, "swept {n} expired idempotency keys");
                }
            }
            Err(e) => {
                outage.failed(&e);
            }
        }
    }
}
