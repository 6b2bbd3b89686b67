//! Wake-ups for the relay: a dedicated PostgreSQL connection that
//! `LISTEN`s on `tend_outbox`, the channel the outbox trigger notifies at
//! every commit of new rows.
//!
//! The connection is outside the pool because it is held for the life of
//! the process and must be driven by hand to see notifications. When it
//! breaks it is reopened with backoff; meanwhile the relay's one-second
//! safety poll keeps events moving.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;
use futures_util::stream;
use tend_core::tls::PostgresTls;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use tend_core::db::outbox;
use tend_core::retry::{Backoff, Outage, sleep_unless_cancelled};

/// How long connecting and subscribing may take before the attempt counts
/// as failed and is retried with backoff.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection settings of the LISTEN connection: those of every
/// connection of tend (a connect timeout, and keepalives that notice a
/// peer that vanished without closing, which matters most to a connection
/// that only receives), under a name of its own.
pub(crate) fn listen_config(
    database_url: &str,
    tls: &PostgresTls,
) -> anyhow::Result<tokio_postgres::Config> {
    let mut config = tend_core::db::pg_config(database_url, tls)?;
    config.application_name("tend-monitor listener");
    Ok(config)
}

/// Notifies `wake` on every outbox notification until `token` is
/// cancelled, reconnecting whenever the connection breaks.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    tls: PostgresTls,
    wake: Arc<Notify>,
    token: CancellationToken,
) {
    let mut backoff = Backoff::service();
    let outage = Outage::new("outbox LISTEN connection");
    loop {
        let broken = tokio::select! {
            _ = token.cancelled() => return,
            r = listen_once(&config, &tls, &wake, &mut backoff, &outage) => r,
        };
        outage.failed(&broken);
        if !sleep_unless_cancelled(backoff.next_delay(), &token).await {
            return;
        }
    }
}

/// One connection's life: connect, LISTEN, forward notifications. Returns
/// why it ended.
///
/// A server that stalls (connection open, no bytes) is not noticed here:
/// nothing is asked of it. The relay's safety poll keeps events moving
/// meanwhile, and once the server answers again the held notifications
/// arrive, or the broken connection fails and is reopened.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &PostgresTls,
    wake: &Arc<Notify>,
    backoff: &mut Backoff,
    outage: &Outage,
) -> anyhow::Error {
    // Bounded as a whole: `connect_timeout` covers only the TCP connect,
    // and a stalled server would hold the startup exchange forever.
    let (client, mut connection) =
        match tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(config)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return anyhow!(e).context("connecting to PostgreSQL"),
            Err(_) => return anyhow!("PostgreSQL did not answer within {CONNECT_TIMEOUT:?}"),
        };
    let notify = Arc::clone(wake);
    // The connection does no I/O unless polled, for LISTEN's answer too, so
    // it is driven by its own task from the start.
    let driver = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => notify.notify_one(),
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!("PostgreSQL notice on the LISTEN connection: {notice}");
                }
                Ok(_) => {}
                Err(e) => return anyhow!(e).context("the LISTEN connection failed"),
            }
        }
        anyhow!("PostgreSQL closed the LISTEN connection")
    }));
    match tokio::time::timeout(CONNECT_TIMEOUT, outbox::listen(&client)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return anyhow!(e).context("LISTEN"),
        Err(_) => return anyhow!("PostgreSQL did not answer LISTEN within {CONNECT_TIMEOUT:?}"),
    }
    outage.recovered();
    backoff.reset();
    // Rows committed while nobody listened announced themselves to no one.
    wake.notify_one();
    tracing::debug!("listening for outbox notifications");
    // `client` stays alive until here: dropping it would close the connection.
    let ended = match driver.await {
        Ok(reason) => reason,
        Err(e) => anyhow!(e).context("the LISTEN task stopped"),
    };
    drop(client);
    ended
}
