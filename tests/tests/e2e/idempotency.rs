//! `Idempotency-Key` on `POST /devices/{id}/commands` and
//! `POST /devices/bulk`: the same key and request answer the first answer
//! again and do the work once, even when sent at the same time.

use serde_json::{Value, json};
use tend_tests::Stack;
use uuid::Uuid;

async fn post_keyed(
    stack: &Stack,
    token: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.api(path))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn commands_of(stack: &Stack, device: Uuid) -> i64 {
    stack
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM commands WHERE device_id = $1",
            &[&device],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn the_same_key_twice_queues_one_command_and_answers_it_again() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let path = format!("/devices/{}/commands", device.id);
    let body = json!({ "kind": "reboot", "timeout_s": 120 });

    let (status, first) = post_keyed(&stack, &admin, &path, "retry-me-1", &body).await;
    assert_eq!(status, 201, "{first}");
    // Reordered keys are the same request.
    let same = json!({ "timeout_s": 120, "kind": "reboot" });
    let (status, again) = post_keyed(&stack, &admin, &path, "retry-me-1", &same).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(first, again);
    assert_eq!(commands_of(&stack, device.id).await, 1);

    // Another body with the key: 422, nothing queued.
    let (status, v) = post_keyed(
        &stack,
        &admin,
        &path,
        "retry-me-1",
        &json!({ "kind": "shutdown" }),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    // The same body for another device is another request too.
    let other = stack.new_device_of_type(&admin, "other", "kiosk").await;
    let (status, _) = post_keyed(
        &stack,
        &admin,
        &format!("/devices/{}/commands", other.id),
        "retry-me-1",
        &body,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(commands_of(&stack, device.id).await, 1);
    assert_eq!(commands_of(&stack, other.id).await, 0);

    // A new key is a new command; a bad key is a 400.
    let (status, third) = post_keyed(&stack, &admin, &path, "retry-me-2", &body).await;
    assert_eq!(status, 201);
    assert_ne!(third["id"], first["id"]);
    for bad in [
        String::new(),
        "x".repeat(256),
        "tab\there".into(),
        "é".into(),
    ] {
        let r = stack
            .http
            .post(stack.api(&path))
            .bearer_auth(&admin)
            .header("Idempotency-Key", bad.as_bytes())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
    }
    assert_eq!(commands_of(&stack, device.id).await, 2);
}

#[tokio::test]
async fn keys_are_scoped_by_user() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (status, _) = stack
        .post(
            &admin,
            "/users",
            json!({ "username": "otto", "password": "otto-long-password", "role": "operator" }),
        )
        .await;
    assert_eq!(status, 201);
    let otto = stack.login("otto", "otto-long-password").await;
    let device = stack.new_device(&admin).await;
    let path = format!("/devices/{}/commands", device.id);
    let body = json!({ "kind": "reboot" });
    let (_, a) = post_keyed(&stack, &admin, &path, "shared-key", &body).await;
    let (status, b) = post_keyed(&stack, &otto, &path, "shared-key", &body).await;
    assert_eq!(status, 201);
    assert_ne!(a["id"], b["id"]);
    assert_eq!(commands_of(&stack, device.id).await, 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_queue_one_command() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let path = format!("/devices/{}/commands", device.id);
    let body = json!({ "kind": "reboot" });

    let answers = futures_util::future::join_all(
        (0..8).map(|_| post_keyed(&stack, &admin, &path, "at-once", &body)),
    )
    .await;
    for (status, v) in &answers {
        assert_eq!(*status, 201, "{v}");
        assert_eq!(v["id"], answers[0].1["id"]);
    }
    assert_eq!(commands_of(&stack, device.id).await, 1);
}

#[tokio::test]
async fn a_bulk_registration_replayed_shows_the_same_devices_and_working_secrets() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let body = json!({ "devices": [
        { "name": "idem-a", "device_type": "kiosk" },
        { "name": "idem-b", "device_type": "kiosk", "labels": { "site": "north" } },
    ] });

    let (status, first) = post_keyed(&stack, &admin, "/devices/bulk", "bulk-1", &body).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = post_keyed(&stack, &admin, "/devices/bulk", "bulk-1", &body).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(first, again);
    let db = stack.sql().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM devices WHERE name LIKE 'idem-%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // The secrets work, and the database holds none of them.
    let stored: Value = db
        .query_one(
            "SELECT answer FROM idempotency_keys WHERE key = 'bulk-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for item in first["items"].as_array().unwrap() {
        let secret = item["credentials"]["secret"].as_str().unwrap();
        assert!(!stored.to_string().contains(secret));
        let r = stack
            .http
            .post(stack.device_api("/auth"))
            .json(&json!({ "device_id": item["id"], "secret": secret }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{item}");
    }

    let (status, _) = post_keyed(
        &stack,
        &admin,
        "/devices/bulk",
        "bulk-1",
        &json!({ "devices": [{ "name": "idem-c", "device_type": "kiosk" }] }),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_key_older_than_a_day_is_a_new_key() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let path = format!("/devices/{}/commands", device.id);
    let (status, first) = post_keyed(
        &stack,
        &admin,
        &path,
        "old-key",
        &json!({ "kind": "reboot" }),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    stack
        .sql()
        .await
        .execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
    let (status, second) = post_keyed(
        &stack,
        &admin,
        &path,
        "old-key",
        &json!({ "kind": "shutdown" }),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(first["id"], second["id"]);
    assert_eq!(commands_of(&stack, device.id).await, 2);
}
