//! An upgrade or restore in flight, as the journal keeps it.
//!
//! Each step is journaled (fsync) before it runs, so after a crash or a
//! power cut the agent knows exactly where it stopped and decides from
//! there (see `runner::software`): steps before the swap touched nothing
//! and are continued; an interrupted swap or install is rolled back; an
//! interrupted health check is run again, once; a rollback is finished.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tend_proto::params::ArtifactRef;

/// What the job puts in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `upgrade`: the artifact.
    Upgrade,
    /// `restore` from the backup beside the component.
    Backup,
    /// `restore` from the cloud: the artifact of the wanted version.
    Cloud,
    /// `restore` from a LAN peer of the same device type (seed 000): the
    /// image whose digest the instruction signed or the device recorded.
    Peer,
}

impl Source {
    /// The `source` a restore's report names.
    pub fn restore_source(self) -> Option<&'static str> {
        match self {
            Source::Upgrade => None,
            Source::Backup => Some("backup"),
            Source::Cloud => Some("cloud"),
            Source::Peer => Some("peer"),
        }
    }
}

/// Where the job is; journaled before the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Fetching the artifact (resumable; nothing on the component touched).
    Downloading,
    /// The download's SHA-256 matched; staging the new version beside the
    /// old one.
    Verified,
    /// The new version is staged and the backup slot ready; nothing
    /// installed yet.
    Prepared,
    /// `before`, the swap or the install command, `after`: interrupted
    /// here, the job is rolled back.
    Installing,
    /// The install takes effect at the next boot; `boot_id` is the boot it
    /// was installed in.
    AwaitingReboot,
    HealthCheck,
    /// Putting the previous version back; `failure` says why.
    RollingBack,
    /// A `reboot = true` component's rollback needs the machine to boot
    /// the previous version again.
    AwaitingRollbackReboot,
    /// The agent's own new binary is in place and the agent restarts into
    /// it; the new agent must prove itself (authenticate and heartbeat)
    /// or the previous binary is put back.
    Restarting,
}

impl Step {
    /// The `phase` reports name while the job is at this step.
    pub fn phase(self) -> &'static str {
        match self {
            Step::Downloading => "downloading",
            Step::Verified => "backing_up",
            Step::Prepared | Step::Installing => "installing",
            Step::AwaitingReboot | Step::AwaitingRollbackReboot => "rebooting",
            Step::HealthCheck | Step::Restarting => "health_check",
            Step::RollingBack => "rolling_back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub component: String,
    pub source: Source,
    /// What is fetched and installed (`upgrade`, `restore` from the cloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub step: Step,
    /// When the server stops waiting for this job (its timeout).
    pub deadline: DateTime<Utc>,
    /// The inode of the staged new version: after a crash, `path` having
    /// this inode means the swap happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_inode: Option<u64>,
    /// The boot id before the reboot this job waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Health checks started; one interrupted by a restart is run again
    /// once, not forever.
    #[serde(default)]
    pub health_attempts: u32,
    /// Why the job is rolling back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// A restore from a peer: the address and port the image came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

impl Job {
    pub fn at(&self, step: Step) -> Job {
        Job {
            step,
            ..self.clone()
        }
    }

    pub fn rolling_back(&self, failure: String) -> Job {
        Job {
            step: Step::RollingBack,
            failure: Some(failure),
            ..self.clone()
        }
    }
}
