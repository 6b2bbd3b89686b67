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

    // Queued while the device is away and announced; then Redis loses
    // everything of this installation.
    let first = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    let db = stack.sql().await;
    eventually(WAIT, "the command to be announced", || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .ok()?
            .get(0);
        (n == 0).then_some(())
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

#[tokio::test]
async fn two_replicas_of_sync_and_monitor_deliver_each_command_once_and_share_revocations() {
    let mut stack = Stack::start().await;
    let second_sync = stack.spawn_replica(Service::Sync).await;
    stack.spawn_replica(Service::Monitor).await;
    let admin = stack.admin().await;

    let mut agents = Vec::new();
    for i in 0..4 {
        let device = stack.new_device(&admin).await;
        let mut agent = Agent::new(&stack, &device);
        if i % 2 == 1 {
            agent.set_server(&second_sync);
        }
        agent.start();
        agents.push(agent);
    }
    let mut ids = Vec::new();
    for round in 0..5 {
        for agent in &agents {
            let kind = if round % 2 == 0 { "shutdown" } else { "reboot" };
            let cmd = stack
                .queue(&admin, agent.device.id, json!({ "kind": kind }))
                .await;
            ids.push((agent.device.id, cmd, kind));
        }
    }
    for (_, cmd, kind) in &ids {
        let want = if *kind == "shutdown" {
            "succeeded"
        } else {
            "in_progress"
        };
        stack.wait_for(&admin, *cmd, want, WAIT).await;
    }
    for agent in &agents {
        let mine: HashSet<Uuid> = ids
            .iter()
            .filter(|(d, _, _)| *d == agent.device.id)
            .map(|(_, c, _)| *c)
            .collect();
        let executed = agent.executed();
        assert_eq!(executed.len(), mine.len(), "each ran once on its device");
        assert_eq!(executed.into_iter().collect::<HashSet<_>>(), mine);
    }
    let db = stack.sql().await;
    let outbox: i64 = eventually(WAIT, "the outbox to drain", || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .ok()?
            .get(0);
        (n == 0).then_some(n)
    })
    .await;
    assert_eq!(outbox, 0);

    // A device on the second replica is refused there within 2 seconds.
    let device = &agents[1].device;
    let r = stack
        .http
        .post(format!("{second_sync}/device/v1/auth"))
        .json(&json!({ "device_id": device.id, "secret": device.secret }))
        .send()
        .await
        .unwrap();
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = stack
        .http
        .delete(stack.api(&format!("/devices/{}", device.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for sync in [stack.url(Service::Sync), second_sync.clone()] {
        eventually(
            Duration::from_secs(2),
            "every replica to refuse the device",
            || async {
                let r = stack
                    .http
                    .post(format!("{sync}/device/v1/heartbeat"))
                    .bearer_auth(&token)
                    .json(&json!({ "agent_version": "test" }))
                    .send()
                    .await
                    .ok()?;
                (r.status() == 401).then_some(())
            },
        )
        .await;
    }
}
