//! Bad input gets a clear 4xx problem+json answer, never a 500.

use serde_json::{Value, json};
use tend_tests::Stack;

async fn raw(
    stack: &Stack,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, Value) {
    let mut req = stack.http.request(method, url).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

/// One bad request: what it is, method, URL, token, content type, body,
/// and the status it must get.
type Case<'a> = (
    &'a str,
    reqwest::Method,
    String,
    Option<&'a str>,
    Option<&'a str>,
    Vec<u8>,
    u16,
);

#[tokio::test]
async fn bad_requests_get_problem_json_with_the_right_status() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let commands = stack.api(&format!("/devices/{}/commands", device.id));
    let json_ct = Some("application/json");
    use reqwest::Method as M;

    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            b"{\"kind\":".to_vec(),
            400,
        ),
        (
            "wrong type",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            br#"{"kind": 7}"#.to_vec(),
            422,
        ),
        (
            "unknown field",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            br#"{"kind": "reboot", "force": 1}"#.to_vec(),
            422,
        ),
        (
            "unknown kind",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            br#"{"kind": "format_disk"}"#.to_vec(),
            422,
        ),
        (
            "upgrade without its artifact",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            br#"{"kind": "upgrade", "params": {}}"#.to_vec(),
            422,
        ),
        (
            "params for reboot",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            br#"{"kind": "reboot", "params": {"now": true}}"#.to_vec(),
            422,
        ),
        (
            "zero timeout",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            br#"{"kind": "reboot", "timeout_s": 0}"#.to_vec(),
            422,
        ),
        (
            "negative expiry",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            br#"{"kind": "reboot", "expires_in_s": -5}"#.to_vec(),
            422,
        ),
        (
            "fractional timeout",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            br#"{"kind": "reboot", "timeout_s": 1.5}"#.to_vec(),
            422,
        ),
        (
            "not JSON",
            M::POST,
            commands.clone(),
            Some(&admin),
            Some("text/plain"),
            b"reboot".to_vec(),
            415,
        ),
        (
            "oversized body",
            M::POST,
            commands.clone(),
            Some(&admin),
            json_ct,
            format!("{{\"kind\":\"{}\"}}", "x".repeat(200_000)).into_bytes(),
            413,
        ),
        (
            "no token",
            M::POST,
            commands.clone(),
            None,
            json_ct,
            br#"{"kind": "reboot"}"#.to_vec(),
            401,
        ),
        (
            "forged token",
            M::POST,
            commands.clone(),
            Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"),
            json_ct,
            br#"{"kind": "reboot"}"#.to_vec(),
            401,
        ),
        (
            "garbage token",
            M::GET,
            stack.api("/devices"),
            Some("garbage"),
            None,
            vec![],
            401,
        ),
        (
            "unknown device",
            M::POST,
            stack.api(&format!("/devices/{}/commands", uuid::Uuid::new_v4())),
            Some(&admin),
            json_ct,
            br#"{"kind": "reboot"}"#.to_vec(),
            404,
        ),
        (
            "id that is no UUID",
            M::GET,
            stack.api("/commands/not-a-uuid"),
            Some(&admin),
            None,
            vec![],
            404,
        ),
        (
            "unknown route",
            M::GET,
            stack.api("/nothing-here"),
            Some(&admin),
            None,
            vec![],
            404,
        ),
        (
            "bad cursor",
            M::GET,
            stack.api("/devices?cursor=zzz"),
            Some(&admin),
            None,
            vec![],
            400,
        ),
        (
            "bad limit",
            M::GET,
            stack.api("/devices?limit=100000"),
            Some(&admin),
            None,
            vec![],
            400,
        ),
        (
            "bad status filter",
            M::GET,
            stack.api("/devices?status=asleep"),
            Some(&admin),
            None,
            vec![],
            400,
        ),
        (
            "short password",
            M::POST,
            stack.api("/users"),
            Some(&admin),
            json_ct,
            br#"{"username": "u", "password": "short", "role": "viewer"}"#.to_vec(),
            422,
        ),
        (
            "unknown role",
            M::POST,
            stack.api("/users"),
            Some(&admin),
            json_ct,
            br#"{"username": "u", "password": "long-enough-password", "role": "god"}"#.to_vec(),
            422,
        ),
        (
            "bad login",
            M::POST,
            stack.api("/auth/login"),
            None,
            json_ct,
            br#"{"username": "root", "password": "nope"}"#.to_vec(),
            401,
        ),
        (
            "device API without token",
            M::POST,
            stack.device_api("/heartbeat"),
            None,
            json_ct,
            br#"{"agent_version": "1"}"#.to_vec(),
            401,
        ),
        (
            "device auth with wrong types",
            M::POST,
            stack.device_api("/auth"),
            None,
            json_ct,
            br#"{"device_id": 5, "secret": []}"#.to_vec(),
            422,
        ),
        (
            "device auth malformed",
            M::POST,
            stack.device_api("/auth"),
            None,
            json_ct,
            b"{".to_vec(),
            400,
        ),
    ];
    for (what, method, url, token, ct, body, want) in cases {
        let (status, content_type, v) = raw(&stack, method, url, token, ct, body).await;
        assert_eq!(status, want, "{what}: {v}");
        assert_eq!(content_type, "application/problem+json", "{what}");
        assert_eq!(v["status"], want, "{what}: {v}");
        assert!(
            v["title"].is_string() && v["detail"].is_string(),
            "{what}: {v}"
        );
    }
}

#[tokio::test]
async fn device_reports_are_validated_against_the_lifecycle() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;
    let id = stack
        .queue(&admin, device.id, json!({ "kind": "shutdown" }))
        .await;
    let report = |body: Value| {
        let req = stack
            .http
            .post(stack.device_api(&format!("/instructions/{id}/report")))
            .bearer_auth(&token)
            .json(&body);
        async move { req.send().await.unwrap().status().as_u16() }
    };

    assert_eq!(
        report(json!({ "status": "in_progress" })).await,
        409,
        "not delivered yet"
    );
    let r = stack
        .http
        .get(stack.device_api("/instructions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["instructions"][0]["id"], json!(id));
    assert_eq!(v["instructions"][0]["kind"], "shutdown");
    assert_eq!(report(json!({ "status": "bogus" })).await, 422);
    assert_eq!(report(json!({ "status": "in_progress" })).await, 200);
    assert_eq!(
        report(json!({ "status": "in_progress" })).await,
        200,
        "repeat"
    );
    let done = json!({ "status": "succeeded", "output": "bye" });
    assert_eq!(report(done.clone()).await, 200);
    assert_eq!(report(done).await, 200, "an identical repeat is accepted");
    assert_eq!(
        report(json!({ "status": "failed" })).await,
        409,
        "terminal is final"
    );
    let v = stack.command(&admin, id).await;
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["result"]["output"], "bye");
}

/// Queues a shutdown for the device, hands it over, reports `report` for it
/// and answers the command's stored `result`.
async fn stored_report(
    stack: &Stack,
    admin: &str,
    token: &str,
    device: uuid::Uuid,
    report: Value,
) -> Value {
    let id = stack
        .queue(admin, device, json!({ "kind": "shutdown" }))
        .await;
    stack
        .http
        .get(stack.device_api("/instructions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let r = stack
        .http
        .post(stack.device_api(&format!("/instructions/{id}/report")))
        .bearer_auth(token)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stack.command(admin, id).await["result"].clone()
}

#[tokio::test]
async fn nul_characters_from_a_device_or_a_client_never_become_server_errors() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;

    // A heartbeat with NULs is accepted, and the monitor still records it.
    let r = stack
        .http
        .post(stack.device_api("/heartbeat"))
        .bearer_auth(&token)
        .json(&json!({ "agent_version": "1\u{0}", "inventory": { "k\u{0}": ["v\u{0}"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = tend_tests::eventually(std::time::Duration::from_secs(20), "online", || async {
        let (_, v) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
        (v["status"] == "online").then_some(v)
    })
    .await;
    // NUL becomes U+FFFD, tend's one rule (tend_proto::text), on the
    // server as on the agent.
    assert_eq!(v["reported"]["agent_version"], "1\u{FFFD}");
    assert_eq!(v["reported"]["inventory"]["k\u{FFFD}"][0], "v\u{FFFD}");

    // A report whose output holds NULs is stored without them.
    let result = &stored_report(
        &stack,
        &admin,
        &token,
        device.id,
        json!({ "status": "succeeded", "output": "a\u{0}b", "detail": { "x": "\u{0}" } }),
    )
    .await;
    assert_eq!(result["output"], "a\u{FFFD}b");
    assert_eq!(result["detail"]["x"], "\u{FFFD}");

    // A report's error and detail are bounded like its output: a 3 MB
    // error keeps its start, a 1 MB detail its small fields.
    let result = &stored_report(
        &stack,
        &admin,
        &token,
        device.id,
        json!({ "status": "failed", "error": "e".repeat(3_000_000),
                "detail": { "phase": "run", "blob": "b".repeat(1_000_000) } }),
    )
    .await;
    let error = result["error"].as_str().unwrap();
    assert!(
        error.len() < 20_000 && error.starts_with("eee"),
        "{}",
        error.len()
    );
    assert_eq!(result["detail"]["phase"], "run");
    assert_eq!(result["detail"]["detail_truncated"], true);
    assert!(result["detail"].get("blob").is_none());

    // Clients' NULs are a 4xx, not a 500.
    let (status, _) = stack
        .post(
            &admin,
            "/auth/login",
            json!({ "username": "a\u{0}", "password": "x" }),
        )
        .await;
    assert!((400..500).contains(&status), "login: {status}");
    let (status, _) = stack.get(&admin, "/devices?device_type=a%00b").await;
    assert!((400..500).contains(&status), "filter: {status}");
}

#[tokio::test]
async fn a_gzip_compressed_report_is_accepted_and_oversized_output_keeps_its_end() {
    use std::io::Write;

    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;
    let id = stack
        .queue(
            &admin,
            device.id,
            json!({ "kind": "log_query", "params": { "source": "app" } }),
        )
        .await;
    stack
        .http
        .get(stack.device_api("/instructions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();

    // 3 MiB of lines, over the 2 MiB the server stores, compressed in transit.
    let output: String = (0..100_000)
        .map(|i| format!("line {i:06} {}\n", "x".repeat(20)))
        .collect();
    let body = serde_json::to_vec(&json!({
        "status": "succeeded",
        "output": output,
        "detail": { "matched": 100_000, "returned": 100_000, "truncated": false },
    }))
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&body).unwrap();
    let compressed = gz.finish().unwrap();
    assert!(compressed.len() < body.len() / 10);
    let r = stack
        .http
        .post(stack.device_api(&format!("/instructions/{id}/report")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(compressed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    let v = stack.command(&admin, id).await;
    let stored = v["result"]["output"].as_str().unwrap();
    assert!(stored.len() <= 2 * 1024 * 1024);
    assert!(
        stored.ends_with("line 099999 xxxxxxxxxxxxxxxxxxxx\n"),
        "the newest lines are kept"
    );
    assert!(stored.starts_with("line "), "cut at a line start");
    assert_eq!(v["result"]["detail"]["truncated"], true);

    // The same text, downloadable as plain text.
    let r = stack
        .http
        .get(stack.api(&format!("/commands/{id}/output")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), stored);
}

#[tokio::test]
async fn the_openapi_document_and_swagger_ui_are_served_without_a_token() {
    let stack = Stack::start().await;
    let r = stack
        .http
        .get(stack.api("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["paths"]["/api/v1/devices/{id}/commands"]["post"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let base = stack.url(tend_tests::Service::Platform);
    let r = stack
        .http
        .get(format!("{base}/docs/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("swagger"), "the Swagger UI page");
    let r = stack
        .http
        .get(format!("{base}/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "its script is served from the binary, offline"
    );
    let r = stack
        .http
        .get(format!("{base}/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("/api/v1/openapi.json"));
}
