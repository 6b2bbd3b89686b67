//! The latest heartbeat of the devices an answer shows, read from Redis.
//!
//! The monitor refreshes a device row's `last_seen_at` only once per
//! `TEND_PRESENCE_REFRESH_S` while nothing else about the device changes,
//! so that a steady fleet costs PostgreSQL almost nothing; Redis holds the
//! exact latest heartbeat and what came with it (the uptime, for one).
//! Device answers take those from Redis, one round trip per answer. While
//! Redis is away or slow the rows' own values are shown: at most one
//! refresh period old, never wrong about the status.

use std::sync::OnceLock;
use std::time::Duration;

use tend_core::db::devices::Device;
use tend_core::live::Live;
use tend_core::retry::Outage;
use tend_core::tls::RedisTls;
use tokio_util::sync::CancellationToken;

/// How long an answer waits for Redis before it shows the rows as they are.
const REDIS_WAIT: Duration = Duration::from_millis(250);

pub(crate) struct LatestBeats {
    live: OnceLock<Live>,
    outage: Outage,
}

impl Default for LatestBeats {
    fn default() -> Self {
        LatestBeats {
            live: OnceLock::new(),
            outage: Outage::new("latest heartbeats from Redis"),
        }
    }
}

impl LatestBeats {
    /// Connects to Redis, retrying until it answers or `stop` is
    /// cancelled. Answers do not wait for it.
    pub async fn connect(
        &self,
        url: &str,
        tls: &RedisTls,
        instance: &str,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                live = Live::connect(url, tls, instance) => match live {
                    Ok(live) => {
                        let _ = self.live.set(live);
                        return;
                    }
                    Err(e) => {
                        self.outage.failed(format_args!(
                            "{e:#}; devices are shown with the last_seen_at of their rows"
                        ));
                    }
                },
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
        }
    }

    /// Puts each device's latest heartbeat, where Redis holds a newer one
    /// than its row: `last_seen_at` and what the device reported.
    pub async fn apply(&self, devices: &mut [Device]) {
        let Some(live) = self.live.get() else { return };
        if devices.is_empty() {
            return;
        }
        let ids: Vec<uuid::Uuid> = devices.iter().map(|d| d.id).collect();
        let beats = match tokio::time::timeout(REDIS_WAIT, live.latest(&ids)).await {
            Ok(Ok(beats)) => {
                self.outage.recovered();
                beats
            }
            Ok(Err(e)) => {
                self.outage
                    .failed(format_args!("{e}; showing the rows as they are"));
                return;
            }
            Err(_) => {
                self.outage.failed(format_args!(
                    "no answer within {} ms; showing the rows as they are",
                    REDIS_WAIT.as_millis()
                ));
                return;
            }
        };
        for (device, beat) in devices.iter_mut().zip(beats) {
            let Some(beat) = beat else { continue };
            let Some(at) = chrono::DateTime::from_timestamp_millis(beat.at_ms) else {
                continue;
            };
            if device.last_seen_at.is_some_and(|seen| seen >= at) {
                continue;
            }
            device.last_seen_at = Some(at);
            if let Some(reported) = beat
                .reported
                .as_deref()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                .filter(serde_json::Value::is_object)
            {
                device.reported = reported;
            }
        }
    }
}
