//! Reading a device's logs from the cloud with `log_query`.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use tend_tests::{Agent, Stack};

const WAIT: Duration = Duration::from_secs(30);

/// An application log with its rotations: app.log.2.gz (oldest), app.log.1,
/// app.log; one record has a stack trace.
fn write_app_logs(dir: &std::path::Path) -> std::path::PathBuf {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let oldest = "2026-11-20T08:00:00Z INFO started\n2026-11-20T09:00:00Z ERROR disk full\n";
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(logs.join("app.log.2.gz")).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(oldest.as_bytes()).unwrap();
    gz.finish().unwrap();
    std::fs::write(
        logs.join("app.log.1"),
        "2026-11-21T08:00:00Z INFO printer ready\n2026-11-21T09:00:00Z ERROR paper jam\n",
    )
    .unwrap();
    std::fs::write(
        logs.join("app.log"),
        "2026-11-22T08:00:00Z INFO card reader ready\n\
         2026-11-22T09:00:00Z ERROR card reader crashed\n\
         \x20   at reader::poll (reader.rs:42)\n\
         \x20   at main (main.rs:7)\n\
         2026-11-22T10:00:00Z INFO card reader restarted\n",
    )
    .unwrap();
    logs.join("app.log")
}

async fn run_query(stack: &Stack, admin: &str, device: uuid::Uuid, params: Value) -> Value {
    let id = stack
        .queue(
            admin,
            device,
            json!({ "kind": "log_query", "params": params }),
        )
        .await;
    eventually_final(stack, admin, id).await
}

async fn eventually_final(stack: &Stack, admin: &str, id: uuid::Uuid) -> Value {
    tend_tests::eventually(WAIT, "the log query to end", || async {
        let v = stack.command(admin, id).await;
        matches!(
            v["status"].as_str(),
            Some("succeeded" | "failed" | "rejected")
        )
        .then_some(v)
    })
    .await
}

#[tokio::test]
async fn a_log_query_reads_a_named_source_with_its_rotations_and_filters() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    let app = write_app_logs(&agent.dir);
    agent.add_log_source("app", &app);
    agent.start();

    // Errors over the three files, the stack trace kept with its record.
    let v = run_query(
        &stack,
        &admin,
        device.id,
        json!({ "source": "app", "pattern": "ERROR" }),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        v["result"]["output"],
        "2026-11-20T09:00:00Z ERROR disk full\n\
         2026-11-21T09:00:00Z ERROR paper jam\n\
         2026-11-22T09:00:00Z ERROR card reader crashed\n\
         \x20   at reader::poll (reader.rs:42)\n\
         \x20   at main (main.rs:7)\n"
    );
    assert_eq!(v["result"]["detail"]["matched"], 5);
    assert_eq!(v["result"]["detail"]["returned"], 5);
    assert_eq!(v["result"]["detail"]["truncated"], false);

    // A time range, inclusive, in another offset.
    let v = run_query(
        &stack,
        &admin,
        device.id,
        json!({ "source": "app", "since": "2026-11-22T10:00:00+01:00", "until": "2026-11-22T10:00:00Z" }),
    )
    .await;
    let out = v["result"]["output"].as_str().unwrap();
    assert!(
        out.starts_with("2026-11-22T09:00:00Z ERROR card reader crashed\n"),
        "{out}"
    );
    assert!(
        out.ends_with("2026-11-22T10:00:00Z INFO card reader restarted\n"),
        "{out}"
    );

    // At most two lines: the newest, and it says so.
    let v = run_query(
        &stack,
        &admin,
        device.id,
        json!({ "source": "app", "max_lines": 2 }),
    )
    .await;
    assert_eq!(v["result"]["detail"]["truncated"], true, "{v}");
    assert_eq!(v["result"]["detail"]["returned"], 2);
    assert!(
        v["result"]["output"]
            .as_str()
            .unwrap()
            .ends_with("2026-11-22T10:00:00Z INFO card reader restarted\n")
    );

    // Nothing matches: an empty, successful answer.
    let v = run_query(
        &stack,
        &admin,
        device.id,
        json!({ "source": "app", "pattern": "no such thing" }),
    )
    .await;
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["result"]["detail"]["matched"], 0);
}

#[tokio::test]
async fn a_source_the_agent_does_not_know_is_rejected_and_a_path_is_refused_up_front() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();

    let v = run_query(&stack, &admin, device.id, json!({ "source": "secrets" })).await;
    assert_eq!(v["status"], "rejected", "{v}");
    assert!(
        v["result"]["error"].as_str().unwrap().contains("secrets"),
        "{v}"
    );

    for source in ["../../etc/shadow", "/etc/shadow", ".."] {
        let (status, v) = stack
            .post(
                &admin,
                &format!("/devices/{}/commands", device.id),
                json!({ "kind": "log_query", "params": { "source": source } }),
            )
            .await;
        assert_eq!(status, 422, "{source}: {v}");
    }
    for bad in [
        json!({ "source": "app", "pattern": "(" }),
        json!({ "source": "app", "since": "2026-11-22T10:00:00Z", "until": "2026-11-21T10:00:00Z" }),
        json!({ "source": "app", "max_lines": 100000 }),
        json!({ "source": "app", "since": "last tuesday" }),
    ] {
        let (status, v) = stack
            .post(
                &admin,
                &format!("/devices/{}/commands", device.id),
                json!({ "kind": "log_query", "params": bad }),
            )
            .await;
        assert_eq!(status, 422, "{v}");
    }
}

#[tokio::test]
async fn the_operations_source_is_the_agents_own_record_of_what_it_did() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let shutdown = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, shutdown, "succeeded", WAIT).await;

    let v = run_query(&stack, &admin, device.id, json!({ "source": "operations" })).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let lines: Vec<Value> = v["result"]["output"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON operation per line"))
        .collect();
    let op = lines
        .iter()
        .find(|o| o["instruction_id"] == json!(shutdown))
        .expect("the shutdown is in the operation log");
    assert_eq!(op["kind"], "shutdown");
    assert_eq!(op["outcome"], "succeeded");
    assert!(op["at"].is_string() && op["duration_ms"].is_number());

    // Downloadable as plain text too.
    let id: uuid::Uuid = v["id"].as_str().unwrap().parse().unwrap();
    let r = stack
        .http
        .get(stack.api(&format!("/commands/{id}/output")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        v["result"]["output"].as_str().unwrap()
    );
}
