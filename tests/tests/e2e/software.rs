//! The software lifecycle on a real agent: `upgrade` of `dir`, `file` and
//! `command` components (with a reboot for an A/B image), the health check
//! and the automatic rollback, `restore` from the backup and from the
//! cloud, the agent's own upgrade, the scheduled update check, and the
//! agent SIGKILLed at every step of an upgrade.
//!
//! Components live in the agent's temporary directory (`<agent>/device/`).
//! Every agent talks to tend-sync through a [`Recorder`], which shows the
//! byte ranges each download fetched and how many final reports each
//! instruction got.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tend_tests::tree::{Tree, noise, read_tree, sha256, tar_gz, write_tree};
use tend_tests::{Agent, Device, Recorder, Service, Stack, bin, eventually, toml_array};
use tokio::time::Instant;
use uuid::Uuid;

/// The `step` values of an upgrade's lines in the operation log, in the
/// order an upgrade that commits writes them (other steps may come in
/// between).
const UPGRADE_STEPS: [&str; 6] = [
    "download_started",
    "verified",
    "backed_up",
    "installed",
    "health_check_passed",
    "committed",
];
/// The steps a failed health check adds, in order.
const ROLLBACK_STEPS: [&str; 2] = ["health_check_failed", "rolled_back"];
/// The step of a download that continues from a persisted offset.
const DOWNLOAD_RESUMED: &str = "download_resumed";
/// `detail.phase` of a software command that ended.
const PHASE_DONE: &str = "done";

/// The longest any wait of these tests lasts.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
const FINAL: [&str; 3] = ["succeeded", "failed", "rejected"];

fn seed_of(text: &str) -> u64 {
    text.bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
}

/// The demo application at `version`: a `VERSION` file, a file of every
/// version, one in a subdirectory, and one that only this version has.
fn app(version: &str) -> Tree {
    let mut tree = Tree::new();
    tree.insert("VERSION".into(), format!("{version}\n").into_bytes());
    tree.insert(
        "app.txt".into(),
        format!("demo app {version}\n").into_bytes(),
    );
    tree.insert("lib/data.bin".into(), noise(4096, seed_of(version)));
    tree.insert(format!("only-in-{version}"), version.as_bytes().to_vec());
    tree
}

/// [`app`] with a large file of `len` bytes in it.
fn app_with_payload(version: &str, len: usize) -> Tree {
    let mut tree = app(version);
    tree.insert(
        "lib/payload.bin".into(),
        noise(len, seed_of(version) ^ 0xA5),
    );
    tree
}

/// What the test compares to see that a tree is wholly one version.
fn describe(tree: &Tree) -> Vec<(String, usize, String)> {
    tree.iter()
        .map(|(name, bytes)| (name.clone(), bytes.len(), sha256(bytes)))
        .collect()
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn detail(command: &Value) -> &Value {
    &command["result"]["detail"]
}

fn is_terminal(status: &str) -> bool {
    status
        .parse::<tend_proto::CommandStatus>()
        .is_ok_and(tend_proto::CommandStatus::is_terminal)
}

/// `expected` appears in `steps` in this order (other steps may come in
/// between).
fn assert_in_order(steps: &[String], expected: &[&str], what: &str) {
    let mut rest = steps.iter();
    for want in expected {
        assert!(
            rest.any(|s| s == want),
            "{what}: step {want:?} missing or out of order in {steps:?} (expected {expected:?} in this order)"
        );
    }
}

/// A stack, a device, its agent (not started yet) behind a [`Recorder`].
/// Fields drop in order: the agent is killed before the stack goes.
struct Rig {
    agent: Agent,
    recorder: Recorder,
    stack: Stack,
    admin: String,
    device: Device,
    /// Whether a dead agent is started again, as systemd's
    /// `Restart=always` would (fake reboots, the agent's own upgrade);
    /// otherwise an agent that dies fails the test.
    supervised: bool,
}

impl Rig {
    async fn new() -> Rig {
        Rig::with_agent(Agent::new).await
    }

    async fn with_agent(make: impl FnOnce(&Stack, &Device) -> Agent) -> Rig {
        Rig::with_stack(Stack::start().await, make).await
    }

    async fn with_stack(stack: Stack, make: impl FnOnce(&Stack, &Device) -> Agent) -> Rig {
        let admin = stack.admin().await;
        let device = stack.new_device(&admin).await;
        let recorder = Recorder::start(&stack.url(Service::Sync)).await;
        let mut agent = make(&stack, &device);
        agent.set_server(&recorder.url());
        // Updates come only from the test's commands; the update check's
        // own test turns it on.
        agent.set_config_line("update_check_s", "0");
        std::fs::create_dir_all(agent.dir.join("device")).expect("device directory");
        Rig {
            agent,
            recorder,
            stack,
            admin,
            device,
            supervised: false,
        }
    }

    /// Where this device's components live.
    fn root(&self) -> PathBuf {
        self.agent.dir.join("device")
    }

    /// `app`, a `dir` component at `<root>/opt/app` holding `tree`, with
    /// `extra` TOML lines in its table; returns its path.
    fn dir_component(&mut self, tree: &Tree, extra: &str) -> PathBuf {
        let path = self.root().join("opt").join("app");
        write_tree(&path, tree);
        self.agent.add_component(
            "app",
            &format!(
                "kind = \"dir\"\npath = {}\n{extra}",
                toml_string(&path.display().to_string())
            ),
        );
        path
    }

    /// Uploads an artifact for this device's type; answers its id.
    async fn artifact(&self, component: &str, version: &str, body: Vec<u8>) -> String {
        let a = self
            .stack
            .upload_artifact(&self.admin, component, version, &["kiosk"], body)
            .await;
        a["id"].as_str().expect("artifact id").to_owned()
    }

    async fn queue(&self, kind: &str, params: Value) -> Uuid {
        self.stack
            .queue(
                &self.admin,
                self.device.id,
                json!({ "kind": kind, "params": params }),
            )
            .await
    }

    async fn upgrade(&self, artifact_id: &str) -> Uuid {
        self.queue("upgrade", json!({ "artifact_id": artifact_id }))
            .await
    }

    /// Restarts a dead agent when supervised; fails the test otherwise.
    fn watch_agent(&mut self) {
        if self.supervised {
            self.agent.restart_if_exited();
        } else {
            assert!(
                !self.agent.has_exited(),
                "the agent exited on its own (see its log below)"
            );
        }
    }

    /// Waits for the command to end; answers it.
    async fn settle(&mut self, id: Uuid) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            self.watch_agent();
            let v = self.stack.command(&self.admin, id).await;
            if is_terminal(v["status"].as_str().unwrap_or_default()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "command {id} did not end within {WAIT:?}: {v}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the command to end with `status`; answers it.
    async fn settle_as(&mut self, id: Uuid, status: &str) -> Value {
        let v = self.settle(id).await;
        assert_eq!(v["status"], status, "command {id}: {v}");
        v
    }

    /// Waits until the device record shows `name` at `version`.
    async fn wait_component(&mut self, name: &str, version: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        let path = format!("/devices/{}", self.device.id);
        loop {
            self.watch_agent();
            let (_, v) = self.stack.get(&self.admin, &path).await;
            if v["components"][name]["version"] == version {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the device record did not show {name} {version} within {WAIT:?}: {v}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for `n` more heartbeats than the recorder has seen so far.
    async fn more_heartbeats(&mut self, n: usize) {
        let target = self.recorder.heartbeats() + n;
        let deadline = Instant::now() + WAIT;
        while self.recorder.heartbeats() < target {
            self.watch_agent();
            assert!(
                Instant::now() < deadline,
                "the agent stopped heartbeating ({} of {target} heartbeats)",
                self.recorder.heartbeats()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The `step` values of the instruction's operation-log lines, in order.
    fn steps(&self, id: Uuid) -> Vec<String> {
        self.agent
            .operations()
            .iter()
            .filter(|o| o["instruction_id"] == json!(id))
            .filter_map(|o| o["step"].as_str().map(str::to_owned))
            .collect()
    }

    /// Lines of the operation log that record the instruction's final
    /// outcome (a final status on a line that is not a step).
    fn final_lines(&self, id: Uuid) -> Vec<Value> {
        self.agent
            .operations()
            .into_iter()
            .filter(|o| o["instruction_id"] == json!(id))
            .filter(|o| o["step"].is_null())
            .filter(|o| o["outcome"].as_str().is_some_and(|s| FINAL.contains(&s)))
            .collect()
    }

    /// The command `ended` stays as it ended while the agent heartbeats
    /// on, the agent sent exactly one final report for it, and its
    /// operation log holds exactly one final line for it.
    async fn assert_one_final_report(&mut self, ended: &Value) {
        let id: Uuid = ended["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id");
        self.more_heartbeats(3).await;
        let now = self.stack.command(&self.admin, id).await;
        assert_eq!(now["status"], ended["status"], "{now}");
        assert_eq!(now["finished_at"], ended["finished_at"], "{now}");
        assert_eq!(now["result"], ended["result"], "{now}");
        assert_eq!(
            self.recorder.final_reports(id),
            1,
            "final reports sent for {id}: {:?}",
            self.recorder
                .exchanges()
                .iter()
                .filter(|e| e.path.contains(&id.to_string()))
                .collect::<Vec<_>>()
        );
        let lines = self.final_lines(id);
        assert_eq!(
            lines.len(),
            1,
            "final lines in the operation log: {lines:?}"
        );
        assert_eq!(lines[0]["outcome"], ended["status"]);
    }

    async fn assert_denylisted(&self, artifact_id: &str) {
        let path = format!("/artifacts/{artifact_id}/denylist/{}", self.device.id);
        eventually(
            Duration::from_secs(10),
            "the device on the artifact's denylist",
            || async { (self.stack.get(&self.admin, &path).await.0 == 200).then_some(()) },
        )
        .await;
    }
}

/// A health check that passes when the component's `VERSION` is the
/// version under check, and the agent says which component it checks.
fn version_check(path: &Path) -> String {
    let script = format!(
        "test \"$(cat '{}/VERSION')\" = \"$TEND_VERSION\" && test \"$TEND_COMPONENT\" = app",
        path.display()
    );
    format!(
        "health_check = {}\nhealth_timeout_s = 10",
        toml_array(&["sh", "-c", &script])
    )
}

#[tokio::test]
async fn a_dir_component_is_upgraded_and_the_device_record_shows_the_new_version() {
    let mut rig = Rig::new().await;
    let hooks = rig.root().join("hooks");
    let hook = |when: &str| {
        toml_array(&[
            "sh",
            "-c",
            &format!("echo \"{when} $TEND_VERSION\" >> '{}'", hooks.display()),
        ])
    };
    let extra = format!(
        "{}\nbefore = {}\nafter = {}",
        version_check(&rig.root().join("opt/app")),
        hook("before"),
        hook("after")
    );
    let path = rig.dir_component(&app("1.0.0"), &extra);
    rig.agent.start();
    rig.wait_component("app", "1.0.0").await;

    let v2 = rig.artifact("app", "2.0.0", tar_gz(&app("2.0.0"))).await;
    let id = rig.upgrade(&v2).await;
    let done = rig.settle_as(id, "succeeded").await;

    let d = detail(&done);
    assert_eq!(d["component"], "app", "{done}");
    assert_eq!(d["from_version"], "1.0.0", "{done}");
    assert_eq!(d["to_version"], "2.0.0", "{done}");
    assert_eq!(d["running_version"], "2.0.0", "{done}");
    assert_eq!(d["rolled_back"], false, "{done}");
    assert_eq!(d["phase"], PHASE_DONE, "{done}");
    assert_eq!(
        describe(&read_tree(&path)),
        describe(&app("2.0.0")),
        "the directory is version 2.0.0, and nothing of 1.0.0 remains"
    );
    assert_eq!(
        std::fs::read_to_string(&hooks).unwrap_or_default(),
        "before 2.0.0\nafter 2.0.0\n",
        "before and after ran once each, around the swap"
    );
    rig.wait_component("app", "2.0.0").await;
    assert_in_order(
        &rig.steps(id),
        &UPGRADE_STEPS,
        "the upgrade's operation log",
    );
    rig.assert_one_final_report(&done).await;
}

#[tokio::test]
async fn a_file_component_is_replaced_and_its_version_file_written() {
    let mut rig = Rig::new().await;
    let file = rig.root().join("opt").join("settings.bin");
    let version_file = rig.root().join("opt").join("settings.version");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, noise(10_000, 1)).unwrap();
    std::fs::write(&version_file, "1.0.0\n").unwrap();
    rig.agent.add_component(
        "settings",
        &format!(
            "kind = \"file\"\npath = {}\nversion_file = {}",
            toml_string(&file.display().to_string()),
            toml_string(&version_file.display().to_string())
        ),
    );
    rig.agent.start();
    rig.wait_component("settings", "1.0.0").await;

    let new = noise(12_345, 2);
    let v2 = rig.artifact("settings", "2.0.0", new.clone()).await;
    let id = rig.upgrade(&v2).await;
    let done = rig.settle_as(id, "succeeded").await;

    assert_eq!(detail(&done)["running_version"], "2.0.0", "{done}");
    assert_eq!(detail(&done)["rolled_back"], false, "{done}");
    assert!(
        std::fs::read(&file).unwrap() == new,
        "the file holds the artifact's bytes"
    );
    let written = std::fs::read_to_string(&version_file).unwrap();
    assert_eq!(written.lines().next(), Some("2.0.0"), "{written:?}");
    rig.wait_component("settings", "2.0.0").await;
    rig.assert_one_final_report(&done).await;
}

#[tokio::test]
async fn an_unconfigured_component_is_rejected_and_the_running_version_is_not_installed_again() {
    let mut rig = Rig::new().await;
    let path = rig.dir_component(&app("1.0.0"), "");
    rig.agent.start();
    rig.wait_component("app", "1.0.0").await;
    let version_mtime = || {
        std::fs::metadata(path.join("VERSION"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = version_mtime();

    let os = rig.artifact("os", "2.0.0", noise(1000, 3)).await;
    let id = rig.upgrade(&os).await;
    let rejected = rig.settle_as(id, "rejected").await;
    assert!(
        rejected["result"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("os")),
        "the error names the component: {rejected}"
    );
    assert!(
        rig.recorder.downloads(&os).is_empty(),
        "nothing was fetched"
    );

    let same = rig.artifact("app", "1.0.0", tar_gz(&app("1.0.0"))).await;
    let id = rig.upgrade(&same).await;
    let done = rig.settle_as(id, "succeeded").await;
    assert_eq!(detail(&done)["running_version"], "1.0.0", "{done}");
    assert!(
        rig.recorder.downloads(&same).is_empty(),
        "nothing was fetched"
    );
    assert_eq!(version_mtime(), before, "nothing was touched");
    assert_eq!(describe(&read_tree(&path)), describe(&app("1.0.0")));
    rig.assert_one_final_report(&done).await;
}

#[tokio::test]
async fn a_corrupted_download_is_refused_before_install_and_the_component_is_untouched() {
    let mut rig = Rig::new().await;
    let path = rig.dir_component(&app("1.0.0"), &version_check(&rig.root().join("opt/app")));
    let body = tar_gz(&app_with_payload("2.0.0", 64 * 1024));
    let v2 = rig.artifact("app", "2.0.0", body.clone()).await;
    // The store's copy changes after the upload: same size, other bytes.
    let object = rig
        .stack
        .artifact_objects()
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|b| b == body))
        .expect("the artifact's object in the store");
    let mut altered = body.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0xff;
    std::fs::write(&object, &altered).unwrap();
    rig.agent.start();

    let id = rig.upgrade(&v2).await;
    let failed = rig.settle_as(id, "failed").await;
    let d = detail(&failed);
    assert_eq!(d["rolled_back"], false, "nothing was installed: {failed}");
    assert_eq!(d["running_version"], "1.0.0", "{failed}");
    assert_eq!(
        describe(&read_tree(&path)),
        describe(&app("1.0.0")),
        "the component is untouched"
    );
    let steps = rig.steps(id);
    for never in ["backed_up", "installed", "committed"] {
        assert!(!steps.iter().any(|s| s == never), "{never} in {steps:?}");
    }
    rig.wait_component("app", "1.0.0").await;
    rig.assert_one_final_report(&failed).await;
}

/// Upgrades `app` 1.0.0 to 2.0.0 with `health` as its table's health
/// lines and asserts the rollback; answers the failed command.
async fn upgrade_rolls_back_when_the_health_check(health: &str) -> Value {
    let mut rig = Rig::new().await;
    let path = rig.dir_component(&app("1.0.0"), health);
    rig.agent.start();
    rig.wait_component("app", "1.0.0").await;
    let v2 = rig.artifact("app", "2.0.0", tar_gz(&app("2.0.0"))).await;

    let id = rig.upgrade(&v2).await;
    let failed = rig.settle_as(id, "failed").await;

    let d = detail(&failed);
    assert_eq!(d["component"], "app", "{failed}");
    assert_eq!(d["from_version"], "1.0.0", "{failed}");
    assert_eq!(d["to_version"], "2.0.0", "{failed}");
    assert_eq!(d["rolled_back"], true, "{failed}");
    assert_eq!(d["running_version"], "1.0.0", "{failed}");
    assert!(d["phase"].is_string(), "{failed}");
    assert!(
        failed["result"]["error"].is_string(),
        "the error says why: {failed}"
    );
    assert_eq!(
        describe(&read_tree(&path)),
        describe(&app("1.0.0")),
        "version 1.0.0 is back, whole"
    );
    rig.assert_denylisted(&v2).await;
    rig.wait_component("app", "1.0.0").await;
    assert_in_order(
        &rig.steps(id),
        &["installed", ROLLBACK_STEPS[0], ROLLBACK_STEPS[1]],
        "the rollback's operation log",
    );
    rig.assert_one_final_report(&failed).await;
    failed
}

#[tokio::test]
async fn a_failing_health_check_rolls_back_and_denies_the_artifact_to_the_device() {
    let health = format!(
        "health_check = {}\nhealth_timeout_s = 10",
        toml_array(&["sh", "-c", "exit 1"])
    );
    upgrade_rolls_back_when_the_health_check(&health).await;
}

#[tokio::test]
async fn a_health_check_that_hangs_past_its_timeout_rolls_back() {
    let health = format!(
        "health_check = {}\nhealth_timeout_s = 2",
        toml_array(&["sleep", "30"])
    );
    let failed = upgrade_rolls_back_when_the_health_check(&health).await;
    let started: chrono::DateTime<chrono::Utc> =
        failed["created_at"].as_str().unwrap().parse().unwrap();
    let finished: chrono::DateTime<chrono::Utc> =
        failed["finished_at"].as_str().unwrap().parse().unwrap();
    assert!(
        finished - started < chrono::Duration::seconds(25),
        "the check was cut at its 2 s timeout, not waited for (30 s): {failed}"
    );
}

/// How the agent dies in the fault tests, and what each test expects
/// besides one clean end.
struct Killed {
    point: &'static str,
    segment_bytes: u64,
    payload_bytes: usize,
}

/// Upgrades `app` 1.0.0 to 2.0.0 with the agent armed to abort at
/// `killed.point`, starts it again once it died, and asserts that the
/// command ends in one clean state with one final report: either 2.0.0
/// committed or 1.0.0 back, never a mix. Answers the rig, the upgrade's
/// id, the artifact, its size, and how many of its downloads came before
/// the restart.
async fn upgrade_with_the_agent_killed(killed: Killed) -> (Rig, Uuid, String, usize, usize) {
    let mut rig = Rig::new().await;
    let old = app_with_payload("1.0.0", killed.payload_bytes);
    let new = app_with_payload("2.0.0", killed.payload_bytes);
    let path = rig.dir_component(&old, &version_check(&rig.root().join("opt/app")));
    rig.agent.set_segment_bytes(killed.segment_bytes);
    let body = tar_gz(&new);
    let size = body.len();
    let v2 = rig.artifact("app", "2.0.0", body).await;
    rig.agent
        .set_env("TEND_AGENT_FAULTS", &format!("{}=1", killed.point));
    rig.agent.start();

    let id = rig.upgrade(&v2).await;
    let deadline = Instant::now() + WAIT;
    while !rig.agent.has_exited() {
        let v = rig.stack.command(&rig.admin, id).await;
        assert!(
            !is_terminal(v["status"].as_str().unwrap_or_default()),
            "the upgrade ended before the agent died at {}: {v}",
            killed.point
        );
        assert!(
            Instant::now() < deadline,
            "the agent did not die at fault point {} within {WAIT:?}",
            killed.point
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        rig.agent
            .log()
            .contains(&format!("fault point {}", killed.point)),
        "the agent died at its fault point, not of something else"
    );
    // Where the upgrade stopped shows in the command: each in_progress
    // report replaced its detail.
    let stopped = rig.stack.command(&rig.admin, id).await;
    assert_eq!(stopped["status"], "in_progress", "{stopped}");
    let phase = &stopped["result"]["detail"]["phase"];
    assert!(phase.is_string(), "the command shows its phase: {stopped}");
    if killed.point == "during_download" {
        assert_eq!(phase, "downloading", "{stopped}");
        assert_eq!(stopped["result"]["detail"]["to_version"], "2.0.0");
    }
    let downloads_before = rig.recorder.downloads(&v2).len();
    rig.agent.remove_env("TEND_AGENT_FAULTS");
    rig.agent.start();

    let ended = rig.settle(id).await;
    let d = detail(&ended);
    let tree = describe(&read_tree(&path));
    match ended["status"].as_str() {
        Some("succeeded") => {
            assert_eq!(d["running_version"], "2.0.0", "{ended}");
            assert_eq!(tree, describe(&new), "2.0.0 committed, whole");
            rig.wait_component("app", "2.0.0").await;
        }
        Some("failed") => {
            assert_eq!(d["rolled_back"], true, "{ended}");
            assert_eq!(d["running_version"], "1.0.0", "{ended}");
            assert_eq!(tree, describe(&old), "1.0.0 back, whole");
            rig.wait_component("app", "1.0.0").await;
        }
        _ => panic!(
            "after a kill at {} the upgrade must commit or roll back: {ended}",
            killed.point
        ),
    }
    rig.assert_one_final_report(&ended).await;
    (rig, id, v2, size, downloads_before)
}

/// The fault tests other than the download's: a small artifact of a few
/// segments.
fn killed_at(point: &'static str) -> Killed {
    Killed {
        point,
        segment_bytes: 64 * 1024,
        payload_bytes: 192 * 1024,
    }
}

#[tokio::test]
async fn an_agent_killed_during_the_download_resumes_at_its_offset_and_fetches_nothing_twice() {
    const SEGMENT: u64 = 16 * 1024;
    let (rig, id, v2, size, before) = upgrade_with_the_agent_killed(Killed {
        point: "during_download",
        segment_bytes: SEGMENT,
        payload_bytes: 2 * 1024 * 1024,
    })
    .await;

    let downloads = rig.recorder.downloads(&v2);
    assert!(before >= 1, "at least one segment came before the kill");
    let served: Vec<(u64, u64)> = downloads.iter().filter_map(|e| e.served).collect();
    for e in &downloads {
        assert!(e.range.is_some(), "every fetch is a Range request: {e:?}");
        if let Some((first, last)) = e.served {
            assert!(
                last - first < SEGMENT,
                "a segment of at most {SEGMENT} bytes: {e:?}"
            );
        }
    }
    let resumed = downloads[before..]
        .iter()
        .find_map(|e| e.served)
        .expect("a fetch after the restart");
    assert!(
        resumed.0 > 0,
        "the restarted agent resumed at its offset, not from zero: {resumed:?}"
    );
    // Every byte was served, and at most one segment of them twice.
    let mut sorted = served.clone();
    sorted.sort_unstable();
    let mut covered = 0u64;
    let mut next = 0u64;
    for (first, last) in &sorted {
        if last + 1 > next {
            covered += last + 1 - next.max(*first);
            next = last + 1;
        }
    }
    let total: u64 = served.iter().map(|(f, l)| l - f + 1).sum();
    assert_eq!(
        covered, size as u64,
        "the whole artifact was fetched: {sorted:?}"
    );
    assert!(
        total - covered <= SEGMENT,
        "{} bytes fetched twice, more than one segment ({SEGMENT}): {sorted:?}",
        total - covered
    );
    assert!(
        rig.steps(id).iter().any(|s| s == DOWNLOAD_RESUMED),
        "the operation log says the download resumed: {:?}",
        rig.steps(id)
    );
    // Progress was reported on the way.
    let progress = rig.recorder.exchanges().into_iter().any(|e| {
        e.report.as_ref().is_some_and(|r| {
            r["status"] == "in_progress"
                && r["detail"]["phase"] == "downloading"
                && r["detail"]["total"] == size
        })
    });
    assert!(
        progress,
        "in_progress reports carry the download's phase and total"
    );
}

#[tokio::test]
async fn an_agent_killed_after_verifying_the_download_ends_in_one_clean_state() {
    upgrade_with_the_agent_killed(killed_at("after_verify")).await;
}

#[tokio::test]
async fn an_agent_killed_after_the_backup_ends_in_one_clean_state() {
    upgrade_with_the_agent_killed(killed_at("after_backup")).await;
}

#[tokio::test]
async fn an_agent_killed_during_the_install_ends_in_one_clean_state() {
    upgrade_with_the_agent_killed(killed_at("during_install")).await;
}

#[tokio::test]
async fn an_agent_killed_during_the_health_check_ends_in_one_clean_state() {
    upgrade_with_the_agent_killed(killed_at("during_health_check")).await;
}

#[tokio::test]
async fn an_agent_killed_before_the_final_report_reports_exactly_once() {
    upgrade_with_the_agent_killed(killed_at("before_report")).await;
}

#[tokio::test]
async fn one_kib_segments_work_end_to_end() {
    let mut rig = Rig::new().await;
    let path = rig.dir_component(&app("1.0.0"), "");
    rig.agent.set_segment_bytes(1024);
    rig.agent.start();
    let new = app_with_payload("2.0.0", 40 * 1024);
    let body = tar_gz(&new);
    let v2 = rig.artifact("app", "2.0.0", body.clone()).await;

    let id = rig.upgrade(&v2).await;
    let done = rig.settle_as(id, "succeeded").await;

    assert_eq!(describe(&read_tree(&path)), describe(&new));
    let served: Vec<(u64, u64)> = rig
        .recorder
        .downloads(&v2)
        .iter()
        .filter_map(|e| e.served)
        .collect();
    assert!(
        served.iter().all(|(f, l)| l - f < 1024),
        "every segment is 1 KiB at most: {served:?}"
    );
    let fetched: u64 = served.iter().map(|(f, l)| l - f + 1).sum();
    assert_eq!(fetched, body.len() as u64, "each byte fetched once");
    assert!(served.len() >= body.len().div_ceil(1024));
    rig.assert_one_final_report(&done).await;
}

/// A fake A/B operating system: the install writes the artifact into the
/// "next slot", the health check (after the reboot) looks at that slot,
/// the rollback leaves a marker. Returns (slot, version file, rollback
/// marker, install log).
fn ab_component(rig: &mut Rig) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let os = rig.root().join("os");
    std::fs::create_dir_all(&os).unwrap();
    let slot = os.join("next-slot");
    let version_file = os.join("version");
    let marker = os.join("rolled-back");
    let installs = os.join("installs");
    std::fs::write(&version_file, "1.0.0\n").unwrap();
    let install = format!(
        "cp \"$1\" '{}' && echo \"$TEND_VERSION\" >> '{}'",
        slot.display(),
        installs.display()
    );
    let check = format!("grep -qx \"os image $TEND_VERSION\" '{}'", slot.display());
    let rollback = format!("echo \"$TEND_VERSION\" > '{}'", marker.display());
    rig.agent.add_component(
        "os",
        &format!(
            "kind = \"command\"\nreboot = true\nversion_file = {}\ninstall = {}\n\
             rollback = {}\nhealth_check = {}\nhealth_timeout_s = 10",
            toml_string(&version_file.display().to_string()),
            // `{file}` as an argument of its own: "$1" of the script.
            toml_array(&["sh", "-c", &install, "sh", "{file}"]),
            toml_array(&["sh", "-c", &rollback]),
            toml_array(&["sh", "-c", &check]),
        ),
    );
    (slot, version_file, marker, installs)
}

#[tokio::test]
async fn a_command_component_that_needs_a_reboot_commits_after_the_new_boot() {
    // The reboot action writes a new boot id and kills the agent, as the
    // machine going down would; the rig starts it again.
    let mut rig = Rig::with_agent(Agent::rebooting).await;
    rig.supervised = true;
    let (slot, version_file, marker, installs) = ab_component(&mut rig);
    rig.agent.start();
    rig.wait_component("os", "1.0.0").await;
    let image = b"os image 2.0.0\n".to_vec();
    let v2 = rig.artifact("os", "2.0.0", image.clone()).await;

    let id = rig.upgrade(&v2).await;
    let done = rig.settle_as(id, "succeeded").await;

    assert_eq!(detail(&done)["running_version"], "2.0.0", "{done}");
    assert_eq!(
        rig.agent.executed(),
        vec![id],
        "one reboot, for this upgrade"
    );
    assert_eq!(std::fs::read(&slot).unwrap(), image);
    assert_eq!(
        std::fs::read_to_string(&installs).unwrap(),
        "2.0.0\n",
        "the install ran once"
    );
    assert_eq!(
        std::fs::read_to_string(&version_file)
            .unwrap()
            .lines()
            .next(),
        Some("2.0.0")
    );
    assert!(!marker.exists(), "no rollback");
    rig.wait_component("os", "2.0.0").await;
    rig.assert_one_final_report(&done).await;
}

#[tokio::test]
async fn a_command_component_whose_reboot_keeps_the_old_boot_id_rolls_back() {
    // The "reboot" only kills the agent: it comes back on the same boot.
    let mut rig = Rig::with_agent(|stack, device| {
        Agent::with_actions(stack, device, "kill -9 $PPID", "exit 0")
    })
    .await;
    rig.supervised = true;
    let (_, version_file, marker, installs) = ab_component(&mut rig);
    rig.agent.start();
    rig.wait_component("os", "1.0.0").await;
    let v2 = rig
        .artifact("os", "2.0.0", b"os image 2.0.0\n".to_vec())
        .await;

    let id = rig.upgrade(&v2).await;
    let failed = rig.settle_as(id, "failed").await;

    let d = detail(&failed);
    assert_eq!(d["rolled_back"], true, "{failed}");
    assert_eq!(d["running_version"], "1.0.0", "{failed}");
    assert!(marker.exists(), "the rollback command ran");
    assert_eq!(std::fs::read_to_string(&installs).unwrap(), "2.0.0\n");
    assert_eq!(
        std::fs::read_to_string(&version_file)
            .unwrap()
            .lines()
            .next(),
        Some("1.0.0")
    );
    rig.assert_denylisted(&v2).await;
    rig.wait_component("os", "1.0.0").await;
    rig.assert_one_final_report(&failed).await;
}

#[tokio::test]
async fn restore_from_backup_puts_the_previous_version_back() {
    let mut rig = Rig::new().await;
    let path = rig.dir_component(&app("1.0.0"), &version_check(&rig.root().join("opt/app")));
    rig.agent.start();
    let v2 = rig.artifact("app", "2.0.0", tar_gz(&app("2.0.0"))).await;
    let id = rig.upgrade(&v2).await;
    rig.settle_as(id, "succeeded").await;
    rig.wait_component("app", "2.0.0").await;

    let id = rig
        .queue("restore", json!({ "component": "app", "source": "backup" }))
        .await;
    let done = rig.settle_as(id, "succeeded").await;

    let d = detail(&done);
    assert_eq!(d["source"], "backup", "{done}");
    assert_eq!(d["running_version"], "1.0.0", "{done}");
    assert_eq!(describe(&read_tree(&path)), describe(&app("1.0.0")));
    rig.wait_component("app", "1.0.0").await;
    rig.assert_one_final_report(&done).await;
}

#[tokio::test]
async fn restore_from_the_cloud_installs_that_versions_artifact_and_a_peer_restore_uses_the_image_kept()
 {
    let mut rig = Rig::new().await;
    let path = rig.dir_component(&app("1.0.0"), &version_check(&rig.root().join("opt/app")));
    rig.agent.start();
    // The cloud's 1.0.0 has a file the device's own copy lacks, so its
    // files show where they came from.
    let mut cloud = app("1.0.0");
    cloud.insert("origin".into(), b"cloud\n".to_vec());
    let v1 = rig.artifact("app", "1.0.0", tar_gz(&cloud)).await;
    let v2 = rig.artifact("app", "2.0.0", tar_gz(&app("2.0.0"))).await;
    let id = rig.upgrade(&v2).await;
    rig.settle_as(id, "succeeded").await;

    let id = rig
        .queue(
            "restore",
            json!({ "component": "app", "source": "cloud", "version": "1.0.0" }),
        )
        .await;
    let done = rig.settle_as(id, "succeeded").await;

    let d = detail(&done);
    assert_eq!(d["source"], "cloud", "{done}");
    assert_eq!(d["running_version"], "1.0.0", "{done}");
    assert_eq!(describe(&read_tree(&path)), describe(&cloud));
    assert!(
        !rig.recorder.downloads(&v1).is_empty(),
        "fetched from the cloud"
    );
    rig.wait_component("app", "1.0.0").await;
    rig.assert_one_final_report(&done).await;

    // From a peer, when the image is still on the device (the download
    // of what the component runs is kept): no peer is needed, none asked.
    std::fs::remove_file(path.join("origin")).expect("damaging the component");
    let id = rig
        .queue(
            "restore",
            json!({ "component": "app", "source": "peer", "version": "1.0.0" }),
        )
        .await;
    let done = rig.settle_as(id, "succeeded").await;
    assert_eq!(detail(&done)["source"], "peer", "{done}");
    assert!(detail(&done)["peer"].is_null(), "{done}");
    assert_eq!(describe(&read_tree(&path)), describe(&cloud));
    assert!(
        rig.steps(id).iter().all(|s| s != "peer_search"),
        "no search: {:?}",
        rig.steps(id)
    );
}

/// The agent's own version as its device record shows it before any
/// upgrade of it.
async fn agent_version(rig: &mut Rig) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        rig.watch_agent();
        let (_, v) = rig
            .stack
            .get(&rig.admin, &format!("/devices/{}", rig.device.id))
            .await;
        if let Some(version) = v["components"]["agent"]["version"].as_str() {
            return version.to_owned();
        }
        assert!(Instant::now() < deadline, "no agent version reported: {v}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn a_new_agent_takes_over_and_reports_its_version() {
    let mut rig = Rig::new().await;
    rig.supervised = true;
    let binary = rig.agent.use_own_binary_copy();
    // Large segments: the artifact is a whole debug build of the agent.
    rig.agent.set_segment_bytes(8 * 1024 * 1024);
    rig.agent.start();
    let old = agent_version(&mut rig).await;
    assert_ne!(old, "9.9.9");
    // The same program with bytes appended: an ELF file ignores them, and
    // the digest is another.
    let mut new = std::fs::read(bin("tend-agent")).unwrap();
    new.extend_from_slice(b"\ntend end-to-end test: agent 9.9.9\n");
    let a = rig.artifact("agent", "9.9.9", new.clone()).await;

    let id = rig.upgrade(&a).await;
    let done = rig.settle_as(id, "succeeded").await;

    let d = detail(&done);
    assert_eq!(d["component"], "agent", "{done}");
    assert_eq!(d["from_version"], old.as_str(), "{done}");
    assert_eq!(d["running_version"], "9.9.9", "{done}");
    rig.wait_component("agent", "9.9.9").await;
    assert_eq!(
        sha256(&std::fs::read(&binary).unwrap()),
        sha256(&new),
        "the agent's executable is the new one"
    );
    rig.more_heartbeats(3).await;
    let (_, device) = rig
        .stack
        .get(&rig.admin, &format!("/devices/{}", rig.device.id))
        .await;
    assert_eq!(device["status"], "online", "{device}");
    assert_eq!(device["components"]["agent"]["version"], "9.9.9");
    rig.assert_one_final_report(&done).await;
}

#[tokio::test]
async fn a_new_agent_that_exits_at_once_is_replaced_by_the_old_one() {
    let mut rig = Rig::with_agent(Agent::rebooting).await;
    rig.supervised = true;
    let binary = rig.agent.use_own_binary_copy();
    let original = sha256(&std::fs::read(&binary).unwrap());
    rig.agent.start();
    let old = agent_version(&mut rig).await;
    let a = rig
        .artifact("agent", "9.9.9", b"#!/bin/sh\nexit 1\n".to_vec())
        .await;

    let id = rig.upgrade(&a).await;
    let failed = rig.settle_as(id, "failed").await;

    let d = detail(&failed);
    assert_eq!(d["component"], "agent", "{failed}");
    assert_eq!(d["rolled_back"], true, "{failed}");
    assert_eq!(d["running_version"], old.as_str(), "{failed}");
    assert_eq!(
        sha256(&std::fs::read(&binary).unwrap()),
        original,
        "the previous binary is back"
    );
    rig.assert_denylisted(&a).await;
    rig.more_heartbeats(3).await;
    rig.wait_component("agent", &old).await;
    rig.assert_one_final_report(&failed).await;

    // The old agent still does its work: a reboot goes round.
    let reboot = rig.queue("reboot", json!({})).await;
    rig.settle_as(reboot, "succeeded").await;
    assert_eq!(rig.agent.executed(), vec![reboot]);
}

#[tokio::test]
async fn a_released_version_reaches_a_running_agent_without_an_admin_command() {
    let mut rig = Rig::new().await;
    rig.agent.set_config_line("update_check_s", "2");
    let path = rig.dir_component(&app("1.0.0"), &version_check(&rig.root().join("opt/app")));
    rig.agent.start();
    rig.wait_component("app", "1.0.0").await;

    let v2 = rig.artifact("app", "2.0.0", tar_gz(&app("2.0.0"))).await;
    rig.stack.release_artifact(&rig.admin, &v2).await;
    rig.wait_component("app", "2.0.0").await;

    assert_eq!(describe(&read_tree(&path)), describe(&app("2.0.0")));
    let (_, list) = rig
        .stack
        .get(&rig.admin, &format!("/devices/{}/commands", rig.device.id))
        .await;
    let upgrades: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "upgrade")
        .collect();
    assert_eq!(
        upgrades.len(),
        1,
        "one upgrade, queued by the update check: {list}"
    );
    assert_eq!(upgrades[0]["params"]["artifact_id"], v2.as_str());
    let id: Uuid = upgrades[0]["id"].as_str().unwrap().parse().unwrap();
    let done = rig.settle_as(id, "succeeded").await;
    assert!(
        rig.recorder
            .exchanges()
            .iter()
            .any(|e| e.path == "/device/v1/update-check"),
        "the agent asked"
    );
    rig.assert_one_final_report(&done).await;
}

#[tokio::test]
async fn with_an_s3_store_the_agent_fetches_its_segments_from_the_store_itself() {
    let bucket = tend_tests::s3::S3Bucket::create().await;
    let stack = Stack::start_with(tend_tests::Options {
        s3: Some(bucket.clone()),
        ..Default::default()
    })
    .await;
    let mut rig = Rig::with_stack(stack, Agent::new).await;
    const SEGMENT: u64 = 64 * 1024;
    let old = app_with_payload("1.0.0", 256 * 1024);
    let new = app_with_payload("2.0.0", 256 * 1024);
    let path = rig.dir_component(&old, &version_check(&rig.root().join("opt/app")));
    rig.agent.set_segment_bytes(SEGMENT);
    rig.agent.start();
    let body = tar_gz(&new);
    let size = body.len() as u64;
    let v2 = rig.artifact("app", "2.0.0", body).await;
    let id = rig.upgrade(&v2).await;
    let done = rig.settle_as(id, "succeeded").await;
    assert_eq!(detail(&done)["running_version"], "2.0.0", "{done}");
    assert_eq!(describe(&read_tree(&path)), describe(&new));

    // tend-sync answered every segment with a redirect: the bytes came
    // from the store, in ranges, and none of them through tend-sync.
    let asked = rig.recorder.downloads(&v2);
    assert_eq!(
        asked.len() as u64,
        size.div_ceil(SEGMENT),
        "one request per segment: {asked:?}"
    );
    for e in &asked {
        assert_eq!(e.status, 302, "sent to the store: {e:?}");
        assert!(e.range.is_some() && e.served.is_none(), "{e:?}");
    }
    rig.assert_one_final_report(&done).await;
}

#[tokio::test]
async fn a_recovery_the_device_ran_itself_is_recorded_once_and_bad_records_are_refused() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let other = stack.new_device(&admin).await;
    let token = stack.device_token(&device).await;
    let send = |body: Value, token: String| {
        let http = reqwest::Client::new();
        let url = stack.device_api("/recoveries");
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("recoveries");
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            (
                status,
                retry,
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let record = |id: Uuid, status: &str| {
        json!({
            "id": id,
            "params": {"component": "app", "source": "peer"},
            "started_at": "2026-01-01T00:00:00Z",
            "report": {"status": status, "detail": {"source": "peer", "peer": "10.0.0.2:7717"}},
        })
    };

    let id = Uuid::new_v4();
    let (status, _, v) = send(record(id, "succeeded"), token.clone()).await;
    assert_eq!(status, 201, "{v}");
    let (status, _, v) = send(record(id, "succeeded"), token.clone()).await;
    assert_eq!(status, 200, "an identical repeat is accepted: {v}");
    let shown = stack.command(&admin, id).await;
    assert_eq!(shown["kind"], "restore", "{shown}");
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["device_id"], json!(device.id), "{shown}");
    assert_eq!(
        shown["result"]["detail"]["peer"], "10.0.0.2:7717",
        "{shown}"
    );

    // Another device cannot claim the id.
    let other_token = stack.device_token(&other).await;
    let (status, _, v) = send(record(id, "failed"), other_token).await;
    assert_eq!(status, 409, "{v}");
    // Not a restore's params, a report that has not ended, unknown fields.
    let mut bad = record(Uuid::new_v4(), "succeeded");
    bad["params"] = json!({"component": "app", "source": "usb"});
    assert_eq!(send(bad, token.clone()).await.0, 422);
    assert_eq!(
        send(record(Uuid::new_v4(), "in_progress"), token.clone())
            .await
            .0,
        422
    );
    let mut bad = record(Uuid::new_v4(), "succeeded");
    bad["extra"] = json!(1);
    let status = send(bad, token.clone()).await.0;
    assert!(status == 400 || status == 422, "{status}");
    let (status, _, _) = send(record(Uuid::new_v4(), "failed"), "forged".into()).await;
    assert_eq!(status, 401);

    // A device that floods its history is told to wait, however fast it
    // sends: 30 at once, and only 20 in the hour are recorded.
    let sent = futures_util::future::join_all(
        (0..30).map(|_| send(record(Uuid::new_v4(), "failed"), token.clone())),
    )
    .await;
    let created = sent.iter().filter(|(s, ..)| *s == 201).count();
    let limited: Vec<_> = sent.iter().filter(|(s, ..)| *s == 429).collect();
    assert_eq!(created, 19, "20 in the hour with the first: {sent:?}");
    assert_eq!(limited.len(), 11, "{sent:?}");
    assert!(
        limited
            .iter()
            .all(|(_, retry, _)| retry.as_deref() == Some("600"))
    );
    // A repeat of a recorded one is still answered as a repeat.
    let (status, _, v) = send(record(id, "succeeded"), token.clone()).await;
    assert_eq!(status, 200, "{v}");
}
