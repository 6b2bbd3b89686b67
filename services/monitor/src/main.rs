//! The `tend-monitor` binary: reads the environment, connects, and runs the
//! monitor until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use tend_core::service;
use tend_monitor::Monitor;

/// tend's relay and watchdog: publishes the outbox to RabbitMQ, expires and
/// times out commands, re-announces waiting ones, and marks silent devices
/// offline. Serves /healthz, /readyz and /metrics.
///
/// Configured by the environment: TEND_LISTEN (default 0.0.0.0:8082),
/// TEND_DATABASE_URL, TEND_REDIS_URL, TEND_AMQP_URL, TEND_INSTANCE,
/// TEND_HEARTBEAT_S, TEND_SWEEP_INTERVAL_MS, TEND_SHUTDOWN_GRACE_S, TEND_LOG
/// and TEND_LOG_FORMAT. It handles no token and needs no token key.
#[derive(Parser)]
#[command(name = "tend-monitor", version)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse();
    service::main::<Monitor>().await
}
