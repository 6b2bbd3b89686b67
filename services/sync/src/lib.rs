//! tend-sync: the device API.
//!
//! Devices trade their secret for a short-lived token, heartbeat to learn
//! whether work is pending, fetch their instructions and report results.
//! The heartbeat is the hot path: it runs no SQL and waits on no round
//! trip. Pending flags are kept in memory ([`board`]), fed by RabbitMQ
//! ([`events`]), or by PostgreSQL while RabbitMQ is away ([`fallback`]);
//! presence is written to Redis in batches ([`presence`]); revocations are
//! cached in memory ([`revocations`]), so a decommissioned device is
//! refused without a query per request. A heartbeat may ask to be held
//! (long-poll) and is answered the moment a command for it arrives.
//!
//! Degraded modes: without Redis, heartbeats are answered as usual and
//! presence waits in memory; without RabbitMQ, pending flags come from
//! PostgreSQL every second; without PostgreSQL, heartbeats are still
//! answered while fetches and reports are 503. Only a PostgreSQL outage or
//! a drain makes `/readyz` fail.

mod board;
mod device;
mod events;
mod fallback;
mod presence;
mod revocations;
mod routes;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use tend_core::auth::Tokens;
use tend_core::db::{self, Pool};
use tend_core::live::Live;
use tend_core::{Settings, amqp, http};
use tokio_util::sync::CancellationToken;

pub use revocations::Revocations;

/// Reports carry command output: up to [`routes::MAX_OUTPUT_BYTES`] of text,
/// which JSON escaping can make larger. The limit applies after gzip
/// decompression (agents compress large reports), so it also bounds a
/// compressed body that inflates without end.
const BODY_LIMIT: usize = 4 * routes::MAX_OUTPUT_BYTES;

pub(crate) struct State {
    pub pool: Pool,
    pub live: Live,
    pub board: Arc<board::Board>,
    pub presence: Arc<presence::Presence>,
    /// Cancelled at SIGTERM: held heartbeats are answered at once so the
    /// drain does not wait for them.
    pub stopping: CancellationToken,
    pub tokens: Tokens,
    pub revocations: Arc<Revocations>,
    pub heartbeat_s: u64,
    /// Whether the RabbitMQ consumer is connected: `/readyz` reports it,
    /// and while it is false pending flags are read from PostgreSQL.
    pub consuming: Arc<AtomicBool>,
    /// Set at SIGTERM: `/readyz` turns 503 so load balancers stop sending
    /// new requests while the in-flight ones finish.
    pub draining: AtomicBool,
}

pub(crate) type Shared = web::Data<State>;

pub struct Sync {
    listener: TcpListener,
    state: web::Data<State>,
    settings: Settings,
    amqp: amqp::lapin::Connection,
}

impl Sync {
    /// Connects to PostgreSQL, Redis and RabbitMQ, applies migrations, loads
    /// the revocation list and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Sync> {
        // The recorder first: counters recorded before it exists are lost.
        tend_core::telemetry::metrics();
        let pool = db::connect(settings.database_url.expose()).await?;
        db::migrate(&pool).await?;
        let live = Live::connect(settings.redis_url.expose(), &settings.instance).await?;
        let amqp = amqp::connect_with_retry(settings.amqp_url.expose(), "tend-sync").await?;
        let revocations = Arc::new(Revocations::default());
        revocations
            .refresh(&pool)
            .await
            .context("loading the revocation list")?;
        let board = Arc::new(board::Board::default());
        events::load_pending(&board, &pool)
            .await
            .context("loading the devices with work pending")?;
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let state = web::Data::new(State {
            pool,
            live,
            board,
            presence: Arc::new(presence::Presence::default()),
            stopping: CancellationToken::new(),
            tokens: Tokens::new(settings.jwt_secret.expose()),
            revocations,
            heartbeat_s: settings.heartbeat.as_secs(),
            consuming: Arc::new(AtomicBool::new(false)),
            draining: AtomicBool::new(false),
        });
        Ok(Sync {
            listener,
            state,
            settings,
            amqp,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.settings.listen)
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests
    /// and stops the background tasks.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(http::json_config(BODY_LIMIT))
                .app_data(http::path_config())
                .app_data(http::query_config())
                .wrap(middleware::from_fn(http::record_metrics))
                .configure(routes::configure)
                .default_service(web::to(http::not_found))
        })
        .listen(self.listener)?
        .shutdown_timeout(self.settings.shutdown_grace.as_secs())
        .disable_signals()
        .run();

        let tasks = CancellationToken::new();
        let mut background = tokio::task::JoinSet::new();
        background.spawn(revocations::keep_fresh(
            self.state.revocations.clone(),
            self.state.pool.clone(),
            tasks.clone(),
        ));
        background.spawn(events::consume(
            events::Consumer {
                url: self.settings.amqp_url.expose().to_owned(),
                instance: self.settings.instance.clone(),
                live: self.state.live.clone(),
                pool: self.state.pool.clone(),
                board: self.state.board.clone(),
                revocations: self.state.revocations.clone(),
                connected: self.state.consuming.clone(),
            },
            Some(self.amqp),
            tasks.clone(),
        ));
        background.spawn(fallback::poll_while_disconnected(
            self.state.board.clone(),
            self.state.pool.clone(),
            self.state.consuming.clone(),
            fallback::every(self.settings.heartbeat),
            tasks.clone(),
        ));
        background.spawn(presence::keep_flushing(
            self.state.presence.clone(),
            self.state.board.clone(),
            self.state.live.clone(),
            tasks.clone(),
        ));

        let handle = server.handle();
        let stop = shutdown.clone();
        let draining = self.state.clone();
        let grace = self.settings.shutdown_grace;
        // When the drain must be over: SIGTERM plus the grace period.
        let drain_until = Arc::new(std::sync::OnceLock::new());
        let until = drain_until.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            let _ = until.set(tokio::time::Instant::now() + grace);
            draining.draining.store(true, Ordering::Relaxed);
            draining.stopping.cancel();
            handle.stop(true).await;
        });
        let served = server.await.context("device API server");
        tasks.cancel();
        // The background tasks finish their step (the last presence flush,
        // a read in flight) within what is left of the grace period; a
        // step held by a backing service that does not answer is dropped
        // then, so the process still exits in time.
        let until = drain_until
            .get()
            .copied()
            .unwrap_or_else(|| tokio::time::Instant::now() + grace);
        let finished = tokio::time::timeout_at(until, async {
            while background.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "background tasks still busy at the end of the grace period; dropping them"
            );
            background.abort_all();
        }
        self.state.consuming.store(false, Ordering::Relaxed);
        served
    }
}
