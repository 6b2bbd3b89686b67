//! `POST /auth/login`: a username and password for an access token.

use actix_web::{HttpResponse, post, web};
use tend_core::auth;
use tend_core::db::{self, users};
use tend_core::error::ApiError;

use crate::api::{AccessToken, Login};
use crate::state::Shared;

/// Log in
///
/// Trades a username and password for a short-lived access token.
#[utoipa::path(
    tag = "auth",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in", body = AccessToken),
        (status = 401, description = "Unknown or disabled user, or wrong password"),
    )
)]
#[post("/auth/login")]
pub async fn login(state: Shared, body: web::Json<Login>) -> Result<HttpResponse, ApiError> {
    let Login { username, password } = body.into_inner();
    let found = db::with_client(&state.pool, async |client| {
        users::find_credentials(client, &username).await
    })
    .await?;

    // Hash even for an unknown user, so timing does not tell which names exist.
    let hash = found
        .as_ref()
        .map(|c| c.password_hash.clone())
        .unwrap_or_else(|| auth::decoy_password_hash().to_owned());
    let ok = state
        .hash_work(move || auth::verify_password(&password, &hash))
        .await?;
    // A disabled user is refused as a wrong password is, after the same
    // work, so the answer does not tell that the account exists.
    let Some(creds) = found.filter(|c| ok && !c.user.disabled) else {
        // Debug-quoted: the name is the client's, and a newline in it must
        // not forge a line in a text log.
        tracing::info!(user = ?username, "failed login for {username:?}");
        return Err(ApiError::Unauthorized(
            "invalid username or password".into(),
        ));
    };
    let user = creds.user;
    let (token, expires_in) = state.tokens.issue(
        user.id,
        user.tenant_id,
        user.role,
        user.is_system_admin,
        user.token_generation,
    );
    Ok(HttpResponse::Ok().json(AccessToken {
        access_token: token,
        token_type: "Bearer",
        expires_in,
    }))
}
