//! Which device is calling: its token, verified, and not revoked.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload};
use tend_core::auth::TokenError;
use tend_core::http::{ApiError, bearer};
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
    let claims = state.tokens.verify_device(token).map_err(|e| match e {
        TokenError::Expired => ApiError::Unauthorized("the device token has expired".into()),
        TokenError::Invalid => ApiError::Unauthorized("invalid device token".into()),
    })?;
    if state.revocations.is_revoked(claims.sub) {
        return Err(ApiError::Unauthorized(
            "this device was decommissioned".into(),
        ));
    }
    Ok(DeviceCaller { id: claims.sub })
}
