//! The engine's tests, against a sync server that accepts every report.
use std::sync::Arc;

use serde_json::json;
use tend_proto::device::Instruction;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::super::testing::*;
use super::*;

/// A `dir` component `app` at version `running`, with a backup at
/// `backup` when given; its health check passes while `healthy` exists.
fn app(device: &Device, running: &str, backup: Option<&str>) -> (PathBuf, String) {
    let path = device.root().join("app");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("VERSION"), format!("{running}\n")).unwrap();
    if let Some(version) = backup {
        let (_, slot) = slots(&path);
        std::fs::create_dir_all(&slot).unwrap();
        std::fs::write(slot.join("VERSION"), format!("{version}\n")).unwrap();
    }
    let healthy = device.root().join("healthy");
    std::fs::write(&healthy, "").unwrap();
    let table = format!(
        "[components.app]\nkind = \"dir\"\npath = {:?}\n\
         health_check = [\"test\", \"-e\", {:?}]\nhealth_timeout_s = 5\n",
        path.display().to_string(),
        healthy.display().to_string(),
    );
    (path, table)
}

fn agent_with(device: &Device, server: &str, tables: &str) -> Arc<Agent> {
    let mut agent =
        Agent::start(device.config_with(server, tables), CancellationToken::new()).unwrap();
    Arc::get_mut(&mut agent.client).unwrap().retry =
        crate::backoff::Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
    Arc::new(agent)
}

fn restore(params: Value) -> Instruction {
    Instruction {
        params,
        ..instruction("restore")
    }
}

fn upgrade_to(version: &str, size: u64) -> Instruction {
    let id = Uuid::new_v4();
    Instruction {
        params: json!({"artifact_id": id, "artifact": {
            "id": id, "component": "app", "version": version, "size": size,
            "sha256": "a".repeat(64),
        }}),
        ..instruction("upgrade")
    }
}

fn version_of(path: &Path) -> Option<String> {
    fs::read_version(&path.join("VERSION"))
}

#[tokio::test]
async fn a_restore_from_the_backup_swaps_it_in_and_keeps_what_ran_as_the_backup() {
    let server = accepting_server().await;
    let device = Device::new("boot-1");
    let (path, table) = app(&device, "2.0.0", Some("1.0.0"));
    let agent = agent_with(&device, &server.uri(), &table);
    let instruction = restore(json!({"component": "app", "source": "backup"}));
    agent.clone().handle_batch(vec![instruction.clone()]).await;

    let entry = agent.journal().get(instruction.id).cloned().unwrap();
    assert_eq!(entry.state, State::Finished);
    assert_eq!(
        entry.report.status,
        ReportStatus::Succeeded,
        "{:?}",
        entry.report
    );
    let detail = entry.report.detail.unwrap();
    assert_eq!(detail["from_version"], "2.0.0");
    assert_eq!(detail["to_version"], "1.0.0");
    assert_eq!(detail["running_version"], "1.0.0");
    assert_eq!(detail["source"], "backup");
    assert_eq!(detail["rolled_back"], false);
    assert_eq!(version_of(&path).as_deref(), Some("1.0.0"));
    assert_eq!(version_of(&slots(&path).1).as_deref(), Some("2.0.0"));
    let steps: Vec<String> = device
        .operations()
        .iter()
        .filter_map(|op| op["step"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        steps,
        [
            "prepared",
            "backed_up",
            "installed",
            "health_check_passed",
            "committed"
        ]
    );
}

#[tokio::test]
async fn a_restore_whose_health_check_fails_is_swapped_back() {
    let server = accepting_server().await;
    let device = Device::new("boot-1");
    let (path, table) = app(&device, "2.0.0", Some("1.0.0"));
    std::fs::remove_file(device.root().join("healthy")).unwrap();
    let agent = agent_with(&device, &server.uri(), &table);
    let instruction = restore(json!({"component": "app"}));
    agent.clone().handle_batch(vec![instruction.clone()]).await;

    let report = agent.journal().get(instruction.id).unwrap().report.clone();
    assert_eq!(report.status, ReportStatus::Failed);
    assert!(
        report.error.as_deref().unwrap().contains("health check"),
        "{report:?}"
    );
    let detail = report.detail.unwrap();
    assert_eq!(detail["rolled_back"], true);
    assert_eq!(detail["running_version"], "2.0.0");
    assert_eq!(version_of(&path).as_deref(), Some("2.0.0"));
    assert_eq!(
        version_of(&slots(&path).1).as_deref(),
        Some("1.0.0"),
        "the backup is still the backup"
    );
}

#[tokio::test]
async fn what_the_device_cannot_or_need_not_do_ends_before_anything_is_fetched() {
    let server = accepting_server().await;
    let device = Device::new("boot-1");
    let (path, table) = app(&device, "2.0.0", None);
    let agent = agent_with(&device, &server.uri(), &table);
    let other = Instruction {
        params: json!({"component": "kiosk", "source": "backup"}),
        ..instruction("restore")
    };
    let peer = restore(json!({"component": "app", "source": "peer"}));
    let no_backup = restore(json!({"component": "app"}));
    let same = upgrade_to("2.0.0", 10);
    let huge = upgrade_to("3.0.0", u64::MAX / 8);
    agent
        .clone()
        .handle_batch(vec![
            other.clone(),
            peer.clone(),
            no_backup.clone(),
            same.clone(),
            huge.clone(),
        ])
        .await;

    let report = |i: &Instruction| agent.journal().get(i.id).unwrap().report.clone();
    let r = report(&other);
    assert_eq!(r.status, ReportStatus::Rejected);
    assert!(r.error.unwrap().contains("no component kiosk"));
    // Installed by other means: no digest to check a peer's image against.
    let r = report(&peer);
    assert_eq!(r.status, ReportStatus::Rejected);
    assert!(r.error.unwrap().contains("no record of the digest"));
    let r = report(&no_backup);
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(r.error.unwrap().contains("no backup"));
    let r = report(&same);
    assert_eq!(r.status, ReportStatus::Succeeded);
    assert!(r.output.unwrap().contains("already runs 2.0.0"));
    assert_eq!(r.detail.unwrap()["running_version"], "2.0.0");
    let r = report(&huge);
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("not enough free space"),
        "{r:?}"
    );
    assert_eq!(r.detail.unwrap()["rolled_back"], false);

    assert_eq!(version_of(&path).as_deref(), Some("2.0.0"));
    let fetched = server.received_requests().await.unwrap();
    assert!(
        fetched
            .iter()
            .all(|r| !r.url.path().contains("/artifacts/")),
        "nothing was downloaded"
    );
}

#[tokio::test]
async fn an_install_cut_short_after_the_swap_is_rolled_back_at_the_next_start() {
    let server = accepting_server().await;
    let device = Device::new("boot-1");
    // The swap happened: `path` holds the new version, the staging
    // name the old one, when the power went.
    let (path, table) = app(&device, "2.0.0", Some("0.9.0"));
    let (staged, backup) = slots(&path);
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("VERSION"), "1.0.0\n").unwrap();
    let instruction = upgrade_to("2.0.0", 10);
    let job = Job {
        component: "app".into(),
        source: Source::Upgrade,
        artifact: None,
        from_version: Some("1.0.0".into()),
        to_version: Some("2.0.0".into()),
        step: Step::Installing,
        deadline: Utc::now() + TimeDelta::hours(1),
        staged_inode: Some(fs::inode(&path).unwrap()),
        boot_id: None,
        health_attempts: 0,
        failure: None,
        peer: None,
    };
    let entry = Entry {
        state: State::Running,
        job: Some(job),
        params: instruction.params.clone(),
        ..started("upgrade", "boot-1")
    };
    write_journal(&device.state_dir(), std::slice::from_ref(&entry));

    let agent = agent_with(&device, &server.uri(), &table);
    let resumable = std::mem::take(&mut *agent.resumable.lock().unwrap());
    assert_eq!(
        resumable.len(),
        1,
        "the job is taken up again, not failed blind"
    );
    agent.resume_job(resumable[0].clone()).await;

    let report = agent.journal().get(entry.id).unwrap().report.clone();
    assert_eq!(report.status, ReportStatus::Failed);
    assert!(
        report
            .error
            .as_deref()
            .unwrap()
            .contains("during the install")
    );
    assert_eq!(report.detail.as_ref().unwrap()["rolled_back"], true);
    assert_eq!(report.detail.unwrap()["running_version"], "1.0.0");
    assert_eq!(version_of(&path).as_deref(), Some("1.0.0"));
    assert!(!fs::exists(&staged), "the failed version is gone");
    assert_eq!(version_of(&backup).as_deref(), Some("0.9.0"));
}
