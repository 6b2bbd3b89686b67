//! What hawkBit DDI clients send, and how it maps onto tend's lifecycle.
//!
//! Feedback comes in two shapes: the current one, with `timestamp`, and
//! the legacy one with `id` and `time`, which SWUpdate and other clients
//! still send. Both carry the same `status`; unknown fields are ignored,
//! as clients add their own.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use tend_core::error::ApiError;
use tend_proto::command::ReportStatus;
use tend_proto::device::Report;

/// `POST …/deploymentBase/{actionId}/feedback` and
/// `…/cancelAction/{actionId}/feedback`.
#[derive(Debug, Deserialize)]
pub struct Feedback {
    pub status: Status,
}

#[derive(Debug, Deserialize)]
pub struct Status {
    pub execution: Execution,
    pub result: Outcome,
    #[serde(default)]
    pub details: Vec<String>,
    /// A client's own status code (DDI 1.x); kept with the details.
    #[serde(default)]
    pub code: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    Closed,
    Proceeding,
    Canceled,
    Scheduled,
    Rejected,
    Resumed,
    Downloaded,
    Download,
}

impl Execution {
    fn as_str(self) -> &'static str {
        match self {
            Execution::Closed => "closed",
            Execution::Proceeding => "proceeding",
            Execution::Canceled => "canceled",
            Execution::Scheduled => "scheduled",
            Execution::Rejected => "rejected",
            Execution::Resumed => "resumed",
            Execution::Downloaded => "downloaded",
            Execution::Download => "download",
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Outcome {
    pub finished: Finished,
    #[serde(default)]
    pub progress: Option<Progress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finished {
    Success,
    Failure,
    None,
}

/// How far the action is. Clients send `{cnt, of}`, a `percentage`, or an
/// empty object; all are accepted and what is there is kept.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Progress {
    #[serde(default)]
    pub cnt: Option<u64>,
    #[serde(default)]
    pub of: Option<u64>,
    #[serde(default)]
    pub percentage: Option<f64>,
}

/// The most detail lines kept from one feedback, and the most bytes of
/// each: clients send a line per step (SWUpdate up to 48 log lines), and
/// some paste whole logs. Within a report's bounds either way.
const MAX_DETAILS: usize = 48;
const MAX_DETAIL_BYTES: usize = 1024;

impl Feedback {
    /// The report this feedback is, in tend's lifecycle: the steps before
    /// the end (`proceeding`, `scheduled`, `resumed`, `download`,
    /// `downloaded`) are `in_progress`, `closed` ends the command as its
    /// result says, `rejected` (and a device's own `canceled`) rejects it.
    /// The report carries nothing but what the body said, so that the
    /// same feedback sent twice is the same report.
    pub fn to_report(&self) -> Result<Report, ApiError> {
        let s = &self.status;
        let status = match (s.execution, s.result.finished) {
            (Execution::Closed, Finished::Success) => ReportStatus::Succeeded,
            (Execution::Closed, Finished::Failure) => ReportStatus::Failed,
            (Execution::Closed, Finished::None) => {
                return Err(ApiError::Unprocessable(
                    "a closed action needs result.finished = success or failure".into(),
                ));
            }
            (Execution::Rejected | Execution::Canceled, _) => ReportStatus::Rejected,
            // A step that already knows it failed ends the action.
            (_, Finished::Failure) => ReportStatus::Failed,
            _ => ReportStatus::InProgress,
        };
        let details: Vec<String> = s
            .details
            .iter()
            .take(MAX_DETAILS)
            .map(|d| cut(d, MAX_DETAIL_BYTES))
            .collect();
        let mut ddi = json!({ "execution": s.execution.as_str(), "details": details });
        if let Some(p) = s.result.progress {
            let mut progress = serde_json::Map::new();
            if let Some(cnt) = p.cnt {
                progress.insert("cnt".into(), cnt.into());
                progress.insert("of".into(), p.of.into());
            }
            if let Some(pct) = p.percentage.filter(|p| p.is_finite()) {
                progress.insert("percentage".into(), pct.into());
            }
            if !progress.is_empty() {
                ddi["progress"] = progress.into();
            }
        }
        if let Some(code) = s.code {
            ddi["code"] = code.into();
        }
        let error = match status {
            ReportStatus::Failed | ReportStatus::Rejected => Some(if details.is_empty() {
                format!("the device reported {}", s.execution.as_str())
            } else {
                details.join("\n")
            }),
            _ => None,
        };
        Ok(Report {
            status,
            output: None,
            error,
            detail: Some(json!({ "phase": s.execution.as_str(), "ddi": ddi })),
        })
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// `PUT …/configData`: attributes the device reports about itself.
#[derive(Debug, Deserialize)]
pub struct ConfigData {
    pub data: BTreeMap<String, Value>,
    #[serde(default)]
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Merge,
    Replace,
    Remove,
}

/// The most attributes a device may report, and the longest key and value.
const MAX_ATTRIBUTES: usize = 256;
const MAX_KEY_CHARS: usize = 128;
const MAX_VALUE_CHARS: usize = 1024;

impl ConfigData {
    /// The attributes as a JSON object of strings, checked: DDI sends
    /// strings, and numbers or booleans are kept as their text.
    pub fn attributes(&self) -> Result<Value, ApiError> {
        if self.data.len() > MAX_ATTRIBUTES {
            return Err(ApiError::Unprocessable(format!(
                "at most {MAX_ATTRIBUTES} attributes"
            )));
        }
        let mut out = serde_json::Map::new();
        for (k, v) in &self.data {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(ApiError::Unprocessable(format!(
                        "attribute {k:?}: values are strings"
                    )));
                }
            };
            if k.is_empty() || k.chars().count() > MAX_KEY_CHARS {
                return Err(ApiError::Unprocessable(format!(
                    "attribute names are 1 to {MAX_KEY_CHARS} characters"
                )));
            }
            if text.chars().count() > MAX_VALUE_CHARS || text.contains('\0') || k.contains('\0') {
                return Err(ApiError::Unprocessable(format!(
                    "attribute {k:?}: values are at most {MAX_VALUE_CHARS} characters, without NUL"
                )));
            }
            out.insert(k.clone(), Value::String(text));
        }
        Ok(Value::Object(out))
    }
}

/// `config.polling.sleep`: the interval as `HH:MM:SS`.
pub fn sleep(interval_s: u64) -> String {
    let h = interval_s / 3600;
    let m = (interval_s % 3600) / 60;
    let s = interval_s % 60;
    format!("{h:02}:{m:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback(body: Value) -> Feedback {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn current_and_legacy_bodies_read_the_same() {
        let current = feedback(json!({
            "timestamp": 1_700_000_000_000_i64,
            "status": {"execution": "proceeding", "result": {"finished": "none",
                       "progress": {"cnt": 2, "of": 5}}, "details": ["downloading"]}
        }));
        let legacy = feedback(json!({
            "id": "12", "time": "20140511T121314",
            "status": {"execution": "proceeding", "result": {"finished": "none",
                       "progress": {"cnt": 2, "of": 5}}, "details": ["downloading"]}
        }));
        let (a, b) = (current.to_report().unwrap(), legacy.to_report().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.status, ReportStatus::InProgress);
        assert_eq!(
            a.detail.unwrap()["ddi"]["progress"],
            json!({"cnt": 2, "of": 5})
        );
    }

    #[test]
    fn each_execution_maps_onto_the_lifecycle() {
        let map = |execution: &str, finished: &str| {
            feedback(json!({"status": {"execution": execution, "result": {"finished": finished}}}))
                .to_report()
                .map(|r| r.status)
        };
        for step in [
            "proceeding",
            "scheduled",
            "resumed",
            "download",
            "downloaded",
        ] {
            assert_eq!(
                map(step, "none").unwrap(),
                ReportStatus::InProgress,
                "{step}"
            );
        }
        assert_eq!(map("closed", "success").unwrap(), ReportStatus::Succeeded);
        assert_eq!(map("closed", "failure").unwrap(), ReportStatus::Failed);
        assert_eq!(map("rejected", "none").unwrap(), ReportStatus::Rejected);
        assert_eq!(map("canceled", "none").unwrap(), ReportStatus::Rejected);
        assert_eq!(map("proceeding", "failure").unwrap(), ReportStatus::Failed);
        assert!(map("closed", "none").is_err());
        let failed = feedback(json!({"status": {"execution": "closed",
            "result": {"finished": "failure"}, "details": ["bad signature", "rolled back"]}}));
        assert_eq!(
            failed.to_report().unwrap().error.as_deref(),
            Some("bad signature\nrolled back")
        );
    }

    #[test]
    fn progress_may_be_counts_a_percentage_or_nothing() {
        let report = |progress: Value| {
            feedback(json!({"status": {"execution": "closed",
                "result": {"finished": "success", "progress": progress}}}))
            .to_report()
            .unwrap()
            .detail
            .unwrap()
        };
        assert!(report(json!({}))["ddi"].get("progress").is_none());
        assert_eq!(
            report(json!({"percentage": 40}))["ddi"]["progress"],
            json!({"percentage": 40.0})
        );
        assert_eq!(
            report(json!({"cnt": 2}))["ddi"]["progress"],
            json!({"cnt": 2, "of": null})
        );
    }

    #[test]
    fn unknown_executions_and_missing_status_are_refused() {
        assert!(
            serde_json::from_value::<Feedback>(
                json!({"status": {"execution": "exploded", "result": {"finished": "none"}}})
            )
            .is_err()
        );
        assert!(serde_json::from_value::<Feedback>(json!({"id": "1"})).is_err());
    }

    #[test]
    fn attributes_are_strings_within_bounds() {
        let cfg = |data: Value| {
            serde_json::from_value::<ConfigData>(json!({ "data": data }))
                .unwrap()
                .attributes()
        };
        assert_eq!(
            cfg(json!({"hw": "rev2", "ram": 512, "ok": true})).unwrap(),
            json!({"hw": "rev2", "ram": "512", "ok": "true"})
        );
        assert!(cfg(json!({"nested": {"a": 1}})).is_err());
        assert!(cfg(json!({"": "x"})).is_err());
        assert!(cfg(json!({"k": "x".repeat(2000)})).is_err());
    }

    #[test]
    fn the_polling_interval_is_hh_mm_ss() {
        assert_eq!(sleep(30), "00:00:30");
        assert_eq!(sleep(3725), "01:02:05");
    }
}
