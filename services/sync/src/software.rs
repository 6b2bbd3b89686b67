//! The device side of software delivery: the update check, which decides
//! (seeds 003 and 004), and artifact downloads, which carry the bytes.
//! They are separate, as seed 004's query server and file server are: a
//! check is a few indexed reads, a download streams from the artifact
//! store (or is sent to the store itself) and never touches PostgreSQL
//! past its first read.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use tend_core::db::artifacts::{self, Artifact};
use tend_core::db::{self, commands, devices};
use tend_core::error::ApiError;
use tend_core::http;
use tend_proto::device::{UpdateCheck, UpdateCheckResponse};
use tend_proto::params::{UpgradeParams, is_component_name};
use uuid::Uuid;

use crate::Shared;
use crate::device::DeviceCaller;

/// How long a device has to download, install and check an upgrade the
/// update check queued: an image of hundreds of megabytes on a slow link,
/// plus an install and a health check, fits in an hour.
const UPGRADE_TIMEOUT_S: i32 = 3600;
/// How long such an upgrade may wait for its device: a device that does
/// not fetch it within a day checks again and gets a fresh one.
const UPGRADE_EXPIRES_IN_S: i32 = 86_400;
/// The most components one check may name; a device has a handful.
const MAX_COMPONENTS: usize = 64;
/// How long a presigned download URL is valid: long enough to fetch a
/// large image in segments, short enough that a leaked URL soon dies.
const PRESIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// `POST /device/v1/update-check`: queues an `upgrade` for each component
/// that should change, and answers whether work is pending.
///
/// For each component the device runs, the newest released artifact of its
/// type is offered when it is a different version and not an older one
/// (seed 003), unless the device is on that artifact's denylist (seed 004:
/// and then nothing, not an older release instead). An open upgrade or
/// restore of the component is never doubled: a check skips components
/// with an open command, and the database's unique index on open commands
/// per component decides between concurrent checks.
pub async fn update_check(
    state: Shared,
    device: DeviceCaller,
    body: web::Json<UpdateCheck>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let running = body.into_inner().components;
    check_components(&running)?;
    let names: Vec<String> = running.keys().cloned().collect();
    let (tenant, device_type, offers) = db::with_client(&state.pool, async |client| {
        let (tenant, device_type) = devices::identity(client, device.id)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("this device was decommissioned".into()))?;
        let released = artifacts::released_for(client, tenant, &names, &device_type).await?;
        // A component already being changed gets nothing new: most checks
        // of a device with an upgrade open end here, without an insert.
        let busy = commands::open_components(client, device.id).await?;
        let mut offers = Vec::new();
        for newest in newest_by_component(released).into_values() {
            let current = &running[&newest.component];
            if !busy.contains(&newest.component)
                && tend_proto::version::is_upgrade(&newest.version, current)
                && !artifacts::is_denied(client, newest.id, device.id).await?
            {
                offers.push(newest);
            }
        }
        Ok::<_, ApiError>((tenant, device_type, offers))
    })
    .await?;

    let trace_id = http::trace_id(&req).unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    let mut queued = 0;
    for artifact in offers {
        if queue_upgrade(&state, tenant, device.id, &artifact, &trace_id).await? {
            queued += 1;
            tracing::info!(device.id = %device.id, artifact.id = %artifact.id,
                component = %artifact.component, version = %artifact.version,
                device_type = %device_type, trace_id = %trace_id,
                "update check: upgrade of {} to {} queued for device {}",
                artifact.component, artifact.version, device.id);
        }
    }
    if queued > 0 {
        state.board.mark(device.id);
    }
    Ok(HttpResponse::Ok().json(UpdateCheckResponse {
        pending: state.board.is_pending(device.id),
    }))
}

fn check_components(running: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if running.len() > MAX_COMPONENTS {
        return Err(ApiError::Unprocessable(format!(
            "at most {MAX_COMPONENTS} components"
        )));
    }
    for (name, version) in running {
        if !is_component_name(name) || !tend_proto::version::is_valid(version) {
            return Err(ApiError::Unprocessable(format!(
                "component {name:?} at version {version:?}: names are 1 to 64 of letters, \
                 digits, '.', '_', '-'; versions 1 to 64 of those and '+', '~'"
            )));
        }
    }
    Ok(())
}

/// The newest of each component's released artifacts: the greatest
/// semantic version where versions parse as such, else the most recently
/// created.
fn newest_by_component(released: Vec<Artifact>) -> BTreeMap<String, Artifact> {
    let mut newest: BTreeMap<String, Artifact> = BTreeMap::new();
    for a in released {
        match newest.get(&a.component) {
            Some(best) if !newer_release(&a, best) => {}
            _ => {
                newest.insert(a.component.clone(), a);
            }
        }
    }
    newest
}

fn newer_release(a: &Artifact, than: &Artifact) -> bool {
    match tend_proto::version::compare(&a.version, &than.version) {
        Some(order) => order.is_gt() || (order.is_eq() && a.created_at > than.created_at),
        None => a.created_at > than.created_at,
    }
}

/// Queues one upgrade; `false` when an upgrade or restore of the component
/// is already open (this check's or another's).
async fn queue_upgrade(
    state: &Shared,
    tenant: Uuid,
    device: Uuid,
    artifact: &Artifact,
    trace_id: &str,
) -> Result<bool, ApiError> {
    let params = serde_json::to_value(UpgradeParams {
        artifact_id: artifact.id,
        artifact: Some(artifact.reference()),
    })
    .map_err(|e| ApiError::Internal(e.into()))?;
    // Queued unsigned: tend-sync holds no signing key. A platform replica
    // checks and signs it within a second, and only then is it announced.
    let created = db::in_tx(&state.pool, async |tx| {
        commands::create_unsigned(
            tx,
            commands::NewCommand {
                tenant_id: tenant,
                device_id: device,
                kind: "upgrade",
                params: &params,
                timeout_s: UPGRADE_TIMEOUT_S,
                expires_in_s: UPGRADE_EXPIRES_IN_S,
                created_by: None,
                trace_id: Some(trace_id),
                artifact_id: Some(artifact.id),
                component: Some(&artifact.component),
            },
        )
        .await
    })
    .await;
    match created {
        Ok(_) => Ok(true),
        Err(e) if e.unique_violation() == Some("commands_open_component_key") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One `Range` the download serves.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Whole,
    /// Start and end, end exclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// Reads a `Range` header against an object of `size` bytes. One range of
/// bytes only: anything else (several ranges, other units, nonsense) is
/// served whole, as RFC 9110 allows a server to ignore a Range.
fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => Wanted::Unsatisfiable,
            Some(n) if size > 0 => Wanted::Part(size.saturating_sub(n), size),
            Some(_) => Wanted::Unsatisfiable,
            None => Wanted::Whole,
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return Wanted::Whole;
            };
            if start >= size {
                return Wanted::Unsatisfiable;
            }
            let end = if last.is_empty() {
                size
            } else {
                match parse(last) {
                    Some(l) if l >= start => (l + 1).min(size),
                    _ => return Wanted::Whole,
                }
            };
            Wanted::Part(start, end)
        }
        (true, true) => Wanted::Whole,
    }
}

/// `GET /device/v1/artifacts/{id}`: the bytes of an artifact that an open
/// upgrade or restore of this device names; 404 for any other.
///
/// `Range` with one range (206, or 416 past the end), `ETag` (the quoted
/// SHA-256) and `If-Range`, so a device resumes an interrupted download
/// segment by segment (seed 004: 1 to 10 KB segments work). Downloads at
/// once are bounded: past the bound the answer is 503 with `Retry-After`,
/// never a growing queue. With an S3 store the device is sent to a
/// short-lived presigned URL, and the bytes never pass through tend-sync.
pub async fn download(
    state: Shared,
    device: DeviceCaller,
    id: web::Path<Uuid>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    serve(&state, device.id, *id, &req).await
}

/// The artifact `id` for `device`, as [`download`] serves it (hawkBit DDI
/// downloads too).
pub async fn serve(
    state: &Shared,
    device: Uuid,
    id: Uuid,
    req: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let found = db::with_client(&state.pool, async |client| {
        artifacts::download_for(client, device, id).await
    })
    .await?
    .ok_or_else(|| ApiError::NotFound("no such artifact for this device".into()))?;

    if let Some(url) = state
        .store
        .presigned_get(&found.object_key, PRESIGNED_FOR)
        .await?
    {
        return Ok(HttpResponse::Found()
            .insert_header((header::LOCATION, url.to_string()))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish());
    }

    let Ok(permit) = state.downloads.clone().try_acquire_owned() else {
        metrics::counter!("tend_sync_downloads_refused_total").increment(1);
        return Err(ApiError::Unavailable(
            "too many downloads at once; try again shortly".into(),
        ));
    };
    let size = found.size.max(0) as u64;
    let etag = format!("\"{}\"", found.sha256);
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    // A Range applies only if the device's copy is of these bytes.
    let range = match req
        .headers()
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        Some(validator) if validator.trim() != etag => None,
        _ => range,
    };
    let (status, start, end) = match wanted(range, size) {
        Wanted::Whole => (actix_web::http::StatusCode::OK, 0, size),
        Wanted::Part(start, end) => (actix_web::http::StatusCode::PARTIAL_CONTENT, start, end),
        Wanted::Unsatisfiable => {
            return Ok(HttpResponse::RangeNotSatisfiable()
                .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                .insert_header((header::ETAG, etag))
                .finish());
        }
    };
    let mut res = HttpResponse::build(status);
    res.insert_header((header::ETAG, etag))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"));
    if let Some(name) = &found.filename {
        res.insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                name.replace(['"', '\\'], "_")
            ),
        ));
    }
    if status == actix_web::http::StatusCode::PARTIAL_CONTENT {
        res.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        ));
    }
    if start == end {
        return Ok(res.no_chunking(0).finish());
    }
    let bytes = state.store.get_range(&found.object_key, start..end).await?;
    // The permit lives as long as the body does: a download counts until
    // its last byte is sent or its device goes away.
    let body = bytes.map(move |chunk| {
        let _held = &permit;
        chunk.map_err(|e| {
            tracing::warn!("artifact download failed midway: {e}");
            std::io::Error::other(e.to_string())
        })
    });
    metrics::counter!("tend_sync_downloads_total").increment(1);
    Ok(res.no_chunking(end - start).streaming(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_range_is_served_and_anything_else_whole_or_refused() {
        let w = |r: &str| wanted(Some(r), 1000);
        assert_eq!(wanted(None, 1000), Wanted::Whole);
        assert_eq!(w("bytes=0-0"), Wanted::Part(0, 1));
        assert_eq!(
            w("bytes=0-1023"),
            Wanted::Part(0, 1000),
            "clamped to the end"
        );
        assert_eq!(w("bytes=999-"), Wanted::Part(999, 1000));
        assert_eq!(w("bytes=-10"), Wanted::Part(990, 1000));
        assert_eq!(w("bytes=-5000"), Wanted::Part(0, 1000));
        assert_eq!(w("bytes=1000-"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=-0"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=0-1,5-6"), Wanted::Whole, "several ranges");
        assert_eq!(w("items=0-1"), Wanted::Whole);
        assert_eq!(w("bytes=5-1"), Wanted::Whole, "an invalid range is ignored");
        assert_eq!(w("bytes=x-"), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
    }
}
