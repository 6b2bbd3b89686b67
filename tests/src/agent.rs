//! The real `tend-agent` binary with harmless actions: each records the
//! instruction it runs in `executed`, so tests count executions. Tests of
//! the software lifecycle add components to its configuration and may run
//! it from a copy of the binary that an upgrade is allowed to replace.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use uuid::Uuid;

use crate::stack::{Device, Service, Stack, bin, signal};

/// The variable that arms the agent's fault points (`agent/src/fault.rs`).
/// The agent names it only in code its `fault-points` feature compiles in,
/// so it is also how a binary shows it has them.
const FAULTS_VAR: &str = "TEND_AGENT_FAULTS";

pub struct Agent {
    pub device: Device,
    pub dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// The executable started: the workspace's `tend-agent`, or a copy of
    /// it in `dir` ([`Agent::use_own_binary_copy`]).
    binary: PathBuf,
    /// The network namespace it runs in ([`Agent::in_netns`]).
    netns: Option<String>,
}

impl Agent {
    /// Prepares an agent for `device` talking to the stack's sync server.
    /// The reboot and shutdown actions append the instruction id to
    /// `executed` and exit 0, like a real action that schedules the
    /// machine's restart and returns.
    pub fn new(stack: &Stack, device: &Device) -> Agent {
        Agent::with_actions(stack, device, "exit 0", "exit 0")
    }

    /// An agent whose reboot really restarts it: the action records the
    /// instruction, writes a new boot id and kills the agent (SIGKILL, as
    /// the machine going down would), so the reboot succeeds once a
    /// supervisor ([`Agent::restart_if_exited`]) starts it again.
    pub fn rebooting(stack: &Stack, device: &Device) -> Agent {
        let boot = Agent::dir_of(stack, device).join("boot_id");
        let reboot = format!(
            "cat /proc/sys/kernel/random/uuid > '{}'; kill -9 $PPID",
            boot.display()
        );
        Agent::with_actions(stack, device, &reboot, "exit 0")
    }

    fn dir_of(stack: &Stack, device: &Device) -> PathBuf {
        stack.dir.path().join(format!("agent-{}", device.id))
    }

    /// Like [`Agent::new`], with shell snippets run after recording.
    pub fn with_actions(stack: &Stack, device: &Device, reboot: &str, shutdown: &str) -> Agent {
        let dir = Agent::dir_of(stack, device);
        std::fs::create_dir_all(&dir).expect("agent directory");
        let executed = dir.join("executed");
        let action = |then: &str| {
            toml_array(&[
                "sh",
                "-c",
                &format!(
                    "echo \"$TEND_INSTRUCTION_ID\" >> '{}'; {then}",
                    executed.display()
                ),
            ])
        };
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "server_url = \"{server}\"\n\
                 device_id = \"{id}\"\n\
                 device_secret = \"{secret}\"\n\
                 state_dir = \"{state}\"\n\
                 boot_id_file = \"{boot}\"\n\
                 signing_keys = [\"{key}\"]\n\
                 \n[actions]\nreboot = {reboot}\nshutdown = {shutdown}\n",
                key = stack.signing_public_key(),
                server = stack.url(Service::Sync),
                id = device.id,
                secret = device.secret,
                state = dir.join("state").display(),
                boot = dir.join("boot_id").display(),
                reboot = action(reboot),
                shutdown = action(shutdown),
            ),
        )
        .expect("agent config");
        let agent = Agent {
            device: device.clone(),
            dir,
            config,
            child: None,
            env: Vec::new(),
            binary: bin("tend-agent"),
            netns: None,
        };
        agent.new_boot_id();
        agent
    }

    /// An agent with no identity in its file: it enrols with `token` as a
    /// device of `device_type`, and keeps what it is given in its state
    /// directory ([`Agent::enrolled`] reads it). Its `device` is a
    /// placeholder until then.
    pub fn enrolling(stack: &Stack, token: &str, device_type: &str) -> Agent {
        let placeholder = Device {
            id: Uuid::new_v4(),
            secret: String::new(),
        };
        let agent = Agent::new(stack, &placeholder);
        let text = std::fs::read_to_string(&agent.config).expect("agent config");
        let text = text
            .lines()
            .filter(|l| !l.starts_with("device_id") && !l.starts_with("device_secret"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(
            &agent.config,
            format!(
                "enrolment_token = \"{token}\"\ndevice_type = \"{device_type}\"\n\
                 device_name = \"enrolled-{device_type}\"\n{text}\n"
            ),
        )
        .expect("agent config");
        agent
    }

    /// The identity the agent enrolled for, once it has stored it.
    pub fn enrolled(&self) -> Option<Device> {
        let text = std::fs::read_to_string(self.dir.join("state/identity.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(Device {
            id: v["device_id"].as_str()?.parse().ok()?,
            secret: v["secret"].as_str()?.to_owned(),
        })
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the agent is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        if self
            .env
            .iter()
            .any(|(k, v)| k == FAULTS_VAR && !v.is_empty())
        {
            assert_has_fault_points(&bin("tend-agent"));
        }
        let mut command = match &self.netns {
            // `ip netns exec` enters the namespace and executes the agent
            // in its own place, so the child is the agent itself.
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .arg("--config")
            .arg(&self.config)
            .env(
                "TEND_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting tend-agent");
        self.child = Some(child);
    }

    /// Runs the agent in network namespace `netns` from the next start
    /// (a device on a test LAN, `crate::lan`).
    pub fn in_netns(&mut self, netns: &str) {
        self.netns = Some(netns.to_owned());
    }

    /// An environment variable for the agent (`TEND_AGENT_FAULTS`, say);
    /// takes effect at the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Forgets a variable set with [`Agent::set_env`] (a fault point that
    /// fired once and must not fire again); takes effect at the next start.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Whether the agent was started and not stopped or killed by the test
    /// since; a process that died on its own still counts until
    /// [`Agent::has_exited`] or [`Agent::restart_if_exited`] notices.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the agent process has ended (a fault point, a fake reboot);
    /// once it has, the agent counts as stopped and [`Agent::start`] may
    /// run it again.
    pub fn has_exited(&mut self) -> bool {
        let exited = self
            .child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
        if exited {
            self.child = None;
        }
        exited
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What a supervisor (systemd's `Restart=always`) does: if the agent
    /// died (a fault point, a simulated reboot), start it again. Returns
    /// whether it had died.
    pub fn restart_if_exited(&mut self) -> bool {
        let exited = self.has_exited();
        if exited {
            self.start();
        }
        exited
    }

    /// SIGTERM, as at a clean shutdown of the device, and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    /// SIGKILL: the agent dies wherever it is.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Plain polling instead of long-poll (the agent's default); takes
    /// effect at the next start.
    pub fn poll_only(&mut self) {
        let mut text = std::fs::read_to_string(&self.config).expect("agent config");
        text = text.replacen("state_dir =", "long_poll = false\nstate_dir =", 1);
        std::fs::write(&self.config, text).expect("agent config");
    }

    /// Lets `log_query` read `path` under `name`; takes effect at the next
    /// start.
    pub fn add_log_source(&mut self, name: &str, path: &std::path::Path) {
        let mut text = std::fs::read_to_string(&self.config).expect("agent config");
        if !text.contains("[log_sources]") {
            text.push_str("\n[log_sources]\n");
        }
        text.push_str(&format!(
            "{name} = {}\n",
            toml_array(&[&path.display().to_string()]).trim_matches(|c| c == '[' || c == ']')
        ));
        std::fs::write(&self.config, text).expect("agent config");
    }

    /// Points the agent at another sync server (a second replica, say); it
    /// takes effect at the next start.
    pub fn set_server(&mut self, url: &str) {
        let text = std::fs::read_to_string(&self.config).expect("agent config");
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("server_url") {
                    format!("server_url = \"{url}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&self.config, text.join("\n") + "\n").expect("agent config");
    }

    /// Sets a top-level key of the configuration (`update_check_s = 2`),
    /// replacing an earlier value; `value` is TOML. Takes effect at the
    /// next start.
    pub fn set_config_line(&mut self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).expect("agent config");
        let prefix = format!("{key} =");
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(&prefix)).collect();
        // Top-level keys go first: after a `[table]` header they would
        // belong to that table.
        let text = format!("{key} = {value}\n{}\n", kept.join("\n"));
        std::fs::write(&self.config, text).expect("agent config");
    }

    /// Appends a `[components.NAME]` table with `body` (TOML lines: `kind`,
    /// `path`, `health_check`…); takes effect at the next start.
    pub fn add_component(&mut self, name: &str, body: &str) {
        self.add_table(&format!("components.{name}"), body);
    }

    /// `[download] segment_bytes`: the size of each Range request; takes
    /// effect at the next start.
    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.add_table("download", &format!("segment_bytes = {bytes}"));
    }

    /// Appends a `[HEADER]` table with `body` (TOML lines); takes effect at
    /// the next start.
    pub fn add_table(&mut self, header: &str, body: &str) {
        let mut text = std::fs::read_to_string(&self.config).expect("agent config");
        let header = format!("[{header}]");
        assert!(
            !text.lines().any(|l| l.trim() == header),
            "{header} is already in the agent's configuration"
        );
        text.push_str(&format!("\n{header}\n{}\n", body.trim_end()));
        std::fs::write(&self.config, text).expect("agent config");
    }

    /// The configuration file as it stands, for failure messages.
    /// The configuration file, for a test that writes it whole.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap_or_default()
    }

    /// Runs the agent from a copy of the workspace's `tend-agent` in its
    /// own directory, so an upgrade of the component `agent` replaces the
    /// copy and never the binary every other test runs. Returns the copy's
    /// path; takes effect at the next start.
    pub fn use_own_binary_copy(&mut self) -> PathBuf {
        let copy = self.dir.join("bin").join("tend-agent");
        std::fs::create_dir_all(copy.parent().expect("bin directory")).expect("bin directory");
        std::fs::copy(bin("tend-agent"), &copy).expect("copying tend-agent");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .expect("making the copy executable");
        self.binary = copy.clone();
        copy
    }

    /// The executable [`Agent::start`] runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Writes a new boot id, as a real reboot would.
    pub fn new_boot_id(&self) {
        std::fs::write(self.dir.join("boot_id"), format!("{}\n", Uuid::new_v4()))
            .expect("boot id file");
    }

    /// The instruction ids the actions ran, in order.
    pub fn executed(&self) -> Vec<Uuid> {
        std::fs::read_to_string(self.dir.join("executed"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The agent's operation log, one JSON value per line.
    pub fn operations(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("state").join("operations.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

/// Panics unless `binary` has its fault points compiled in. Without them
/// the agent ignores `TEND_AGENT_FAULTS`, never dies, and a fault test
/// would pass without a single fault. The binary is read once per test run.
fn assert_has_fault_points(binary: &Path) {
    static HAS_THEM: OnceLock<bool> = OnceLock::new();
    let has_them = *HAS_THEM.get_or_init(|| {
        let bytes = std::fs::read(binary)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", binary.display()));
        bytes
            .windows(FAULTS_VAR.len())
            .any(|w| w == FAULTS_VAR.as_bytes())
    });
    assert!(
        has_them,
        "{} has no fault points compiled in, so {FAULTS_VAR} would do nothing and this \
         test would prove nothing. It is the agent a plain `cargo build` makes for users; \
         build the workspace with its tests (`cargo build --workspace --all-targets`), \
         which turns on tend-agent's `fault-points` feature through the dev-dependency \
         in tests/Cargo.toml, then run the test again.",
        binary.display()
    );
}

/// A TOML array of strings (an argv in the agent's configuration).
pub fn toml_array(items: &[&str]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent {} log ----\n{}", self.device.id, self.log());
        }
        self.kill();
    }
}
