//! Who may see and do what: tenants, roles, devices, token audiences.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tend_tests::{Agent, Service, Stack, eventually};

async fn device_token(stack: &Stack, id: uuid::Uuid, secret: &str) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.device_api("/auth"))
        .json(&json!({ "device_id": id, "secret": secret }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_device_only_ever_sees_its_own_instructions() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let a = stack.new_device(&admin).await;
    let b = stack.new_device(&admin).await;
    let for_a = stack.queue(&admin, a.id, json!({ "kind": "reboot" })).await;

    let (_, t) = device_token(&stack, b.id, &b.secret).await;
    let token_b = t["token"].as_str().unwrap().to_owned();
    let r = stack
        .http
        .get(stack.device_api("/instructions"))
        .bearer_auth(&token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["instructions"], json!([]), "b sees nothing of a's");

    let r = stack
        .http
        .post(stack.device_api(&format!("/instructions/{for_a}/report")))
        .bearer_auth(&token_b)
        .json(&json!({ "status": "succeeded" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "b cannot report on a's command");
    assert_eq!(stack.command(&admin, for_a).await["status"], "queued");
}

#[tokio::test]
async fn another_tenants_admin_gets_404_for_the_device_and_its_commands() {
    let stack = Stack::start().await;
    let root = stack.admin().await;
    let device = stack.new_device(&root).await;
    let cmd = stack
        .queue(&root, device.id, json!({ "kind": "reboot" }))
        .await;

    let (status, v) = stack
        .post(
            &root,
            "/tenants",
            json!({ "name": "other", "admin": { "username": "mallory", "password": "mallory-password" } }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let other = stack.login("mallory", "mallory-password").await;

    for path in [
        format!("/devices/{}", device.id),
        format!("/devices/{}/commands", device.id),
        format!("/commands/{cmd}"),
    ] {
        let (status, v) = stack.get(&other, &path).await;
        assert_eq!(status, 404, "GET {path}: {v}");
        assert_eq!(v["status"], 404);
    }
    let (status, _) = stack
        .post(
            &other,
            &format!("/devices/{}/commands", device.id),
            json!({ "kind": "reboot" }),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = stack
        .post(&other, &format!("/commands/{cmd}/cancel"), json!({}))
        .await;
    assert_eq!(status, 404);
    let r = stack
        .http
        .delete(stack.api(&format!("/devices/{}", device.id)))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, list) = stack.get(&other, "/devices").await;
    assert_eq!(list["items"], json!([]));
    // Nothing of the first tenant changed.
    assert_eq!(stack.command(&root, cmd).await["status"], "queued");
    // And only a system admin creates tenants.
    let (status, _) = stack
        .post(
            &other,
            "/tenants",
            json!({ "name": "third", "admin": { "username": "eve", "password": "eve-password" } }),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn roles_decide_who_may_queue_and_manage() {
    let stack = Stack::start().await;
    let root = stack.admin().await;
    let device = stack.new_device(&root).await;
    for (name, role) in [("vera", "viewer"), ("otto", "operator")] {
        let (status, v) = stack
            .post(
                &root,
                "/users",
                json!({ "username": name, "password": "long-enough-password", "role": role }),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["role"], role);
    }
    let viewer = stack.login("vera", "long-enough-password").await;
    let operator = stack.login("otto", "long-enough-password").await;

    let (status, v) = stack
        .post(
            &viewer,
            &format!("/devices/{}/commands", device.id),
            json!({ "kind": "reboot" }),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(stack.get(&viewer, "/devices").await.0, 200);
    let cmd = stack
        .queue(&operator, device.id, json!({ "kind": "reboot" }))
        .await;
    let (status, _) = stack
        .post(&viewer, &format!("/commands/{cmd}/cancel"), json!({}))
        .await;
    assert_eq!(status, 403);
    for token in [&viewer, &operator] {
        let (status, _) = stack
            .post(
                token,
                "/devices",
                json!({ "name": "x", "device_type": "kiosk" }),
            )
            .await;
        assert_eq!(status, 403);
        let (status, _) = stack
            .post(
                token,
                "/users",
                json!({ "username": "sneaky", "password": "long-enough-password", "role": "admin" }),
            )
            .await;
        assert_eq!(status, 403);
    }
    let (status, _) = stack
        .post(
            &root,
            "/users",
            json!({ "username": "vera", "password": "long-enough-password", "role": "viewer" }),
        )
        .await;
    assert_eq!(status, 409, "usernames are unique");
}

#[tokio::test]
async fn a_decommissioned_device_is_refused_within_two_seconds() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let (status, t) = device_token(&stack, device.id, &device.secret).await;
    assert_eq!(status, 200);
    let token = t["token"].as_str().unwrap().to_owned();
    let queued = stack
        .queue(&admin, device.id, json!({ "kind": "reboot" }))
        .await;

    let r = stack
        .http
        .delete(stack.api(&format!("/devices/{}", device.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let deleted = Instant::now();

    eventually(
        Duration::from_secs(2),
        "the token to be refused",
        || async {
            let r = stack
                .http
                .post(stack.device_api("/heartbeat"))
                .bearer_auth(&token)
                .json(&json!({ "agent_version": "test" }))
                .send()
                .await
                .ok()?;
            (r.status() == 401).then_some(())
        },
    )
    .await;
    assert!(deleted.elapsed() < Duration::from_secs(2));
    let (status, _) = device_token(&stack, device.id, &device.secret).await;
    assert_eq!(status, 401, "the secret is refused too");
    assert_eq!(
        stack
            .get(&admin, &format!("/devices/{}", device.id))
            .await
            .0,
        404
    );
    assert_eq!(stack.command(&admin, queued).await["status"], "cancelled");
}

#[tokio::test]
async fn tokens_of_one_audience_are_refused_by_the_other_service() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let (_, t) = device_token(&stack, device.id, &device.secret).await;
    let device_token = t["token"].as_str().unwrap().to_owned();

    assert_eq!(stack.get(&device_token, "/devices").await.0, 401);
    let r = stack
        .http
        .post(stack.device_api("/heartbeat"))
        .bearer_auth(&admin)
        .json(&json!({ "agent_version": "test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = stack
        .http
        .post(format!("{}/device/v1/heartbeat", stack.url(Service::Sync)))
        .bearer_auth(&device_token)
        .json(&json!({ "agent_version": "test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["pending"], false);
    assert_eq!(v["next_heartbeat_s"], 1);
}

#[tokio::test]
async fn a_wrong_device_secret_is_refused() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let (status, v) = device_token(&stack, device.id, "guess").await;
    assert_eq!(status, 401, "{v}");
    let (status, _) = device_token(&stack, uuid::Uuid::new_v4(), &device.secret).await;
    assert_eq!(status, 401);
    // A running agent with the right secret works.
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let id = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack
        .wait_for(&admin, id, "succeeded", Duration::from_secs(30))
        .await;
}
