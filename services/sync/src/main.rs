//! `tend-sync`: the device API service. See the crate docs.

use clap::Parser;
use tend_core::{Settings, shutdown, telemetry};
use tend_sync::Sync;

/// tend's device API: authentication, heartbeats, instructions and reports.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

#[tokio::main]
async fn main() {
    Cli::parse();
    telemetry::init_logs();
    let settings = match Settings::from_env("0.0.0.0:8081") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let sync = match Sync::build(settings).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    tracing::info!("tend-sync listening on {}", sync.local_addr());
    if let Err(e) = sync.run(shutdown::on_signals()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
