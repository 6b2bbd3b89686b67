//! The route table, read from the OpenAPI document: every route that takes
//! an id refuses another tenant's object to every role, every mutating
//! route answers each role as its `x-tend-roles` says, and every mutating
//! route leaves exactly one audit row when it succeeds and none when it is
//! refused. A route added later joins these checks by being in the
//! document; one without its role marker or request example fails here
//! with what to add.
//!
//! Roles: `x-tend-roles` on each operation lists `admin`, `operator`,
//! `viewer`, `system_admin` or `anyone`. A role the route never allows
//! gets 403 even for another tenant's id (the role check comes first); a
//! role it allows gets 404 for another tenant's id, as for an unknown one.

use serde_json::{Value, json};
use tend_tests::Stack;
use uuid::Uuid;

use crate::audit::tenant_with_roles;

const ROLES: [&str; 3] = ["admin", "operator", "viewer"];

/// One operation of the document.
struct Route {
    method: String,
    path: String,
    roles: Option<Vec<String>>,
    body: Body,
}

enum Body {
    None,
    Json(Value),
    Bytes,
    /// A JSON body whose schema has no example: the message says what to add.
    Missing(String),
}

impl Route {
    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    fn mutates(&self) -> bool {
        self.method != "get" && self.path != "/api/v1/auth/login"
    }

    fn allows(&self, role: &str) -> bool {
        self.roles
            .as_ref()
            .is_some_and(|r| r.iter().any(|x| x == role || x == "anyone"))
    }
}

fn routes(doc: &Value) -> Vec<Route> {
    let schemas = &doc["components"]["schemas"];
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let roles = op["x-tend-roles"].as_array().map(|a| {
                a.iter()
                    .map(|r| r.as_str().unwrap_or_default().to_owned())
                    .collect()
            });
            let content = &op["requestBody"]["content"];
            let body = if let Some(json) = content.get("application/json") {
                let schema = &json["schema"];
                let resolved = schema["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    .map(|name| &schemas[name])
                    .unwrap_or(schema);
                match json.get("example").or(resolved.get("example")) {
                    Some(e) => Body::Json(e.clone()),
                    None => Body::Missing(format!(
                        "its request schema {} has no example: add \
                         #[schema(example = json!({{...}}))] to it",
                        schema["$ref"].as_str().unwrap_or("(inline)")
                    )),
                }
            } else if content.get("application/octet-stream").is_some() {
                Body::Bytes
            } else {
                Body::None
            };
            out.push(Route {
                method: method.clone(),
                path: path.clone(),
                roles,
                body,
            });
        }
    }
    out
}

/// Objects of one tenant that path ids are filled from, made fresh for
/// each attempt so that one role's success never changes what the next
/// role meets.
struct Fixtures {
    device: Uuid,
    command: Uuid,
    /// A command batch of `device`.
    batch: String,
    artifact: String,
    gateway_token: String,
    user: String,
    enrolment_token: String,
    /// A device that enrolled itself and waits for an admin: what
    /// `/devices/{id}/accept` takes.
    pending_device: String,
}

impl Fixtures {
    async fn make(stack: &Stack, admin: &str) -> Fixtures {
        let device = stack.new_device(admin).await;
        let command = stack
            .queue(admin, device.id, json!({ "kind": "reboot" }))
            .await;
        let (status, b) = stack
            .post(
                admin,
                "/commands/bulk",
                json!({ "selector": { "device_ids": [device.id] }, "command": { "kind": "reboot" } }),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let version = format!("0.0.{}", Uuid::new_v4().as_u128() % 1_000_000);
        let (status, a) = stack
            .post(
                admin,
                "/artifacts",
                json!({ "component": "fixture", "version": version, "device_types": ["kiosk"] }),
            )
            .await;
        assert_eq!(status, 201, "{a}");
        let (status, g) = stack
            .post(admin, "/gateway-tokens", json!({ "name": "fixture" }))
            .await;
        assert_eq!(status, 201, "{g}");
        let username = format!("fixture-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let (status, u) = stack
            .post(
                admin,
                "/users",
                json!({ "username": username, "password": "route-table-passphrase-42",
                        "role": "viewer" }),
            )
            .await;
        assert_eq!(status, 201, "{u}");
        let (status, e) = stack
            .post(
                admin,
                "/enrolment-tokens",
                json!({ "device_type": "kiosk" }),
            )
            .await;
        assert_eq!(status, 201, "{e}");
        let enrolled = stack
            .http
            .post(stack.device_api("/enrol"))
            .json(&json!({ "token": e["token"], "device_type": "kiosk" }))
            .send()
            .await
            .expect("enrol request");
        assert_eq!(enrolled.status().as_u16(), 201);
        let enrolled: Value = enrolled.json().await.expect("enrol answer");
        Fixtures {
            device: device.id,
            command,
            batch: b["batch_id"].as_str().unwrap().to_owned(),
            artifact: a["id"].as_str().unwrap().to_owned(),
            gateway_token: g["id"].as_str().unwrap().to_owned(),
            user: u["id"].as_str().unwrap().to_owned(),
            enrolment_token: e["id"].as_str().unwrap().to_owned(),
            pending_device: enrolled["device_id"].as_str().unwrap().to_owned(),
        }
    }

    /// The route's path with its ids filled in: each `{param}` takes the
    /// object named by the segment before it.
    fn fill(&self, path: &str) -> Result<String, String> {
        let mut out = Vec::new();
        let mut previous = "";
        for segment in path.split('/') {
            if segment.starts_with('{') {
                let id = match previous {
                    "devices" if path.ends_with("/accept") => self.pending_device.clone(),
                    "devices" | "denylist" => self.device.to_string(),
                    "enrolment-tokens" => self.enrolment_token.clone(),
                    "commands" => self.command.to_string(),
                    "command-batches" => self.batch.clone(),
                    "artifacts" => self.artifact.clone(),
                    "gateway-tokens" => self.gateway_token.clone(),
                    "users" => self.user.clone(),
                    other => {
                        return Err(format!(
                            "no fixture for ids after /{other}/: add one to routes.rs Fixtures"
                        ));
                    }
                };
                out.push(id);
            } else {
                out.push(segment.to_owned());
            }
            previous = segment;
        }
        Ok(out.join("/"))
    }
}

async fn call(stack: &Stack, token: &str, method: &str, url_path: &str, body: &Body) -> u16 {
    let url = format!("{}{url_path}", stack.url(tend_tests::Service::Platform));
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = stack.http.request(method, url).bearer_auth(token);
    req = match body {
        Body::Json(v) => req.json(v),
        Body::Bytes => req
            .header("content-type", "application/octet-stream")
            .body(b"route table".to_vec()),
        Body::None | Body::Missing(_) => req,
    };
    req.send()
        .await
        .expect("admin API request")
        .status()
        .as_u16()
}

async fn audit_rows(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_route_checks_tenant_role_and_leaves_its_audit_row() {
    let stack = Stack::start().await;
    let (status, doc) = stack.get("", "/openapi.json").await;
    assert_eq!(status, 200);
    let routes = routes(&doc);
    assert!(routes.len() > 20, "the document lists the API's routes");
    let tokens_a = tenant_with_roles(&stack, "tenant-a").await;
    let [admin_b, ..] = tenant_with_roles(&stack, "tenant-b").await;
    let root = stack.admin().await;
    let sql = stack.sql().await;
    let mut failures = Vec::new();

    for route in &routes {
        let name = route.name();
        if route.roles.is_none() {
            failures.push(format!(
                "{name}: no x-tend-roles: add extensions((\"x-tend-roles\" = json!([...]))) \
                 to its #[utoipa::path]"
            ));
            continue;
        }
        if let Body::Missing(why) = &route.body {
            failures.push(format!("{name}: {why}"));
            continue;
        }

        // Another tenant's objects: 404 to a role the route allows, 403 to
        // one it never allows; nothing recorded either way.
        if route.path.contains('{') {
            let theirs = Fixtures::make(&stack, &admin_b).await;
            let path = match theirs.fill(&route.path) {
                Ok(p) => p,
                Err(why) => {
                    failures.push(format!("{name}: {why}"));
                    continue;
                }
            };
            for (role, token) in ROLES.iter().zip(&tokens_a) {
                let before = audit_rows(&sql).await;
                let status = call(&stack, token, &route.method, &path, &route.body).await;
                let expected = if route.allows(role) { 404 } else { 403 };
                if status != expected {
                    failures.push(format!(
                        "{name} with another tenant's id as {role}: {status}, not {expected}"
                    ));
                }
                if route.mutates() && audit_rows(&sql).await != before {
                    failures.push(format!(
                        "{name} with another tenant's id as {role}: an audit row was written"
                    ));
                }
            }
        }

        if !route.mutates() {
            continue;
        }
        // Each role on the caller's own objects: allowed roles succeed with
        // one audit row, the others get 403 and leave none.
        let mut callers: Vec<(&str, &String)> = ROLES.iter().copied().zip(&tokens_a).collect();
        if route.allows("system_admin") {
            callers.push(("system_admin", &root));
        }
        for (role, token) in callers {
            let ours = Fixtures::make(&stack, &tokens_a[0]).await;
            let path = match ours.fill(&route.path) {
                Ok(p) => p,
                Err(why) => {
                    failures.push(format!("{name}: {why}"));
                    break;
                }
            };
            // A DELETE of what a PUT on the same path creates (a denylist
            // entry) needs it there first.
            if route.method == "delete"
                && doc["paths"][&route.path].get("put").is_some()
                && let Some(put) = routes
                    .iter()
                    .find(|r| r.path == route.path && r.method == "put")
            {
                let status = call(&stack, &tokens_a[0], "put", &path, &put.body).await;
                assert!(
                    (200..300).contains(&status),
                    "{name}: setup PUT answered {status}"
                );
            }
            let before = audit_rows(&sql).await;
            let status = call(&stack, token, &route.method, &path, &route.body).await;
            let written = audit_rows(&sql).await - before;
            if route.allows(role) {
                if !(200..300).contains(&status) {
                    failures.push(format!(
                        "{name} as {role}: {status}; the route allows this role, and its \
                         example body and fixtures should succeed"
                    ));
                } else if written != 1 {
                    failures.push(format!(
                        "{name} as {role}: succeeded with {written} audit rows, not 1"
                    ));
                }
            } else {
                if status != 403 {
                    failures.push(format!("{name} as {role}: {status}, not 403"));
                }
                if written != 0 {
                    failures.push(format!(
                        "{name} as {role}: refused but wrote {written} audit rows"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems in the route table:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
