//! tend-platform: the admin API.
//!
//! Admins log in, manage tenants, users and devices, and queue commands.
//! Every route checks the caller's role, and every query is scoped by the
//! caller's tenant: another tenant's id answers 404, as an unknown one.
//! Creating a command writes the command and its outbox event in one
//! transaction; the monitor relays the event to the sync servers.

mod api;
mod caller;
mod client;
mod hashing;
mod idempotency;
mod presence;
mod routes;
mod sessions;
mod signer;
mod software;
mod state;
mod throttle;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use tend_core::auth::{self, AdminTokens, Role};
use tend_core::db::{self, Pool, tenants, users};
use tend_core::metrics_port::MetricsPort;
use tend_core::service::Service;
use tend_core::shutdown::{self, Background, Shutdown};
use tend_core::signing::{InstructionSigner, SIGNING_KEY_FILE};
use tend_core::store::ArtifactStore;
use tend_core::token_key::TokenKind;
use tend_core::{Settings, http};

use crate::state::State;

/// The largest JSON body the admin API reads; commands and devices are small.
const BODY_LIMIT: usize = 64 * 1024;

/// Where `/metrics` is served unless `TEND_METRICS_LISTEN` says otherwise.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9080);

pub struct Platform {
    listener: TcpListener,
    metrics: MetricsPort,
    state: web::Data<State>,
    settings: Settings,
}

impl Service for Platform {
    const NAME: &'static str = "tend-platform";
    const DEFAULT_LISTEN: &'static str = "0.0.0.0:8080";
    const TOKEN_KEY: Option<TokenKind> = Some(TokenKind::Admin);

    /// Connects to PostgreSQL, applies migrations, creates the bootstrap
    /// admin if asked and nobody exists yet, and binds the listeners (the
    /// API's and the metrics').
    async fn build(settings: Settings, shutdown: Shutdown) -> anyhow::Result<Platform> {
        // The recorder first: counters recorded before it exists are lost.
        tend_core::telemetry::metrics();
        let pool = db::connect(settings.database_url.expose(), &settings.tls.postgres).await?;
        db::migrate(&pool).await?;
        if let Some(admin) = &settings.bootstrap_admin {
            api::check_username(&admin.username)
                .map_err(|e| anyhow::anyhow!("TEND_BOOTSTRAP_ADMIN: {e}"))?;
            match api::check_password(admin.password.expose()) {
                Ok(()) => bootstrap(&pool, &admin.username, admin.password.expose()).await?,
                // An installation whose admin exists does not use the
                // value: an old one under today's policy is no reason to
                // stop a running platform from starting again.
                Err(e) if users_exist(&pool).await? => tracing::warn!(
                    "TEND_BOOTSTRAP_ADMIN is not used (users exist) and its password \
                     would be refused now: {e}; remove it"
                ),
                Err(e) => anyhow::bail!("TEND_BOOTSTRAP_ADMIN: {e}"),
            }
        }
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let metrics = MetricsPort::bind(settings.metrics_listen.unwrap_or(DEFAULT_METRICS_LISTEN))?;
        let store = ArtifactStore::connect(&settings.artifact_store).await?;
        let keys = settings
            .admin_token_keys
            .as_ref()
            .context("TEND_ADMIN_TOKEN_KEY: required, and not read")?;
        let tokens = AdminTokens::new(keys);
        let signer = match &settings.signing_key_file {
            Some(path) => InstructionSigner::load(path)?,
            None => anyhow::bail!(
                "{SIGNING_KEY_FILE}: required: the Ed25519 key that signs every instruction \
                 (make one with `openssl genpkey -algorithm ed25519 -out key.pem`)"
            ),
        };
        tracing::info!(
            key_id = signer.key_id(),
            "signing instructions with key {}",
            signer.key_id()
        );
        let state = web::Data::new(State::new(
            pool,
            tokens,
            signer,
            shutdown,
            store,
            settings.artifact_max_bytes,
            settings.trusted_proxies.clone(),
            throttle::LoginThrottle::new(&settings.instance),
        ));
        // Logins never wait for Redis: until it answers, and whenever it
        // does not, each replica throttles by what it saw itself.
        {
            let state = state.clone();
            let url = settings.redis_url.clone();
            let tls = settings.tls.redis.clone();
            let stop = state.shutdown.background();
            tokio::spawn(async move {
                state.throttle.connect(url.expose(), &tls, stop).await;
            });
        }
        // Device answers show the latest heartbeat from Redis once it
        // answers; until then, what the rows hold.
        {
            let state = state.clone();
            let url = settings.redis_url.clone();
            let tls = settings.tls.redis.clone();
            let instance = settings.instance.clone();
            let stop = state.shutdown.background();
            tokio::spawn(async move {
                state
                    .latest
                    .connect(url.expose(), &tls, &instance, stop)
                    .await;
            });
        }
        Ok(Platform {
            listener,
            metrics,
            state,
            settings,
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.settings.listen)
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.metrics.local_addr()
    }

    /// Serves until the drain begins, then finishes in-flight requests
    /// ([`tend_core::shutdown::serve`]).
    async fn run(self) -> anyhow::Result<()> {
        let state = self.state.clone();
        let doc = routes::openapi();
        let grace = self.settings.shutdown_grace;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(http::json_config(BODY_LIMIT))
                .app_data(http::path_config())
                .app_data(http::query_config())
                .wrap(middleware::from_fn(http::record_metrics))
                .wrap(middleware::from_fn(http::request_id_header))
                .wrap(tracing_actix_web::TracingLogger::default())
                .configure(|cfg| routes::configure(cfg, doc.clone()))
                .default_service(web::to(http::not_found))
        })
        .listen(self.listener)
        .context("admin API server")?
        .shutdown_timeout(grace.as_secs())
        .disable_signals()
        .run();
        // The outbox carries the admin API's events and the monitor relays
        // them; in the background, the metrics port and the signer of what
        // tend-sync queued.
        let mut background = Background::default();
        background.spawn(
            "metrics",
            self.metrics.serve(self.state.shutdown.background()),
        );
        background.spawn(
            "sessions",
            sessions::keep_fresh(self.state.clone(), self.state.shutdown.background()),
        );
        background.spawn(
            "idempotency keys",
            idempotency::sweep(self.state.clone(), self.state.shutdown.background()),
        );
        background.spawn(
            "signer",
            signer::run(self.state.clone(), self.state.shutdown.background()),
        );
        shutdown::serve(Self::NAME, server, background, &self.state.shutdown, grace).await
    }
}

/// Creates tenant `default` and the bootstrap admin (also system admin)
/// when no user exists. Serialized by an advisory lock so that replicas
/// starting together create one admin.
async fn bootstrap(pool: &Pool, username: &str, password: &str) -> anyhow::Result<()> {
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password)).await?;
    let created = db::in_tx(pool, async |tx| {
        users::lock_bootstrap(tx).await?;
        if users::any_exists(tx).await? {
            return Ok(false);
        }
        let tenant = match tenants::find_by_name(tx, "default").await? {
            Some(t) => t,
            None => tenants::create(tx, "default").await?,
        };
        users::create(
            tx,
            users::NewUser {
                tenant_id: tenant.id,
                username,
                password_hash: &hash,
                role: Role::Admin,
                is_system_admin: true,
            },
        )
        .await?;
        Ok::<_, db::DbError>(true)
    })
    .await
    .context("creating the bootstrap admin")?;
    if created {
        tracing::info!(
            user = username,
            "created bootstrap admin {username} in tenant default"
        );
    }
    Ok(())
}

async fn users_exist(pool: &Pool) -> anyhow::Result<bool> {
    db::with_client(pool, async |c| users::any_exists(c).await)
        .await
        .context("looking for users")
}

/// `tend-platform migrate`: applies migrations and returns. It needs only
/// the database, not the signing key.
pub async fn migrate_only(
    database_url: &str,
    tls: &tend_core::tls::PostgresTls,
) -> anyhow::Result<()> {
    let pool = db::connect(database_url, tls).await?;
    db::migrate(&pool).await
}
