//! Which device a DDI request speaks for: `Authorization: TargetToken
//! <device secret>` or `GatewayToken <tenant gateway token>`, checked
//! against PostgreSQL once and then remembered, so that a poll with nothing
//! to do runs no SQL.
//!
//! A session is keyed by the SHA-256 of the tenant, the controller id and
//! the whole header, so no secret is kept in memory and a wrong token never
//! matches. It is trusted for [`SESSION_TTL`], then checked again: the
//! revocation list remembers decommissioned devices and revoked gateway
//! tokens at least that long, so either is refused at the next request,
//! on every replica, within 2 seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header;
use sha2::{Digest, Sha256};
use tend_core::auth;
use tend_core::db::{self, ddi};
use tend_core::error::ApiError;
use uuid::Uuid;

use crate::Shared;

/// How long a verified session is trusted before its credential is
/// checked against PostgreSQL again.
pub const SESSION_TTL: Duration = Duration::from_secs(3600);

/// The most sessions a replica remembers. Past it the map starts over:
/// the devices still polling are checked once more and come back.
const MAX_SESSIONS: usize = 1_000_000;

/// A device speaking DDI, as this replica knows it.
pub struct Session {
    pub device: Uuid,
    /// The gateway token it came with, if not its own secret.
    gateway: Option<Uuid>,
    verified: Instant,
    /// Whether the device has sent its attributes (`configData`).
    attributes_known: AtomicBool,
    /// Its last installed action, for the `installedBase` link; 0 for none.
    installed: AtomicI64,
}

impl Session {
    pub fn attributes_known(&self) -> bool {
        self.attributes_known.load(Ordering::Relaxed)
    }

    pub fn set_attributes_known(&self) {
        self.attributes_known.store(true, Ordering::Relaxed);
    }

    pub fn installed(&self) -> Option<i64> {
        Some(self.installed.load(Ordering::Relaxed)).filter(|s| *s > 0)
    }

    pub fn set_installed(&self, seq: i64) {
        self.installed.fetch_max(seq, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Arc<Session>>>,
}

impl Sessions {
    fn get(&self, key: &[u8; 32]) -> Option<Arc<Session>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key)
            .filter(|s| s.verified.elapsed() < SESSION_TTL)
            .cloned()
    }

    fn insert(&self, key: [u8; 32], session: Arc<Session>) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_SESSIONS {
            map.clear();
        }
        map.insert(key, session);
        metrics::gauge!("tend_ddi_sessions").set(map.len() as f64);
    }
}

enum Credential<'a> {
    Target(&'a str),
    Gateway(&'a str),
}

fn credential(req: &HttpRequest) -> Option<Credential<'_>> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("TargetToken") {
        Some(Credential::Target(token))
    } else if scheme.eq_ignore_ascii_case("GatewayToken") {
        Some(Credential::Gateway(token))
    } else {
        None
    }
}

fn refused() -> ApiError {
    ApiError::Unauthorized("unknown device or wrong token".into())
}

/// The session of the device `controller` of the tenant named `tenant`
/// that this request's credential names; 401 for anything else.
pub async fn authenticate(
    state: &Shared,
    req: &HttpRequest,
    tenant: &str,
    controller: &str,
) -> Result<Arc<Session>, ApiError> {
    let credential = credential(req).ok_or_else(|| {
        ApiError::Unauthorized(
            "send Authorization: TargetToken <device secret> or GatewayToken <gateway token>"
                .into(),
        )
    })?;
    let mut key = Sha256::new();
    for part in [tenant, controller] {
        key.update(part.as_bytes());
        key.update([0]);
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    key.update(header);
    let key: [u8; 32] = key.finalize().into();

    let session = match state.ddi.get(&key) {
        Some(s) => s,
        None => {
            let session = Arc::new(verify(state, tenant, controller, credential).await?);
            state.ddi.insert(key, session.clone());
            session
        }
    };
    // Checked at every request, remembered or not: revocation is immediate.
    let revoked = state.revocations.is_revoked(session.device)
        || session
            .gateway
            .is_some_and(|g| state.revocations.is_revoked(g));
    if revoked {
        return Err(refused());
    }
    Ok(session)
}

async fn verify(
    state: &Shared,
    tenant: &str,
    controller: &str,
    credential: Credential<'_>,
) -> Result<Session, ApiError> {
    let target = db::with_client(&state.pool, async |client| -> Result<_, ApiError> {
        match credential {
            Credential::Target(secret) => {
                let hash = auth::hash_device_secret(secret);
                ddi::find_by_secret(client, tenant, controller, &hash)
                    .await?
                    .ok_or_else(refused)
            }
            Credential::Gateway(token) => {
                let hash = auth::hash_device_secret(token);
                match ddi::find_by_gateway(client, tenant, controller, &hash).await? {
                    ddi::GatewayFind::Found(t) => Ok(t),
                    ddi::GatewayFind::NotFound => Err(refused()),
                    ddi::GatewayFind::Ambiguous => Err(ApiError::Conflict(format!(
                        "several devices of this tenant are named {controller:?}; \
                         a gateway can speak only for a device whose name is unique"
                    ))),
                }
            }
        }
    })
    .await?;
    tracing::debug!(device.id = %target.device_id, "DDI session of device {}", target.device_id);
    Ok(Session {
        device: target.device_id,
        gateway: target.gateway,
        verified: Instant::now(),
        attributes_known: AtomicBool::new(target.attributes_known),
        installed: AtomicI64::new(target.installed.unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn both_schemes_are_read_and_anything_else_is_not() {
        let read = |value: &str| {
            let req = TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request();
            match credential(&req) {
                Some(Credential::Target(t)) => format!("target {t}"),
                Some(Credential::Gateway(t)) => format!("gateway {t}"),
                None => "none".into(),
            }
        };
        assert_eq!(read("TargetToken abc"), "target abc");
        assert_eq!(read("targettoken  abc "), "target abc");
        assert_eq!(read("GatewayToken xyz"), "gateway xyz");
        assert_eq!(read("Bearer abc"), "none");
        assert_eq!(read("TargetToken "), "none");
        assert_eq!(read("TargetToken"), "none");
        assert!(credential(&TestRequest::default().to_http_request()).is_none());
    }
}
