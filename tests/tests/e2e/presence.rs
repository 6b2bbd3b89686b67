//! Presence as the API shows it, with PostgreSQL written only when
//! something an admin would query changes (`TEND_PRESENCE_REFRESH_S`,
//! an hour by default): `last_seen_at` and the report fresh from Redis at
//! every heartbeat, the row left alone while only the uptime moves, and
//! offline detection unchanged after silence, a Redis flush and a monitor
//! restart.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tend_tests::{Device, Service, Stack, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// One heartbeat as a device sends it, without an agent: the test says
/// what it reports.
async fn beat(stack: &Stack, token: &str, uptime_s: u64, inventory: Value) {
    let r = stack
        .http
        .post(stack.device_api("/heartbeat"))
        .bearer_auth(token)
        .json(&json!({ "agent_version": "test", "uptime_s": uptime_s, "inventory": inventory }))
        .send()
        .await
        .expect("heartbeat request");
    assert_eq!(r.status(), 200, "heartbeat");
}

async fn device(stack: &Stack, admin: &str, d: &Device) -> Value {
    let (status, v) = stack.get(admin, &format!("/devices/{}", d.id)).await;
    assert_eq!(status, 200, "{v}");
    v
}

fn seen_at(v: &Value) -> Option<DateTime<Utc>> {
    v["last_seen_at"].as_str()?.parse().ok()
}

/// The row's version: PostgreSQL gives every rewrite of a row a new xmin.
async fn row_version(stack: &Stack, d: &Device) -> String {
    stack
        .sql()
        .await
        .query_one("SELECT xmin::text FROM devices WHERE id = $1", &[&d.id])
        .await
        .unwrap()
        .get(0)
}

async fn wait_status(stack: &Stack, admin: &str, d: &Device, status: &str) -> Value {
    eventually(WAIT, &format!("device {} to be {status}", d.id), || async {
        let v = device(stack, admin, d).await;
        (v["status"] == status).then_some(v)
    })
    .await
}

#[tokio::test]
async fn heartbeats_show_at_once_in_the_api_and_rewrite_the_row_only_when_the_report_changes() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let d = stack.new_device(&admin).await;
    let token = stack.device_token(&d).await;
    beat(&stack, &token, 1, json!({ "screen": "ok" })).await;
    wait_status(&stack, &admin, &d, "online").await;
    // Past the monitor's re-read of the last two seconds, heartbeating
    // well inside the offline window (three 1 s intervals here).
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        beat(&stack, &token, 1, json!({ "screen": "ok" })).await;
    }
    let version = row_version(&stack, &d).await;

    for uptime in 2..8 {
        let sent = Utc::now();
        beat(&stack, &token, uptime, json!({ "screen": "ok" })).await;
        let v = eventually(WAIT, "the heartbeat to show in the API", || async {
            let v = device(&stack, &admin, &d).await;
            (v["reported"]["uptime_s"] == uptime).then_some(v)
        })
        .await;
        let seen = seen_at(&v).expect("last_seen_at");
        assert!(
            (seen - sent).num_milliseconds().abs() < 1000,
            "last_seen_at {seen} is the heartbeat's time ({sent})"
        );
        assert_eq!(v["status"], "online");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        row_version(&stack, &d).await,
        version,
        "six heartbeats that changed only the uptime left the row alone"
    );

    // A changed report is what an admin queries: written at once.
    beat(&stack, &token, 9, json!({ "screen": "cracked" })).await;
    eventually(WAIT, "the changed report in the row", || async {
        let row = stack
            .sql()
            .await
            .query_one(
                "SELECT reported->'inventory'->>'screen' FROM devices WHERE id = $1",
                &[&d.id],
            )
            .await
            .unwrap();
        (row.get::<_, Option<String>>(0).as_deref() == Some("cracked")).then_some(())
    })
    .await;
    assert_ne!(row_version(&stack, &d).await, version);
}

#[tokio::test]
async fn a_silent_device_goes_offline_with_the_time_of_its_last_heartbeat() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let d = stack.new_device(&admin).await;
    let token = stack.device_token(&d).await;
    beat(&stack, &token, 1, json!({})).await;
    wait_status(&stack, &admin, &d, "online").await;
    let sent = Utc::now();
    beat(&stack, &token, 2, json!({})).await;
    let online = eventually(WAIT, "the last heartbeat in the API", || async {
        let v = device(&stack, &admin, &d).await;
        (v["reported"]["uptime_s"] == 2).then_some(v)
    })
    .await;
    let last = seen_at(&online).unwrap();
    assert!((last - sent).num_milliseconds().abs() < 1000);

    // Three heartbeat intervals (1 s here) of silence.
    let offline = wait_status(&stack, &admin, &d, "offline").await;
    assert_eq!(seen_at(&offline), Some(last), "{offline}");
    let row: DateTime<Utc> = stack
        .sql()
        .await
        .query_one("SELECT last_seen_at FROM devices WHERE id = $1", &[&d.id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        row.timestamp_millis(),
        last.timestamp_millis(),
        "the row keeps the last heartbeat's time"
    );
}

#[tokio::test]
async fn after_redis_loses_its_data_a_heartbeating_device_stays_online_and_a_silent_one_goes_offline()
 {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (alive, silent) = (
        stack.new_device(&admin).await,
        stack.new_device(&admin).await,
    );
    let (alive_token, silent_token) = (
        stack.device_token(&alive).await,
        stack.device_token(&silent).await,
    );
    beat(&stack, &alive_token, 1, json!({})).await;
    beat(&stack, &silent_token, 1, json!({})).await;
    wait_status(&stack, &admin, &alive, "online").await;
    wait_status(&stack, &admin, &silent, "online").await;

    // From here on only `alive` heartbeats; Redis then forgets both.
    let beating = {
        let (http, url, token) = (
            stack.http.clone(),
            stack.device_api("/heartbeat"),
            alive_token.clone(),
        );
        tokio::spawn(async move {
            for uptime in 2.. {
                let _ = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "agent_version": "test", "uptime_s": uptime }))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    stack.flush_redis().await;

    // Only the monitor's check of every online device against Redis can
    // find `silent` now: its heartbeats are gone from the presence set.
    wait_status(&stack, &admin, &silent, "offline").await;
    for _ in 0..10 {
        assert_eq!(
            device(&stack, &admin, &alive).await["status"],
            "online",
            "a device heartbeating through the flush"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    beating.abort();
}

#[tokio::test]
async fn a_device_that_fell_silent_while_no_monitor_ran_goes_offline_when_one_starts() {
    let mut stack = Stack::start().await;
    let admin = stack.admin().await;
    let d = stack.new_device(&admin).await;
    let token = stack.device_token(&d).await;
    beat(&stack, &token, 1, json!({})).await;
    wait_status(&stack, &admin, &d, "online").await;

    stack.kill(Service::Monitor);
    // Silent for more than the offline window while no monitor looks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(device(&stack, &admin, &d).await["status"], "online");
    stack.spawn(Service::Monitor).await;
    wait_status(&stack, &admin, &d, "offline").await;
}

#[tokio::test]
async fn a_steady_device_row_is_refreshed_once_per_refresh_period() {
    let mut stack = Stack::start().await;
    stack.kill(Service::Monitor);
    stack.set_env(Service::Monitor, "TEND_PRESENCE_REFRESH_S", Some("4"));
    stack.spawn(Service::Monitor).await;
    let admin = stack.admin().await;
    let d = stack.new_device(&admin).await;
    let token = stack.device_token(&d).await;
    beat(&stack, &token, 1, json!({})).await;
    wait_status(&stack, &admin, &d, "online").await;

    // Twelve seconds of heartbeats changing only the uptime: the row's
    // last_seen_at moves in steps of 3 to 4 s (the device's share of the
    // period), never at every heartbeat, never more than 4 s behind.
    let sql = stack.sql().await;
    let mut versions = std::collections::BTreeSet::new();
    for uptime in 2..26 {
        beat(&stack, &token, uptime, json!({})).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let row = sql
            .query_one(
                "SELECT xmin::text, last_seen_at FROM devices WHERE id = $1",
                &[&d.id],
            )
            .await
            .unwrap();
        versions.insert(row.get::<_, String>(0));
        let seen: DateTime<Utc> = row.get(1);
        // The period, the sweep that writes it and the sync's flush.
        assert!(
            Utc::now() - seen < chrono::Duration::milliseconds(5500),
            "the row's last_seen_at ({seen}) is at most one period old"
        );
    }
    assert!(
        (3..=6).contains(&versions.len()),
        "24 heartbeats over 12 s rewrote the row {} times: once per 3-4 s",
        versions.len()
    );
}
