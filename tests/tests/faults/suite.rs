//! A stream of commands under every fault kind, with the invariants that
//! make tend trustworthy checked at the end:
//!
//! - every command reaches a terminal state within [`SETTLE_BOUND`] of the
//!   last fault;
//! - no instruction runs twice on its device;
//! - none runs that was cancelled or expired, or that is not its device's;
//! - a command reported `succeeded` really ran;
//! - no command row the admin did not ask for, and the outbox is empty.
//!
//! Two replicas of every service run behind balancing proxies (as behind a
//! Kubernetes Service); faults come one after another, each followed by a
//! probe command whose round trip is the fault's recovery time. Agents die
//! meanwhile at their fault points and are restarted by a supervisor, and
//! their reboots really restart them.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tend_proto::command::CommandStatus;
use tend_tests::{ADMIN_PASSWORD, ADMIN_USER, Agent, Mode, Options, Proxy, Service, Stack};
use uuid::Uuid;

/// After the last fault ends, every command is terminal within this: the
/// longest command timeout (30 s) plus time for a report to arrive and a
/// sweep to run, with room for a loaded CI machine.
const SETTLE_BOUND: Duration = Duration::from_secs(120);
/// A probe command must succeed within this after its fault ended.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// Devices that take the stream of commands, and die at fault points.
const WORKERS: usize = 6;
/// The chance that an agent dies at each fault point it passes.
const AGENT_FAULT_P: f64 = 0.03;
const AGENT_FAULT_POINTS: [&str; 4] = [
    "after_fetch",
    "after_journal",
    "during_action",
    "before_report",
];

/// What the suite injects, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fault {
    KillSync,
    TermSync,
    KillMonitor,
    TermMonitor,
    KillPlatform,
    TermPlatform,
    KillAll,
    TermAll,
    AmqpCut,
    AmqpDown,
    RedisFlush,
    RedisRestart,
    PgTerminate,
    PgDown,
    PgStall,
}

const FAULTS: [Fault; 16] = [
    Fault::KillSync,
    Fault::AmqpCut,
    Fault::TermMonitor,
    Fault::PgTerminate,
    Fault::RedisFlush,
    Fault::KillPlatform,
    Fault::AmqpDown,
    Fault::TermSync,
    Fault::RedisRestart,
    Fault::KillMonitor,
    Fault::PgDown,
    Fault::TermPlatform,
    Fault::PgStall,
    Fault::KillAll,
    Fault::AmqpCut,
    Fault::TermAll,
];

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::KillSync => "tend-sync replica SIGKILLed, restarted",
            Fault::TermSync => "tend-sync replica SIGTERMed, restarted",
            Fault::KillMonitor => "tend-monitor replica SIGKILLed, restarted",
            Fault::TermMonitor => "tend-monitor replica SIGTERMed, restarted",
            Fault::KillPlatform => "tend-platform replica SIGKILLed, restarted",
            Fault::TermPlatform => "tend-platform replica SIGTERMed, restarted",
            Fault::KillAll => "every service process SIGKILLed together, restarted",
            Fault::TermAll => "every service process SIGTERMed together, restarted",
            Fault::AmqpCut => "RabbitMQ connections cut",
            Fault::AmqpDown => "RabbitMQ unreachable",
            Fault::RedisFlush => "Redis emptied (FLUSHALL)",
            Fault::RedisRestart => "Redis killed, restarted empty",
            Fault::PgTerminate => "PostgreSQL backends terminated",
            Fault::PgDown => "PostgreSQL unreachable",
            Fault::PgStall => "PostgreSQL stalled (connections hang)",
        }
    }
}

/// One injection: when, and how long until a new command went through.
struct Window {
    fault: Fault,
    recovery: Duration,
}

/// A command the platform acknowledged with 201.
#[derive(Debug, Clone)]
struct Issued {
    id: Uuid,
    /// Index into the suite's windows: the fault under way (or last ended)
    /// when it was issued.
    window: usize,
}

struct Run {
    seconds: u64,
}

impl Run {
    fn from_env() -> Run {
        let seconds = std::env::var("TEND_FAULT_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(150);
        Run { seconds }
    }
}

/// The admin API through its balancer, logging in again when the token
/// expires (a soak outlives it).
#[derive(Clone)]
struct Admin {
    http: reqwest::Client,
    base: String,
    token: Arc<Mutex<String>>,
}

impl Admin {
    async fn login(&self) -> Result<(), String> {
        let r = self
            .http
            .post(format!("{}/api/v1/auth/login", self.base))
            .json(&json!({ "username": ADMIN_USER, "password": ADMIN_PASSWORD }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("login: {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        let token = v["access_token"].as_str().ok_or("no token")?.to_owned();
        *self.token.lock().unwrap() = token;
        Ok(())
    }

    /// One request; `Err` for a transport failure, else the status and body.
    async fn call(&self, post: Option<Value>, path: &str) -> Result<(u16, Value), String> {
        let url = format!("{}/api/v1{path}", self.base);
        let token = self.token.lock().unwrap().clone();
        let req = match &post {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        let r = req
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        if status == 401 {
            let _ = self.login().await;
        }
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_is_lost_or_run_twice_under_faults() {
    let run = Run::from_env();
    let mut stack = Stack::start_with(Options {
        heartbeat_s: 1,
        sweep_ms: 250,
        faults: true,
        ..Options::default()
    })
    .await;
    for s in [Service::Platform, Service::Sync, Service::Monitor] {
        stack.spawn_replica(s).await;
    }
    let sync_lb = Proxy::balance("sync", stack.addrs(Service::Sync)).await;
    let platform_lb = Proxy::balance("platform", stack.addrs(Service::Platform)).await;
    let admin = Admin {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap(),
        base: format!("http://{}", platform_lb.addr()),
        token: Arc::new(Mutex::new(String::new())),
    };
    admin.login().await.expect("login");
    let token = admin.token.lock().unwrap().clone();

    let sync_url = format!("http://{}", sync_lb.addr());
    let faults_spec = AGENT_FAULT_POINTS
        .iter()
        .map(|p| format!("{p}={AGENT_FAULT_P}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let device = stack.new_device(&token).await;
        let mut agent = Agent::rebooting(&stack, &device);
        agent.set_server(&sync_url);
        agent.set_env("TEND_AGENT_FAULTS", &faults_spec);
        agent.start();
        workers.push(agent);
    }
    // The probe measures recovery; it has no fault points of its own.
    let probe_device = stack.new_device(&token).await;
    let mut probe = Agent::new(&stack, &probe_device);
    probe.set_server(&sync_url);
    probe.start();
    // Unplugged until the end: what it is sent expires, and must never run.
    let unplugged_device = stack.new_device(&token).await;
    let mut unplugged = Agent::new(&stack, &unplugged_device);
    unplugged.set_server(&sync_url);

    let worker_ids: Vec<Uuid> = workers.iter().map(|a| a.device.id).collect();
    let agents = Arc::new(Mutex::new(workers));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let supervisor = tokio::spawn(supervise(agents.clone(), done.clone()));

    let window = Arc::new(AtomicUsize::new(0));
    let commander = tokio::spawn(command_stream(
        admin.clone(),
        worker_ids,
        unplugged_device.id,
        window.clone(),
        stop.clone(),
    ));

    // The faults, one after another, until the time is up.
    let deadline = Instant::now() + Duration::from_secs(run.seconds);
    let mut windows: Vec<Window> = Vec::new();
    let mut i = 0;
    while Instant::now() < deadline || i < FAULTS.len().min(run.seconds as usize / 10) {
        let fault = FAULTS[i % FAULTS.len()];
        i += 1;
        window.store(windows.len(), Ordering::SeqCst);
        eprintln!("fault {i}: {}", fault.describe());
        inject(&mut stack, fault).await;
        sync_lb.set_upstreams(stack.addrs(Service::Sync));
        platform_lb.set_upstreams(stack.addrs(Service::Platform));
        let recovery = probe_round_trip(&admin, probe_device.id).await;
        eprintln!("  recovered in {recovery:?}");
        windows.push(Window { fault, recovery });
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let last_fault_ended = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let (issued, unacked) = commander.await.expect("the command stream");
    unplugged.start();

    // Settle: every command terminal, the outbox empty.
    let db = stack.sql().await;
    let settled = loop {
        let open: Vec<(Uuid, Uuid, String, String)> = db
            .query("SELECT id, device_id, kind, status FROM commands", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .filter(|(_, _, _, status): &(_, _, _, String)| !is_terminal(status))
            .collect();
        let outbox: i64 = db
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        if open.is_empty() && outbox == 0 {
            break last_fault_ended.elapsed();
        }
        if last_fault_ended.elapsed() > SETTLE_BOUND {
            for (id, dev, kind, st) in &open {
                eprintln!("not terminal: {id} on {dev}: {kind} {st}");
            }
            panic!(
                "{} commands not terminal and {outbox} outbox rows {SETTLE_BOUND:?} after the last fault",
                open.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Give an unplugged agent the time to (wrongly) run what expired.
    tokio::time::sleep(Duration::from_secs(3)).await;

    done.store(true, Ordering::SeqCst);
    supervisor.await.expect("the supervisor");
    let mut all_agents = std::mem::take(&mut *agents.lock().unwrap());
    all_agents.push(probe);
    all_agents.push(unplugged);
    for a in all_agents.iter_mut() {
        a.stop();
    }

    // The record, and what each agent ran.
    let rows = db
        .query("SELECT id, device_id, kind, status FROM commands", &[])
        .await
        .unwrap();
    let record: HashMap<Uuid, (Uuid, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let mut runs: HashMap<Uuid, usize> = HashMap::new();
    let mut violations: Vec<String> = Vec::new();
    // Per fault point: how often an agent died there, and on which ids.
    let mut agent_faults: HashMap<&str, (usize, HashSet<Uuid>)> = HashMap::new();
    for a in &all_agents {
        for id in a.executed() {
            *runs.entry(id).or_default() += 1;
            match record.get(&id) {
                Some((device, _, _)) if *device == a.device.id => {}
                _ => violations.push(format!(
                    "device {} ran {id}, which is not its command",
                    a.device.id
                )),
            }
        }
        for op in a.operations() {
            let id: Option<Uuid> = op["instruction_id"].as_str().and_then(|s| s.parse().ok());
            if let Some(id) = id
                && record.get(&id).is_none_or(|(d, _, _)| *d != a.device.id)
            {
                violations.push(format!(
                    "the operation log of {} names {id}, not its command",
                    a.device.id
                ));
            }
        }
        for line in a.log().lines() {
            if let Some(rest) = line.split("fault point ").nth(1)
                && let Some((point, tail)) = rest.split_once(" at instruction ")
            {
                let ids = tail.trim_end_matches(": aborting");
                let entry = agent_faults
                    .entry(AGENT_FAULT_POINTS.iter().find(|p| **p == point).unwrap())
                    .or_default();
                entry.0 += 1;
                entry
                    .1
                    .extend(ids.split(' ').filter_map(|s| s.parse::<Uuid>().ok()));
            }
        }
    }

    let acked: HashSet<Uuid> = issued.iter().map(|c| c.id).collect();
    let lost = |id: &Uuid| -> bool {
        match record.get(id) {
            None => true,
            Some((_, kind, status)) => {
                !is_terminal(status)
                    || (status == "succeeded"
                        && kind != "log_query"
                        && runs.get(id).copied().unwrap_or(0) == 0)
            }
        }
    };
    let twice = |id: &Uuid| runs.get(id).copied().unwrap_or(0) > 1;
    for id in record.keys() {
        if twice(id) {
            violations.push(format!("{id} ran {} times", runs[id]));
        }
        let (_, _, status) = &record[id];
        if (status == "cancelled" || status == "expired") && runs.contains_key(id) {
            violations.push(format!("{id} ran though it is {status}"));
        }
    }
    for id in &acked {
        if lost(id) {
            violations.push(format!("{id} was lost: {:?}", record.get(id)));
        }
    }
    // Rows nobody acknowledged come only from requests whose answer was
    // lost to a fault (the row committed, the 201 never arrived).
    let unasked = record.keys().filter(|id| !acked.contains(id)).count();
    let probes = windows.len();
    if unasked > unacked + probes {
        violations.push(format!(
            "{unasked} command rows were not acknowledged, but only {unacked} requests went unanswered"
        ));
    }

    // The table.
    let mut by_fault: Vec<(String, usize, usize, usize, usize, String)> = Vec::new();
    let mut kinds: Vec<Fault> = Vec::new();
    for f in FAULTS {
        if !kinds.contains(&f) {
            kinds.push(f);
        }
    }
    for fault in kinds {
        let ws: Vec<usize> = (0..windows.len())
            .filter(|&w| windows[w].fault == fault)
            .collect();
        if ws.is_empty() {
            continue;
        }
        let cmds: Vec<&Issued> = issued.iter().filter(|c| ws.contains(&c.window)).collect();
        let longest = ws.iter().map(|&w| windows[w].recovery).max().unwrap();
        by_fault.push((
            fault.describe().to_owned(),
            ws.len(),
            cmds.len(),
            cmds.iter().filter(|c| lost(&c.id)).count(),
            cmds.iter().filter(|c| twice(&c.id)).count(),
            format!("{:.1} s", longest.as_secs_f64()),
        ));
    }
    for point in AGENT_FAULT_POINTS {
        let (n, ids) = agent_faults.remove(point).unwrap_or_default();
        by_fault.push((
            format!("agent killed at {point}"),
            n,
            ids.len(),
            ids.iter().filter(|id| lost(id)).count(),
            ids.iter().filter(|id| twice(id)).count(),
            "—".to_owned(),
        ));
    }
    let statuses = {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, _, s) in record.values() {
            *counts.entry(s.as_str()).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort();
        v.iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| fault | injected | commands issued | lost | executed twice | longest recovery |"
    );
    let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|");
    for (name, n, cmds, lost, twice, rec) in &by_fault {
        let _ = writeln!(
            table,
            "| {name} | {n} | {cmds} | {lost} | {twice} | {rec} |"
        );
    }
    let total_lost = acked.iter().filter(|id| lost(id)).count();
    let total_twice = record.keys().filter(|id| twice(id)).count();
    let _ = writeln!(
        table,
        "| **all** | {} | {} | {total_lost} | {total_twice} | |",
        windows.len() + by_fault.iter().rev().take(4).map(|r| r.1).sum::<usize>(),
        acked.len(),
    );
    let _ = writeln!(
        table,
        "\n{} s of faults; {} commands acknowledged ({} requests unanswered during faults, {} rows from them); \
         final statuses: {statuses}; executions recorded: {}; every command terminal and the outbox empty {:.1} s after the last fault.",
        run.seconds,
        acked.len(),
        unacked,
        unasked.saturating_sub(probes),
        runs.values().sum::<usize>(),
        settled.as_secs_f64()
    );
    println!("\n{table}");
    if let Ok(path) = std::env::var("TEND_FAULT_REPORT") {
        std::fs::write(&path, &table).expect("writing TEND_FAULT_REPORT");
    }

    for (name, text) in stack.logs() {
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            violations.push(format!("{name} panicked: {line}"));
        }
        // Replicas share the sweeps and the relay through row locks, SKIP
        // LOCKED and advisory locks: they never fight over rows.
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("deadlock detected") || l.contains("could not serialize"))
        {
            violations.push(format!("{name}: replicas fought over rows: {line}"));
        }
    }
    for w in &windows {
        if w.recovery > RECOVERY_BOUND {
            violations.push(format!(
                "after \"{}\" a new command took {:?} to succeed",
                w.fault.describe(),
                w.recovery
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(
        acked.len() >= 50,
        "too few commands went through: {}",
        acked.len()
    );
}

fn is_terminal(status: &str) -> bool {
    status
        .parse::<CommandStatus>()
        .is_ok_and(CommandStatus::is_terminal)
}

/// Restarts agents that died (at a fault point, or by their own reboot),
/// as systemd would, until `done`.
async fn supervise(agents: Arc<Mutex<Vec<Agent>>>, done: Arc<AtomicBool>) {
    while !done.load(Ordering::SeqCst) {
        for a in agents.lock().unwrap().iter_mut() {
            a.restart_if_exited();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Queues commands until stopped: shutdowns and reboots to the workers,
/// some cancelled at once, and now and then one that expires to the
/// unplugged device. Returns the acknowledged commands and how many
/// requests got no answer.
async fn command_stream(
    admin: Admin,
    workers: Vec<Uuid>,
    unplugged: Uuid,
    window: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (Vec<Issued>, usize) {
    let mut issued = Vec::new();
    let mut unanswered = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        n += 1;
        let (device, body, cancel) = {
            if n.is_multiple_of(15) {
                (
                    unplugged,
                    json!({ "kind": "shutdown", "expires_in_s": 1 }),
                    false,
                )
            } else {
                let device = workers[rand::random_range(0..workers.len())];
                let kind = if rand::random_bool(0.3) {
                    "reboot"
                } else {
                    "shutdown"
                };
                (
                    device,
                    json!({ "kind": kind, "timeout_s": 30 }),
                    rand::random_bool(0.1),
                )
            }
        };
        let w = window.load(Ordering::SeqCst);
        match admin
            .call(Some(body), &format!("/devices/{device}/commands"))
            .await
        {
            Ok((201, v)) => {
                let id: Uuid = v["id"].as_str().and_then(|s| s.parse().ok()).unwrap();
                issued.push(Issued { id, window: w });
                if cancel {
                    // 200 or 409 (already delivered): both are fine; the
                    // invariant is that a cancelled command never runs.
                    let _ = admin
                        .call(Some(json!({})), &format!("/commands/{id}/cancel"))
                        .await;
                }
            }
            Ok((503 | 502 | 401, _)) => unanswered += 1,
            Ok((status, v)) => panic!("queueing a command answered {status}: {v}"),
            Err(_) => unanswered += 1,
        }
    }
    (issued, unanswered)
}

/// Queues a shutdown to the probe device until the platform takes it, then
/// waits until it succeeded: the time a new command needs after a fault.
async fn probe_round_trip(admin: &Admin, device: Uuid) -> Duration {
    let started = Instant::now();
    let limit = RECOVERY_BOUND * 2;
    let id = loop {
        if let Ok((201, v)) = admin
            .call(
                Some(json!({ "kind": "shutdown", "timeout_s": 30 })),
                &format!("/devices/{device}/commands"),
            )
            .await
        {
            break v["id"]
                .as_str()
                .and_then(|s| s.parse::<Uuid>().ok())
                .unwrap();
        }
        if started.elapsed() > limit {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        if let Ok((200, v)) = admin.call(None, &format!("/commands/{id}")).await {
            match v["status"].as_str() {
                Some("succeeded") => return started.elapsed(),
                Some(s) if is_terminal(s) => panic!("the probe command ended {s}: {v}"),
                _ => {}
            }
        }
        if started.elapsed() > limit {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a fault that lasts lasts.
fn hold() -> Duration {
    Duration::from_millis(rand::random_range(2000..6000))
}

async fn inject(stack: &mut Stack, fault: Fault) {
    let replica = |stack: &Stack, s: Service| rand::random_range(0..stack.count(s));
    match fault {
        Fault::KillSync
        | Fault::KillMonitor
        | Fault::KillPlatform
        | Fault::TermSync
        | Fault::TermMonitor
        | Fault::TermPlatform => {
            let s = service_of(fault);
            let n = replica(stack, s);
            stop_process(stack, s, n, fault);
            tokio::time::sleep(hold()).await;
            stack.spawn_nth(s, n).await;
        }
        Fault::KillAll | Fault::TermAll => {
            for s in [Service::Sync, Service::Monitor, Service::Platform] {
                for n in 0..stack.count(s) {
                    stop_process(stack, s, n, fault);
                }
            }
            tokio::time::sleep(hold()).await;
            for s in [Service::Platform, Service::Monitor, Service::Sync] {
                for n in 0..stack.count(s) {
                    stack.spawn_nth(s, n).await;
                }
            }
        }
        Fault::AmqpCut => faults(stack).amqp.cut(),
        Fault::AmqpDown => {
            faults(stack).amqp.set_mode(Mode::Refuse);
            tokio::time::sleep(hold()).await;
            faults(stack).amqp.set_mode(Mode::Pass);
        }
        Fault::RedisFlush => {
            let mut r = stack.redis().await;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut r).await.unwrap();
        }
        Fault::RedisRestart => {
            stack.faults.as_mut().unwrap().redis_server.stop();
            tokio::time::sleep(hold()).await;
            stack.faults.as_mut().unwrap().redis_server.restart().await;
        }
        Fault::PgTerminate => {
            let db = stack.sql().await;
            let n = db
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            eprintln!("  terminated {n} backends");
        }
        Fault::PgDown => {
            faults(stack).postgres.set_mode(Mode::Refuse);
            tokio::time::sleep(hold()).await;
            faults(stack).postgres.set_mode(Mode::Pass);
        }
        Fault::PgStall => {
            faults(stack).postgres.set_mode(Mode::Stall);
            tokio::time::sleep(hold()).await;
            faults(stack).postgres.set_mode(Mode::Pass);
        }
    }
}

/// SIGKILL for the `Kill…` faults; SIGTERM, which must end in exit 0,
/// for the `Term…` ones.
fn stop_process(stack: &mut Stack, s: Service, n: usize, fault: Fault) {
    if matches!(
        fault,
        Fault::KillSync | Fault::KillMonitor | Fault::KillPlatform | Fault::KillAll
    ) {
        stack.kill_nth(s, n);
    } else {
        let code = stack.terminate_nth(s, n);
        assert_eq!(code, Some(0), "{s:?} #{n} exited {code:?} at SIGTERM");
    }
}

fn faults(stack: &Stack) -> &tend_tests::Faults {
    stack.faults.as_ref().expect("a stack with fault proxies")
}

fn service_of(fault: Fault) -> Service {
    match fault {
        Fault::KillSync | Fault::TermSync => Service::Sync,
        Fault::KillMonitor | Fault::TermMonitor => Service::Monitor,
        _ => Service::Platform,
    }
}
