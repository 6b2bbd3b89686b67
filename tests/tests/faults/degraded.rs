//! One store down at a time: what still works, what answers 503, and that
//! everything comes back by itself, without a restart.
//!
//! - Redis down: heartbeats are answered and commands reach devices
//!   (pending flags never lived in Redis), and nobody is marked offline.
//! - RabbitMQ down: commands reach devices within about two heartbeat
//!   intervals (sync replicas read the pending devices from PostgreSQL
//!   while they hear no events), and the outbox drains once it is back.
//! - PostgreSQL down: `/readyz` is 503 everywhere, the admin API answers
//!   503 (never 500), heartbeats are still answered.
//! - SIGTERM under load costs no request more than one retry.
//! - Concurrent final reports: exactly one wins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tend_core::live::Live;
use tend_core::tls::RedisTls;
use tend_tests::redis_server::RedisServer;
use tend_tests::{Agent, Mode, Options, Proxy, Service, Stack, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn faulty() -> Options {
    Options {
        faults: true,
        ..Options::default()
    }
}

async fn heartbeat(stack: &Stack, token: &str) -> u16 {
    stack
        .http
        .post(stack.device_api("/heartbeat"))
        .bearer_auth(token)
        .json(&json!({ "agent_version": "test" }))
        .send()
        .await
        .expect("heartbeat request")
        .status()
        .as_u16()
}

async fn device_status(stack: &Stack, admin: &str, id: uuid::Uuid) -> String {
    let (status, v) = stack.get(admin, &format!("/devices/{id}")).await;
    assert_eq!(status, 200, "device {id}: {v}");
    v["status"].as_str().unwrap_or_default().to_owned()
}

async fn outbox(stack: &Stack) -> i64 {
    stack
        .sql()
        .await
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn with_redis_down_heartbeats_are_answered_commands_arrive_and_nobody_goes_offline() {
    let mut stack = Stack::start_with(faulty()).await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    eventually(WAIT, "the device to be online", || async {
        (device_status(&stack, &admin, device.id).await == "online").then_some(())
    })
    .await;
    let token = stack.device_token(&device).await;

    stack.faults.as_mut().unwrap().redis_server.stop();
    assert_eq!(
        heartbeat(&stack, &token).await,
        200,
        "a heartbeat without Redis"
    );
    let first = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, first, "succeeded", WAIT).await;
    // Silent for more than the offline window (three heartbeats) as far as
    // Redis can tell: still online, since the monitor cannot tell.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(device_status(&stack, &admin, device.id).await, "online");

    // Back, empty: presence and commands carry on.
    stack.faults.as_mut().unwrap().redis_server.restart().await;
    let second = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, second, "succeeded", WAIT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(device_status(&stack, &admin, device.id).await, "online");
    assert_eq!(agent.executed(), vec![first, second]);
}

/// The monitor and a sync server reconnect to Redis each on its own
/// schedule. When the monitor is back first, the devices of that sync
/// server look silent since the outage began; the sync server's first write
/// after the outage must move the presence epoch, so that no monitor
/// counts that silence (seen: a device marked offline 3 s after Redis came
/// back, while its sync server was still waiting to reconnect).
#[tokio::test]
async fn a_sync_server_back_from_a_redis_outage_moves_the_presence_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path().join("redis")).await;
    let addr = server.url().trim_start_matches("redis://").parse().unwrap();
    let proxy = Proxy::start("redis", addr).await;
    let url = format!("redis://{}", proxy.addr());
    let tls = RedisTls::from_url(&url, None).unwrap();
    let live = Live::connect(&url, &tls, "epoch-test").await.unwrap();
    let presence = tend_sync::presence::Presence::default();
    let device = uuid::Uuid::new_v4();
    let now_ms = || chrono::Utc::now().timestamp_millis();

    // A monitor set the epoch long ago; a healthy flush leaves it alone.
    assert_eq!(live.presence_epoch(1_000).await.unwrap(), 1_000);
    presence.record(device, now_ms(), "{}".into());
    assert_eq!(presence.flush(&live).await, 1);
    assert_eq!(live.presence_epoch(now_ms()).await.unwrap(), 1_000);

    proxy.set_mode(Mode::Refuse);
    presence.record(device, now_ms(), "{}".into());
    assert_eq!(
        presence.flush(&live).await,
        0,
        "a flush while Redis is away"
    );
    let back = now_ms();
    proxy.set_mode(Mode::Pass);
    eventually(WAIT, "the kept beat to be written", || async {
        (presence.flush(&live).await == 1).then_some(())
    })
    .await;
    let epoch = live.presence_epoch(now_ms()).await.unwrap();
    assert!(
        epoch >= back,
        "the epoch ({epoch}) moved to the write after the outage (>= {back})"
    );
    let beats = live.beats_since(0, 10).await.unwrap();
    assert_eq!(beats.len(), 1, "the kept beat is in the presence set");

    // Once written, the next flushes leave the epoch alone again.
    presence.record(device, now_ms(), "{}".into());
    assert_eq!(presence.flush(&live).await, 1);
    assert_eq!(live.presence_epoch(now_ms()).await.unwrap(), epoch);
}

#[tokio::test]
async fn with_rabbitmq_down_commands_arrive_within_two_heartbeats_and_the_outbox_drains() {
    let heartbeat_s = 2;
    let stack = Stack::start_with(Options {
        heartbeat_s,
        ..faulty()
    })
    .await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.poll_only();
    agent.start();
    let warm = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, warm, "succeeded", WAIT).await;

    let amqp = &stack.faults.as_ref().unwrap().amqp;
    amqp.set_mode(Mode::Refuse);
    // The sync server notices the lost consumer (its /readyz body says so).
    let sync_ready = format!("{}/readyz", stack.url(Service::Sync));
    eventually(WAIT, "sync to notice RabbitMQ is gone", || async {
        let body = stack
            .http
            .get(&sync_ready)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (!body.contains("\"rabbitmq\":\"ok\"")).then_some(())
    })
    .await;

    let mut slowest = Duration::ZERO;
    let mut ids = vec![warm];
    for _ in 0..3 {
        let queued = Instant::now();
        let id = stack
            .queue(&admin, device.id, json!({ "kind": "shutdown" }))
            .await;
        stack.wait_for(&admin, id, "succeeded", WAIT).await;
        slowest = slowest.max(queued.elapsed());
        ids.push(id);
    }
    eprintln!(
        "RabbitMQ down: slowest of 3 commands took {slowest:?} with {heartbeat_s} s heartbeats"
    );
    assert!(
        slowest <= Duration::from_secs(2 * heartbeat_s + 2),
        "without RabbitMQ a command took {slowest:?}, more than about two heartbeat intervals"
    );
    assert!(
        outbox(&stack).await > 0,
        "the announcements wait in the outbox"
    );

    amqp.set_mode(Mode::Pass);
    eventually(WAIT, "the outbox to drain", || async {
        (outbox(&stack).await == 0).then_some(())
    })
    .await;
    let after = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, after, "succeeded", WAIT).await;
    ids.push(after);
    assert_eq!(agent.executed(), ids);
}

#[tokio::test]
async fn with_postgres_down_the_api_answers_503_heartbeats_go_on_and_all_recovers() {
    let stack = Stack::start_with(faulty()).await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;
    let pg = &stack.faults.as_ref().unwrap().postgres;

    pg.set_mode(Mode::Refuse);
    for s in [Service::Platform, Service::Sync, Service::Monitor] {
        let url = format!("{}/readyz", stack.url(s));
        eventually(WAIT, &format!("{s:?} /readyz to say 503"), || async {
            let r = stack.http.get(&url).send().await.ok()?;
            (r.status() == 503).then_some(())
        })
        .await;
    }
    let expect_503 = |what: &'static str, r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 503, "{what} without PostgreSQL: {body}");
        assert_eq!(kind, "application/problem+json", "{what}");
    };
    let http = &stack.http;
    expect_503(
        "listing devices",
        http.get(stack.api("/devices"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    expect_503(
        "queueing a command",
        http.post(stack.api(&format!("/devices/{}/commands", device.id)))
            .bearer_auth(&admin)
            .json(&json!({ "kind": "reboot" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    expect_503(
        "logging in",
        http.post(stack.api("/auth/login"))
            .json(&json!({ "username": "root", "password": "whatever-it-is" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    expect_503(
        "fetching instructions",
        http.get(stack.device_api("/instructions"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        heartbeat(&stack, &token).await,
        200,
        "a heartbeat without PostgreSQL"
    );

    // Back: no restart needed.
    pg.set_mode(Mode::Pass);
    for s in [Service::Platform, Service::Sync, Service::Monitor] {
        let url = format!("{}/readyz", stack.url(s));
        eventually(WAIT, &format!("{s:?} to be ready again"), || async {
            let r = stack.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let id = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, id, "succeeded", WAIT).await;
    assert_eq!(agent.executed(), vec![id]);
}

/// Sends `request` until stopped; a failure is retried once at once, and
/// a failed retry is counted. Returns (requests, first tries failed).
async fn keep_asking<F, Fut>(
    stop: Arc<AtomicBool>,
    beyond_retry: Arc<AtomicU64>,
    request: F,
) -> (u64, u64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let (mut sent, mut retried) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        sent += 1;
        if !request().await {
            retried += 1;
            if !request().await {
                beyond_retry.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (sent, retried)
}

#[tokio::test]
async fn sigterm_under_load_costs_no_request_more_than_one_retry() {
    let mut stack = Stack::start().await;
    stack.spawn_replica(Service::Sync).await;
    stack.spawn_replica(Service::Platform).await;
    let sync_lb = Proxy::balance("sync", stack.addrs(Service::Sync)).await;
    let platform_lb = Proxy::balance("platform", stack.addrs(Service::Platform)).await;
    let admin = stack.admin().await;

    let stop = Arc::new(AtomicBool::new(false));
    let beyond_retry = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..20 {
        let device = stack.new_device(&admin).await;
        let token = stack.device_token(&device).await;
        // One keep-alive client per device, as an agent has.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("http://{}/device/v1/heartbeat", sync_lb.addr());
        load.push(tokio::spawn(keep_asking(
            stop.clone(),
            beyond_retry.clone(),
            move || {
                let (http, url, token) = (http.clone(), url.clone(), token.clone());
                async move {
                    http.post(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "agent_version": "test" }))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                }
            },
        )));
    }
    for _ in 0..4 {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("http://{}/api/v1/devices?limit=5", platform_lb.addr());
        let admin = admin.clone();
        load.push(tokio::spawn(keep_asking(
            stop.clone(),
            beyond_retry.clone(),
            move || {
                let (http, url, admin) = (http.clone(), url.clone(), admin.clone());
                async move {
                    http.get(&url)
                        .bearer_auth(&admin)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                }
            },
        )));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    for (s, n) in [
        (Service::Sync, 0),
        (Service::Sync, 1),
        (Service::Platform, 0),
        (Service::Platform, 1),
    ] {
        assert_eq!(stack.terminate_nth(s, n), Some(0), "{s:?} #{n} at SIGTERM");
        tokio::time::sleep(Duration::from_millis(500)).await;
        stack.spawn_nth(s, n).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut sent, mut retried) = (0, 0);
    for task in load {
        let (s, r) = task.await.unwrap();
        sent += s;
        retried += r;
    }
    eprintln!(
        "SIGTERM under load: {sent} requests, {retried} retried once, {} failed twice",
        beyond_retry.load(Ordering::SeqCst)
    );
    assert!(sent > 500, "the load ran: {sent} requests");
    assert_eq!(
        beyond_retry.load(Ordering::SeqCst),
        0,
        "a request failed even after one retry"
    );
}

#[tokio::test]
async fn concurrent_final_reports_resolve_to_exactly_one() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;
    for round in 0..5 {
        let id = stack
            .queue(&admin, device.id, json!({ "kind": "shutdown" }))
            .await;
        let r = stack
            .http
            .get(stack.device_api("/instructions"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Eight reports at once, each different: one succeeded, the others
        // failed with distinct errors.
        let mut sends = Vec::new();
        for i in 0..8 {
            let body = if i == round {
                json!({ "status": "succeeded" })
            } else {
                json!({ "status": "failed", "error": format!("report {i}") })
            };
            let (http, url, token) = (
                stack.http.clone(),
                stack.device_api(&format!("/instructions/{id}/report")),
                token.clone(),
            );
            sends.push(tokio::spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), body)
            }));
        }
        let mut won = Vec::new();
        for s in sends {
            let (status, body) = s.await.unwrap();
            match status {
                200 => won.push(body),
                409 => {}
                other => panic!("a concurrent report answered {other}"),
            }
        }
        assert_eq!(won.len(), 1, "exactly one report applies: {won:?}");
        let v = stack.command(&admin, id).await;
        assert_eq!(
            v["status"], won[0]["status"],
            "the record is the winner's: {v}"
        );
        if won[0]["status"] == "failed" {
            assert_eq!(v["result"]["error"], won[0]["error"], "{v}");
        }
    }
}
