//! Artifacts in the admin API: created, uploaded as a stream and hashed,
//! released, denied to devices, deleted; scoped by tenant and role.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tend_tests::Stack;

/// `len` bytes that are not all alike, so that a misplaced range shows.
fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn create(stack: &Stack, token: &str, body: Value) -> Value {
    let (status, v) = stack.post(token, "/artifacts", body).await;
    assert_eq!(status, 201, "{v}");
    v
}

async fn upload(stack: &Stack, token: &str, id: &str, body: Vec<u8>) -> (u16, Value) {
    let r = stack
        .http
        .put(stack.api(&format!("/artifacts/{id}/content")))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn send(
    stack: &Stack,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = stack
        .http
        .request(method, stack.api(path))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_upload_is_streamed_hashed_and_listed_and_a_second_one_is_refused() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let a = create(
        &stack,
        &admin,
        json!({ "component": "app", "version": "1.4.2", "device_types": ["kiosk"],
                "filename": "app-1.4.2.tar.gz" }),
    )
    .await;
    assert_eq!(a["status"], "pending_upload");
    assert_eq!(a["size"], Value::Null);
    let id = a["id"].as_str().unwrap().to_owned();

    let body = bytes(5 * 1024 * 1024 + 17);
    let sha = hex(&Sha256::digest(&body));
    let (status, v) = upload(&stack, &admin, &id, body.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["sha256"], sha);
    assert_eq!(v["size"], body.len());
    let stored = stack.artifact_objects();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), body);

    let (_, shown) = stack.get(&admin, &format!("/artifacts/{id}")).await;
    assert_eq!(shown["sha256"], sha);
    let (_, list) = stack
        .get(&admin, "/artifacts?component=app&device_type=kiosk")
        .await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    let (_, none) = stack.get(&admin, "/artifacts?device_type=camera").await;
    assert_eq!(none["items"], json!([]));

    let (status, v) = upload(&stack, &admin, &id, b"other bytes".to_vec()).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(stack.artifact_objects().len(), 1, "nothing new kept");
}

#[tokio::test]
async fn bytes_that_do_not_match_what_was_declared_are_refused_and_nothing_remains() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let body = bytes(300_000);
    for declared in [
        json!({ "sha256": "0".repeat(64) }),
        json!({ "size": 299_999 }),
        json!({ "size": 300_001 }),
    ] {
        let mut new = json!({ "component": "app", "version": "2.0.0", "device_types": ["kiosk"] });
        new.as_object_mut()
            .unwrap()
            .extend(declared.as_object().unwrap().clone());
        let a = create(&stack, &admin, new).await;
        let id = a["id"].as_str().unwrap();
        let (status, v) = upload(&stack, &admin, id, body.clone()).await;
        assert_eq!(status, 422, "{declared}: {v}");
        assert_eq!(v["status"], 422);
        let (_, shown) = stack.get(&admin, &format!("/artifacts/{id}")).await;
        assert_eq!(shown["status"], "pending_upload", "{declared}");
        assert!(
            stack.artifact_objects().is_empty(),
            "{declared}: an object remains"
        );
    }
    // The right bytes, declared in capitals, are taken.
    let sha = hex(&Sha256::digest(&body)).to_uppercase();
    let a = create(
        &stack,
        &admin,
        json!({ "component": "app", "version": "2.0.0", "device_types": ["kiosk"],
                "sha256": sha, "size": body.len() }),
    )
    .await;
    let (status, v) = upload(&stack, &admin, a["id"].as_str().unwrap(), body).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn an_upload_cut_halfway_leaves_no_ready_artifact_and_no_object() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let a = create(
        &stack,
        &admin,
        json!({ "component": "app", "version": "3", "device_types": ["kiosk"] }),
    )
    .await;
    let id = a["id"].as_str().unwrap().to_owned();
    // A body that fails after 2 MiB, as a dropped connection does.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(bytes(1024 * 1024)),
        Ok(bytes(1024 * 1024)),
        Err(std::io::Error::other("the uplink went away")),
    ];
    let sent = stack
        .http
        .put(stack.api(&format!("/artifacts/{id}/content")))
        .bearer_auth(&admin)
        .header("content-length", (8 * 1024 * 1024).to_string())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    assert!(sent.is_err() || !sent.unwrap().status().is_success());
    let shown = tend_tests::eventually(std::time::Duration::from_secs(10), "cleanup", || async {
        let (_, shown) = stack.get(&admin, &format!("/artifacts/{id}")).await;
        stack.artifact_objects().is_empty().then_some(shown)
    })
    .await;
    assert_eq!(shown["status"], "pending_upload");
    // The artifact can still be uploaded.
    let (status, v) = upload(&stack, &admin, &id, bytes(1000)).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn malformed_artifacts_are_refused_with_problem_details() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    for (body, status) in [
        (
            json!({ "component": "app", "version": "1 2", "device_types": ["kiosk"] }),
            422,
        ),
        (
            json!({ "component": "app", "version": "1", "device_types": [] }),
            422,
        ),
        (
            json!({ "component": "a/b", "version": "1", "device_types": ["kiosk"] }),
            422,
        ),
        (
            json!({ "component": "app", "version": "1", "device_types": ["kiosk"], "color": "red" }),
            422,
        ),
        (
            json!({ "component": "app", "version": "1", "device_types": ["kiosk"], "sha256": "abc" }),
            422,
        ),
        (
            json!({ "component": "app", "version": "1", "device_types": "kiosk" }),
            422,
        ),
    ] {
        let (got, v) = stack.post(&admin, "/artifacts", body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        assert_eq!(v["status"], status, "problem+json for {body}");
    }
}

#[tokio::test]
async fn release_denylist_and_delete_follow_the_artifacts_state() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let a = create(
        &stack,
        &admin,
        json!({ "component": "app", "version": "5.0.0", "device_types": ["kiosk"] }),
    )
    .await;
    let id = a["id"].as_str().unwrap().to_owned();
    let path = format!("/artifacts/{id}");
    let patch = |released: bool| {
        send(
            &stack,
            reqwest::Method::PATCH,
            &admin,
            &path,
            Some(json!({ "released": released })),
        )
    };
    let (status, v) = patch(true).await;
    assert_eq!(status, 409, "not uploaded yet: {v}");
    assert_eq!(upload(&stack, &admin, &id, bytes(4096)).await.0, 200);
    let (status, v) = patch(true).await;
    assert_eq!((status, &v["released"]), (200, &json!(true)), "{v}");

    let entry = format!("/artifacts/{id}/denylist/{}", device.id);
    let (status, v) = send(
        &stack,
        reqwest::Method::PUT,
        &admin,
        &entry,
        Some(json!({ "reason": "screen flickers" })),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["reason"], "screen flickers");
    assert_eq!(v["device_id"], device.id.to_string());
    let (status, again) = send(&stack, reqwest::Method::PUT, &admin, &entry, None).await;
    assert_eq!(status, 200, "already there: {again}");
    assert_eq!(again["reason"], "screen flickers", "the entry is unchanged");
    assert_eq!(stack.get(&admin, &entry).await.0, 200);
    let (_, list) = stack
        .get(&admin, &format!("/artifacts/{id}/denylist"))
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let unknown = format!("/artifacts/{id}/denylist/{}", uuid::Uuid::new_v4());
    assert_eq!(
        send(&stack, reqwest::Method::PUT, &admin, &unknown, None)
            .await
            .0,
        404
    );
    assert_eq!(
        send(&stack, reqwest::Method::DELETE, &admin, &entry, None)
            .await
            .0,
        204
    );
    assert_eq!(
        send(&stack, reqwest::Method::DELETE, &admin, &entry, None)
            .await
            .0,
        404
    );
    assert_eq!(stack.get(&admin, &entry).await.0, 404);

    assert_eq!(stack.artifact_objects().len(), 1);
    assert_eq!(
        send(&stack, reqwest::Method::DELETE, &admin, &path, None)
            .await
            .0,
        204
    );
    assert_eq!(stack.get(&admin, &path).await.0, 404);
    assert!(
        stack.artifact_objects().is_empty(),
        "its bytes are gone too"
    );
}

#[tokio::test]
async fn another_tenant_gets_404_and_a_viewer_403_on_every_artifact_route() {
    let stack = Stack::start().await;
    let root = stack.admin().await;
    let device = stack.new_device(&root).await;
    let a = create(
        &stack,
        &root,
        json!({ "component": "app", "version": "1.0.0", "device_types": ["kiosk"] }),
    )
    .await;
    let id = a["id"].as_str().unwrap().to_owned();

    let (status, v) = stack
        .post(
            &root,
            "/tenants",
            json!({ "name": "other", "admin": { "username": "mallory", "password": "mallory-password" } }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let other = stack.login("mallory", "mallory-password").await;
    let (status, v) = stack
        .post(
            &root,
            "/users",
            json!({ "username": "vera", "password": "long-enough-password", "role": "viewer" }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let viewer = stack.login("vera", "long-enough-password").await;

    use reqwest::Method;
    let entry = format!("/artifacts/{id}/denylist/{}", device.id);
    let writes = [
        (
            Method::PATCH,
            format!("/artifacts/{id}"),
            Some(json!({ "released": false })),
        ),
        (Method::DELETE, format!("/artifacts/{id}"), None),
        (Method::PUT, entry.clone(), Some(json!({}))),
        (Method::DELETE, entry.clone(), None),
    ];
    for (method, path, body) in &writes {
        let (status, v) = send(&stack, method.clone(), &other, path, body.clone()).await;
        assert_eq!(status, 404, "{method} {path} by another tenant: {v}");
        let (status, v) = send(&stack, method.clone(), &viewer, path, body.clone()).await;
        assert_eq!(status, 403, "{method} {path} by a viewer: {v}");
    }
    assert_eq!(upload(&stack, &other, &id, bytes(10)).await.0, 404);
    assert_eq!(upload(&stack, &viewer, &id, bytes(10)).await.0, 403);
    assert_eq!(
        stack
            .post(
                &viewer,
                "/artifacts",
                json!({ "component": "app", "version": "1", "device_types": ["kiosk"] })
            )
            .await
            .0,
        403
    );
    for path in [
        format!("/artifacts/{id}"),
        format!("/artifacts/{id}/denylist"),
        entry.clone(),
    ] {
        assert_eq!(
            stack.get(&other, &path).await.0,
            404,
            "GET {path} by another tenant"
        );
    }
    assert_eq!(
        stack.get(&viewer, &format!("/artifacts/{id}")).await.0,
        200,
        "viewers read"
    );
    let (_, list) = stack.get(&other, "/artifacts").await;
    assert_eq!(list["items"], json!([]));
    // Another tenant's device cannot be put on this tenant's denylist.
    let theirs = stack.new_device(&other).await;
    let path = format!("/artifacts/{id}/denylist/{}", theirs.id);
    assert_eq!(send(&stack, Method::PUT, &root, &path, None).await.0, 404);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
