//! Handling one instruction: journal it, then act, answer or refuse.
//!
//! An instruction is journaled before anything it asks for happens, so
//! that an id the server delivers again is recognised and never run twice;
//! reboots and shutdowns announce `in_progress` before their command runs
//! and journal `running` just before it can have effects, which is what
//! lets the next start decide their outcome from the boot id. A log query
//! only reads, so it goes straight to its final report. The final report
//! is journaled and left to the reporter ([`super::delivery`]).

use std::sync::Arc;

use chrono::Utc;
use tend_proto::CommandKind;
use tend_proto::command::ReportStatus;
use tend_proto::device::{Instruction, Report};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use super::Agent;
use crate::client::Delivery;
use crate::executor::{self, End};
use crate::fault;
use crate::journal::{self, Entry, State};
use crate::limits;
use crate::logquery::{self, QueryError};
use crate::outcome::{self, Action, Verdict};

/// How far past its `expires_at`, by this device's clock, an instruction
/// is still run: device clocks drift, and one a few minutes off must not
/// refuse its work.
const EXPIRY_TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);

impl Agent {
    pub(super) async fn handle_batch(self: Arc<Self>, instructions: Vec<Instruction>) {
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
        if let Err(why) = self.config.trust.check(&instruction, self.config.device_id) {
            let report = outcome::unverified(&why);
            return self.refuse(instruction, report);
        }
        let now = Utc::now();
        // Checked: an `expires_at` at the end of time must not panic.
        if instruction
            .expires_at
            .checked_add_signed(EXPIRY_TOLERANCE)
            .is_some_and(|last| now > last)
        {
            let report = outcome::expired(instruction.expires_at, now);
            return self.refuse(instruction, report);
        }
        if let Err(report) = outcome::check_params(&instruction) {
            return self.refuse(instruction, report);
        }
        match (instruction.known_kind(), Action::of(&instruction.kind)) {
            (Some(CommandKind::LogQuery), _) => self.query_logs(instruction).await,
            (Some(CommandKind::Upgrade | CommandKind::Restore), _) => {
                self.change_software(instruction).await
            }
            (_, Some(action)) => self.perform(action, instruction).await,
            _ => {
                let report = outcome::unsupported(&instruction.kind);
                self.refuse(instruction, report)
            }
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
    pub(super) fn started(&self, instruction: Instruction) -> Entry {
        let now = Utc::now();
        Entry {
            id: instruction.id,
            kind: limits::shorten(&instruction.kind, limits::MAX_KIND_BYTES).to_owned(),
            // Params over the limit were refused; they are not kept whole.
            params: if limits::json_larger_than(&instruction.params, limits::MAX_PARAMS_BYTES) {
                serde_json::Value::String(format!(
                    "(params larger than {} bytes, not kept)",
                    limits::MAX_PARAMS_BYTES
                ))
            } else {
                instruction.params
            },
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
            job: None,
            local: false,
        }
    }

    async fn perform(&self, action: Action, instruction: Instruction) {
        let id = instruction.id;
        let timeout = limits::instruction_timeout(instruction.timeout_s);
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
        let timeout = limits::instruction_timeout(instruction.timeout_s);
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

    /// Journals the instruction as finished with `report` (a rejection)
    /// without running anything.
    fn refuse(&self, instruction: Instruction, report: Report) {
        let entry = Entry {
            state: State::Finished,
            report: report.clone(),
            ..self.started(instruction)
        };
        info!(instruction.id = %entry.id, "instruction {} ({}) rejected: {}", entry.id, entry.kind,
            report.error.as_deref().unwrap_or_default());
        self.finish_or_log(&entry, report, None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio_util::sync::CancellationToken;
    use wiremock::matchers::{method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::super::testing::*;
    use super::*;

    #[tokio::test]
    async fn an_instruction_past_its_expiry_is_rejected_and_never_runs() {
        let server = accepting_server().await;
        let device = Device::new("boot-1");
        let agent =
            Arc::new(Agent::start(device.config(&server.uri()), CancellationToken::new()).unwrap());

        let mut stale = instruction("shutdown");
        stale.expires_at = Utc::now() - chrono::Duration::days(3);
        agent.handle(stale.clone()).await;
        assert_eq!(device.runs(), 0, "an expired shutdown ran");
        let entry = agent.journal().get(stale.id).cloned().unwrap();
        assert_eq!(entry.report.status, ReportStatus::Rejected);
        assert!(entry.report.error.unwrap().contains("expired"));

        // A device clock a little ahead still runs its work.
        let mut fresh = instruction("shutdown");
        fresh.expires_at = Utc::now() - chrono::Duration::minutes(1);
        agent.handle(fresh).await;
        assert_eq!(device.runs(), 1);
    }

    #[tokio::test]
    async fn only_an_instruction_signed_for_this_device_by_a_pinned_key_runs() {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        use ed25519_dalek::{Signer, SigningKey};

        let server = accepting_server().await;
        let device = Device::new("boot-1");
        let platform = SigningKey::from_bytes(&[3; 32]);
        let mut config = device.config(&server.uri());
        config.trust = crate::trust::Trust::new(
            &[STANDARD.encode(platform.verifying_key().as_bytes())],
            false,
        )
        .unwrap();
        let device_id = config.device_id;
        let agent = Arc::new(Agent::start(config, CancellationToken::new()).unwrap());
        let sign = |mut i: Instruction, by: &SigningKey, for_device| {
            let bytes = tend_proto::signing::signed_bytes(&i, for_device).unwrap();
            i.key_id = Some(tend_proto::signing::key_id(by.verifying_key().as_bytes()));
            i.signature = Some(STANDARD.encode(by.sign(&bytes).to_bytes()));
            i
        };

        let unsigned = instruction("shutdown");
        let stranger = sign(
            instruction("shutdown"),
            &SigningKey::from_bytes(&[4; 32]),
            device_id,
        );
        let elsewhere = sign(instruction("shutdown"), &platform, uuid::Uuid::new_v4());
        let mut altered = sign(instruction("log_query"), &platform, device_id);
        altered.kind = "shutdown".into();
        for refused in [&unsigned, &stranger, &elsewhere, &altered] {
            agent.handle(refused.clone()).await;
            let entry = agent.journal().get(refused.id).cloned().unwrap();
            assert_eq!(entry.report.status, ReportStatus::Rejected);
            assert!(entry.report.error.unwrap().starts_with("refused: "));
        }
        assert_eq!(device.runs(), 0, "an instruction that does not verify ran");

        agent
            .handle(sign(instruction("shutdown"), &platform, device_id))
            .await;
        assert_eq!(device.runs(), 1, "the signed shutdown did not run");
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
}
