//! Long-poll: a held heartbeat is answered when its command arrives, on
//! whichever replica holds it, and let go when the server stops.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tend_tests::{Options, Service, Stack};

/// Sends a heartbeat asking to be held `wait_s`; answers the reply and how
/// long it took.
async fn held_heartbeat(
    http: reqwest::Client,
    sync: String,
    token: String,
    wait_s: u32,
) -> (Value, Duration) {
    let started = Instant::now();
    let r = http
        .post(format!("{sync}/device/v1/heartbeat"))
        .bearer_auth(token)
        .json(&json!({ "agent_version": "test", "wait_s": wait_s }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (r.json().await.unwrap(), started.elapsed())
}

#[tokio::test]
async fn a_held_heartbeat_on_another_replica_is_answered_when_its_command_is_queued() {
    let mut stack = Stack::start_with(Options {
        heartbeat_s: 20,
        ..Options::default()
    })
    .await;
    let second_sync = stack.spawn_replica(Service::Sync).await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token_at(&second_sync, &device).await;

    // Nothing queued: held for the whole wait, then told to come back at once.
    let (v, took) = held_heartbeat(stack.http.clone(), second_sync.clone(), token.clone(), 2).await;
    assert_eq!(v["pending"], false);
    assert!(took >= Duration::from_secs(2), "held {took:?}");
    let next = v["next_heartbeat_s"].as_u64().unwrap();
    assert!((17..=18).contains(&next), "the rest of the interval: {v}");

    let held = tokio::spawn(held_heartbeat(
        stack.http.clone(),
        second_sync.clone(),
        token.clone(),
        20,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack
        .queue(&admin, device.id, json!({ "kind": "reboot" }))
        .await;
    let (v, took) = held.await.unwrap();
    assert_eq!(v["pending"], true, "{v}");
    assert!(
        took < Duration::from_secs(10),
        "answered when the command arrived, not at the end of the wait ({took:?})"
    );
    // Pending already: answered at once.
    let (v, took) = held_heartbeat(stack.http.clone(), second_sync, token, 20).await;
    assert_eq!(v["pending"], true);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_stopping_sync_server_lets_its_held_heartbeats_go() {
    let mut stack = Stack::start_with(Options {
        heartbeat_s: 30,
        ..Options::default()
    })
    .await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let sync = stack.url(Service::Sync);
    let token = stack.device_token(&device).await;

    let held = tokio::spawn(held_heartbeat(stack.http.clone(), sync, token, 30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    assert_eq!(stack.terminate(Service::Sync), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the drain did not wait for the held heartbeat"
    );
    let (v, _) = held.await.unwrap();
    assert_eq!(v["pending"], false, "answered, not cut off: {v}");
}
