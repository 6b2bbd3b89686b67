//! The simulator's side of the admin API: log in, provision devices in
//! bulk, queue commands, read them back.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::RwLock;
use uuid::Uuid;

use super::stats::Failure;

/// Devices per bulk request: the route's maximum.
pub const BULK_BATCH: usize = 1000;
/// Bulk requests in flight: enough to overlap one batch's transaction with
/// the next one's JSON, few enough not to starve the platform's pool.
const BULK_PARALLEL: usize = 4;

pub struct Admin {
    http: reqwest::Client,
    /// `…/api/v1`.
    api: String,
    username: String,
    password: String,
    /// Admin tokens last an hour, a long run more: renewed on a 401.
    token: RwLock<String>,
}

/// A device's credentials as the platform returned them.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: Uuid,
    pub secret: String,
}

/// A queued command and when the platform says it was created.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// What the report needs of a command read back at the end.
#[derive(Debug, Clone, Deserialize)]
pub struct CommandState {
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Admin {
    pub async fn login(platform: &Url, username: &str, password: &str) -> anyhow::Result<Admin> {
        let http = reqwest::Client::builder()
            // A bulk request of 1000 devices is one transaction; give it time.
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .build()
            .context("building the admin HTTP client")?;
        let admin = Admin {
            http,
            api: format!("{}/api/v1", platform.as_str().trim_end_matches('/')),
            username: username.to_owned(),
            password: password.to_owned(),
            token: RwLock::new(String::new()),
        };
        admin.renew().await?;
        Ok(admin)
    }

    async fn renew(&self) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/auth/login", self.api))
            .json(&json!({ "username": self.username, "password": self.password }))
            .send()
            .await
            .with_context(|| format!("cannot reach the platform at {}", self.api))?;
        if !r.status().is_success() {
            bail!(
                "logging in as {} answered {}: {}",
                self.username,
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let v: Value = r.json().await.context("reading the login answer")?;
        let token = v["access_token"]
            .as_str()
            .context("the login answer has no access_token")?;
        *self.token.write().await = token.to_owned();
        Ok(())
    }

    /// Sends a request with the admin token, logging in again once if the
    /// token expired; answers the status and the JSON body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Failure> {
        for attempt in 0..2 {
            let token = self.token.read().await.clone();
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.api))
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let r = req.send().await.map_err(|e| Failure::of(&e))?;
            let status = r.status().as_u16();
            if status == 401 && attempt == 0 && self.renew().await.is_ok() {
                continue;
            }
            let v = r.json().await.unwrap_or(Value::Null);
            return Ok((status, v));
        }
        Err(Failure::Status(401))
    }

    /// Creates `n` devices named `sim-<tag>-<i>`, labelled `fleet: <tag>`,
    /// with the bulk route; returns their credentials in order.
    pub async fn provision(&self, n: usize, tag: &str) -> anyhow::Result<Vec<Credentials>> {
        let batches: Vec<Value> = (0..n)
            .collect::<Vec<_>>()
            .chunks(BULK_BATCH)
            .map(|chunk| {
                let devices: Vec<Value> = chunk
                    .iter()
                    .map(|i| {
                        json!({
                            "name": format!("sim-{tag}-{i:06}"),
                            "device_type": "fleet-sim",
                            "labels": { "fleet": tag },
                        })
                    })
                    .collect();
                json!({ "devices": devices })
            })
            .collect();
        let created: Vec<Vec<Credentials>> = stream::iter(batches)
            .map(|body| async move {
                let (status, v) = self
                    .send(Method::POST, "/devices/bulk", Some(&body))
                    .await
                    .map_err(|f| anyhow::anyhow!("bulk provisioning failed: {}", f.kind()))?;
                if status != 201 {
                    bail!("bulk provisioning answered {status}: {v}");
                }
                parse_bulk(&v)
            })
            .buffered(BULK_PARALLEL)
            .try_collect()
            .await?;
        Ok(created.into_iter().flatten().collect())
    }

    /// Queues a `shutdown` for `device`.
    pub async fn queue_shutdown(&self, device: Uuid) -> Result<Queued, Failure> {
        let (status, v) = self
            .send(
                Method::POST,
                &format!("/devices/{device}/commands"),
                Some(&json!({ "kind": "shutdown" })),
            )
            .await?;
        if status != 201 {
            return Err(Failure::Status(status));
        }
        let id = v["id"].as_str().and_then(|s| s.parse().ok());
        let created_at = v["created_at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
        match (id, created_at) {
            (Some(id), Some(at)) => Ok(Queued {
                id,
                created_at: at.with_timezone(&Utc),
            }),
            _ => Err(Failure::Decode),
        }
    }

    pub async fn command(&self, id: Uuid) -> Result<CommandState, Failure> {
        let (status, v) = self
            .send(Method::GET, &format!("/commands/{id}"), None)
            .await?;
        if status != 200 {
            return Err(Failure::Status(status));
        }
        serde_json::from_value(v).map_err(|_| Failure::Decode)
    }
}

/// The credentials of a bulk answer, `{"items": [{…, "credentials":
/// {device_id, secret}}]}`.
fn parse_bulk(v: &Value) -> anyhow::Result<Vec<Credentials>> {
    v["items"]
        .as_array()
        .context("the bulk answer has no items")?
        .iter()
        .map(|item| {
            let c = &item["credentials"];
            Ok(Credentials {
                id: c["device_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .context("an item without credentials.device_id")?,
                secret: c["secret"]
                    .as_str()
                    .context("an item without credentials.secret")?
                    .to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_answers_yield_credentials_in_order() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let v = json!({ "items": [
            { "id": a, "name": "x", "credentials": { "device_id": a, "secret": "s1" } },
            { "id": b, "name": "y", "credentials": { "device_id": b, "secret": "s2" } },
        ]});
        let c = parse_bulk(&v).unwrap();
        assert_eq!((c[0].id, c[0].secret.as_str()), (a, "s1"));
        assert_eq!((c[1].id, c[1].secret.as_str()), (b, "s2"));
        assert!(parse_bulk(&json!({ "items": [{ "credentials": {} }] })).is_err());
        assert!(parse_bulk(&json!({})).is_err());
    }
}
