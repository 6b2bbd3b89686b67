//! Heartbeats buffered in memory and written to Redis in batches.
//!
//! A heartbeat only records its device's latest beat in a map; a flusher
//! writes the map to Redis every [`FLUSH_EVERY`] in one round trip. The
//! monitor reads presence back a sweep later and re-reads the last two
//! seconds each time, so a beat written up to half a second after it was
//! stamped is never missed. Memory is one entry per device heard since the
//! last flush. A failed flush is dropped, not retried: every device
//! heartbeats again within one interval, which rebuilds it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tend_core::live::Live;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often buffered heartbeats are written. Well inside the monitor's
/// two-second re-read, and short enough that a replica killed without a
/// drain loses at most half a second of presence.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct Presence {
    buffer: Mutex<HashMap<Uuid, (i64, String)>>,
}

impl Presence {
    /// Keeps the device's latest beat until the next flush.
    pub fn record(&self, device: Uuid, at_ms: i64, reported: String) {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device, (at_ms, reported));
    }

    fn take(&self) -> Vec<(Uuid, i64, String)> {
        let taken =
            std::mem::take(&mut *self.buffer.lock().unwrap_or_else(PoisonError::into_inner));
        taken
            .into_iter()
            .map(|(id, (at, reported))| (id, at, reported))
            .collect()
    }

    /// Writes what was buffered; returns how many devices.
    pub async fn flush(&self, live: &Live) -> usize {
        let beats = self.take();
        if beats.is_empty() {
            return 0;
        }
        let started = Instant::now();
        match live.record_beats(&beats).await {
            Ok(()) => {
                metrics::histogram!("tend_sync_presence_flush_seconds")
                    .record(started.elapsed().as_secs_f64());
                beats.len()
            }
            Err(e) => {
                metrics::counter!("tend_backing_store_errors_total", "store" => "redis")
                    .increment(1);
                tracing::warn!(
                    count = beats.len(),
                    "dropped {} heartbeats: Redis did not take them: {e}",
                    beats.len()
                );
                0
            }
        }
    }
}

/// Flushes every [`FLUSH_EVERY`] until cancelled, then once more. Each
/// tick also publishes how many devices the board holds as pending.
pub async fn keep_flushing(
    presence: std::sync::Arc<Presence>,
    board: std::sync::Arc<crate::board::Board>,
    live: Live,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        presence.flush(&live).await;
        metrics::gauge!("tend_sync_pending_devices").set(board.pending_count() as f64);
    }
    presence.flush(&live).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_beat_of_a_device_is_kept_until_the_flush() {
        let p = Presence::default();
        let d = Uuid::new_v4();
        p.record(d, 1, "old".into());
        p.record(d, 2, "new".into());
        p.record(Uuid::new_v4(), 3, "other".into());
        let mut taken = p.take();
        taken.sort_by_key(|(_, at, _)| *at);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0], (d, 2, "new".to_owned()));
        assert!(p.take().is_empty(), "a flush empties the buffer");
    }
}
