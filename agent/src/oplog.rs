//! The operation log: `state_dir/operations.log`, one JSON line per
//! operation the agent performed or refused.
//!
//! It is the device-side record an operator reads on the machine, or from
//! the cloud with `log_query` and source `operations`. Each line starts
//! with `{"at":"<RFC 3339 time>"`, so the query's time filter reads it like
//! any timestamped log. Unlike the journal it is never compacted; it is
//! rotated by size instead (`[operations_log]`): when a line would take the
//! file past `max_bytes`, `operations.log` becomes `operations.log.1`, the
//! older ones move up by one, and the one past `keep` is deleted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tracing::warn;
use uuid::Uuid;

pub const FILE_NAME: &str = "operations.log";

/// 10 MiB: tens of thousands of operations, years of a device's life.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_KEEP: u32 = 5;
/// A smaller file would rotate at nearly every line.
pub const MIN_MAX_BYTES: u64 = 4096;

/// `[operations_log]` in the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The size past which the file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`operations.log.1` … `.keep`); 0 keeps none.
    pub keep: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// One line of the log. `at` is declared first so that it is serialized
/// first: the line then starts with its timestamp.
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
    /// A step of an upgrade or restore (`download_started`, `verified`,
    /// `committed`, …); absent on the line of a final outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a Value>,
}

/// Appends to the operation log.
#[derive(Debug)]
pub struct OpLog {
    path: PathBuf,
    settings: Settings,
    /// Serialises appends, so two of them never rotate the same file.
    writing: Mutex<()>,
}

impl OpLog {
    pub fn new(state_dir: &Path, settings: Settings) -> OpLog {
        OpLog {
            path: state_dir.join(FILE_NAME),
            settings,
            writing: Mutex::new(()),
        }
    }

    /// Writes one line in a single `write` on an `O_APPEND` file, so lines
    /// never interleave, and syncs it: the next thing that happens may be a
    /// power-off. Rotates first when the line would not fit.
    pub fn append(&self, operation: &Operation<'_>) -> io::Result<()> {
        let mut line = serde_json::to_vec(operation)?;
        line.push(b'\n');
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut file = open_append(&self.path)?;
        let size = file.metadata()?.len();
        if size > 0 && size + line.len() as u64 > self.settings.max_bytes {
            drop(file);
            // A failed rotation must not lose the operation: the line goes
            // into the current file, which only grows past its cap.
            if let Err(e) = self.rotate() {
                warn!(path = %self.path.display(), "cannot rotate the operation log: {e}");
            }
            file = open_append(&self.path)?;
        }
        file.write_all(&line)?;
        file.sync_data()
    }

    fn rotate(&self) -> io::Result<()> {
        let keep = self.settings.keep;
        if keep == 0 {
            return fs::remove_file(&self.path);
        }
        remove_if_exists(&self.rotated(keep))?;
        for n in (1..keep).rev() {
            rename_if_exists(&self.rotated(n), &self.rotated(n + 1))?;
        }
        fs::rename(&self.path, self.rotated(1))
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    crate::private::options()
        .create(true)
        .append(true)
        .open(path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_is_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = OpLog::new(dir.path(), Settings::default());
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
                step: None,
                detail: None,
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
        assert!(
            text.starts_with(r#"{"at":""#),
            "the time comes first: {text}"
        );
    }

    fn append(log: &OpLog, n: usize) {
        log.append(&Operation {
            at: Utc::now(),
            instruction_id: Uuid::new_v4(),
            kind: "reboot",
            params: &serde_json::json!({"n": n}),
            outcome: "succeeded",
            duration_ms: None,
            error: None,
            step: None,
            detail: None,
        })
        .unwrap();
    }

    /// The `n` params of the lines of `name`, in order.
    fn numbers(dir: &Path, name: &str) -> Vec<u64> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["params"]["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn the_log_is_rotated_by_size_and_only_keep_old_files_remain() {
        let dir = tempfile::tempdir().unwrap();
        // Each line is ~150 bytes: three fit under the cap, the fourth
        // rotates.
        let log = OpLog::new(
            dir.path(),
            Settings {
                max_bytes: 500,
                keep: 2,
            },
        );
        for n in 0..10 {
            append(&log, n);
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [FILE_NAME, "operations.log.1", "operations.log.2"]);
        assert_eq!(numbers(dir.path(), FILE_NAME), [9]);
        assert_eq!(numbers(dir.path(), "operations.log.1"), [6, 7, 8]);
        assert_eq!(numbers(dir.path(), "operations.log.2"), [3, 4, 5]);
        for name in [FILE_NAME, "operations.log.1", "operations.log.2"] {
            assert!(std::fs::metadata(dir.path().join(name)).unwrap().len() <= 500);
        }
    }

    #[test]
    fn keep_0_starts_the_log_afresh_without_history() {
        let dir = tempfile::tempdir().unwrap();
        let log = OpLog::new(
            dir.path(),
            Settings {
                max_bytes: 200,
                keep: 0,
            },
        );
        for n in 0..3 {
            append(&log, n);
        }
        assert_eq!(numbers(dir.path(), FILE_NAME), [2]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
