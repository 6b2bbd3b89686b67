//! The fleet simulator behind `tend-fleet`.
//!
//! A run has five phases: provision N devices through the bulk route;
//! authenticate each at the sync server; run them all as simulated agents
//! (tokio tasks sharing pooled keep-alive connections) for the measured
//! window while commands are queued through the platform; drain until the
//! queued commands were carried out (or a bounded wait ends); read every
//! queued command back for its `delivered_at`. Progress goes to stderr,
//! the [`report::Report`] to the caller.

pub mod admin;
pub mod args;
pub mod device;
pub mod report;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use futures_util::{StreamExt, stream};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use admin::{Admin, Queued};
use args::Plan;
use device::{Device, Fleet, Pool, pool_of};
use report::{Commands, Heartbeats, Rate, Report};
use stats::{Latency, Op, Stats};

/// Device authentications in flight at the start. Each costs the sync
/// server one SQL query; more at once only queues them in its pool.
const AUTH_PARALLEL: usize = 256;
/// Command creations in flight; at most 100/s, each a few milliseconds.
const QUEUE_PARALLEL: usize = 32;
/// Commands read back at once at the end.
const READ_PARALLEL: usize = 32;
/// How long stopped devices may take to finish a report in progress.
const STOP_GRACE: Duration = Duration::from_secs(40);

/// Runs the plan to its end and reports.
pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let n = plan.devices as usize;
    let admin = Arc::new(
        Admin::login(&plan.platform, &plan.username, &plan.password)
            .await
            .context("logging in to the platform")?,
    );

    let tag = Uuid::new_v4().simple().to_string()[..8].to_owned();
    progress(format_args!("provisioning {n} devices (label fleet:{tag})"));
    let t = Instant::now();
    let creds = admin.provision(n, &tag).await?;
    let provisioning = Rate::new(creds.len() as u64, 0, t.elapsed().as_secs_f64());
    let ids: Arc<Vec<Uuid>> = Arc::new(creds.iter().map(|c| c.id).collect());

    let stats = Arc::new(Stats::default());
    let fleet = Arc::new(Fleet {
        api: format!("{}/device/v1", plan.sync.as_str().trim_end_matches('/')),
        pools: split(plan.connections, plan.clients)
            .into_iter()
            .map(Pool::new)
            .collect::<Result<_, _>>()
            .context("building the device HTTP clients")?,
        interval: plan.interval,
        long_poll: plan.long_poll,
        stats: stats.clone(),
    });
    let clients = fleet.pools.len();
    let devices: Vec<Device> = creds
        .into_iter()
        .enumerate()
        .map(|(i, c)| Device::new(c.id, c.secret, pool_of(i, clients)))
        .collect();

    progress(format_args!("authenticating {n} devices"));
    let t = Instant::now();
    let authed: Vec<(Device, bool)> = stream::iter(devices)
        .map(|mut d| {
            let fleet = fleet.clone();
            async move {
                let ok = d.authenticate(&fleet).await;
                (d, ok)
            }
        })
        .buffer_unordered(AUTH_PARALLEL)
        .collect()
        .await;
    let auth_failed = authed.iter().filter(|(_, ok)| !ok).count() as u64;
    let authentication = Rate::new(
        n as u64 - auth_failed,
        auth_failed,
        t.elapsed().as_secs_f64(),
    );

    progress(format_args!(
        "running {n} devices for {} s ({})",
        plan.duration.as_secs(),
        if plan.long_poll {
            "long-poll"
        } else {
            "polling"
        }
    ));
    let stop = CancellationToken::new();
    let spawned = Instant::now();
    let mut devices = JoinSet::new();
    for (d, _) in authed {
        devices.spawn(d.run(fleet.clone(), spawned, stop.clone()));
    }
    // Warm-up: the devices' first heartbeats are spread over one interval.
    // The window (heartbeat figures, commands) starts once every device is
    // heartbeating, so a command never waits for a device's first beat.
    progress(format_args!(
        "warming up for one interval ({} s)",
        plan.interval.as_secs()
    ));
    sleep(plan.interval).await;
    stats.start_window();
    let started = Instant::now();
    let end = started + plan.duration;
    if let Some(every) = plan.report_every {
        tokio::spawn(report_progress(stats.clone(), every, started, stop.clone()));
    }
    let queuer = tokio::spawn(queue_commands(
        admin.clone(),
        ids.clone(),
        plan.commands_per_s,
        end,
        stats.clone(),
    ));
    sleep_until(end).await;
    let window = stats.heartbeat_window();
    let (queued, queue_failed) = queuer.await.context("the command queuer panicked")?;

    // Devices keep running until what was queued has been carried out, for
    // at most two intervals and a bit: a command queued in the window's
    // last second still counts.
    let queued_ids: Vec<Uuid> = queued.iter().map(|q| q.id).collect();
    let drain_until = Instant::now() + (plan.interval * 2 + Duration::from_secs(5));
    progress(format_args!(
        "draining: waiting for {} queued commands",
        queued_ids.len()
    ));
    while stats.count_finished(&queued_ids) < queued_ids.len() && Instant::now() < drain_until {
        sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let joined = tokio::time::timeout(STOP_GRACE, async {
        while devices.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        devices.abort_all();
    }

    progress(format_args!("reading back {} commands", queued.len()));
    let commands = read_back(&admin, &queued, queue_failed, &stats).await;
    let secs = plan.duration.as_secs_f64();
    Ok(Report {
        devices: plan.devices,
        interval_s: plan.interval.as_secs(),
        duration_s: plan.duration.as_secs(),
        long_poll: plan.long_poll,
        connections: plan.connections,
        provisioning,
        authentication,
        heartbeats: Heartbeats {
            sent: window.ok + window.failed,
            ok: window.ok,
            failed: window.failed,
            per_s: round2(window.ok as f64 / secs),
            offered_per_s: round2(f64::from(plan.devices) / plan.interval.as_secs_f64()),
            latency_ms: window.latency,
            send_lag_ms: window.send_lag,
        },
        errors: stats.errors(),
        errors_total: stats.errors_total(),
        fetches: stats.get(&stats.fetches),
        instructions: stats.get(&stats.instructions),
        executions: stats.get(&stats.executions),
        redelivered: stats.get(&stats.redelivered),
        reports: stats.get(&stats.reports),
        commands,
    })
}

/// `connections` split over `clients` as evenly as whole numbers allow.
pub fn split(connections: u32, clients: u32) -> Vec<u32> {
    let clients = clients.clamp(1, connections.max(1));
    (0..clients)
        .map(|k| connections / clients + u32::from(k < connections % clients))
        .collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn progress(msg: std::fmt::Arguments<'_>) {
    eprintln!("tend-fleet: {msg}");
}

/// Queues a `shutdown` to a random device `rate` times a second until
/// `end`; answers what was queued and how many attempts failed.
async fn queue_commands(
    admin: Arc<Admin>,
    ids: Arc<Vec<Uuid>>,
    rate: f64,
    end: Instant,
    stats: Arc<Stats>,
) -> (Vec<Queued>, u64) {
    let (mut queued, mut failed) = (Vec::new(), 0);
    if rate <= 0.0 || ids.is_empty() {
        return (queued, failed);
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // A slow platform lowers the rate rather than bursting afterwards.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut inflight = JoinSet::new();
    let mut settle = |r: Result<Result<Queued, stats::Failure>, tokio::task::JoinError>| match r {
        Ok(Ok(q)) => {
            stats.commands_queued.fetch_add(1, Ordering::Relaxed);
            queued.push(q);
        }
        Ok(Err(f)) => {
            stats.error(Op::Queue, f);
            failed += 1;
        }
        Err(_) => failed += 1,
    };
    loop {
        tokio::select! {
            _ = sleep_until(end) => break,
            _ = tick.tick() => {}
        }
        while let Some(r) = inflight.try_join_next() {
            settle(r);
        }
        while inflight.len() >= QUEUE_PARALLEL {
            if let Some(r) = inflight.join_next().await {
                settle(r);
            }
        }
        let device = ids[rand::random_range(0..ids.len())];
        let admin = admin.clone();
        inflight.spawn(async move { admin.queue_shutdown(device).await });
    }
    while let Some(r) = inflight.join_next().await {
        settle(r);
    }
    (queued, failed)
}

/// Reads every queued command back: its status and `delivered_at`.
async fn read_back(admin: &Admin, queued: &[Queued], queue_failed: u64, stats: &Stats) -> Commands {
    let states: Vec<_> = stream::iter(queued.iter().copied())
        .map(|q| async move { (q, admin.command(q.id).await) })
        .buffer_unordered(READ_PARALLEL)
        .collect()
        .await;
    let mut latency = Latency::default();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let (mut delivered, mut succeeded) = (0, 0);
    for (q, state) in states {
        match state {
            Ok(s) => {
                if let Some(at) = s.delivered_at {
                    delivered += 1;
                    latency.record_signed_us(
                        (at - q.created_at).num_microseconds().unwrap_or(i64::MAX),
                    );
                }
                if s.status == "succeeded" {
                    succeeded += 1;
                }
                *statuses.entry(s.status).or_default() += 1;
            }
            Err(f) => {
                stats.error(Op::Read, f);
                *statuses.entry("unread".into()).or_default() += 1;
            }
        }
    }
    Commands {
        queued: queued.len() as u64,
        queue_failed,
        delivered,
        succeeded,
        statuses,
        delivery_ms: latency.summary(),
    }
}

/// A line on stderr every `every`: the rate over the last period and the
/// running totals, so a long run shows it is alive and healthy.
async fn report_progress(
    stats: Arc<Stats>,
    every: Duration,
    started: Instant,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(started + every, every);
    let mut last = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = stats.get(&stats.heartbeats_ok);
        progress(format_args!(
            "[{:>5.0} s] heartbeats {ok} ({:.1}/s), errors {}, fetches {}, commands queued {} finished {}",
            started.elapsed().as_secs_f64(),
            (ok - last) as f64 / every.as_secs_f64(),
            stats.errors_total(),
            stats.get(&stats.fetches),
            stats.get(&stats.commands_queued),
            stats.finished_count(),
        ));
        last = ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_split_evenly_over_clients() {
        assert_eq!(split(2000, 2), vec![1000, 1000]);
        assert_eq!(split(2500, 3), vec![834, 833, 833]);
        assert_eq!(split(3, 5), vec![1, 1, 1]);
        assert_eq!(split(10, 0), vec![10]);
        assert_eq!(split(18_000, 18).iter().sum::<u32>(), 18_000);
    }
}
