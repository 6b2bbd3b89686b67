//! What operators see: metrics after traffic.

use std::time::Duration;

use serde_json::json;
use tend_tests::{Agent, Service, Stack, eventually};

#[tokio::test]
async fn every_service_exports_its_named_series_after_traffic() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let id = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack
        .wait_for(&admin, id, "succeeded", Duration::from_secs(30))
        .await;

    let scrape = |s: Service| {
        let url = format!("{}/metrics", stack.url(s));
        let http = stack.http.clone();
        async move { http.get(url).send().await.ok()?.text().await.ok() }
    };
    let expect = [
        (
            Service::Platform,
            vec![
                "tend_http_requests_total{method=\"POST\",route=\"/api/v1/devices/{id}/commands\",status=\"201\"}",
                "tend_http_request_duration_seconds_bucket",
                "tend_commands_queued_total{kind=\"shutdown\"}",
                "tend_backing_store_errors_total{store=\"postgres\"}",
            ],
        ),
        (
            Service::Sync,
            vec![
                "tend_heartbeats_total",
                "tend_http_requests_total{method=\"POST\",route=\"/device/v1/heartbeat\",status=\"200\"}",
                "tend_sync_events_total{topic=\"command.queued\"}",
                "tend_instructions_delivered_total",
            ],
        ),
        (
            Service::Monitor,
            vec![
                "tend_outbox_published_total",
                "tend_outbox_backlog",
                "tend_outbox_oldest_age_seconds",
                "tend_commands_finished_total{status=\"succeeded\"}",
                "tend_commands{kind=\"reboot\",status=\"queued\"}",
                "tend_devices{status=\"online\"}",
                "tend_amqp_publish_errors_total",
            ],
        ),
    ];
    for (service, series) in expect {
        eventually(
            Duration::from_secs(30),
            &format!("{service:?} to export {series:?}"),
            || async {
                let text = scrape(service).await?;
                series.iter().all(|s| text.contains(s)).then_some(())
            },
        )
        .await;
    }
    // The fleet gauges are recounted every 15 seconds.
    eventually(
        Duration::from_secs(40),
        "one device counted online",
        || async {
            let text = scrape(Service::Monitor).await?;
            text.lines()
                .any(|l| l.starts_with("tend_devices{status=\"online\"}") && l.ends_with(" 1"))
                .then_some(())
        },
    )
    .await;
}
