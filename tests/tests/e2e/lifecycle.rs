//! A command's whole life: queued → delivered → in_progress → its end.

use std::time::Duration;

use serde_json::json;
use tend_tests::{Agent, Stack, eventually};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_reboot_runs_once_and_succeeds_when_the_agent_returns_with_a_new_boot_id() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();

    let id = stack
        .queue(&admin, device.id, json!({ "kind": "reboot" }))
        .await;
    let running = stack.wait_for(&admin, id, "in_progress", WAIT).await;
    assert!(running["delivered_at"].is_string() && running["started_at"].is_string());
    eventually(WAIT, "the reboot action to run", || async {
        (agent.executed() == vec![id]).then_some(())
    })
    .await;

    // The machine "reboots": the agent stops and comes back with a new boot id.
    agent.stop();
    agent.new_boot_id();
    agent.start();

    let done = stack.wait_for(&admin, id, "succeeded", WAIT).await;
    assert!(done["finished_at"].is_string());
    assert_eq!(agent.executed(), vec![id], "the reboot ran exactly once");
    let ops = agent.operations();
    assert!(
        ops.iter()
            .any(|o| o["instruction_id"] == json!(id) && o["outcome"] == "succeeded"),
        "the operation log records the reboot: {ops:?}"
    );
}

#[tokio::test]
async fn a_reboot_fails_and_is_not_run_again_when_the_boot_id_did_not_change() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();

    let id = stack
        .queue(&admin, device.id, json!({ "kind": "reboot" }))
        .await;
    stack.wait_for(&admin, id, "in_progress", WAIT).await;
    eventually(WAIT, "the reboot action to run", || async {
        (agent.executed().len() == 1).then_some(())
    })
    .await;

    // The agent restarts but the machine did not: same boot id.
    agent.stop();
    agent.start();

    let done = stack.wait_for(&admin, id, "failed", WAIT).await;
    assert!(
        done["result"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("boot id")),
        "the failure says why: {done}"
    );
    // A few more heartbeats: nothing runs again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agent.executed(), vec![id], "no reboot loop");
}

#[tokio::test]
async fn a_shutdown_runs_once_and_succeeds() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();

    let id = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, id, "succeeded", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent.executed(), vec![id]);
}

#[tokio::test]
async fn a_failing_action_is_reported_failed_with_its_exit_status() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::with_actions(&stack, &device, "exit 0", "echo no power >&2; exit 3");
    agent.start();

    let id = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    let done = stack.wait_for(&admin, id, "failed", WAIT).await;
    assert!(done["result"].is_object(), "{done}");
    assert_eq!(agent.executed(), vec![id]);
}

#[tokio::test]
async fn a_command_queued_while_the_agent_is_offline_is_delivered_when_it_starts() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let id = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.command(&admin, id).await["status"], "queued");

    let mut agent = Agent::new(&stack, &device);
    agent.start();
    stack.wait_for(&admin, id, "succeeded", WAIT).await;
    assert_eq!(agent.executed(), vec![id]);
}

#[tokio::test]
async fn a_command_that_expires_before_its_device_comes_back_never_runs() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let id = stack
        .queue(
            &admin,
            device.id,
            json!({ "kind": "reboot", "expires_in_s": 1 }),
        )
        .await;
    let expired = stack.wait_for(&admin, id, "expired", WAIT).await;
    assert!(expired["finished_at"].is_string());

    let mut agent = Agent::new(&stack, &device);
    agent.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(agent.executed().is_empty());
    assert_eq!(stack.command(&admin, id).await["status"], "expired");
}

#[tokio::test]
async fn a_cancelled_command_never_runs_and_cancelling_twice_is_a_conflict() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let id = stack
        .queue(&admin, device.id, json!({ "kind": "reboot" }))
        .await;

    let (status, v) = stack
        .post(&admin, &format!("/commands/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    let (status, v) = stack
        .post(&admin, &format!("/commands/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["status"], 409);

    let mut agent = Agent::new(&stack, &device);
    agent.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(agent.executed().is_empty());
    assert_eq!(stack.command(&admin, id).await["status"], "cancelled");
}

#[tokio::test]
async fn a_delivered_command_cannot_be_cancelled() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let id = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, id, "succeeded", WAIT).await;
    let (status, _) = stack
        .post(&admin, &format!("/commands/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn an_in_progress_command_that_never_reports_times_out() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();

    // The reboot action returns but the machine never goes down, and the
    // agent never restarts: nobody will report the end.
    let id = stack
        .queue(
            &admin,
            device.id,
            json!({ "kind": "reboot", "timeout_s": 2 }),
        )
        .await;
    stack.wait_for(&admin, id, "in_progress", WAIT).await;
    let done = stack.wait_for(&admin, id, "timed_out", WAIT).await;
    assert!(done["finished_at"].is_string());
    assert_eq!(agent.executed(), vec![id]);
}

#[tokio::test]
async fn devices_go_online_with_their_heartbeats_and_report_what_they_run() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let (_, v) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
    assert_eq!(v["status"], "unknown");

    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let v = eventually(WAIT, "the device to be online", || async {
        let (_, v) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
        (v["status"] == "online").then_some(v)
    })
    .await;
    assert!(v["last_seen_at"].is_string());
    assert!(v["reported"]["agent_version"].is_string(), "{v}");

    agent.kill();
    eventually(WAIT, "the device to be offline", || async {
        let (_, v) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
        (v["status"] == "offline").then_some(())
    })
    .await;
}
