//! Heartbeats buffered in memory and written to Redis in batches.
//!
//! A heartbeat only records its device's latest beat in a map; a flusher
//! writes the map to Redis every [`FLUSH_EVERY`] in one round trip. The
//! monitor reads presence back a sweep later and re-reads the last two
//! seconds each time, so a beat written up to half a second after it was
//! stamped is never missed. Memory is one entry per device heard since the
//! last flush.
//!
//! While Redis is down (or restarting) a failed flush goes back into the
//! buffer, where a newer beat of the same device replaces it: the buffer
//! keeps the latest beat of every device heard during the outage, bounded
//! by [`MAX_BUFFERED`], and writes them all once Redis answers again,
//! moving the presence epoch in the same transaction so that no monitor
//! counts the outage as silence (a monitor may reconnect to Redis before
//! this replica does). The heartbeat itself never waits on Redis, so
//! devices keep being answered and keep getting their pending flags
//! throughout.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tend_core::live::Live;
use tend_core::retry::{Outage, ticker};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often buffered heartbeats are written. Well inside the monitor's
/// two-second re-read, and short enough that a replica killed without a
/// drain loses at most half a second of presence.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// The most devices whose beat the buffer holds. It holds one entry per
/// device, so outside an outage it stays far below this (the devices heard
/// in half a second). In a long Redis outage it grows to the fleet this
/// replica serves; the cap keeps a replica serving more than that within
/// its memory (an entry is what the device reported, a few hundred bytes
/// and at most 16 KiB). Past it, a device not yet buffered is dropped until
/// Redis is back: it is heard again at its next heartbeat after that, and
/// the monitor waits a whole offline window after an outage before it
/// counts silence.
pub const MAX_BUFFERED: usize = 200_000;

/// The latest beat of each device: when (ms) and what it reported.
type Beats = HashMap<Uuid, (i64, String)>;

pub struct Presence {
    buffer: Mutex<Beats>,
    /// Whether the last flush failed, so that an outage is logged when it
    /// starts and when it ends, not at every flush.
    redis: Outage,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            buffer: Mutex::default(),
            redis: Outage::new("presence flush to Redis"),
        }
    }
}

impl Presence {
    /// Keeps the device's latest beat until the next flush.
    pub fn record(&self, device: Uuid, at_ms: i64, reported: String) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let full = buffer.len() >= MAX_BUFFERED;
        match buffer.entry(device) {
            Entry::Occupied(mut e) => {
                e.insert((at_ms, reported));
            }
            Entry::Vacant(e) if !full => {
                e.insert((at_ms, reported));
            }
            Entry::Vacant(_) => {
                metrics::counter!("tend_sync_presence_dropped_total").increment(1);
            }
        }
    }

    /// Puts back the beats of a failed flush, unless a newer beat of the
    /// same device arrived meanwhile. The failed batch becomes the buffer
    /// again and the beats heard while it was in flight go on top, so the
    /// lock is held for those few, not for the whole fleet.
    fn restore(&self, failed: Beats) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let newer = std::mem::replace(&mut *buffer, failed);
        let mut dropped = 0;
        for (device, (at_ms, reported)) in newer {
            let full = buffer.len() >= MAX_BUFFERED;
            match buffer.entry(device) {
                Entry::Occupied(mut e) => {
                    if e.get().0 <= at_ms {
                        e.insert((at_ms, reported));
                    }
                }
                Entry::Vacant(e) if !full => {
                    e.insert((at_ms, reported));
                }
                Entry::Vacant(_) => dropped += 1,
            }
        }
        if dropped > 0 {
            metrics::counter!("tend_sync_presence_dropped_total").increment(dropped);
        }
    }

    fn buffered(&self) -> usize {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn take(&self) -> Beats {
        std::mem::take(&mut *self.buffer.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Writes what was buffered; returns how many devices. What Redis
    /// does not take stays buffered for the next flush.
    pub async fn flush(&self, live: &Live) -> usize {
        let beats = self.take();
        // After an outage the first write also tells the monitors that
        // beats may be missing until now, even if none is buffered (the
        // cap dropped some, or a replica restarted meanwhile).
        let after_outage = self
            .redis
            .is_down()
            .then(|| chrono::Utc::now().timestamp_millis());
        if beats.is_empty() && after_outage.is_none() {
            return 0;
        }
        let started = Instant::now();
        let count = beats.len();
        let batch: Vec<(Uuid, i64, &str)> = beats
            .iter()
            .map(|(id, (at_ms, reported))| (*id, *at_ms, reported.as_str()))
            .collect();
        let written = live.record_beats(&batch, after_outage).await;
        drop(batch);
        match written {
            Ok(()) => {
                metrics::histogram!("tend_sync_presence_flush_seconds")
                    .record(started.elapsed().as_secs_f64());
                if self.redis.recovered() {
                    tracing::info!(
                        count,
                        "wrote the latest beat of {count} devices kept meanwhile"
                    );
                }
                count
            }
            Err(e) => {
                metrics::counter!("tend_backing_store_errors_total", "store" => "redis")
                    .increment(1);
                self.restore(beats);
                self.redis.failed(format_args!(
                    "{count} heartbeats not written: {e}; keeping the latest beat of each \
                     device (at most {MAX_BUFFERED}) until Redis takes them"
                ));
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
    let mut tick = ticker(FLUSH_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        presence.flush(&live).await;
        metrics::gauge!("tend_sync_pending_devices").set(board.pending_count() as f64);
        metrics::gauge!("tend_sync_presence_buffered").set(presence.buffered() as f64);
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
        let taken = p.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[&d], (2, "new".to_owned()));
        assert!(p.take().is_empty(), "a flush empties the buffer");
    }

    #[test]
    fn beats_of_a_failed_flush_come_back_unless_a_newer_one_arrived() {
        let p = Presence::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        p.record(a, 1, "a1".into());
        p.record(b, 1, "b1".into());
        let failed = p.take();
        // Heard again while the flush was failing.
        p.record(a, 2, "a2".into());
        p.restore(failed);
        let kept = p.take();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[&a], (2, "a2".to_owned()));
        assert_eq!(kept[&b], (1, "b1".to_owned()));
    }

    #[test]
    fn a_full_buffer_keeps_updating_its_devices_but_takes_no_new_ones() {
        let p = Presence::default();
        {
            let mut buffer = p.buffer.lock().unwrap();
            for i in 0..MAX_BUFFERED {
                buffer.insert(Uuid::from_u128(i as u128), (1, String::new()));
            }
        }
        let known = Uuid::from_u128(7);
        p.record(known, 2, "newer".into());
        p.record(Uuid::new_v4(), 2, "new device".into());
        assert_eq!(p.buffered(), MAX_BUFFERED);
        assert_eq!(p.buffer.lock().unwrap()[&known], (2, "newer".to_owned()));

        // A full batch failed while a new device and a known one were heard.
        let failed = p.take();
        p.record(known, 3, "newest".into());
        p.record(Uuid::new_v4(), 3, "another new device".into());
        p.restore(failed);
        assert_eq!(p.buffered(), MAX_BUFFERED);
        assert_eq!(p.buffer.lock().unwrap()[&known], (3, "newest".to_owned()));
    }
}
