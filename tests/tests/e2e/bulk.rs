//! Bulk provisioning (`POST /api/v1/devices/bulk`): up to a thousand
//! devices in one transaction, all of them or none.

use serde_json::{Value, json};
use tend_tests::Stack;

fn items(n: usize, batch: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "name": format!("bulk-{i:04}"),
                "device_type": "kiosk",
                "labels": { "batch": batch },
            })
        })
        .collect()
}

/// How many devices carry the label `batch:<batch>`.
async fn count_batch(stack: &Stack, token: &str, batch: &str) -> usize {
    let (status, v) = stack
        .get(token, &format!("/devices?label=batch:{batch}&limit=500"))
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["next_cursor"].is_null(), "more than one page: {v}");
    v["items"].as_array().expect("items").len()
}

#[tokio::test]
async fn five_hundred_devices_are_created_in_request_order_and_each_secret_works() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;

    let (status, v) = stack
        .post(
            &admin,
            "/devices/bulk",
            json!({ "devices": items(500, "first") }),
        )
        .await;

    assert_eq!(status, 201, "{v}");
    let created = v["items"].as_array().expect("items");
    assert_eq!(created.len(), 500);
    let mut secrets = std::collections::HashSet::new();
    for (i, d) in created.iter().enumerate() {
        assert_eq!(d["name"], format!("bulk-{i:04}"), "out of order at {i}");
        assert_eq!(d["device_type"], "kiosk");
        assert_eq!(d["labels"], json!({ "batch": "first" }));
        assert_eq!(d["status"], "unknown");
        assert_eq!(d["id"], d["credentials"]["device_id"]);
        assert!(secrets.insert(d["credentials"]["secret"].as_str().expect("secret")));
    }
    assert_eq!(count_batch(&stack, &admin, "first").await, 500);
    for i in [0, 1, 137, 498, 499] {
        let c = &created[i]["credentials"];
        let r = stack
            .http
            .post(stack.device_api("/auth"))
            .json(&json!({ "device_id": c["device_id"], "secret": c["secret"] }))
            .send()
            .await
            .expect("auth request");
        assert_eq!(r.status(), 200, "device {i} refused");
        let a: Value = r.json().await.expect("auth answer");
        assert!(a["token"].as_str().is_some_and(|t| !t.is_empty()), "{a}");
    }
}

#[tokio::test]
async fn bulk_provisioning_is_for_admins_and_all_or_nothing() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (status, v) = stack
        .post(
            &admin,
            "/users",
            json!({ "username": "vera", "password": "viewer-password", "role": "viewer" }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let viewer = stack.login("vera", "viewer-password").await;

    let (status, _) = stack
        .post(
            &viewer,
            "/devices/bulk",
            json!({ "devices": items(2, "viewer") }),
        )
        .await;
    assert_eq!(status, 403);

    let (status, v) = stack
        .post(
            &admin,
            "/devices/bulk",
            json!({ "devices": items(1001, "too-many") }),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let (status, _) = stack
        .post(&admin, "/devices/bulk", json!({ "devices": [] }))
        .await;
    assert_eq!(status, 422);

    let mut bad = items(10, "invalid");
    bad[3]["device_type"] = json!("no spaces allowed");
    let (status, v) = stack
        .post(&admin, "/devices/bulk", json!({ "devices": bad }))
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("devices[3]")),
        "the problem names the item: {v}"
    );

    for batch in ["viewer", "too-many", "invalid"] {
        assert_eq!(count_batch(&stack, &admin, batch).await, 0, "{batch}");
    }
}
