//! The RabbitMQ consumer: every replica binds a queue of its own to the
//! installation's fanout exchange and turns events into hot-path state.
//!
//! - `command.queued`: the device is marked pending on the [`Board`], which
//!   wakes its held heartbeat;
//! - `commands.queued`: the same for every device the message names (a
//!   batch's, or the monitor's re-announcements);
//! - `device.decommissioned`: the device is revoked here at once and its
//!   presence dropped from Redis.
//!
//! Each (re)connection also reads the devices with open commands from
//! PostgreSQL: events sent while this replica was not listening are lost.
//! While it is not connected, [`crate::fallback`] reads them periodically.
//!
//! Events are hints: a lost one costs the time until the monitor announces
//! the command again, never the command.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use chrono::Utc;
use futures_util::StreamExt;
use tend_core::amqp::{self, lapin};
use tend_core::db;
use tend_core::live::Live;
use tend_core::retry::{Backoff, Outage, sleep_unless_cancelled};
use tend_proto::event::Event;
use tokio_util::sync::CancellationToken;

use crate::Revocations;
use crate::board::Board;

pub struct Consumer {
    pub url: String,
    pub tls: tend_core::tls::AmqpTls,
    pub instance: String,
    pub live: Live,
    pub pool: tend_core::db::Pool,
    pub board: Arc<Board>,
    pub revocations: Arc<Revocations>,
    pub connected: Arc<AtomicBool>,
}

/// Consumes until cancelled, reconnecting with backoff when the broker goes
/// away. `first` is the connection made at startup, if still fresh.
pub async fn consume(c: Consumer, first: Option<lapin::Connection>, stop: CancellationToken) {
    let mut conn = first;
    let mut backoff = Backoff::service();
    let outage = Outage::new("RabbitMQ event consumer");
    loop {
        let attempt = async {
            let connection = match conn.take() {
                Some(c) => c,
                // A broker that stalls holds a connection attempt for
                // seconds; a stopping replica does not wait for it.
                None => tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    c = amqp::connect(&c.url, &c.tls, "tend-sync") => c?,
                },
            };
            run_once(&c, &connection, &stop, &outage).await
        };
        match attempt.await {
            Ok(()) => return,
            Err(e) => {
                // A connection that got as far as consuming was a success:
                // the next outage starts again from the shortest wait.
                if c.connected.swap(false, Ordering::Relaxed) {
                    backoff.reset();
                }
                outage.failed(&e);
            }
        }
        if !sleep_unless_cancelled(backoff.next_delay(), &stop).await {
            return;
        }
    }
}

/// One connection's life: declare, bind, consume. Returns Ok when stopped.
async fn run_once(
    c: &Consumer,
    connection: &lapin::Connection,
    stop: &CancellationToken,
    outage: &Outage,
) -> anyhow::Result<()> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;

    let channel = connection.create_channel().await?;
    amqp::declare_exchange(&channel, &c.instance).await?;
    // A queue per replica, gone with its connection: events are hints for
    // the replica that is alive now, and nothing waits in a dead one.
    let queue = format!("{}.sync.{}", c.instance, uuid::Uuid::new_v4());
    channel
        .queue_declare(
            queue.clone().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the replica's queue")?;
    channel
        .queue_bind(
            queue.clone().into(),
            amqp::exchange(&c.instance).into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the replica's queue")?;
    let mut deliveries = channel
        .basic_consume(
            queue.clone().into(),
            "tend-sync".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("consuming")?;
    c.connected.store(true, Ordering::Relaxed);
    outage.recovered();
    tracing::info!(queue, "consuming events");
    // Bound before this read: an event for a command queued from now on
    // reaches the queue, and one queued before is in the table.
    if let Err(e) = load_pending(&c.board, &c.pool).await {
        tracing::warn!(
            "cannot read the devices with work pending: {e}; the monitor's re-announcements will tell"
        );
    }

    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => {
                let _ = channel.close(200, "shutting down".into()).await;
                return Ok(());
            }
            d = deliveries.next() => d,
        };
        match delivery {
            Some(Ok(d)) => handle(c, &d.data),
            Some(Err(e)) => return Err(e).context("receiving"),
            None => anyhow::bail!("the broker cancelled the consumer"),
        }
    }
}

fn handle(c: &Consumer, payload: &[u8]) {
    let event: Event = match serde_json::from_slice(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("ignoring an unreadable event: {e}");
            return;
        }
    };
    metrics::counter!("tend_sync_events_total", "topic" => event.topic()).increment(1);
    match event {
        Event::CommandQueued {
            device_id,
            command_id,
            ref trace_id,
            ..
        } => {
            tracing::debug!(command.id = %command_id, device.id = %device_id,
                trace_id = trace_id.as_deref().unwrap_or(""),
                "command {command_id} waits for device {device_id}");
            c.board.mark(device_id);
        }
        Event::CommandsQueued {
            batch_id,
            ref device_ids,
            ..
        } => {
            let batch = batch_id.map(|b| b.to_string()).unwrap_or_default();
            tracing::debug!(batch.id = %batch, devices = device_ids.len(),
                "commands wait for {} devices", device_ids.len());
            c.board.mark_all(device_ids.iter().copied());
        }
        Event::DeviceDecommissioned { device_id, .. } => {
            c.revocations.revoke(device_id, Utc::now());
            c.board.clear(device_id);
            // Not awaited here: with Redis down it would take a response
            // timeout, and the events behind it (new commands) would wait.
            let live = c.live.clone();
            tokio::spawn(async move {
                if let Err(e) = live.forget(device_id).await {
                    tracing::warn!(device.id = %device_id, "cannot drop state of device {device_id}: {e}");
                }
            });
        }
        Event::CommandFinished { .. } => {}
    }
}

/// Marks every device that has a command `queued` or `delivered`.
pub async fn load_pending(board: &Board, pool: &db::Pool) -> db::Result<()> {
    board.mark_all(devices_with_open_commands(pool).await?);
    Ok(())
}

/// The devices that have a command `queued` or `delivered`, read within
/// the request deadline: what the board is loaded from at (re)connection,
/// and what the fallback reads while RabbitMQ is away.
pub async fn devices_with_open_commands(pool: &db::Pool) -> db::Result<Vec<uuid::Uuid>> {
    db::with_client(pool, async |client| {
        db::commands::devices_with_open_commands(client).await
    })
    .await
}
