//! The outbox relay: events committed to the `outbox` table are published
//! to the installation's fanout exchange and deleted once RabbitMQ has
//! confirmed them.
//!
//! One batch is one transaction: claim rows (`FOR UPDATE SKIP LOCKED`, so
//! several monitor replicas never take the same rows), publish them all,
//! wait for the broker's confirms, then delete the rows and commit. On a
//! nack, a timeout or any error the transaction rolls back and the rows are
//! published again later. Delivery is therefore at-least-once; the sync
//! servers treat events idempotently.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::future::try_join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionStatus};
use tend_core::amqp;
use tend_core::db::Pool;
use tend_core::db::outbox::{self, Pending};
use tend_core::tls::AmqpTls;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tend_core::retry::{Backoff, Outage, sleep_unless_cancelled};

/// Rows per transaction: enough to drain a burst quickly, few enough that
/// one batch's confirms arrive well within [`CONFIRM_TIMEOUT`] and a failed
/// batch costs little to redo.
const BATCH: i64 = 200;

/// How often the relay looks at the outbox without a notification. NOTIFY
/// is lost while the LISTEN connection is down, and rows left by a failed
/// batch of another replica announce nothing; one second bounds the delay.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// How long one batch may take to publish and be confirmed. A broker under
/// a memory alarm blocks publishers; past this the batch is rolled back
/// (its row locks released) and retried later on a fresh channel.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// How long getting a channel may take (reconnecting, opening it, enabling
/// confirms, declaring the exchange) before the attempt counts as failed
/// and is retried with backoff: a broker that stalls answers none of it.
const LINK_TIMEOUT: Duration = Duration::from_secs(15);

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The broker connection's state as `/readyz` sees it. The relay replaces
/// the connection when it breaks; this always shows the current one.
#[derive(Clone, Default)]
pub(crate) struct AmqpStatus(Arc<RwLock<Option<ConnectionStatus>>>);

impl AmqpStatus {
    fn set(&self, status: ConnectionStatus) {
        if let Ok(mut current) = self.0.write() {
            *current = Some(status);
        }
    }

    fn clear(&self) {
        if let Ok(mut current) = self.0.write() {
            *current = None;
        }
    }

    /// `Ok` while the current connection is up.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.0.read().as_deref() {
            Ok(Some(status)) if status.connected() => Ok(()),
            Ok(Some(_)) => Err("connection lost; reconnecting".into()),
            Ok(None) => Err("not connected".into()),
            Err(_) => Err("status unavailable".into()),
        }
    }
}

/// The relay's connection and its confirm-mode channel, reopened on demand
/// after they break.
pub(crate) struct Link {
    url: String,
    tls: AmqpTls,
    instance: String,
    conn: Option<Connection>,
    channel: Option<Channel>,
    status: AmqpStatus,
}

impl Link {
    /// Connects (retrying for about 30 seconds), opens the channel and
    /// declares the exchange: the startup check of the monitor.
    pub(crate) async fn connect(url: &str, tls: &AmqpTls, instance: &str) -> anyhow::Result<Link> {
        let conn = amqp::connect_with_retry(url, tls, "tend-monitor").await?;
        let status = AmqpStatus::default();
        status.set(conn.status().clone());
        let mut link = Link {
            url: url.to_owned(),
            tls: tls.clone(),
            instance: instance.to_owned(),
            conn: Some(conn),
            channel: None,
            status,
        };
        link.channel()
            .await
            .context("opening a channel and declaring the exchange on RabbitMQ")?;
        Ok(link)
    }

    pub(crate) fn status(&self) -> AmqpStatus {
        self.status.clone()
    }

    /// The channel to publish on, reconnecting first if the connection or
    /// the channel broke.
    async fn channel(&mut self) -> anyhow::Result<Channel> {
        let conn = match self.conn.take() {
            Some(conn) if conn.status().connected() => conn,
            _ => {
                self.channel = None;
                let conn = amqp::connect(&self.url, &self.tls, "tend-monitor")
                    .await
                    .context("connecting to RabbitMQ")?;
                self.status.set(conn.status().clone());
                tracing::info!("connected to RabbitMQ");
                conn
            }
        };
        let conn = self.conn.insert(conn);
        if let Some(channel) = &self.channel
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = conn.create_channel().await.context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        // Declared on every new channel: publishing to a missing exchange
        // would close the channel, and a rebuilt broker has none.
        amqp::declare_exchange(&channel, &self.instance)
            .await
            .context("declaring the exchange")?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Forgets the channel after a failed batch: its confirms are in an
    /// unknown state, and a fresh channel costs one round trip.
    fn drop_channel(&mut self) {
        self.channel = None;
    }

    /// Forgets the connection too, after the broker did not answer while
    /// a channel was being opened: the next batch connects afresh.
    fn drop_connection(&mut self) {
        self.channel = None;
        self.conn = None;
        self.status.clear();
    }

    /// Closes the channel, then the connection, politely at shutdown.
    async fn close(&mut self) {
        let closing = async {
            if let Some(channel) = self.channel.take()
                && channel.status().connected()
            {
                channel
                    .close(200, "tend-monitor shutting down".into())
                    .await?;
            }
            if let Some(conn) = self.conn.take()
                && conn.status().connected()
            {
                conn.close(200, "tend-monitor shutting down".into()).await?;
            }
            Ok::<(), lapin::Error>(())
        };
        // The broker may be gone; shutdown does not wait for it long.
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), closing).await {
            tracing::debug!("closing the RabbitMQ connection: {e}");
        }
    }
}

/// Moves the outbox to RabbitMQ until cancelled.
pub(crate) struct Relay {
    pool: Pool,
    link: Link,
    exchange: String,
    wake: Arc<Notify>,
}

impl Relay {
    /// `wake` is notified when rows are committed to the outbox.
    pub(crate) fn new(pool: Pool, link: Link, instance: &str, wake: Arc<Notify>) -> Self {
        Relay {
            pool,
            link,
            exchange: amqp::exchange(instance),
            wake,
        }
    }

    /// Relays batch after batch; between bursts, waits for a notification
    /// or the safety poll. A batch in flight when `token` is cancelled is
    /// finished (committed or rolled back) before this returns.
    pub(crate) async fn run(mut self, token: CancellationToken) {
        let mut backoff = Backoff::service();
        let outage = Outage::new("outbox relay");
        loop {
            // Work off the backlog until a batch comes back short.
            let retry_in = loop {
                match self.relay_batch().await {
                    Ok(n) => {
                        outage.recovered();
                        backoff.reset();
                        if n < BATCH as usize || token.is_cancelled() {
                            break None;
                        }
                    }
                    Err(e) => {
                        outage.failed(&e);
                        break Some(backoff.next_delay());
                    }
                }
            };
            if token.is_cancelled() {
                break;
            }
            match retry_in {
                Some(delay) => {
                    if !sleep_unless_cancelled(delay, &token).await {
                        break;
                    }
                }
                None => tokio::select! {
                    _ = token.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(SAFETY_POLL) => {}
                },
            }
        }
        self.link.close().await;
    }

    /// Publishes one batch; answers how many events went out.
    async fn relay_batch(&mut self) -> anyhow::Result<usize> {
        // The broker first: while it is away, rows stay unlocked and the
        // outbox simply grows.
        let channel = match tokio::time::timeout(LINK_TIMEOUT, self.link.channel()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                metrics::counter!("tend_amqp_publish_errors_total").increment(1);
                return Err(e);
            }
            Err(_) => {
                // Whatever the broker half did stays behind: start afresh.
                self.link.drop_connection();
                metrics::counter!("tend_amqp_publish_errors_total").increment(1);
                bail!(
                    "RabbitMQ did not open a channel within {} s",
                    LINK_TIMEOUT.as_secs()
                );
            }
        };
        let mut client = self.pool.get().await.context("relay: PostgreSQL pool")?;
        let tx = client.transaction().await.context("relay: BEGIN")?;
        let rows = outbox::claim(&tx, BATCH)
            .await
            .context("relay: claiming outbox rows")?;
        if rows.is_empty() {
            return Ok(0);
        }

        let published =
            tokio::time::timeout(PUBLISH_TIMEOUT, publish(&channel, &self.exchange, &rows)).await;
        let failure = match published {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(anyhow::anyhow!(
                "RabbitMQ did not confirm {} events within {} s",
                rows.len(),
                PUBLISH_TIMEOUT.as_secs()
            )),
        };
        if let Some(e) = failure {
            metrics::counter!("tend_amqp_publish_errors_total").increment(1);
            self.link.drop_channel();
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!("relay: ROLLBACK failed (the connection is dropped): {rollback}");
            }
            return Err(e);
        }

        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        outbox::delete(&tx, &ids)
            .await
            .context("relay: deleting published rows")?;
        // A failed COMMIT leaves the rows: they are published again, which
        // at-least-once delivery allows.
        tx.commit().await.context("relay: COMMIT")?;
        metrics::counter!("tend_outbox_published_total").increment(rows.len() as u64);
        for row in &rows {
            if row.topic == "command.finished"
                && let Some(status) = row.payload.get("status").and_then(|s| s.as_str())
            {
                metrics::counter!("tend_commands_finished_total", "status" => status.to_owned())
                    .increment(1);
            }
        }
        tracing::debug!(count = rows.len(), "relayed {} events", rows.len());
        Ok(rows.len())
    }
}

/// Publishes every row, then waits for all confirms together: awaiting
/// each in turn would cost one broker round trip per event.
async fn publish(channel: &Channel, exchange: &str, rows: &[Pending]) -> anyhow::Result<()> {
    let mut confirms = Vec::with_capacity(rows.len());
    for row in rows {
        let payload = serde_json::to_vec(&row.payload).context("encoding an outbox payload")?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(row.id.to_string().into());
        // The command's trace, as W3C trace context, for consumers that
        // trace from message headers.
        if let Some(trace_id) = row
            .payload
            .get("trace_id")
            .and_then(|t| t.as_str())
            .filter(|t| tend_proto::device::is_trace_id(t))
        {
            let mut headers = FieldTable::default();
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(
                    tend_proto::device::traceparent(trace_id, row.id.unsigned_abs()).into(),
                ),
            );
            properties = properties.with_headers(headers);
            tracing::info!(trace_id, topic = %row.topic, "publishing {} for trace {trace_id}", row.topic);
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                row.topic.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
            .context("publishing to RabbitMQ")?;
        confirms.push(confirm);
    }
    let confirmations: Vec<Confirmation> = try_join_all(confirms)
        .await
        .context("waiting for RabbitMQ's confirms")?;
    let refused = confirmations.iter().filter(|c| !c.is_ack()).count();
    if refused > 0 {
        bail!("RabbitMQ refused {refused} of {} events", rows.len());
    }
    Ok(())
}
