//! The audit log: what admins did, read back with filters and pages, kept
//! append-only by the database, and swept after its retention period.

use std::time::Duration;

use serde_json::{Value, json};
use tend_tests::{Stack, eventually};

/// Creates tenant `name` with an admin, an operator and a viewer; answers
/// their tokens in that order.
pub async fn tenant_with_roles(stack: &Stack, name: &str) -> [String; 3] {
    let root = stack.admin().await;
    let password = "route-table-passphrase-42";
    let admin_name = format!("{name}-admin");
    let (status, v) = stack
        .post(
            &root,
            "/tenants",
            json!({ "name": name, "admin": { "username": admin_name, "password": password } }),
        )
        .await;
    assert_eq!(status, 201, "tenant {name}: {v}");
    let admin = stack.login(&admin_name, password).await;
    let mut tokens = vec![admin.clone()];
    for role in ["operator", "viewer"] {
        let username = format!("{name}-{role}");
        let (status, v) = stack
            .post(
                &admin,
                "/users",
                json!({ "username": username, "password": password, "role": role }),
            )
            .await;
        assert_eq!(status, 201, "{role} of {name}: {v}");
        tokens.push(stack.login(&username, password).await);
    }
    tokens.try_into().unwrap()
}

async fn audit(stack: &Stack, token: &str, query: &str) -> (u16, Value) {
    stack.get(token, &format!("/audit{query}")).await
}

fn actions(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|i| i["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_audit_log_lists_a_tenants_actions_newest_first_with_filters_and_pages() {
    let stack = Stack::start().await;
    let [admin, operator, viewer] = tenant_with_roles(&stack, "audited").await;
    let [other_admin, ..] = tenant_with_roles(&stack, "elsewhere").await;
    let device = stack.new_device(&admin).await;
    let command = stack
        .queue(&operator, device.id, json!({ "kind": "reboot" }))
        .await;
    let (status, _) = stack
        .post(&operator, &format!("/commands/{command}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    stack.new_device(&other_admin).await;

    let (status, page) = audit(&stack, &admin, "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        actions(&page),
        [
            "command.cancel",
            "command.create",
            "device.create",
            // Making the tenant's users and their logins, oldest last.
            "auth.login",
            "user.create",
            "auth.login",
            "user.create",
            "auth.login",
        ],
        "newest first, and nothing of the other tenant: {page}"
    );
    let cancel = &page["items"][0];
    assert_eq!(cancel["actor"]["username"], "audited-operator");
    assert_eq!(
        cancel["target"],
        json!({ "type": "command", "id": command.to_string() })
    );
    assert_eq!(cancel["address"], "127.0.0.1");
    assert!(cancel["request_id"].is_string(), "{cancel}");
    assert_eq!(cancel["summary"]["kind"], "reboot");
    let created = &page["items"][2];
    assert_eq!(created["target"]["id"], device.id.to_string());
    assert!(
        !created.to_string().contains(&device.secret),
        "the device secret is never in the log"
    );

    // Filters: actor by name or id, action exact or by prefix, target, time.
    let operator_id = cancel["actor"]["id"].as_str().unwrap().to_owned();
    for (query, expected) in [
        (
            "?actor=audited-operator",
            vec!["command.cancel", "command.create", "auth.login"],
        ),
        (
            &*format!("?actor={operator_id}"),
            vec!["command.cancel", "command.create", "auth.login"],
        ),
        ("?action=command.", vec!["command.cancel", "command.create"]),
        ("?action=device.create", vec!["device.create"]),
        ("?action=device.", vec!["device.create"]),
        (
            &*format!("?target={command}"),
            vec!["command.cancel", "command.create"],
        ),
        ("?until=2000-01-01T00:00:00Z", vec![]),
        (
            "?since=2000-01-01T00:00:00Z&action=command.cancel",
            vec!["command.cancel"],
        ),
    ] {
        let (status, page) = audit(&stack, &admin, query).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(actions(&page), expected, "{query}");
    }

    // Pages of one, joined, are the whole list.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let (status, page) = audit(&stack, &admin, &query).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(actions(&page));
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, actions(&audit(&stack, &admin, "").await.1));
    assert_eq!(seen.len(), 8);

    for bad in [
        "?since=yesterday",
        "?until=2026-13-01T00:00:00Z",
        "?limit=0",
        "?limit=501",
        "?cursor=nonsense",
        "?action=DEVICE.CREATE",
        "?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
    ] {
        let (status, v) = audit(&stack, &admin, bad).await;
        assert_eq!(status, 422, "{bad}: {v}");
    }
    for token in [&operator, &viewer] {
        let (status, _) = audit(&stack, token, "").await;
        assert_eq!(status, 403);
    }
}

#[tokio::test]
async fn the_application_cannot_update_delete_or_truncate_the_audit_log() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    stack.new_device(&admin).await;
    // The services' own role: the stack gives them the same URL.
    let sql = stack.sql().await;
    for (statement, why) in [
        (
            "UPDATE audit_log SET action = 'nothing.happened'",
            "append-only",
        ),
        ("DELETE FROM audit_log", "retention period"),
        ("TRUNCATE audit_log", "append-only"),
        ("UPDATE audit_retention SET days = 0", "check constraint"),
    ] {
        let err = sql
            .batch_execute(statement)
            .await
            .expect_err(&format!("{statement} must fail"));
        let text = format!("{err:?}");
        assert!(text.contains(why), "{statement}: {text}");
    }
    // `at` is the database's clock, whatever the INSERT says.
    let at_is_now: bool = sql
        .query_one(
            "INSERT INTO audit_log (tenant_id, action, target_type, at)
             SELECT tenant_id, 'device.delete', 'device', now() - interval '10 years'
             FROM audit_log LIMIT 1
             RETURNING at > now() - interval '1 minute'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(at_is_now, "a backdated row was written");
    let rows: i64 = sql
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'device.create'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the row is unchanged");
}

#[tokio::test]
async fn the_retention_sweep_deletes_only_rows_past_the_period() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    stack.new_device(&admin).await;
    let sql = stack.sql().await;
    // Old rows can only be made by a superuser turning the clock trigger off.
    sql.batch_execute(
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_stamp;
         INSERT INTO audit_log (tenant_id, action, target_type, at, summary)
         SELECT tenant_id, 'device.delete', 'device', now() - interval '400 days', '{\"age\": 400}'
         FROM audit_log LIMIT 1;
         INSERT INTO audit_log (tenant_id, action, target_type, at, summary)
         SELECT tenant_id, 'device.delete', 'device', now() - interval '300 days', '{\"age\": 300}'
         FROM audit_log LIMIT 1;
         ALTER TABLE audit_log ENABLE TRIGGER audit_log_stamp;",
    )
    .await
    .unwrap();

    // The default period is 365 days: the monitor's sweep takes the first.
    eventually(
        Duration::from_secs(10),
        "the 400-day-old row swept",
        || async {
            let n: i64 = sql
                .query_one(
                    "SELECT count(*) FROM audit_log WHERE summary->>'age' = '400'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        },
    )
    .await;
    let ages: Vec<String> = sql
        .query(
            "SELECT coalesce(summary->>'age', action) FROM audit_log
             WHERE action NOT LIKE 'auth.%' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ages, ["device.create", "300"]);
    // Nor can anything delete what is within the period.
    sql.batch_execute("DELETE FROM audit_log WHERE summary->>'age' = '300'")
        .await
        .expect_err("a row within the retention period cannot be deleted");
}
