//! tendctl, the real binary, against the live services: what it prints and,
//! above all, the exit codes scripts branch on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tend_tests::{Agent, Service, Stack, bin};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

// The harness's bootstrap admin (TEND_BOOTSTRAP_ADMIN of every test stack).
const ADMIN_USER: &str = "root";
const ADMIN_PASSWORD: &str = "correct-horse-battery";

/// Bounds a whole tendctl run, `--wait` included, so a hang fails the test.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// The tendctl binary with a config directory of its own and nothing else
/// from this process's environment (no HOME, no TENDCTL_* leaking in).
struct Tendctl {
    config_dir: PathBuf,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stdout as the one JSON document `--json` promises.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Tendctl {
    fn new(config_dir: &Path) -> Tendctl {
        Tendctl {
            config_dir: config_dir.to_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None).await
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut child = tokio::process::Command::new(bin("tendctl"))
            .args(args)
            .env_clear()
            .env("TENDCTL_CONFIG_DIR", &self.config_dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting tendctl");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("tendctl's stdin");
            pipe.write_all(text.as_bytes())
                .await
                .expect("writing stdin");
        }
        let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("tendctl {args:?} did not finish in {RUN_LIMIT:?}"))
            .expect("tendctl's output");
        Run {
            code: out.status.code().expect("tendctl exited, not killed"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Logs in as the bootstrap admin, the password on stdin.
    async fn login(&self, stack: &Stack) {
        let server = stack.url(Service::Platform);
        let r = self
            .run_with_stdin(
                &[
                    "--server",
                    &server,
                    "login",
                    "--username",
                    ADMIN_USER,
                    "--password-stdin",
                ],
                Some(&format!("{ADMIN_PASSWORD}\n")),
            )
            .await;
        assert_eq!(r.code, 0, "login: {r:?}");
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn an_admin_logs_in_and_manages_devices_and_queued_commands_with_tendctl() {
    let stack = Stack::start().await;
    let config_dir = stack.dir.path().join("tendctl");
    let ctl = Tendctl::new(&config_dir);
    let server = stack.url(Service::Platform);

    // A wrong password is the API's refusal: exit 3, with its detail.
    let r = ctl
        .run_with_stdin(
            &[
                "--server",
                &server,
                "login",
                "-u",
                ADMIN_USER,
                "--password-stdin",
            ],
            Some("not-the-password\n"),
        )
        .await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("(HTTP 401)"), "{r:?}");
    assert!(!config_dir.join("credentials.json").exists());

    ctl.login(&stack).await;
    assert_eq!(mode(&config_dir), 0o700, "the config directory is private");
    assert_eq!(mode(&config_dir.join("credentials.json")), 0o600);

    // From here on the server comes from the saved login.
    let r = ctl
        .run(&[
            "--json",
            "devices",
            "create",
            "kiosk-north",
            "--type",
            "kiosk",
            "--label",
            "site:north",
            "--label",
            "floor:2",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    let created = r.json();
    let id = id_of(&created);
    assert_eq!(created["credentials"]["device_id"], created["id"]);
    assert!(created["credentials"]["secret"].is_string(), "{created}");
    assert_eq!(created["labels"]["site"], "north");

    let r = ctl
        .run(&["devices", "create", "kiosk-south", "--type", "kiosk"])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("shown only this once") && r.stdout.contains("device_secret"),
        "the secret is shown prominently: {r:?}"
    );

    let r = ctl
        .run(&[
            "--json",
            "devices",
            "list",
            "--label",
            "site:north",
            "--status",
            "unknown",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    let ids: Vec<String> = r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(
        ids,
        vec![id.clone()],
        "the label filter keeps kiosk-north only"
    );

    let r = ctl.run(&["devices", "list", "--limit", "1", "--all"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST SEEN"),
        "{r:?}"
    );
    assert_eq!(
        lines.len(),
        3,
        "a header and both devices, across pages: {r:?}"
    );
    assert!(r.stdout.contains("floor:2,site:north"), "{r:?}");

    let r = ctl.run(&["devices", "show", &id, "--json"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["name"], "kiosk-north");

    // A device without an agent: its reboot stays queued and can be cancelled once.
    let r = ctl.run(&["--json", "reboot", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let queued = r.json();
    assert_eq!(queued["status"], "queued");
    let command = id_of(&queued);

    let r = ctl.run(&["--json", "commands", "cancel", &command]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "cancelled");
    let r = ctl.run(&["commands", "cancel", &command]).await;
    assert_eq!(r.code, 3, "a second cancel is a conflict: {r:?}");
    assert!(
        r.stderr.starts_with("tendctl: ") && r.stderr.contains("(HTTP 409)"),
        "{r:?}"
    );

    // Waiting on a command that already ended unsuccessfully returns at once.
    let r = ctl.run(&["commands", "show", &command, "--wait"]).await;
    assert_eq!(r.code, 1, "a cancelled command is not a success: {r:?}");
    assert!(r.stdout.contains("cancelled"), "{r:?}");

    let r = ctl.run(&["commands", "list", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("ID") && r.stdout.contains(&command),
        "{r:?}"
    );

    // Decommissioning asks first: without --yes and without a terminal, nothing happens.
    let r = ctl.run(&["devices", "decommission", &id]).await;
    assert_eq!(r.code, 2, "{r:?}");
    let r = ctl.run(&["devices", "decommission", &id, "--yes"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = ctl.run(&["devices", "show", &id]).await;
    assert_eq!(r.code, 3, "a decommissioned device is gone: {r:?}");

    let unknown = Uuid::new_v4().to_string();
    let r = ctl.run(&["devices", "show", &unknown]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("(HTTP 404)"), "{r:?}");

    let r = ctl.run(&["logout"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!config_dir.join("credentials.json").exists());
    let r = ctl.run(&["devices", "list"]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("run tendctl login"), "{r:?}");
}

#[tokio::test]
async fn wait_follows_a_command_to_its_end_and_the_exit_code_says_how_it_ended() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let ctl = Tendctl::new(&stack.dir.path().join("tendctl"));
    ctl.login(&stack).await;

    let device = stack.new_device(&admin).await;
    let mut agent = Agent::new(&stack, &device);
    agent.start();
    let failing = stack.new_device(&admin).await;
    let mut failing_agent = Agent::with_actions(&stack, &failing, "exit 0", "exit 3");
    failing_agent.start();
    let (id, failing_id) = (device.id.to_string(), failing.id.to_string());

    // A shutdown whose action exits 0 succeeds: exit 0, the command on stdout,
    // status changes on stderr (plain lines: stderr is not a terminal).
    let r = ctl.run(&["--json", "shutdown", &id, "--wait"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let done = r.json();
    assert_eq!(done["status"], "succeeded");
    assert!(done["finished_at"].is_string());
    assert!(r.stderr.lines().any(|l| l.contains("succeeded")), "{r:?}");
    assert!(
        !r.stderr.contains('\r'),
        "no redrawn line off a terminal: {r:?}"
    );

    // The test agent's reboot never comes back with a new boot id: the wait
    // gives up with the command still in progress.
    let r = ctl
        .run(&["--json", "reboot", &id, "--wait", "--wait-timeout", "10"])
        .await;
    assert_eq!(r.code, 5, "{r:?}");
    assert_eq!(r.json()["status"], "in_progress", "{r:?}");
    assert!(r.stderr.contains("gave up waiting"), "{r:?}");

    // A shutdown whose action exits 3 fails: exit 1, and the table says why.
    let r = ctl.run(&["shutdown", &failing_id, "--wait"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("STATUS") && l.ends_with("failed")),
        "{r:?}"
    );

    let r = ctl.run(&["--json", "commands", "list", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let kinds: Vec<Value> = r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["kind"].clone())
        .collect();
    assert_eq!(kinds, ["reboot", "shutdown"], "newest first");
}

#[tokio::test]
async fn an_admin_uploads_releases_and_denies_an_artifact_and_queues_an_upgrade_with_tendctl() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let ctl = Tendctl::new(&stack.dir.path().join("tendctl"));
    ctl.login(&stack).await;
    let device = stack.new_device(&admin).await.id.to_string();

    // A few MB on disk, not all alike, so a misplaced chunk changes the hash.
    let body: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i: usize| (i * 7 + i / 251) as u8)
        .collect();
    let sha = hex(&Sha256::digest(&body));
    let file = stack.dir.path().join("app-1.4.2.tar.gz");
    std::fs::write(&file, &body).expect("writing the artifact file");
    let file = file.to_str().expect("a UTF-8 path");

    let r = ctl
        .run(&[
            "--json",
            "artifacts",
            "upload",
            file,
            "--component",
            "app",
            "--version",
            "1.4.2",
            "--device-type",
            "kiosk",
            "--device-type",
            "camera",
            "--release",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    let uploaded = r.json();
    let id = id_of(&uploaded);
    assert_eq!(uploaded["status"], "ready", "{uploaded}");
    assert_eq!(uploaded["released"], true, "{uploaded}");
    assert_eq!(uploaded["filename"], "app-1.4.2.tar.gz");
    assert_eq!(
        uploaded["device_types"],
        serde_json::json!(["kiosk", "camera"])
    );
    // Off a terminal, progress is plain lines on stderr, up to 100 %.
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("uploading app-1.4.2.tar.gz: 100%")),
        "{r:?}"
    );
    assert!(!r.stderr.contains('\r'), "no bar off a terminal: {r:?}");
    // What the platform computed from the bytes it received.
    let (status, shown) = stack.get(&admin, &format!("/artifacts/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["sha256"], sha.as_str());
    assert_eq!(shown["size"], body.len());

    let r = ctl
        .run(&[
            "artifacts",
            "list",
            "--component",
            "app",
            "--device-type",
            "kiosk",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("DEVICE TYPES"),
        "{r:?}"
    );
    assert_eq!(lines.len(), 2, "{r:?}");
    assert!(
        lines[1].starts_with(&id) && lines[1].contains("kiosk,camera  ready   yes"),
        "{r:?}"
    );
    let r = ctl
        .run(&["--json", "artifacts", "list", "--device-type", "printer"])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["items"], serde_json::json!([]));

    let r = ctl.run(&["artifacts", "show", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("SHA256        {sha}\n")),
        "{r:?}"
    );
    let r = ctl.run(&["--json", "artifacts", "unrelease", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["released"], false);
    let r = ctl.run(&["artifacts", "release", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("RELEASED      yes\n"), "{r:?}");

    // Denied to the device: listed with its reason, and an upgrade to it refused.
    let r = ctl
        .run(&[
            "--json",
            "artifacts",
            "denylist",
            "add",
            &id,
            &device,
            "--reason",
            "screen flickers",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["device_id"], device.as_str());
    let r = ctl.run(&["artifacts", "denylist", "list", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&device) && l.ends_with("screen flickers")),
        "{r:?}"
    );
    let r = ctl.run(&["upgrade", &device, "--artifact", &id]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("denylist") && r.stderr.contains("screen flickers"),
        "{r:?}"
    );
    let r = ctl
        .run(&["artifacts", "denylist", "remove", &id, &device])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = ctl
        .run(&["artifacts", "denylist", "remove", &id, &device])
        .await;
    assert_eq!(r.code, 3, "not on it any more: {r:?}");
    assert!(r.stderr.contains("(HTTP 404)"), "{r:?}");
    let r = ctl
        .run(&["--json", "artifacts", "denylist", "list", &id])
        .await;
    assert_eq!(r.json()["items"], serde_json::json!([]), "{r:?}");

    // The upgrade is queued with the artifact the platform resolved.
    let r = ctl
        .run(&["--json", "upgrade", &device, "--artifact", &id])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    let upgrade = r.json();
    assert_eq!(upgrade["kind"], "upgrade");
    assert_eq!(upgrade["status"], "queued");
    assert_eq!(upgrade["params"]["artifact_id"], id.as_str());
    assert_eq!(upgrade["params"]["artifact"]["sha256"], sha.as_str());
    assert_eq!(upgrade["params"]["artifact"]["version"], "1.4.2");

    // A restore of another component; --wait follows it like a reboot's
    // (no agent runs, so it is still queued when the wait gives up).
    let r = ctl
        .run(&[
            "--json",
            "restore",
            &device,
            "--component",
            "firmware",
            "--wait",
            "--wait-timeout",
            "2",
        ])
        .await;
    assert_eq!(r.code, 5, "{r:?}");
    let restore = r.json();
    assert_eq!(restore["kind"], "restore");
    assert_eq!(restore["params"]["component"], "firmware");
    assert_eq!(restore["status"], "queued");
    let r = ctl
        .run(&[
            "restore",
            &device,
            "--component",
            "app",
            "--version",
            "1.4.2",
        ])
        .await;
    assert_eq!(r.code, 2, "a backup holds one version: {r:?}");

    // A wrong artifact id: the server's message and exit 3.
    let unknown = Uuid::new_v4().to_string();
    let r = ctl.run(&["upgrade", &device, "--artifact", &unknown]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("no such artifact: {unknown} (HTTP 422)")),
        "{r:?}"
    );
    let r = ctl.run(&["artifacts", "show", &unknown]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no such artifact (HTTP 404)"), "{r:?}");

    // Deleted only once no open command uses it.
    let r = ctl.run(&["artifacts", "delete", &id]).await;
    assert_eq!(r.code, 3, "the upgrade is open: {r:?}");
    assert!(r.stderr.contains("(HTTP 409)"), "{r:?}");
    let r = ctl.run(&["commands", "cancel", &id_of(&upgrade)]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = ctl.run(&["--json", "artifacts", "delete", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(stack.get(&admin, &format!("/artifacts/{id}")).await.0, 404);
}

#[tokio::test]
async fn an_upload_of_a_missing_file_sends_nothing() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let ctl = Tendctl::new(&stack.dir.path().join("tendctl"));
    ctl.login(&stack).await;
    let missing = stack.dir.path().join("nothing-here.tar.gz");
    let r = ctl
        .run(&[
            "artifacts",
            "upload",
            missing.to_str().expect("a UTF-8 path"),
            "--component",
            "app",
            "--version",
            "1",
            "--device-type",
            "kiosk",
        ])
        .await;
    assert_eq!(r.code, 1, "a failure on this machine: {r:?}");
    assert!(
        r.stderr.contains("opening") && r.stderr.contains("nothing-here.tar.gz"),
        "{r:?}"
    );
    let (_, list) = stack.get(&admin, "/artifacts").await;
    assert_eq!(
        list["items"],
        serde_json::json!([]),
        "no artifact was created"
    );
}

#[tokio::test]
async fn an_unreachable_server_exits_4() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ctl = Tendctl::new(dir.path());
    let r = ctl
        .run_with_stdin(
            &[
                "--server",
                "http://127.0.0.1:9",
                "login",
                "-u",
                "root",
                "--password-stdin",
            ],
            Some("whatever-it-is\n"),
        )
        .await;
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("cannot reach http://127.0.0.1:9"),
        "{r:?}"
    );
}

#[tokio::test]
async fn tendctl_audit_reads_the_log_with_the_apis_filters() {
    let stack = Stack::start().await;
    let ctl = Tendctl::new(&stack.dir.path().join("tendctl"));
    ctl.login(&stack).await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    stack
        .queue(&admin, device.id, serde_json::json!({ "kind": "reboot" }))
        .await;

    let r = ctl.run(&["audit", "--action", "device."]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("device.create"), "{r:?}");
    assert!(r.stdout.contains(&device.id.to_string()), "{r:?}");
    assert!(!r.stdout.contains("command.create"), "{r:?}");

    let r = ctl
        .run(&["--json", "audit", "--actor", ADMIN_USER, "--all"])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    let page = r.json();
    let actions: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .filter(|a| !a.starts_with("auth."))
        .collect();
    assert_eq!(actions, ["command.create", "device.create"], "{r:?}");

    let r = ctl.run(&["audit", "--since", "yesterday"]).await;
    assert_eq!(r.code, 3, "an invalid filter is the API's refusal: {r:?}");
}

#[tokio::test]
async fn an_admin_lists_changes_and_removes_users_and_requeues_with_one_idempotency_key() {
    let stack = Stack::start().await;
    let ctl = Tendctl::new(&stack.dir.path().join("tendctl"));
    ctl.login(&stack).await;
    let admin = stack.admin().await;
    let (status, v) = stack
        .post(
            &admin,
            "/users",
            json!({ "username": "carol", "password": "carol-long-password", "role": "operator" }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let carol = id_of(&v);

    let r = ctl.run(&["--json", "users", "list"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let names: Vec<Value> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].clone())
        .collect();
    assert!(names.contains(&json!("carol")), "{r:?}");

    let r = ctl
        .run(&[
            "--json",
            "users",
            "update",
            &carol,
            "--role",
            "viewer",
            "--disable",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["role"], "viewer");
    assert_eq!(r.json()["disabled"], true);
    let r = ctl
        .run_with_stdin(
            &["users", "update", &carol, "--password-stdin"],
            Some("short\n"),
        )
        .await;
    assert_eq!(r.code, 3, "the policy's 422: {r:?}");
    let r = ctl.run(&["users", "remove", &carol]).await;
    assert_eq!(r.code, 2, "no --yes without a terminal: {r:?}");
    let r = ctl.run(&["users", "remove", &carol, "--yes"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = ctl.run(&["users", "remove", &carol, "--yes"]).await;
    assert_eq!(r.code, 3, "gone: {r:?}");

    // One key, run twice: one command.
    let device = stack.new_device(&admin).await.id.to_string();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = ctl
            .run(&[
                "--json",
                "reboot",
                &device,
                "--idempotency-key",
                "nightly-7",
            ])
            .await;
        assert_eq!(r.code, 0, "{r:?}");
        ids.push(id_of(&r.json()));
    }
    assert_eq!(ids[0], ids[1]);
    let r = ctl
        .run(&[
            "--json",
            "shutdown",
            &device,
            "--idempotency-key",
            "nightly-7",
        ])
        .await;
    assert_eq!(r.code, 3, "another command with the key: {r:?}");
}

#[tokio::test]
async fn enrolment_tokens_and_pending_devices_are_managed_from_tendctl() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ctl = Tendctl::new(dir.path());
    ctl.login(&stack).await;

    let r = ctl
        .run(&[
            "--json",
            "enrolment-tokens",
            "create",
            "--type",
            "kiosk",
            "--uses",
            "2",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    let created = r.json();
    let token = created["token"].as_str().expect("token").to_owned();
    let token_id = created["id"].as_str().expect("id").to_owned();
    let r = ctl.run(&["enrolment-tokens", "list"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&token_id) && !r.stdout.contains(&token),
        "{r:?}"
    );

    let enrolled: Value = stack
        .http
        .post(stack.device_api("/enrol"))
        .json(&serde_json::json!({ "token": token, "device_type": "kiosk" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = enrolled["device_id"]
        .as_str()
        .expect("device_id")
        .to_owned();
    let r = ctl.run(&["devices", "pending"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&id) && r.stdout.contains("pending"),
        "{r:?}"
    );
    let r = ctl.run(&["--json", "devices", "accept", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["admission"], "accepted");
    let r = ctl.run(&["devices", "accept", &id]).await;
    assert_eq!(r.code, 3, "accepting twice is refused by the API: {r:?}");
    let r = ctl.run(&["devices", "reject", &id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = ctl.run(&["enrolment-tokens", "revoke", &token_id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = ctl.run(&["--json", "enrolment-tokens", "list"]).await;
    assert!(r.json()["items"][0]["revoked_at"].is_string(), "{r:?}");
}

#[tokio::test]
async fn tendctl_sends_a_command_to_a_fleet_and_shows_the_batch() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let mut ids = Vec::new();
    for name in ["north-1", "north-2"] {
        ids.push(stack.new_device_of_type(&admin, name, "kiosk").await.id);
    }
    let other = stack
        .new_device_of_type(&admin, "ticket", "ticket")
        .await
        .id;
    let ctl = Tendctl::new(&stack.dir.path().join("tendctl"));
    ctl.login(&stack).await;

    // No condition at all: the server's 422, exit 3, nothing queued.
    let r = ctl.run(&["commands", "bulk", "--kind", "reboot"]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("at least one condition"), "{r:?}");

    let r = ctl
        .run(&[
            "commands",
            "bulk",
            "--device-type",
            "kiosk",
            "--label",
            "site:test",
            "--kind",
            "reboot",
            "--timeout",
            "5m",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("matched   2"), "{r:?}");
    assert!(r.stdout.contains("queued    2"), "{r:?}");
    let batch = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("batch_id"))
        .map(|v| v.trim().to_owned())
        .expect("the batch id");
    assert!(
        r.stderr.contains(&format!("tendctl batches show {batch}")),
        "{r:?}"
    );

    let r = ctl
        .run(&[
            "--json",
            "commands",
            "bulk",
            "--device",
            &other.to_string(),
            "--kind",
            "shutdown",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["queued"], 1, "{r:?}");

    let r = ctl.run(&["--json", "batches", "show", &batch]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let shown = r.json();
    assert_eq!(shown["matched"], 2);
    assert_eq!(shown["by_status"], json!({"queued": 2}));
    let r = ctl.run(&["batches", "show", &batch]).await;
    assert!(r.stdout.contains("queued 2"), "{r:?}");
    for id in ids {
        let (_, list) = stack.get(&admin, &format!("/devices/{id}/commands")).await;
        assert_eq!(list["items"][0]["kind"], "reboot", "{list}");
        assert_eq!(list["items"][0]["timeout_s"], 300, "{list}");
    }
}
