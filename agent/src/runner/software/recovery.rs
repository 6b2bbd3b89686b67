//! LAN peer recovery around the restore engine (seed 000): serving this
//! device's verified images to peers of its type, remembering that type
//! for a start without the server, and restoring a broken component from a
//! peer on the agent's own initiative.
//!
//! A component is broken when its health check fails. The agent restores
//! it on its own when it finds it broken with no backup beside it, at
//! start, or after it has been unable to reach the server for
//! `[peer] offline_recover_s` (a site whose uplink is down cannot wait
//! for an admin). The restore is the same job an instruction would run
//! (journaled, logged, backup, install, health check, commit or roll
//! back), marked `local`: its final report goes to the server as a
//! recovery record once the link is back, and shows in the device's
//! command history.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use tend_proto::command::ReportStatus;
use tend_proto::device::Report;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::super::Agent;
use crate::executor;
use crate::journal::{self, Entry, State};
use crate::peer::{self, Image, Images};
use crate::software::download;
use crate::software::settings::{Component, Kind};

/// Where the device's type is kept between runs.
const DEVICE_TYPE_FILE: &str = "device_type";

/// How long the agent gives a recovery it started itself (from its start,
/// and again from a restart that resumes it).
pub(super) const RECOVERY_TIMEOUT: TimeDelta = TimeDelta::minutes(30);

/// The shortest time between two recoveries of one component that the
/// agent starts itself.
const RETRY_AFTER: TimeDelta = TimeDelta::hours(1);

/// `state_dir/software/recoveries.json`: when each component was last
/// restored on the agent's own initiative.
const ATTEMPTS_FILE: &str = "recoveries.json";

/// How often the offline watch looks at the link and the components.
const OFFLINE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The images a peer may fetch from this device: the downloads of what
/// each component runs and of what its backup holds, as the installed
/// record names them. Downloads are renamed to their digest only once
/// verified, so a file found under that name is one the device checked.
struct Held {
    agent: Arc<Agent>,
}

impl Images for Held {
    fn find(&self, sha256: &str) -> Option<Image> {
        if !peer::is_sha256(sha256) {
            return None;
        }
        let (component, recorded) = {
            let installed = self.agent.installed();
            self.agent
                .config
                .software
                .components
                .keys()
                .find_map(|name| {
                    let r = installed.get(name)?;
                    std::iter::once(&r.current)
                        .chain(r.backup.as_ref())
                        .find(|v| v.sha256.as_deref() == Some(sha256))
                        .map(|v| (name.clone(), v.size))
                })?
        };
        let path = download::path(&self.agent.downloads_dir(), sha256);
        let on_disk = std::fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
        // The size it had when it was verified, when the record has it: a
        // file that changed since is not served.
        Some(Image {
            component,
            path,
            size: recorded.unwrap_or(on_disk),
        })
    }
}

impl Agent {
    fn device_type_file(&self) -> PathBuf {
        self.config.state_dir.join(DEVICE_TYPE_FILE)
    }
}

impl Agent {
    /// Takes the device type kept by the last run, so a device that starts
    /// with its uplink down still knows which peers are its own (what the
    /// server says at the next authentication replaces it).
    pub(crate) fn load_device_type(&self) {
        if let Ok(text) = std::fs::read_to_string(self.device_type_file()) {
            let known = text.trim();
            if tend_proto::device::is_device_type(known) {
                self.client.assume_device_type(known.to_owned());
            }
        }
    }
}

/// Keeps the device type the server tells in `state_dir`, for the next
/// start ([`Agent::load_device_type`]).
pub(crate) async fn remember_device_type(agent: Arc<Agent>) {
    let file = agent.device_type_file();
    let mut types = agent.client.device_type();
    loop {
        let current = types.borrow_and_update().clone();
        if let Some(device_type) = current {
            let kept = std::fs::read_to_string(&file).unwrap_or_default();
            if kept.trim() != device_type
                && let Err(e) = crate::software::fs::write_private_atomic(
                    &file,
                    format!("{device_type}\n").as_bytes(),
                )
            {
                warn!("cannot keep the device type in {}: {e}", file.display());
            }
        }
        if types.changed().await.is_err() {
            return;
        }
    }
}

/// With `[peer] serve = true`: serves this device's images to peers of
/// its type, from the moment the type is known until shutdown.
pub(crate) async fn serve_peers(agent: Arc<Agent>) {
    if !agent.config.peer.serve {
        return;
    }
    let mut types = agent.client.device_type();
    let device_type = match types.wait_for(Option::is_some).await {
        Ok(known) => known.clone().unwrap_or_default(),
        Err(_) => return,
    };
    let images: Arc<dyn Images> = Arc::new(Held {
        agent: agent.clone(),
    });
    info!(
        listen = %agent.config.peer.listen,
        device_type = %device_type,
        "serving this device's images to LAN peers of type {device_type}"
    );
    if let Err(e) = peer::serve(
        agent.config.peer.clone(),
        device_type,
        images,
        agent.shutdown.child_token(),
    )
    .await
    {
        error!(
            "cannot serve images to LAN peers on {}: {e:#}",
            agent.config.peer.listen
        );
    }
}

/// Restores broken components from peers once heartbeats have been
/// failing for `offline_recover_s` (never with 0). Held long-polls are not
/// failures: only an unbroken run of failed heartbeats counts.
pub(crate) async fn offline_watch(agent: Arc<Agent>) {
    let Some(after) = agent.config.peer.offline_recover else {
        return;
    };
    loop {
        tokio::time::sleep(OFFLINE_CHECK_EVERY.min(after)).await;
        let offline = agent.offline_for();
        if offline < after {
            continue;
        }
        debug!(
            offline_s = offline.as_secs(),
            "the server has been out of reach; checking the components"
        );
        agent
            .recover_broken(&format!(
                "the server has been out of reach for {} s",
                offline.as_secs()
            ))
            .await;
    }
}

impl Agent {
    /// Health-checks every component that tend installed and that has a
    /// check, and restores each that fails and has no backup from a peer.
    /// `why` goes to the record.
    ///
    /// One pass at a time (a pass already running is not doubled), each
    /// component checked and restored under the lock every change of
    /// software takes, and at most one attempt per component per
    /// [`RETRY_AFTER`] (kept in `state_dir`), so a check that fails for a
    /// reason an image cannot fix never turns into a restore loop.
    /// Components installed with a reboot (`reboot = true`) are left to an
    /// admin: the agent does not reboot the device on its own.
    pub(crate) async fn recover_broken(&self, why: &str) {
        if !self.config.peer.auto_recover {
            return;
        }
        let Ok(_one_pass) = self.recovering.try_lock() else {
            return;
        };
        let components: Vec<Component> = self
            .config
            .software
            .components
            .values()
            .filter(|c| c.health_check.is_some())
            .filter(|c| !matches!(c.kind, Kind::Command { reboot: true, .. }))
            .cloned()
            .collect();
        for component in components {
            if self.shutdown.is_cancelled() {
                return;
            }
            // Only what tend installed has a digest to check a peer's
            // image against.
            if self.trusted_image(&component.name, None).is_err()
                || self.attempted_recently(&component.name)
            {
                continue;
            }
            let _one_at_a_time = self.software.lock().await;
            if self.component_busy(&component.name) {
                continue;
            }
            let Some(error) = self.broken(&component).await else {
                continue;
            };
            if self.has_backup(&component) {
                warn!(
                    component = %component.name,
                    "{} is broken ({error}); its backup is on this device, so it is left for an \
                     admin to restore (restore with source backup)",
                    component.name
                );
                continue;
            }
            warn!(
                component = %component.name,
                "{} is broken ({error}) and has no backup: restoring it from a LAN peer",
                component.name
            );
            self.record_attempt(&component.name);
            self.recover_from_peer(&component, &format!("{why}; {error}"))
                .await;
        }
    }

    fn attempts_file(&self) -> PathBuf {
        self.config.state_dir.join("software").join(ATTEMPTS_FILE)
    }

    /// When the agent last restored each component on its own.
    fn attempts(&self) -> BTreeMap<String, DateTime<Utc>> {
        std::fs::read(self.attempts_file())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn attempted_recently(&self, component: &str) -> bool {
        self.attempts()
            .get(component)
            .is_some_and(|at| Utc::now() - *at < RETRY_AFTER && *at <= Utc::now())
    }

    fn record_attempt(&self, component: &str) {
        let mut attempts = self.attempts();
        attempts.insert(component.to_owned(), Utc::now());
        let file = self.attempts_file();
        let written = serde_json::to_vec(&attempts)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::software::fs::write_private_atomic(&file, &bytes));
        if let Err(e) = written {
            warn!(
                "cannot record the recovery attempt in {}: {e}",
                file.display()
            );
        }
    }

    /// Whether an upgrade or restore of `name` is journaled and not yet
    /// finished.
    fn component_busy(&self, name: &str) -> bool {
        self.journal().entries().any(|e| {
            !matches!(e.state, State::Finished | State::Reported)
                && e.job.as_ref().is_some_and(|j| j.component == name)
        })
    }

    /// Runs the component's health check; `Some` says why it failed.
    async fn broken(&self, component: &Component) -> Option<String> {
        let check = component.health_check.as_ref()?;
        let version = self.running_version(component).unwrap_or_default();
        let result = executor::run_with(
            check,
            Uuid::new_v4(),
            &self.output_dir(),
            component.health_timeout,
            &[
                ("TEND_COMPONENT", component.name.as_str()),
                ("TEND_VERSION", version.as_str()),
            ],
            "during_health_check",
        )
        .await;
        super::judge("the health check", check, &result).err()
    }

    /// Journals and runs a restore of `component` from a peer that no
    /// instruction asked for.
    /// The caller holds the software lock.
    async fn recover_from_peer(&self, component: &Component, why: &str) {
        let now = Utc::now();
        let entry = Entry {
            id: Uuid::new_v4(),
            kind: "restore".into(),
            params: json!({"component": component.name, "source": "peer"}),
            state: State::Started,
            boot_id: self.boot_id.clone(),
            started_at: now,
            at: now,
            report: Report::status(ReportStatus::InProgress),
            exit_code: None,
            format: journal::FORMAT,
            trace_id: None,
            job: None,
            local: true,
        };
        if let Err(e) = self.journal().append(entry.clone()) {
            error!(
                "cannot journal a recovery of {}, so not running it: {:#}",
                component.name,
                anyhow::Error::from(e)
            );
            return;
        }
        self.log_step(&entry, "recovery_started", &json!({"reason": why}));
        self.begin_job(entry, now + RECOVERY_TIMEOUT).await;
    }
}
