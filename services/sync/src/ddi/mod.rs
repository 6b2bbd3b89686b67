//! hawkBit's Direct Device Integration API, so that devices that already
//! run a hawkBit client (SWUpdate's suricatta, RAUC's updaters) are managed
//! by tend by changing one URL.
//!
//! Everything lives under `/{tenant}/controller/v1/{controllerId}`, where
//! `tenant` is the tenant's name and `controllerId` the device's. A
//! deployment is an `upgrade` command and its action id the command's
//! `seq`; feedback moves the command through the same lifecycle as an
//! agent's reports do, so the denylist, the history and the monitor's
//! timeouts hold for DDI devices too.
//!
//! The base poll is the hot path: with nothing to do it runs no SQL. The
//! session ([`session`]) is remembered, presence goes into the same buffer
//! as heartbeats, and work is read from the board. A device whose board
//! flag is set gets one query that finds its open upgrade; while one is
//! open (queued, delivered or in progress) the flag stays set, so a device
//! that rebooted mid-update is offered the same `deploymentBase` until it
//! sends its final feedback.

mod session;
mod wire;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use tend_core::db::{self, commands, commands::ReportOutcome, ddi};
use tend_core::error::ApiError;
use tend_core::http;
use tend_proto::CommandStatus;
use tend_proto::command::ReportStatus;
use uuid::Uuid;

pub use session::{SESSION_TTL, Sessions};

use crate::{Shared, software};

/// Feedback carries a few lines of details; configData a few attributes.
const BODY_LIMIT: usize = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/{tenant}/controller/v1/{controller}")
            .app_data(http::json_config(BODY_LIMIT))
            .service(
                // Named: the metrics middleware reads a name without
                // building the pattern string.
                web::resource("")
                    .name("/{tenant}/controller/v1/{controller}")
                    .route(web::get().to(poll)),
            )
            .route("/deploymentBase/{action}", web::get().to(deployment_base))
            .route(
                "/deploymentBase/{action}/feedback",
                web::post().to(deployment_feedback),
            )
            .route("/installedBase/{action}", web::get().to(installed_base))
            .route("/cancelAction/{action}", web::get().to(cancel_action))
            .route(
                "/cancelAction/{action}/feedback",
                web::post().to(cancel_feedback),
            )
            .route("/configData", web::put().to(config_data))
            .service(
                // HEAD too: clients ask for the size before they download.
                web::resource("/softwaremodules/{module}/artifacts/{file}")
                    .route(web::get().to(download))
                    .route(web::head().to(download)),
            ),
    );
}

#[derive(serde::Deserialize)]
struct Controller {
    tenant: String,
    controller: String,
}

#[derive(serde::Deserialize)]
struct Action {
    tenant: String,
    controller: String,
    action: String,
}

impl Action {
    /// The action id: a command's `seq`. Anything else names no action.
    fn seq(&self) -> Result<i64, ApiError> {
        self.action
            .parse::<i64>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| ApiError::NotFound("no such action".into()))
    }
}

/// The URL of this controller's resources, from the request's own: the
/// path up to and without `/{marker}`, on the scheme and host the client
/// used.
fn base_url(req: &HttpRequest, marker: Option<&str>) -> String {
    let path = req.uri().path();
    let base = match marker.and_then(|m| path.rfind(&format!("/{m}/"))) {
        Some(at) => &path[..at],
        None => path.trim_end_matches('/'),
    };
    let info = req.connection_info();
    format!("{}://{}{base}", info.scheme(), info.host())
}

fn link(href: String) -> Value {
    json!({ "href": href })
}

/// `GET /{tenant}/controller/v1/{controllerId}`: the base poll.
async fn poll(
    state: Shared,
    path: web::Path<Controller>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    static POLLS: std::sync::LazyLock<metrics::Counter> =
        std::sync::LazyLock::new(|| metrics::counter!("tend_ddi_polls_total"));
    POLLS.increment(1);
    let session = session::authenticate(&state, &req, &path.tenant, &path.controller).await?;
    let device = session.device;
    // `null`: a DDI device reports nothing at a poll, and the monitor then
    // keeps what the device row holds (its attributes among it).
    state
        .presence
        .record(device, chrono::Utc::now().timestamp_millis(), "null".into());

    let base = base_url(&req, None);
    let mut links = serde_json::Map::new();
    if state.board.is_pending(device) {
        // Clear before reading, as a fetch does: a command committed after
        // the read sets the flag again through its event.
        state.board.clear(device);
        let open = db::with_client(&state.pool, async |client| {
            ddi::open_action(client, device).await
        })
        .await;
        match open {
            Ok(Some((seq, command))) => {
                state.board.mark(device);
                // `c` changes with the command, as hawkBit's does; some
                // clients require it, the routes ignore it.
                let c = &command.simple().to_string()[..12];
                links.insert(
                    "deploymentBase".into(),
                    link(format!("{base}/deploymentBase/{seq}?c={c}")),
                );
            }
            Ok(None) => {}
            Err(e) => {
                state.board.mark(device);
                return Err(e.into());
            }
        }
    }
    if let Some(seq) = session.installed() {
        links.insert(
            "installedBase".into(),
            link(format!("{base}/installedBase/{seq}")),
        );
    }
    // Asked for only while there is no deployment to offer: a client may
    // hold back a deployment until it has sent attributes it may not have.
    if !session.attributes_known() && !links.contains_key("deploymentBase") {
        links.insert("configData".into(), link(format!("{base}/configData")));
    }
    Ok(HttpResponse::Ok().json(json!({
        "config": { "polling": { "sleep": wire::sleep(state.heartbeat_s) } },
        "_links": links,
    })))
}

/// `GET …/deploymentBase/{actionId}`: what to install. The device has the
/// command from now on (`delivered`).
async fn deployment_base(
    state: Shared,
    path: web::Path<Action>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let found = action(&state, &req, &path, true).await?;
    if found.status.is_terminal() {
        return Err(ended(found.seq, found.status));
    }
    let body = deployment_json(&state, &req, "deploymentBase", &found).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// `GET …/installedBase/{actionId}`: what an action that succeeded
/// installed.
async fn installed_base(
    state: Shared,
    path: web::Path<Action>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let found = action_in(
        &state,
        &req,
        &path,
        CommandStatus::Succeeded,
        "installed nothing",
    )
    .await?;
    let body = deployment_json(&state, &req, "installedBase", &found).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// The action the path names, of the device the credential names; with
/// `deliver`, a queued one becomes `delivered`.
async fn action(
    state: &Shared,
    req: &HttpRequest,
    path: &Action,
    deliver: bool,
) -> Result<ddi::Deployment, ApiError> {
    let session = session::authenticate(state, req, &path.tenant, &path.controller).await?;
    let seq = path.seq()?;
    db::with_client(&state.pool, async |client| {
        ddi::deployment(client, session.device, seq, deliver).await
    })
    .await?
    .ok_or_else(|| ApiError::NotFound("no such action for this device".into()))
}

/// Like [`action`], for an action that must be `status`: any other is a
/// 404 that says what it is.
async fn action_in(
    state: &Shared,
    req: &HttpRequest,
    path: &Action,
    status: CommandStatus,
    otherwise: &str,
) -> Result<ddi::Deployment, ApiError> {
    let found = action(state, req, path, false).await?;
    if found.status != status {
        return Err(ApiError::NotFound(format!(
            "action {} {otherwise}: it is {}",
            found.seq, found.status
        )));
    }
    Ok(found)
}

fn ended(seq: i64, status: CommandStatus) -> ApiError {
    ApiError::Gone(format!("action {seq} has ended: it is {status}"))
}

/// A deployment as DDI shows it: one chunk, the component, with its one
/// artifact and the links to download it and its MD5SUM.
async fn deployment_json(
    state: &Shared,
    req: &HttpRequest,
    marker: &str,
    found: &ddi::Deployment,
) -> Result<Value, ApiError> {
    let base = base_url(req, Some(marker));
    let mut chunks = Vec::new();
    if let Some(a) = &found.artifact {
        let (sha1, md5) = match (&a.sha1, &a.md5) {
            (Some(sha1), Some(md5)) => (sha1.clone(), md5.clone()),
            // Uploaded before SHA-1 and MD5 were kept: read it once.
            _ => {
                let stored = state
                    .store
                    .digests(&a.object_key, a.size.max(0) as u64)
                    .await?;
                db::with_client(&state.pool, async |client| {
                    ddi::set_digests(client, a.id, &stored.sha1, &stored.md5).await
                })
                .await?;
                (stored.sha1, stored.md5)
            }
        };
        let filename = file_name(a);
        let file = format!(
            "{base}/softwaremodules/{}/artifacts/{}",
            a.id,
            encode_segment(&filename)
        );
        let md5sum = format!("{file}.MD5SUM");
        chunks.push(json!({
            "part": "os",
            "name": a.component,
            "version": a.version,
            "artifacts": [{
                "filename": filename,
                "size": a.size,
                "hashes": { "sha1": sha1, "md5": md5, "sha256": a.sha256 },
                "_links": {
                    "download": link(file.clone()),
                    "download-http": link(file),
                    "md5sum": link(md5sum.clone()),
                    "md5sum-http": link(md5sum),
                },
            }],
        }));
    }
    Ok(json!({
        "id": found.seq.to_string(),
        "deployment": {
            "download": "forced",
            "update": "forced",
            "chunks": chunks,
        },
    }))
}

/// The name an artifact is offered under: the one given at upload, or its
/// component and version.
fn file_name(a: &ddi::DeployedArtifact) -> String {
    a.filename
        .clone()
        .unwrap_or_else(|| format!("{}-{}", a.component, a.version))
}

/// `s` as one URL path segment: everything but unreserved characters
/// percent-encoded.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST …/deploymentBase/{actionId}/feedback`: the device's progress and
/// result. 200 when applied or an identical repeat; 410 once the action
/// has ended otherwise; 404 for an action that is not this device's.
async fn deployment_feedback(
    state: Shared,
    path: web::Path<Action>,
    req: HttpRequest,
    body: web::Json<wire::Feedback>,
) -> Result<HttpResponse, ApiError> {
    let session = session::authenticate(&state, &req, &path.tenant, &path.controller).await?;
    let seq = path.seq()?;
    let mut report = body.to_report()?;
    crate::routes::storable(&mut report);
    let device = session.device;
    let outcome = db::in_tx(&state.pool, async |tx| {
        // Feedback may come before the device read its deploymentBase
        // (a client resuming after a restart): it has the action then.
        let Some(found) = ddi::deployment(tx, device, seq, true).await? else {
            return Ok::<_, ApiError>(None);
        };
        let outcome = commands::apply_report(tx, device, found.command_id, &report).await?;
        if let (ReportOutcome::Applied(_), ReportStatus::Succeeded, Some(a)) =
            (&outcome, report.status, &found.artifact)
        {
            ddi::record_installed(tx, device, &a.component, &a.version).await?;
        }
        Ok(Some(outcome))
    })
    .await?
    .ok_or_else(|| ApiError::NotFound("no such action for this device".into()))?;
    match outcome {
        ReportOutcome::Applied(cmd) | ReportOutcome::Repeated(cmd) => {
            if cmd.status == CommandStatus::Succeeded {
                session.set_installed(seq);
            }
            if cmd.status.is_terminal() {
                tracing::info!(command.id = %cmd.id, device.id = %device,
                    "DDI action {seq} (command {}) of device {device} is {}", cmd.id, cmd.status);
            }
            Ok(HttpResponse::Ok().finish())
        }
        ReportOutcome::Conflict(status) if status.is_terminal() => Err(ended(seq, status)),
        ReportOutcome::Conflict(status) => Err(ApiError::Conflict(format!(
            "action {seq} is {status}: it was not handed to this device"
        ))),
        ReportOutcome::NotFound => Err(ApiError::NotFound("no such action for this device".into())),
    }
}

/// `GET …/cancelAction/{actionId}`. tend cancels only a command that no
/// device has taken yet, so a DDI device never has to stop an update it
/// started; an action cancelled before the device took it is shown here,
/// for clients that ask.
async fn cancel_action(
    state: Shared,
    path: web::Path<Action>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let found = action_in(
        &state,
        &req,
        &path,
        CommandStatus::Cancelled,
        "was not cancelled",
    )
    .await?;
    let seq = found.seq;
    Ok(HttpResponse::Ok().json(json!({
        "id": seq.to_string(),
        "cancelAction": { "stopId": seq.to_string() },
    })))
}

/// `POST …/cancelAction/{actionId}/feedback`: the device confirms a
/// cancellation. The command is already `cancelled`; the confirmation is
/// accepted and changes nothing.
async fn cancel_feedback(
    state: Shared,
    path: web::Path<Action>,
    req: HttpRequest,
    body: web::Json<wire::Feedback>,
) -> Result<HttpResponse, ApiError> {
    // Read for its validity only: a confirmation has nothing to record.
    let _ = body.to_report();
    action_in(
        &state,
        &req,
        &path,
        CommandStatus::Cancelled,
        "was not cancelled",
    )
    .await?;
    Ok(HttpResponse::Ok().finish())
}

/// `PUT …/configData`: attributes the device reports about itself, kept
/// in the device's `reported.attributes` (`mode`: merge, the default,
/// replace or remove).
async fn config_data(
    state: Shared,
    path: web::Path<Controller>,
    req: HttpRequest,
    body: web::Json<wire::ConfigData>,
) -> Result<HttpResponse, ApiError> {
    let session = session::authenticate(&state, &req, &path.tenant, &path.controller).await?;
    let attributes = body.attributes()?;
    let mode = match body.mode.unwrap_or(wire::Mode::Merge) {
        wire::Mode::Merge => ddi::AttributesMode::Merge,
        wire::Mode::Replace => ddi::AttributesMode::Replace,
        wire::Mode::Remove => ddi::AttributesMode::Remove,
    };
    db::with_client(&state.pool, async |client| {
        ddi::set_attributes(client, session.device, mode, &attributes).await
    })
    .await?;
    session.set_attributes_known();
    Ok(HttpResponse::Ok().finish())
}

#[derive(serde::Deserialize)]
struct ArtifactPath {
    tenant: String,
    controller: String,
    module: String,
    file: String,
}

/// `GET …/softwaremodules/{id}/artifacts/{file}`: the artifact of an open
/// upgrade of this device, with `Range`, `If-Range` and `ETag` as the
/// device API serves it; `{file}.MD5SUM` is its MD5 in `md5sum` format.
async fn download(
    state: Shared,
    path: web::Path<ArtifactPath>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let session = session::authenticate(&state, &req, &path.tenant, &path.controller).await?;
    let not_found = || ApiError::NotFound("no such artifact for this device".into());
    let artifact: Uuid = path.module.parse().map_err(|_| not_found())?;
    let Some(file) = path.file.strip_suffix(".MD5SUM") else {
        return software::serve(&state, session.device, artifact, &req).await;
    };
    let found = db::with_client(&state.pool, async |client| {
        tend_core::db::artifacts::download_for(client, session.device, artifact).await
    })
    .await?
    .ok_or_else(not_found)?;
    let md5 = match found.md5 {
        Some(md5) => md5,
        None => {
            state
                .store
                .digests(&found.object_key, found.size.max(0) as u64)
                .await?
                .md5
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
        .body(format!("{md5}  {file}\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_become_one_path_segment() {
        assert_eq!(encode_segment("update-1.2.swu"), "update-1.2.swu");
        assert_eq!(encode_segment("a b/c?.swu"), "a%20b%2Fc%3F.swu");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
