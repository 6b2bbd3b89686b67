//! The durable journal: what the agent did with every instruction it saw.
//!
//! It is what makes dangerous commands run at most once. An instruction is
//! written here (and fsync'd) before anything is executed, so after a crash,
//! a power cut or a reboot the agent knows it already started it and never
//! starts it again; it also keeps final reports until the server has them,
//! so they survive restarts.
//!
//! `state_dir/journal.jsonl` is append-only JSON lines. Each line is a full
//! snapshot of one instruction's [`Entry`]; at load the lines are folded by
//! id, the last one winning. Appending whole snapshots (not diffs) means a
//! lost or torn final line only loses the newest state, never the meaning of
//! the older ones, and compaction can simply write one line per entry.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tend_proto::device::Report;
use tracing::{error, warn};
use uuid::Uuid;

use crate::software::job::Job;

pub const FILE_NAME: &str = "journal.jsonl";

/// How long settled entries are kept. An instruction cannot come back from
/// the server after this long (it has expired or timed out there long
/// before), so forgetting it cannot make it run twice.
pub const RETENTION: TimeDelta = TimeDelta::days(30);

/// The journal format this agent writes; see [`Entry::format`].
pub const FORMAT: u32 = 2;

/// What entries written before [`Entry::format`] existed are read as.
fn legacy_format() -> u32 {
    1
}

/// Where an instruction is on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Journaled before anything executed; `boot_id` is the boot it started
    /// in. For an action (format 2), the action has not been spawned yet:
    /// the agent may still be waiting for the server to accept
    /// `in_progress`.
    Started,
    /// Journaled (fsync'd) right before the action's command is spawned:
    /// from here on, only the boot id can tell what happened.
    Running,
    /// The action's command returned (a reboot that now waits for the
    /// machine to go down and come back).
    ActionReturned,
    /// The final report is decided and stored, not yet acknowledged.
    Finished,
    /// The server accepted the final report, or refused it for good.
    Reported,
}

/// One instruction's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: Uuid,
    pub kind: String,
    #[serde(default)]
    pub params: Value,
    pub state: State,
    /// The boot id when the instruction started; compared with the current
    /// one after a restart to tell whether the machine went down.
    pub boot_id: String,
    pub started_at: DateTime<Utc>,
    /// When this snapshot was written.
    pub at: DateTime<Utc>,
    /// The last report decided for it: `in_progress` while it runs, then
    /// the final one. Resent as is when the server delivers the id again.
    pub report: Report,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// 2 when the writer journals [`State::Running`] before spawning an
    /// action, so that `started` means "never spawned". 1 (absent) for
    /// lines of agents from before that state: their `started` may or may
    /// not have been spawned, and is judged by the boot id as they were.
    #[serde(default = "legacy_format")]
    pub format: u32,
    /// The trace id the server gave with the instruction; logged with it
    /// and sent back with its reports (`traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// An upgrade or restore: the step it is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    /// Started by the agent itself (a recovery of a broken component), not
    /// by an instruction: the server learns of it from its final report,
    /// sent as a recovery record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
}

impl Entry {
    /// The same instruction in a later state.
    pub fn advance(&self, state: State, report: Report, at: DateTime<Utc>) -> Entry {
        Entry {
            state,
            report,
            at,
            ..self.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct JournalError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_owned();
    move |source| JournalError {
        action,
        path,
        source,
    }
}

/// The open journal: the folded entries in memory, the file for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<Uuid, Entry>,
    /// Set when an append failed part-way: the file may end in a partial
    /// line, and the next record must not be glued onto it.
    needs_newline: bool,
}

impl Journal {
    /// Loads `state_dir/journal.jsonl` (creating `state_dir` if needed)
    /// and compacts it.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        Journal::open_at(state_dir, Utc::now())
    }

    fn open_at(state_dir: &Path, now: DateTime<Utc>) -> Result<Journal, JournalError> {
        crate::private::create_dir_all(state_dir).map_err(io_error("create", state_dir))?;
        let path = state_dir.join(FILE_NAME);
        let mut entries = match fs::read(&path) {
            Ok(bytes) => fold(&bytes, &path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        entries.retain(|_, e| e.state != State::Reported || now - e.at < RETENTION);
        // Rewriting at every start also drops a torn final line, which a
        // later append would otherwise turn into a garbled middle line.
        rewrite(&path, &entries)?;
        let file = crate::private::options()
            .append(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        Ok(Journal {
            path,
            file,
            entries,
            needs_newline: false,
        })
    }

    pub fn get(&self, id: Uuid) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Writes `entry` and fsyncs it; only then does it count as journaled.
    /// Callers perform the action this record guards after this returns Ok.
    pub fn append(&mut self, entry: Entry) -> Result<(), JournalError> {
        let mut line = Vec::with_capacity(256);
        if self.needs_newline {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, &entry)
            .map_err(|e| io_error("encode", &self.path)(e.into()))?;
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.needs_newline = true;
            return Err(io_error("append to", &self.path)(e));
        }
        self.needs_newline = false;
        self.entries.insert(entry.id, entry);
        Ok(())
    }
}

fn fold(bytes: &[u8], path: &Path) -> HashMap<Uuid, Entry> {
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut entries = HashMap::new();
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<Entry>(line) {
            Ok(entry) => {
                entries.insert(entry.id, entry);
            }
            Err(e) if index + 1 == lines.len() => {
                warn!(path = %path.display(), "ignoring the torn last line of the journal: {e}");
            }
            Err(e) => {
                // Not a crash artefact (only the last line can be torn):
                // the disk or someone's editor damaged it. Starting anyway
                // keeps the device reachable; the loss is logged loudly.
                error!(path = %path.display(), line = index + 1, "ignoring a garbled journal line: {e}");
            }
        }
    }
    entries
}

/// Replaces the journal with one line per entry, crash-safely: a temporary
/// file is fsync'd, renamed over the old one, and the directory fsync'd so
/// the rename itself survives a power cut.
fn rewrite(path: &Path, entries: &HashMap<Uuid, Entry>) -> Result<(), JournalError> {
    let mut sorted: Vec<&Entry> = entries.values().collect();
    sorted.sort_by_key(|e| (e.started_at, e.id));
    let mut text = Vec::new();
    for entry in sorted {
        serde_json::to_writer(&mut text, entry).map_err(|e| io_error("encode", path)(e.into()))?;
        text.push(b'\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut file = crate::private::create(&tmp).map_err(io_error("create", &tmp))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("replace", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use tend_proto::command::ReportStatus;

    use super::*;

    fn entry(id: Uuid, state: State, at: DateTime<Utc>) -> Entry {
        Entry {
            id,
            kind: "reboot".into(),
            params: serde_json::json!({}),
            state,
            boot_id: "boot-1".into(),
            started_at: at,
            at,
            report: Report::status(ReportStatus::InProgress),
            exit_code: None,
            format: FORMAT,
            trace_id: None,
            job: None,
            local: false,
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join(FILE_NAME))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn appended_entries_are_folded_by_id_with_the_last_winning() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.append(entry(a, State::Started, now)).unwrap();
        journal.append(entry(b, State::Started, now)).unwrap();
        let finished = entry(a, State::Started, now).advance(
            State::Finished,
            Report::status(ReportStatus::Succeeded),
            now,
        );
        journal.append(finished.clone()).unwrap();
        assert_eq!(lines(dir.path()).len(), 3);
        drop(journal);

        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.get(a), Some(&finished));
        assert_eq!(journal.get(b).unwrap().state, State::Started);
        assert_eq!(journal.entries().count(), 2);
        assert_eq!(lines(dir.path()).len(), 2, "compacted to one line per id");
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_does_not_swallow_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut journal = Journal::open(dir.path()).unwrap();
        journal
            .append(entry(a, State::Started, Utc::now()))
            .unwrap();
        drop(journal);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        file.write_all(br#"{"id":"0000","kind":"reb"#).unwrap();

        let mut journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.entries().count(), 1);
        journal
            .append(entry(b, State::Started, Utc::now()))
            .unwrap();
        drop(journal);
        let journal = Journal::open(dir.path()).unwrap();
        assert!(journal.get(a).is_some() && journal.get(b).is_some());
    }

    #[test]
    fn a_garbled_middle_line_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        let text = format!(
            "{}\nnot json at all\n{}\n",
            serde_json::to_string(&entry(a, State::Started, now)).unwrap(),
            serde_json::to_string(&entry(b, State::Finished, now)).unwrap(),
        );
        fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.entries().count(), 2);
    }

    #[test]
    fn compaction_drops_only_old_reported_entries() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let old = now - RETENTION - TimeDelta::hours(1);
        let recent = now - TimeDelta::days(1);
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let mut journal = Journal::open_at(dir.path(), now).unwrap();
        journal.append(entry(ids[0], State::Reported, old)).unwrap();
        journal
            .append(entry(ids[1], State::Reported, recent))
            .unwrap();
        journal.append(entry(ids[2], State::Finished, old)).unwrap();
        journal
            .append(entry(ids[3], State::ActionReturned, old))
            .unwrap();
        drop(journal);

        let journal = Journal::open_at(dir.path(), now).unwrap();
        assert!(journal.get(ids[0]).is_none(), "old and settled: forgotten");
        for id in &ids[1..] {
            assert!(journal.get(*id).is_some());
        }
        assert_eq!(lines(dir.path()).len(), 3);
        assert!(!dir.path().join("journal.jsonl.tmp").exists());
    }

    #[test]
    fn lines_of_older_agents_are_read_as_format_1_and_new_ones_name_their_format() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let legacy = format!(
            r#"{{"id":"{id}","kind":"reboot","params":{{}},"state":"started","boot_id":"b","started_at":"2026-01-01T00:00:00Z","at":"2026-01-01T00:00:00Z","report":{{"status":"in_progress"}}}}"#
        );
        fs::write(dir.path().join(FILE_NAME), format!("{legacy}\n")).unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        let old = journal.get(id).unwrap();
        assert_eq!((old.state, old.format), (State::Started, 1));

        let running = entry(Uuid::new_v4(), State::Running, Utc::now());
        journal.append(running.clone()).unwrap();
        drop(journal);
        assert!(lines(dir.path())[1].contains(r#""state":"running""#));
        assert!(lines(dir.path())[1].contains(r#""format":2"#));
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.get(running.id), Some(&running));
    }

    #[test]
    fn the_state_dir_is_created_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("a/b");
        Journal::open(&state_dir).unwrap();
        assert!(state_dir.join(FILE_NAME).exists());
    }
}
