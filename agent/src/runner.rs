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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use reqwest::StatusCode;
use serde_json::Value;
use tend_proto::CommandKind;
use tend_proto::command::ReportStatus;
use tend_proto::device::{Heartbeat, Instruction, Report};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};
use uuid::Uuid;

use crate::backoff::{Backoff, jittered};
use crate::client::{Client, ClientError, Delivery};
use crate::config::Config;
use crate::executor::{self, End};
use crate::fault;
use crate::journal::{self, Entry, Journal, JournalError, State};
use crate::lock::{self, StateLock};
use crate::logquery::{self, QueryError};
use crate::oplog::{OpLog, Operation};
use crate::outcome::{self, Action, Verdict};
use crate::system::{self, AGENT_VERSION};

/// Runs the agent until `shutdown` is cancelled (then returns `Ok(())`).
///
/// Errors are returned only from startup (state directory and its lock,
/// journal, boot id); once running, the agent retries everything that
/// fails. An action's child process still running at shutdown is left
/// alone.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agent = Arc::new(Agent::start(config, shutdown.clone())?);
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
    // journal is closed and the state_dir lock released when `run`
    // returns, so a caller may start again.
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
    /// Cancelled at shutdown; a running log query watches it from its
    /// blocking thread.
    shutdown: CancellationToken,
    /// Held for the agent's whole life; see [`lock`].
    _lock: StateLock,
}

impl Agent {
    fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Agent> {
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
            client: Client::new(&config).context("while building the HTTP client")?,
            oplog: OpLog::new(&config.state_dir, config.operations_log),
            journal: Mutex::new(journal),
            boot_id,
            inventory: system::inventory(),
            reports_waiting: Notify::new(),
            shutdown,
            _lock: state_lock,
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

    /// A heartbeat; `wait_s` asks the server to hold it (long-poll).
    fn heartbeat(&self, wait_s: Option<u32>) -> Heartbeat {
        Heartbeat {
            agent_version: AGENT_VERSION.to_owned(),
            boot_id: Some(self.boot_id.clone()),
            uptime_s: system::uptime_s(),
            inventory: Some(self.inventory.clone()),
            wait_s,
        }
    }

    async fn handle_batch(self: Arc<Self>, instructions: Vec<Instruction>) {
        for instruction in instructions {
            self.handle(instruction).await;
        }
    }

    async fn handle(&self, instruction: Instruction) {
        // Every log line about this instruction carries its trace id, the
        // one the admin's request started and the services log too.
        let span = tracing::info_span!(
            "instruction",
            trace_id = instruction.trace_id.as_deref().unwrap_or("")
        );
        self.handle_traced(instruction).instrument(span).await
    }

    async fn handle_traced(&self, instruction: Instruction) {
        let known = self.journal().get(instruction.id).cloned();
        if let Some(entry) = known {
            return self.handle_again(entry).await;
        }
        match (instruction.known_kind(), Action::of(&instruction.kind)) {
            (Some(CommandKind::LogQuery), _) => self.query_logs(instruction).await,
            (_, Some(action)) => self.perform(action, instruction).await,
            _ => self.reject(instruction),
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
        if let Delivery::Refused(status) = self
            .client
            .report_until_settled(id, &entry.report, entry.trace_id.as_deref())
            .await
        {
            warn!(instruction.id = %id, "the server refused the report for instruction {id} with {status}");
        }
    }

    /// The journal entry of an instruction about to be handled.
    fn started(&self, instruction: Instruction) -> Entry {
        let now = Utc::now();
        Entry {
            id: instruction.id,
            kind: instruction.kind,
            params: instruction.params,
            state: State::Started,
            boot_id: self.boot_id.clone(),
            started_at: now,
            at: now,
            report: Report::status(ReportStatus::InProgress),
            exit_code: None,
            format: journal::FORMAT,
            trace_id: instruction
                .trace_id
                .filter(|t| tend_proto::device::is_trace_id(t)),
        }
    }

    async fn perform(&self, action: Action, instruction: Instruction) {
        let id = instruction.id;
        let timeout = Duration::from_secs(instruction.timeout_s.max(1).into());
        let entry = self.started(instruction);
        if let Err(e) = self.journal().append(entry.clone()) {
            error!(instruction.id = %id, "cannot journal instruction {id}, so not running it: {:#}", anyhow::Error::from(e));
            return;
        }
        info!(instruction.id = %id, "instruction {id}: {} started", entry.kind);
        fault::hit("after_journal", id);

        if let Delivery::Refused(status) = self
            .client
            .report_until_settled(id, &entry.report, entry.trace_id.as_deref())
            .await
        {
            warn!(instruction.id = %id, "the server refused in_progress for instruction {id} with {status}; not running it");
            self.finish_or_log(&entry, outcome::not_performed(status.as_u16()), None);
            return;
        }

        // The last record before the action can have effects: from here a
        // restart judges the instruction by the boot id.
        let entry = entry.advance(State::Running, entry.report.clone(), Utc::now());
        if let Err(e) = self.journal().append(entry.clone()) {
            let e = format!("{:#}", anyhow::Error::from(e));
            error!(instruction.id = %id, "cannot journal that instruction {id} runs, so not running it: {e}");
            self.finish_or_log(&entry, outcome::not_journaled(&e), None);
            return;
        }
        let argv = action.argv(&self.config.actions);
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
                    // Still `running` in the journal: the next start decides
                    // it from the boot id all the same.
                    warn!(instruction.id = %id, "cannot journal the return of instruction {id}: {:#}", anyhow::Error::from(e));
                }
                self.log_operation(&returned, Some(result.duration));
                info!(instruction.id = %id, "instruction {id}: the reboot command returned; waiting for the machine to go down");
            }
            Verdict::Final(report) => self.finish_or_log(&entry, report, Some(result.duration)),
        }
    }

    /// Runs a `log_query` on a blocking thread (it reads files; the runtime
    /// has one thread, which the heartbeat needs). It reads and has no
    /// effect, so it is not announced with `in_progress` first: the final
    /// report follows within the instruction's timeout.
    async fn query_logs(&self, instruction: Instruction) {
        let id = instruction.id;
        let timeout = Duration::from_secs(instruction.timeout_s.max(1).into());
        let entry = self.started(instruction);
        if let Err(e) = self.journal().append(entry.clone()) {
            error!(instruction.id = %id, "cannot journal instruction {id}, so not running it: {:#}", anyhow::Error::from(e));
            return;
        }
        let settings = self.config.log_query.clone();
        let params = entry.params.clone();
        let stop = logquery::Stop::new(timeout, self.shutdown.clone());
        let started = Instant::now();
        let result =
            tokio::task::spawn_blocking(move || logquery::run(&params, &settings, &stop)).await;
        let report = match result {
            Ok(Err(QueryError::Cancelled)) => {
                // Left `started`: the next start reports it interrupted.
                info!(instruction.id = %id, "instruction {id}: log query stopped by the shutdown");
                return;
            }
            Ok(result) => logquery::report(result),
            Err(e) => outcome::failed(&format!("the log query failed unexpectedly: {e}")),
        };
        match &report.detail {
            Some(detail) => info!(
                instruction.id = %id,
                "instruction {id}: log query returned {} of {} matching lines",
                detail["returned"], detail["matched"]
            ),
            None => info!(
                instruction.id = %id,
                "instruction {id}: log query {}: {}",
                report.status.as_status(),
                report.error.as_deref().unwrap_or_default()
            ),
        }
        self.finish_or_log(&entry, report, Some(started.elapsed()));
    }

    fn reject(&self, instruction: Instruction) {
        let report = outcome::unsupported(&instruction.kind);
        let entry = Entry {
            state: State::Finished,
            report: report.clone(),
            ..self.started(instruction)
        };
        info!(instruction.id = %entry.id, "instruction {}: {} is not supported; rejecting it", entry.id, entry.kind);
        self.finish_or_log(&entry, report, None);
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
        };
        if let Err(e) = self.oplog.append(&operation) {
            warn!(instruction.id = %entry.id, "cannot write the operation log: {e}");
        }
    }

    /// The final reports waiting for the server, oldest first.
    fn pending_reports(&self) -> Vec<Entry> {
        let mut pending: Vec<Entry> = self
            .journal()
            .entries()
            .filter(|e| e.state == State::Finished)
            .cloned()
            .collect();
        pending.sort_by_key(|e| (e.at, e.id));
        pending
    }
}

/// How long a long-polling agent waits for the batch it just fetched
/// before asking again while the server still says work is pending.
const LONG_POLL_PENDING_PAUSE: Duration = Duration::from_secs(1);

async fn heartbeat_loop(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    batch: &mut Option<JoinHandle<Option<()>>>,
) {
    let mut backoff = Backoff::default();
    // The server's interval, learnt from a plain heartbeat: long-polls ask
    // to be held that long, so the request rate stays that of polling.
    let mut interval_s: Option<u64> = None;
    loop {
        let wait_s = interval_s
            .filter(|_| agent.config.long_poll)
            .map(|s| u32::try_from(s).unwrap_or(u32::MAX));
        let delay = match agent.client.heartbeat(&agent.heartbeat(wait_s)).await {
            Ok(answer) => {
                backoff.reset();
                debug!(
                    pending = answer.pending,
                    next_heartbeat_s = answer.next_heartbeat_s,
                    "heartbeat sent"
                );
                if wait_s.is_none() {
                    interval_s = Some(answer.next_heartbeat_s);
                }
                if answer.pending {
                    fetch(agent, shutdown, batch).await;
                }
                match wait_s {
                    // Woken for work: once the batch is handled (its
                    // reports end "pending"), be held again at once. A batch
                    // still busy after a pause (a long log query) is asked
                    // about again then: the server answers a pending device
                    // without holding it, so this bounds that to one request
                    // per pause.
                    Some(_) if answer.pending => {
                        if let Some(running) = batch.as_mut().filter(|b| !b.is_finished())
                            && tokio::time::timeout(LONG_POLL_PENDING_PAUSE, running)
                                .await
                                .is_ok()
                        {
                            *batch = None;
                        }
                        Duration::ZERO
                    }
                    Some(_) => Duration::from_secs(answer.next_heartbeat_s),
                    // The first heartbeat only learnt the interval: start
                    // being held at once rather than after a whole interval.
                    None if agent.config.long_poll => Duration::ZERO,
                    None => jittered(answer.next_heartbeat_s),
                }
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
            fault::hit("after_fetch", Ids(&instructions));
            *batch =
                Some(tokio::spawn(shutdown.clone().run_until_cancelled_owned(
                    agent.clone().handle_batch(instructions),
                )));
        }
        Err(e) => warn!("cannot fetch instructions: {e}"),
    }
}

/// The ids of a batch, space-separated, for the fault points' message.
struct Ids<'a>(&'a [Instruction]);

impl std::fmt::Display for Ids<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, instruction) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}", instruction.id)?;
        }
        Ok(())
    }
}

/// After this many rounds in which the server answered a report with a
/// 5xx, the report is taken to be one the server cannot store (something
/// in its content trips it up), not a server that is down: it is still
/// retried, at the slowest pace, but no longer holds up the reporter. At
/// the default backoff, 20 rounds are about a quarter of an hour.
const STUCK_AFTER: u32 = 20;

/// What the reporter remembers about a report not yet settled.
#[derive(Debug, Default)]
struct Tries {
    server_errors: u32,
    /// For a stuck report: not before then.
    next_at: Option<Instant>,
}

impl Tries {
    fn stuck(&self) -> bool {
        self.server_errors >= STUCK_AFTER
    }
}

/// How a round of deliveries went.
#[derive(Debug, Default)]
struct Round {
    /// Reports that failed and are not stuck: the reason to back off.
    failed: usize,
    /// When the earliest stuck report is due again.
    next_stuck_at: Option<Instant>,
}

/// Sends every journaled final report until the server settles it, then
/// marks it `reported`.
///
/// Each round tries every pending report once, oldest first, so a report
/// the server keeps failing on never holds back the others; rounds with
/// failures are spaced by an exponential backoff, and a new report cuts
/// the wait short.
async fn deliver_reports(agent: Arc<Agent>) {
    let mut tries: HashMap<Uuid, Tries> = HashMap::new();
    let mut backoff = agent.client.retry.clone();
    loop {
        let pending = agent.pending_reports();
        tries.retain(|id, _| pending.iter().any(|e| e.id == *id));
        if pending.is_empty() {
            agent.reports_waiting.notified().await;
            continue;
        }
        let round = deliver_round(&agent, pending, &mut tries, backoff.cap()).await;
        let wait = if round.failed > 0 {
            backoff.next_delay()
        } else {
            backoff.reset();
            match round.next_stuck_at {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => continue,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = agent.reports_waiting.notified() => {}
        }
    }
}

/// Tries each pending report once (a stuck one only when it is due).
async fn deliver_round(
    agent: &Agent,
    pending: Vec<Entry>,
    tries: &mut HashMap<Uuid, Tries>,
    stuck_interval: Duration,
) -> Round {
    let mut round = Round::default();
    for entry in pending {
        let id = entry.id;
        let record = tries.entry(id).or_default();
        if record.stuck()
            && let Some(at) = record.next_at
            && at > Instant::now()
        {
            round.next_stuck_at = Some(round.next_stuck_at.map_or(at, |next| next.min(at)));
            continue;
        }
        fault::hit("before_report", id);
        match agent
            .client
            .report(id, &entry.report, entry.trace_id.as_deref())
            .await
        {
            Ok(Delivery::Refused(StatusCode::PAYLOAD_TOO_LARGE))
                if entry.report.output.is_some() =>
            {
                warn!(
                    instruction.id = %id,
                    "the server refused the report for instruction {id} as too large; reporting it failed without its output"
                );
                tries.remove(&id);
                let smaller = entry.advance(
                    State::Finished,
                    outcome::too_large(&entry.report),
                    Utc::now(),
                );
                let appended = agent.journal().append(smaller.clone());
                match appended {
                    // Not a failure: the next round sends it at once.
                    Ok(()) => agent.log_operation(&smaller, None),
                    Err(e) => {
                        error!(instruction.id = %id, "cannot journal the smaller report for instruction {id}: {:#}", anyhow::Error::from(e));
                        round.failed += 1;
                    }
                }
            }
            Ok(delivery) => {
                match delivery {
                    Delivery::Accepted => {
                        info!(instruction.id = %id, "instruction {id}: reported {}", entry.report.status.as_status())
                    }
                    Delivery::Refused(status) => warn!(
                        instruction.id = %id,
                        "the server refused the final report for instruction {id} with {status}; not sending it again"
                    ),
                }
                tries.remove(&id);
                let reported = entry.advance(State::Reported, settled(&entry.report), Utc::now());
                let appended = agent.journal().append(reported);
                if let Err(e) = appended {
                    // The report stays `finished` and is sent again (the
                    // server accepts an identical repeat); backing off
                    // keeps a broken disk from turning that into a busy
                    // loop.
                    error!(instruction.id = %id, "cannot journal that instruction {id} was reported: {:#}", anyhow::Error::from(e));
                    round.failed += 1;
                }
            }
            Err(e) => {
                if e.is_server_error() {
                    record.server_errors += 1;
                }
                if record.stuck() {
                    if record.server_errors == STUCK_AFTER {
                        error!(
                            instruction.id = %id,
                            "the server failed {STUCK_AFTER} times on the report for instruction {id}; \
                             still retrying it, without holding back other reports"
                        );
                    }
                    let at = Instant::now() + stuck_interval;
                    record.next_at = Some(at);
                    round.next_stuck_at = Some(round.next_stuck_at.map_or(at, |next| next.min(at)));
                } else {
                    round.failed += 1;
                }
                warn!(
                    instruction.id = %id,
                    server_errors = record.server_errors,
                    "report {} for instruction {id} not delivered: {e}",
                    entry.report.status.as_status()
                );
            }
        }
    }
    round
}

/// The report kept in the journal once the server has it: without the
/// output, which the server stores, and which would otherwise sit in the
/// journal (read and rewritten at every start) for the whole retention
/// period. A log query's output can be a megabyte.
fn settled(report: &Report) -> Report {
    Report {
        status: report.status,
        output: None,
        error: report.error.clone(),
        detail: report.detail.clone(),
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
                 [actions]\nreboot = {action}\nshutdown = {action}\n\
                 [log_sources]\napp = {:?}\n",
                Uuid::new_v4(),
                self.state_dir().display().to_string(),
                self.dir.path().join("boot_id").display().to_string(),
                self.app_log().display().to_string(),
            ))
            .unwrap()
        }

        fn app_log(&self) -> PathBuf {
            self.dir.path().join("app.log")
        }

        /// The agent as `run` builds it, with retries in milliseconds.
        fn agent(&self, server: &str) -> Agent {
            let mut agent = Agent::start(self.config(server), CancellationToken::new()).unwrap();
            agent.client.retry = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
            agent
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

    /// The reports the server received, as (instruction id, body), the
    /// body decompressed when it came gzip-encoded.
    async fn report_bodies(server: &MockServer) -> Vec<(String, Value)> {
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
    async fn reports(server: &MockServer) -> Vec<(String, String)> {
        report_bodies(server)
            .await
            .into_iter()
            .map(|(id, body)| (id, body["status"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// The states an instruction went through, from the journal file as
    /// appended (before the next start compacts it).
    fn journaled_states(state_dir: &Path, id: Uuid) -> Vec<State> {
        std::fs::read_to_string(state_dir.join(journal::FILE_NAME))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Entry>(l).unwrap())
            .filter(|e| e.id == id)
            .map(|e| e.state)
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
            format: journal::FORMAT,
            trace_id: None,
        }
    }

    fn running(kind: &str, boot_id: &str) -> Entry {
        Entry {
            state: State::Running,
            ..started(kind, boot_id)
        }
    }

    #[tokio::test]
    async fn an_instruction_delivered_twice_is_executed_once_even_across_restarts() {
        let server = accepting_server().await;
        let device = Device::new("boot-1");
        let shutdown = instruction("shutdown");

        let agent =
            Arc::new(Agent::start(device.config(&server.uri()), CancellationToken::new()).unwrap());
        agent
            .clone()
            .handle_batch(vec![shutdown.clone(), shutdown.clone()])
            .await;
        agent.handle(shutdown.clone()).await;
        assert_eq!(device.runs(), 1);
        assert_eq!(
            journaled_states(&device.state_dir(), shutdown.id),
            [State::Started, State::Running, State::Finished],
            "`running` is journaled between in_progress and the action"
        );
        drop(agent);

        let agent =
            Arc::new(Agent::start(device.config(&server.uri()), CancellationToken::new()).unwrap());
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
        let restore = instruction("restore");
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
                    .set_body_json(json!({"instructions": [reboot, log_query, restore]})),
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
        let rejected = journal.get(restore.id).unwrap();
        assert_eq!(rejected.state, State::Reported);
        assert!(
            rejected
                .report
                .error
                .as_deref()
                .unwrap()
                .contains("does not support `restore`")
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
        assert!(all.contains(&(restore.id.to_string(), "rejected".to_owned())));
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
    async fn an_action_journaled_but_never_spawned_is_failed_as_not_performed_even_after_a_reboot()
    {
        // The server never accepts in_progress (unreachable, say): the
        // reboot waits, journaled `started`, and the machine is
        // power-cycled.
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/device/v1/auth"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"token": "t", "expires_in": 3600})),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path_regex("/report$"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let device = Device::new("boot-1");
        let reboot = instruction("reboot");
        let agent = device.agent(&server.uri());
        let waited = tokio::time::timeout(Duration::from_millis(300), agent.handle(reboot.clone()));
        assert!(waited.await.is_err(), "still retrying in_progress");
        drop(agent);
        assert_eq!(device.runs(), 0);
        assert_eq!(
            journaled_states(&device.state_dir(), reboot.id),
            [State::Started]
        );

        device.set_boot_id("boot-2");
        let agent = device.agent("http://127.0.0.1:9");
        let decided = agent.journal().get(reboot.id).cloned().unwrap();
        assert_eq!(decided.state, State::Finished);
        assert_eq!(decided.report.status, ReportStatus::Failed);
        assert!(
            decided
                .report
                .error
                .as_deref()
                .unwrap()
                .contains("not performed"),
            "{:?}",
            decided.report.error
        );
        assert_eq!(device.runs(), 0, "and it is not run late");
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

    #[tokio::test]
    async fn a_report_the_server_keeps_failing_on_does_not_hold_back_the_others() {
        let server = accepting_server().await;
        let device = Device::new("boot-1");
        let finished = |kind: &str| Entry {
            state: State::Finished,
            report: Report {
                output: Some(format!("{kind} output")),
                ..Report::status(ReportStatus::Succeeded)
            },
            ..started(kind, "boot-1")
        };
        let poison = finished("shutdown");
        let fine = Entry {
            at: poison.at + chrono::TimeDelta::seconds(1),
            ..finished("shutdown")
        };
        write_journal(&device.state_dir(), &[poison.clone(), fine.clone()]);
        Mock::given(method("POST"))
            .and(path(format!(
                "/device/v1/instructions/{}/report",
                poison.id
            )))
            .respond_with(ResponseTemplate::new(500))
            .with_priority(1)
            .mount(&server)
            .await;
        let agent = Arc::new(device.agent(&server.uri()));
        let mut tries = HashMap::new();
        let interval = Duration::from_millis(50);

        let round = deliver_round(&agent, agent.pending_reports(), &mut tries, interval).await;
        assert_eq!(round.failed, 1);
        assert_eq!(agent.journal().get(fine.id).unwrap().state, State::Reported);
        assert_eq!(
            agent.journal().get(fine.id).unwrap().report.output,
            None,
            "a settled report no longer keeps its output"
        );
        assert_eq!(
            agent.journal().get(poison.id).unwrap().state,
            State::Finished
        );

        for _ in 1..STUCK_AFTER {
            deliver_round(&agent, agent.pending_reports(), &mut tries, interval).await;
        }
        assert!(tries[&poison.id].stuck());
        let round = deliver_round(&agent, agent.pending_reports(), &mut tries, interval).await;
        assert_eq!(round.failed, 0, "a stuck report is no reason to back off");
        assert!(round.next_stuck_at.is_some());

        // A new report goes out at once, while the stuck one is still
        // retried now and then.
        let reporter = tokio::spawn(deliver_reports(agent.clone()));
        let newer = finished("shutdown");
        agent.finish(&newer, newer.report.clone(), None).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        reporter.abort();
        assert_eq!(
            agent.journal().get(newer.id).unwrap().state,
            State::Reported
        );
        assert_eq!(
            agent.journal().get(poison.id).unwrap().state,
            State::Finished
        );
        let poison_attempts = reports(&server)
            .await
            .iter()
            .filter(|(id, _)| *id == poison.id.to_string())
            .count();
        assert!(poison_attempts > STUCK_AFTER as usize, "{poison_attempts}");
    }

    #[tokio::test]
    async fn a_result_too_large_for_the_server_is_reported_failed_with_the_reason() {
        let server = accepting_server().await;
        let device = Device::new("boot-1");
        let answered = Entry {
            state: State::Finished,
            report: Report {
                status: ReportStatus::Succeeded,
                output: Some("2026-11-21T10:00:00Z line\n".repeat(100)),
                error: None,
                detail: Some(json!({"matched": 100, "returned": 100})),
            },
            ..started("log_query", "boot-1")
        };
        write_journal(&device.state_dir(), &[answered.clone()]);
        Mock::given(method("POST"))
            .and(path(format!(
                "/device/v1/instructions/{}/report",
                answered.id
            )))
            .respond_with(ResponseTemplate::new(413))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        let agent = Arc::new(device.agent(&server.uri()));

        let reporter = tokio::spawn(deliver_reports(agent.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        reporter.abort();

        let bodies: Vec<Value> = report_bodies(&server)
            .await
            .into_iter()
            .map(|(_, body)| body)
            .collect();
        assert_eq!(bodies.len(), 2, "{bodies:?}");
        assert_eq!(bodies[0]["status"], "succeeded");
        assert_eq!(bodies[1]["status"], "failed");
        assert!(bodies[1].get("output").is_none());
        assert!(bodies[1]["error"].as_str().unwrap().contains("HTTP 413"));
        assert_eq!(bodies[1]["detail"]["matched"], 100);
        let settled = agent.journal().get(answered.id).cloned().unwrap();
        assert_eq!(
            (settled.state, settled.report.status),
            (State::Reported, ReportStatus::Failed)
        );
        let outcomes: Vec<Value> = device
            .operations()
            .iter()
            .map(|op| op["outcome"].clone())
            .collect();
        assert_eq!(outcomes, [json!("failed")]);
    }
}
