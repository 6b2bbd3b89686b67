//! `tend-platform`: the admin API service. See the crate docs.

use clap::{Parser, Subcommand};
use tend_core::{Settings, config, shutdown, telemetry};
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
    if let Some(Cmd::Migrate) = cli.command {
        let url = std::env::var(config::DATABASE_URL)
            .unwrap_or_else(|_| config::DEFAULT_DATABASE_URL.to_owned());
        if let Err(e) = tend_platform::migrate_only(&url).await {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        tracing::info!("migrations applied");
        return;
    }
    let settings = match Settings::from_env("0.0.0.0:8080") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
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
