//! The agent's life: recover from the last run, then heartbeat, fetch and
//! handle instructions, and deliver reports, until stopped.
//!
//! Three tasks share one [`Agent`]:
//! - the heartbeat loop ([`poll`]), which never waits for an action:
//!   it learns that work is pending and hands a fetched batch to a task of
//!   its own;
//! - that batch task ([`instruction`]), which handles the instructions of
//!   one fetch in order (at most one batch at a time, so a re-delivered id
//!   is always seen after its first delivery was journaled);
//! - the reporter ([`delivery`]), which sends the final reports kept in the
//!   journal until the server settles them, including those left by a
//!   previous run.
//!
//! This module starts them, and before that decides what became of the
//! instructions that were under way when the agent last stopped.

mod delivery;
mod instruction;
mod poll;
mod software;
#[cfg(test)]
mod testing;
mod update_check;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde_json::Value;
use tend_proto::device::Report;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::client::Client;
use crate::config::Config;
use crate::executor;
use crate::journal::{Entry, Journal, JournalError, State};
use crate::lock::{self, StateLock};
use crate::oplog::{OpLog, Operation};
use crate::outcome::{self, Action};
use crate::software::installed::Installed;
use crate::system::{self, AGENT_VERSION};

/// Whether `kind` changes software (a job that resumes after a restart).
fn is_software(kind: &str) -> bool {
    matches!(
        kind.parse(),
        Ok(tend_proto::CommandKind::Upgrade | tend_proto::CommandKind::Restore)
    )
}

/// How [`run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// `shutdown` was cancelled.
    Shutdown,
    /// The agent replaced its own binary (an upgrade, or the rollback of
    /// one) and must now run as this executable: the caller replaces the
    /// process with it.
    Restart(std::path::PathBuf),
}

/// Runs the agent until `shutdown` is cancelled, or until it must restart
/// as a new binary of itself.
///
/// Errors are returned only from startup (state directory and its lock,
/// journal, boot id); once running, the agent retries everything that
/// fails. An action's child process still running at shutdown is left
/// alone.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> anyhow::Result<Stopped> {
    // A device without an identity in its file enrols first (or reads the
    // identity it enrolled for before).
    if !crate::identity::establish(&mut config, &shutdown).await? {
        return Ok(Stopped::Shutdown);
    }
    let agent = Arc::new(Agent::start(config, shutdown.clone())?);
    info!(
        device.id = %agent.config.device_id,
        boot_id = %agent.boot_id,
        "tend-agent {AGENT_VERSION} started for device {}", agent.config.device_id
    );
    if let Some(warning) = crate::tls::plain_http_warning(&agent.config.server_url) {
        warn!("INSECURE: {warning}");
    }
    let trust = &agent.config.trust;
    if trust.accepts_unsigned() {
        warn!(
            "accept_unsigned = true: this agent runs instructions nobody signed; anyone who can \
             answer as the sync server can make it reboot, shut down, install or read logs"
        );
    }
    if !trust.key_ids().is_empty() {
        info!(
            "instructions must be signed by one of the keys {}",
            trust.key_ids().join(", ")
        );
    }
    let reporter = tokio::spawn(
        shutdown
            .clone()
            .run_until_cancelled_owned(delivery::deliver_reports(agent.clone())),
    );
    let update_checks = tokio::spawn(
        shutdown
            .clone()
            .run_until_cancelled_owned(update_check::update_check_loop(agent.clone())),
    );
    // Upgrades and restores cut short by the last stop go on first, in the
    // batch slot, so nothing else is fetched until they are decided.
    let resumable = std::mem::take(
        &mut *agent
            .resumable
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let mut batch = (!resumable.is_empty()).then(|| {
        let agent = agent.clone();
        tokio::spawn(shutdown.clone().run_until_cancelled_owned(async move {
            for entry in resumable {
                agent.resume_job(entry).await;
            }
        }))
    });
    let peers = [
        // A component found broken with no backup is restored from a peer
        // (outside the batch slot: other instructions need not wait for
        // the health checks; changes of software take turns on a lock).
        tokio::spawn(shutdown.clone().run_until_cancelled_owned({
            let agent = agent.clone();
            async move {
                agent
                    .recover_broken("found broken when the agent started")
                    .await
            }
        })),
        tokio::spawn(
            shutdown
                .clone()
                .run_until_cancelled_owned(software::remember_device_type(agent.clone())),
        ),
        tokio::spawn(
            shutdown
                .clone()
                .run_until_cancelled_owned(software::serve_peers(agent.clone())),
        ),
        tokio::spawn(
            shutdown
                .clone()
                .run_until_cancelled_owned(software::offline_watch(agent.clone())),
        ),
    ];
    shutdown
        .run_until_cancelled(poll::heartbeat_loop(&agent, &shutdown, &mut batch))
        .await;
    // Both tasks stop at their next await point; waiting for them means the
    // journal is closed and the state_dir lock released when `run`
    // returns, so a caller may start again.
    if let Some(batch) = batch {
        batch.await.context("while stopping the instruction task")?;
    }
    reporter.await.context("while stopping the reporter")?;
    for task in peers {
        task.await.context("while stopping peer recovery")?;
    }
    update_checks
        .await
        .context("while stopping the update checks")?;
    let restart = agent
        .restart
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    Ok(match restart {
        Some(exe) => {
            info!("tend-agent stopped to restart as {}", exe.display());
            Stopped::Restart(exe)
        }
        None => {
            info!("tend-agent stopped");
            Stopped::Shutdown
        }
    })
}

/// What `tend-agent --prove` does: authenticates and sends one heartbeat
/// with `config`, touching no state. A new binary of the agent must pass
/// this before it replaces the running one.
pub async fn prove(config: &Config) -> anyhow::Result<()> {
    // An enrolled device proves itself with the identity it stored; a
    // proof never enrols.
    let mut config = config.clone();
    if config.device_id.is_nil()
        && let Some(identity) = crate::identity::load(&config.state_dir)?
    {
        config.device_id = identity.device_id;
        config.device_secret = identity.secret;
    }
    let config = &config;
    let client = Client::new(config).context("while building the HTTP client")?;
    let heartbeat = tend_proto::device::Heartbeat {
        agent_version: AGENT_VERSION.to_owned(),
        ..Default::default()
    };
    client
        .heartbeat(&heartbeat)
        .await
        .context("the proving heartbeat failed")?;
    Ok(())
}

/// What the heartbeat loop, the batch task and the reporter share.
struct Agent {
    config: Config,
    /// Shared with the tasks that send progress reports.
    client: Arc<Client>,
    /// Never held across an await; appends are short (one fsync) and rare.
    journal: Mutex<Journal>,
    oplog: OpLog,
    boot_id: String,
    inventory: Value,
    /// Wakes the reporter when a final report was journaled.
    reports_waiting: Notify,
    /// Wakes the heartbeat loop when an update check queued work.
    work_pending: Notify,
    /// Counts heartbeats the server answered: a new agent binary proves
    /// itself by getting one.
    heartbeats: tokio::sync::watch::Sender<u64>,
    /// This agent's executable (and its inode when the agent started): the
    /// agent's own upgrade replaces it.
    exe: Option<(std::path::PathBuf, u64)>,
    /// Set when the agent must restart as a new binary of itself.
    restart: Mutex<Option<std::path::PathBuf>>,
    /// What the agent installed (`state_dir/software/installed.json`).
    installed: Mutex<Installed>,
    /// Upgrades and restores that were under way at the last stop, taken
    /// up again by [`run`] once the agent is running.
    resumable: Mutex<Vec<Entry>>,
    /// Held by each upgrade or restore while it runs: one at a time,
    /// whether an instruction or the agent itself started it.
    software: tokio::sync::Mutex<()>,
    /// Since when heartbeats have been failing without a success between
    /// (`None` while the server answers). A long-poll held by the server
    /// is not an outage, so this is not the time since the last answer.
    offline_since: Mutex<Option<std::time::Instant>>,
    /// Held while the agent looks for broken components, so the startup
    /// check and the offline watch never recover one component twice.
    recovering: tokio::sync::Mutex<()>,
    /// Cancelled at shutdown; a running log query watches it from its
    /// blocking thread.
    shutdown: CancellationToken,
    /// Held for the agent's whole life; see [`lock`].
    _lock: StateLock,
}

impl Agent {
    fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Agent> {
        crate::private::tighten(&config.state_dir)
            .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
        // First of all: with a second agent on the same state_dir, even
        // reading the journal could lead to running a command twice.
        let state_lock = lock::acquire(&config.state_dir)?;
        let journal = Journal::open(&config.state_dir).context("while opening the journal")?;
        let boot_id = system::boot_id(&config.boot_id_file)?;
        executor::clear_output_dir(&executor::output_dir(&config.state_dir));
        for (name, path) in &config.log_query.sources {
            if !path.exists() {
                debug!(log_source = %name, path = %path.display(), "log source {name} does not exist yet");
            }
        }
        let agent = Agent {
            client: Arc::new(Client::new(&config).context("while building the HTTP client")?),
            installed: Mutex::new(Installed::load(&config.state_dir.join("software"))),
            resumable: Mutex::new(Vec::new()),
            software: tokio::sync::Mutex::new(()),
            offline_since: Mutex::new(None),
            recovering: tokio::sync::Mutex::new(()),
            oplog: OpLog::new(&config.state_dir, config.operations_log),
            journal: Mutex::new(journal),
            boot_id,
            inventory: system::inventory(),
            reports_waiting: Notify::new(),
            work_pending: Notify::new(),
            heartbeats: tokio::sync::watch::Sender::new(0),
            exe: std::env::current_exe().ok().and_then(|exe| {
                let inode = crate::software::fs::inode(&exe).ok()?;
                Some((exe, inode))
            }),
            restart: Mutex::new(None),
            shutdown,
            _lock: state_lock,
            config,
        };
        agent.recover()?;
        agent.load_device_type();
        Ok(agent)
    }

    fn link_up(&self) {
        *self
            .offline_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn link_down(&self) {
        self.offline_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(std::time::Instant::now);
    }

    /// How long heartbeats have been failing (zero while they succeed).
    fn offline_for(&self) -> Duration {
        self.offline_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|since| since.elapsed())
            .unwrap_or_default()
    }

    fn installed(&self) -> MutexGuard<'_, Installed> {
        self.installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        // Appends update memory only after the file, so the journal is
        // consistent even if a holder panicked.
        self.journal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides every instruction that was under way when the agent last
    /// stopped.
    fn recover(&self) -> anyhow::Result<()> {
        let unfinished: Vec<Entry> = self
            .journal()
            .entries()
            .filter(|e| {
                matches!(
                    e.state,
                    State::Started | State::Running | State::ActionReturned
                )
            })
            .cloned()
            .collect();
        for entry in unfinished {
            if is_software(&entry.kind) {
                // Taken up again once the agent runs: see `software`.
                self.resumable
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(entry);
                continue;
            }
            let report = match (Action::of(&entry.kind), entry.state) {
                // Journaled, never spawned: the boot id says nothing about
                // an action that did not run. Older agents did not write
                // `running`, so their `started` is judged by the boot id.
                (Some(_), State::Started) if entry.format >= 2 => outcome::never_spawned(),
                (Some(action), _) => outcome::after_restart(action, &entry.boot_id, &self.boot_id),
                (None, _) => outcome::interrupted(),
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

    /// Records `entry` in the operation log; a log query's output is not
    /// (the report carries it).
    fn log_operation(&self, entry: &Entry, duration: Option<Duration>) {
        let operation = Operation {
            at: entry.at,
            instruction_id: entry.id,
            kind: &entry.kind,
            params: &entry.params,
            outcome: entry.report.status.as_status().as_str(),
            duration_ms: duration.map(|d| d.as_millis() as u64),
            error: entry.report.error.as_deref(),
            step: None,
            detail: entry.report.detail.as_ref().filter(|_| entry.job.is_some()),
        };
        if let Err(e) = self.oplog.append(&operation) {
            warn!(instruction.id = %entry.id, "cannot write the operation log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tend_proto::command::ReportStatus;
    use tend_proto::device::Instruction;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};

    use super::testing::*;
    use super::*;

    #[tokio::test]
    async fn a_reboot_that_changed_the_boot_id_succeeded_and_one_that_did_not_failed() {
        let device = Device::new("boot-2");
        let rebooted = running("reboot", "boot-1");
        let not_rebooted = Entry {
            state: State::ActionReturned,
            exit_code: Some(0),
            ..started("reboot", "boot-2")
        };
        write_journal(
            &device.state_dir(),
            &[rebooted.clone(), not_rebooted.clone()],
        );

        let agent = Agent::start(
            device.config("http://127.0.0.1:9"),
            CancellationToken::new(),
        )
        .unwrap();
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
        let powered_off = running("shutdown", "boot-1");
        let agent_killed = running("shutdown", "boot-2");
        let settled = Entry {
            state: State::Reported,
            report: Report::status(ReportStatus::Succeeded),
            ..started("shutdown", "boot-2")
        };
        write_journal(
            &device.state_dir(),
            &[powered_off.clone(), agent_killed.clone(), settled.clone()],
        );

        let agent = Agent::start(
            device.config("http://127.0.0.1:9"),
            CancellationToken::new(),
        )
        .unwrap();
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
    async fn the_agent_reboots_once_answers_a_log_query_rejects_what_it_cannot_do_and_proves_the_reboot_after_restart()
     {
        let server = accepting_server().await;
        let reboot = instruction("reboot");
        let log_query = Instruction {
            params: json!({"source": "app", "pattern": "ERROR"}),
            ..instruction("log_query")
        };
        // A kind from a newer server: refused, never guessed at.
        let unknown = instruction("format_disk");
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
                    .set_body_json(json!({"instructions": [reboot, log_query, unknown]})),
            )
            .mount(&server)
            .await;
        let device = Device::new("boot-1");
        // 200 error records of two lines each, between ordinary lines: an
        // output over 8 KiB, so the report travels compressed.
        let mut log = String::from("2026-11-21T09:59:59Z INFO started\n");
        let mut expected_output = String::new();
        for i in 0..200 {
            let record = format!(
                "2026-11-21T10:{:02}:{:02}Z ERROR request {i} failed\n  at handler\n",
                i / 60,
                i % 60
            );
            log.push_str(&record);
            log.push_str(&format!(
                "2026-11-21T10:{:02}:{:02}Z INFO ok\n",
                i / 60,
                i % 60
            ));
            expected_output.push_str(&record);
        }
        std::fs::write(device.app_log(), log).unwrap();

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
        let rejected = journal.get(unknown.id).unwrap();
        assert_eq!(rejected.state, State::Reported);
        assert!(
            rejected
                .report
                .error
                .as_deref()
                .unwrap()
                .contains("does not support `format_disk`")
        );
        let answered = journal.get(log_query.id).unwrap();
        assert_eq!(answered.state, State::Reported);
        assert_eq!(answered.report.status, ReportStatus::Succeeded);
        assert_eq!(
            answered.report.output, None,
            "the server has the output; the journal does not keep it"
        );
        drop(journal);

        let (_, query_report) = report_bodies(&server)
            .await
            .into_iter()
            .find(|(id, _)| *id == log_query.id.to_string())
            .expect("the log query was reported");
        assert_eq!(query_report["status"], "succeeded");
        assert_eq!(query_report["output"], expected_output);
        assert_eq!(
            query_report["detail"],
            json!({
                "matched": 400,
                "returned": 400,
                "truncated": false,
                "bytes": expected_output.len(),
                "files": ["app.log"],
            })
        );
        let compressed = server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.url.path().contains(&log_query.id.to_string()))
            .unwrap();
        assert_eq!(compressed.headers["content-encoding"], "gzip");

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
        let all = reports(&server).await;
        assert!(all.contains(&(unknown.id.to_string(), "rejected".to_owned())));
        let query_statuses: Vec<&str> = all
            .iter()
            .filter(|(id, _)| *id == log_query.id.to_string())
            .map(|(_, status)| status.as_str())
            .collect();
        assert!(
            query_statuses.iter().all(|s| *s == "succeeded"),
            "no in_progress for a query (the mock server delivers it again and again; \
             the agent only repeats its report): {query_statuses:?}"
        );

        let operations = device.operations();
        let outcomes: Vec<&str> = operations
            .iter()
            .filter(|op| op["instruction_id"] == reboot.id.to_string())
            .map(|op| op["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["in_progress", "succeeded"]);
        let query_op = operations
            .iter()
            .find(|op| op["instruction_id"] == log_query.id.to_string())
            .unwrap();
        assert_eq!(query_op["kind"], "log_query");
        assert_eq!(query_op["outcome"], "succeeded");
        assert_eq!(query_op["params"]["pattern"], "ERROR");
        assert!(query_op.get("output").is_none() && query_op.get("duration_ms").is_some());
    }

    #[tokio::test]
    async fn a_started_entry_of_an_older_agent_is_still_judged_by_the_boot_id() {
        let device = Device::new("boot-2");
        let legacy = Entry {
            format: 1,
            ..started("reboot", "boot-1")
        };
        let legacy_shutdown = Entry {
            format: 1,
            ..started("shutdown", "boot-2")
        };
        write_journal(
            &device.state_dir(),
            &[legacy.clone(), legacy_shutdown.clone()],
        );
        let agent = device.agent("http://127.0.0.1:9");
        let journal = agent.journal();
        assert_eq!(
            journal.get(legacy.id).unwrap().report.status,
            ReportStatus::Succeeded,
            "it may have run, and the boot id changed"
        );
        let same_boot = journal.get(legacy_shutdown.id).unwrap();
        assert_eq!(same_boot.report.status, ReportStatus::Failed);
        assert!(
            same_boot
                .report
                .error
                .as_deref()
                .unwrap()
                .contains("did not go down")
        );
    }

    #[tokio::test]
    async fn a_second_agent_on_the_same_state_dir_does_not_start() {
        let device = Device::new("boot-1");
        let first = device.agent("http://127.0.0.1:9");
        let Err(e) = Agent::start(
            device.config("http://127.0.0.1:9"),
            CancellationToken::new(),
        ) else {
            panic!("two agents on one state_dir");
        };
        let message = format!("{e:#}");
        assert!(
            message.contains("another tend-agent is already running"),
            "{message}"
        );
        drop(first);
        device.agent("http://127.0.0.1:9");
    }
}
