//! Who is calling: the admin token, verified and still standing (see
//! [`crate::sessions`]), and the role checks routes use.

use actix_web::{FromRequest, HttpRequest, dev::Payload};
use futures_util::future::LocalBoxFuture;
use tend_core::auth::{AdminClaims, Role, TokenError};
use tend_core::error::ApiError;
use tend_core::http::bearer;
use uuid::Uuid;

use crate::sessions::Verdict;
use crate::state::Shared;

/// An authenticated admin user. Extracting it answers 401 for a missing,
/// forged, expired or device token, and for a token of a user changed,
/// disabled or removed since it was issued.
pub struct Caller(AdminClaims);

impl Caller {
    pub fn tenant(&self) -> Uuid {
        self.0.tid
    }

    pub fn user(&self) -> Uuid {
        self.0.sub
    }

    /// 403 unless the caller has one of these roles.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the {} role may not do this",
                self.0.role
            )))
        }
    }

    /// 403 unless the caller may manage tenants.
    pub fn require_system_admin(&self) -> Result<(), ApiError> {
        if self.0.sys {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only a system admin may do this".into(),
            ))
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verified = verify(req);
        let state = req.app_data::<Shared>().cloned();
        Box::pin(async move {
            let (claims, state) = (verified?, state.expect("checked by verify"));
            let mut verdict = state.sessions.check(claims.sub, claims.r#gen);
            if verdict == Verdict::Unknown {
                // A user created since the last poll, on another replica:
                // read once, then known.
                state.sessions.learn(&state.pool, claims.sub).await?;
                verdict = state.sessions.check(claims.sub, claims.r#gen);
            }
            match verdict {
                Verdict::Valid => Ok(Caller(claims)),
                Verdict::Ended | Verdict::Unknown => Err(ApiError::Unauthorized(
                    "this session has ended (the user was changed, disabled or removed); \
                     log in again"
                        .into(),
                )),
            }
        })
    }
}

/// The token's signature, audience and expiry; whether it still stands is
/// the caller's next question.
fn verify(req: &HttpRequest) -> Result<AdminClaims, ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::Unauthorized("send an access token: Authorization: Bearer <token>".into())
    })?;
    let state = req
        .app_data::<Shared>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("platform state missing")))?;
    match state.tokens.verify(token) {
        Ok(claims) => Ok(claims),
        Err(TokenError::Expired) => Err(ApiError::Unauthorized(
            "the access token has expired; log in again".into(),
        )),
        Err(TokenError::Invalid) => Err(ApiError::Unauthorized("invalid access token".into())),
    }
}
