//! `POST /auth/login`: a username and password for an access token.
//!
//! The order is what keeps it cheap and quiet under attack: the throttle
//! first ([`crate::throttle`], no database, no hashing), then the
//! address's share of the hashing threads, then the password check, which
//! runs argon2 for an unknown name as for a known one. The answer and its
//! timing are the same for both: a failed login's audit row is written
//! after the answer, so the database write does not tell them apart.

use actix_web::{HttpResponse, post, web};
use serde_json::json;
use tend_core::auth;
use tend_core::db::audit::{self, Entry, Target};
use tend_core::db::{self, users};
use tend_core::error::ApiError;

use crate::api::{AccessToken, Login};
use crate::client::Client;
use crate::state::Shared;

/// Log in
///
/// Trades a username and password for a short-lived access token. After
/// repeated failures a username, and with a higher bound a client
/// address, is refused for a growing time (429 with `Retry-After`).
#[utoipa::path(
    extensions(("x-tend-roles" = json!(["anyone"]))),
    tag = "auth",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in", body = AccessToken),
        (status = 401, description = "Unknown or disabled user, or wrong password"),
        (status = 429, description = "Too many failed logins for this username or from this address; `Retry-After` says when to try again"),
    )
)]
#[post("/auth/login")]
pub async fn login(
    state: Shared,
    client: Client,
    body: web::Json<Login>,
) -> Result<HttpResponse, ApiError> {
    let Login { username, password } = body.into_inner();
    let address = client.address;
    if let Some((by, retry_after_s)) = state.throttle.check(&username, address).await {
        metrics::counter!("tend_logins_throttled_total", "by" => by.as_str()).increment(1);
        return Err(ApiError::TooManyRequests {
            detail: format!("too many failed logins; try again in {retry_after_s} s"),
            retry_after_s,
        });
    }
    let Some(_slot) = state.throttle.hashing_slot(address) else {
        metrics::counter!("tend_logins_throttled_total", "by" => "concurrency").increment(1);
        return Err(ApiError::TooManyRequests {
            detail: "too many logins at once from this address; try again in 1 s".into(),
            retry_after_s: 1,
        });
    };
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
        .hash_work(move |m| auth::verify_password_in(m, &password, &hash))
        .await?;
    // A disabled user is refused as a wrong password is, after the same
    // work, so the answer does not tell that the account exists.
    let Some(creds) = found.as_ref().filter(|c| ok && !c.user.disabled) else {
        state.throttle.failed(&username, address).await;
        failed(&state, &client, &username, found.as_ref());
        return Err(ApiError::Unauthorized(
            "invalid username or password".into(),
        ));
    };
    let user = &creds.user;
    state.throttle.succeeded(&username).await;
    db::in_tx(&state.pool, async |tx| {
        audit::record(
            tx,
            &Entry {
                tenant_id: user.tenant_id,
                actor_id: Some(user.id),
                action: "auth.login",
                target: Target::new("user", user.id),
                address,
                request_id: client.request_id.as_deref(),
                summary: json!({ "username": user.username }),
            },
        )
        .await
    })
    .await?;
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

/// Counts and logs a failed login and, for a known user, writes its
/// `auth.login_failed` row in the user's tenant. An unknown name has no
/// tenant whose audit log it could go to: it is counted and logged only.
fn failed(state: &Shared, client: &Client, username: &str, found: Option<&users::Credentials>) {
    let known = if found.is_some() { "known" } else { "unknown" };
    metrics::counter!("tend_login_failures_total", "user" => known).increment(1);
    // Debug-quoted: the name is the client's, and a newline in it must
    // not forge a line in a text log.
    tracing::info!(
        user = ?username,
        user.known = found.is_some(),
        address = ?client.address,
        "failed login for {username:?}"
    );
    let Some(creds) = found else {
        return;
    };
    let pool = state.pool.clone();
    let (tenant_id, user_id) = (creds.user.tenant_id, creds.user.id);
    let username = creds.user.username.clone();
    let address = client.address;
    let request_id = client.request_id.clone();
    // After the answer: the row changes nothing the client waits for, and
    // writing it first would make a known name's 401 slower than an
    // unknown one's.
    actix_web::rt::spawn(async move {
        let written = db::in_tx(&pool, async |tx| {
            audit::record(
                tx,
                &Entry {
                    tenant_id,
                    actor_id: Some(user_id),
                    action: "auth.login_failed",
                    target: Target::new("user", user_id),
                    address,
                    request_id: request_id.as_deref(),
                    summary: json!({ "username": username }),
                },
            )
            .await
        })
        .await;
        if let Err(e) = written {
            tracing::warn!(user.id = %user_id, "failed login of {user_id} not audited: {e}");
        }
    });
}
