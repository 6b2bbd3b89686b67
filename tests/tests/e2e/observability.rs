//! What operators see: metrics after traffic, on ports of their own, and
//! log lines that input cannot forge.

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

    // Invented methods, unauthenticated, share one label.
    for invented in ["BREW", "XMETHOD1", "XMETHOD2"] {
        let method = reqwest::Method::from_bytes(invented.as_bytes()).unwrap();
        stack
            .http
            .request(method, format!("{}/healthz", stack.url(Service::Sync)))
            .send()
            .await
            .unwrap();
    }

    let scrape = |s: Service| {
        let url = format!("{}/metrics", stack.metrics_url(s));
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
                "tend_http_requests_total{method=\"other\",route=\"/healthz\"",
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
    let sync = scrape(Service::Sync).await.unwrap_or_default();
    assert!(
        !sync.contains("XMETHOD"),
        "an invented method became a label"
    );
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

#[tokio::test]
async fn metrics_are_served_only_on_their_own_port_until_the_drain_ends() {
    let mut stack = Stack::start().await;
    for s in [Service::Platform, Service::Sync] {
        let public = stack.url(s);
        let metrics = stack.metrics_url(s);
        assert_ne!(public, metrics, "{s:?} serves metrics on its public port");

        let r = stack
            .http
            .get(format!("{public}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{s:?} answers /metrics on its public port");

        let r = stack
            .http
            .get(format!("{metrics}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{s:?} /metrics");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("tend_backing_store_errors_total"),
            "{s:?}: {text}"
        );
        // The metrics port is for the monitoring system: no API there.
        for path in ["/api/v1/devices", "/device/v1/heartbeat", "/readyz"] {
            let r = stack
                .http
                .get(format!("{metrics}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{s:?} {path} on the metrics port");
        }
        let r = stack
            .http
            .get(format!("{metrics}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{s:?} /healthz on the metrics port");
    }
    // The monitor keeps its one port for health and metrics.
    assert_eq!(
        stack.url(Service::Monitor),
        stack.metrics_url(Service::Monitor)
    );

    // SIGTERM drains both servers and the process exits cleanly.
    let metrics = stack.metrics_url(Service::Platform);
    assert_eq!(stack.terminate(Service::Platform), Some(0));
    assert!(
        stack
            .http
            .get(format!("{metrics}/metrics"))
            .send()
            .await
            .is_err(),
        "the metrics port still answers after the drain"
    );
}

#[tokio::test]
async fn one_trace_id_follows_a_command_through_every_service() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;

    // Listen on the installation's exchange like a sync replica does.
    let amqp = lapin::Connection::connect(
        &std::env::var("TEND_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ is required");
    let ch = amqp.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        format!("{}.sync", stack.instance).into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "trace-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = stack
        .http
        .post(stack.api(&format!("/devices/{}/commands", device.id)))
        .bearer_auth(&admin)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({ "kind": "shutdown" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("x-request-id").is_some());
    let cmd: serde_json::Value = r.json().await.unwrap();
    assert_eq!(cmd["trace_id"], trace);
    let id: uuid::Uuid = cmd["id"].as_str().unwrap().parse().unwrap();

    // The event carries it as a W3C traceparent header.
    let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("the command.queued event")
        .unwrap()
        .unwrap();
    let headers = delivery.properties.headers().clone().expect("AMQP headers");
    let traceparent = match headers.inner().get("traceparent") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("no traceparent header: {other:?}"),
    };
    assert!(
        traceparent.starts_with(&format!("00-{trace}-")),
        "{traceparent}"
    );

    let mut agent = Agent::new(&stack, &device);
    agent.start();
    stack
        .wait_for(&admin, id, "succeeded", Duration::from_secs(30))
        .await;

    for service in [Service::Platform, Service::Monitor, Service::Sync] {
        let log = stack.log_of(service);
        assert!(
            log.lines().any(|l| l.contains(trace)),
            "{service:?} logs the trace id"
        );
    }
    assert!(
        agent.log().lines().any(|l| l.contains(trace)),
        "the agent logs the trace id"
    );
    let sync_log = stack.log_of(Service::Sync);
    assert!(
        sync_log
            .lines()
            .any(|l| l.contains(trace) && l.contains("is succeeded")),
        "the report is logged with the trace id"
    );
}

/// The Grafana dashboard may only chart series the services export.
#[tokio::test]
async fn the_grafana_dashboard_charts_only_exported_series() {
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

    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/grafana/tend-dashboard.json"),
    )
    .expect("deploy/grafana/tend-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut wanted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("tend_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                wanted.insert(name);
            }
        }
    }
    assert!(wanted.len() >= 10, "{wanted:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut exported = String::new();
        for s in [Service::Platform, Service::Sync, Service::Monitor] {
            let r = stack
                .http
                .get(format!("{}/metrics", stack.metrics_url(s)))
                .send()
                .await;
            if let Ok(r) = r {
                exported.push_str(&r.text().await.unwrap_or_default());
            }
        }
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|name| !exported.lines().any(|l| l.starts_with(name.as_str())))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard charts series nobody exports: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
