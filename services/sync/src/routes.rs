//! The device API routes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{HttpResponse, ResponseError, web};
use tend_core::auth;
use tend_core::db::commands::{self, Command, RecoveryOutcome, ReportOutcome};
use tend_core::db::{self, devices};
use tend_core::error::ApiError;
use tend_core::http;
use tend_proto::command::{CommandKind, ReportStatus};
use tend_proto::device::{
    AuthRequest, AuthResponse, Heartbeat, HeartbeatResponse, Instructions, Recovery, Report,
};
use tend_proto::params::{self, CommandParams};
use uuid::Uuid;

use crate::Shared;
use crate::device::DeviceCaller;
use crate::software;

/// The most output stored per command (a log query's lines, say). Longer
/// output keeps its end, the newest lines, and says it was cut.
pub const MAX_OUTPUT_BYTES: usize = 2 * 1024 * 1024;

/// The recoveries one device may record in an hour (`POST
/// /device/v1/recoveries`).
const MAX_RECOVERIES_PER_HOUR: i64 = 20;

/// Auth bodies hold an id and a secret.
const AUTH_LIMIT: usize = 4 * 1024;
/// A heartbeat's inventory is stored in Redis at every beat and read back
/// by the monitor in batches: keep it small.
const HEARTBEAT_LIMIT: usize = 16 * 1024;

/// The device API's routes, with health and readiness. `/metrics` has a
/// port of its own ([`tend_core::metrics_port`]): devices, from anywhere,
/// reach this one.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(http::healthz))
        .route("/readyz", web::get().to(readyz))
        .service(
            web::scope("/device/v1")
                .service(
                    web::resource("/auth")
                        .app_data(http::json_config(AUTH_LIMIT))
                        .route(web::post().to(authenticate)),
                )
                .service(
                    web::resource("/enrol")
                        .app_data(http::json_config(crate::enrol::ENROL_LIMIT))
                        .route(web::post().to(crate::enrol::enrol)),
                )
                .service(
                    // Named: the metrics middleware reads a name without
                    // building the pattern string.
                    web::resource("/heartbeat")
                        .name("/device/v1/heartbeat")
                        .app_data(http::json_config(HEARTBEAT_LIMIT))
                        .route(web::post().to(heartbeat)),
                )
                .route("/instructions", web::get().to(instructions))
                .route("/update-check", web::post().to(software::update_check))
                .route("/artifacts/{id}", web::get().to(software::download))
                .route("/instructions/{id}/report", web::post().to(report))
                .route("/recoveries", web::post().to(recovery)),
        );
}

/// Cuts `s` to at most `max` bytes keeping its end, from a line start.
fn keep_tail(s: &mut String, max: usize) {
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    if let Some(nl) = s[start..].find('\n') {
        start += nl + 1;
    }
    s.replace_range(..start, "");
}

/// `POST /device/v1/auth`: a device's secret for a short-lived token.
async fn authenticate(
    state: Shared,
    body: web::Json<AuthRequest>,
) -> Result<HttpResponse, ApiError> {
    let refused = || ApiError::Unauthorized("unknown device or wrong secret".into());
    let found = db::with_client(&state.pool, async |client| {
        devices::find_secret(client, body.device_id).await
    })
    .await?;
    let credential = found.ok_or_else(refused)?;
    if !auth::device_secret_matches(&body.secret, &credential.secret_sha256)
        || state.revocations.is_revoked(body.device_id)
        || credential.admission == devices::Admission::Rejected
    {
        tracing::info!(device.id = %body.device_id, "refused authentication of device {}", body.device_id);
        return Err(refused());
    }
    if credential.admission == devices::Admission::Pending {
        // Its secret is right: tell it to wait, and when to ask again.
        let mut answer =
            ApiError::Forbidden("this device enrolled and waits for an admin to accept it".into())
                .error_response();
        answer.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from(state.heartbeat_s.max(1)),
        );
        return Ok(answer);
    }
    let (token, expires_in) = state.tokens.issue(body.device_id, credential.tenant_id);
    Ok(HttpResponse::Ok().json(AuthResponse {
        token,
        expires_in,
        device_type: Some(credential.device_type),
    }))
}

/// `POST /device/v1/heartbeat`: the hot path, sent by every device every
/// interval, forever.
///
/// Budget: no SQL and no round trip. The token is checked by signature and
/// an in-memory revocation list; presence goes into a buffer written to
/// Redis in batches; `pending` is read from the in-memory board. With
/// `wait_s`, the request is held until a command for the device arrives or
/// the wait ends (at most one heartbeat interval), and `next_heartbeat_s`
/// says how much of the interval is left.
async fn heartbeat(
    state: Shared,
    device: DeviceCaller,
    body: web::Json<Heartbeat>,
) -> Result<HttpResponse, ApiError> {
    static HEARTBEATS: std::sync::LazyLock<metrics::Counter> =
        std::sync::LazyLock::new(|| metrics::counter!("tend_heartbeats_total"));
    HEARTBEATS.increment(1);
    let mut beat = body.into_inner();
    let wait_s = beat
        .wait_s
        .take()
        .map_or(0, u64::from)
        .min(state.heartbeat_s);
    let mut reported = serde_json::to_string(&beat).unwrap_or_default();
    // PostgreSQL's jsonb refuses NUL, and the monitor writes this to it.
    // JSON escapes NUL as \u0000; the slow path runs only when one is there.
    if reported.contains("\\u0000") {
        let mut v: serde_json::Value = serde_json::from_str(&reported).unwrap_or_default();
        tend_proto::text::replace_nul(&mut v);
        reported = v.to_string();
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    state.presence.record(device.id, now_ms, reported);

    if wait_s == 0 {
        return Ok(HttpResponse::Ok().json(HeartbeatResponse {
            pending: state.board.is_pending(device.id),
            next_heartbeat_s: state.heartbeat_s,
        }));
    }
    let held = std::time::Instant::now();
    metrics::gauge!("tend_sync_longpoll_waiting").increment(1.0);
    let pending = state
        .board
        .wait(
            device.id,
            Duration::from_secs(wait_s),
            state.shutdown.draining(),
        )
        .await;
    metrics::gauge!("tend_sync_longpoll_waiting").decrement(1.0);
    Ok(HttpResponse::Ok().json(HeartbeatResponse {
        pending,
        next_heartbeat_s: state.heartbeat_s.saturating_sub(held.elapsed().as_secs()),
    }))
}

/// `GET /device/v1/instructions`: queued commands become delivered; those
/// delivered before and not yet reported come again.
async fn instructions(state: Shared, device: DeviceCaller) -> Result<HttpResponse, ApiError> {
    // Clear the flag before reading, never after: a command committed after
    // this read sets it again through its event, so no wake-up is lost.
    state.board.clear(device.id);
    let fetched = db::with_client(&state.pool, async |client| {
        commands::fetch_for_device(client, device.id).await
    })
    .await;
    let commands = match fetched {
        Ok(c) => c,
        Err(e) => {
            // The flag was cleared above; without it the device would not
            // ask again until the monitor re-announces.
            state.board.mark(device.id);
            return Err(e.into());
        }
    };
    if !commands.is_empty() {
        // Delivered commands keep the device pending until it reports.
        state.board.mark(device.id);
        metrics::counter!("tend_instructions_delivered_total").increment(commands.len() as u64);
    }
    for c in &commands {
        tracing::info!(command.id = %c.id, device.id = %device.id,
            trace_id = c.trace_id.as_deref().unwrap_or(""),
            "handing command {} to device {}", c.id, device.id);
    }
    let instructions = commands.iter().map(Command::instruction).collect();
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
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut report = body.into_inner();
    storable(&mut report);
    let outcome = db::in_tx(&state.pool, async |tx| {
        commands::apply_report(tx, device.id, *id, &report).await
    })
    .await?;
    match outcome {
        ReportOutcome::Applied(cmd) | ReportOutcome::Repeated(cmd) => {
            // The agent echoes the trace in `traceparent`; the record has it
            // too, for agents that do not.
            let trace_id = http::trace_id(&req)
                .or(cmd.trace_id.clone())
                .unwrap_or_default();
            tracing::info!(command.id = %cmd.id, device.id = %device.id, status = %cmd.status,
                trace_id = %trace_id, "command {} is {}", cmd.id, cmd.status);
            // `in_progress` ends "delivered" as much as a final status does.
            refresh_pending(&state, device.id).await;
            Ok(HttpResponse::Ok().json(serde_json::json!({ "id": cmd.id, "status": cmd.status })))
        }
        ReportOutcome::Conflict(status) if status.is_terminal() => Err(ApiError::Conflict(
            format!("the command is already {status}; the report was kept but changes nothing"),
        )),
        ReportOutcome::Conflict(status) => Err(ApiError::Conflict(format!(
            "the command is {status}: it was not delivered to this device"
        ))),
        ReportOutcome::NotFound => Err(ApiError::NotFound("no such instruction".into())),
    }
}

/// The most bytes of a report's `error`, and of its `detail` as JSON: an
/// honest agent sends a line and a few fields; the output is where text
/// goes.
pub const MAX_ERROR_BYTES: usize = 16 * 1024;
pub const MAX_DETAIL_BYTES: usize = 64 * 1024;
/// The largest field a `detail` over [`MAX_DETAIL_BYTES`] keeps.
const MAX_KEPT_FIELD_BYTES: usize = 1024;

/// Makes a report fit its column: no NUL (PostgreSQL's jsonb and text
/// refuse it, which would fail the report), an output of at most
/// [`MAX_OUTPUT_BYTES`], keeping its end, an error of at most
/// [`MAX_ERROR_BYTES`], keeping its start, and a detail of at most
/// [`MAX_DETAIL_BYTES`], keeping only its small top-level fields
/// otherwise (`rolled_back`, `phase` and the like).
pub(crate) fn storable(report: &mut Report) {
    report.replace_nul();
    if let Some(error) = report.error.as_mut()
        && error.len() > MAX_ERROR_BYTES
    {
        let mut end = MAX_ERROR_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
        error.push_str(" […]");
    }
    if let Some(detail) = report.detail.as_mut() {
        let size = detail.to_string().len();
        if size > MAX_DETAIL_BYTES {
            let mut kept = serde_json::Map::new();
            if let Some(fields) = detail.as_object() {
                for (k, v) in fields {
                    if k.len() + v.to_string().len() <= MAX_KEPT_FIELD_BYTES {
                        kept.insert(k.clone(), v.clone());
                    }
                }
            }
            kept.insert("detail_truncated".into(), true.into());
            kept.insert("detail_bytes".into(), size.into());
            *detail = serde_json::Value::Object(kept);
        }
    }
    if let Some(out) = report.output.as_mut()
        && out.len() > MAX_OUTPUT_BYTES
    {
        keep_tail(out, MAX_OUTPUT_BYTES);
        let detail = report.detail.get_or_insert_with(|| serde_json::json!({}));
        if let Some(d) = detail.as_object_mut() {
            d.insert("truncated".into(), true.into());
            d.insert("stored_bytes".into(), out.len().into());
        }
    }
}

/// `POST /device/v1/recoveries`: a restore the device ran on its own,
/// recorded in its command history once the link is back.
///
/// 201 when recorded, 200 for a repeat of the same id; 422 for params
/// that are not a restore's or a report that is not final; 409 when the
/// id is another command's.
async fn recovery(
    state: Shared,
    device: DeviceCaller,
    body: web::Json<Recovery>,
) -> Result<HttpResponse, ApiError> {
    let mut recovery = body.into_inner();
    let component = match params::parse(CommandKind::Restore, &recovery.params) {
        Ok(CommandParams::Restore(p)) => p.component,
        Ok(_) => unreachable!("restore params parse as restore params"),
        Err(e) => return Err(ApiError::Unprocessable(format!("params: {e}"))),
    };
    if !matches!(
        recovery.report.status,
        ReportStatus::Succeeded | ReportStatus::Failed
    ) {
        return Err(ApiError::Unprocessable(
            "a recovery is recorded once it has ended: status must be succeeded or failed".into(),
        ));
    }
    storable(&mut recovery.report);
    let outcome = db::in_tx(&state.pool, async |tx| {
        let Some((tenant, _)) = devices::identity(tx, device.id).await? else {
            return Ok(None);
        };
        commands::record_recovery(
            tx,
            tenant,
            device.id,
            &recovery,
            &component,
            MAX_RECOVERIES_PER_HOUR,
        )
        .await
        .map(Some)
    })
    .await?
    .ok_or_else(|| ApiError::NotFound("no such device".into()))?;
    match outcome {
        RecoveryOutcome::Recorded(cmd) => {
            tracing::info!(command.id = %cmd.id, device.id = %device.id, status = %cmd.status,
                "device {} recorded its own restore of {component}: {}", device.id, cmd.status);
            Ok(HttpResponse::Created()
                .json(serde_json::json!({ "id": cmd.id, "status": cmd.status })))
        }
        RecoveryOutcome::Repeated(cmd) => {
            Ok(HttpResponse::Ok().json(serde_json::json!({ "id": cmd.id, "status": cmd.status })))
        }
        RecoveryOutcome::Taken => Err(ApiError::Conflict("another command has this id".into())),
        // An honest agent recovers a component a few times a day at most;
        // a device that sends more may not flood its history.
        RecoveryOutcome::Limited => Err(ApiError::TooManyRequests {
            detail: format!(
                "this device recorded {MAX_RECOVERIES_PER_HOUR} recoveries in the last hour; try later"
            ),
            retry_after_s: 600,
        }),
    }
}

/// Recomputes the pending flag once a command left `delivered`: clear it,
/// then set it again if the device still has open commands (same ordering
/// argument as in `instructions`).
async fn refresh_pending(state: &Shared, device: Uuid) {
    state.board.clear(device);
    let open = db::with_client(&state.pool, async |client| {
        commands::has_open(client, device).await
    });
    match open.await {
        Ok(false) => {}
        // Unknown counts as pending: an extra fetch is cheap, a missed
        // command is not.
        Ok(true) | Err(_) => state.board.mark(device),
    }
}

/// `GET /readyz`: 503 only while draining or without PostgreSQL (fetches
/// and reports need it). Redis and RabbitMQ are reported, as `"down: …"`
/// when they fail, but do not fail readiness: heartbeats, pending flags and
/// long-polls go on without them (presence waits in memory, pending flags
/// come from PostgreSQL), and during a shared outage a failing probe would
/// take every replica out of the Service and stop all heartbeats.
async fn readyz(state: Shared) -> HttpResponse {
    if state.shutdown.is_draining() {
        return http::draining();
    }
    let (pg, redis) = tokio::join!(db::ping(&state.pool), state.live.ping());
    let amqp = if state.consuming.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err("not consuming events; reading pending work from PostgreSQL".to_owned())
    };
    http::readiness(
        vec![("postgres", pg.map_err(|e| e.to_string()))],
        vec![
            ("redis", redis.map_err(|e| e.to_string())),
            ("rabbitmq", amqp),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_and_a_large_detail_are_cut_to_their_bounds() {
        let mut report = Report {
            status: ReportStatus::Failed,
            output: None,
            error: Some("é".repeat(MAX_ERROR_BYTES)),
            detail: Some(serde_json::json!({
                "rolled_back": true,
                "phase": "health_check",
                "junk": "x".repeat(MAX_DETAIL_BYTES),
            })),
        };
        storable(&mut report);
        let error = report.error.unwrap();
        assert!(error.len() <= MAX_ERROR_BYTES + 8 && error.ends_with(" […]"));
        let detail = report.detail.unwrap();
        assert_eq!(detail["rolled_back"], true);
        assert_eq!(detail["phase"], "health_check");
        assert!(detail.get("junk").is_none());
        assert_eq!(detail["detail_truncated"], true);

        let mut small = Report {
            status: ReportStatus::Succeeded,
            output: None,
            error: Some("fine".into()),
            detail: Some(serde_json::json!({ "phase": "commit" })),
        };
        storable(&mut small);
        assert_eq!(small.error.as_deref(), Some("fine"));
        assert_eq!(small.detail, Some(serde_json::json!({ "phase": "commit" })));
    }

    #[test]
    fn long_output_keeps_its_newest_whole_lines() {
        let mut s = "old line\nnewer é line\nnewest\n".to_owned();
        keep_tail(&mut s, 20);
        assert_eq!(s, "newest\n");
        let mut s = "ééé".to_owned();
        keep_tail(&mut s, 3);
        assert_eq!(s, "é");
    }
}
