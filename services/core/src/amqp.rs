//! RabbitMQ: names and connections. The monitor publishes to one fanout
//! exchange per installation; every sync replica consumes from a queue of
//! its own bound to it.

use std::time::Duration;

use lapin::options::ExchangeDeclareOptions;
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::types::FieldTable;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::tls::AmqpTls;

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

/// Connects once, with a name that shows in the broker's management UI;
/// over TLS for an `amqps://` URL, with the CA of [`AmqpTls`].
pub async fn connect(url: &str, tls: &AmqpTls, name: &str) -> anyhow::Result<Connection> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("TEND_AMQP_URL: {e}"))?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_S);
    let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    let connecting = async {
        match tls.client_config() {
            Some(config) if uri.scheme == AMQPScheme::AMQPS => {
                connect_tls(uri, props, RustlsConnector::from(config)).await
            }
            _ => Connection::connect_uri(uri, props).await,
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "RabbitMQ did not answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(anyhow::Error::from)
}

/// `amqps://` with tend's own rustls configuration. lapin's own TLS adds a
/// CA to the system's instead of trusting it alone, and picks its crypto
/// provider itself; so the TLS stream is made here and lapin speaks AMQP
/// over it. lapin calls `open` again for each reconnection.
async fn connect_tls(
    uri: AMQPUri,
    props: ConnectionProperties,
    connector: RustlsConnector,
) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    let open = async move |uri: AMQPUri, runtime| {
        let host = uri.authority.host.clone();
        let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), uri.authority.port))
            .await?
            .collect();
        let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
        // The host name of the URL is what the certificate must name.
        Ok(stream.into_rustls(&connector, &host).await?)
    };
    Connection::connector(uri, runtime, open, props).await
}

/// Connects, retrying for about 30 seconds: the startup check of a service.
pub async fn connect_with_retry(
    url: &str,
    tls: &AmqpTls,
    name: &str,
) -> anyhow::Result<Connection> {
    crate::retry::at_startup("RabbitMQ", crate::config::AMQP_URL, || {
        connect(url, tls, name)
    })
    .await
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
