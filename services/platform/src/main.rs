//! `tend-platform`: the admin API service. See the crate docs.

use clap::{Parser, Subcommand};
use tend_core::{Settings, shutdown, telemetry};
use tend_platform::Platform;

/// tend's admin API: tenants, users, devices and remote commands.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply pending database migrations and exit (for a Kubernetes Job).
    Migrate,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    telemetry::init_logs();
    let settings = match Settings::from_env("0.0.0.0:8080") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(Cmd::Migrate) = cli.command {
        if let Err(e) = tend_platform::migrate_only(&settings).await {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        tracing::info!("migrations applied");
        return;
    }
    let platform = match Platform::build(settings).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    tracing::info!("tend-platform listening on {}", platform.local_addr());
    if let Err(e) = platform.run(shutdown::on_signals()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
