//! Device enrolment (seed 003): an agent with an enrolment token and no
//! identity is given one at its first access, waits `pending` until an
//! admin accepts it, and a rejected device never connects again.

use std::time::Duration;

use serde_json::{Value, json};
use tend_tests::{Agent, Device, Service, Stack, eventually};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "a-long-enough-passphrase-42";

/// Creates an enrolment token; returns its id and the token.
async fn new_token(stack: &Stack, admin: &str, body: Value) -> (String, String) {
    let (status, v) = stack.post(admin, "/enrolment-tokens", body).await;
    assert_eq!(status, 201, "enrolment token creation: {v}");
    (
        v["id"].as_str().expect("id").to_owned(),
        v["token"].as_str().expect("token").to_owned(),
    )
}

/// `POST /device/v1/enrol` as an agent sends it.
async fn enrol(stack: &Stack, token: &str, device_type: &str) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.device_api("/enrol"))
        .json(
            &json!({ "token": token, "device_type": device_type, "name": "gate-7",
                       "labels": { "site": "north" }, "inventory": { "serial": "X1" } }),
        )
        .send()
        .await
        .expect("enrol request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /device/v1/auth` with a device's id and secret: the status and
/// the answer's `Retry-After`.
async fn auth(stack: &Stack, id: &str, secret: &str) -> (u16, Option<String>) {
    let r = stack
        .http
        .post(stack.device_api("/auth"))
        .json(&json!({ "device_id": id, "secret": secret }))
        .send()
        .await
        .expect("auth request");
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status().as_u16(), retry)
}

async fn audit_actions(stack: &Stack, target: &str) -> Vec<(String, Option<uuid::Uuid>)> {
    stack
        .sql()
        .await
        .query(
            "SELECT action, actor_id FROM audit_log WHERE target_id = $1 ORDER BY id",
            &[&target],
        )
        .await
        .expect("audit rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn an_agent_enrols_waits_pending_is_accepted_and_then_runs_a_command() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (token_id, token) = new_token(
        &stack,
        &admin,
        json!({ "device_type": "kiosk", "labels": { "branch": "east" }, "uses": 5 }),
    )
    .await;
    assert!(token.starts_with("tend_enrol_"), "{token}");

    let mut agent = Agent::enrolling(&stack, &token, "kiosk");
    agent.start();
    let device = eventually(
        WAIT,
        "the agent to enrol and store its identity",
        || async { agent.enrolled() },
    )
    .await;
    let id = device.id.to_string();

    // Pending: listed as such, with the token's labels and the agent's
    // inventory; it takes no command and cannot authenticate yet.
    let (_, pending) = stack.get(&admin, "/devices?admission=pending").await;
    let items = pending["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{pending}");
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["admission"], "pending");
    assert_eq!(items[0]["labels"]["branch"], "east");
    assert_eq!(items[0]["name"], "enrolled-kiosk");
    assert!(items[0]["reported"]["inventory"]["agent_version"].is_string());
    let (status, v) = stack
        .post(
            &admin,
            &format!("/devices/{id}/commands"),
            json!({ "kind": "shutdown" }),
        )
        .await;
    assert_eq!(status, 409, "a pending device takes no commands: {v}");
    let (status, retry) = auth(&stack, &id, &device.secret).await;
    assert_eq!((status, retry.as_deref()), (403, Some("1")));
    let (_, tokens) = stack.get(&admin, "/enrolment-tokens").await;
    assert_eq!(tokens["items"][0]["id"], token_id.as_str());
    assert_eq!(tokens["items"][0]["used"], 1);
    assert_eq!(tokens["items"][0]["uses_left"], 4);
    assert!(tokens["items"][0].get("token").is_none(), "{tokens}");

    // Accepted: the agent notices by itself and runs a command to its end.
    let (status, v) = stack
        .post(&admin, &format!("/devices/{id}/accept"), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["admission"], "accepted");
    let (status, _) = stack
        .post(&admin, &format!("/devices/{id}/accept"), json!({}))
        .await;
    assert_eq!(status, 409, "accepting twice is a conflict");
    let cmd = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, cmd, "succeeded", WAIT).await;
    assert_eq!(agent.executed(), vec![cmd]);

    // A restarted agent keeps its identity: no second enrolment.
    agent.stop();
    agent.start();
    let again = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, again, "succeeded", WAIT).await;
    assert_eq!(agent.enrolled().map(|d| d.id), Some(device.id));
    let (_, all) = stack.get(&admin, "/devices").await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1), "{all}");

    // One audit row each, the enrolment without an actor.
    let actions = audit_actions(&stack, &id).await;
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0], ("device.enrol".to_owned(), None));
    assert_eq!(actions[1].0, "device.accept");
    assert!(actions[1].1.is_some());
    assert_eq!(
        audit_actions(&stack, &token_id).await[0].0,
        "enrolment_token.create"
    );
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default();
    assert!(!log.contains(&token), "the agent never logs its token");
    assert!(!log.contains(&device.secret), "nor its secret");
}

#[tokio::test]
async fn an_auto_accept_tokens_device_runs_a_command_at_once() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (_, token) = new_token(&stack, &admin, json!({ "auto_accept": true, "uses": 1 })).await;
    let mut agent = Agent::enrolling(&stack, &token, "camera");
    agent.start();
    let device = eventually(WAIT, "the agent to enrol", || async { agent.enrolled() }).await;
    let (_, v) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
    assert_eq!(v["admission"], "accepted", "{v}");
    assert_eq!(v["device_type"], "camera");
    let cmd = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    stack.wait_for(&admin, cmd, "succeeded", WAIT).await;
}

#[tokio::test]
async fn a_rejected_device_never_connects_again() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (_, token) = new_token(&stack, &admin, json!({ "auto_accept": true })).await;
    let (status, v) = enrol(&stack, &token, "kiosk").await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["status"], "accepted");
    let id = v["device_id"].as_str().unwrap().to_owned();
    let secret = v["secret"].as_str().unwrap().to_owned();
    let device = Device {
        id: id.parse().unwrap(),
        secret: secret.clone(),
    };
    let device_token = stack.device_token(&device).await;
    let queued = stack
        .queue(&admin, device.id, json!({ "kind": "reboot" }))
        .await;

    let (status, v) = stack
        .post(&admin, &format!("/devices/{id}/reject"), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["admission"], "rejected");
    let rejected_at = std::time::Instant::now();

    // Its token stops working within 2 seconds, its secret at once, and
    // what it had queued is cancelled.
    eventually(
        Duration::from_secs(2),
        "the rejected device's token to be refused",
        || async {
            let r = stack
                .http
                .post(stack.device_api("/heartbeat"))
                .bearer_auth(&device_token)
                .json(&json!({ "agent_version": "1.0.0" }))
                .send()
                .await
                .ok()?;
            (r.status() == 401).then_some(())
        },
    )
    .await;
    assert!(rejected_at.elapsed() < Duration::from_secs(2));
    assert_eq!(auth(&stack, &id, &secret).await.0, 401);
    assert_eq!(stack.command(&admin, queued).await["status"], "cancelled");
    // And for good: it can be accepted no more, and takes no commands.
    let (status, _) = stack
        .post(&admin, &format!("/devices/{id}/accept"), json!({}))
        .await;
    assert_eq!(status, 409);
    let (status, _) = stack
        .post(
            &admin,
            &format!("/devices/{id}/commands"),
            json!({ "kind": "reboot" }),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(auth(&stack, &id, &secret).await.0, 401);
    let (_, listed) = stack.get(&admin, "/devices?admission=rejected").await;
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let actions: Vec<String> = audit_actions(&stack, &id)
        .await
        .into_iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(actions, ["device.enrol", "device.reject"]);
}

#[tokio::test]
async fn used_up_expired_revoked_and_other_type_tokens_are_refused() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;

    let (_, once) = new_token(&stack, &admin, json!({ "uses": 1 })).await;
    assert_eq!(enrol(&stack, &once, "kiosk").await.0, 201);
    let (status, v) = enrol(&stack, &once, "kiosk").await;
    assert_eq!(status, 401, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("as many devices"),
        "{v}"
    );

    let (expired_id, expired) = new_token(&stack, &admin, json!({})).await;
    stack
        .sql()
        .await
        .execute(
            "UPDATE enrolment_tokens SET expires_at = now() - interval '1 second' WHERE id = $1::text::uuid",
            &[&expired_id],
        )
        .await
        .unwrap();
    let (status, v) = enrol(&stack, &expired, "kiosk").await;
    assert_eq!(status, 401, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("expired"), "{v}");

    let (revoked_id, revoked) = new_token(&stack, &admin, json!({})).await;
    assert_eq!(
        stack
            .delete(&admin, &format!("/enrolment-tokens/{revoked_id}"))
            .await,
        204
    );
    let (status, v) = enrol(&stack, &revoked, "kiosk").await;
    assert_eq!(status, 401, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("revoked"), "{v}");

    let (typed_id, typed) = new_token(
        &stack,
        &admin,
        json!({ "device_type": "camera", "uses": 2 }),
    )
    .await;
    let (status, v) = enrol(&stack, &typed, "kiosk").await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = enrol(&stack, "tend_enrol_not-a-real-one", "kiosk").await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = enrol(&stack, &typed, "camera").await;
    assert_eq!(status, 201, "the refusals took no use: {v}");
    let (_, tokens) = stack.get(&admin, "/enrolment-tokens").await;
    let typed_row = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == typed_id.as_str())
        .unwrap();
    assert_eq!(typed_row["uses_left"], 1, "{typed_row}");

    // Bad input is a clear 422, not a device.
    let (status, _) = enrol(&stack, &typed, "no spaces allowed").await;
    assert_eq!(status, 422);
    let (status, _) = stack
        .post(&admin, "/enrolment-tokens", json!({ "uses": 0 }))
        .await;
    assert_eq!(status, 422);
    let (status, _) = stack
        .post(&admin, "/enrolment-tokens", json!({ "expires_in_s": -5 }))
        .await;
    assert_eq!(status, 422);
    // The two devices enrolled above wait for an admin.
    let (_, pending) = stack.get(&admin, "/devices?admission=pending").await;
    assert_eq!(
        pending["items"].as_array().map(Vec::len),
        Some(2),
        "{pending}"
    );
}

#[tokio::test]
async fn tokens_are_admin_only_tenant_scoped_and_never_stored_in_clear() {
    let stack = Stack::start().await;
    let root = stack.admin().await;
    let (status, v) = stack
        .post(
            &root,
            "/users",
            json!({ "username": "vera", "password": PASSWORD, "role": "viewer" }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let viewer = stack.login("vera", PASSWORD).await;
    let (status, _) = stack.post(&viewer, "/enrolment-tokens", json!({})).await;
    assert_eq!(status, 403);
    assert_eq!(stack.get(&viewer, "/enrolment-tokens").await.0, 403);

    let (token_id, token) = new_token(&stack, &root, json!({})).await;
    let (status, v) = enrol(&stack, &token, "kiosk").await;
    assert_eq!(status, 201, "{v}");
    let id = v["device_id"].as_str().unwrap().to_owned();
    let (status, _) = stack
        .post(&viewer, &format!("/devices/{id}/accept"), json!({}))
        .await;
    assert_eq!(status, 403, "a viewer accepts nothing");

    let (status, v) = stack
        .post(
            &root,
            "/tenants",
            json!({ "name": "other", "admin": { "username": "mallory", "password": PASSWORD } }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let other = stack.login("mallory", PASSWORD).await;
    for verb in ["accept", "reject"] {
        let (status, _) = stack
            .post(&other, &format!("/devices/{id}/{verb}"), json!({}))
            .await;
        assert_eq!(status, 404, "another tenant's admin may not {verb} it");
    }
    assert_eq!(
        stack
            .delete(&other, &format!("/enrolment-tokens/{token_id}"))
            .await,
        404
    );
    let (_, theirs) = stack.get(&other, "/enrolment-tokens").await;
    assert_eq!(theirs["items"], json!([]));
    let (_, v) = stack.get(&root, &format!("/devices/{id}")).await;
    assert_eq!(v["admission"], "pending", "nothing changed: {v}");

    // Stored as its SHA-256 only: no column holds the token.
    let sql = stack.sql().await;
    let rows = sql
        .query("SELECT row_to_json(t)::text FROM enrolment_tokens t", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row: String = rows[0].get(0);
    assert!(!row.contains(&token), "{row}");
    let matching: i64 = sql
        .query_one(
            "SELECT count(*) FROM enrolment_tokens WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))",
            &[&token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(matching, 1);
    assert!(!stack.log_of(Service::Platform).contains(&token));
    assert!(!stack.log_of(Service::Sync).contains(&token));
}
