//! Software delivery from the device's side: `upgrade` and `restore`
//! resolved when queued, the update check (seeds 003 and 004), downloads
//! in Range segments, and the denylist a rollback writes.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tend_tests::{Device, Stack, eventually};
use uuid::Uuid;

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 509) as u8).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates, uploads and (if asked) releases an artifact; answers its id.
async fn artifact(
    stack: &Stack,
    admin: &str,
    component: &str,
    version: &str,
    types: &[&str],
    body: &[u8],
    release: bool,
) -> String {
    let a = stack
        .upload_artifact(admin, component, version, types, body.to_vec())
        .await;
    let id = a["id"].as_str().unwrap().to_owned();
    if release {
        stack.release_artifact(admin, &id).await;
    }
    id
}

async fn check(stack: &Stack, token: &str, components: Value) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.device_api("/update-check"))
        .bearer_auth(token)
        .json(&json!({ "components": components }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The device's open upgrade commands.
async fn upgrades(stack: &Stack, admin: &str, device: Uuid) -> Vec<Value> {
    let (_, list) = stack
        .get(admin, &format!("/devices/{device}/commands"))
        .await;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "upgrade")
        .cloned()
        .collect()
}

async fn queue(stack: &Stack, admin: &str, device: Uuid, body: Value) -> (u16, Value) {
    stack
        .post(admin, &format!("/devices/{device}/commands"), body)
        .await
}

#[tokio::test]
async fn a_released_newer_version_is_offered_once_and_nothing_else_is() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;
    // Offered: app 1.10.0 for kiosks. Never offered: an unreleased newer
    // one, one for cameras, and other components' releases.
    let newer = artifact(
        &stack,
        &admin,
        "app",
        "1.10.0",
        &["kiosk"],
        &bytes(2048),
        true,
    )
    .await;
    artifact(
        &stack,
        &admin,
        "app",
        "1.11.0",
        &["kiosk"],
        &bytes(10),
        false,
    )
    .await;
    artifact(
        &stack,
        &admin,
        "app",
        "9.0.0",
        &["camera"],
        &bytes(10),
        true,
    )
    .await;
    artifact(&stack, &admin, "os", "2.0.0", &["camera"], &bytes(10), true).await;

    // The same version, an older one, or a component with nothing
    // released: nothing queued.
    for running in ["1.10.0", "2.0.0"] {
        let (status, v) = check(&stack, &token, json!({ "app": running, "os": "1.0.0" })).await;
        assert_eq!(status, 200, "{v}");
        assert!(
            upgrades(&stack, &admin, device.id).await.is_empty(),
            "running {running}"
        );
    }

    // Two checks at once still queue one upgrade.
    let (a, b) = tokio::join!(
        check(&stack, &token, json!({ "app": "1.9.3" })),
        check(&stack, &token, json!({ "app": "1.9.3" }))
    );
    assert_eq!((a.0, b.0), (200, 200));
    assert!(
        a.1["pending"] == true || b.1["pending"] == true,
        "{} {}",
        a.1,
        b.1
    );
    let queued = upgrades(&stack, &admin, device.id).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    let params = &queued[0]["params"];
    assert_eq!(params["artifact_id"], newer.as_str());
    assert_eq!(params["artifact"]["version"], "1.10.0");
    assert_eq!(params["artifact"]["size"], 2048);
    assert_eq!(
        params["artifact"]["sha256"],
        hex(&Sha256::digest(bytes(2048)))
    );
    let (_, v) = check(&stack, &token, json!({ "app": "1.9.3" })).await;
    assert_eq!(v["pending"], true);
    assert_eq!(upgrades(&stack, &admin, device.id).await.len(), 1);

    // A denylisted device is offered nothing, and no older release instead.
    let other = stack.new_device(&admin).await;
    let other_token = stack.device_token(&other).await;
    artifact(&stack, &admin, "app", "1.9.9", &["kiosk"], &bytes(10), true).await;
    let r = stack
        .http
        .put(stack.api(&format!("/artifacts/{newer}/denylist/{}", other.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, v) = check(&stack, &other_token, json!({ "app": "1.0.0" })).await;
    assert_eq!(v["pending"], false, "{v}");
    assert!(upgrades(&stack, &admin, other.id).await.is_empty());

    // Malformed checks are refused.
    assert_eq!(check(&stack, &token, json!({ "a/b": "1" })).await.0, 422);
    assert_eq!(check(&stack, &token, json!({ "app": "1 2" })).await.0, 422);
    assert_eq!(check(&stack, &token, json!("app")).await.0, 422);
}

/// Fetches the device's instructions (delivering them) until `id` is among
/// them, and reports on it. An update check's upgrade is handed over once
/// the platform has signed it, within about a second.
async fn report(stack: &Stack, token: &str, id: &str, body: Value) -> u16 {
    eventually(WAIT, "the upgrade to be signed and handed over", || async {
        let list: Value = stack
            .http
            .get(stack.device_api("/instructions"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list["instructions"]
            .as_array()?
            .iter()
            .any(|i| i["id"] == id)
            .then_some(())
    })
    .await;
    stack
        .http
        .post(stack.device_api(&format!("/instructions/{id}/report")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_upgrade_that_rolled_back_denies_the_artifact_to_the_device() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;
    let id = artifact(
        &stack,
        &admin,
        "app",
        "2.0.0",
        &["kiosk"],
        &bytes(100),
        true,
    )
    .await;
    check(&stack, &token, json!({ "app": "1.0.0" })).await;
    let queued = upgrades(&stack, &admin, device.id).await;
    let command = queued[0]["id"].as_str().unwrap().to_owned();

    let failed = json!({ "status": "failed", "error": "health check failed: exit 3",
        "detail": { "component": "app", "from_version": "1.0.0", "to_version": "2.0.0",
                    "running_version": "1.0.0", "rolled_back": true } });
    assert_eq!(report(&stack, &token, &command, failed).await, 200);
    let (status, entry) = stack
        .get(&admin, &format!("/artifacts/{id}/denylist/{}", device.id))
        .await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["created_by"], Value::Null, "added by tend");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("health check failed")
    );
    let shown = stack.command(&admin, command.parse().unwrap()).await;
    assert_eq!(shown["result"]["detail"]["rolled_back"], true);
    assert_eq!(shown["result"]["detail"]["running_version"], "1.0.0");
    // The audit log names no actor: tend did it, on the device's report.
    let (status, log) = stack.get(&admin, "/audit?action=denylist.add").await;
    assert_eq!(status, 200, "{log}");
    let row = &log["items"][0];
    assert_eq!(
        row["actor"],
        json!({ "id": null, "username": null }),
        "{log}"
    );
    assert_eq!(
        row["target"],
        json!({ "type": "artifact", "id": &id }),
        "{log}"
    );
    assert_eq!(row["summary"]["device_id"], device.id.to_string(), "{log}");
    assert_eq!(row["summary"]["automatic"], true, "{log}");

    let (_, v) = check(&stack, &token, json!({ "app": "1.0.0" })).await;
    assert_eq!(v["pending"], false, "{v}");
    assert_eq!(
        upgrades(&stack, &admin, device.id).await.len(),
        1,
        "no new offer"
    );
    let (status, v) = queue(
        &stack,
        &admin,
        device.id,
        json!({ "kind": "upgrade", "params": { "artifact_id": id } }),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("denylist"), "{v}");
}

#[tokio::test]
async fn explicit_upgrades_and_restores_are_resolved_and_checked_when_queued() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let ready = artifact(
        &stack,
        &admin,
        "app",
        "1.0.0",
        &["kiosk"],
        &bytes(64),
        false,
    )
    .await;
    let camera = artifact(
        &stack,
        &admin,
        "app",
        "1.0.0",
        &["camera"],
        &bytes(64),
        false,
    )
    .await;
    let (status, pending) = stack
        .post(
            &admin,
            "/artifacts",
            json!({ "component": "app", "version": "3", "device_types": ["kiosk"] }),
        )
        .await;
    assert_eq!(status, 201);
    for (artifact_id, why) in [
        (pending["id"].as_str().unwrap().to_owned(), "not ready"),
        (camera, "device type"),
        (Uuid::new_v4().to_string(), "no such artifact"),
    ] {
        let (status, v) = queue(
            &stack,
            &admin,
            device.id,
            json!({ "kind": "upgrade", "params": { "artifact_id": artifact_id } }),
        )
        .await;
        assert_eq!(status, 422, "{why}: {v}");
        assert!(v["detail"].as_str().unwrap().contains(why), "{why}: {v}");
    }

    let (status, v) = queue(
        &stack,
        &admin,
        device.id,
        json!({ "kind": "upgrade", "params": { "artifact_id": ready } }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["params"]["artifact"]["id"], ready.as_str());
    assert_eq!(v["params"]["artifact"]["component"], "app");
    // One software command per component at a time.
    let (status, v) = queue(
        &stack,
        &admin,
        device.id,
        json!({ "kind": "restore", "params": { "component": "app" } }),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = queue(
        &stack,
        &admin,
        device.id,
        json!({ "kind": "restore", "params": { "component": "os" } }),
    )
    .await;
    assert_eq!(status, 201, "another component: {v}");
    assert_eq!(v["params"]["source"], "backup");
    assert_eq!(v["params"].get("artifact"), None);

    let other = stack.new_device(&admin).await;
    let (status, v) = queue(&stack, &admin, other.id, json!({ "kind": "restore", "params": { "component": "app", "source": "cloud", "version": "1.0.0" } })).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["params"]["artifact"]["id"], ready.as_str());
    let fresh = stack.new_device(&admin).await;
    let (status, v) = queue(
        &stack,
        &admin,
        fresh.id,
        json!({ "kind": "restore", "params": { "component": "app", "source": "cloud" } }),
    )
    .await;
    assert_eq!(status, 422, "no healthy version known: {v}");
    let (status, v) = queue(&stack, &admin, fresh.id, json!({ "kind": "restore", "params": { "component": "app", "source": "cloud", "version": "7.7.7" } })).await;
    assert_eq!(status, 422, "{v}");

    // An artifact in use by an open command cannot be deleted.
    let r = stack
        .http
        .delete(stack.api(&format!("/artifacts/{ready}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

async fn get(stack: &Stack, token: &str, id: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = stack
        .http
        .get(stack.device_api(&format!("/artifacts/{id}")))
        .bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn device_with_upgrade(stack: &Stack, admin: &str, artifact_id: &str) -> (Device, String) {
    let device = stack.new_device(admin).await;
    let (status, v) = queue(
        stack,
        admin,
        device.id,
        json!({ "kind": "upgrade", "params": { "artifact_id": artifact_id } }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let token = stack.device_token(&device).await;
    (device, token)
}

#[tokio::test]
async fn a_device_downloads_its_artifact_in_range_segments_and_nobody_else_can() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let body = bytes(300 * 1024 + 123);
    let sha = hex(&Sha256::digest(&body));
    let id = artifact(&stack, &admin, "app", "4.0.0", &["kiosk"], &body, false).await;
    let (_, token) = device_with_upgrade(&stack, &admin, &id).await;

    // 1 KiB segments for the first 8 KiB (seed 004's small segments), then
    // 64 KiB ones; joined, they are the artifact.
    let mut joined = Vec::new();
    let mut segment = 1024;
    while joined.len() < body.len() {
        let start = joined.len();
        let end = (start + segment).min(body.len()) - 1;
        let r = get(
            &stack,
            &token,
            &id,
            &[("range", &format!("bytes={start}-{end}"))],
        )
        .await;
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/{}", body.len()).as_str()
        );
        assert_eq!(r.headers()["etag"], format!("\"{sha}\"").as_str());
        joined.extend_from_slice(&r.bytes().await.unwrap());
        if joined.len() >= 8 * 1024 {
            segment = 64 * 1024;
        }
    }
    assert_eq!(hex(&Sha256::digest(&joined)), sha);

    let r = get(
        &stack,
        &token,
        &id,
        &[("range", &format!("bytes={}-", body.len()))],
    )
    .await;
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", body.len()).as_str()
    );
    // A stale copy gets the whole file, a current one its range.
    let r = get(
        &stack,
        &token,
        &id,
        &[("range", "bytes=0-9"), ("if-range", "\"0000\"")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), body.len());
    let etag = format!("\"{sha}\"");
    let r = get(
        &stack,
        &token,
        &id,
        &[("range", "bytes=0-9"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &body[..10]);
    let r = get(&stack, &token, &id, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        body.len().to_string().as_str()
    );

    // Another device of the tenant without an open command naming it,
    // another tenant's device, and an unknown id: 404.
    let idle = stack.new_device(&admin).await;
    let idle_token = stack.device_token(&idle).await;
    assert_eq!(get(&stack, &idle_token, &id, &[]).await.status(), 404);
    let (status, v) = stack
        .post(&admin, "/tenants", json!({ "name": "other", "admin": { "username": "mallory", "password": "mallory-password" } }))
        .await;
    assert_eq!(status, 201, "{v}");
    let mallory = stack.login("mallory", "mallory-password").await;
    let theirs = stack.new_device(&mallory).await;
    let their_token = stack.device_token(&theirs).await;
    assert_eq!(get(&stack, &their_token, &id, &[]).await.status(), 404);
    assert_eq!(
        get(&stack, &token, &Uuid::new_v4().to_string(), &[])
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn with_an_s3_store_uploads_land_in_the_bucket_and_devices_are_sent_to_it() {
    let bucket = tend_tests::s3::S3Bucket::create().await;
    let stack = Stack::start_with(tend_tests::Options {
        s3: Some(bucket.clone()),
        ..Default::default()
    })
    .await;
    let admin = stack.admin().await;
    // Over one multipart part (8 MiB), so the upload is a multipart one.
    let body = bytes(9 * 1024 * 1024 + 5);
    let sha = hex(&Sha256::digest(&body));
    let id = artifact(&stack, &admin, "app", "5.0.0", &["kiosk"], &body, false).await;
    let (_, shown) = stack.get(&admin, &format!("/artifacts/{id}")).await;
    assert_eq!(shown["sha256"], sha);
    let (_, token) = device_with_upgrade(&stack, &admin, &id).await;

    // tend-sync answers with a short-lived URL of the store; the device
    // fetches its segments there.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(stack.device_api(&format!("/artifacts/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&bucket.endpoint), "{location}");
    let mut joined = Vec::new();
    while joined.len() < body.len() {
        let start = joined.len();
        let end = (start + 4 * 1024 * 1024).min(body.len()) - 1;
        let r = no_redirects
            .get(&location)
            .header("range", format!("bytes={start}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        joined.extend_from_slice(&r.bytes().await.unwrap());
    }
    assert_eq!(hex(&Sha256::digest(&joined)), sha);

    // Deleting the artifact deletes its object.
    let r = stack
        .http
        .delete(stack.api(&format!("/artifacts/{}", id)))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "an open upgrade uses it");
}

async fn heartbeat(stack: &Stack, token: &str, components: Value) {
    let r = stack
        .http
        .post(stack.device_api("/heartbeat"))
        .bearer_auth(token)
        .json(&json!({ "agent_version": "test", "components": components }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_device_record_shows_its_components_and_when_each_version_changed() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;
    let path = format!("/devices/{}", device.id);
    let shown = |version: &'static str| {
        let (stack, admin, path) = (&stack, &admin, &path);
        async move {
            tend_tests::eventually(std::time::Duration::from_secs(20), "components", || async {
                let (_, v) = stack.get(admin, path).await;
                (v["components"]["app"]["version"] == version).then_some(v)
            })
            .await
        }
    };

    heartbeat(&stack, &token, json!({ "agent": "0.1.0", "app": "1.2.3" })).await;
    let first = shown("1.2.3").await;
    assert_eq!(first["components"]["agent"]["version"], "0.1.0");
    let since = first["components"]["app"]["updated_at"].clone();
    assert!(since.is_string(), "{first}");

    let (_, list) = stack.get(&admin, "/devices?component=app:1.2.3").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let (_, list) = stack.get(&admin, "/devices?component=app:9.9.9").await;
    assert_eq!(list["items"], json!([]));
    assert_eq!(stack.get(&admin, "/devices?component=app").await.0, 400);

    // The same versions again change nothing; a new one moves its time.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    heartbeat(&stack, &token, json!({ "agent": "0.1.0", "app": "1.2.3" })).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, again) = stack.get(&admin, &path).await;
    assert_eq!(again["components"]["app"]["updated_at"], since);
    heartbeat(&stack, &token, json!({ "agent": "0.1.0", "app": "1.3.0" })).await;
    let changed = shown("1.3.0").await;
    assert_ne!(changed["components"]["app"]["updated_at"], since);
    assert_eq!(
        changed["components"]["agent"]["updated_at"],
        first["components"]["agent"]["updated_at"]
    );
}
