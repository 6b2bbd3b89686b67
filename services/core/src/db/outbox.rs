//! The transactional outbox: events written with the change they announce,
//! relayed to RabbitMQ by the monitor, deleted once the broker confirmed.

use tend_proto::event::Event;

use super::{DbError, GenericClient, Result};

/// Queues an event. Call it inside the transaction of the change it
/// announces, so that both commit or neither does.
pub async fn insert(c: &impl GenericClient, event: &Event) -> Result<()> {
    let stmt = c
        .prepare_cached("INSERT INTO outbox (topic, payload) VALUES ($1, $2)")
        .await?;
    let payload = serde_json::to_value(event).map_err(|e| DbError::Corrupt(e.to_string()))?;
    c.execute(&stmt, &[&event.topic(), &payload]).await?;
    Ok(())
}

/// The channel the outbox trigger (migration 0001) notifies at every
/// commit of new rows.
pub const CHANNEL: &str = "tend_outbox";

/// Subscribes `c` to [`CHANNEL`]. It must be a dedicated connection whose
/// messages the caller polls (the notifications arrive as its
/// asynchronous messages), not a pooled one: a pooled connection would
/// hand them to whoever checks it out next.
pub async fn listen(c: &tokio_postgres::Client) -> Result<()> {
    c.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub topic: String,
    pub payload: serde_json::Value,
}

/// Locks up to `limit` of the oldest events that no other relay holds.
/// Run it in a transaction and [`delete`] what was published before commit.
pub async fn claim(c: &impl GenericClient, limit: i64) -> Result<Vec<Pending>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, topic, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    Ok(c.query(&stmt, &[&limit])
        .await?
        .iter()
        .map(|r| Pending {
            id: r.get(0),
            topic: r.get(1),
            payload: r.get(2),
        })
        .collect())
}

pub async fn delete(c: &impl GenericClient, ids: &[i64]) -> Result<u64> {
    let stmt = c
        .prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
        .await?;
    Ok(c.execute(&stmt, &[&ids]).await?)
}

/// How many events wait, and the age in seconds of the oldest.
pub async fn backlog(c: &impl GenericClient) -> Result<(i64, f64)> {
    let stmt = c
        .prepare_cached(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
             FROM outbox",
        )
        .await?;
    let r = c.query_one(&stmt, &[]).await?;
    Ok((r.get(0), r.get(1)))
}
