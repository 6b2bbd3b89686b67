//! One simulated device: a tokio task that behaves like `tend-agent` on
//! the wire (authenticate, heartbeat, fetch when pending, report each
//! instruction `in_progress` then `succeeded`, never start an id twice)
//! without executing anything.
//!
//! Devices share pooled keep-alive connections ([`Pool`]): a hundred
//! thousand devices cannot each hold a socket in one process, and a fleet
//! of real devices behind a few gateways looks the same to the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::RequestBuilder;
use serde::de::DeserializeOwned;
use tend_proto::command::ReportStatus;
use tend_proto::device::{
    AuthRequest, AuthResponse, Heartbeat, HeartbeatResponse, Instructions, Report,
};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::stats::{Failure, Op, Stats};

/// How long a plain request may take before it counts as a timeout. Long
/// enough to see a saturated server's slow answers as latency, not errors.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A held heartbeat may take its whole wait, plus this.
const HOLD_MARGIN: Duration = Duration::from_secs(10);
/// With long-poll, a device never heartbeats more often than this, even
/// when told to come back at once: a server answering 0 without holding
/// would otherwise turn every device into a busy loop.
const MIN_LONG_POLL_GAP: Duration = Duration::from_millis(100);

/// One HTTP client and the connections it may use. The semaphore bounds
/// requests in flight, and so the sockets the client opens (it reuses an
/// idle one before connecting another).
pub struct Pool {
    http: reqwest::Client,
    slots: Semaphore,
}

impl Pool {
    pub fn new(connections: u32) -> reqwest::Result<Pool> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections as usize)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()?;
        Ok(Pool {
            http,
            slots: Semaphore::new(connections as usize),
        })
    }

    /// Sends a request on a free connection; returns when the answer was
    /// read, when it went out (after waiting for a connection) and how
    /// long it took from there.
    async fn call(&self, req: RequestBuilder) -> Exchange {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the pool is never closed");
        let began = Instant::now();
        let outcome = async {
            let r = req.send().await.map_err(|e| Failure::of(&e))?;
            let status = r.status();
            let body = r.bytes().await.map_err(|e| Failure::of(&e))?;
            if status.is_success() {
                Ok(body.to_vec())
            } else {
                Err(Failure::Status(status.as_u16()))
            }
        }
        .await;
        Exchange {
            began,
            took: began.elapsed(),
            outcome,
        }
    }
}

struct Exchange {
    began: Instant,
    took: Duration,
    outcome: Result<Vec<u8>, Failure>,
}

impl Exchange {
    fn json<T: DeserializeOwned>(self) -> Result<T, Failure> {
        serde_json::from_slice(&self.outcome?).map_err(|_| Failure::Decode)
    }
}

/// What every device shares.
pub struct Fleet {
    /// `…/device/v1`.
    pub api: String,
    pub pools: Vec<Pool>,
    pub interval: Duration,
    pub long_poll: bool,
    pub stats: Arc<Stats>,
}

/// How far a device got with one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Reported `in_progress`: "executed", never to be started again.
    Started,
    /// Its final report was accepted (or it had already ended).
    Finished,
}

pub struct Device {
    pub id: Uuid,
    secret: String,
    pool: usize,
    token: Option<String>,
    /// When to trade the secret for a fresh token, before this one expires.
    refresh_at: Instant,
    boot_id: String,
    stages: HashMap<Uuid, Stage>,
}

impl Device {
    pub fn new(id: Uuid, secret: String, pool: usize) -> Device {
        Device {
            id,
            secret,
            pool,
            token: None,
            refresh_at: Instant::now(),
            boot_id: Uuid::new_v4().to_string(),
            stages: HashMap::new(),
        }
    }

    /// `POST /auth`; true when the device holds a token.
    pub async fn authenticate(&mut self, fleet: &Fleet) -> bool {
        let req = fleet.pools[self.pool]
            .http
            .post(format!("{}/auth", fleet.api))
            .timeout(REQUEST_TIMEOUT)
            .json(&AuthRequest {
                device_id: self.id,
                secret: self.secret.clone(),
            });
        match fleet.pools[self.pool]
            .call(req)
            .await
            .json::<AuthResponse>()
        {
            Ok(a) => {
                self.token = Some(a.token);
                // Renew before the server refuses it (that would cost a
                // beat), at a random point of the lifetime's second half:
                // a fleet authenticated together must not renew together,
                // each renewal being a query at the sync server.
                self.refresh_at = Instant::now()
                    + Duration::from_secs(a.expires_in).mul_f64(rand::random_range(0.5..0.9));
                true
            }
            Err(f) => {
                fleet.stats.error(Op::Auth, f);
                self.token = None;
                false
            }
        }
    }

    /// Heartbeats until `stop`, working whenever an answer says pending.
    pub async fn run(mut self, fleet: Arc<Fleet>, started: Instant, stop: CancellationToken) {
        // Devices start spread over one interval, as a fleet that has been
        // up for a while is, rather than all at once.
        let mut due = started + fleet.interval.mul_f64(rand::random_range(0.0..1.0));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep_until(due) => {}
            }
            if (self.token.is_none() || Instant::now() >= self.refresh_at)
                && !self.authenticate(&fleet).await
            {
                due = next_polling(due, Instant::now(), fleet.interval, rand::random());
                continue;
            }
            let sent = Instant::now();
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                a = self.heartbeat(&fleet, due) => a,
            };
            due = match answer {
                Ok(a) => {
                    if a.pending {
                        fleet.stats.pending.fetch_add(1, Ordering::Relaxed);
                        // Not cancellable: a report cut in half would leave
                        // the command for the next run to trip over.
                        self.work(&fleet).await;
                    }
                    if fleet.long_poll && a.pending {
                        // As the agent does: the work is done, be held again.
                        (Instant::now()).max(sent + MIN_LONG_POLL_GAP)
                    } else if fleet.long_poll {
                        (Instant::now() + after_answer(a.next_heartbeat_s, rand::random()))
                            .max(sent + MIN_LONG_POLL_GAP)
                    } else {
                        next_polling(due, Instant::now(), fleet.interval, rand::random())
                    }
                }
                Err(Failure::Status(401)) => {
                    // The token expired or was refused: authenticate at once.
                    self.token = None;
                    Instant::now()
                }
                Err(_) => next_polling(due, Instant::now(), fleet.interval, rand::random()),
            };
        }
    }

    async fn heartbeat(&self, fleet: &Fleet, due: Instant) -> Result<HeartbeatResponse, Failure> {
        let wait_s = fleet.long_poll.then_some(fleet.interval.as_secs() as u32);
        let req = fleet.pools[self.pool]
            .http
            .post(format!("{}/heartbeat", fleet.api))
            .bearer_auth(self.token.as_deref().unwrap_or_default())
            .timeout(if fleet.long_poll {
                REQUEST_TIMEOUT.max(fleet.interval + HOLD_MARGIN)
            } else {
                REQUEST_TIMEOUT
            })
            .json(&Heartbeat {
                agent_version: concat!("tend-fleet/", env!("CARGO_PKG_VERSION")).into(),
                boot_id: Some(self.boot_id.clone()),
                uptime_s: None,
                inventory: None,
                components: None,
                wait_s,
            });
        let exchange = fleet.pools[self.pool].call(req).await;
        let (began, took) = (exchange.began, exchange.took);
        match exchange.json::<HeartbeatResponse>() {
            Ok(a) => {
                fleet
                    .stats
                    .heartbeat_ok(took, began.saturating_duration_since(due));
                Ok(a)
            }
            Err(f) => {
                fleet.stats.error(Op::Heartbeat, f);
                Err(f)
            }
        }
    }

    /// Fetches the instructions and reports each: `in_progress` once
    /// (that is the execution), then `succeeded`.
    async fn work(&mut self, fleet: &Fleet) {
        fleet.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let req = fleet.pools[self.pool]
            .http
            .get(format!("{}/instructions", fleet.api))
            .bearer_auth(self.token.as_deref().unwrap_or_default())
            .timeout(REQUEST_TIMEOUT);
        let list = match fleet.pools[self.pool]
            .call(req)
            .await
            .json::<Instructions>()
        {
            Ok(l) => l,
            Err(f) => {
                fleet.stats.error(Op::Fetch, f);
                return;
            }
        };
        for ins in list.instructions {
            fleet.stats.instructions.fetch_add(1, Ordering::Relaxed);
            let stage = match self.stages.get(&ins.id) {
                None => match self.report(fleet, ins.id, ReportStatus::InProgress).await {
                    Ok(()) => {
                        fleet.stats.executions.fetch_add(1, Ordering::Relaxed);
                        Stage::Started
                    }
                    // Ended on the server (timed out, say): nothing to run.
                    Err(Failure::Status(409)) => Stage::Finished,
                    // Not started; the next fetch hands it out again.
                    Err(_) => continue,
                },
                Some(Stage::Finished) => {
                    fleet.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                    Stage::Started
                }
                Some(&s) => s,
            };
            self.stages.insert(ins.id, stage);
            if stage == Stage::Started {
                // A repeat of an accepted final report is accepted again, so
                // a redelivered instruction is settled without running it.
                match self.report(fleet, ins.id, ReportStatus::Succeeded).await {
                    Ok(()) | Err(Failure::Status(409)) => {
                        self.stages.insert(ins.id, Stage::Finished);
                    }
                    Err(_) => continue,
                }
            }
            fleet.stats.finished(ins.id);
        }
    }

    async fn report(&self, fleet: &Fleet, id: Uuid, status: ReportStatus) -> Result<(), Failure> {
        let req = fleet.pools[self.pool]
            .http
            .post(format!("{}/instructions/{id}/report", fleet.api))
            .bearer_auth(self.token.as_deref().unwrap_or_default())
            .timeout(REQUEST_TIMEOUT)
            .json(&Report::status(status));
        match fleet.pools[self.pool].call(req).await.outcome {
            Ok(_) => {
                fleet.stats.reports.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(f) => {
                fleet.stats.error(Op::Report, f);
                Err(f)
            }
        }
    }
}

/// `d` ±10 %, from `r` in [0, 1): devices that beat together drift apart.
pub fn jittered(d: Duration, r: f64) -> Duration {
    d.mul_f64(0.9 + 0.2 * r.clamp(0.0, 1.0))
}

/// The next polling heartbeat: one jittered interval after the one that
/// was due, so the offered rate does not sag when answers are slow (open
/// loop); a beat already late goes out at once, and the lag is recorded.
pub fn next_polling(due: Instant, now: Instant, interval: Duration, r: f64) -> Instant {
    (due + jittered(interval, r)).max(now)
}

/// With long-poll the server says when to come back: 0 is at once, else
/// that many seconds, jittered as the agent does.
pub fn after_answer(next_heartbeat_s: u64, r: f64) -> Duration {
    if next_heartbeat_s == 0 {
        Duration::ZERO
    } else {
        jittered(Duration::from_secs(next_heartbeat_s), r)
    }
}

/// Which pool serves device `i`: devices are dealt round-robin.
pub fn pool_of(i: usize, pools: usize) -> usize {
    i % pools.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = Duration::from_secs(30);
        assert_eq!(jittered(d, 0.0), Duration::from_secs(27));
        assert_eq!(jittered(d, 1.0), Duration::from_secs(33));
        for _ in 0..10_000 {
            let j = jittered(d, rand::random());
            assert!(j >= Duration::from_secs(27) && j <= Duration::from_secs(33));
        }
        assert_eq!(jittered(d, 7.0), Duration::from_secs(33));
    }

    #[test]
    fn polling_keeps_its_cadence_but_never_schedules_in_the_past() {
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        // On time: one jittered interval after the beat that was due.
        assert_eq!(
            next_polling(t0, t0 + Duration::from_millis(5), i, 0.5),
            t0 + i
        );
        // Late by more than an interval: at once, no burst to catch up.
        let late = t0 + Duration::from_secs(25);
        assert_eq!(next_polling(t0, late, i, 0.5), late);
    }

    #[test]
    fn long_poll_follows_the_server() {
        assert_eq!(after_answer(0, 0.9), Duration::ZERO);
        let d = after_answer(20, rand::random());
        assert!(d >= Duration::from_secs(18) && d <= Duration::from_secs(22));
    }

    #[test]
    fn devices_are_dealt_evenly_over_the_pools() {
        let mut counts = [0; 3];
        for i in 0..3000 {
            counts[pool_of(i, 3)] += 1;
        }
        assert_eq!(counts, [1000; 3]);
        assert_eq!(pool_of(5, 0), 0);
    }
}
