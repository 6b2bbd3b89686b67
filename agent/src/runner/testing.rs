//! What the runner's tests share: a device in a temporary directory, and a
//! sync server that accepts everything.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tempfile::TempDir;
use tend_proto::command::ReportStatus;
use tend_proto::device::{Instruction, Report};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::Agent;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::journal::{self, Entry, Journal, State};

pub(super) struct Device {
    dir: TempDir,
}

impl Device {
    pub(super) fn new(boot_id: &str) -> Device {
        let device = Device {
            dir: tempfile::tempdir().unwrap(),
        };
        device.set_boot_id(boot_id);
        device
    }

    pub(super) fn set_boot_id(&self, boot_id: &str) {
        std::fs::write(self.dir.path().join("boot_id"), format!("{boot_id}\n")).unwrap();
    }

    pub(super) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub(super) fn counter(&self) -> PathBuf {
        self.dir.path().join("ran")
    }

    /// How many times an action ran: each run appends one line.
    pub(super) fn runs(&self) -> usize {
        std::fs::read_to_string(self.counter())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    pub(super) fn config(&self, server: &str) -> Config {
        self.config_with(server, "")
    }

    /// The device's configuration with `tables` (TOML tables such as
    /// `[components.app]`) appended.
    pub(super) fn config_with(&self, server: &str, tables: &str) -> Config {
        let action = format!(
            "[\"sh\", \"-c\", \"echo $TEND_INSTRUCTION_ID >> {}\"]",
            self.counter().display()
        );
        Config::from_toml_str(&format!(
            "server_url = \"{server}\"\ndevice_id = \"{}\"\ndevice_secret = \"s\"\n\
             state_dir = {:?}\nboot_id_file = {:?}\nupdate_check_s = 0\naccept_unsigned = true\n\
             [actions]\nreboot = {action}\nshutdown = {action}\n\
             [log_sources]\napp = {:?}\n{tables}",
            Uuid::new_v4(),
            self.state_dir().display().to_string(),
            self.dir.path().join("boot_id").display().to_string(),
            self.app_log().display().to_string(),
        ))
        .unwrap()
    }

    /// A scratch directory of the device's (components live here).
    pub(super) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(super) fn app_log(&self) -> PathBuf {
        self.dir.path().join("app.log")
    }

    /// The agent as `run` builds it, with retries in milliseconds.
    pub(super) fn agent(&self, server: &str) -> Agent {
        let mut agent = Agent::start(self.config(server), CancellationToken::new()).unwrap();
        Arc::get_mut(&mut agent.client)
            .expect("not shared yet")
            .retry = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        agent
    }

    pub(super) fn journal(&self) -> Journal {
        Journal::open(&self.state_dir()).unwrap()
    }

    pub(super) fn operations(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir().join(crate::oplog::FILE_NAME))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub(super) fn instruction(kind: &str) -> Instruction {
    Instruction {
        id: Uuid::new_v4(),
        kind: kind.into(),
        params: json!({}),
        issued_at: Utc::now(),
        expires_at: Utc::now() + chrono::Duration::hours(1),
        timeout_s: 30,
        trace_id: None,
        key_id: None,
        signature: None,
    }
}

/// A sync server that accepts everything and has nothing pending.
pub(super) async fn accepting_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/device/v1/auth"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"token": "t", "expires_in": 3600})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/device/v1/instructions/[^/]+/report$"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

/// The reports the server received, as (instruction id, body), the
/// body decompressed when it came gzip-encoded.
pub(super) async fn report_bodies(server: &MockServer) -> Vec<(String, Value)> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("/report"))
        .map(|r| {
            let id = r.url.path().split('/').nth(4).unwrap().to_owned();
            let mut json = r.body.clone();
            if r.headers
                .get("content-encoding")
                .is_some_and(|v| v == "gzip")
            {
                json.clear();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(&r.body[..]),
                    &mut json,
                )
                .unwrap();
            }
            (id, serde_json::from_slice(&json).unwrap())
        })
        .collect()
}

/// The reports the server received, as (instruction id, status).
pub(super) async fn reports(server: &MockServer) -> Vec<(String, String)> {
    report_bodies(server)
        .await
        .into_iter()
        .map(|(id, body)| (id, body["status"].as_str().unwrap().to_owned()))
        .collect()
}

/// The states an instruction went through, from the journal file as
/// appended (before the next start compacts it).
pub(super) fn journaled_states(state_dir: &Path, id: Uuid) -> Vec<State> {
    std::fs::read_to_string(state_dir.join(journal::FILE_NAME))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Entry>(l).unwrap())
        .filter(|e| e.id == id)
        .map(|e| e.state)
        .collect()
}

pub(super) fn write_journal(state_dir: &Path, entries: &[Entry]) {
    let mut journal = Journal::open(state_dir).unwrap();
    for entry in entries {
        journal.append(entry.clone()).unwrap();
    }
}

pub(super) fn started(kind: &str, boot_id: &str) -> Entry {
    let now = Utc::now();
    Entry {
        id: Uuid::new_v4(),
        kind: kind.into(),
        params: json!({}),
        state: State::Started,
        boot_id: boot_id.into(),
        started_at: now,
        at: now,
        report: Report::status(ReportStatus::InProgress),
        exit_code: None,
        format: journal::FORMAT,
        trace_id: None,
        job: None,
        local: false,
    }
}

pub(super) fn running(kind: &str, boot_id: &str) -> Entry {
    Entry {
        state: State::Running,
        ..started(kind, boot_id)
    }
}
