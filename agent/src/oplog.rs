//! The operation log: `state_dir/operations.log`, one JSON line per
//! operation the agent performed or refused.
//!
//! It is the device-side record an operator reads on the machine (and,
//! later, through `log_query` with source `operations`), so unlike the
//! journal it is never compacted and its lines are meant for people.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

pub const FILE_NAME: &str = "operations.log";

/// One line of the log.
#[derive(Debug, Clone, Serialize)]
pub struct Operation<'a> {
    pub at: DateTime<Utc>,
    pub instruction_id: Uuid,
    pub kind: &'a str,
    pub params: &'a Value,
    /// A report status (`in_progress`, `succeeded`, `failed`, `rejected`).
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// Appends to the operation log.
#[derive(Debug, Clone)]
pub struct OpLog {
    path: PathBuf,
}

impl OpLog {
    pub fn new(state_dir: &Path) -> OpLog {
        OpLog {
            path: state_dir.join(FILE_NAME),
        }
    }

    /// Writes one line in a single `write` on an `O_APPEND` file, so lines
    /// never interleave, and syncs it: the next thing that happens may be a
    /// power-off.
    pub fn append(&self, operation: &Operation<'_>) -> io::Result<()> {
        let mut line = serde_json::to_vec(operation)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_is_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = OpLog::new(dir.path());
        let id = Uuid::new_v4();
        let params = serde_json::json!({});
        for outcome in ["in_progress", "succeeded"] {
            log.append(&Operation {
                at: Utc::now(),
                instruction_id: id,
                kind: "reboot",
                params: &params,
                outcome,
                duration_ms: Some(12),
                error: None,
            })
            .unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["instruction_id"], id.to_string());
        assert_eq!(lines[1]["outcome"], "succeeded");
        assert_eq!(lines[1]["duration_ms"], 12);
        assert!(lines[1].get("error").is_none());
    }
}
