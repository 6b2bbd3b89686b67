//! Delivering final reports until the server settles them.
//!
//! A final report is journaled before it is sent, so it survives a crash
//! or a reboot; the reporter sends every such report, including those of a
//! previous run, and marks each `reported` once the server has answered
//! it for good. A report the server keeps failing on must not hold back
//! the others, and a result too large for the server is reported failed,
//! without its output, rather than retried forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use tend_proto::device::{Recovery, Report};
use tokio::time::Instant;
use tracing::{error, info, warn};
use uuid::Uuid;

use super::Agent;
use crate::client::Delivery;
use crate::fault;
use crate::journal::{Entry, State};
use crate::outcome;

impl Agent {
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
pub(super) async fn deliver_reports(agent: Arc<Agent>) {
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
        let sent = if entry.local {
            let recovery = Recovery {
                id,
                params: entry.params.clone(),
                started_at: entry.started_at,
                report: entry.report.clone(),
            };
            agent.client.record_recovery(&recovery).await
        } else {
            agent
                .client
                .report(id, &entry.report, entry.trace_id.as_deref())
                .await
        };
        match sent {
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
    use serde_json::{Value, json};
    use tend_proto::command::ReportStatus;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};

    use super::super::testing::*;
    use super::*;

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
        write_journal(&device.state_dir(), std::slice::from_ref(&answered));
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
