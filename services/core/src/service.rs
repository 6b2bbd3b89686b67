//! The life of a service process as its `main` sees it: settings from the
//! environment, build (connect, migrate, bind), serve, drain, exit code.
//! The three services differ in what they build and serve, not in this.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use crate::Settings;
use crate::shutdown::Shutdown;

/// A service that [`main`] can run.
pub trait Service: Sized {
    /// The binary's name, as its logs say it.
    const NAME: &'static str;
    /// Where it listens unless `TEND_LISTEN` says otherwise.
    const DEFAULT_LISTEN: &'static str;

    /// Connects to what it needs, migrates, binds its listener. `shutdown`
    /// is the process's; [`run`](Self::run) drains when it begins.
    fn build(settings: Settings, shutdown: Shutdown) -> impl Future<Output = anyhow::Result<Self>>;

    /// The address actually bound (a real port even when 0 was asked).
    fn local_addr(&self) -> SocketAddr;

    /// Serves until the drain begins and has finished.
    fn run(self) -> impl Future<Output = anyhow::Result<()>>;
}

/// Runs `S` as the whole process. Exit codes: 2 for a configuration that
/// is wrong, 1 when the service cannot start (a backing service out of
/// reach after its retries, a port taken) or a part of it failed, 0 after
/// a SIGTERM drain. The reason is one line on stderr.
pub async fn main<S: Service>() -> ExitCode {
    crate::telemetry::init_logs();
    crate::tls::install_default_provider();
    let settings = match Settings::from_env(S::DEFAULT_LISTEN) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!("stores: {}", settings.tls.summary());
    if settings.tls.postgres.required_but_unverified() {
        tracing::warn!(
            "TEND_DATABASE_URL has sslmode=require without a CA: the connection is \
             encrypted, but the server is not authenticated; name its CA in \
             TEND_DATABASE_CA_FILE and use sslmode=verify-full"
        );
    }
    let shutdown = Shutdown::new();
    let service = match S::build(settings, shutdown.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    tracing::info!("{} listening on {}", S::NAME, service.local_addr());
    shutdown.on_signals();
    match service.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
