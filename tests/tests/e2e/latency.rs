//! How long a command waits for its device with 1-second heartbeats.
//! A figure to read, not a timed assertion.

use std::time::Duration;

use serde_json::json;
use tend_tests::{Agent, Stack};

#[tokio::test]
async fn queued_to_delivered_latency_over_50_commands() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();

    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            stack
                .queue(&admin, device.id, json!({ "kind": "shutdown" }))
                .await,
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut latencies_ms = Vec::new();
    for id in ids {
        let v = stack
            .wait_for(&admin, id, "succeeded", Duration::from_secs(60))
            .await;
        let at = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(v[k].as_str().expect(k)).expect("RFC 3339")
        };
        latencies_ms.push((at("delivered_at") - at("created_at")).num_milliseconds());
    }
    latencies_ms.sort_unstable();
    let pct = |p: f64| latencies_ms[((latencies_ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "queued→delivered over {} commands, TEND_HEARTBEAT_S=1: p50 {} ms, p95 {} ms, max {} ms",
        latencies_ms.len(),
        pct(0.50),
        pct(0.95),
        latencies_ms[latencies_ms.len() - 1]
    );
    assert_eq!(agent.executed().len(), 50);
}
