//! Upgrades and restores: check, download, verify, stage, swap or install,
//! health check, then commit or roll back (seeds 002 to 004).
//!
//! A job moves through the [`Step`]s of [`crate::software::job`]; each is
//! journaled (fsync) before it runs, and the job's report says where it
//! is. After a crash the next start resumes the job from the journal
//! ([`Agent::resume_job`]): steps before the swap touched nothing and go
//! on (a download continues at the byte it reached); an interrupted swap
//! or install is rolled back and never run twice; an interrupted health
//! check runs again, once; a rollback is finished. So a power cut at any
//! step ends in the new version committed and healthy, or the old one
//! back, and always in one final report.

mod agent;
mod recovery;

pub(super) use recovery::{offline_watch, remember_device_type, serve_peers};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use tend_proto::command::{CommandKind, ReportStatus};
use tend_proto::device::{Instruction, Report};
use tend_proto::params::{self, ArtifactRef, CommandParams, RestoreSource};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::Agent;
use crate::client::Delivery;
use crate::executor::{self, End};
use crate::fault;
use crate::journal::{Entry, State};
use crate::oplog::Operation;
use crate::outcome;
use crate::peer;
use crate::software::download::{self, DownloadError};
use crate::software::fs;
use crate::software::installed::{Record, Version};
use crate::software::job::{Job, Source, Step};
use crate::software::settings::{AGENT, Component, Kind};

/// At most one download progress report per this long.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Install commands (`before`, `after`, `install`, `rollback`) get this
/// long at the least, even when the job's deadline is nearer.
const MIN_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// A health check interrupted by a restart is run again, up to this many
/// attempts in all; then the job rolls back.
const MAX_HEALTH_ATTEMPTS: u32 = 2;
/// Free space a download from a peer of an image whose size the device
/// does not know leaves untouched, at the least (10 % when that is more).
const PEER_RESERVE_BYTES: u64 = 64 * 1024 * 1024;
/// An unpacked `.tar.gz` is assumed to need this many times its size until
/// the archive is at hand (then its own gzip trailer says).
const UNPACK_FACTOR: u64 = 3;

/// What a step leads to (a short-lived value, one per step).
#[expect(
    clippy::large_enum_variant,
    reason = "one per step; boxing buys nothing"
)]
enum Next {
    /// Journal the job at its new step and go on; `event` goes to the
    /// operation log.
    Go(Job, Option<(&'static str, Value)>),
    /// The final report.
    Done(Report),
    /// Wait for the machine to go down (the reboot command returned), or
    /// for the agent to stop: the journal has the job, and the next start
    /// resumes it.
    Wait,
}

impl Agent {
    /// Handles a new `upgrade` or `restore` instruction.
    pub(super) async fn change_software(&self, instruction: Instruction) {
        let _one_at_a_time = self.software.lock().await;
        let id = instruction.id;
        let deadline = Utc::now()
            + TimeDelta::from_std(crate::limits::instruction_timeout(instruction.timeout_s))
                .unwrap_or(TimeDelta::hours(1));
        let entry = self.started(instruction);
        if let Err(e) = self.journal().append(entry.clone()) {
            error!(instruction.id = %id, "cannot journal instruction {id}, so not running it: {:#}", anyhow::Error::from(e));
            return;
        }
        fault::hit("after_journal", id);
        self.begin_job(entry, deadline).await;
    }

    /// Plans the job of a journaled `started` instruction, has the server
    /// accept `in_progress`, and runs it.
    async fn begin_job(&self, entry: Entry, deadline: chrono::DateTime<Utc>) {
        let id = entry.id;
        let job = match self.plan(&entry, deadline) {
            Ok(job) => job,
            Err(report) => {
                info!(instruction.id = %id, "instruction {id} ({}): {}: {}", entry.kind, report.status.as_status(), report.error.as_deref().or(report.output.as_deref()).unwrap_or_default());
                return self.finish_or_log(&entry, report, None);
            }
        };
        let report = self.progress_report(&job, None);
        // A recovery the agent started itself has no command on the
        // server until its final record is sent.
        if !entry.local
            && let Delivery::Refused(status) = self
                .client
                .report_until_settled(id, &report, entry.trace_id.as_deref())
                .await
        {
            warn!(instruction.id = %id, "the server refused in_progress for instruction {id} with {status}; not running it");
            return self.finish_or_log(&entry, outcome::not_performed(status.as_u16()), None);
        }
        info!(
            instruction.id = %id,
            "instruction {id}: {} of {} from {} to {} started",
            entry.kind,
            job.component,
            job.from_version.as_deref().unwrap_or("an unknown version"),
            job.to_version.as_deref().unwrap_or("an unknown version"),
        );
        let mut entry = entry.advance(State::Running, report, Utc::now());
        entry.job = Some(job);
        if let Err(e) = self.journal().append(entry.clone()) {
            let e = format!("{:#}", anyhow::Error::from(e));
            error!(instruction.id = %id, "cannot journal instruction {id}'s job, so not running it: {e}");
            return self.finish_or_log(&entry, outcome::not_journaled(&e), None);
        }
        self.run_job(entry).await;
    }

    /// Continues a job that was under way when the agent last stopped.
    pub(super) async fn resume_job(&self, entry: Entry) {
        let _one_at_a_time = self.software.lock().await;
        let id = entry.id;
        let Some(job) = entry.job.clone() else {
            // Journaled `started`, never planned: nothing was touched.
            // The deadline is the command's default, as the instruction's
            // own is not journaled.
            let deadline = entry.started_at + TimeDelta::hours(1);
            return self.begin_job(entry, deadline).await;
        };
        let job = match job.step {
            Step::Installing => job.rolling_back(
                "the agent stopped during the install (a restart or a power cut); it is not run twice"
                    .into(),
            ),
            Step::AwaitingReboot if job.boot_id.as_deref() == Some(self.boot_id.as_str()) => job
                .rolling_back(
                    "the device did not boot into the new version: the boot id did not change"
                        .into(),
                ),
            Step::AwaitingReboot => job.at(Step::HealthCheck),
            Step::HealthCheck if job.health_attempts >= MAX_HEALTH_ATTEMPTS => job.rolling_back(
                format!("the health check was interrupted {} times", job.health_attempts),
            ),
            Step::AwaitingRollbackReboot => {
                let rebooted = job.boot_id.as_deref() != Some(self.boot_id.as_str());
                let error = job.failure.clone().unwrap_or_default();
                let report = if rebooted {
                    self.final_report(&job, ReportStatus::Failed, true, Some(error), None)
                } else {
                    self.final_report(
                        &job,
                        ReportStatus::Failed,
                        false,
                        Some(format!(
                            "{error}; the rollback needs a reboot, and the device did not reboot"
                        )),
                        None,
                    )
                };
                return self.finish_job(&entry, &job, report);
            }
            _ => job,
        };
        // A recovery the agent started gets its time again after a
        // restart: no server is waiting for it, and a device that was off
        // for longer than its first deadline still needs its component.
        let job = if entry.local {
            Job {
                deadline: job.deadline.max(Utc::now() + recovery::RECOVERY_TIMEOUT),
                ..job
            }
        } else {
            job
        };
        info!(instruction.id = %id, "resuming instruction {id} ({} of {}) at {:?}", entry.kind, job.component, job.step);
        if let Some(entry) = self.journal_job(&entry, job, None) {
            self.run_job(entry).await;
        }
    }

    /// Runs the job from its journaled step to a final report (or to a
    /// wait for a reboot).
    async fn run_job(&self, mut entry: Entry) {
        let started = Instant::now();
        loop {
            let Some(job) = entry.job.clone() else {
                return;
            };
            let Some(component) = self.component(&job.component) else {
                let report = outcome::failed(&format!(
                    "the component {} is no longer configured on this device",
                    job.component
                ));
                return self.finish_or_log(&entry, report, Some(started.elapsed()));
            };
            let next = match job.step {
                Step::Downloading => self.download(&entry, &job).await,
                Step::Verified => self.prepare(&job, &component),
                Step::Prepared if job.component == AGENT => self.try_new_agent(&entry, &job).await,
                Step::Prepared => Next::Go(job.at(Step::Installing), None),
                Step::Installing => self.install(&entry, &job, &component).await,
                Step::AwaitingReboot | Step::AwaitingRollbackReboot => Next::Wait,
                Step::Restarting => self.prove_new_agent(&entry, &job, &component).await,
                Step::HealthCheck => self.health_check(&entry, &job, &component).await,
                Step::RollingBack => self.roll_back(&entry, &job, &component).await,
            };
            match next {
                Next::Go(next, event) => match self.journal_job(&entry, next, event) {
                    Some(journaled) => {
                        match journaled.job.as_ref().map(|j| j.step) {
                            Some(Step::Verified) => fault::hit("after_verify", entry.id),
                            Some(Step::Prepared) => fault::hit("after_backup", entry.id),
                            _ => {}
                        }
                        entry = journaled;
                    }
                    None => return,
                },
                Next::Done(report) => {
                    self.finish_job(&entry, &job, report);
                    if job.component == AGENT {
                        self.restart_if_replaced();
                    }
                    return;
                }
                Next::Wait => return,
            }
        }
    }

    /// Journals the job at its next step, logs the event and tells the
    /// server the phase. `None` when the journal cannot be written: the
    /// job then stops where it is, and the next start resumes it.
    fn journal_job(
        &self,
        entry: &Entry,
        job: Job,
        event: Option<(&'static str, Value)>,
    ) -> Option<Entry> {
        let report = self.progress_report(&job, None);
        let mut next = entry.advance(State::Running, report.clone(), Utc::now());
        next.job = Some(job);
        if let Err(e) = self.journal().append(next.clone()) {
            error!(instruction.id = %entry.id, "cannot journal the next step of instruction {}, stopping it here: {:#}", entry.id, anyhow::Error::from(e));
            return None;
        }
        if let Some((step, detail)) = event {
            self.log_step(&next, step, &detail);
        }
        self.send_progress(&next, &report);
        Some(next)
    }

    fn send_progress(&self, entry: &Entry, report: &Report) {
        if entry.local {
            return;
        }
        // Best effort: the final report is the one that must arrive.
        let client = self.client.clone();
        let (id, report, trace) = (entry.id, report.clone(), entry.trace_id.clone());
        tokio::spawn(async move {
            if let Err(e) = client.report(id, &report, trace.as_deref()).await {
                tracing::debug!(instruction.id = %id, "progress report not delivered: {e}");
            }
        });
    }

    fn finish_job(&self, entry: &Entry, job: &Job, report: Report) {
        let rolled_back = report
            .detail
            .as_ref()
            .is_some_and(|d| d["rolled_back"] == json!(true));
        info!(
            instruction.id = %entry.id,
            "instruction {}: {} of {} {}{}{}",
            entry.id,
            entry.kind,
            job.component,
            report.status.as_status(),
            if rolled_back { " (rolled back)" } else { "" },
            report.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default(),
        );
        let elapsed = (Utc::now() - entry.started_at).to_std().ok();
        let mut finished = entry.clone();
        finished.job = Some(job.clone());
        self.finish_or_log(&finished, report, elapsed);
    }

    fn log_step(&self, entry: &Entry, step: &str, detail: &Value) {
        let operation = Operation {
            at: Utc::now(),
            instruction_id: entry.id,
            kind: &entry.kind,
            params: &entry.params,
            outcome: "in_progress",
            duration_ms: None,
            error: None,
            step: Some(step),
            detail: Some(detail),
        };
        if let Err(e) = self.oplog.append(&operation) {
            warn!(instruction.id = %entry.id, "cannot write the operation log: {e}");
        }
    }

    /// Decides what an instruction asks for, against what this device has
    /// (seed 002: before a byte is fetched). `Err` is the final report of
    /// an instruction that ends here: refused, already done, or impossible.
    fn plan(&self, entry: &Entry, deadline: chrono::DateTime<Utc>) -> Result<Job, Report> {
        let kind: CommandKind = entry
            .kind
            .parse()
            .map_err(|_| outcome::unsupported(&entry.kind))?;
        let parsed = params::parse(kind, &entry.params)
            .map_err(|e| rejected(format!("the instruction's params are invalid: {e}")))?;
        let (component, source, artifact) = match parsed {
            CommandParams::Upgrade(p) => {
                let artifact = p.artifact.ok_or_else(|| {
                    rejected("the instruction does not describe its artifact".into())
                })?;
                (artifact.component.clone(), Source::Upgrade, Some(artifact))
            }
            CommandParams::Restore(p) => match p.source {
                RestoreSource::Peer => {
                    let artifact = match p.artifact {
                        Some(artifact) if artifact.component == p.component => artifact,
                        Some(artifact) => {
                            return Err(rejected(format!(
                                "the artifact is for {}, not {}",
                                artifact.component, p.component
                            )));
                        }
                        None => self
                            .trusted_image(&p.component, p.version.as_deref())
                            .map_err(rejected)?,
                    };
                    (p.component, Source::Peer, Some(artifact))
                }
                RestoreSource::Backup => (p.component, Source::Backup, None),
                RestoreSource::Cloud => {
                    let artifact = p.artifact.ok_or_else(|| {
                        rejected("the server named no artifact to restore from".into())
                    })?;
                    if artifact.component != p.component {
                        return Err(rejected(format!(
                            "the artifact is for {}, not {}",
                            artifact.component, p.component
                        )));
                    }
                    (p.component, Source::Cloud, Some(artifact))
                }
            },
            _ => return Err(outcome::unsupported(&entry.kind)),
        };
        if component == AGENT && source != Source::Upgrade {
            return Err(rejected(
                "the agent is not restored: upgrade it to the version wanted (a new agent that \
                 fails is replaced by the previous one on its own)"
                    .into(),
            ));
        }
        let Some(config) = self.component(&component) else {
            return Err(rejected(format!(
                "this device has no component {component} (no [components.{component}] in its agent configuration)"
            )));
        };
        let from_version = self.running_version(&config);
        let to_version = match (&artifact, source) {
            (Some(a), _) => Some(a.version.clone()),
            (None, _) => self.backup_version(&config),
        };
        let job = Job {
            component,
            source,
            artifact,
            from_version,
            to_version,
            step: if source == Source::Backup {
                Step::Verified
            } else {
                Step::Downloading
            },
            deadline,
            staged_inode: None,
            boot_id: None,
            health_attempts: 0,
            failure: None,
            peer: None,
        };
        if source == Source::Upgrade && job.from_version == job.to_version {
            let version = job.to_version.clone().unwrap_or_default();
            return Err(Report {
                output: Some(format!(
                    "{} already runs {version}; nothing was changed",
                    job.component
                )),
                ..self.final_report(&job, ReportStatus::Succeeded, false, None, None)
            });
        }
        if source == Source::Backup && !self.has_backup(&config) {
            return Err(self.final_report(
                &job,
                ReportStatus::Failed,
                false,
                Some(format!(
                    "there is no backup of {} on this device",
                    job.component
                )),
                None,
            ));
        }
        if let Some(artifact) = &job.artifact
            && let Err(e) = self.check_space(&config, artifact)
        {
            return Err(self.final_report(&job, ReportStatus::Failed, false, Some(e), None));
        }
        Ok(job)
    }

    /// The image a restore from a peer asks for, from this device's own
    /// record (seed 000's trust rule: never from what a peer claims): the
    /// version it last committed healthy, or the one named when the record
    /// has it (current or backup).
    fn trusted_image(&self, component: &str, version: Option<&str>) -> Result<ArtifactRef, String> {
        let installed = self.installed();
        let record = installed.get(component);
        let candidates = record
            .into_iter()
            .flat_map(|r| std::iter::once(&r.current).chain(r.backup.as_ref()));
        let found = match version {
            Some(v) => candidates
                .filter(|c| c.version == v)
                .find(|c| c.sha256.is_some()),
            None => record.map(|r| &r.current).filter(|c| c.sha256.is_some()),
        };
        let Some(found) = found else {
            return Err(match version {
                Some(v) => format!(
                    "this device has no record of the digest of {component} {v}, and the \
                     platform has no artifact of that version: there is nothing to check a \
                     peer's image against"
                ),
                None => format!(
                    "this device has no record of the digest of the {component} it last ran \
                     healthy (it was not installed by tend): name a version the platform has \
                     an artifact of"
                ),
            });
        };
        Ok(ArtifactRef {
            // Not fetched from the server, so no artifact id is needed.
            id: uuid::Uuid::nil(),
            component: component.to_owned(),
            version: found.version.clone(),
            // 0: unknown (a record from before sizes were kept); the
            // fetch then bounds what a peer may send by the free space.
            size: found.size.unwrap_or(0),
            sha256: found.sha256.clone().unwrap_or_default(),
        })
    }

    /// Free space for the download and the staged copy beside the
    /// component (the backup is the old version itself, kept by the swap).
    fn check_space(&self, component: &Component, artifact: &ArtifactRef) -> Result<(), String> {
        let downloads = self.downloads_dir();
        let staged = match &component.kind {
            Kind::Dir { .. } => artifact.size.saturating_mul(UNPACK_FACTOR),
            Kind::File { .. } => artifact.size,
            Kind::Command { .. } => 0,
        };
        let mut needs = vec![(downloads.clone(), artifact.size, "the download")];
        if let Kind::Dir { path } | Kind::File { path } = &component.kind {
            needs.push((path.clone(), staged, "the staged new version"));
        }
        let mut by_device: Vec<(u64, PathBuf, u64, Vec<&str>)> = Vec::new();
        for (path, bytes, what) in needs {
            let device = fs::device_of(&path)
                .map_err(|e| format!("cannot read the file system of {}: {e}", path.display()))?;
            match by_device.iter_mut().find(|(d, ..)| *d == device) {
                Some((_, _, total, whats)) => {
                    // Saturating: an absurd size must fail the check, not
                    // wrap around and pass it.
                    *total = total.saturating_add(bytes);
                    whats.push(what);
                }
                None => by_device.push((device, path, bytes, vec![what])),
            }
        }
        for (_, path, needed, whats) in by_device {
            let free = fs::free_bytes(&path)
                .map_err(|e| format!("cannot read the free space of {}: {e}", path.display()))?;
            if free < needed {
                return Err(format!(
                    "not enough free space: {} needs {} ({}) and {} are free; nothing was downloaded",
                    path.display(),
                    bytes_text(needed),
                    whats.join(" and "),
                    bytes_text(free),
                ));
            }
        }
        Ok(())
    }

    async fn download(&self, entry: &Entry, job: &Job) -> Next {
        let Some(artifact) = &job.artifact else {
            return Next::Go(job.at(Step::Verified), None);
        };
        if job.source == Source::Peer {
            return self.download_from_peer(entry, job, artifact).await;
        }
        let dir = self.downloads_dir();
        let request = download::Request {
            artifact,
            dir: &dir,
            segment_bytes: self.config.software.segment_bytes,
            deadline: job_deadline(job),
        };
        let progress = Progress::default();
        let stop = self.shutdown.child_token();
        let fetch = download::fetch(&self.client, &request, |p| progress.set(p), &stop);
        let (result, ended_by_server) = self
            .reporting_progress(entry, job, &progress, &stop, fetch)
            .await;
        match result {
            Ok(fetched) => Next::Go(
                job.at(Step::Verified),
                Some((
                    "verified",
                    json!({
                        "sha256": artifact.sha256,
                        "bytes": artifact.size,
                        "resumed_from": fetched.resumed_from,
                        "file": fetched.path,
                    }),
                )),
            ),
            Err(DownloadError::Cancelled) => self.cancelled_download(job, ended_by_server),
            Err(e) => {
                // A partial download the server will not complete is of no
                // use; one cut short by the deadline is kept, so the next
                // upgrade to the same artifact goes on from where it was.
                if !matches!(e, DownloadError::TimedOut { .. }) {
                    download::remove(&dir, &artifact.sha256);
                }
                Next::Done(self.final_report(
                    job,
                    ReportStatus::Failed,
                    false,
                    Some(format!("the download failed: {e}; nothing was installed")),
                    None,
                ))
            }
        }
    }

    /// Fetches the image from a LAN peer of this device's type (seed 000),
    /// checked against the digest the job carries: signed by the platform
    /// or recorded by this device, never a peer's claim.
    async fn download_from_peer(&self, entry: &Entry, job: &Job, artifact: &ArtifactRef) -> Next {
        let failed = |e: String| {
            Next::Done(self.final_report(job, ReportStatus::Failed, false, Some(e), None))
        };
        let device_type = self.client.device_type().borrow().clone();
        let Some(device_type) = device_type else {
            return failed(
                "this device does not know its device type yet (it has not reached the server \
                 since it was installed), so it cannot tell which peers are of its type; \
                 nothing was installed"
                    .into(),
            );
        };
        let dir = self.downloads_dir();
        if let Err(e) = crate::private::create_dir_all(&dir) {
            return failed(format!("cannot create {}: {e}", dir.display()));
        }
        // The image may still be here (the download of what the component
        // runs is kept): then no peer is needed.
        let size = (artifact.size > 0).then_some(artifact.size);
        let stop = self.shutdown.child_token();
        match download::verified_copy(&dir, &artifact.sha256, size, &stop).await {
            Ok(Some(path)) => {
                return Next::Go(
                    job.at(Step::Verified),
                    Some((
                        "verified",
                        json!({
                            "sha256": artifact.sha256,
                            "file": path,
                            "note": "the image was already on this device; no peer was asked",
                        }),
                    )),
                );
            }
            Ok(None) => {}
            Err(DownloadError::Cancelled) => return Next::Wait,
            Err(e) => return failed(format!("cannot check the image on this device: {e}")),
        }
        // Without a size from a trusted record, a peer's offer may claim
        // at most what the disk can hold less a reserve, so a peer that
        // lies about the size cannot fill it (the journal, the operation
        // log and the application need room too).
        let free = fs::free_bytes(&dir).unwrap_or(0);
        let max_size = free.saturating_sub((free / 10).max(PEER_RESERVE_BYTES));
        let want = peer::Want {
            device_type: &device_type,
            component: &job.component,
            sha256: &artifact.sha256,
            size,
            max_size,
        };
        let progress = Progress::default();
        let fetch = peer::fetch(
            &self.config.peer,
            &want,
            &dir,
            self.config.software.segment_bytes,
            job_deadline(job),
            |p| progress.set(p),
            |event| self.log_peer_event(entry, event),
            &stop,
        );
        let (result, ended_by_server) = self
            .reporting_progress(entry, job, &progress, &stop, fetch)
            .await;
        match result {
            Ok(fetched) => {
                let size = std::fs::metadata(&fetched.path)
                    .map(|m| m.len())
                    .unwrap_or(artifact.size);
                let next = Job {
                    artifact: Some(ArtifactRef {
                        size,
                        ..artifact.clone()
                    }),
                    peer: Some(fetched.peer.to_string()),
                    ..job.at(Step::Verified)
                };
                Next::Go(
                    next,
                    Some((
                        "verified",
                        json!({
                            "sha256": artifact.sha256,
                            "bytes": size,
                            "resumed_from": fetched.resumed_from,
                            "file": fetched.path,
                            "peer": fetched.peer.to_string(),
                        }),
                    )),
                )
            }
            Err(peer::PeerError::Cancelled) => self.cancelled_download(job, ended_by_server),
            Err(e) => failed(format!(
                "the restore from a peer failed: {e}; nothing was installed"
            )),
        }
    }

    fn log_peer_event(&self, entry: &Entry, event: peer::PeerEvent) {
        use peer::PeerEvent;
        let addrs = |peers: &[std::net::SocketAddr]| -> Vec<String> {
            peers.iter().map(ToString::to_string).collect()
        };
        let (step, detail) = match event {
            PeerEvent::Searching { round } => ("peer_search", json!({"round": round})),
            PeerEvent::Found { peers } => ("peers_found", json!({"peers": addrs(&peers)})),
            PeerEvent::Configured { peers } => {
                ("peers_configured", json!({"peers": addrs(&peers)}))
            }
            PeerEvent::Trying { peer, offset } => (
                "peer_transfer",
                json!({"peer": peer.to_string(), "offset": offset}),
            ),
            PeerEvent::PeerFailed { peer, error } => (
                "peer_failed",
                json!({"peer": peer.to_string(), "error": error}),
            ),
            PeerEvent::Corrupt { peers } => ("peer_image_corrupt", json!({"peers": addrs(&peers)})),
        };
        info!(instruction.id = %entry.id, step, %detail, "instruction {}: {step}", entry.id);
        self.log_step(entry, step, &detail);
    }

    /// Runs a download, reporting its progress to the server every
    /// [`PROGRESS_EVERY`] and logging where it started. Returns its result
    /// and, when the server refused a progress report (the command ended
    /// there), that answer: the download was then stopped through `stop`.
    ///
    /// The download and the reports run side by side (`join!`), never one
    /// inside a `select!` arm while the other waits pinned: both take the
    /// client's token lock, and a download that queued for it first would
    /// be handed the lock while not polled, so the report waiting behind it
    /// (and every other request of the agent) would wait for ever.
    async fn reporting_progress<T>(
        &self,
        entry: &Entry,
        job: &Job,
        progress: &Progress,
        stop: &tokio_util::sync::CancellationToken,
        fetch: impl Future<Output = T>,
    ) -> (T, Option<reqwest::StatusCode>) {
        let logged_start = std::sync::atomic::AtomicBool::new(false);
        let log_start = || {
            let Some(offset) = progress.first() else {
                return;
            };
            if !logged_start.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let step = if offset > 0 {
                    "download_resumed"
                } else {
                    "download_started"
                };
                self.log_step(
                    entry,
                    step,
                    &json!({"offset": offset, "total": progress.total()}),
                );
            }
        };
        let done = tokio_util::sync::CancellationToken::new();
        let fetching = async {
            let result = fetch.await;
            done.cancel();
            result
        };
        let reporting = async {
            let mut ticker = tokio::time::interval(PROGRESS_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = done.cancelled() => return None,
                    _ = ticker.tick() => {}
                }
                log_start();
                if entry.local {
                    continue;
                }
                let report = self.progress_report(job, Some((progress.bytes(), progress.total())));
                if let Ok(Delivery::Refused(status)) = self
                    .client
                    .report(entry.id, &report, entry.trace_id.as_deref())
                    .await
                {
                    stop.cancel();
                    return Some(status);
                }
            }
        };
        let (result, ended_by_server) = tokio::join!(fetching, reporting);
        log_start();
        (result, ended_by_server)
    }

    /// A download stopped through its token: by the server's refusal of a
    /// progress report (the command ended there), or by shutdown (the job
    /// is journaled and resumes at the next start).
    fn cancelled_download(&self, job: &Job, ended_by_server: Option<reqwest::StatusCode>) -> Next {
        match ended_by_server {
            Some(status) => Next::Done(self.final_report(
                job,
                ReportStatus::Failed,
                false,
                Some(format!(
                    "the server ended the command during the download (HTTP {}); nothing was installed",
                    status.as_u16()
                )),
                None,
            )),
            None => Next::Wait,
        }
    }

    /// Stages the new version beside the component (dir, file), so the
    /// swap is a single rename. A restore from the backup stages nothing:
    /// the backup is swapped in as it is.
    fn prepare(&self, job: &Job, component: &Component) -> Next {
        let failed = |e: String| {
            Next::Done(self.final_report(job, ReportStatus::Failed, false, Some(e), None))
        };
        let path = match &component.kind {
            Kind::Dir { path } | Kind::File { path } => path,
            Kind::Command { .. } => {
                if job.source == Source::Backup && self.backup_version(component).is_none() {
                    return failed(format!(
                        "there is no backup of {} on this device",
                        job.component
                    ));
                }
                return Next::Go(job.at(Step::Prepared), Some(("prepared", json!({}))));
            }
        };
        let (staged, backup) = slots(path);
        if job.source == Source::Backup {
            return match fs::inode(&backup) {
                Ok(inode) => Next::Go(
                    Job {
                        staged_inode: Some(inode),
                        ..job.at(Step::Prepared)
                    },
                    Some(("prepared", json!({"staged": backup}))),
                ),
                Err(e) => failed(format!(
                    "there is no backup of {} on this device ({}: {e})",
                    job.component,
                    backup.display()
                )),
            };
        }
        let Some(artifact) = &job.artifact else {
            return failed("nothing to install".into());
        };
        let download = download::path(&self.downloads_dir(), &artifact.sha256);
        let staging = || -> Result<u64, String> {
            fs::remove(&staged).map_err(|e| format!("cannot clear {}: {e}", staged.display()))?;
            match &component.kind {
                Kind::Dir { .. } => {
                    let needed = fs::gzip_content_size(&download).unwrap_or(0);
                    let free = fs::free_bytes(path).unwrap_or(u64::MAX);
                    if needed > free {
                        return Err(format!(
                            "not enough free space to unpack: {} needed beside {}, {} free",
                            bytes_text(needed),
                            path.display(),
                            bytes_text(free)
                        ));
                    }
                    fs::unpack_tar_gz(&download, &staged).map_err(|e| {
                        let _ = fs::remove(&staged);
                        format!("cannot unpack the artifact: {e}")
                    })?;
                }
                Kind::File { path } => {
                    fs::copy_file(&download, &staged)
                        .map_err(|e| format!("cannot stage the new file: {e}"))?;
                    // The download is private to the agent (0600); the new
                    // file gets the mode of the one it replaces, 0644 for
                    // a first install, and the agent's own binary 0755.
                    use std::os::unix::fs::PermissionsExt;
                    let mode = if component.name == AGENT {
                        0o755
                    } else {
                        std::fs::metadata(path)
                            .map(|m| m.permissions().mode() & 0o7777)
                            .unwrap_or(0o644)
                    };
                    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| format!("cannot set the mode of the new file: {e}"))?;
                }
                Kind::Command { .. } => unreachable!("handled above"),
            }
            fs::inode(&staged).map_err(|e| format!("cannot read {}: {e}", staged.display()))
        };
        match staging() {
            Ok(inode) => Next::Go(
                Job {
                    staged_inode: Some(inode),
                    ..job.at(Step::Prepared)
                },
                Some(("prepared", json!({"staged": staged}))),
            ),
            Err(e) => failed(e),
        }
    }

    async fn install(&self, entry: &Entry, job: &Job, component: &Component) -> Next {
        let version = job.to_version.clone().unwrap_or_default();
        if let Some(before) = &component.before
            && let Err(e) = self.run_step(entry, job, "before", before, None).await
        {
            // Nothing was swapped; `after` puts back whatever `before`
            // stopped.
            if let Some(after) = &component.after
                && let Err(e) = self.run_step(entry, job, "after", after, None).await
            {
                warn!(instruction.id = %entry.id, "{e}");
            }
            self.discard_staged(component, job);
            return Next::Done(self.final_report(job, ReportStatus::Failed, false, Some(e), None));
        }
        match &component.kind {
            Kind::Dir { path } | Kind::File { path } => {
                let (staged, backup) = slots(path);
                let from = if job.source == Source::Backup {
                    &backup
                } else {
                    &staged
                };
                if !fs::exists(path) {
                    // A first install: there is nothing to swap with.
                    if let Err(e) = fs::rename(from, path) {
                        return Next::Go(
                            job.rolling_back(format!("cannot put the new version in place: {e}")),
                            None,
                        );
                    }
                } else if let Err(e) = fs::exchange(from, path) {
                    return Next::Go(
                        job.rolling_back(format!("cannot swap in the new version: {e}")),
                        None,
                    );
                }
                // The old version now sits under the staging name (or the
                // backup name, for a restore from the backup): it is the
                // way back until the new one is committed, and the last
                // committed backup stays where it is until then.
                self.log_step(entry, "backed_up", &json!({"kept_at": from}));
                fault::hit("during_install", entry.id);
            }
            Kind::Command {
                install, reboot, ..
            } => {
                let file = job
                    .artifact
                    .as_ref()
                    .map(|a| download::path(&self.downloads_dir(), &a.sha256));
                let result = match (&file, job.source) {
                    (Some(file), _) => {
                        self.run_step(entry, job, "install", install, Some(file))
                            .await
                    }
                    (None, _) => {
                        let Kind::Command { rollback, .. } = &component.kind else {
                            unreachable!()
                        };
                        self.run_step(entry, job, "rollback", rollback, None).await
                    }
                };
                fault::hit("during_install", entry.id);
                if let Err(e) = result {
                    return Next::Go(job.rolling_back(e), None);
                }
                if *reboot {
                    return self.reboot_into(entry, job).await;
                }
            }
        }
        if component.name == AGENT {
            return self.restart_into_new_agent(entry, job);
        }
        if let Some(after) = &component.after
            && let Err(e) = self.run_step(entry, job, "after", after, None).await
        {
            return Next::Go(job.rolling_back(e), None);
        }
        if let Some(file) = &component.version_file
            && matches!(component.kind, Kind::Dir { .. })
        {
            let found = fs::read_version(file);
            if found.as_deref() != Some(version.as_str()) {
                return Next::Go(
                    job.rolling_back(format!(
                        "the installed {} says version {}, not {version}",
                        file.display(),
                        found.as_deref().unwrap_or("nothing readable")
                    )),
                    None,
                );
            }
        }
        Next::Go(
            job.at(Step::HealthCheck),
            Some(("installed", json!({"version": version}))),
        )
    }

    /// Journals the wait for the new boot, then asks the machine to
    /// reboot.
    async fn reboot_into(&self, entry: &Entry, job: &Job) -> Next {
        let waiting = Job {
            boot_id: Some(self.boot_id.clone()),
            ..job.at(Step::AwaitingReboot)
        };
        let Some(entry) = self.journal_job(
            entry,
            waiting.clone(),
            Some(("rebooting", json!({"boot_id": self.boot_id}))),
        ) else {
            return Next::Wait;
        };
        match self.reboot(&entry, &waiting).await {
            Ok(()) => {
                info!(instruction.id = %entry.id, "instruction {}: rebooting into the new version", entry.id);
                Next::Wait
            }
            Err(e) => Next::Go(waiting.rolling_back(e), None),
        }
    }

    async fn health_check(&self, entry: &Entry, job: &Job, component: &Component) -> Next {
        let attempt = Job {
            health_attempts: job.health_attempts + 1,
            ..job.clone()
        };
        let Some(entry) = self.journal_job(entry, attempt.clone(), None) else {
            return Next::Wait;
        };
        let version = attempt.to_version.clone().unwrap_or_default();
        if let Some(check) = &component.health_check {
            let timeout = component.health_timeout;
            let result = executor::run_with(
                check,
                entry.id,
                &self.output_dir(),
                timeout,
                &self.step_env(&attempt),
                "during_health_check",
            )
            .await;
            if let Err(e) = judge("the health check", check, &result) {
                self.log_step(&entry, "health_check_failed", &json!({"error": e}));
                return Next::Go(attempt.rolling_back(e), None);
            }
            self.log_step(
                &entry,
                "health_check_passed",
                &json!({"duration_ms": result.duration.as_millis() as u64}),
            );
        }
        if let Err(e) = self.commit(&attempt, component) {
            return Next::Go(attempt.rolling_back(e), None);
        }
        self.log_step(&entry, "committed", &json!({"version": version}));
        Next::Done(self.final_report(&attempt, ReportStatus::Succeeded, false, None, None))
    }

    /// Records the new version as installed and the previous one as the
    /// backup, writes the version file where the agent keeps it, and drops
    /// downloads nothing refers to any more.
    fn commit(&self, job: &Job, component: &Component) -> Result<(), String> {
        let version = job.to_version.clone().unwrap_or_default();
        let previous = self
            .installed()
            .get(&job.component)
            .map(|r| r.current.clone());
        // A restore of the version the component already had (a broken
        // install repaired from the cloud or a peer) swapped out a broken
        // copy: the backup it had stays, and the broken copy goes.
        let repair = job.source != Source::Upgrade
            && job.source != Source::Backup
            && job.from_version == job.to_version;
        let backup = if repair {
            self.installed()
                .get(&job.component)
                .and_then(|r| r.backup.clone())
        } else {
            job.from_version.clone().map(|v| {
                let same = previous.as_ref().filter(|p| p.version == v);
                Version {
                    sha256: same.and_then(|p| p.sha256.clone()),
                    size: same.and_then(|p| p.size),
                    version: v,
                }
            })
        };
        let current = match job.source {
            Source::Backup => {
                let kept = self
                    .installed()
                    .get(&job.component)
                    .and_then(|r| r.backup.clone());
                Version {
                    version: version.clone(),
                    sha256: kept.as_ref().and_then(|b| b.sha256.clone()),
                    size: kept.as_ref().and_then(|b| b.size),
                }
            }
            _ => Version {
                version: version.clone(),
                sha256: job.artifact.as_ref().map(|a| a.sha256.clone()),
                size: job.artifact.as_ref().map(|a| a.size).filter(|&n| n > 0),
            },
        };
        if let Some(file) = &component.version_file
            && !matches!(component.kind, Kind::Dir { .. })
        {
            fs::write_atomic(file, format!("{version}\n").as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        }
        if let Kind::Dir { path } | Kind::File { path } = &component.kind
            && job.source != Source::Backup
        {
            // What ran before becomes the backup, replacing the older one
            // (a repair throws the broken copy away instead).
            let (staged, kept) = slots(path);
            if repair {
                fs::remove(&staged).map_err(|e| {
                    format!("cannot remove the broken copy {}: {e}", staged.display())
                })?;
            } else if fs::exists(&staged) {
                fs::remove(&kept)
                    .and_then(|()| fs::rename(&staged, &kept))
                    .map_err(|e| format!("cannot keep the previous version as the backup: {e}"))?;
            }
        }
        let keep: Vec<String> = [
            &current.sha256,
            &backup.as_ref().and_then(|b| b.sha256.clone()),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        self.installed()
            .set(
                &job.component,
                Record {
                    current,
                    installed_at: Utc::now(),
                    backup,
                    inode: (job.component == AGENT)
                        .then(|| self.exe.as_ref().and_then(|(exe, _)| fs::inode(exe).ok()))
                        .flatten(),
                },
            )
            .map_err(|e| format!("cannot record the installed version: {e}"))?;
        download::remove_others(&self.downloads_dir(), &keep);
        Ok(())
    }

    /// Puts the previous version back, whatever part of the install had
    /// happened (each move is decided from what is on disk, so running it
    /// again after a crash is safe).
    async fn roll_back(&self, entry: &Entry, job: &Job, component: &Component) -> Next {
        let failure = job
            .failure
            .clone()
            .unwrap_or_else(|| "the upgrade failed".into());
        warn!(instruction.id = %entry.id, "instruction {}: rolling back {}: {failure}", entry.id, job.component);
        if let Some(before) = &component.before
            && let Err(e) = self.run_step(entry, job, "before", before, None).await
        {
            warn!(instruction.id = %entry.id, "{e}; rolling back all the same");
        }
        let result = match &component.kind {
            Kind::Dir { path } | Kind::File { path } => self.swap_back(job, path),
            Kind::Command { rollback, .. } => {
                self.run_step(entry, job, "rollback", rollback, None).await
            }
        };
        if let Err(e) = result {
            self.log_step(entry, "rollback_failed", &json!({"error": e}));
            return Next::Done(self.final_report(
                job,
                ReportStatus::Failed,
                false,
                Some(format!("{failure}; and the rollback failed: {e}")),
                None,
            ));
        }
        if let Some(after) = &component.after
            && let Err(e) = self.run_step(entry, job, "after", after, None).await
        {
            warn!(instruction.id = %entry.id, "{e}");
        }
        self.log_step(entry, "rolled_back", &json!({"reason": failure}));
        // An A/B image that booted the new slot needs a boot back into the
        // old one; one that never booted it is back already.
        if let Kind::Command { reboot: true, .. } = component.kind
            && job.boot_id.as_deref().is_some_and(|b| b != self.boot_id)
        {
            let waiting = Job {
                boot_id: Some(self.boot_id.clone()),
                ..job.at(Step::AwaitingRollbackReboot)
            };
            let Some(entry) = self.journal_job(entry, waiting.clone(), None) else {
                return Next::Wait;
            };
            return match self.reboot(&entry, &waiting).await {
                Ok(()) => Next::Wait,
                Err(e) => Next::Done(self.final_report(
                    job,
                    ReportStatus::Failed,
                    false,
                    Some(format!(
                        "{failure}; the rollback needs a reboot, which failed: {e}"
                    )),
                    None,
                )),
            };
        }
        Next::Done(self.final_report(job, ReportStatus::Failed, true, Some(failure), None))
    }

    fn swap_back(&self, job: &Job, path: &Path) -> Result<(), String> {
        let (staged, backup) = slots(path);
        let swapped = match (job.staged_inode, fs::inode(path)) {
            (Some(new), Ok(now)) => new == now,
            _ => false,
        };
        if !swapped {
            // The new version never reached `path`.
            if job.source != Source::Backup {
                fs::remove(&staged)
                    .map_err(|e| format!("cannot remove {}: {e}", staged.display()))?;
            }
            return Ok(());
        }
        if job.source == Source::Backup {
            // The backup is in place and `backup` holds what ran before:
            // swap them back; the backup stays the backup.
            return fs::exchange(&backup, path).map_err(|e| format!("cannot swap back: {e}"));
        }
        // The old version is under the staging name; the backup is the
        // last committed one, untouched. (Only a commit cut short after it
        // moved the old version to the backup name leaves it there.)
        let in_backup = !fs::exists(&staged);
        let old = if in_backup { backup } else { staged };
        if !fs::exists(&old) {
            // A first install had nothing to swap with: remove it.
            return fs::remove(path).map_err(|e| format!("cannot remove {}: {e}", path.display()));
        }
        fs::exchange(&old, path).map_err(|e| format!("cannot swap back: {e}"))?;
        fs::remove(&old).map_err(|e| format!("cannot remove the failed version: {e}"))?;
        if in_backup && let Err(e) = self.installed().set_backup(&job.component, None) {
            warn!("cannot record that {} has no backup: {e}", job.component);
        }
        Ok(())
    }

    fn discard_staged(&self, component: &Component, job: &Job) {
        if let Kind::Dir { path } | Kind::File { path } = &component.kind
            && job.source != Source::Backup
        {
            let (staged, _) = slots(path);
            if let Err(e) = fs::remove(&staged) {
                warn!("cannot remove {}: {e}", staged.display());
            }
        }
    }

    /// Runs the device's reboot action for a job that waits for the next
    /// boot (journaled before this runs).
    async fn reboot(&self, entry: &Entry, job: &Job) -> Result<(), String> {
        self.run_step(entry, job, "reboot", &self.config.actions.reboot, None)
            .await
    }

    /// Runs one of the component's commands; `Err` says what went wrong.
    async fn run_step(
        &self,
        entry: &Entry,
        job: &Job,
        what: &str,
        argv: &[String],
        file: Option<&Path>,
    ) -> Result<(), String> {
        let argv: Vec<String> = match file {
            Some(file) => argv
                .iter()
                .map(|a| a.replace("{file}", &file.display().to_string()))
                .collect(),
            None => argv.to_vec(),
        };
        let timeout = (job.deadline - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(MIN_COMMAND_TIMEOUT);
        let result = executor::run_with(
            &argv,
            entry.id,
            &self.output_dir(),
            timeout,
            &self.step_env(job),
            "during_action",
        )
        .await;
        judge(&format!("the {what} command"), &argv, &result)
    }

    fn step_env<'a>(&self, job: &'a Job) -> [(&'static str, &'a str); 2] {
        [
            ("TEND_COMPONENT", job.component.as_str()),
            ("TEND_VERSION", job.to_version.as_deref().unwrap_or("")),
        ]
    }

    /// The version a component runs now: its version file when it has
    /// one, else what the agent recorded when it installed it.
    pub(super) fn running_version(&self, component: &Component) -> Option<String> {
        if component.name == AGENT {
            return Some(self.agent_version());
        }
        component
            .version_file
            .as_deref()
            .and_then(fs::read_version)
            .or_else(|| {
                self.installed()
                    .get(&component.name)
                    .map(|r| r.current.version.clone())
            })
    }

    fn backup_version(&self, component: &Component) -> Option<String> {
        if let Kind::Dir { path } = &component.kind {
            let (_, backup) = slots(path);
            if let Some(version) = fs::read_version(&backup.join("VERSION")) {
                return Some(version);
            }
        }
        self.installed()
            .get(&component.name)
            .and_then(|r| r.backup.as_ref())
            .map(|b| b.version.clone())
    }

    fn has_backup(&self, component: &Component) -> bool {
        match &component.kind {
            Kind::Dir { path } | Kind::File { path } => fs::exists(&slots(path).1),
            Kind::Command { .. } => self.backup_version(component).is_some(),
        }
    }

    /// The versions of every configured component that has one, and of
    /// the agent: what heartbeats and update checks report.
    pub(super) fn component_versions(&self) -> std::collections::BTreeMap<String, String> {
        let mut versions: std::collections::BTreeMap<String, String> = self
            .config
            .software
            .components
            .values()
            .filter_map(|c| Some((c.name.clone(), self.running_version(c)?)))
            .collect();
        versions.insert(AGENT.to_owned(), self.agent_version());
        versions
    }

    /// An `in_progress` report of the job at its step.
    fn progress_report(&self, job: &Job, bytes: Option<(u64, u64)>) -> Report {
        let mut report = Report::status(ReportStatus::InProgress);
        let mut detail = self.detail(job, false);
        detail["phase"] = json!(job.step.phase());
        if let Some((bytes, total)) = bytes {
            detail["bytes"] = json!(bytes);
            detail["total"] = json!(total);
        }
        report.detail = Some(detail);
        report
    }

    fn final_report(
        &self,
        job: &Job,
        status: ReportStatus,
        rolled_back: bool,
        error: Option<String>,
        output: Option<String>,
    ) -> Report {
        let mut detail = self.detail(job, rolled_back);
        detail["phase"] = json!("done");
        Report {
            status,
            output,
            error,
            detail: Some(detail),
        }
    }

    fn detail(&self, job: &Job, rolled_back: bool) -> Value {
        let running = if job.component == AGENT && rolled_back {
            // The process writing this is the new agent about to hand over
            // to the previous binary, which is what runs from now on.
            job.from_version.clone()
        } else {
            self.component(&job.component)
                .and_then(|c| self.running_version(&c))
        };
        let mut detail = json!({
            "component": job.component,
            "from_version": job.from_version,
            "to_version": job.to_version,
            "running_version": running,
            "rolled_back": rolled_back,
        });
        if let Some(source) = job.source.restore_source() {
            detail["source"] = json!(source);
        }
        if let Some(peer) = &job.peer {
            detail["peer"] = json!(peer);
        }
        if let Some(a) = &job.artifact {
            detail["total"] = json!(a.size);
        }
        detail
    }

    /// A configured component, or the agent itself: a `file` component
    /// whose path is the running executable, with no commands of its own
    /// (the new binary proves itself instead of a health check).
    fn component(&self, name: &str) -> Option<Component> {
        if name != AGENT {
            return self.config.software.components.get(name).cloned();
        }
        let (exe, _) = self.exe.as_ref()?;
        Some(Component {
            name: AGENT.to_owned(),
            kind: Kind::File { path: exe.clone() },
            version_file: None,
            health_check: None,
            health_timeout: self.config.software.agent_proof,
            before: None,
            after: None,
        })
    }

    fn downloads_dir(&self) -> PathBuf {
        self.config.state_dir.join("software").join("downloads")
    }

    fn output_dir(&self) -> PathBuf {
        executor::output_dir(&self.config.state_dir)
    }
}

/// When the server stops waiting for the job, as an instant.
fn job_deadline(job: &Job) -> Instant {
    Instant::now()
        + (job.deadline - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
}

/// How far a download is, shared with the task that reports it.
#[derive(Debug)]
struct Progress {
    /// The byte the download started at; `u64::MAX` until known.
    first: AtomicU64,
    bytes: AtomicU64,
    total: AtomicU64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            first: AtomicU64::new(u64::MAX),
            bytes: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }
}

impl Progress {
    fn set(&self, p: download::Progress) {
        let _ =
            self.first
                .compare_exchange(u64::MAX, p.bytes, Ordering::Relaxed, Ordering::Relaxed);
        self.bytes.store(p.bytes, Ordering::Relaxed);
        self.total.store(p.total, Ordering::Relaxed);
    }

    fn first(&self) -> Option<u64> {
        Some(self.first.load(Ordering::Relaxed)).filter(|&b| b != u64::MAX)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// The staging and backup names beside a component's `path`.
fn slots(path: &Path) -> (PathBuf, PathBuf) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = path.parent().unwrap_or(Path::new("/"));
    (
        parent.join(format!(".{name}.tend-staged")),
        parent.join(format!(".{name}.tend-backup")),
    )
}

/// `Ok` when the command exited 0; otherwise what happened, in one line.
fn judge(what: &str, argv: &[String], result: &executor::ActionResult) -> Result<(), String> {
    let command = argv.join(" ");
    let last_line = |text: &str| {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default()
    };
    match &result.end {
        End::Exited(status) if status.success() => Ok(()),
        End::Exited(status) => Err(format!(
            "{what} (`{command}`) ended with {status}{}",
            last_line(&result.stderr)
        )),
        End::Error(e) => Err(format!("{what} (`{command}`) could not run: {e}")),
        End::TimedOut(after) => Err(format!(
            "{what} (`{command}`) did not finish within {} s and was killed",
            after.as_secs()
        )),
    }
}

fn rejected(error: String) -> Report {
    Report {
        status: ReportStatus::Rejected,
        output: None,
        error: Some(error),
        detail: None,
    }
}

fn bytes_text(bytes: u64) -> String {
    const MB: f64 = 1_000_000.0;
    format!("{:.1} MB", bytes as f64 / MB)
}

#[cfg(test)]
mod tests;
