//! Which device is calling: its token, verified, and not revoked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload};
use tend_core::auth::TokenError;
use tend_core::error::ApiError;
use tend_core::http::bearer;
use uuid::Uuid;

use crate::Shared;

/// An authenticated device. Extracting it costs a signature check and a
/// lookup in the in-memory revocation list: no database, no Redis.
pub struct DeviceCaller {
    pub id: Uuid,
}

impl FromRequest for DeviceCaller {
    type Error = ApiError;
    type Future = Ready<Result<DeviceCaller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<DeviceCaller, ApiError> {
    let token = bearer(req)
        .ok_or_else(|| ApiError::Unauthorized("send the device token as a Bearer token".into()))?;
    let state = req
        .app_data::<Shared>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("sync state missing")))?;
    let now_s = chrono::Utc::now().timestamp().max(0) as u64;
    let (device, expires_s) = match verified_before(token) {
        Some(known) => known,
        None => {
            let claims = state.tokens.verify(token).map_err(|e| match e {
                TokenError::Expired => {
                    ApiError::Unauthorized("the device token has expired".into())
                }
                TokenError::Invalid => ApiError::Unauthorized("invalid device token".into()),
            })?;
            remember(token, claims.sub, claims.exp);
            (claims.sub, claims.exp)
        }
    };
    if expires_s <= now_s {
        return Err(ApiError::Unauthorized(
            "the device token has expired".into(),
        ));
    }
    // Checked at every request, cached or not: revocation is immediate.
    if state.revocations.is_revoked(device) {
        return Err(ApiError::Unauthorized(
            "this device was decommissioned".into(),
        ));
    }
    Ok(DeviceCaller { id: device })
}

/// Tokens this worker thread verified, with their device and expiry: a
/// device sends the same token with every heartbeat for its lifetime, and
/// checking its signature again each time would be most of a heartbeat's
/// cost. Only verified tokens enter, keyed by the whole token, so a forged
/// one never matches; expiry and revocation are still checked per request.
/// Each actix worker is a thread and keeps a connection's requests, so a
/// per-thread map needs no lock.
const TOKEN_CACHE_MAX: usize = 100_000;

thread_local! {
    static VERIFIED: RefCell<HashMap<String, (Uuid, u64)>> = RefCell::new(HashMap::new());
}

fn verified_before(token: &str) -> Option<(Uuid, u64)> {
    VERIFIED.with(|v| v.borrow().get(token).copied())
}

fn remember(token: &str, device: Uuid, expires_s: u64) {
    VERIFIED.with(|v| {
        let mut v = v.borrow_mut();
        // Full: start over rather than track ages; the devices still
        // heartbeating are verified again once and come back.
        if v.len() >= TOKEN_CACHE_MAX {
            v.clear();
        }
        v.insert(token.to_owned(), (device, expires_s));
    });
}
