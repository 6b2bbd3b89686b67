//! Users: listing, changing and removing them, the end of their sessions on
//! every platform replica within 2 seconds, the password policy, the
//! last-admin guard, and one audit row per change.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tend_tests::{Service, Stack, eventually};
use uuid::Uuid;

/// How long a change may take to reach every replica.
const PROMISE: Duration = Duration::from_secs(2);

async fn new_user(stack: &Stack, admin: &str, name: &str, role: &str) -> (Uuid, String) {
    let password = format!("{name}-long-password");
    let (status, v) = stack
        .post(
            admin,
            "/users",
            json!({ "username": name, "password": password, "role": role }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert!(v.get("password_hash").is_none(), "{v}");
    (v["id"].as_str().unwrap().parse().unwrap(), password)
}

async fn patch(stack: &Stack, token: &str, id: Uuid, body: Value) -> (u16, Value) {
    let r = stack
        .http
        .patch(stack.api(&format!("/users/{id}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The status of `GET /devices` with `token` on the platform at `base`.
async fn read_status(stack: &Stack, base: &str, token: &str) -> u16 {
    stack
        .http
        .get(format!("{base}/api/v1/devices"))
        .bearer_auth(token)
        .send()
        .await
        .expect("admin request")
        .status()
        .as_u16()
}

/// Waits until `token` is refused (401) by the platform at `base`; answers
/// how long it took.
async fn refused_within(stack: &Stack, base: &str, token: &str, since: Instant) -> Duration {
    eventually(
        PROMISE + Duration::from_secs(1),
        "the token refused",
        || async { (read_status(stack, base, token).await == 401).then(|| since.elapsed()) },
    )
    .await
}

/// The audit rows of `action` on the user `id`.
async fn audit_rows(stack: &Stack, action: &str, id: Uuid) -> Vec<Value> {
    let db = stack.sql().await;
    db.query(
        "SELECT summary FROM audit_log WHERE action = $1 AND target_type = 'user' AND target_id = $2",
        &[&action, &id.to_string()],
    )
    .await
    .expect("audit query")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Audit rows of user changes (logins and tenants have rows of their own).
async fn audit_count(stack: &Stack) -> i64 {
    stack
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action LIKE 'user.%'",
            &[],
        )
        .await
        .expect("audit count")
        .get(0)
}

#[tokio::test]
async fn a_removed_users_token_is_refused_on_both_replicas_within_two_seconds() {
    let mut stack = Stack::start().await;
    let second = stack.spawn_replica(Service::Platform).await;
    let first = stack.url(Service::Platform);
    let admin = stack.admin().await;
    let (id, password) = new_user(&stack, &admin, "leaver", "operator").await;
    let token = stack.login("leaver", &password).await;
    // Known to both replicas: the second learns of a new user on first use.
    assert_eq!(read_status(&stack, &first, &token).await, 200);
    assert_eq!(read_status(&stack, &second, &token).await, 200);

    let removed = Instant::now();
    assert_eq!(stack.delete(&admin, &format!("/users/{id}")).await, 204);
    for base in [&first, &second] {
        let took = refused_within(&stack, base, &token, removed).await;
        assert!(took <= PROMISE, "{base} took {took:?}");
    }

    // Gone from the list, its login refused, and its name free again.
    let (_, list) = stack.get(&admin, "/users").await;
    assert!(
        !list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == id.to_string()),
        "{list}"
    );
    let r = stack
        .http
        .post(stack.api("/auth/login"))
        .json(&json!({ "username": "leaver", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    new_user(&stack, &admin, "leaver", "viewer").await;
    assert_eq!(stack.delete(&admin, &format!("/users/{id}")).await, 404);

    let rows = audit_rows(&stack, "user.delete", id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(audit_rows(&stack, "user.create", id).await.len(), 1);
}

#[tokio::test]
async fn a_disabled_user_is_refused_at_once_and_cannot_log_in_until_enabled() {
    let mut stack = Stack::start().await;
    let second = stack.spawn_replica(Service::Platform).await;
    let admin = stack.admin().await;
    let (id, password) = new_user(&stack, &admin, "dora", "viewer").await;
    let token = stack.login("dora", &password).await;
    assert_eq!(read_status(&stack, &second, &token).await, 200);

    let changed = Instant::now();
    let (status, v) = patch(&stack, &admin, id, json!({ "disabled": true })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["disabled"], true, "{v}");
    let took = refused_within(&stack, &second, &token, changed).await;
    assert!(took <= PROMISE, "took {took:?}");
    assert_eq!(
        read_status(&stack, &stack.url(Service::Platform), &token).await,
        401
    );

    // The same 401 as a wrong password.
    let login = |password: String| {
        let stack = &stack;
        async move {
            let r = stack
                .http
                .post(stack.api("/auth/login"))
                .json(&json!({ "username": "dora", "password": password }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body["detail"].clone())
        }
    };
    let disabled = login(password.clone()).await;
    let wrong = login("not-her-password".into()).await;
    assert_eq!(disabled.0, 401);
    assert_eq!(disabled, wrong);

    let (status, _) = patch(&stack, &admin, id, json!({ "disabled": false })).await;
    assert_eq!(status, 200);
    stack.login("dora", &password).await;

    let rows = audit_rows(&stack, "user.update", id).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.contains(&json!({ "disabled": { "from": false, "to": true } })),
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_demoted_admin_gets_403_on_a_write_within_two_seconds() {
    let mut stack = Stack::start().await;
    let second = stack.spawn_replica(Service::Platform).await;
    let admin = stack.admin().await;
    let (id, password) = new_user(&stack, &admin, "ada", "admin").await;
    let ada = stack.login("ada", &password).await;

    let changed = Instant::now();
    let (status, v) = patch(&stack, &admin, id, json!({ "role": "viewer" })).await;
    assert_eq!(status, 200, "{v}");
    // The old token ends on both replicas; a new one is a viewer's.
    for base in [stack.url(Service::Platform), second.clone()] {
        let took = refused_within(&stack, &base, &ada, changed).await;
        assert!(took <= PROMISE, "{base} took {took:?}");
    }
    let viewer = stack.login("ada", &password).await;
    let r = stack
        .http
        .post(format!("{second}/api/v1/devices"))
        .bearer_auth(&viewer)
        .json(&json!({ "name": "x", "device_type": "kiosk" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let rows = audit_rows(&stack, "user.update", id).await;
    assert_eq!(
        rows,
        vec![json!({ "role": { "from": "admin", "to": "viewer" } })]
    );
}

#[tokio::test]
async fn a_changed_password_ends_old_tokens_and_the_old_password() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (id, old) = new_user(&stack, &admin, "pat", "operator").await;
    let token = stack.login("pat", &old).await;

    let changed = Instant::now();
    let new = "a-brand-new-long-passphrase";
    let (status, v) = patch(&stack, &admin, id, json!({ "password": new })).await;
    assert_eq!(status, 200, "{v}");
    let took = refused_within(&stack, &stack.url(Service::Platform), &token, changed).await;
    assert!(took <= PROMISE, "took {took:?}");
    let r = stack
        .http
        .post(stack.api("/auth/login"))
        .json(&json!({ "username": "pat", "password": old }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    stack.login("pat", new).await;

    let rows = audit_rows(&stack, "user.update", id).await;
    assert_eq!(rows, vec![json!({ "password": "changed" })]);
    let dump = format!("{rows:?}");
    assert!(!dump.contains(new), "the password in the audit log");

    // Under the policy: short or common, 422 and nothing changed.
    let before = audit_count(&stack).await;
    for bad in ["short-pw", "qwerty123456", "QWERTY123456", "1q2w3e4r5t6y"] {
        let (status, v) = patch(&stack, &admin, id, json!({ "password": bad })).await;
        assert_eq!(status, 422, "{bad}: {v}");
        let (status, v) = stack
            .post(
                &admin,
                "/users",
                json!({ "username": "newbie", "password": bad, "role": "viewer" }),
            )
            .await;
        assert_eq!(status, 422, "{bad}: {v}");
    }
    assert_eq!(audit_count(&stack).await, before);
    stack.login("pat", new).await;
}

#[tokio::test]
async fn the_last_enabled_admin_cannot_be_removed_disabled_or_demoted() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (status, v) = stack.get(&admin, "/users").await;
    assert_eq!(status, 200, "{v}");
    let root: Uuid = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "root")
        .expect("root listed")["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let before = audit_count(&stack).await;
    for body in [json!({ "disabled": true }), json!({ "role": "operator" })] {
        let (status, v) = patch(&stack, &admin, root, body).await;
        assert_eq!(status, 409, "{v}");
    }
    assert_eq!(stack.delete(&admin, &format!("/users/{root}")).await, 409);
    assert_eq!(
        audit_count(&stack).await,
        before,
        "a refused change is not recorded"
    );
    // System admin rights are not this API's to give.
    let (status, _) = patch(&stack, &admin, root, json!({ "is_system_admin": true })).await;
    assert!(status == 400 || status == 422, "{status}");

    // With a second admin, the first may go; then the second is the last.
    let (second, password) = new_user(&stack, &admin, "deputy", "admin").await;
    let deputy = stack.login("deputy", &password).await;
    assert_eq!(stack.delete(&deputy, &format!("/users/{root}")).await, 204);
    assert_eq!(
        stack.delete(&deputy, &format!("/users/{second}")).await,
        409
    );
}

#[tokio::test]
async fn user_routes_are_for_admins_of_the_tenant_only() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let (target, _) = new_user(&stack, &admin, "target", "viewer").await;
    let (_, op_pw) = new_user(&stack, &admin, "opal", "operator").await;
    let (_, viewer_pw) = new_user(&stack, &admin, "vic", "viewer").await;
    let before = audit_count(&stack).await;
    for (name, pw) in [("opal", op_pw), ("vic", viewer_pw)] {
        let token = stack.login(name, &pw).await;
        assert_eq!(stack.get(&token, "/users").await.0, 403, "{name}");
        assert_eq!(
            patch(&stack, &token, target, json!({ "role": "admin" }))
                .await
                .0,
            403,
            "{name}"
        );
        assert_eq!(stack.delete(&token, &format!("/users/{target}")).await, 403);
        let (status, _) = stack
            .post(
                &token,
                "/users",
                json!({ "username": "x-user", "password": "a-long-enough-pass", "role": "admin" }),
            )
            .await;
        assert_eq!(status, 403, "{name}");
    }

    // Another tenant's admin sees neither the user nor its id.
    let (status, v) = stack
        .post(
            &admin,
            "/tenants",
            json!({ "name": "other", "admin": { "username": "mallory", "password": "mallory-password" } }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let mallory = stack.login("mallory", "mallory-password").await;
    let (_, list) = stack.get(&mallory, "/users").await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["mallory"]);
    assert_eq!(
        patch(&stack, &mallory, target, json!({ "disabled": true }))
            .await
            .0,
        404
    );
    assert_eq!(
        stack.delete(&mallory, &format!("/users/{target}")).await,
        404
    );
    assert_eq!(
        patch(&stack, &admin, Uuid::new_v4(), json!({ "disabled": true }))
            .await
            .0,
        404
    );
    assert_eq!(
        audit_count(&stack).await,
        before,
        "refusals are not recorded"
    );

    // A tenant's admin password follows the policy too.
    let (status, _) = stack
        .post(
            &admin,
            "/tenants",
            json!({ "name": "weak", "admin": { "username": "w", "password": "password" } }),
        )
        .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn users_are_listed_a_page_at_a_time_without_their_hashes() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    for name in ["u-one", "u-two", "u-three"] {
        new_user(&stack, &admin, name, "viewer").await;
    }
    let (status, first) = stack.get(&admin, "/users?limit=2").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = stack
        .get(&admin, &format!("/users?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(
        second["items"].as_array().unwrap().len(),
        2,
        "three and root"
    );
    assert!(second["next_cursor"].is_null());
    let text = format!("{first}{second}");
    assert!(!text.contains("argon2") && !text.contains("hash"), "{text}");
}
