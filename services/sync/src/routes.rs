//! The device API routes.

use std::sync::atomic::Ordering;

use actix_web::{HttpResponse, web};
use tend_core::auth;
use tend_core::db::commands::{self, ReportOutcome};
use tend_core::db::{self, DbError, devices};
use tend_core::http::{self, ApiError};
use tend_proto::device::{
    AuthRequest, AuthResponse, Heartbeat, HeartbeatResponse, Instruction, Instructions, Report,
};
use uuid::Uuid;

use crate::Shared;
use crate::device::DeviceCaller;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(http::healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(http::metrics))
        .service(
            web::scope("/device/v1")
                .route("/auth", web::post().to(authenticate))
                .route("/heartbeat", web::post().to(heartbeat))
                .route("/instructions", web::get().to(instructions))
                .route("/instructions/{id}/report", web::post().to(report)),
        );
}

/// `POST /device/v1/auth`: a device's secret for a short-lived token.
async fn authenticate(
    state: Shared,
    body: web::Json<AuthRequest>,
) -> Result<HttpResponse, ApiError> {
    let refused = || ApiError::Unauthorized("unknown device or wrong secret".into());
    let client = state.pool.get().await.map_err(DbError::from)?;
    let (tenant, stored) = devices::find_secret(&client, body.device_id)
        .await?
        .ok_or_else(refused)?;
    if !auth::device_secret_matches(&body.secret, &stored)
        || state.revocations.is_revoked(body.device_id)
    {
        tracing::info!(device.id = %body.device_id, "refused authentication of device {}", body.device_id);
        return Err(refused());
    }
    let (token, expires_in) = state.tokens.issue_device(body.device_id, tenant);
    Ok(HttpResponse::Ok().json(AuthResponse { token, expires_in }))
}

/// `POST /device/v1/heartbeat`: the hot path, sent by every device every
/// interval, forever.
///
/// Budget: no SQL; one Redis round trip (presence, what the device
/// reported, and its pending flag, pipelined). If Redis does not answer,
/// the device is told to fetch: its fetch asks PostgreSQL, so commands
/// still arrive, only at a higher cost while Redis is away.
async fn heartbeat(
    state: Shared,
    device: DeviceCaller,
    body: web::Json<Heartbeat>,
) -> Result<HttpResponse, ApiError> {
    metrics::counter!("tend_heartbeats_total").increment(1);
    let reported = serde_json::to_string(&body.into_inner()).unwrap_or_default();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let pending = match state.live.heartbeat(device.id, now_ms, &reported).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(device.id = %device.id, "heartbeat without Redis: {e}");
            true
        }
    };
    Ok(HttpResponse::Ok().json(HeartbeatResponse {
        pending,
        next_heartbeat_s: state.heartbeat_s,
    }))
}

/// `GET /device/v1/instructions`: queued commands become delivered; those
/// delivered before and not yet reported come again.
async fn instructions(state: Shared, device: DeviceCaller) -> Result<HttpResponse, ApiError> {
    // Clear the flag before reading, never after: a command committed after
    // this read sets it again through its event, so no wake-up is lost.
    let _ = state.live.clear_pending(device.id).await;
    let client = state.pool.get().await.map_err(DbError::from)?;
    let commands = commands::fetch_for_device(&client, device.id).await?;
    if !commands.is_empty() {
        // Delivered commands keep the device pending until it reports.
        let _ = state.live.set_pending(device.id).await;
        metrics::counter!("tend_instructions_delivered_total").increment(commands.len() as u64);
    }
    let instructions = commands
        .into_iter()
        .map(|c| Instruction {
            id: c.id,
            kind: c.kind,
            params: c.params,
            issued_at: c.created_at,
            expires_at: c.expires_at,
            timeout_s: c.timeout_s.max(0) as u32,
        })
        .collect();
    Ok(HttpResponse::Ok().json(Instructions { instructions }))
}

/// `POST /device/v1/instructions/{id}/report`.
///
/// 200 when applied or an identical repeat; 409 out of a terminal state
/// (final: the agent stops retrying); 404 for another device's command.
async fn report(
    state: Shared,
    device: DeviceCaller,
    id: web::Path<Uuid>,
    body: web::Json<Report>,
) -> Result<HttpResponse, ApiError> {
    let report = body.into_inner();
    let mut client = state.pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let outcome = commands::apply_report(&tx, device.id, *id, &report).await?;
    tx.commit().await.map_err(DbError::from)?;
    match outcome {
        ReportOutcome::Applied(cmd) | ReportOutcome::Repeated(cmd) => {
            tracing::info!(command.id = %cmd.id, device.id = %device.id, status = %cmd.status,
                "command {} is {}", cmd.id, cmd.status);
            if cmd.status.is_terminal() {
                refresh_pending(&state, &client, device.id).await;
            }
            Ok(HttpResponse::Ok().json(serde_json::json!({ "id": cmd.id, "status": cmd.status })))
        }
        ReportOutcome::Conflict(status) => Err(ApiError::Conflict(format!(
            "the command is already {status}; the report was recorded but changes nothing"
        ))),
        ReportOutcome::NotFound => Err(ApiError::NotFound("no such instruction".into())),
    }
}

/// Recomputes the pending flag once a command ended: clear it, then set it
/// again if the device still has open commands (same ordering argument as
/// in `instructions`).
async fn refresh_pending(state: &Shared, client: &db::Client, device: Uuid) {
    if state.live.clear_pending(device).await.is_err() {
        return;
    }
    if let Ok(true) = commands::has_open(client, device).await {
        let _ = state.live.set_pending(device).await;
    }
}

async fn readyz(state: Shared) -> HttpResponse {
    let pg = db::ping(&state.pool).await.map_err(|e| e.to_string());
    let redis = state.live.ping().await.map_err(|e| e.to_string());
    let amqp = if state.consuming.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err("not consuming events".to_owned())
    };
    http::readiness(vec![("postgres", pg), ("redis", redis), ("rabbitmq", amqp)])
}
