//! PostgreSQL: the pool, the migrations, and every SQL statement of tend.
//!
//! Functions are named for what they do (`commands::mark_delivered`) and take
//! `&impl GenericClient`, so the same function runs on a pooled client or
//! inside a transaction. Nothing outside this module writes SQL.

pub mod commands;
pub mod devices;
pub mod outbox;
pub mod page;
pub mod tenants;
pub mod users;

use std::time::Duration;

use anyhow::Context;
pub use deadpool_postgres::{Client, GenericClient, Pool};
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

/// Errors of the store. Unique violations are told apart so that callers can
/// answer 409 by constraint name.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl DbError {
    /// The constraint a unique violation names, if this is one.
    pub fn unique_violation(&self) -> Option<&str> {
        match self {
            DbError::Postgres(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                e.as_db_error().and_then(|d| d.constraint())
            }
            _ => None,
        }
    }

    /// True when the database could not be reached (as opposed to a bad
    /// statement or a bug): the caller answers 503 rather than 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) => true,
            DbError::Postgres(e) => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                    || e.code().is_some_and(|c| {
                        // 08: connection exception; 57P: operator intervention
                        // (admin shutdown, crash recovery, cannot connect now).
                        c.code().starts_with("08") || c.code().starts_with("57P")
                    })
            }
            DbError::Corrupt(_) => false,
        }
    }

    /// True when PostgreSQL refused a value the client sent (SQLSTATE class
    /// 22, data exception: a NUL character in text, a date out of range):
    /// the client's mistake, answered 422, not a server error.
    pub fn is_data_error(&self) -> bool {
        matches!(self, DbError::Postgres(e) if e.code().is_some_and(|c| c.code().starts_with("22")))
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// Pool size per process. Each service is small and mostly waits on I/O;
/// 16 connections per replica keeps a fleet of replicas within PostgreSQL's
/// default `max_connections` of 100.
const POOL_SIZE: usize = 16;

/// Builds the pool and checks that the database answers, retrying for about
/// 30 seconds so that a service started together with its database waits
/// instead of crashing.
pub async fn connect(url: &str) -> anyhow::Result<Pool> {
    let pg: tokio_postgres::Config = url.parse().context("TEND_DATABASE_URL")?;
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the PostgreSQL pool")?;

    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match pool.get().await {
            Ok(_) => return Ok(pool),
            Err(e) if attempt < 8 => {
                tracing::warn!(attempt, "PostgreSQL not reachable yet: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
                attempt += 1;
            }
            Err(e) => return Err(e).context("cannot reach PostgreSQL (TEND_DATABASE_URL)"),
        }
    }
}

/// Migrations in order; each runs once, in its own transaction.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "trace_id", include_str!("migrations/0002_trace_id.sql")),
];

/// Key of the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i64 = 0x7465_6e64_6d69_6772; // "tendmigr"

/// Applies pending migrations under a session advisory lock, so replicas
/// that start together apply each migration exactly once.
pub async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("while migrating")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let outcome = apply_migrations(&mut client).await;
    // Release even on failure; the connection may be reused by the pool.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    outcome?;
    unlock.context("releasing the migration lock")?;
    Ok(())
}

async fn apply_migrations(client: &mut deadpool_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .context("creating schema_migrations")?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {version} ({name})"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied migration {version} ({name})");
    }
    Ok(())
}

/// Answers whether the database takes queries; used by `/readyz`.
pub async fn ping(pool: &Pool) -> Result<()> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}
