//! Command batches (`POST /api/v1/commands/bulk`, `GET
//! /api/v1/command-batches/{id}`): a selector reaches exactly its devices
//! of the caller's tenant, devices that cannot take the command are
//! counted by reason, and the batch follows its commands to their end.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use tend_tests::{Agent, Service, Stack, eventually};
use uuid::Uuid;

use crate::audit::tenant_with_roles;

const WAIT: Duration = Duration::from_secs(30);

/// A device of `device_type` with `labels`; answers its id.
async fn device(stack: &Stack, token: &str, name: &str, device_type: &str, labels: Value) -> Uuid {
    let (status, v) = stack
        .post(
            token,
            "/devices",
            json!({ "name": name, "device_type": device_type, "labels": labels }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().and_then(|s| s.parse().ok()).expect("id")
}

fn reboot(selector: Value) -> Value {
    json!({ "selector": selector, "command": { "kind": "reboot" } })
}

/// The devices the batch queued a command for, read from the table.
async fn devices_of_batch(stack: &Stack, batch: &str) -> BTreeSet<Uuid> {
    let batch: Uuid = batch.parse().expect("batch id");
    stack
        .sql()
        .await
        .query(
            "SELECT device_id FROM commands WHERE batch_id = $1",
            &[&batch],
        )
        .await
        .expect("batch commands")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Sends a reboot to `selector`; answers the devices it reached, after
/// checking that every matched device was queued.
async fn selected(stack: &Stack, token: &str, selector: Value) -> BTreeSet<Uuid> {
    let (status, v) = stack
        .post(token, "/commands/bulk", reboot(selector.clone()))
        .await;
    assert_eq!(status, 201, "{selector}: {v}");
    assert_eq!(v["matched"], v["queued"], "{selector}: {v}");
    assert_eq!(v["skipped"], json!({}), "{selector}: {v}");
    let devices = devices_of_batch(stack, v["batch_id"].as_str().expect("batch_id")).await;
    assert_eq!(v["queued"], devices.len(), "{selector}: {v}");
    devices
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack
        .sql()
        .await
        .query_one(sql, &[])
        .await
        .expect(sql)
        .get(0)
}

#[tokio::test]
async fn each_selector_condition_reaches_exactly_its_devices_and_never_another_tenants() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let [theirs, ..] = tenant_with_roles(&stack, "elsewhere").await;
    let a = device(
        &stack,
        &admin,
        "a",
        "kiosk",
        json!({"site": "north", "floor": "1"}),
    )
    .await;
    let b = device(
        &stack,
        &admin,
        "b",
        "kiosk",
        json!({"site": "north", "floor": "2"}),
    )
    .await;
    let c = device(
        &stack,
        &admin,
        "c",
        "ticket",
        json!({"site": "north", "floor": "1"}),
    )
    .await;
    let d = device(&stack, &admin, "d", "ticket", json!({"site": "south"})).await;
    // Same type and labels, another tenant: never selected.
    let x = device(
        &stack,
        &theirs,
        "x",
        "kiosk",
        json!({"site": "north", "floor": "1"}),
    )
    .await;
    let sql = stack.sql().await;
    // What agents would have reported: `a` online, `c` offline, and `b`, `d`
    // and `x` running app 1.2.0 (the others are `unknown`, never seen).
    sql.execute(
        "UPDATE devices SET status = 'online' WHERE id = ANY($1)",
        &[&vec![a]],
    )
    .await
    .unwrap();
    sql.execute(
        "UPDATE devices SET status = 'offline' WHERE id = ANY($1)",
        &[&vec![c]],
    )
    .await
    .unwrap();
    sql.execute(
        "UPDATE devices SET components = '{\"app\": {\"version\": \"1.2.0\"}}' WHERE id = ANY($1)",
        &[&vec![b, d, x]],
    )
    .await
    .unwrap();

    let cases = [
        (json!({"device_type": "kiosk"}), vec![a, b]),
        (
            json!({"labels": {"site": "north", "floor": "1"}}),
            vec![a, c],
        ),
        (json!({"status": "online"}), vec![a]),
        (json!({"status": "offline"}), vec![c]),
        (json!({"component": "app:1.2.0"}), vec![b, d]),
        (json!({"device_ids": [a, d, x, Uuid::new_v4()]}), vec![a, d]),
        (
            json!({"device_type": "ticket", "labels": {"site": "north"}}),
            vec![c],
        ),
        (
            json!({"device_ids": [a, b, c], "component": "app:1.2.0"}),
            vec![b],
        ),
    ];
    for (selector, expected) in cases {
        let got = selected(&stack, &admin, selector.clone()).await;
        assert_eq!(got, expected.into_iter().collect(), "{selector}");
    }
    let theirs_commands: i64 = sql
        .query_one("SELECT count(*) FROM commands WHERE device_id = $1", &[&x])
        .await
        .unwrap()
        .get(0);
    assert_eq!(theirs_commands, 0, "another tenant's device got a command");
}

#[tokio::test]
async fn an_empty_selector_or_one_that_matches_nothing_is_422_and_creates_nothing() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let [theirs, ..] = tenant_with_roles(&stack, "elsewhere").await;
    stack.new_device(&admin).await;
    let x = stack.new_device(&theirs).await;

    for (selector, says) in [
        (json!({}), "at least one condition"),
        (json!({"labels": {}}), "at least one condition"),
        (json!({"device_type": "nothing-of-this-type"}), "no device"),
        (json!({"device_ids": [x.id]}), "no device"),
        (json!({"device_ids": []}), "no device"),
        (json!({"status": "asleep"}), "status"),
        (json!({"component": "app"}), "NAME:VERSION"),
    ] {
        let (status, v) = stack
            .post(&admin, "/commands/bulk", reboot(selector.clone()))
            .await;
        assert_eq!(status, 422, "{selector}: {v}");
        assert!(
            v["detail"].as_str().is_some_and(|d| d.contains(says)),
            "{selector}: the problem says {says:?}: {v}"
        );
    }
    // The command is checked as the single-device route checks it.
    let (status, v) = stack
        .post(
            &admin,
            "/commands/bulk",
            json!({ "selector": {"device_type": "kiosk"}, "command": {"kind": "dance"} }),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unknown kind")),
        "{v}"
    );

    assert_eq!(
        count(&stack, "SELECT count(*) FROM command_batches").await,
        0
    );
    assert_eq!(count(&stack, "SELECT count(*) FROM commands").await, 0);
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM audit_log WHERE action = 'command_batch.create'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_viewer_may_not_send_a_batch_an_operator_may_and_another_tenant_cannot_see_it() {
    let stack = Stack::start().await;
    let [admin, operator, viewer] = tenant_with_roles(&stack, "acme").await;
    let [theirs, ..] = tenant_with_roles(&stack, "elsewhere").await;
    let device = stack.new_device(&admin).await;
    let body = reboot(json!({"device_type": "kiosk"}));

    let (status, _) = stack.post(&viewer, "/commands/bulk", body.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(count(&stack, "SELECT count(*) FROM commands").await, 0);

    let (status, v) = stack.post(&operator, "/commands/bulk", body).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["matched"], 1);
    assert_eq!(v["queued"], 1);
    let batch = v["batch_id"].as_str().expect("batch_id");
    assert_eq!(
        devices_of_batch(&stack, batch).await,
        BTreeSet::from([device.id])
    );

    let (status, b) = stack
        .get(&viewer, &format!("/command-batches/{batch}"))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["id"], batch);
    assert_eq!(b["matched"], 1);
    assert_eq!(b["by_status"], json!({"queued": 1}));
    let (status, _) = stack
        .get(&theirs, &format!("/command-batches/{batch}"))
        .await;
    assert_eq!(status, 404);

    // One audit row for the batch, none per command.
    let (status, audit) = stack
        .get(&admin, "/audit?action=command_batch.create")
        .await;
    assert_eq!(status, 200, "{audit}");
    let items = audit["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(
        items[0]["target"],
        json!({"type": "command_batch", "id": batch})
    );
    assert_eq!(items[0]["summary"]["kind"], "reboot");
    assert_eq!(items[0]["summary"]["matched"], 1);
    assert_eq!(items[0]["summary"]["queued"], 1);
    assert_eq!(
        items[0]["summary"]["selector"]["device_type"], "kiosk",
        "{audit}"
    );
    let (_, commands) = stack.get(&admin, "/audit?action=command.create").await;
    assert_eq!(commands["items"], json!([]), "{commands}");
}

#[tokio::test]
async fn devices_that_cannot_take_the_command_are_skipped_and_counted_by_reason() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let fits = device(&stack, &admin, "fits", "kiosk", json!({"wave": "1"})).await;
    let denied = device(&stack, &admin, "denied", "kiosk", json!({"wave": "1"})).await;
    let other_type = device(&stack, &admin, "ticket", "ticket", json!({"wave": "1"})).await;
    let artifact = stack
        .upload_artifact(&admin, "app", "2.0.0", &["kiosk"], b"app 2.0.0".to_vec())
        .await;
    let artifact_id = artifact["id"].as_str().expect("artifact id");
    let r = stack
        .http
        .put(stack.api(&format!("/artifacts/{artifact_id}/denylist/{denied}")))
        .bearer_auth(&admin)
        .json(&json!({ "reason": "broke its screen" }))
        .send()
        .await
        .expect("denylist request");
    assert_eq!(r.status().as_u16(), 201);

    let (status, v) = stack
        .post(
            &admin,
            "/commands/bulk",
            json!({ "selector": {"labels": {"wave": "1"}},
                    "command": {"kind": "upgrade", "params": {"artifact_id": artifact_id}} }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["matched"], 3, "{v}");
    assert_eq!(v["queued"], 1, "{v}");
    assert_eq!(v["skipped"], json!({"denylisted": 1, "device_type": 1}));
    let batch = v["batch_id"].as_str().unwrap();
    assert_eq!(
        devices_of_batch(&stack, batch).await,
        BTreeSet::from([fits])
    );
    // The upgrade carries the artifact's reference, as a single one does.
    let (_, list) = stack
        .get(&admin, &format!("/devices/{fits}/commands"))
        .await;
    let params = &list["items"][0]["params"];
    assert_eq!(params["artifact"]["version"], "2.0.0", "{list}");
    assert_eq!(params["artifact"]["sha256"], artifact["sha256"], "{list}");

    // The same upgrade again: the device's upgrade of `app` is still open.
    let (status, v) = stack
        .post(
            &admin,
            "/commands/bulk",
            json!({ "selector": {"device_ids": [fits]},
                    "command": {"kind": "upgrade", "params": {"artifact_id": artifact_id}} }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["queued"], 0, "{v}");
    assert_eq!(v["skipped"], json!({"component_busy": 1}));

    // A decommissioned device named by id is matched, and told apart.
    assert_eq!(
        stack
            .delete(&admin, &format!("/devices/{other_type}"))
            .await,
        204
    );
    let (status, v) = stack
        .post(
            &admin,
            "/commands/bulk",
            reboot(json!({"device_ids": [denied, other_type]})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["matched"], 2, "{v}");
    assert_eq!(v["queued"], 1, "{v}");
    assert_eq!(v["skipped"], json!({"decommissioned": 1}));
    let batch = v["batch_id"].as_str().unwrap();
    assert_eq!(
        devices_of_batch(&stack, batch).await,
        BTreeSet::from([denied])
    );
}

#[tokio::test]
async fn a_batchs_statuses_follow_its_agents_until_every_command_succeeded() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let mut agents = Vec::new();
    let mut ids = HashSet::new();
    for i in 0..3 {
        let device = stack
            .new_device_of_type(&admin, &format!("kiosk-{i}"), "batch-kiosk")
            .await;
        ids.insert(device.id);
        let mut agent = Agent::new(&stack, &device);
        agent.start();
        agents.push(agent);
    }
    // A device of another type is left alone.
    let bystander = stack.new_device(&admin).await;
    let mut bystander_agent = Agent::new(&stack, &bystander);
    bystander_agent.start();

    let (status, v) = stack
        .post(
            &admin,
            "/commands/bulk",
            json!({ "selector": {"device_type": "batch-kiosk"},
                    "command": {"kind": "shutdown"} }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["matched"], 3);
    assert_eq!(v["queued"], 3);
    let batch = v["batch_id"].as_str().expect("batch_id").to_owned();

    let done = eventually(WAIT, "every command of the batch to succeed", || async {
        let (status, b) = stack
            .get(&admin, &format!("/command-batches/{batch}"))
            .await;
        assert_eq!(status, 200, "{b}");
        (b["by_status"] == json!({"succeeded": 3})).then_some(b)
    })
    .await;
    assert_eq!(done["matched"], 3);
    for agent in &agents {
        assert_eq!(agent.executed().len(), 1, "each agent ran its command once");
    }
    assert!(bystander_agent.executed().is_empty());
    // The sync server was told of the batch by one batched event.
    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.metrics_url(Service::Sync)))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("tend_sync_events_total{topic=\"commands.queued\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_same_idempotency_key_twice_makes_one_batch() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    for _ in 0..3 {
        stack.new_device(&admin).await;
    }
    let body = reboot(json!({"device_type": "kiosk"}));
    let send = async |body: &Value| {
        let r = stack
            .http
            .post(stack.api("/commands/bulk"))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "fleet-reboot-1")
            .json(body)
            .send()
            .await
            .expect("bulk request");
        let replayed = r.headers().contains_key("idempotent-replayed");
        (
            r.status().as_u16(),
            replayed,
            r.json::<Value>().await.unwrap(),
        )
    };

    let (status, replayed, first) = send(&body).await;
    assert_eq!((status, replayed), (201, false), "{first}");
    assert_eq!(first["queued"], 3);
    let (status, replayed, again) = send(&body).await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(first, again);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM command_batches").await,
        1
    );
    assert_eq!(count(&stack, "SELECT count(*) FROM commands").await, 3);

    // Another request with the key: 422, nothing more queued.
    let (status, _, v) = send(&reboot(json!({"device_type": "ticket"}))).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(count(&stack, "SELECT count(*) FROM commands").await, 3);
}
