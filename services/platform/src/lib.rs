//! tend-platform: the admin API.
//!
//! Admins log in, manage tenants, users and devices, and queue commands.
//! Every route checks the caller's role, and every query is scoped by the
//! caller's tenant: another tenant's id answers 404, as an unknown one.
//! Creating a command writes the command and its outbox event in one
//! transaction; the monitor relays the event to the sync servers.

mod api;
mod caller;
mod routes;

use std::net::TcpListener;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use tend_core::auth::{self, Role, Tokens};
use tend_core::db::{self, Pool, tenants, users};
use tend_core::{Settings, http};
use tokio_util::sync::CancellationToken;

/// The largest JSON body the admin API reads; commands and devices are small.
const BODY_LIMIT: usize = 64 * 1024;

/// What every handler can reach.
pub(crate) struct State {
    pub pool: Pool,
    pub tokens: Tokens,
    /// Bounds concurrent argon2 work. Each hash takes about 19 MiB and a
    /// core for tens of milliseconds; unbounded, a flood of logins would
    /// exhaust memory. Two per core keeps the cores busy and no more.
    pub hashing: tokio::sync::Semaphore,
    /// Set at SIGTERM: `/readyz` turns 503 while in-flight requests finish.
    pub draining: std::sync::atomic::AtomicBool,
}

impl State {
    /// Runs argon2 work on a blocking thread, at most a few at a time; 503
    /// when the queue does not move within a few seconds.
    pub async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tend_core::http::ApiError> {
        let wait = std::time::Duration::from_secs(5);
        let _permit = tokio::time::timeout(wait, self.hashing.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                tend_core::http::ApiError::Unavailable(
                    "too many password checks at once; try again shortly".into(),
                )
            })?;
        Ok(web::block(work).await?)
    }
}

pub struct Platform {
    listener: TcpListener,
    state: web::Data<State>,
    settings: Settings,
}

impl Platform {
    /// Connects to PostgreSQL, applies migrations, creates the bootstrap
    /// admin if asked and nobody exists yet, and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Platform> {
        // The recorder first: counters recorded before it exists are lost.
        tend_core::telemetry::metrics();
        let pool = db::connect(settings.database_url.expose()).await?;
        db::migrate(&pool).await?;
        if let Some(admin) = &settings.bootstrap_admin {
            api::check_username(&admin.username)
                .and_then(|()| api::check_password(admin.password.expose()))
                .map_err(|e| anyhow::anyhow!("TEND_BOOTSTRAP_ADMIN: {e}"))?;
            bootstrap(&pool, &admin.username, admin.password.expose()).await?;
        }
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let state = web::Data::new(State {
            pool,
            tokens: Tokens::new(settings.jwt_secret.expose()),
            hashing: tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Platform {
            listener,
            state,
            settings,
        })
    }

    /// The address actually bound (the port is real even if 0 was asked).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().unwrap_or(self.settings.listen)
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        let doc = routes::openapi();
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
        .listen(self.listener)?
        .shutdown_timeout(self.settings.shutdown_grace.as_secs())
        .disable_signals()
        .run();
        let handle: ServerHandle = server.handle();
        let state = self.state.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            state
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            handle.stop(true).await;
        });
        server.await.context("admin API server")
    }
}

/// Creates tenant `default` and the bootstrap admin (also system admin)
/// when no user exists. Serialized by an advisory lock so that replicas
/// starting together create one admin.
async fn bootstrap(pool: &Pool, username: &str, password: &str) -> anyhow::Result<()> {
    const BOOTSTRAP_LOCK: i64 = 0x7465_6e64_626f_6f74; // "tendboot"
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK])
        .await?;
    if users::any_exists(&tx).await? {
        return Ok(());
    }
    let tenant = match tenants::find_by_name(&tx, "default").await? {
        Some(t) => t,
        None => tenants::create(&tx, "default").await?,
    };
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password)).await?;
    users::create(
        &tx,
        users::NewUser {
            tenant_id: tenant.id,
            username,
            password_hash: &hash,
            role: Role::Admin,
            is_system_admin: true,
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        user = username,
        "created bootstrap admin {username} in tenant default"
    );
    Ok(())
}

/// `tend-platform migrate`: applies migrations and returns. It needs only
/// the database, not the signing key.
pub async fn migrate_only(database_url: &str) -> anyhow::Result<()> {
    let pool = db::connect(database_url).await?;
    db::migrate(&pool).await
}

pub(crate) type Shared = web::Data<State>;
