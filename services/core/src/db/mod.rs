//! PostgreSQL: the pool, the migrations, and every SQL statement of tend.
//!
//! Functions are named for what they do (`commands::mark_delivered`) and take
//! `&impl GenericClient`, so the same function runs on a pooled client or
//! inside a transaction. Nothing outside this module writes SQL.

pub mod artifacts;
pub mod audit;
pub mod batches;
pub mod commands;
pub mod ddi;
pub mod devices;
pub mod enrolment;
pub mod idempotency;
pub mod outbox;
pub mod page;
pub mod tenants;
pub mod users;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
pub use deadpool_postgres::{Client, GenericClient, Pool, Transaction};
use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use tokio_postgres::error::SqlState;

use crate::tls::PostgresTls;

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
    /// PostgreSQL took longer than the caller's deadline (see [`bounded`]):
    /// a stalled server or network, which no error would ever report.
    #[error("the database did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
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
    /// Every pool error counts, a wait or create timeout included: the pool
    /// has no other way to fail than a database that does not answer.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) | DbError::Timeout(_) => true,
            DbError::Postgres(e) => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                    || e.code().is_some_and(|c| unavailable_state(c.code()))
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

/// SQLSTATEs that say the server cannot serve now, not that the statement
/// is wrong: class 08 (connection exception), 53 (insufficient resources:
/// too many connections, out of memory, disk full), 57P (operator
/// intervention: admin shutdown, crash recovery, cannot connect now) and
/// 57014 (query canceled, which is what `statement_timeout` raises).
fn unavailable_state(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") || code == "57014"
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// Pool size per process. Each service is small and mostly waits on I/O;
/// 16 connections per replica keeps a fleet of replicas within PostgreSQL's
/// default `max_connections` of 100.
const POOL_SIZE: usize = 16;

/// How long a request may wait on PostgreSQL in all, checkout and
/// statements together, before it is answered 503: what [`bounded`]
/// enforces. Every statement of a request takes milliseconds; seconds
/// without an answer mean a stalled server or network, and a client told
/// so early can retry rather than hang.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How long `/readyz` waits for PostgreSQL: below the 3 s timeout of the
/// readiness probes, so a stalled database reads as "not ready", with the
/// reason, rather than as a probe that timed out.
pub const PING_DEADLINE: Duration = Duration::from_secs(2);

/// How long checking a pooled connection may take before the pool drops it
/// and tries another: the check is an empty query, answered in well under a
/// millisecond by a server that works.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the server lets a statement run, in ms. A request gives up after
/// [`REQUEST_DEADLINE`], but the server would keep running an abandoned
/// statement (or keep it waiting for a lock); this ends it. Far above any
/// statement tend runs, so only abandoned or stuck work meets it.
/// Migrations lift it for their session.
const STATEMENT_TIMEOUT_MS: u32 = 30_000;

/// The connection settings of every PostgreSQL connection of tend, from the
/// database URL. Values the URL sets itself are kept.
///
/// - `connect_timeout`: an unreachable server fails the attempt in 5 s
///   instead of the kernel's minutes of SYN retries;
/// - TCP keepalives after 10 s idle, every 5 s, 3 probes, and a TCP user
///   timeout of 20 s: a server or network that vanished without closing
///   (a node lost, a partition) is noticed in under half a minute rather
///   than the kernel default of two hours, and the connection fails, so
///   pools and loops reconnect by themselves;
/// - `statement_timeout` (see [`STATEMENT_TIMEOUT_MS`]).
///
/// None of these can notice a server that keeps the TCP connection open
/// but stops answering (its kernel still acknowledges every byte): only a
/// deadline around the work does, hence [`bounded`].
pub fn pg_config(url: &str, tls: &PostgresTls) -> anyhow::Result<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = url.parse().context("TEND_DATABASE_URL")?;
    tls.apply(&mut pg);
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    // tokio-postgres's own default, which the URL did not change.
    if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(Duration::from_secs(20));
    }
    let options = pg.get_options().unwrap_or_default();
    if !options.contains("statement_timeout") {
        let with_timeout = format!("{options} -c statement_timeout={STATEMENT_TIMEOUT_MS}");
        pg.options(with_timeout.trim_start());
    }
    Ok(pg)
}

/// Runs database work under [`REQUEST_DEADLINE`]: a request handler's
/// checkout and statements, wrapped together. Past the deadline the work is
/// dropped and the answer is [`DbError::Timeout`], a 503. An open
/// transaction rolls back, unless its COMMIT was already on its way: then,
/// as with any answer lost to a fault, the client cannot know, and the
/// 503 tells it to look or retry.
pub async fn bounded<T, E>(work: impl Future<Output = Result<T, E>>) -> Result<T, E>
where
    E: From<DbError>,
{
    bounded_by(REQUEST_DEADLINE, work).await
}

/// [`bounded`] with a deadline of the caller's choosing.
pub async fn bounded_by<T, E>(
    deadline: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    match tokio::time::timeout(deadline, work).await {
        Ok(done) => done,
        Err(_) => Err(DbError::Timeout(deadline).into()),
    }
}

/// Runs `work` on a pooled connection, checkout included, under
/// [`REQUEST_DEADLINE`]: what a request handler does for every statement
/// it runs outside a transaction.
pub async fn with_client<T, E>(
    pool: &Pool,
    work: impl AsyncFnOnce(&Client) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    bounded(async {
        let client = pool.get().await.map_err(DbError::from)?;
        work(&client).await
    })
    .await
}

/// Runs `work` in a transaction under [`REQUEST_DEADLINE`], and commits
/// when it succeeds. An error, or the deadline, rolls back: the
/// transaction is dropped unfinished.
pub async fn in_tx<T, E>(
    pool: &Pool,
    work: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    in_tx_by(pool, REQUEST_DEADLINE, work).await
}

/// [`in_tx`] with a deadline of the caller's choosing, for the rare
/// request whose work grows with the fleet (a command batch).
pub async fn in_tx_by<T, E>(
    pool: &Pool,
    deadline: Duration,
    work: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    bounded_by(deadline, async {
        let mut client = pool.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let value = work(&tx).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(value)
    })
    .await
}

/// Builds the pool without touching the network.
///
/// Connections are checked at every checkout (`RecyclingMethod::Verified`,
/// an empty query), not only for a closed socket (`Fast`). After
/// `pg_terminate_backend`, a PostgreSQL restart or a failover, a pooled
/// connection can look open until its first statement fails; after a stall
/// it can hang. The check costs one round trip per checkout, well under a
/// millisecond next to the database, and only the routes that run SQL pay
/// it (the heartbeat runs none). In exchange a dead connection is replaced
/// before the request uses it, and a stalled one is dropped after
/// [`RECYCLE_TIMEOUT`] instead of hanging the request.
pub fn pool(url: &str, tls: &PostgresTls) -> anyhow::Result<Pool> {
    let mgr = tls.manager(
        pg_config(url, tls)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(mgr)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the PostgreSQL pool")
}

/// Builds the pool and checks that the database answers, retrying for about
/// 30 seconds ([`crate::retry::at_startup`]) so that a service started
/// together with its database waits instead of crashing.
pub async fn connect(url: &str, tls: &PostgresTls) -> anyhow::Result<Pool> {
    let pool = pool(url, tls)?;
    // A connection that answers is the check; it goes back to the pool.
    let checked =
        crate::retry::at_startup("PostgreSQL", crate::config::DATABASE_URL, || pool.get()).await?;
    drop(checked);
    Ok(pool)
}

/// Migrations in order; each runs once, in its own transaction.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "trace_id", include_str!("migrations/0002_trace_id.sql")),
    (
        3,
        "artifacts",
        include_str!("migrations/0003_artifacts.sql"),
    ),
    (4, "ddi", include_str!("migrations/0004_ddi.sql")),
    (
        5,
        "signatures",
        include_str!("migrations/0005_signatures.sql"),
    ),
    (6, "audit", include_str!("migrations/0006_audit.sql")),
    (7, "users", include_str!("migrations/0007_users.sql")),
    (
        8,
        "audit_guard",
        include_str!("migrations/0008_audit_guard.sql"),
    ),
    (
        9,
        "enrolment",
        include_str!("migrations/0009_enrolment.sql"),
    ),
    (
        10,
        "command_batches",
        include_str!("migrations/0010_command_batches.sql"),
    ),
];

/// Key of the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i64 = 0x7465_6e64_6d69_6772; // "tendmigr"

/// Applies pending migrations under a session advisory lock, so replicas
/// that start together apply each migration exactly once.
pub async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("while migrating")?;
    // Waiting for another replica's migrations, or building an index on a
    // large table, may take longer than the statement timeout that guards
    // requests; this session lifts it and puts it back below.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .context("lifting the statement timeout for migrations")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let outcome = apply_migrations(&mut client).await;
    // Release even on failure; the connection may be reused by the pool.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let reset = client.batch_execute("RESET statement_timeout").await;
    outcome?;
    unlock.context("releasing the migration lock")?;
    reset.context("restoring the statement timeout")?;
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

/// Answers whether the database takes queries, within [`PING_DEADLINE`];
/// used by `/readyz`.
pub async fn ping(pool: &Pool) -> Result<()> {
    bounded_by(PING_DEADLINE, async {
        let client = pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS of a URL without `sslmode`: libpq's `prefer`.
    fn tls() -> PostgresTls {
        PostgresTls::from_url("postgres://h/db", None).unwrap().1
    }

    #[test]
    fn tls_is_required_on_the_wire_whenever_the_url_requires_it() {
        use tokio_postgres::config::SslMode;
        let ca = crate::tls::tests::ca_file();
        let ca = ca.path().to_str().unwrap();
        for (mode, ca, wire) in [
            ("disable", None, SslMode::Disable),
            ("prefer", None, SslMode::Prefer),
            ("require", None, SslMode::Require),
            ("require", Some(ca), SslMode::Require),
            ("verify-ca", Some(ca), SslMode::Require),
            ("verify-full", Some(ca), SslMode::Require),
        ] {
            let url = format!("postgres://h/db?sslmode={mode}");
            let (rest, tls) = PostgresTls::from_url(&url, ca).unwrap();
            assert_eq!(rest, "postgres://h/db");
            let pg = pg_config(&rest, &tls).unwrap();
            assert_eq!(pg.get_ssl_mode(), wire, "{mode}");
        }
    }

    #[test]
    fn a_pool_timeout_or_a_deadline_means_unavailable() {
        for kind in [
            deadpool_postgres::TimeoutType::Wait,
            deadpool_postgres::TimeoutType::Create,
            deadpool_postgres::TimeoutType::Recycle,
        ] {
            assert!(DbError::Pool(deadpool_postgres::PoolError::Timeout(kind)).is_unavailable());
        }
        assert!(DbError::Timeout(REQUEST_DEADLINE).is_unavailable());
        assert!(!DbError::Corrupt("status".into()).is_unavailable());
    }

    #[test]
    fn sqlstates_of_a_server_that_cannot_serve_now_mean_unavailable() {
        for code in [
            "08006", "08001", "53300", "53100", "57P01", "57P03", "57014",
        ] {
            assert!(unavailable_state(code), "{code}");
        }
        for code in ["23505", "22P02", "42P01", "40001", "57000"] {
            assert!(!unavailable_state(code), "{code}");
        }
    }

    #[test]
    fn connection_settings_bound_every_wait_and_keep_what_the_url_says() {
        let pg = pg_config("postgres://postgres@127.0.0.1/tend", &tls()).unwrap();
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(20)));
        assert_eq!(pg.get_options(), Some("-c statement_timeout=30000"));

        let pg = pg_config(
            "postgres://postgres@127.0.0.1/tend?connect_timeout=2&keepalives_idle=60\
             &options=-c%20search_path%3Dtend",
            &tls(),
        )
        .unwrap();
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(
            pg.get_options(),
            Some("-c search_path=tend -c statement_timeout=30000")
        );

        let pg = pg_config("postgres://h/db?options=-c%20statement_timeout%3D0", &tls()).unwrap();
        assert_eq!(pg.get_options(), Some("-c statement_timeout=0"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable() {
        // Port 1 on loopback: nothing listens, the kernel refuses at once.
        let pool = pool("postgres://postgres@127.0.0.1:1/tend", &tls()).unwrap();
        let err = DbError::from(pool.get().await.unwrap_err());
        assert!(err.is_unavailable(), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_accepts_but_never_answers_is_cut_off_by_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds every connection without a byte in return, as a
        // stalled server or a black-holing proxy does.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let pool = pool(
            &format!("postgres://postgres@127.0.0.1:{port}/tend"),
            &tls(),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = bounded_by(Duration::from_millis(200), async {
            let client = pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, DbError>(())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, DbError::Timeout(_)), "{err}");
        assert!(err.is_unavailable());
        assert!(started.elapsed() < Duration::from_secs(2));
        holder.abort();
    }
}
