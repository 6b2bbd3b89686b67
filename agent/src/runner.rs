//! The agent's life: recover from the last run, heartbeat, fetch and handle
//! instructions, deliver reports.
//!
//! Three tasks share one [`Agent`]:
//! - the heartbeat loop, which never waits for an action: it learns that
//!   work is pending and hands a fetched batch to a task of its own;
//! - that batch task, which handles the instructions of one fetch in order
//!   (at most one batch at a time, so a re-delivered id is always seen
//!   after its first delivery was journaled);
//! - the reporter, which sends the final reports kept in the journal until
//!   the server settles them, including those left by a previous run.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde_json::Value;
use tend_proto::command::ReportStatus;
use tend_proto::device::{Heartbeat, Instruction, Report};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::{self, Backoff, jittered};
use crate::client::{Client, ClientError, Delivery};
use crate::config::Config;
use crate::executor::{self, End};
use crate::journal::{Entry, Journal, JournalError, State};
use crate::oplog::{OpLog, Operation};
use crate::outcome::{self, Action, Verdict};
use crate::system::{self, AGENT_VERSION};

/// Runs the agent until `shutdown` is cancelled (then returns `Ok(())`).
///
/// Errors are returned only from startup (state directory, journal, boot
/// id); once running, the agent retries everything that fails. An action's
/// child process still running at shutdown is left alone.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agent = Arc::new(Agent::start(config)?);
    info!(
        device.id = %agent.config.device_id,
        boot_id = %agent.boot_id,
        "tend-agent {AGENT_VERSION} started for device {}", agent.config.device_id
    );
    let reporter = tokio::spawn(
        shutdown
            .clone()
            .run_until_cancelled_owned(deliver_reports(agent.clone())),
    );
    let mut batch = None;
    shutdown
        .run_until_cancelled(heartbeat_loop(&agent, &shutdown, &mut batch))
        .await;
    // Both tasks stop at their next await point; waiting for them means the
    // journal is closed when `run` returns, so a caller may start again.
    if let Some(batch) = batch {
        batch.await.context("while stopping the instruction task")?;
    }
    reporter.await.context("while stopping the reporter")?;
    info!("tend-agent stopped");
    Ok(())
}

struct Agent {
    config: Config,
    client: Client,
    /// Never held across an await; appends are short (one fsync) and rare.
    journal: Mutex<Journal>,
    oplog: OpLog,
    boot_id: String,
    inventory: Value,
    /// Wakes the reporter when a final report was journaled.
    reports_waiting: Notify,
}

impl Agent {
    fn start(config: Config) -> anyhow::Result<Agent> {
        let journal = Journal::open(&config.state_dir).context("while opening the journal")?;
        let boot_id = system::boot_id(&config.boot_id_file)?;
        executor::clear_output_dir(&executor::output_dir(&config.state_dir));
        for (name, path) in &config.log_sources {
            if !path.exists() {
                debug!(log_source = %name, path = %path.display(), "log source {name} does not exist yet");
            }
        }
        let agent = Agent {
            client: Client::new(&config).context("while building the HTTP client")?,
            oplog: OpLog::new(&config.state_dir),
            journal: Mutex::new(journal),
            boot_id,
            inventory: system::inventory(),
            reports_waiting: Notify::new(),
            config,
        };
        agent.recover()?;
        Ok(agent)
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        // Appends update memory only after the file, so the journal is
        // consistent even if a holder panicked.
        self.journal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides every action that was under way when the agent last stopped.
    fn recover(&self) -> anyhow::Result<()> {
        let unfinished: Vec<Entry> = self
            .journal()
            .entries()
            .filter(|e| matches!(e.state, State::Started | State::ActionReturned))
            .cloned()
            .collect();
        for entry in unfinished {
            let report = match Action::of(&entry.kind) {
                Some(action) => outcome::after_restart(action, &entry.boot_id, &self.boot_id),
                None => outcome::interrupted(),
            };
            info!(
                instruction.id = %entry.id,
                "instruction {} ({}) was under way before this start: {}",
                entry.id,
                entry.kind,
                report.status.as_status()
            );
            let elapsed = (Utc::now() - entry.started_at).to_std().ok();
            self.finish(&entry, report, elapsed)
                .context("while recording the outcome of an interrupted instruction")?;
        }
        Ok(())
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            agent_version: AGENT_VERSION.to_owned(),
            boot_id: Some(self.boot_id.clone()),
            uptime_s: system::uptime_s(),
            inventory: Some(self.inventory.clone()),
        }
    }

    async fn handle_batch(self: Arc<Self>, instructions: Vec<Instruction>) {
        for instruction in instructions {
            self.handle(instruction).await;
        }
    }

    async fn handle(&self, instruction: Instruction) {
        let known = self.journal().get(instruction.id).cloned();
        match (known, Action::of(&instruction.kind)) {
            (Some(entry), _) => self.handle_again(entry).await,
            (None, Some(action)) => self.perform(action, instruction).await,
            (None, None) => self.reject(instruction),
        }
    }

    /// The server delivered an id it already gave us: our report did not
    /// reach it. Never run it again; say again what we last decided.
    async fn handle_again(&self, entry: Entry) {
        let id = entry.id;
        if entry.state == State::Finished {
            debug!(instruction.id = %id, "instruction {id} delivered again; its final report is queued");
            self.reports_waiting.notify_one();
            return;
        }
        info!(
            instruction.id = %id,
            "instruction {id} delivered again; not running it twice, resending its last report ({})",
            entry.report.status.as_status()
        );
        if let Delivery::Refused(status) = self.client.report_until_settled(id, &entry.report).await
        {
            warn!(instruction.id = %id, "the server refused the report for instruction {id} with {status}");
        }
    }

    async fn perform(&self, action: Action, instruction: Instruction) {
        let id = instruction.id;
        let now = Utc::now();
        let entry = Entry {
            id,
            kind: instruction.kind,
            params: instruction.params,
            state: State::Started,
            boot_id: self.boot_id.clone(),
            started_at: now,
            at: now,
            report: Report::status(ReportStatus::InProgress),
            exit_code: None,
        };
        if let Err(e) = self.journal().append(entry.clone()) {
            error!(instruction.id = %id, "cannot journal instruction {id}, so not running it: {:#}", anyhow::Error::from(e));
            return;
        }
        info!(instruction.id = %id, "instruction {id}: {} started", entry.kind);

        if let Delivery::Refused(status) = self.client.report_until_settled(id, &entry.report).await
        {
            warn!(instruction.id = %id, "the server refused in_progress for instruction {id} with {status}; not running it");
            self.finish_or_log(&entry, outcome::not_performed(status.as_u16()), None);
            return;
        }

        let argv = action.argv(&self.config.actions);
        let timeout = Duration::from_secs(instruction.timeout_s.max(1).into());
        let output_dir = executor::output_dir(&self.config.state_dir);
        let result = executor::run(argv, id, &output_dir, timeout).await;
        let entry = Entry {
            exit_code: match result.end {
                End::Exited(status) => status.code(),
                _ => None,
            },
            ..entry
        };
        match outcome::after_return(action, argv, &result) {
            Verdict::AwaitRestart => {
                let returned =
                    entry.advance(State::ActionReturned, entry.report.clone(), Utc::now());
                if let Err(e) = self.journal().append(returned.clone()) {
                    // Still `started` in the journal: the next start decides
                    // it from the boot id all the same.
                    warn!(instruction.id = %id, "cannot journal the return of instruction {id}: {:#}", anyhow::Error::from(e));
                }
                self.log_operation(&returned, Some(result.duration));
                info!(instruction.id = %id, "instruction {id}: the reboot command returned; waiting for the machine to go down");
            }
            Verdict::Final(report) => self.finish_or_log(&entry, report, Some(result.duration)),
        }
    }

    fn reject(&self, instruction: Instruction) {
        let now = Utc::now();
        let entry = Entry {
            id: instruction.id,
            report: outcome::unsupported(&instruction.kind),
            kind: instruction.kind,
            params: instruction.params,
            state: State::Finished,
            boot_id: self.boot_id.clone(),
            started_at: now,
            at: now,
            exit_code: None,
        };
        info!(instruction.id = %entry.id, "instruction {}: {} is not supported; rejecting it", entry.id, entry.kind);
        self.finish_or_log(&entry, entry.report.clone(), None);
    }

    /// Journals the final report of `entry`, logs the operation and wakes
    /// the reporter.
    fn finish(
        &self,
        entry: &Entry,
        report: Report,
        duration: Option<Duration>,
    ) -> Result<(), JournalError> {
        let finished = entry.advance(State::Finished, report, Utc::now());
        self.journal().append(finished.clone())?;
        self.log_operation(&finished, duration);
        self.reports_waiting.notify_one();
        Ok(())
    }

    fn finish_or_log(&self, entry: &Entry, report: Report, duration: Option<Duration>) {
        if let Err(e) = self.finish(entry, report, duration) {
            error!(instruction.id = %entry.id, "cannot journal the outcome of instruction {}: {:#}", entry.id, anyhow::Error::from(e));
        }
    }

    fn log_operation(&self, entry: &Entry, duration: Option<Duration>) {
        let operation = Operation {
            at: entry.at,
            instruction_id: entry.id,
            kind: &entry.kind,
            params: &entry.params,
            outcome: entry.report.status.as_status().as_str(),
            duration_ms: duration.map(|d| d.as_millis() as u64),
            error: entry.report.error.as_deref(),
        };
        if let Err(e) = self.oplog.append(&operation) {
            warn!(instruction.id = %entry.id, "cannot write the operation log: {e}");
        }
    }
}

async fn heartbeat_loop(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    batch: &mut Option<JoinHandle<Option<()>>>,
) {
    let mut backoff = Backoff::default();
    loop {
        let delay = match agent.client.heartbeat(&agent.heartbeat()).await {
            Ok(answer) => {
                backoff.reset();
                debug!(
                    pending = answer.pending,
                    next_heartbeat_s = answer.next_heartbeat_s,
                    "heartbeat sent"
                );
                if answer.pending {
                    fetch(agent, shutdown, batch).await;
                }
                jittered(answer.next_heartbeat_s)
            }
            Err(e) => {
                let delay = backoff.next_delay();
                let retry_in_ms = delay.as_millis() as u64;
                match e {
                    ClientError::AuthRefused => error!(
                        retry_in_ms,
                        "heartbeat failed: {e} (wrong device_id or secret, or the device was decommissioned)"
                    ),
                    _ => warn!(retry_in_ms, "heartbeat failed: {e}"),
                }
                delay
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// Fetches pending instructions unless the previous batch is still being
/// handled; its instructions come back in the next fetch if still pending.
async fn fetch(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    batch: &mut Option<JoinHandle<Option<()>>>,
) {
    if batch.as_ref().is_some_and(|b| !b.is_finished()) {
        debug!("instructions pending; the previous ones are still being handled");
        return;
    }
    match agent.client.instructions().await {
        Ok(instructions) if instructions.is_empty() => {}
        Ok(instructions) => {
            debug!(count = instructions.len(), "fetched instructions");
            *batch =
                Some(tokio::spawn(shutdown.clone().run_until_cancelled_owned(
                    agent.clone().handle_batch(instructions),
                )));
        }
        Err(e) => warn!("cannot fetch instructions: {e}"),
    }
}

/// Sends every journaled final report until the server settles it, then
/// marks it `reported`.
async fn deliver_reports(agent: Arc<Agent>) {
    loop {
        let mut waiting: Vec<Entry> = agent
            .journal()
            .entries()
            .filter(|e| e.state == State::Finished)
            .cloned()
            .collect();
        if waiting.is_empty() {
            agent.reports_waiting.notified().await;
            continue;
        }
        waiting.sort_by_key(|e| e.at);
        for entry in waiting {
            let id = entry.id;
            match agent.client.report_until_settled(id, &entry.report).await {
                Delivery::Accepted => {
                    info!(instruction.id = %id, "instruction {id}: reported {}", entry.report.status.as_status())
                }
                Delivery::Refused(status) => warn!(
                    instruction.id = %id,
                    "the server refused the final report for instruction {id} with {status}; not sending it again"
                ),
            }
            let reported = entry.advance(State::Reported, entry.report.clone(), Utc::now());
            let appended = agent.journal().append(reported);
            if let Err(e) = appended {
                // The report stays `finished` and is sent again; waiting
                // keeps a broken disk from turning that into a busy loop.
                error!(instruction.id = %id, "cannot journal that instruction {id} was reported: {:#}", anyhow::Error::from(e));
                tokio::time::sleep(backoff::CAP).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::json;
    use tempfile::TempDir;
    use uuid::Uuid;
    use wiremock::matchers::{method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    struct Device {
        dir: TempDir,
    }

    impl Device {
        fn new(boot_id: &str) -> Device {
            let device = Device {
                dir: tempfile::tempdir().unwrap(),
            };
            device.set_boot_id(boot_id);
            device
        }

        fn set_boot_id(&self, boot_id: &str) {
            std::fs::write(self.dir.path().join("boot_id"), format!("{boot_id}\n")).unwrap();
        }

        fn state_dir(&self) -> PathBuf {
            self.dir.path().join("state")
        }

        fn counter(&self) -> PathBuf {
            self.dir.path().join("ran")
        }

        /// How many times an action ran: each run appends one line.
        fn runs(&self) -> usize {
            std::fs::read_to_string(self.counter())
                .map(|t| t.lines().count())
                .unwrap_or(0)
        }

        fn config(&self, server: &str) -> Config {
            let action = format!(
                "[\"sh\", \"-c\", \"echo $TEND_INSTRUCTION_ID >> {}\"]",
                self.counter().display()
            );
            Config::from_toml_str(&format!(
                "server_url = \"{server}\"\ndevice_id = \"{}\"\ndevice_secret = \"s\"\n\
                 state_dir = {:?}\nboot_id_file = {:?}\n\
                 [actions]\nreboot = {action}\nshutdown = {action}\n",
                Uuid::new_v4(),
                self.state_dir().display().to_string(),
                self.dir.path().join("boot_id").display().to_string(),
            ))
            .unwrap()
        }

        fn journal(&self) -> Journal {
            Journal::open(&self.state_dir()).unwrap()
        }

        fn operations(&self) -> Vec<Value> {
            std::fs::read_to_string(self.state_dir().join(crate::oplog::FILE_NAME))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn instruction(kind: &str) -> Instruction {
        Instruction {
            id: Uuid::new_v4(),
            kind: kind.into(),
            params: json!({}),
            issued_at: Utc::now(),
            expires_at: Utc::now(),
            timeout_s: 30,
            trace_id: None,
        }
    }

    /// A sync server that accepts everything and has nothing pending.
    async fn accepting_server() -> MockServer {
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

    /// The reports the server received, as (instruction id, status).
    async fn reports(server: &MockServer) -> Vec<(String, String)> {
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path().ends_with("/report"))
            .map(|r| {
                let id = r.url.path().split('/').nth(4).unwrap().to_owned();
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                (id, body["status"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    fn write_journal(state_dir: &Path, entries: &[Entry]) {
        let mut journal = Journal::open(state_dir).unwrap();
        for entry in entries {
            journal.append(entry.clone()).unwrap();
        }
    }

    fn started(kind: &str, boot_id: &str) -> Entry {
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
        }
    }

    #[tokio::test]
    async fn an_instruction_delivered_twice_is_executed_once_even_across_restarts() {
        let server = accepting_server().await;
        let device = Device::new("boot-1");
        let shutdown = instruction("shutdown");

        let agent = Arc::new(Agent::start(device.config(&server.uri())).unwrap());
        agent
            .clone()
            .handle_batch(vec![shutdown.clone(), shutdown.clone()])
            .await;
        agent.handle(shutdown.clone()).await;
        assert_eq!(device.runs(), 1);
        drop(agent);

        let agent = Arc::new(Agent::start(device.config(&server.uri())).unwrap());
        agent.handle(shutdown.clone()).await;
        assert_eq!(device.runs(), 1);
        assert_eq!(
            std::fs::read_to_string(device.counter()).unwrap().trim(),
            shutdown.id.to_string(),
            "the action saw its instruction id"
        );
        let entry = agent.journal().get(shutdown.id).cloned().unwrap();
        assert_eq!(entry.state, State::Finished);
        assert_eq!(entry.report.status, ReportStatus::Succeeded);
        assert_eq!(entry.exit_code, Some(0));
        assert_eq!(
            reports(&server).await,
            [(shutdown.id.to_string(), "in_progress".to_owned())],
            "in_progress before the action; the final report is the reporter's"
        );
    }

    #[tokio::test]
    async fn a_reboot_that_changed_the_boot_id_succeeded_and_one_that_did_not_failed() {
        let device = Device::new("boot-2");
        let rebooted = started("reboot", "boot-1");
        let not_rebooted = Entry {
            state: State::ActionReturned,
            exit_code: Some(0),
            ..started("reboot", "boot-2")
        };
        write_journal(
            &device.state_dir(),
            &[rebooted.clone(), not_rebooted.clone()],
        );

        let agent = Agent::start(device.config("http://127.0.0.1:9")).unwrap();
        let journal = agent.journal();
        let decided = journal.get(rebooted.id).unwrap();
        assert_eq!(decided.state, State::Finished);
        assert_eq!(decided.report.status, ReportStatus::Succeeded);
        let decided = journal.get(not_rebooted.id).unwrap();
        assert_eq!(decided.report.status, ReportStatus::Failed);
        assert_eq!(device.runs(), 0, "a failed reboot is never retried");
        let mut logged: Vec<(String, String)> = device
            .operations()
            .iter()
            .map(|op| {
                (
                    op["instruction_id"].as_str().unwrap().to_owned(),
                    op["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        logged.sort();
        let mut expected = vec![
            (rebooted.id.to_string(), "succeeded".to_owned()),
            (not_rebooted.id.to_string(), "failed".to_owned()),
        ];
        expected.sort();
        assert_eq!(logged, expected, "each decision is in the operation log");
    }

    #[tokio::test]
    async fn a_shutdown_cut_short_by_the_machine_succeeded_and_one_cut_short_by_the_agent_failed() {
        let device = Device::new("boot-2");
        let powered_off = started("shutdown", "boot-1");
        let agent_killed = started("shutdown", "boot-2");
        let settled = Entry {
            state: State::Reported,
            report: Report::status(ReportStatus::Succeeded),
            ..started("shutdown", "boot-2")
        };
        write_journal(
            &device.state_dir(),
            &[powered_off.clone(), agent_killed.clone(), settled.clone()],
        );

        let agent = Agent::start(device.config("http://127.0.0.1:9")).unwrap();
        let journal = agent.journal();
        assert_eq!(
            journal.get(powered_off.id).unwrap().report.status,
            ReportStatus::Succeeded
        );
        assert_eq!(
            journal.get(agent_killed.id).unwrap().report.status,
            ReportStatus::Failed
        );
        assert_eq!(
            journal.get(settled.id).unwrap(),
            &settled,
            "settled entries are left alone"
        );
    }

    #[tokio::test]
    async fn the_agent_reboots_once_rejects_what_it_cannot_do_and_proves_the_reboot_after_restart()
    {
        let server = accepting_server().await;
        let reboot = instruction("reboot");
        let log_query = instruction("log_query");
        Mock::given(method("POST"))
            .and(path("/device/v1/heartbeat"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"pending": true, "next_heartbeat_s": 1})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/device/v1/instructions"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"instructions": [reboot, log_query]})),
            )
            .mount(&server)
            .await;
        let device = Device::new("boot-1");

        let run_for = |duration: Duration| {
            let config = device.config(&server.uri());
            async move {
                let shutdown = CancellationToken::new();
                let agent = tokio::spawn(run(config, shutdown.clone()));
                tokio::time::sleep(duration).await;
                shutdown.cancel();
                tokio::time::timeout(Duration::from_secs(5), agent)
                    .await
                    .expect("the agent stops promptly")
                    .unwrap()
                    .unwrap();
            }
        };

        run_for(Duration::from_millis(2500)).await;
        assert_eq!(device.runs(), 1);
        let journal = device.journal();
        assert_eq!(journal.get(reboot.id).unwrap().state, State::ActionReturned);
        let rejected = journal.get(log_query.id).unwrap();
        assert_eq!(rejected.state, State::Reported);
        assert!(
            rejected
                .report
                .error
                .as_deref()
                .unwrap()
                .contains("does not support `log_query`")
        );
        drop(journal);

        device.set_boot_id("boot-2");
        run_for(Duration::from_millis(1500)).await;
        assert_eq!(device.runs(), 1, "never executed twice");
        let journal = device.journal();
        let proven = journal.get(reboot.id).unwrap();
        assert_eq!(proven.state, State::Reported);
        assert_eq!(proven.report.status, ReportStatus::Succeeded);

        let reboot_reports: Vec<String> = reports(&server)
            .await
            .into_iter()
            .filter(|(id, _)| *id == reboot.id.to_string())
            .map(|(_, status)| status)
            .collect();
        assert_eq!(
            reboot_reports.first().map(String::as_str),
            Some("in_progress")
        );
        assert_eq!(reboot_reports.last().map(String::as_str), Some("succeeded"));
        assert!(
            reports(&server)
                .await
                .contains(&(log_query.id.to_string(), "rejected".to_owned()))
        );

        let outcomes: Vec<String> = device
            .operations()
            .iter()
            .filter(|op| op["instruction_id"] == reboot.id.to_string())
            .map(|op| op["outcome"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(outcomes, ["in_progress", "succeeded"]);
    }
}
