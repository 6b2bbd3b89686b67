//! The device API of `tend-sync`: what the agent sends and receives.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::{CommandKind, ReportStatus};

/// `POST /device/v1/auth`: a device trades its secret for a short-lived token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    pub device_id: Uuid,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthResponse {
    pub token: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// `POST /device/v1/heartbeat`: the device is alive; tells what it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    /// Free-form inventory (software versions, hardware), shown to admins as
    /// the device's `reported` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// True while the device has a command `queued` or `delivered`.
    pub pending: bool,
    /// When the device should send its next heartbeat.
    pub next_heartbeat_s: u64,
}

/// One command as the device sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    pub id: Uuid,
    /// Kept as a string so that an agent older than the server can still
    /// read the list and reject the kinds it does not know.
    pub kind: String,
    pub params: serde_json::Value,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub timeout_s: u32,
}

impl Instruction {
    /// The kind, if this agent knows it.
    pub fn known_kind(&self) -> Option<CommandKind> {
        self.kind.parse().ok()
    }
}

/// `GET /device/v1/instructions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instructions {
    pub instructions: Vec<Instruction>,
}

/// `POST /device/v1/instructions/{id}/report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub status: ReportStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl Report {
    pub fn status(status: ReportStatus) -> Self {
        Report {
            status,
            output: None,
            error: None,
            detail: None,
        }
    }
}
