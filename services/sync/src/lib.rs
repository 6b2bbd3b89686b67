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
//! Devices that run a hawkBit client speak DDI instead ([`ddi`]), under
//! `/{tenant}/controller/v1/{controllerId}`, with the same hot-path budget.
//!
//! Degraded modes: without Redis, heartbeats are answered as usual and
//! presence waits in memory; without RabbitMQ, pending flags come from
//! PostgreSQL every second; without PostgreSQL, heartbeats are still
//! answered while fetches and reports are 503. Only a PostgreSQL outage or
//! a drain makes `/readyz` fail.

mod board;
mod ddi;
mod device;
mod enrol;
mod events;
mod fallback;
pub mod presence;
mod revocations;
mod routes;
mod software;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use tend_core::auth::DeviceTokens;
use tend_core::db::{self, Pool};
use tend_core::live::Live;
use tend_core::metrics_port::MetricsPort;
use tend_core::service::Service;
use tend_core::shutdown::{self, Background, Shutdown};
use tend_core::store::ArtifactStore;
use tend_core::token_key::TokenKind;
use tend_core::{Settings, amqp, http};

pub use revocations::Revocations;

/// Reports carry command output: up to [`routes::MAX_OUTPUT_BYTES`] of text,
/// which JSON escaping can make larger. The limit applies after gzip
/// decompression (agents compress large reports), so it also bounds a
/// compressed body that inflates without end.
const BODY_LIMIT: usize = 4 * routes::MAX_OUTPUT_BYTES;

/// Where `/metrics` is served unless `TEND_METRICS_LISTEN` says otherwise.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9081);

pub(crate) struct State {
    pub pool: Pool,
    pub live: Live,
    pub board: Arc<board::Board>,
    pub presence: Arc<presence::Presence>,
    /// The process's shutdown: `/readyz` answers 503 and held heartbeats
    /// are answered at once when the drain begins.
    pub shutdown: Shutdown,
    pub tokens: DeviceTokens,
    pub revocations: Arc<Revocations>,
    pub heartbeat_s: u64,
    /// Whether the RabbitMQ consumer is connected: `/readyz` reports it,
    /// and while it is false pending flags are read from PostgreSQL.
    pub consuming: Arc<AtomicBool>,
    /// Where artifact downloads come from.
    pub store: ArtifactStore,
    /// Downloads served at once; past it a device is told to come back.
    pub downloads: Arc<tokio::sync::Semaphore>,
    /// The hawkBit DDI devices this replica has verified.
    pub ddi: ddi::Sessions,
    /// Enrolments answered this second (an unauthenticated route).
    pub enrolments: enrol::Rate,
    /// `TEND_TRUSTED_PROXIES`: whose `X-Forwarded-For` names the client an
    /// enrolment's audit row records.
    pub trusted_proxies: Vec<tend_core::http::Cidr>,
}

pub(crate) type Shared = web::Data<State>;

/// The device API server: built (connected, migrated, bound), then run.
pub struct SyncServer {
    listener: TcpListener,
    metrics: MetricsPort,
    state: web::Data<State>,
    settings: Settings,
    amqp: amqp::lapin::Connection,
}

impl Service for SyncServer {
    const NAME: &'static str = "tend-sync";
    const DEFAULT_LISTEN: &'static str = "0.0.0.0:8081";
    const TOKEN_KEY: Option<TokenKind> = Some(TokenKind::Device);

    /// Connects to PostgreSQL, Redis and RabbitMQ, applies migrations, loads
    /// the revocation list and binds the listeners (the device API's and
    /// the metrics').
    async fn build(settings: Settings, shutdown: Shutdown) -> anyhow::Result<SyncServer> {
        // The recorder first: counters recorded before it exists are lost.
        tend_core::telemetry::metrics();
        let pool = db::connect(settings.database_url.expose(), &settings.tls.postgres).await?;
        db::migrate(&pool).await?;
        let live = Live::connect(
            settings.redis_url.expose(),
            &settings.tls.redis,
            &settings.instance,
        )
        .await?;
        let amqp =
            amqp::connect_with_retry(settings.amqp_url.expose(), &settings.tls.amqp, "tend-sync")
                .await?;
        let revocations = Arc::new(Revocations::default());
        revocations
            .refresh(&pool)
            .await
            .context("loading the revocation list")?;
        let board = Arc::new(board::Board::default());
        events::load_pending(&board, &pool)
            .await
            .context("loading the devices with work pending")?;
        let store = ArtifactStore::connect(&settings.artifact_store).await?;
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let metrics = MetricsPort::bind(settings.metrics_listen.unwrap_or(DEFAULT_METRICS_LISTEN))?;
        let state = web::Data::new(State {
            pool,
            live,
            board,
            presence: Arc::new(presence::Presence::default()),
            shutdown,
            tokens: DeviceTokens::new(
                settings
                    .device_token_keys
                    .as_ref()
                    .context("TEND_DEVICE_TOKEN_KEY: required, and not read")?,
            ),
            revocations,
            heartbeat_s: settings.heartbeat.as_secs(),
            consuming: Arc::new(AtomicBool::new(false)),
            store,
            downloads: Arc::new(tokio::sync::Semaphore::new(settings.download_concurrency)),
            ddi: ddi::Sessions::default(),
            enrolments: enrol::Rate::default(),
            trusted_proxies: settings.trusted_proxies.clone(),
        });
        Ok(SyncServer {
            listener,
            metrics,
            state,
            settings,
            amqp,
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.settings.listen)
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.metrics.local_addr()
    }

    /// Serves until the drain begins, then finishes in-flight requests
    /// and stops the background tasks ([`tend_core::shutdown::serve`]).
    async fn run(self) -> anyhow::Result<()> {
        let state = self.state.clone();
        let grace = self.settings.shutdown_grace;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(http::json_config(BODY_LIMIT))
                .app_data(http::path_config())
                .app_data(http::query_config())
                .wrap(middleware::from_fn(http::record_metrics))
                .configure(routes::configure)
                .configure(ddi::configure)
                .default_service(web::to(http::not_found))
        })
        .listen(self.listener)
        .context("device API server")?
        .shutdown_timeout(grace.as_secs())
        .disable_signals()
        .run();

        let state = &self.state;
        let stop = state.shutdown.background();
        let mut background = Background::default();
        background.spawn("metrics", self.metrics.serve(stop.clone()));
        background.spawn(
            "revocations",
            revocations::keep_fresh(state.revocations.clone(), state.pool.clone(), stop.clone()),
        );
        background.spawn(
            "events",
            events::consume(
                events::Consumer {
                    url: self.settings.amqp_url.expose().to_owned(),
                    tls: self.settings.tls.amqp.clone(),
                    instance: self.settings.instance.clone(),
                    live: state.live.clone(),
                    pool: state.pool.clone(),
                    board: state.board.clone(),
                    revocations: state.revocations.clone(),
                    connected: state.consuming.clone(),
                },
                Some(self.amqp),
                stop.clone(),
            ),
        );
        background.spawn(
            "fallback",
            fallback::poll_while_disconnected(
                state.board.clone(),
                state.pool.clone(),
                state.consuming.clone(),
                fallback::every(self.settings.heartbeat),
                stop.clone(),
            ),
        );
        background.spawn(
            "presence",
            presence::keep_flushing(
                state.presence.clone(),
                state.board.clone(),
                state.live.clone(),
                stop,
            ),
        );
        let served = shutdown::serve(Self::NAME, server, background, &state.shutdown, grace).await;
        state.consuming.store(false, Ordering::Relaxed);
        served
    }
}
