//! The `tend-monitor` binary: reads the environment, connects, and runs the
//! monitor until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use tend_core::{Settings, shutdown, telemetry};
use tend_monitor::{DEFAULT_LISTEN, Monitor};

/// tend's relay and watchdog: publishes the outbox to RabbitMQ, expires and
/// times out commands, re-announces waiting ones, and marks silent devices
/// offline. Serves /healthz, /readyz and /metrics.
///
/// Configured by the environment: TEND_LISTEN (default 0.0.0.0:8082),
/// TEND_DATABASE_URL, TEND_REDIS_URL, TEND_AMQP_URL, TEND_INSTANCE,
/// TEND_JWT_SECRET (required), TEND_HEARTBEAT_S, TEND_SWEEP_INTERVAL_MS,
/// TEND_SHUTDOWN_GRACE_S, TEND_LOG and TEND_LOG_FORMAT.
#[derive(Parser)]
#[command(name = "tend-monitor", version)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse();
    telemetry::init_logs();
    let settings = match Settings::from_env(DEFAULT_LISTEN) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let monitor = match Monitor::build(settings).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let addr = monitor.local_addr();
    tracing::info!("tend-monitor listening on {addr}");
    match monitor.run(shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
