//! The harness of tend's end-to-end tests.
//!
//! A [`Stack`] runs the real `tend-platform`, `tend-sync` and `tend-monitor`
//! binaries against the real PostgreSQL, Redis and RabbitMQ, with a database
//! and an instance prefix of its own, so tests run in parallel without
//! seeing each other. An [`Agent`] runs the real `tend-agent` binary with
//! harmless actions that record each execution in a file.
//!
//! Backing services come from `TEND_TEST_DATABASE_URL` (a database the
//! harness can create databases from), `TEND_TEST_REDIS_URL` and
//! `TEND_TEST_AMQP_URL`, defaulting to this machine's. A test fails loudly
//! when one is missing: it never skips.
//!
//! [`s3::S3Bucket`] gives a test a bucket on a real S3-protocol server of
//! the test process's own, for the artifact store.
//!
//! [`Recorder`] stands between an agent and tend-sync and records each
//! request: which artifact bytes were served, which reports were sent.
//!
//! [`swu::Suricatta`] runs SWUpdate's hawkBit client against tend-sync's
//! DDI API, and [`swu::Image`] builds the signed `.swu` images it installs.
//!
//! [`tls`] gives a test PostgreSQL, Redis and RabbitMQ servers of its own
//! that speak TLS, with a CA made for the test.
//! [`hostile::HostileServer`] is a sync server that answers what no working
//! one does, for the real agent to outlast.
//!
//! [`fleet`] is the fleet simulator behind the `tend-fleet` binary: many
//! simulated agents over real HTTP, for load and latency figures.

mod agent;
pub mod fleet;
pub mod hostile;
pub mod lan;
pub mod proxy;
pub mod recorder;
pub mod redis_server;
pub mod s3;
mod stack;
pub mod swu;
pub mod tls;
pub mod tree;

pub use agent::{Agent, toml_array};
pub use proxy::{Mode, Proxy};
pub use recorder::Recorder;
pub use stack::{
    ADMIN_PASSWORD, ADMIN_USER, Device, Faults, Options, Service, Stack, bin, new_token_key,
    run_to_exit,
};

/// Polls `check` every 100 ms until it returns `Some`, or panics with
/// `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
