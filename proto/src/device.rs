//! The device API of `tend-sync`: what the agent sends and receives.

use std::collections::BTreeMap;

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
    /// The device's type as the platform records it: a device searches
    /// its LAN for peers of this type only (seed 000). Absent from servers
    /// older than peer recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
}

/// `POST /device/v1/enrol`: a device with an enrolment token and no
/// identity yet asks for one (seed 003). Sent once; the answer's
/// credentials are kept by the device from then on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The enrolment token (`tend_enrol_…`) an admin created.
    pub token: String,
    /// The device's type ([`is_device_type`]); when the token is for one
    /// type, it must be that one.
    pub device_type: String,
    /// The name admins see; the server makes one up when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels the device asks for; the token's own labels win over them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form inventory (hardware, serial number), shown to admins as
    /// the device's `reported` object while they decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<serde_json::Value>,
}

/// Whether an enrolled device may connect yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrolStatus {
    /// It waits for an admin: `POST /device/v1/auth` answers 403 until
    /// then, with `Retry-After`.
    Pending,
    /// It may authenticate at once (the token accepts its devices).
    Accepted,
}

/// The answer to an enrolment: the device's identity, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub device_id: Uuid,
    pub secret: String,
    pub status: EnrolStatus,
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
    /// The version of each component the agent manages (`agent` included),
    /// as it runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<BTreeMap<String, String>>,
    /// Long-poll: the device may be held up to this many seconds, and is
    /// answered the moment a command for it arrives. The server caps it and
    /// says in `next_heartbeat_s` when to come back (0: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// True while the device has a command `queued` or `delivered`.
    pub pending: bool,
    /// When the device should send its next heartbeat.
    pub next_heartbeat_s: u64,
}

/// `POST /device/v1/update-check`: what the device runs, component by
/// component (seed 004's scheduled update query).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateCheck {
    pub components: BTreeMap<String, String>,
}

/// The answer to an update check: whether work is pending now (an
/// `upgrade` queued by this check, or anything else), as in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCheckResponse {
    pub pending: bool,
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
    /// The trace id of the admin request that queued the command. The agent
    /// logs it and sends it back with its reports (`traceparent` header),
    /// so one id follows the command through every log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The id of the platform key that signed it ([`crate::signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The platform's Ed25519 signature of [`crate::signing::signed_bytes`],
    /// standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A device type is a token devices are grouped by (`kiosk`, `camera-v2`):
/// 1 to 64 of letters, digits, '.', '_' and '-'. The platform accepts no
/// other, and the agent keeps no other a server tells it.
pub fn is_device_type(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What is wrong with a device's labels, if anything: at most 64, keys of
/// 1 to 63 letters, digits, `.`, `_`, `-` and `/`, values of at most 255
/// printable characters (the platform's rule for the labels it stores).
pub fn labels_problem(labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.len() > 64 {
        return Some("at most 64 labels".into());
    }
    for (k, v) in labels {
        if k.is_empty()
            || k.len() > 63
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        {
            return Some(format!(
                "label key {k:?} must be 1 to 63 of letters, digits, '.', '_', '-' and '/'"
            ));
        }
        if v.len() > 255 || v.chars().any(char::is_control) {
            return Some(format!(
                "label {k:?} must have a value of at most 255 printable characters"
            ));
        }
    }
    None
}

/// Trace ids are W3C trace-context ids: 32 lowercase hex digits, not all 0.
pub fn is_trace_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of_traceparent(header: &str) -> Option<&str> {
    let mut parts = header.trim().split('-');
    let (_version, trace, _span) = (parts.next()?, parts.next()?, parts.next()?);
    is_trace_id(trace).then_some(trace)
}

/// A `traceparent` header value for `trace_id`, with a fresh span id.
pub fn traceparent(trace_id: &str, span_id: u64) -> String {
    format!("00-{trace_id}-{span_id:016x}-01")
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

/// `POST /device/v1/recoveries`: a restore the agent started on its own
/// (a component found broken with no usable backup, seed 000), sent once
/// it has ended and the server is reachable. The server records it in the
/// device's command history as a finished `restore`; sending the same `id`
/// again is accepted and changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    /// Chosen by the agent; the command's id.
    pub id: Uuid,
    /// The restore's params (`{component, source}`).
    pub params: serde_json::Value,
    pub started_at: DateTime<Utc>,
    /// The final report: `succeeded` or `failed`.
    pub report: Report,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_type_is_a_short_token() {
        for ok in ["kiosk", "camera-v2", "ticket_machine.3", &"k".repeat(64)] {
            assert!(is_device_type(ok), "{ok}");
        }
        for bad in [
            "",
            "kiosk\nroot",
            "a b",
            "k/../x",
            &"k".repeat(65),
            "kiosk\u{202e}",
        ] {
            assert!(!is_device_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn traceparent_headers_round_trip_their_trace_id() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let header = traceparent(id, 0x00f067aa0ba902b7);
        assert_eq!(
            header,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(trace_id_of_traceparent(&header), Some(id));
        assert_eq!(
            trace_id_of_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of_traceparent("garbage"), None);
        assert!(!is_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736"));
    }
}
