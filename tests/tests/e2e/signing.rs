//! Signed instructions: the platform signs every command when it is
//! queued; an agent runs only what verifies against the key it pins, for
//! its own device. A row altered in PostgreSQL, a command moved to another
//! device, an unsigned row written by hand and an agent pinning another key
//! all end in a clear state, and nothing runs that the platform did not
//! sign for that device.

use std::time::Duration;

use serde_json::{Value, json};
use tend_tests::{Agent, Stack};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn refused_because(command: &Value, why: &str) -> bool {
    command["status"] == "rejected"
        && command["result"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("refused: ") && e.contains(why))
}

#[tokio::test]
async fn a_command_altered_in_the_database_is_rejected_by_the_agent_and_never_runs() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    let sql = stack.sql().await;

    // Queued while the agent is away, then altered at rest: a log query
    // turned into a shutdown, a reboot given a later expiry, a log query
    // with other params.
    let query = json!({"kind": "log_query", "params": {"source": "operations"}});
    let to_shutdown = stack.queue(&admin, device.id, query.clone()).await;
    let extended = stack
        .queue(&admin, device.id, json!({"kind": "reboot"}))
        .await;
    let reparam = stack.queue(&admin, device.id, query).await;
    for (id, change) in [
        (to_shutdown, "kind = 'shutdown'"),
        (extended, "expires_at = expires_at + interval '3 days'"),
        (
            reparam,
            "params = '{\"source\": \"operations\", \"max_lines\": 1}'",
        ),
    ] {
        let n = sql
            .execute(
                &format!("UPDATE commands SET {change} WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    agent.start();
    for id in [to_shutdown, extended, reparam] {
        let done = stack.wait_for(&admin, id, "rejected", WAIT).await;
        assert!(refused_because(&done, "does not verify"), "{done}");
    }
    assert!(agent.executed().is_empty(), "an altered command ran");

    // What the platform signed and nobody touched still runs.
    let fine = stack
        .queue(&admin, device.id, json!({"kind": "shutdown"}))
        .await;
    stack.wait_for(&admin, fine, "succeeded", WAIT).await;
    assert_eq!(agent.executed(), vec![fine]);
}

#[tokio::test]
async fn a_command_moved_to_another_device_is_rejected_there() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (a, b) = (
        stack.new_device(&admin).await,
        stack.new_device(&admin).await,
    );
    let mut agent_b = Agent::new(&stack, &b);
    let sql = stack.sql().await;

    let id = stack.queue(&admin, a.id, json!({"kind": "shutdown"})).await;
    sql.execute(
        "UPDATE commands SET device_id = $2 WHERE id = $1",
        &[&id, &b.id],
    )
    .await
    .unwrap();
    // The monitor announces waiting commands again after two heartbeat
    // intervals: device B learns of it then.
    agent_b.start();
    let done = stack.wait_for(&admin, id, "rejected", WAIT).await;
    assert!(refused_because(&done, "another device"), "{done}");
    assert!(agent_b.executed().is_empty());
}

#[tokio::test]
async fn an_agent_pinning_another_key_runs_nothing_and_says_why() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    // A key the platform does not hold.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let other = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        other.verifying_key().as_bytes(),
    );
    agent.set_config_line("signing_keys", &format!("[\"{other}\"]"));
    agent.start();
    let id = stack
        .queue(&admin, device.id, json!({"kind": "reboot"}))
        .await;
    let done = stack.wait_for(&admin, id, "rejected", WAIT).await;
    assert!(refused_because(&done, "does not pin"), "{done}");
    assert!(agent.executed().is_empty());
}

#[tokio::test]
async fn an_agent_without_signing_keys_refuses_to_start_with_a_reason() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    let text: String = agent
        .config_text()
        .lines()
        .filter(|l| !l.starts_with("signing_keys"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(agent.config_path(), text).unwrap();
    agent.start();
    let deadline = std::time::Instant::now() + WAIT;
    while !agent.has_exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent.log().contains("signing_keys is missing"),
        "{}",
        agent.log()
    );
}

#[tokio::test]
async fn an_unsigned_row_written_by_hand_is_never_signed_into_an_instruction() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let sql = stack.sql().await;

    // A shutdown inserted straight into the table, as an intruder with
    // database access would: the platform's signer only signs an update
    // check's upgrade it would have queued itself, and cancels the rest.
    let id = Uuid::new_v4();
    sql.execute(
        "INSERT INTO commands (id, tenant_id, device_id, kind, params, timeout_s, expires_at)
         SELECT $1, tenant_id, id, 'shutdown', '{}'::jsonb, 60, now() + interval '1 hour'
         FROM devices WHERE id = $2",
        &[&id, &device.id],
    )
    .await
    .unwrap();
    let done = stack.wait_for(&admin, id, "cancelled", WAIT).await;
    assert!(
        done["result"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not sign")),
        "{done}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(agent.executed().is_empty(), "a hand-written command ran");
}

#[tokio::test]
async fn a_delivered_command_stripped_of_its_signature_is_rejected() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    let sql = stack.sql().await;

    // Handed over unsigned, as a sync server that dropped the signature
    // (or a row edited to look delivered) would hand it.
    let id = stack
        .queue(&admin, device.id, json!({"kind": "shutdown"}))
        .await;
    sql.execute(
        "UPDATE commands SET status = 'delivered', delivered_at = now(),
                key_id = NULL, signature = NULL WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    agent.start();
    let done = stack.wait_for(&admin, id, "rejected", WAIT).await;
    assert!(refused_because(&done, "not signed"), "{done}");
    assert!(agent.executed().is_empty());
}

#[tokio::test]
async fn a_signed_command_handed_over_again_is_not_run_again() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let sql = stack.sql().await;

    let id = stack
        .queue(&admin, device.id, json!({"kind": "shutdown"}))
        .await;
    stack.wait_for(&admin, id, "succeeded", WAIT).await;
    // Replayed with its valid signature: the row put back to delivered.
    sql.execute(
        "UPDATE commands SET status = 'delivered', finished_at = NULL WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    stack.wait_for(&admin, id, "succeeded", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent.executed(), vec![id], "a replayed shutdown ran twice");
}
