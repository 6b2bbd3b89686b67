//! `state_dir/software/installed.json`: what the agent installed, per
//! component, and what its backup holds.
//!
//! A component's running version is read from its `version_file` when it
//! has one (what is on disk is the truth, whoever put it there); this
//! record fills in for components whose version nothing else tells (a
//! `file` or `command` component without a `version_file`), says which
//! version the backup holds, and which artifact each came from, so a
//! restore can name a digest it trusts.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::fs;

pub const FILE_NAME: &str = "installed.json";

/// One version of a component, as installed by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    /// The SHA-256 of the artifact it came from, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// That artifact's size in bytes (absent in records of agents from
    /// before peer recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub current: Version,
    pub installed_at: DateTime<Utc>,
    /// What the backup beside the component holds (the previous version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Version>,
    /// For the agent itself: the inode of the executable it installed, so
    /// a binary replaced by other means (a package upgrade) is not taken
    /// for the one recorded here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
}

/// The records, loaded once and rewritten atomically on every change.
#[derive(Debug)]
pub struct Installed {
    path: PathBuf,
    records: BTreeMap<String, Record>,
}

impl Installed {
    pub fn load(dir: &Path) -> Installed {
        let path = dir.join(FILE_NAME);
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Only versions that a version file does not tell are
                // lost; the next install records them again.
                warn!(path = %path.display(), "ignoring an unreadable record of installed versions: {e}");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Installed { path, records }
    }

    pub fn get(&self, component: &str) -> Option<&Record> {
        self.records.get(component)
    }

    /// Records `record` for `component` and writes the file.
    pub fn set(&mut self, component: &str, record: Record) -> io::Result<()> {
        let mut records = self.records.clone();
        records.insert(component.to_owned(), record);
        self.write(records)
    }

    /// Changes only what the backup holds.
    pub fn set_backup(&mut self, component: &str, backup: Option<Version>) -> io::Result<()> {
        let mut records = self.records.clone();
        if let Some(record) = records.get_mut(component) {
            record.backup = backup;
        }
        self.write(records)
    }

    fn write(&mut self, records: BTreeMap<String, Record>) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            crate::private::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(&records)?;
        fs::write_private_atomic(&self.path, &bytes)?;
        self.records = records;
        Ok(())
    }
}
