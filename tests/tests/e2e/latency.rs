//! How long a command waits for its device with 1-second heartbeats, with
//! plain polling and with long-poll. Figures to read, not timed assertions.

use std::time::Duration;

use serde_json::json;
use tend_tests::{Agent, Stack};

#[tokio::test]
async fn queued_to_delivered_latency_over_50_commands() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let polling = stack.new_device(&admin).await;
    let holding = stack.new_device(&admin).await;
    let mut poller = Agent::new(&stack, &polling);
    poller.poll_only();
    poller.start();
    let mut long_poller = Agent::new(&stack, &holding);
    long_poller.start();
    // Let both agents learn the interval and settle into their loop.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut ids = Vec::new();
    for _ in 0..50 {
        for device in [polling.id, holding.id] {
            ids.push((
                device,
                stack
                    .queue(&admin, device, json!({ "kind": "shutdown" }))
                    .await,
            ));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (mut polled_ms, mut held_ms) = (Vec::new(), Vec::new());
    for (device, id) in ids {
        let v = stack
            .wait_for(&admin, id, "succeeded", Duration::from_secs(60))
            .await;
        let at = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(v[k].as_str().expect(k)).expect("RFC 3339")
        };
        let ms = (at("delivered_at") - at("created_at")).num_milliseconds();
        if device == polling.id {
            polled_ms.push(ms);
        } else {
            held_ms.push(ms);
        }
    }
    for (mode, mut ms) in [("polling", polled_ms), ("long-poll", held_ms)] {
        ms.sort_unstable();
        let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "queued→delivered, {mode}, over {} commands, TEND_HEARTBEAT_S=1: p50 {} ms, p95 {} ms, max {} ms",
            ms.len(),
            pct(0.50),
            pct(0.95),
            ms[ms.len() - 1]
        );
    }
    assert_eq!(poller.executed().len(), 50);
    assert_eq!(long_poller.executed().len(), 50);
}
