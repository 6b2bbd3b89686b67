//! RabbitMQ: names and connections. The monitor publishes to one fanout
//! exchange per installation; every sync replica consumes from a queue of
//! its own bound to it.

use std::time::Duration;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

pub use lapin;

/// The fanout exchange that carries [`tend_proto::event::Event`]s.
pub fn exchange(instance: &str) -> String {
    format!("{instance}.sync")
}

/// The AMQP heartbeat tend asks for, in seconds, unless the URL sets one.
/// lapin closes a connection that heard nothing for two heartbeats, so a
/// broker that stalls (the TCP connection open, nothing coming) is noticed
/// within 10 s rather than the two minutes of RabbitMQ's default 60 s; sync
/// then falls back to reading PostgreSQL and the relay reconnects. Two
/// small frames every 2.5 s per connection cost nothing.
const HEARTBEAT_S: u16 = 5;

/// How long connecting may take: lapin has no connect timeout of its own,
/// and a broker that accepts the TCP connection but never answers would
/// hold the attempt forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects once, with a name that shows in the broker's management UI.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("TEND_AMQP_URL: {e}"))?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_S);
    let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "RabbitMQ did not answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(anyhow::Error::from)
}

/// Connects, retrying for about 30 seconds: the startup check of a service.
pub async fn connect_with_retry(url: &str, name: &str) -> anyhow::Result<Connection> {
    crate::retry::at_startup("RabbitMQ", crate::config::AMQP_URL, || connect(url, name)).await
}

/// Declares the installation's exchange (durable: it outlives restarts).
pub async fn declare_exchange(channel: &Channel, instance: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            exchange(instance).into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}
