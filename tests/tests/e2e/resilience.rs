//! Losing a service or the hot-path state costs time, never a command.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tend_tests::{Agent, Service, Stack, eventually};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn killing_and_restarting_sync_and_monitor_loses_no_queued_command() {
    let mut stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            stack
                .queue(&admin, device.id, json!({ "kind": "shutdown" }))
                .await,
        );
    }
    stack.kill(Service::Sync);
    stack.kill(Service::Monitor);
    for _ in 0..4 {
        ids.push(
            stack
                .queue(&admin, device.id, json!({ "kind": "shutdown" }))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.spawn(Service::Monitor).await;
    stack.spawn(Service::Sync).await;
    for _ in 0..3 {
        ids.push(
            stack
                .queue(&admin, device.id, json!({ "kind": "shutdown" }))
                .await,
        );
    }
    // And once more, a clean stop (SIGTERM) of both.
    assert_eq!(stack.terminate(Service::Monitor), Some(0));
    assert_eq!(stack.terminate(Service::Sync), Some(0));
    ids.push(
        stack
            .queue(&admin, device.id, json!({ "kind": "shutdown" }))
            .await,
    );
    stack.spawn(Service::Sync).await;
    stack.spawn(Service::Monitor).await;

    for id in &ids {
        stack.wait_for(&admin, *id, "succeeded", WAIT).await;
    }
    let executed = agent.executed();
    assert_eq!(executed.len(), ids.len(), "each ran once: {executed:?}");
    assert_eq!(
        executed.iter().copied().collect::<HashSet<Uuid>>(),
        ids.iter().copied().collect::<HashSet<Uuid>>()
    );
    let outbox: i64 = stack
        .sql()
        .await
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 0, "the outbox drained");
}

#[tokio::test]
async fn deleting_the_installations_redis_keys_loses_no_command() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;

    // Queued while the device is away; the pending flag is set, then lost.
    let first = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    let pending_key = format!("{}:pending", stack.instance);
    eventually(WAIT, "the device to be marked pending", || async {
        let mut r = stack.redis().await;
        let yes: bool = redis::cmd("SISMEMBER")
            .arg(&pending_key)
            .arg(device.id.to_string())
            .query_async(&mut r)
            .await
            .ok()?;
        yes.then_some(())
    })
    .await;
    stack.flush_redis().await;

    let mut agent = Agent::new(&stack, &device);
    agent.start();
    stack.wait_for(&admin, first, "succeeded", WAIT).await;

    // And while it runs.
    let second = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.flush_redis().await;
    stack.wait_for(&admin, second, "succeeded", WAIT).await;
    assert_eq!(agent.executed(), vec![first, second]);
}
