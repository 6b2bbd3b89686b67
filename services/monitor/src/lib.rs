//! tend-monitor: the relay and watchdog of tend.
//!
//! It runs four background loops and a small HTTP server:
//!
//! - [`relay`]: publishes the outbox to RabbitMQ with publisher confirms,
//!   woken by [`wake`] (PostgreSQL `LISTEN`) or a one-second safety poll;
//! - [`sweep`]: every `TEND_SWEEP_INTERVAL_MS`, expires and times out
//!   commands, re-announces the ones still waiting, and updates the outbox
//!   gauges;
//! - [`presence`]: at the same interval, moves heartbeats from Redis to
//!   PostgreSQL and marks silent devices offline;
//! - [`routes`]: `/healthz`, `/readyz` and `/metrics`.
//!
//! Everything that must happen once is guarded in PostgreSQL (row locks,
//! an advisory lock), so any number of replicas can run.

mod presence;
mod relay;
mod retry;
mod routes;
mod sweep;
mod wake;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{App, HttpServer, middleware, web};
use anyhow::{Context, anyhow};
use tend_core::db::{self, Pool};
use tend_core::live::Live;
use tend_core::{Settings, http, telemetry};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::presence::Presence;
use crate::relay::{Link, Relay};
use crate::sweep::Sweeper;

/// Where the monitor serves health and metrics unless `TEND_LISTEN` says
/// otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8082";

/// A monitor connected to its backing services, ready to [`run`](Self::run).
pub struct Monitor {
    settings: Settings,
    listener: TcpListener,
    addr: SocketAddr,
    pool: Pool,
    live: Live,
    link: Link,
    listen_config: tokio_postgres::Config,
}

impl Monitor {
    /// Connects to everything, migrates, binds the HTTP listener (port 0 works).
    ///
    /// Fails when the address cannot be bound, or when PostgreSQL, Redis or
    /// RabbitMQ cannot be reached within their retries (about 30 s each).
    pub async fn build(settings: Settings) -> anyhow::Result<Monitor> {
        // Bound first: a taken port is reported at once, not after the
        // backing services' retries.
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let listen_config = wake::listen_config(settings.database_url.expose())?;

        let pool = db::connect(settings.database_url.expose()).await?;
        db::migrate(&pool).await?;
        let live = Live::connect(settings.redis_url.expose(), &settings.instance).await?;
        let link = Link::connect(settings.amqp_url.expose(), &settings.instance).await?;

        telemetry::metrics();
        register_metrics();
        Ok(Monitor {
            settings,
            listener,
            addr,
            pool,
            live,
            link,
            listen_config,
        })
    }

    /// The port of the HTTP listener.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the HTTP listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until `shutdown` is cancelled, then drains (finishes the current relay batch / sweep) and returns.
    ///
    /// The drain is bounded by `TEND_SHUTDOWN_GRACE_S`; loops still busy
    /// then are aborted (an aborted relay batch rolls back and is published
    /// again by the next monitor). Returns an error if the HTTP server or a
    /// loop stopped on its own.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // A child token, so that a failure inside the monitor stops its own
        // loops without cancelling the caller's token.
        let token = shutdown.child_token();
        let grace = self.settings.shutdown_grace;

        let amqp = self.link.status();
        let state = web::Data::new(routes::State {
            pool: self.pool.clone(),
            live: self.live.clone(),
            amqp: amqp.clone(),
            shutdown: token.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(middleware::from_fn(http::record_metrics))
                .configure(routes::configure)
                .default_service(web::to(http::not_found))
        })
        // Health probes and scrapes are all it serves: one worker is plenty.
        .workers(1)
        .listen(self.listener)?
        .shutdown_timeout(grace.as_secs())
        .disable_signals()
        .run();
        let handle = server.handle();
        let mut server = tokio::spawn(server);

        let wake = Arc::new(Notify::new());
        let mut loops = JoinSet::new();
        loops.spawn(wake::listen(
            self.listen_config,
            Arc::clone(&wake),
            token.clone(),
        ));
        loops.spawn(
            Relay::new(self.pool.clone(), self.link, &self.settings.instance, wake)
                .run(token.clone()),
        );
        loops.spawn(
            Sweeper::new(
                self.pool.clone(),
                self.settings.sweep_interval,
                self.settings.heartbeat,
                amqp,
            )
            .run(token.clone()),
        );
        loops.spawn(
            Presence::new(self.pool, self.live, self.settings.heartbeat)
                .run(self.settings.sweep_interval, token.clone()),
        );

        // The loops return only once cancelled; one that ends early has
        // panicked, and the monitor stops rather than limp on without it.
        let mut failure = tokio::select! {
            // Biased, and each early end re-checks the token: at SIGTERM the
            // loops end as soon as the token is cancelled, and a loop that
            // ended because of it is a clean stop, not a failure.
            biased;
            _ = token.cancelled() => None,
            r = &mut server => match r {
                _ if token.is_cancelled() => None,
                Ok(Ok(())) => Some(anyhow!("the HTTP server stopped on its own")),
                Ok(Err(e)) => Some(anyhow!(e).context("the HTTP server failed")),
                Err(e) => Some(anyhow!(e).context("the HTTP server task failed")),
            },
            Some(r) = loops.join_next() => match r {
                Ok(()) if token.is_cancelled() => None,
                Ok(()) => Some(anyhow!("a background loop stopped on its own")),
                Err(e) => Some(anyhow!(e).context("a background loop failed")),
            },
        };
        token.cancel();
        tracing::info!(grace_s = grace.as_secs(), "tend-monitor draining");

        let drained = tokio::time::timeout(grace, async {
            handle.stop(true).await;
            // A handle that already finished was awaited above, and may
            // not be awaited twice.
            if !server.is_finished()
                && let Err(e) = (&mut server).await
            {
                return Err(anyhow!(e).context("the HTTP server task failed"));
            }
            while let Some(r) = loops.join_next().await {
                r.context("a background loop failed while draining")?;
            }
            Ok(())
        })
        .await;
        match drained {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                tracing::warn!(
                    grace_s = grace.as_secs(),
                    "drain exceeded the grace period; aborting what is left"
                );
                loops.abort_all();
                server.abort();
            }
        }
        match failure {
            None => {
                tracing::info!("tend-monitor stopped");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}

/// Describes the monitor's series and shows the counters at zero from the
/// start, so dashboards and alerts see them before the first event.
fn register_metrics() {
    let counters = [
        (
            "tend_outbox_published_total",
            "Outbox events published and confirmed by RabbitMQ",
        ),
        (
            "tend_amqp_publish_errors_total",
            "Relay attempts that failed on RabbitMQ's side: unreachable, refused or unconfirmed",
        ),
        (
            "tend_commands_expired_total",
            "Queued commands expired by the sweep",
        ),
        (
            "tend_commands_timed_out_total",
            "Delivered or started commands timed out by the sweep",
        ),
        (
            "tend_commands_reannounced_total",
            "Waiting commands announced again by the sweep",
        ),
        (
            "tend_devices_went_offline_total",
            "Devices marked offline after missing their heartbeats",
        ),
    ];
    for (name, help) in counters {
        metrics::describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
    metrics::describe_gauge!(
        "tend_outbox_backlog",
        "Events in the outbox waiting to be published"
    );
    metrics::describe_gauge!(
        "tend_outbox_oldest_age_seconds",
        "Age of the oldest event waiting in the outbox"
    );
}
