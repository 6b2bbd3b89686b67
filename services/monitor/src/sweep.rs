//! The periodic sweeps: commands past their deadlines, commands still
//! waiting to be announced again, the outbox gauges, and audit rows past
//! their retention.
//!
//! The sweeps lock their rows with `SKIP LOCKED`, so every replica runs
//! them every tick without doing the same work twice. Presence has a loop
//! of its own ([`crate::presence`]), so that a slow Redis never delays a
//! command's deadline.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tend_core::db::commands::{self, SWEEP_BATCH};
use tend_core::db::{self, Pool, audit, devices, outbox};
use tokio_util::sync::CancellationToken;

use crate::relay::AmqpStatus;
use tend_core::retry::{Outage, ticker};

/// How many heartbeat intervals a command may wait for its device before it
/// is announced again: by then a device that got the first announcement has
/// heartbeated and fetched it, so one still waiting likely missed it (a lost
/// message, a flushed Redis).
const REANNOUNCE_AFTER_BEATS: u32 = 2;

/// How often the fleet gauges (`tend_commands`, `tend_devices`) are
/// recounted: they scan the devices table, and a scrape every 15 to 60
/// seconds gains nothing from fresher counts.
const FLEET_GAUGES_EVERY: Duration = Duration::from_secs(15);

/// Audit rows deleted per transaction: small enough that a year of backlog
/// never holds locks for long.
const AUDIT_SWEEP_BATCH: i64 = 1000;

pub(crate) struct Sweeper {
    pool: Pool,
    interval: Duration,
    reannounce_after: Duration,
    /// The relay's broker connection: re-announcing waits while it is down.
    amqp: AmqpStatus,
    commands_outage: Outage,
    backlog_outage: Outage,
    audit_outage: Outage,
    /// When the fleet gauges were last counted.
    fleet_gauges_at: Option<std::time::Instant>,
}

impl Sweeper {
    pub(crate) fn new(
        pool: Pool,
        interval: Duration,
        heartbeat: Duration,
        amqp: AmqpStatus,
    ) -> Self {
        Sweeper {
            pool,
            interval,
            reannounce_after: heartbeat * REANNOUNCE_AFTER_BEATS,
            amqp,
            commands_outage: Outage::new("command sweeps"),
            backlog_outage: Outage::new("outbox backlog and fleet gauges"),
            audit_outage: Outage::new("audit retention sweep"),
            fleet_gauges_at: None,
        }
    }

    /// Sweeps every interval until `token` is cancelled; a sweep under way
    /// then is finished first.
    pub(crate) async fn run(mut self, token: CancellationToken) {
        let mut tick = ticker(self.interval);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.sweep().await;
        }
    }

    /// One sweep. Each part fails on its own: the gauges are updated even
    /// when a sweep statement failed.
    async fn sweep(&mut self) {
        match self.sweep_commands().await {
            Ok(()) => self.commands_outage.recovered(),
            Err(e) => self.commands_outage.failed(&e),
        };
        match self.update_backlog().await {
            Ok(()) => self.backlog_outage.recovered(),
            Err(e) => self.backlog_outage.failed(&e),
        };
        match self.sweep_audit().await {
            Ok(()) => self.audit_outage.recovered(),
            Err(e) => self.audit_outage.failed(&e),
        };
    }

    /// Deletes audit rows past the retention period the database holds
    /// (set from `TEND_AUDIT_RETENTION_DAYS` at start). One replica at a
    /// time: the others find the advisory lock taken and skip their turn.
    async fn sweep_audit(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.context("audit: PostgreSQL pool")?;
        let mut total = 0;
        loop {
            let n = audit::sweep(&mut client, AUDIT_SWEEP_BATCH)
                .await
                .context("audit: deleting expired rows")?;
            total += n;
            if n < AUDIT_SWEEP_BATCH as u64 {
                break;
            }
        }
        if total > 0 {
            tracing::info!(
                count = total,
                "{total} audit rows past their retention deleted"
            );
        }
        Ok(())
    }

    async fn sweep_commands(&self) -> anyhow::Result<()> {
        let client = self.pool.get().await.context("sweep: PostgreSQL pool")?;
        let c = &client;

        let expired = drain(|| commands::expire_due(c))
            .await
            .context("sweep: expiring commands")?;
        metrics::counter!("tend_commands_expired_total").increment(expired);
        if expired > 0 {
            tracing::info!(count = expired, "{expired} queued commands expired");
        }

        let timed_out = drain(|| commands::time_out_due(c))
            .await
            .context("sweep: timing out commands")?;
        metrics::counter!("tend_commands_timed_out_total").increment(timed_out);
        if timed_out > 0 {
            tracing::info!(count = timed_out, "{timed_out} commands timed out");
        }

        // A re-announcement is an outbox row the relay publishes. While this
        // replica's relay has no broker it could only pile up there and
        // burst out as duplicates later, and it would help nobody: sync
        // servers cut off from RabbitMQ read the open commands from
        // PostgreSQL, and read them again when they reconnect. The
        // commands keep their old `announced_at`, so they are announced
        // again in the first sweep after the broker is back.
        if let Err(why) = self.amqp.check() {
            tracing::debug!("not re-announcing waiting commands: RabbitMQ {why}");
            return Ok(());
        }
        let older_than_s = self.reannounce_after.as_secs_f64();
        let reannounced = drain(|| commands::reannounce_due(c, older_than_s))
            .await
            .context("sweep: re-announcing waiting commands")?;
        metrics::counter!("tend_commands_reannounced_total").increment(reannounced);
        if reannounced > 0 {
            tracing::info!(
                count = reannounced,
                "{reannounced} waiting commands announced again"
            );
        }
        Ok(())
    }

    async fn update_backlog(&mut self) -> anyhow::Result<()> {
        let client = self.pool.get().await.context("backlog: PostgreSQL pool")?;
        let (count, oldest_age_s) = outbox::backlog(&client)
            .await
            .context("backlog: reading the outbox")?;
        metrics::gauge!("tend_outbox_backlog").set(count as f64);
        metrics::gauge!("tend_outbox_oldest_age_seconds").set(oldest_age_s);

        // Fleet gauges count rows, so they are refreshed less often than
        // the sweep runs.
        let now = std::time::Instant::now();
        if self
            .fleet_gauges_at
            .is_some_and(|at| now.duration_since(at) < FLEET_GAUGES_EVERY)
        {
            return Ok(());
        }
        self.fleet_gauges_at = Some(now);
        let open = commands::open_counts(&client)
            .await
            .context("gauges: counting open commands")?;
        for status in ["queued", "delivered", "in_progress"] {
            for kind in tend_proto::CommandKind::ALL {
                let n = open
                    .iter()
                    .find(|(k, s, _)| k == kind.as_str() && s == status)
                    .map_or(0, |(_, _, n)| *n);
                metrics::gauge!("tend_commands", "kind" => kind.as_str(), "status" => status)
                    .set(n as f64);
            }
        }
        let fleet = devices::count_by_status(&client)
            .await
            .context("gauges: counting devices")?;
        for status in ["online", "offline", "unknown"] {
            let n = fleet
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            metrics::gauge!("tend_devices", "status" => status).set(n as f64);
        }
        Ok(())
    }
}

/// Runs one sweep statement until it touches less than a full batch, so a
/// backlog is worked off in bounded transactions within one sweep.
async fn drain<F, Fut>(mut statement: F) -> db::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = db::Result<u64>>,
{
    let mut total = 0;
    loop {
        let n = statement().await?;
        total += n;
        if n < SWEEP_BATCH.unsigned_abs() {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn a_sweep_statement_repeats_while_it_fills_whole_batches() {
        let full = SWEEP_BATCH.unsigned_abs();
        let answers = [full, full, 7, full];
        let calls = AtomicU64::new(0);
        let total = drain(|| {
            let i = calls.fetch_add(1, Ordering::SeqCst) as usize;
            async move { Ok(answers[i]) }
        })
        .await
        .unwrap();
        assert_eq!(total, 2 * full + 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
