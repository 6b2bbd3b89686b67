//! hawkBit DDI at tend-sync, route by route: the base poll, a deployment
//! from its first poll to its final feedback (current and legacy bodies),
//! downloads with `Range`, configData, installedBase, and every way a
//! request is refused.

use std::time::Duration;

use serde_json::{Value, json};
use sha1::Digest;
use tend_tests::{Device, Service, Stack, eventually};
use uuid::Uuid;

/// A DDI client of one device, speaking for it with `auth` (the whole
/// `Authorization` value).
struct Ddi<'a> {
    stack: &'a Stack,
    base: String,
    auth: String,
}

impl<'a> Ddi<'a> {
    fn target(stack: &'a Stack, tenant: &str, name: &str, device: &Device) -> Ddi<'a> {
        Ddi::with(
            stack,
            tenant,
            name,
            &format!("TargetToken {}", device.secret),
        )
    }

    fn with(stack: &'a Stack, tenant: &str, name: &str, auth: &str) -> Ddi<'a> {
        Ddi {
            stack,
            base: format!("{}/{tenant}/controller/v1/{name}", stack.url(Service::Sync)),
            auth: auth.to_owned(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req
            .header("authorization", &self.auth)
            .send()
            .await
            .expect("DDI request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.stack.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn poll(&self) -> Value {
        let (status, v) = self.get("").await;
        assert_eq!(status, 200, "base poll: {v}");
        v
    }

    async fn feedback(&self, action: &str, body: Value) -> (u16, Value) {
        self.send(
            self.stack
                .http
                .post(format!("{}/deploymentBase/{action}/feedback", self.base))
                .json(&body),
        )
        .await
    }

    async fn put_config(&self, body: Value) -> (u16, Value) {
        self.send(
            self.stack
                .http
                .put(format!("{}/configData", self.base))
                .json(&body),
        )
        .await
    }

    async fn fetch(&self, url: &str, range: Option<&str>) -> reqwest::Response {
        let mut req = self.stack.http.get(url).header("authorization", &self.auth);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        req.send().await.expect("DDI download")
    }
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 97) as u8).collect()
}

/// An artifact of `component` at `version` for cameras, uploaded under
/// `filename`; answers its id.
pub(crate) async fn artifact(
    stack: &Stack,
    token: &str,
    version: &str,
    filename: &str,
    body: &[u8],
) -> String {
    let (status, a) = stack
        .post(
            token,
            "/artifacts",
            json!({ "component": "rootfs", "version": version, "device_types": ["camera"],
                    "filename": filename }),
        )
        .await;
    assert_eq!(status, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_owned();
    let r = stack
        .http
        .put(stack.api(&format!("/artifacts/{id}/content")))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    id
}

/// Queues an upgrade of `device` to the artifact `artifact`.
pub(crate) async fn queue_upgrade(
    stack: &Stack,
    token: &str,
    device: Uuid,
    artifact: &str,
) -> Uuid {
    stack
        .queue(
            token,
            device,
            json!({ "kind": "upgrade", "params": { "artifact_id": artifact } }),
        )
        .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The action id a link names (its last path segment).
fn action_of(poll: &Value, link: &str) -> Option<String> {
    poll["_links"][link]["href"].as_str().map(|h| {
        let path = h.split('?').next().unwrap();
        path.rsplit('/').next().unwrap().to_owned()
    })
}

#[tokio::test]
async fn a_deployment_runs_from_poll_to_final_feedback_and_a_rebooted_device_is_offered_it_again() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device_of_type(&admin, "cam-1", "camera").await;
    let ddi = Ddi::target(&stack, "default", "cam-1", &device);

    // Nothing to do: the interval, and a request for attributes.
    let first = ddi.poll().await;
    assert_eq!(first["config"]["polling"]["sleep"], "00:00:01", "{first}");
    assert!(
        first["_links"]["configData"]["href"]
            .as_str()
            .unwrap()
            .ends_with("/default/controller/v1/cam-1/configData")
    );
    assert!(first["_links"].get("deploymentBase").is_none(), "{first}");

    let (status, v) = ddi
        .put_config(json!({ "mode": "merge", "data": { "hw": "rev2", "serial": "S-1" } }))
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = ddi
        .put_config(json!({ "mode": "remove", "data": { "serial": "" } }))
        .await;
    assert_eq!(status, 200, "{v}");
    let (_, d) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
    assert_eq!(d["reported"]["attributes"], json!({ "hw": "rev2" }), "{d}");
    assert!(ddi.poll().await["_links"].get("configData").is_none());
    // The poll counts as presence.
    eventually(Duration::from_secs(10), "the DDI device online", || async {
        let (_, d) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
        (d["status"] == "online").then_some(())
    })
    .await;

    // An upgrade, queued as for any device.
    let bytes = image(70_000);
    let id = artifact(&stack, &admin, "2.0", "update.swu", &bytes).await;
    let command = queue_upgrade(&stack, &admin, device.id, &id).await;
    let action = eventually(Duration::from_secs(10), "a deploymentBase link", || async {
        action_of(&ddi.poll().await, "deploymentBase")
    })
    .await;
    assert!(
        action.parse::<i64>().is_ok(),
        "a numeric action id: {action}"
    );
    let offered = ddi.poll().await;
    let marked = offered["_links"]["deploymentBase"]["href"]
        .as_str()
        .unwrap();
    assert!(marked.contains("?c="), "hawkBit's change marker: {marked}");

    let (status, dep) = ddi.get(&format!("/deploymentBase/{action}")).await;
    assert_eq!(status, 200, "{dep}");
    assert_eq!(dep["id"], action.as_str());
    assert_eq!(dep["deployment"]["download"], "forced");
    assert_eq!(dep["deployment"]["update"], "forced");
    let chunk = &dep["deployment"]["chunks"][0];
    assert_eq!(chunk["name"], "rootfs");
    assert_eq!(chunk["version"], "2.0");
    let file = &chunk["artifacts"][0];
    assert_eq!(file["filename"], "update.swu");
    assert_eq!(file["size"], bytes.len());
    assert_eq!(file["hashes"]["sha256"], hex(&sha2::Sha256::digest(&bytes)));
    assert_eq!(file["hashes"]["sha1"], hex(&sha1::Sha1::digest(&bytes)));
    assert_eq!(file["hashes"]["md5"], hex(&md5::Md5::digest(&bytes)));
    let delivered = stack.command(&admin, command).await;
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(
        delivered["seq"].to_string(),
        action,
        "the API shows the action id"
    );

    // The bytes, whole and by range, and the MD5SUM file.
    let href = file["_links"]["download-http"]["href"].as_str().unwrap();
    assert_eq!(file["_links"]["download"]["href"], href);
    let head = ddi.send(ddi.stack.http.head(href)).await;
    assert_eq!(head.0, 200, "HEAD, as clients ask before downloading");
    let whole = ddi.fetch(href, None).await;
    assert_eq!(whole.status(), 200);
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(whole.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let part = ddi.fetch(href, Some("bytes=1000-1999")).await;
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[1000..2000]);
    let stale = ddi
        .stack
        .http
        .get(href)
        .header("authorization", &ddi.auth)
        .header("range", "bytes=5-")
        .header("if-range", "\"another\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200, "a Range for other bytes is ignored");
    assert_ne!(etag, "\"another\"");
    let md5sum = ddi
        .fetch(
            file["_links"]["md5sum-http"]["href"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(md5sum.status(), 200);
    assert_eq!(
        md5sum.text().await.unwrap(),
        format!("{}  update.swu\n", hex(&md5::Md5::digest(&bytes)))
    );
    let anonymous = stack.http.get(href).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // Progress in the legacy body, as SWUpdate sends it.
    let (status, v) = ddi
        .feedback(
            &action,
            json!({ "id": action, "time": "20261207T101010",
                    "status": { "execution": "proceeding",
                                "result": { "finished": "none", "progress": { "cnt": 1, "of": 3 } },
                                "details": ["installing"] } }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let running = stack.command(&admin, command).await;
    assert_eq!(running["status"], "in_progress", "{running}");
    assert_eq!(running["result"]["detail"]["ddi"]["progress"]["cnt"], 1);

    // The device reboots mid-update: the same deployment is offered again.
    for _ in 0..3 {
        assert_eq!(
            action_of(&ddi.poll().await, "deploymentBase").as_deref(),
            Some(action.as_str())
        );
    }
    let (status, again) = ddi.get(&format!("/deploymentBase/{action}")).await;
    assert_eq!(status, 200, "{again}");

    // The final feedback, in the current body; a repeat is accepted, a
    // different ending is refused.
    let success = json!({ "timestamp": 1_765_000_000_000_i64,
        "status": { "execution": "closed", "result": { "finished": "success" },
                    "details": ["installed"] } });
    assert_eq!(ddi.feedback(&action, success.clone()).await.0, 200);
    let done = stack
        .wait_for(&admin, command, "succeeded", Duration::from_secs(5))
        .await;
    assert_eq!(done["result"]["detail"]["phase"], "closed", "{done}");
    assert_eq!(
        ddi.feedback(&action, success).await.0,
        200,
        "an identical repeat"
    );
    let (status, v) = ddi
        .feedback(
            &action,
            json!({ "status": { "execution": "closed", "result": { "finished": "failure" } } }),
        )
        .await;
    assert_eq!(status, 410, "{v}");
    assert_eq!(ddi.get(&format!("/deploymentBase/{action}")).await.0, 410);

    // Nothing left to do; what was installed is shown, and recorded.
    let after = ddi.poll().await;
    assert!(after["_links"].get("deploymentBase").is_none(), "{after}");
    assert_eq!(
        action_of(&after, "installedBase").as_deref(),
        Some(action.as_str())
    );
    let (status, installed) = ddi.get(&format!("/installedBase/{action}")).await;
    assert_eq!(status, 200, "{installed}");
    assert_eq!(installed["deployment"]["chunks"][0]["version"], "2.0");
    let (_, d) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
    assert_eq!(d["components"]["rootfs"]["version"], "2.0", "{d}");
}

#[tokio::test]
async fn a_failed_or_rejected_deployment_ends_so_and_bad_feedback_is_refused() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device_of_type(&admin, "cam-2", "camera").await;
    let ddi = Ddi::target(&stack, "default", "cam-2", &device);
    let id = artifact(&stack, &admin, "3.0", "bad.swu", &image(1000)).await;

    let run = |kind: &'static str| {
        let (stack, admin, id, ddi) = (&stack, &admin, &id, &ddi);
        async move {
            let command = queue_upgrade(stack, admin, device.id, id).await;
            let action = eventually(Duration::from_secs(10), "a deploymentBase link", || async {
                action_of(&ddi.poll().await, "deploymentBase")
            })
            .await;
            let (status, _) = ddi.get(&format!("/deploymentBase/{action}")).await;
            assert_eq!(status, 200);
            let body = match kind {
                "failed" => json!({ "status": { "execution": "closed",
                    "result": { "finished": "failure" }, "details": ["signature check failed"] } }),
                _ => json!({ "status": { "execution": "rejected",
                    "result": { "finished": "none" } } }),
            };
            let (status, v) = ddi.feedback(&action, body).await;
            assert_eq!(status, 200, "{v}");
            let done = stack
                .wait_for(admin, command, kind, Duration::from_secs(5))
                .await;
            (action, done)
        }
    };
    let (action, failed) = run("failed").await;
    assert_eq!(
        failed["result"]["error"], "signature check failed",
        "{failed}"
    );
    let (_, rejected) = run("rejected").await;
    assert_eq!(rejected["status"], "rejected");
    assert!(ddi.poll().await["_links"].get("installedBase").is_none());

    // Malformed and meaningless bodies, and actions that are not there.
    let raw = ddi
        .send(
            stack
                .http
                .post(format!("{}/deploymentBase/{action}/feedback", ddi.base))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(raw.0, 400, "{}", raw.1);
    let unknown = ddi
        .feedback(
            &action,
            json!({ "status": { "execution": "exploded", "result": { "finished": "none" } } }),
        )
        .await;
    assert_eq!(unknown.0, 422, "{}", unknown.1);
    let (status, _) = ddi.get("/deploymentBase/abc").await;
    assert_eq!(status, 404);
    let (status, _) = ddi.get("/deploymentBase/999999999").await;
    assert_eq!(status, 404);
    let (status, _) = ddi
        .feedback(
            "999999999",
            json!({ "status": { "execution": "closed", "result": { "finished": "success" } } }),
        )
        .await;
    assert_eq!(status, 404);
    let (status, v) = ddi
        .put_config(json!({ "data": { "nested": { "a": 1 } } }))
        .await;
    assert_eq!(status, 422, "{v}");
    let (status, _) = ddi.get(&format!("/cancelAction/{action}")).await;
    assert_eq!(status, 404, "a failed action was not cancelled");

    // An upgrade cancelled before the device took it: shown as cancelled
    // to a client that asks, its confirmation accepted, never deployed.
    let command = queue_upgrade(&stack, &admin, device.id, &id).await;
    let (status, v) = stack
        .post(&admin, &format!("/commands/{command}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    let seq = v["seq"].to_string();
    let (status, cancel) = ddi.get(&format!("/cancelAction/{seq}")).await;
    assert_eq!(status, 200, "{cancel}");
    assert_eq!(
        cancel,
        json!({ "id": seq, "cancelAction": { "stopId": seq } })
    );
    let (status, v) = ddi
        .send(
            stack
                .http
                .post(format!("{}/cancelAction/{seq}/feedback", ddi.base))
                .json(&json!({ "id": seq, "time": "20261207T101010",
                    "status": { "execution": "closed", "result": { "finished": "success" },
                                "details": ["cancellation acknowledged."] } })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(ddi.get(&format!("/deploymentBase/{seq}")).await.0, 410);
    assert!(ddi.poll().await["_links"].get("deploymentBase").is_none());
}

#[tokio::test]
async fn wrong_tokens_other_tenants_and_decommissioned_devices_get_nothing() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device_of_type(&admin, "cam-3", "camera").await;
    let twin = stack.new_device_of_type(&admin, "cam-3", "camera").await;
    let poll = Ddi::target(&stack, "default", "cam-3", &device)
        .poll()
        .await;
    assert!(poll["config"].is_object(), "{poll}");
    // Two devices of one name: each secret finds its own.
    assert_eq!(
        Ddi::target(&stack, "default", "cam-3", &twin)
            .get("")
            .await
            .0,
        200
    );

    let (status, v) = stack
        .post(
            &admin,
            "/tenants",
            json!({ "name": "other", "admin": { "username": "olga", "password": "olga-password" } }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let other = stack.login("olga", "olga-password").await;
    let stranger = stack.new_device_of_type(&other, "cam-9", "camera").await;

    let refused = |tenant: &'static str, name: &'static str, auth: String| {
        let stack = &stack;
        async move {
            let (status, v) = Ddi::with(stack, tenant, name, &auth).get("").await;
            assert_eq!(status, 401, "{tenant}/{name} with {auth}: {v}");
        }
    };
    refused("default", "cam-3", String::new()).await;
    refused("default", "cam-3", format!("Bearer {}", device.secret)).await;
    refused("default", "cam-3", "TargetToken wrong".into()).await;
    refused("other", "cam-3", format!("TargetToken {}", device.secret)).await;
    refused(
        "default",
        "cam-9",
        format!("TargetToken {}", stranger.secret),
    )
    .await;
    refused(
        "default",
        "nobody",
        format!("TargetToken {}", device.secret),
    )
    .await;
    assert_eq!(
        Ddi::target(&stack, "other", "cam-9", &stranger)
            .get("")
            .await
            .0,
        200
    );

    // Another device's action is not found.
    let id = artifact(&stack, &admin, "4.0", "x.swu", &image(100)).await;
    queue_upgrade(&stack, &admin, twin.id, &id).await;
    let twin_ddi = Ddi::target(&stack, "default", "cam-3", &twin);
    let action = eventually(Duration::from_secs(10), "the twin's deployment", || async {
        action_of(&twin_ddi.poll().await, "deploymentBase")
    })
    .await;
    let mine = Ddi::target(&stack, "default", "cam-3", &device);
    assert_eq!(mine.get(&format!("/deploymentBase/{action}")).await.0, 404);
    let (status, dep) = twin_ddi.get(&format!("/deploymentBase/{action}")).await;
    assert_eq!(status, 200);
    let href = dep["deployment"]["chunks"][0]["artifacts"][0]["_links"]["download"]["href"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(mine.fetch(&href, None).await.status(), 404);

    // Gateway tokens: admins only, shown once, for the tenant's devices.
    let operator = {
        let (status, v) = stack
            .post(
                &admin,
                "/users",
                json!({ "username": "oscar", "password": "oscar-password", "role": "operator" }),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        stack.login("oscar", "oscar-password").await
    };
    assert_eq!(
        stack.post(&operator, "/gateway-tokens", json!({})).await.0,
        403
    );
    let (status, created) = stack
        .post(&admin, "/gateway-tokens", json!({ "name": "site-a" }))
        .await;
    assert_eq!(status, 201, "{created}");
    let gateway = format!("GatewayToken {}", created["token"].as_str().unwrap());
    let (status, list) = stack.get(&admin, "/gateway-tokens").await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["name"], "site-a");
    assert!(list["items"][0].get("token").is_none(), "{list}");
    let (status, v) = Ddi::with(&stack, "default", "cam-3", &gateway)
        .get("")
        .await;
    assert_eq!(status, 409, "two devices are named cam-3: {v}");
    let solo = stack.new_device_of_type(&admin, "cam-4", "camera").await;
    let via_gateway = Ddi::with(&stack, "default", "cam-4", &gateway);
    assert_eq!(via_gateway.get("").await.0, 200);
    refused("other", "cam-9", gateway.clone()).await;
    let (status, other_gw) = stack.post(&other, "/gateway-tokens", json!({})).await;
    assert_eq!(status, 201);
    refused(
        "default",
        "cam-4",
        format!("GatewayToken {}", other_gw["token"].as_str().unwrap()),
    )
    .await;

    // Revoked or decommissioned: refused on the next requests, remembered
    // sessions included.
    let gw_id = created["id"].as_str().unwrap();
    assert_eq!(
        stack
            .delete(&other, &format!("/gateway-tokens/{gw_id}"))
            .await,
        404,
        "another tenant's token"
    );
    assert_eq!(
        stack
            .delete(&admin, &format!("/gateway-tokens/{gw_id}"))
            .await,
        204
    );
    eventually(
        Duration::from_secs(2),
        "the revoked gateway token refused",
        || async { (via_gateway.get("").await.0 == 401).then_some(()) },
    )
    .await;
    let own = Ddi::target(&stack, "default", "cam-4", &solo);
    assert_eq!(own.get("").await.0, 200);
    assert_eq!(
        stack.delete(&admin, &format!("/devices/{}", solo.id)).await,
        204
    );
    eventually(
        Duration::from_secs(2),
        "the decommissioned device refused",
        || async { (own.get("").await.0 == 401).then_some(()) },
    )
    .await;
}
