//! Pending flags from PostgreSQL while RabbitMQ is away.
//!
//! The board learns of new commands from `command.queued` events. While
//! this replica's consumer is not connected (the broker is down, stalled or
//! unreachable, or the consumer is reconnecting), no event arrives, and the
//! monitor's re-announcements travel the same way. So the replica reads the
//! devices with open commands from PostgreSQL every [`every`] and marks
//! them, which wakes their held heartbeats: a command still reaches its
//! device within about a heartbeat interval, without the broker.
//!
//! The read is one index-only scan of the partial index on open commands
//! (`commands_open_idx`): milliseconds for tens of thousands of waiting
//! commands. It stops as soon as the consumer is connected again; the
//! reconnection reads the same list once more, so nothing queued in between
//! is missed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tend_core::db::{self, Pool};
use tend_core::retry::{Outage, ticker_from};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::board::Board;

/// How often to read PostgreSQL while the consumer is away: every second,
/// or every half heartbeat interval if that is shorter, so that a command
/// queued during the outage is seen well within one interval.
pub fn every(heartbeat: Duration) -> Duration {
    (heartbeat / 2).min(Duration::from_secs(1))
}

/// Polls PostgreSQL while `connected` is false, until `stop` is cancelled.
///
/// The first look comes one period after the start, so that a consumer
/// still connecting at startup (the board was just loaded) does not count
/// as an outage.
pub async fn poll_while_disconnected(
    board: Arc<Board>,
    pool: Pool,
    connected: Arc<AtomicBool>,
    every: Duration,
    stop: CancellationToken,
) {
    // Shown from the start, so that dashboards and alerts see them at zero
    // before the first outage.
    metrics::gauge!("tend_sync_fallback_active").set(0.0);
    metrics::counter!("tend_sync_fallback_polls_total").increment(0);
    // Bounded by the request deadline: a stalled database must not hold
    // the loop, which has to notice the consumer coming back.
    let read = || crate::events::devices_with_open_commands(&pool);
    run(&board, &connected, every, &stop, read).await;
}

/// The loop, with the read passed in so that tests can stand in for
/// PostgreSQL.
async fn run<F, Fut>(
    board: &Board,
    connected: &AtomicBool,
    every: Duration,
    stop: &CancellationToken,
    read: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = db::Result<Vec<Uuid>>>,
{
    let mut fallback = Fallback::default();
    let mut tick = ticker_from(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if connected.load(Ordering::Relaxed) {
            fallback.leave();
            continue;
        }
        fallback.enter(every);
        fallback.polled(board, read().await);
    }
}

/// Whether the replica is in fallback, so that entering and leaving it are
/// logged once each, and a failing read once per failure run.
struct Fallback {
    active: bool,
    read: Outage,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback {
            active: false,
            read: Outage::new("fallback read of pending work from PostgreSQL"),
        }
    }
}

impl Fallback {
    fn enter(&mut self, every: Duration) {
        if !self.active {
            self.active = true;
            tracing::warn!(
                interval_ms = every.as_millis() as u64,
                "not consuming events from RabbitMQ: reading the devices with work pending \
                 from PostgreSQL every {} ms until the consumer is back",
                every.as_millis()
            );
            metrics::gauge!("tend_sync_fallback_active").set(1.0);
        }
    }

    fn leave(&mut self) {
        if self.active {
            self.active = false;
            tracing::info!("consuming events again: stopped reading pending work from PostgreSQL");
            metrics::gauge!("tend_sync_fallback_active").set(0.0);
        }
    }

    /// Marks what one read found.
    fn polled(&mut self, board: &Board, read: db::Result<Vec<Uuid>>) {
        metrics::counter!("tend_sync_fallback_polls_total").increment(1);
        match read {
            Ok(devices) => {
                self.read.recovered();
                board.mark_all(devices);
            }
            Err(e) => {
                metrics::counter!("tend_backing_store_errors_total", "store" => "postgres")
                    .increment(1);
                self.read.failed(format_args!(
                    "{e}; heartbeats answer from what this replica knows"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn the_poll_runs_every_second_or_twice_per_heartbeat_interval() {
        assert_eq!(every(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(every(Duration::from_secs(1)), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_marks_the_devices_it_read_and_wakes_their_held_heartbeats() {
        let board = Arc::new(Board::default());
        let (waiting, other) = (Uuid::new_v4(), Uuid::new_v4());
        let stop = CancellationToken::new();
        let held = {
            let (board, stop) = (board.clone(), stop.clone());
            tokio::spawn(async move { board.wait(waiting, Duration::from_secs(30), &stop).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;

        let mut fallback = Fallback::default();
        fallback.enter(Duration::from_secs(1));
        fallback.polled(&board, Ok(vec![waiting, other]));
        assert!(held.await.unwrap(), "the held heartbeat learns of its work");
        assert!(board.is_pending(other));
    }

    #[test]
    fn a_failed_poll_changes_nothing_and_the_next_one_marks_again() {
        let board = Board::default();
        let device = Uuid::new_v4();
        let mut fallback = Fallback::default();
        fallback.enter(Duration::from_secs(1));
        fallback.polled(&board, Err(db::DbError::Timeout(db::REQUEST_DEADLINE)));
        assert!(fallback.read.is_down());
        assert_eq!(board.pending_count(), 0);
        fallback.polled(&board, Ok(vec![device]));
        assert!(!fallback.read.is_down());
        assert!(board.is_pending(device));
        fallback.leave();
        assert!(!fallback.active);
    }

    #[tokio::test(start_paused = true)]
    async fn postgres_is_read_only_while_the_consumer_is_away() {
        let board = Arc::new(Board::default());
        let connected = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let reads = Arc::new(AtomicUsize::new(0));
        let device = Uuid::new_v4();
        let every = Duration::from_millis(500);
        let poller = {
            let (board, connected, stop, reads) = (
                board.clone(),
                connected.clone(),
                stop.clone(),
                reads.clone(),
            );
            tokio::spawn(async move {
                let read = || {
                    reads.fetch_add(1, Ordering::SeqCst);
                    async move { Ok(vec![device]) }
                };
                run(&board, &connected, every, &stop, read).await;
            })
        };

        // Between ticks (every 500 ms from 500 ms on), so that no tick
        // races a change of `connected`.
        tokio::time::sleep(Duration::from_millis(3250)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 0, "consuming: no reads");
        assert!(!board.is_pending(device));

        connected.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read within a period");
        assert!(board.is_pending(device));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 3);

        connected.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            reads.load(Ordering::SeqCst),
            3,
            "consuming again: reads stop"
        );

        stop.cancel();
        poller.await.unwrap();
    }
}
