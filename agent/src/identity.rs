//! The device's identity when the configuration file does not hold one:
//! the agent enrols once with its enrolment token (seed 003: an identity
//! assigned at first access) and keeps the id and secret it was given in
//! `state_dir/identity.json` (0600), using them from then on.
//!
//! Enrolment is retried with backoff until it succeeds or the agent stops:
//! a device switched on before its server is reachable, or before an admin
//! made its token, enrols when it can. Neither the token nor the secret is
//! ever logged.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tend_proto::device::{EnrolRequest, EnrolResponse, EnrolStatus};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::{Config, Enrolment};
use crate::limits::{ERROR_BODY_BYTES, SMALL_BODY_BYTES};
use crate::system::AGENT_VERSION;

/// The file in `state_dir` that holds an enrolled device's identity.
pub const FILE_NAME: &str = "identity.json";

/// An enrolled device's id and secret, as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub device_id: Uuid,
    pub secret: String,
}

/// The secret stays out of logs and panic messages.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The identity stored by an earlier enrolment, if any. A file that exists
/// but cannot be read or parsed is an error: enrolling again would make a
/// second device of this one.
pub fn load(state_dir: &Path) -> anyhow::Result<Option<Identity>> {
    let path = path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let identity: Identity = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an identity this agent wrote; remove it to enrol again",
            path.display()
        )
    })?;
    if identity.secret.trim().is_empty() {
        anyhow::bail!("{} holds an empty secret", path.display());
    }
    Ok(Some(identity))
}

/// Stores `identity` atomically, readable by the agent's user only.
pub fn store(state_dir: &Path, identity: &Identity) -> io::Result<()> {
    crate::private::create_dir_all(state_dir)?;
    let bytes = serde_json::to_vec(identity).map_err(io::Error::other)?;
    crate::software::fs::write_private_atomic(&path(state_dir), &bytes)
}

/// Gives `config` its identity when the file has none: the stored one, or
/// a new one from enrolling (stored before it is used). Returns false when
/// `shutdown` came first.
pub async fn establish(config: &mut Config, shutdown: &CancellationToken) -> anyhow::Result<bool> {
    let Some(enrolment) = config.enrolment.clone() else {
        return Ok(true);
    };
    if !config.device_id.is_nil() {
        return Ok(true);
    }
    let identity = match load(&config.state_dir)? {
        Some(identity) => identity,
        None => {
            let Some(identity) = shutdown
                .run_until_cancelled(enrol_until_done(config, &enrolment))
                .await
            else {
                return Ok(false);
            };
            store(&config.state_dir, &identity).with_context(|| {
                format!(
                    "cannot store the enrolled identity in {}",
                    config.state_dir.display()
                )
            })?;
            identity
        }
    };
    config.device_id = identity.device_id;
    config.device_secret = identity.secret;
    Ok(true)
}

/// Enrols, retrying with backoff until the server gives an identity.
async fn enrol_until_done(config: &Config, enrolment: &Enrolment) -> Identity {
    let mut backoff = Backoff::default();
    loop {
        match enrol(config, enrolment).await {
            Ok(answer) => {
                let waiting = match answer.status {
                    EnrolStatus::Pending => "; it waits for an admin to accept it",
                    EnrolStatus::Accepted => "",
                };
                info!(device.id = %answer.device_id,
                    "enrolled as device {}{waiting}", answer.device_id);
                return Identity {
                    device_id: answer.device_id,
                    secret: answer.secret,
                };
            }
            Err(e) => {
                let delay = backoff.next_delay();
                let retry_in_ms = delay.as_millis() as u64;
                if e.refused {
                    error!(retry_in_ms, "enrolment refused: {}", e.message);
                } else {
                    warn!(retry_in_ms, "enrolment failed: {}", e.message);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Why one enrolment attempt failed; `refused` when the server judged the
/// token or the request (an admin must act), not a passing failure.
struct Failed {
    refused: bool,
    message: String,
}

impl Failed {
    fn passing(message: String) -> Failed {
        Failed {
            refused: false,
            message,
        }
    }
}

/// One `POST /device/v1/enrol`.
async fn enrol(config: &Config, enrolment: &Enrolment) -> Result<EnrolResponse, Failed> {
    let token = enrolment
        .token()
        .map_err(|e| Failed::passing(format!("{e:#}")))?;
    let http = reqwest::Client::builder()
        .user_agent(format!("tend-agent/{AGENT_VERSION}"))
        .timeout(Duration::from_secs(config.request_timeout_s));
    let http = match &config.ca_file {
        Some(ca) => http.tls_certs_merge(ca.certificates.iter().cloned()),
        None => http,
    }
    .build()
    .map_err(|e| Failed::passing(format!("cannot build the HTTP client: {e}")))?;
    let body = EnrolRequest {
        token,
        device_type: enrolment.device_type.clone(),
        name: enrolment.name.clone(),
        labels: enrolment.labels.clone(),
        inventory: Some(crate::system::inventory()),
    };
    let response = http
        .post(format!("{}/device/v1/enrol", config.server_url))
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            Failed::passing(format!(
                "cannot reach the server: {}",
                crate::client::chain(&e)
            ))
        })?;
    let status = response.status();
    let limit = if status.is_success() {
        SMALL_BODY_BYTES
    } else {
        ERROR_BODY_BYTES
    };
    let bytes = crate::client::read_limited(response, limit)
        .await
        .map_err(|e| Failed::passing(e.to_string()))?
        .ok_or_else(|| Failed::passing(format!("the server's answer is over {limit} bytes")))?;
    if status == StatusCode::CREATED || status == StatusCode::OK {
        return serde_json::from_slice(&bytes).map_err(|e| {
            Failed::passing(format!(
                "the server's answer to the enrolment is not valid: {e}"
            ))
        });
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let detail: String = detail.chars().take(300).collect();
    Err(Failed {
        refused: status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS,
        message: format!("the server answered {status}: {detail}"),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_stored_identity_is_read_back_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(load(&state).unwrap().is_none(), "nothing stored yet");
        let identity = Identity {
            device_id: Uuid::new_v4(),
            secret: "s3cret-from-the-server".into(),
        };
        store(&state, &identity).unwrap();
        assert_eq!(load(&state).unwrap(), Some(identity.clone()));
        let mode = std::fs::metadata(state.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{identity:?}").contains("s3cret"));
    }

    #[test]
    fn a_damaged_identity_file_stops_the_agent_instead_of_enrolling_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            format!("{e:#}").contains("remove it to enrol again"),
            "{e:#}"
        );
    }

    #[tokio::test]
    async fn an_identity_stored_before_is_used_without_enrolling() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity {
            device_id: Uuid::new_v4(),
            secret: "kept".into(),
        };
        store(dir.path(), &identity).unwrap();
        // No server at this address: enrolling would never end.
        let mut config = Config::from_toml_str(&format!(
            "server_url = \"http://127.0.0.1:9\"\nstate_dir = \"{}\"\n\
             enrolment_token = \"tend_enrol_x\"\ndevice_type = \"kiosk\"\naccept_unsigned = true\n",
            dir.path().display()
        ))
        .unwrap();
        assert!(config.device_id.is_nil());
        let done = establish(&mut config, &CancellationToken::new())
            .await
            .unwrap();
        assert!(done);
        assert_eq!(config.device_id, identity.device_id);
        assert_eq!(config.device_secret, "kept");
    }
}
