//! The agent's own upgrade (seed 004: the upgrader is upgraded, and
//! backed up, separately from what it upgrades).
//!
//! The agent is a `file` component whose path is its own executable. The
//! download, the staging beside the executable and the swap are those of
//! any component; what differs is how the new version proves itself:
//! - before the swap, the new binary must pass `tend-agent --prove` with
//!   this device's configuration (start, authenticate, heartbeat), so a
//!   build that cannot run here never replaces the one that can;
//! - after the swap the agent journals that the next start must prove the
//!   new binary, and replaces its process with it (same process id, so a
//!   service manager sees one agent that kept running);
//! - the new agent then has `agent_proof_s` to get a heartbeat through; if
//!   it cannot, or if it keeps stopping before it does (counted in the
//!   journal, so a crash loop under systemd's `Restart=always` ends too),
//!   the previous binary is swapped back and run, and the command ends
//!   `failed` with `rolled_back: true`.

use serde_json::json;
use tend_proto::command::ReportStatus;
use tracing::info;

use super::{Next, judge, slots};
use crate::executor;
use crate::journal::Entry;
use crate::runner::Agent;
use crate::software::fs;
use crate::software::job::{Job, Step};
use crate::software::settings::{AGENT, Component, Kind};
use crate::system::AGENT_VERSION;

impl Agent {
    /// The agent's version: the one recorded when the agent installed the
    /// executable that runs now, else the one it was built as.
    pub(in crate::runner) fn agent_version(&self) -> String {
        let installed = self.installed();
        match (installed.get(AGENT), &self.exe) {
            (Some(record), Some((_, inode))) if record.inode == Some(*inode) => {
                record.current.version.clone()
            }
            _ => AGENT_VERSION.to_owned(),
        }
    }

    /// Seed 004's separate upgrade of the upgrader: the new binary must
    /// start with this device's configuration, authenticate and heartbeat
    /// (`tend-agent --prove`) before it replaces the running one. One that
    /// cannot never replaces it.
    pub(super) async fn try_new_agent(&self, entry: &Entry, job: &Job) -> Next {
        let Some(Kind::File { path }) = self.component(AGENT).map(|c| c.kind) else {
            return Next::Done(self.final_report(
                job,
                ReportStatus::Failed,
                false,
                Some("the agent does not know its own executable".into()),
                None,
            ));
        };
        let (staged, _) = slots(&path);
        let Some(config) = &self.config.path else {
            return Next::Go(
                job.rolling_back(
                    "the new agent cannot be tried: the agent's configuration file is not known"
                        .into(),
                ),
                None,
            );
        };
        let argv = vec![
            staged.display().to_string(),
            "--config".to_owned(),
            config.display().to_string(),
            "--prove".to_owned(),
        ];
        let result = executor::run_with(
            &argv,
            entry.id,
            &self.output_dir(),
            self.config.software.agent_proof,
            &self.step_env(job),
            "during_health_check",
        )
        .await;
        match judge("the new agent's trial run", &argv, &result) {
            Ok(()) => Next::Go(
                job.at(Step::Installing),
                Some((
                    "new_agent_proved",
                    json!({"duration_ms": result.duration.as_millis() as u64}),
                )),
            ),
            Err(e) => {
                self.log_step(entry, "health_check_failed", &json!({"error": e}));
                Next::Go(
                    job.rolling_back(format!("the new agent did not prove itself: {e}")),
                    None,
                )
            }
        }
    }

    /// The new binary is in place (the previous one kept as the backup):
    /// journal that the next start must prove it, and restart as it.
    pub(super) fn restart_into_new_agent(&self, entry: &Entry, job: &Job) -> Next {
        let Some(entry) = self.journal_job(
            entry,
            job.at(Step::Restarting),
            Some(("installed", json!({"version": job.to_version}))),
        ) else {
            return Next::Wait;
        };
        info!(instruction.id = %entry.id, "instruction {}: restarting as the new agent {}", entry.id, job.to_version.as_deref().unwrap_or(""));
        if let Some((exe, _)) = &self.exe {
            *self
                .restart
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(exe.clone());
        }
        self.shutdown.cancel();
        Next::Wait
    }

    /// Run by the new agent after the restart: it has this long to get a
    /// heartbeat through, or the previous binary is put back. A binary
    /// that keeps dying before that is put back after a few starts.
    pub(super) async fn prove_new_agent(
        &self,
        entry: &Entry,
        job: &Job,
        component: &Component,
    ) -> Next {
        const MAX_STARTS: u32 = 3;
        if job.health_attempts >= MAX_STARTS {
            return Next::Go(
                job.rolling_back(format!(
                    "the new agent stopped {} times before it proved itself",
                    job.health_attempts
                )),
                None,
            );
        }
        let attempt = Job {
            health_attempts: job.health_attempts + 1,
            ..job.clone()
        };
        let Some(entry) = self.journal_job(entry, attempt.clone(), None) else {
            return Next::Wait;
        };
        let mut heartbeats = self.heartbeats.subscribe();
        let proof = component.health_timeout;
        let proved = tokio::time::timeout(proof, heartbeats.wait_for(|n| *n > 0)).await;
        if !matches!(proved, Ok(Ok(_))) {
            return Next::Go(
                attempt.rolling_back(format!(
                    "the new agent did not get a heartbeat through within {} s",
                    proof.as_secs()
                )),
                None,
            );
        }
        self.log_step(&entry, "health_check_passed", &json!({"heartbeat": true}));
        if let Err(e) = self.commit(&attempt, component) {
            return Next::Go(attempt.rolling_back(e), None);
        }
        self.log_step(&entry, "committed", &json!({"version": attempt.to_version}));
        Next::Done(self.final_report(&attempt, ReportStatus::Succeeded, false, None, None))
    }

    /// After the agent's own job ends: when the executable on disk is no
    /// longer the one running (a rollback put the previous one back),
    /// restart as it.
    pub(super) fn restart_if_replaced(&self) {
        let Some((exe, inode)) = &self.exe else {
            return;
        };
        if fs::inode(exe).is_ok_and(|now| now != *inode) {
            info!(
                "the agent's executable was replaced; restarting as {}",
                exe.display()
            );
            *self
                .restart
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(exe.clone());
            self.shutdown.cancel();
        }
    }
}
