//! The life of a service process as its `main` sees it: settings from the
//! environment, build (connect, migrate, bind), serve, drain, exit code.
//! The three services differ in what they build and serve, not in this.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use crate::Settings;
use crate::shutdown::Shutdown;
use crate::token_key::TokenKind;

/// A service that [`main`] can run.
pub trait Service: Sized {
    /// The binary's name, as its logs say it.
    const NAME: &'static str;
    /// Where it listens unless `TEND_LISTEN` says otherwise.
    const DEFAULT_LISTEN: &'static str;
    /// The token key it signs and verifies with: it reads that one and no
    /// other (none for a service that handles no token).
    const TOKEN_KEY: Option<TokenKind>;

    /// Connects to what it needs, migrates, binds its listener. `shutdown`
    /// is the process's; [`run`](Self::run) drains when it begins.
    fn build(settings: Settings, shutdown: Shutdown) -> impl Future<Output = anyhow::Result<Self>>;

    /// The address actually bound (a real port even when 0 was asked).
    fn local_addr(&self) -> SocketAddr;

    /// Where `/metrics` is served, as bound: a port of its own
    /// ([`crate::metrics_port`]), or for the monitor, whose one port serves
    /// nothing but health and metrics, [`local_addr`](Self::local_addr).
    fn metrics_addr(&self) -> SocketAddr;

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
    let settings = match Settings::from_env(S::DEFAULT_LISTEN, S::TOKEN_KEY) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    for keys in [&settings.admin_token_keys, &settings.device_token_keys]
        .into_iter()
        .flatten()
    {
        let previous: Vec<String> = keys.previous_ids().iter().map(|k| k.to_string()).collect();
        // Key ids only: they name a key without revealing it.
        tracing::info!(
            "{} tokens are signed with key {}{}",
            keys.kind.as_str(),
            keys.current_id(),
            if previous.is_empty() {
                String::new()
            } else {
                format!("; previous keys {} still verify", previous.join(", "))
            }
        );
    }
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
    // Worded apart from the line above, which scripts and tests look for.
    tracing::info!("{} serving /metrics on {}", S::NAME, service.metrics_addr());
    shutdown.on_signals();
    match service.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
