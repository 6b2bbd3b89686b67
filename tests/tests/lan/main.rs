//! LAN peer recovery (seed 000) with real agents on a private LAN: each
//! device is a network namespace on one bridge ([`tend_tests::lan`]), the
//! cloud services are reached through an address of the test's own
//! namespace, and searches travel by real multicast and broadcast.
//!
//! Needs root (the test command runs as root) and nftables for the test
//! that blocks discovery.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tend_tests::lan::{Host, Lan};
use tend_tests::tree::{Tree, noise, read_tree, sha256, tar_gz};
use tend_tests::{Agent, Device, Proxy, Service, Stack, toml_array};
use tokio::time::Instant;
use uuid::Uuid;

/// The port of every agent's image server and of discovery.
const PEER_PORT: u16 = 7717;
const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// The application at `version`, with `payload` bytes of data.
fn app(version: &str, payload: usize) -> Tree {
    let mut tree = Tree::new();
    tree.insert("VERSION".into(), format!("{version}\n").into_bytes());
    tree.insert("app.txt".into(), format!("app {version}\n").into_bytes());
    tree.insert("lib/data.bin".into(), noise(payload, payload as u64 + 1));
    tree
}

/// A site: a LAN, the cloud services, and one artifact of `app` 1.0.0
/// for kiosks and cameras. Devices are added with [`Site::device`].
/// Fields drop in order: agents first, then the LAN, then the stack.
struct Site {
    devices: Vec<Node>,
    uplink: Proxy,
    lan: Lan,
    stack: Stack,
    admin: String,
    tree: Tree,
    artifact: String,
    sha256: String,
}

/// A device of the site: its namespace, its agent, its component's path.
struct Node {
    agent: Agent,
    host: Host,
    device: Device,
    path: PathBuf,
}

impl Node {
    fn peer_addr(&self) -> String {
        SocketAddr::from((self.host.ip, PEER_PORT)).to_string()
    }

    fn downloads(&self) -> PathBuf {
        self.agent.dir.join("state/software/downloads")
    }

    /// Damages the component so its health check fails (its version file
    /// intact: the same version must be put back), and removes what the
    /// device downloaded, so only a peer can give the image back.
    fn break_component(&self) {
        std::fs::write(self.path.join("app.txt"), "garbage\n").expect("app.txt");
        std::fs::remove_file(self.path.join("lib/data.bin")).expect("data.bin");
        let _ = std::fs::remove_dir_all(self.downloads());
    }

    /// The operation log's step lines of instruction `id`: (step, detail).
    fn steps(&self, id: Uuid) -> Vec<(String, Value)> {
        self.agent
            .operations()
            .into_iter()
            .filter(|o| o["instruction_id"] == json!(id))
            .filter_map(|o| Some((o["step"].as_str()?.to_owned(), o["detail"].clone())))
            .collect()
    }
}

impl Site {
    /// `payload`: the size of the application's data file.
    async fn new(payload: usize) -> Site {
        let lan = Lan::new();
        let stack = Stack::start().await;
        let admin = stack.admin().await;
        let uplink =
            Proxy::listen_on("uplink", lan.cloud_addr(0), stack.addrs(Service::Sync)).await;
        let tree = app("1.0.0", payload);
        let body = tar_gz(&tree);
        let sha256 = sha256(&body);
        let a = stack
            .upload_artifact(&admin, "app", "1.0.0", &["kiosk", "camera"], body)
            .await;
        Site {
            devices: Vec::new(),
            uplink,
            lan,
            stack,
            admin,
            tree,
            artifact: a["id"].as_str().expect("artifact id").to_owned(),
            sha256,
        }
    }

    /// Adds a device of `device_type` on the LAN with the `app` component
    /// (not installed yet) and `[peer]` settings `peer` (TOML lines); its
    /// agent is not started. Answers its index.
    fn device(&mut self, label: &str, device: Device, peer: &str) -> usize {
        let host = self.lan.host(label);
        let mut agent = Agent::new(&self.stack, &device);
        agent.set_server(&format!("http://{}", self.uplink.addr()));
        agent.in_netns(&host.netns);
        agent.set_config_line("update_check_s", "0");
        let path = agent.dir.join("device/opt/app");
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("device directory");
        let check = format!(
            "test \"$(cat '{}/VERSION')\" = \"$TEND_VERSION\" && test -f '{}/lib/data.bin'",
            path.display(),
            path.display()
        );
        agent.add_component(
            "app",
            &format!(
                "kind = \"dir\"\npath = \"{}\"\nhealth_check = {}\nhealth_timeout_s = 10",
                path.display(),
                toml_array(&["sh", "-c", &check])
            ),
        );
        agent.add_table(
            "peer",
            &format!(
                "listen = \"0.0.0.0:{PEER_PORT}\"\nsearch_timeout_ms = 700\n\
                 connect_timeout_ms = 1500\n{peer}"
            ),
        );
        self.devices.push(Node {
            agent,
            host,
            device,
            path,
        });
        self.devices.len() - 1
    }

    async fn new_device(&mut self, label: &str, device_type: &str, peer: &str) -> usize {
        let device = self
            .stack
            .new_device_of_type(&self.admin, label, device_type)
            .await;
        self.device(label, device, peer)
    }

    async fn queue(&self, node: usize, kind: &str, params: Value) -> Uuid {
        self.stack
            .queue(
                &self.admin,
                self.devices[node].device.id,
                json!({ "kind": kind, "params": params }),
            )
            .await
    }

    /// Waits for command `id` to end; answers it.
    async fn settle(&mut self, node: usize, id: Uuid) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                !self.devices[node].agent.has_exited(),
                "the agent exited: {}",
                self.devices[node].agent.log()
            );
            let v = self.stack.command(&self.admin, id).await;
            let status = v["status"].as_str().unwrap_or_default().to_owned();
            if ["succeeded", "failed", "rejected", "timed_out"].contains(&status.as_str()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "command {id} did not end within {WAIT:?}: {v}\n{}",
                self.devices[node].agent.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the device's agent and installs 1.0.0 on it from the cloud.
    async fn install_from_cloud(&mut self, node: usize) {
        self.devices[node].agent.start();
        let id = self
            .queue(node, "upgrade", json!({ "artifact_id": self.artifact }))
            .await;
        let v = self.settle(node, id).await;
        assert_eq!(v["status"], "succeeded", "installing 1.0.0: {v}");
        assert_eq!(read_tree(&self.devices[node].path), self.tree);
    }

    /// Queues a restore of `app` from a peer; answers the command once it
    /// ended.
    async fn restore_from_peer(&mut self, node: usize, params: Value) -> (Uuid, Value) {
        let id = self.queue(node, "restore", params).await;
        let v = self.settle(node, id).await;
        (id, v)
    }

    /// Waits until the device's command history holds a command `pick`
    /// chooses; answers it.
    async fn wait_history(&self, node: usize, pick: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/devices/{}/commands", self.devices[node].device.id);
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, page) = self.stack.get(&self.admin, &path).await;
            let found = page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| pick(c))
                .cloned();
            if let Some(c) = found {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "the command never reached the device's history: {page}\n{}",
                self.devices[node].agent.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The peers the device's searches found for instruction `id`.
    fn found(&self, node: usize, id: Uuid) -> Vec<String> {
        self.devices[node]
            .steps(id)
            .into_iter()
            .filter(|(step, _)| step == "peers_found")
            .flat_map(|(_, d)| {
                d["peers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
            })
            .collect()
    }
}

fn detail(command: &Value) -> &Value {
    &command["result"]["detail"]
}

#[tokio::test]
async fn a_broken_device_recovers_from_the_healthy_peer_of_its_type_and_the_other_type_never_answers()
 {
    let mut site = Site::new(64 * 1024).await;
    let healthy = site.new_device("healthy", "kiosk", "serve = true").await;
    let camera = site.new_device("camera", "camera", "serve = true").await;
    let broken = site.new_device("broken", "kiosk", "serve = false").await;
    for node in [healthy, camera, broken] {
        site.install_from_cloud(node).await;
    }
    site.devices[broken].break_component();

    // No version named: the digest comes from the device's own record of
    // the version it last ran healthy.
    let (id, done) = site
        .restore_from_peer(broken, json!({ "component": "app", "source": "peer" }))
        .await;

    assert_eq!(done["status"], "succeeded", "{done}");
    let d = detail(&done);
    assert_eq!(d["source"], "peer", "{done}");
    assert_eq!(d["peer"], site.devices[healthy].peer_addr(), "{done}");
    assert_eq!(d["running_version"], "1.0.0", "{done}");
    assert_eq!(read_tree(&site.devices[broken].path), site.tree);
    let found: std::collections::BTreeSet<String> = site.found(broken, id).into_iter().collect();
    assert_eq!(
        found,
        [site.devices[healthy].peer_addr()].into(),
        "only the kiosk answered; the camera holds the same image but is of another type"
    );
    let steps: Vec<String> = site.devices[broken]
        .steps(id)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    for step in [
        "peer_search",
        "peers_found",
        "peer_transfer",
        "verified",
        "committed",
    ] {
        assert!(steps.contains(&step.to_owned()), "{step} in {steps:?}");
    }
    assert_eq!(d["from_version"], "1.0.0", "a repair of the same version");
    // The repaired device serves the image too, and kept no broken copy
    // as its backup.
    assert!(
        site.devices[broken]
            .downloads()
            .join(&site.sha256)
            .is_file()
    );
    let backup = site.devices[broken].path.with_file_name(".app.tend-backup");
    assert!(!backup.exists(), "{} exists", backup.display());
}

#[tokio::test]
async fn with_discovery_blocked_the_device_finds_its_peer_through_the_configured_list() {
    let mut site = Site::new(64 * 1024).await;
    let healthy = site.new_device("healthy", "kiosk", "serve = true").await;
    site.install_from_cloud(healthy).await;
    let peers = format!("peers = [\"{}\"]", site.devices[healthy].peer_addr());
    let broken = site.new_device("broken", "kiosk", &peers).await;
    site.install_from_cloud(broken).await;
    site.devices[broken].break_component();
    // Its searches reach nobody: multicast, broadcast and the direct UDP
    // search to the configured peer are all dropped on the way out.
    site.devices[broken].host.block_udp_out(PEER_PORT);

    let (id, done) = site
        .restore_from_peer(broken, json!({ "component": "app", "source": "peer" }))
        .await;

    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(detail(&done)["peer"], site.devices[healthy].peer_addr());
    assert!(site.found(broken, id).is_empty(), "no search was answered");
    let steps: Vec<String> = site.devices[broken]
        .steps(id)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert!(steps.contains(&"peers_configured".to_owned()), "{steps:?}");
    assert_eq!(read_tree(&site.devices[broken].path), site.tree);
}

#[tokio::test]
async fn a_peer_killed_mid_transfer_hands_over_to_another_at_the_same_offset() {
    // 8 MiB in 1 KiB ranges: thousands of requests, time to kill the
    // serving peer halfway.
    let mut site = Site::new(8 * 1024 * 1024).await;
    let first = site.new_device("first", "kiosk", "serve = true").await;
    let second = site.new_device("second", "kiosk", "serve = true").await;
    site.install_from_cloud(first).await;
    site.install_from_cloud(second).await;
    let broken = site.new_device("broken", "kiosk", "").await;
    site.devices[broken].agent.set_segment_bytes(1024);
    site.devices[broken].agent.start();

    // The version named: the platform signs the artifact's digest into
    // the instruction; the device never had this component.
    let id = site
        .queue(
            broken,
            "restore",
            json!({ "component": "app", "source": "peer", "version": "1.0.0" }),
        )
        .await;
    let part = site.devices[broken]
        .downloads()
        .join(format!("{}.part", site.sha256));
    let deadline = Instant::now() + WAIT;
    let serving = loop {
        let transfer = site.devices[broken]
            .steps(id)
            .into_iter()
            .find(|(s, _)| s == "peer_transfer");
        let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if let Some((_, d)) = transfer
            && len > 512 * 1024
        {
            break d["peer"].as_str().expect("peer").to_owned();
        }
        assert!(Instant::now() < deadline, "the transfer did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (killed, other) = if serving == site.devices[first].peer_addr() {
        (first, second)
    } else {
        (second, first)
    };
    site.devices[killed].agent.kill();

    let done = site.settle(broken, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(detail(&done)["peer"], site.devices[other].peer_addr());
    assert_eq!(read_tree(&site.devices[broken].path), site.tree);
    let transfers: Vec<(String, u64)> = site.devices[broken]
        .steps(id)
        .into_iter()
        .filter(|(s, _)| s == "peer_transfer")
        .map(|(_, d)| {
            (
                d["peer"].as_str().unwrap_or_default().to_owned(),
                d["offset"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(transfers.first().map(|t| t.1), Some(0), "{transfers:?}");
    assert_eq!(
        transfers.iter().filter(|t| t.1 == 0).count(),
        1,
        "the image was never started again from its first byte: {transfers:?}"
    );
    let handed_over = transfers
        .iter()
        .find(|(peer, _)| *peer == site.devices[other].peer_addr())
        .expect("a transfer from the other peer");
    assert!(
        handed_over.1 >= 512 * 1024,
        "the other peer went on from where the first stopped, not from 0: {transfers:?}"
    );
}

#[tokio::test]
async fn altered_bytes_are_refused_and_without_any_peer_the_restore_fails_in_bounded_time() {
    let mut site = Site::new(64 * 1024).await;
    let broken = site.new_device("broken", "kiosk", "").await;
    site.install_from_cloud(broken).await;
    site.devices[broken].break_component();
    let damaged = read_tree(&site.devices[broken].path);

    // Nobody on the LAN: failed within the bounded rounds, untouched.
    let started = Instant::now();
    let (_, done) = site
        .restore_from_peer(broken, json!({ "component": "app", "source": "peer" }))
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["result"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no peer provided"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(read_tree(&site.devices[broken].path), damaged);

    // A peer whose image was altered on its disk (same size): refused,
    // and with no honest peer the restore fails and touches nothing.
    let liar = site.new_device("liar", "kiosk", "serve = true").await;
    site.install_from_cloud(liar).await;
    let image = site.devices[liar].downloads().join(&site.sha256);
    let mut bytes = std::fs::read(&image).expect("the liar's image");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&image, &bytes).expect("altering the image");
    let (id, done) = site
        .restore_from_peer(broken, json!({ "component": "app", "source": "peer" }))
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["result"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&site.devices[liar].peer_addr()), "{error}");
    assert_eq!(read_tree(&site.devices[broken].path), damaged);
    assert!(
        site.devices[broken]
            .steps(id)
            .iter()
            .any(|(s, _)| s == "peer_image_corrupt"),
        "the altered image was detected"
    );

    // An honest peer joins: the liar is refused, the honest one serves.
    let honest = site.new_device("honest", "kiosk", "serve = true").await;
    site.install_from_cloud(honest).await;
    let (_, done) = site
        .restore_from_peer(broken, json!({ "component": "app", "source": "peer" }))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(detail(&done)["peer"], site.devices[honest].peer_addr());
    assert_eq!(read_tree(&site.devices[broken].path), site.tree);
}

#[tokio::test]
async fn a_device_cut_off_from_the_cloud_recovers_from_a_peer_on_its_own_and_reports_it_later() {
    let mut site = Site::new(64 * 1024).await;
    let healthy = site.new_device("healthy", "kiosk", "serve = true").await;
    site.install_from_cloud(healthy).await;
    let broken = site
        .new_device("broken", "kiosk", "offline_recover_s = 5")
        .await;
    site.install_from_cloud(broken).await;

    site.devices[broken].host.cut_uplink();
    site.devices[broken].break_component();

    // Nobody asks: after 5 s without the server the agent finds the
    // component broken, with no backup, and restores it from the peer.
    let deadline = Instant::now() + WAIT;
    while read_tree(&site.devices[broken].path) != site.tree {
        assert!(
            Instant::now() < deadline,
            "the device did not recover on its own: {}",
            site.devices[broken].agent.log()
        );
        tokio::time::sleep(POLL).await;
    }
    let recovery = site.devices[broken]
        .agent
        .operations()
        .into_iter()
        .find(|o| o["step"] == "recovery_started")
        .expect("the recovery in the operation log");

    // The link comes back: the recovery reaches the device's history.
    let host = site.devices[broken].host.clone();
    host.restore_uplink(&site.lan);
    let recorded = site
        .wait_history(broken, |c| c["id"] == recovery["instruction_id"])
        .await;
    assert_eq!(recorded["kind"], "restore", "{recorded}");
    assert_eq!(recorded["status"], "succeeded", "{recorded}");
    assert_eq!(recorded["params"]["source"], "peer", "{recorded}");
    assert_eq!(
        recorded["result"]["detail"]["peer"],
        site.devices[healthy].peer_addr(),
        "{recorded}"
    );
}

#[tokio::test]
async fn an_agent_that_starts_with_a_broken_component_restores_it_from_a_peer() {
    let mut site = Site::new(64 * 1024).await;
    let healthy = site.new_device("healthy", "kiosk", "serve = true").await;
    site.install_from_cloud(healthy).await;
    // Only at start: the offline trigger is off.
    let broken = site
        .new_device("broken", "kiosk", "offline_recover_s = 0")
        .await;
    site.install_from_cloud(broken).await;
    site.devices[broken].agent.stop();
    site.devices[broken].break_component();
    site.devices[broken].agent.start();

    let recorded = site.wait_history(broken, |c| c["kind"] == "restore").await;
    assert_eq!(recorded["status"], "succeeded", "{recorded}");
    assert_eq!(
        recorded["result"]["detail"]["peer"],
        site.devices[healthy].peer_addr(),
        "{recorded}"
    );
    assert_eq!(read_tree(&site.devices[broken].path), site.tree);
    let reason = site.devices[broken]
        .agent
        .operations()
        .into_iter()
        .find(|o| o["step"] == "recovery_started")
        .expect("the recovery in the operation log");
    assert!(
        reason["detail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("started")),
        "{reason}"
    );
}

/// VmRSS of a process in kB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Seconds between two RFC 3339 timestamps of the operation log.
fn seconds_between(from: &Value, to: &Value) -> f64 {
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a timestamp")).expect("RFC 3339")
    };
    (at(to) - at(from)).num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// From the first search to the verified image, for instruction `id`.
fn search_to_verified(node: &Node, id: Uuid) -> f64 {
    let ops: Vec<Value> = node
        .agent
        .operations()
        .into_iter()
        .filter(|o| o["instruction_id"] == json!(id))
        .collect();
    let first = ops
        .iter()
        .find(|o| o["step"] == "peer_search")
        .expect("a search");
    let verified = ops
        .iter()
        .find(|o| o["step"] == "verified")
        .expect("a verified image");
    seconds_between(&first["at"], &verified["at"])
}

/// The figures of BENCHMARKS.md's "LAN peer recovery" (run by
/// `deploy/bench/peer.sh`): time from search to a verified image of
/// `BENCH_PEER_MB` MiB (default 64) restored from one peer, alone and then
/// four at once, and the serving agent's memory while it serves the four.
#[tokio::test]
#[ignore = "a benchmark: deploy/bench/peer.sh"]
async fn bench_peer_recovery() {
    let mb: usize = std::env::var("BENCH_PEER_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut site = Site::new(mb * 1024 * 1024).await;
    let image_bytes = std::fs::metadata(site.stack.artifact_objects()[0].clone())
        .map(|m| m.len())
        .unwrap_or(0);
    let server = site.new_device("server", "kiosk", "serve = true").await;
    site.install_from_cloud(server).await;
    let mut restoring = Vec::new();
    for i in 0..5 {
        let n = site.new_device(&format!("r{i}"), "kiosk", "").await;
        site.devices[n].agent.start();
        restoring.push(n);
    }
    let params = json!({ "component": "app", "source": "peer", "version": "1.0.0" });

    // One device alone.
    let alone = restoring[0];
    let id = site.queue(alone, "restore", params.clone()).await;
    let v = site.settle(alone, id).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let alone_s = search_to_verified(&site.devices[alone], id);

    // Four at once, with the server's memory sampled.
    let pid = site.devices[server]
        .agent
        .pid()
        .expect("the serving agent runs");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kb(pid);
    let mut ids = Vec::new();
    for &n in &restoring[1..] {
        ids.push((n, site.queue(n, "restore", params.clone()).await));
    }
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        async move {
            while !sampling.is_cancelled() {
                peak.fetch_max(rss_kb(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let mut done = 0;
        for &(n, id) in &ids {
            let v = site.stack.command(&site.admin, id).await;
            match v["status"].as_str() {
                Some("succeeded") => done += 1,
                Some("failed" | "rejected" | "timed_out") => panic!("device {n}: {v}"),
                _ => {}
            }
        }
        if done == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the four restores did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sampling.cancel();
    sampler.await.expect("the memory sampler");
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let four: Vec<f64> = ids
        .iter()
        .map(|&(n, id)| search_to_verified(&site.devices[n], id))
        .collect();
    let mib = image_bytes as f64 / (1024.0 * 1024.0);
    println!("BENCH image: {image_bytes} bytes ({mib:.1} MiB, app {mb} MiB of data)");
    println!(
        "BENCH alone: search to verified {alone_s:.2} s ({:.0} MiB/s)",
        mib / alone_s
    );
    for (i, s) in four.iter().enumerate() {
        println!(
            "BENCH four at once, device {}: search to verified {s:.2} s ({:.0} MiB/s)",
            i + 1,
            mib / s
        );
    }
    println!(
        "BENCH serving agent VmRSS (sampled every 5 ms): {before} kB before, {peak} kB peak while serving four: +{} kB",
        peak.saturating_sub(before)
    );
}
