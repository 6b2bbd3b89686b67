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
mod routes;
mod sweep;
mod wake;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use tend_core::db::{self, Pool};
use tend_core::live::Live;
use tend_core::service::Service;
use tend_core::shutdown::{self, Background, Shutdown};
use tend_core::token_key::TokenKind;
use tend_core::{Settings, http, telemetry};
use tokio::sync::Notify;

use crate::presence::Presence;
use crate::relay::{Link, Relay};
use crate::sweep::Sweeper;

/// A monitor connected to its backing services, ready to [`run`](Self::run).
pub struct Monitor {
    settings: Settings,
    listener: TcpListener,
    addr: SocketAddr,
    pool: Pool,
    live: Live,
    link: Link,
    listen_config: tokio_postgres::Config,
    shutdown: Shutdown,
}

impl Service for Monitor {
    const NAME: &'static str = "tend-monitor";
    const DEFAULT_LISTEN: &'static str = "0.0.0.0:8082";
    const TOKEN_KEY: Option<TokenKind> = None;

    /// Connects to everything, migrates, binds the HTTP listener (port 0 works).
    ///
    /// Fails when the address cannot be bound, or when PostgreSQL, Redis or
    /// RabbitMQ cannot be reached within their retries (about 30 s each).
    async fn build(settings: Settings, shutdown: Shutdown) -> anyhow::Result<Monitor> {
        if let Some(ignored) = settings.metrics_listen {
            tracing::warn!(
                "TEND_METRICS_LISTEN={ignored} is not used by tend-monitor: it serves /metrics \
                 on its one port, TEND_LISTEN ({})",
                settings.listen
            );
        }
        // Bound first: a taken port is reported at once, not after the
        // backing services' retries.
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let listen_config =
            wake::listen_config(settings.database_url.expose(), &settings.tls.postgres)?;

        let pool = db::connect(settings.database_url.expose(), &settings.tls.postgres).await?;
        db::migrate(&pool).await?;
        {
            let client = pool.get().await.context("setting the audit retention")?;
            db::audit::set_retention(&client, settings.audit_retention_days)
                .await
                .context("setting the audit retention")?;
        }
        let live = Live::connect(
            settings.redis_url.expose(),
            &settings.tls.redis,
            &settings.instance,
        )
        .await?;
        let link = Link::connect(
            settings.amqp_url.expose(),
            &settings.tls.amqp,
            &settings.instance,
        )
        .await?;

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
            shutdown,
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The one port: the monitor has no public API, so its listener
    /// (`TEND_LISTEN`) is its metrics port, which only the monitoring
    /// system may reach.
    fn metrics_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until the drain begins, then finishes the current relay batch
    /// and sweep and returns ([`tend_core::shutdown::serve`]). A loop that
    /// stops on its own stops the monitor with an error.
    async fn run(self) -> anyhow::Result<()> {
        let grace = self.settings.shutdown_grace;
        let amqp = self.link.status();
        let state = web::Data::new(routes::State {
            pool: self.pool.clone(),
            live: self.live.clone(),
            amqp: amqp.clone(),
            shutdown: self.shutdown.clone(),
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

        let stop = self.shutdown.background();
        let wake = Arc::new(Notify::new());
        let mut background = Background::default();
        background.spawn(
            "listen",
            wake::listen(
                self.listen_config,
                self.settings.tls.postgres.clone(),
                Arc::clone(&wake),
                stop.clone(),
            ),
        );
        background.spawn(
            "relay",
            Relay::new(self.pool.clone(), self.link, &self.settings.instance, wake)
                .run(stop.clone()),
        );
        background.spawn(
            "sweep",
            Sweeper::new(
                self.pool.clone(),
                self.settings.sweep_interval,
                self.settings.heartbeat,
                amqp,
            )
            .run(stop.clone()),
        );
        background.spawn(
            "presence",
            Presence::new(
                self.pool,
                self.live,
                self.settings.heartbeat,
                self.settings.presence_refresh,
            )
            .run(self.settings.sweep_interval, stop),
        );
        shutdown::serve(Self::NAME, server, background, &self.shutdown, grace).await
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
        (
            "tend_presence_rows_written_total",
            "Device rows the presence step wrote for heartbeats (comings online, changed reports, refreshes)",
        ),
        (
            "tend_presence_heartbeats_read_total",
            "Heartbeats the presence step read from Redis",
        ),
    ];
    for (name, help) in counters {
        metrics::describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
    metrics::describe_histogram!(
        "tend_presence_step_seconds",
        "How long one presence step took: reading heartbeats, writing rows, marking silent devices"
    );
    metrics::describe_gauge!(
        "tend_outbox_backlog",
        "Events in the outbox waiting to be published"
    );
    metrics::describe_gauge!(
        "tend_outbox_oldest_age_seconds",
        "Age of the oldest event waiting in the outbox"
    );
}
