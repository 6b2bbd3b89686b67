//! Which devices have work pending, and the heartbeats waiting to hear it.
//!
//! The board lives in each replica's memory, so a heartbeat answers without
//! a round trip to anything. It learns of work from the `command.queued`
//! events every replica receives (the exchange is a fanout), from
//! PostgreSQL at startup and after a lost broker connection, and from the
//! fetches and reports it serves. A flag another replica already cleared
//! costs the device one empty fetch; a flag this replica never saw (a lost
//! event) is set again by the monitor's re-announcement within two
//! heartbeat intervals.
//!
//! A long-polling heartbeat registers a waiter and is woken the moment its
//! device is marked. Memory per waiting device: one map entry and one
//! `Notify`, besides the held request itself; the number of waiters is
//! capped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The most heartbeats held at once per replica. Beyond it a heartbeat is
/// answered at once, as plain polling: it costs a request, never a command.
pub const MAX_WAITERS: usize = 200_000;

#[derive(Default)]
pub struct Board {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    pending: HashSet<Uuid>,
    waiters: HashMap<Uuid, Arc<Notify>>,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the sets half
        // updated (each operation is one insert or remove): keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The device has work: flag it and wake its held heartbeat, if any.
    pub fn mark(&self, device: Uuid) {
        let waiter = {
            let mut inner = self.lock();
            inner.pending.insert(device);
            inner.waiters.get(&device).cloned()
        };
        if let Some(w) = waiter {
            w.notify_waiters();
        }
    }

    /// Marks every device of a list (the open commands read at startup, a
    /// batch's `commands.queued`) under one lock: ten thousand devices
    /// cost one acquisition, not ten thousand, and the waiters are woken
    /// after it is released.
    pub fn mark_all(&self, devices: impl IntoIterator<Item = Uuid>) {
        let waiters: Vec<Arc<Notify>> = {
            let mut inner = self.lock();
            devices
                .into_iter()
                .filter_map(|d| {
                    inner.pending.insert(d);
                    inner.waiters.get(&d).cloned()
                })
                .collect()
        };
        for w in waiters {
            w.notify_waiters();
        }
    }

    pub fn clear(&self, device: Uuid) {
        self.lock().pending.remove(&device);
    }

    pub fn is_pending(&self, device: Uuid) -> bool {
        self.lock().pending.contains(&device)
    }

    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    #[cfg(test)]
    fn waiting_count(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Holds until the device is marked, `wait` passes or `stop` is
    /// cancelled (a draining server lets its waiters go). Answers whether
    /// the device has work.
    pub async fn wait(&self, device: Uuid, wait: Duration, stop: &CancellationToken) -> bool {
        let notify = {
            let mut inner = self.lock();
            if inner.pending.contains(&device) {
                return true;
            }
            if inner.waiters.len() >= MAX_WAITERS && !inner.waiters.contains_key(&device) {
                return false;
            }
            inner.waiters.entry(device).or_default().clone()
        };
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Marked between the check above and `enable`: the wake-up was
        // sent before we listened, but the flag is there.
        if !self.is_pending(device) {
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
        }
        let mut inner = self.lock();
        // Two strong references: the map's and ours. More means another
        // request of the same device still waits on it.
        if Arc::strong_count(&notify) <= 2 {
            inner.waiters.remove(&device);
        }
        inner.pending.contains(&device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_held_heartbeat_is_answered_the_moment_its_device_is_marked() {
        let board = Arc::new(Board::default());
        let device = Uuid::new_v4();
        let stop = CancellationToken::new();
        let waiting = {
            let (board, stop) = (board.clone(), stop.clone());
            tokio::spawn(async move { board.wait(device, Duration::from_secs(30), &stop).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(board.waiting_count(), 1);
        let marked_at = tokio::time::Instant::now();
        board.mark(device);
        assert!(waiting.await.unwrap());
        assert_eq!(
            tokio::time::Instant::now(),
            marked_at,
            "no delay after the mark"
        );
        assert_eq!(board.waiting_count(), 0, "the waiter is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_heartbeat_ends_after_its_wait_or_at_shutdown() {
        let board = Board::default();
        let device = Uuid::new_v4();
        let stop = CancellationToken::new();
        let start = tokio::time::Instant::now();
        assert!(!board.wait(device, Duration::from_secs(5), &stop).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        stop.cancel();
        let start = tokio::time::Instant::now();
        assert!(!board.wait(device, Duration::from_secs(5), &stop).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(board.waiting_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_device_is_answered_at_once_and_others_are_not_woken() {
        let board = Arc::new(Board::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let stop = CancellationToken::new();
        board.mark(a);
        assert!(board.wait(a, Duration::from_secs(30), &stop).await);

        let waiting = {
            let (board, stop) = (board.clone(), stop.clone());
            tokio::spawn(async move { board.wait(b, Duration::from_secs(3), &stop).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        board.mark(a);
        assert!(!waiting.await.unwrap(), "b had no work");
        board.clear(a);
        assert!(!board.is_pending(a));
    }

    #[tokio::test(start_paused = true)]
    async fn two_requests_of_one_device_share_a_waiter_until_both_end() {
        let board = Arc::new(Board::default());
        let device = Uuid::new_v4();
        let stop = CancellationToken::new();
        let spawn = |secs| {
            let (board, stop) = (board.clone(), stop.clone());
            tokio::spawn(async move { board.wait(device, Duration::from_secs(secs), &stop).await })
        };
        let short = spawn(1);
        let long = spawn(10);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!short.await.unwrap());
        assert_eq!(board.waiting_count(), 1, "the longer request still waits");
        board.mark(device);
        assert!(long.await.unwrap());
        assert_eq!(board.waiting_count(), 0);
    }
}
