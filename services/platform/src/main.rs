//! `tend-platform`: the admin API service. See the crate docs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tend_core::{config, service, telemetry};
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
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Migrate) = cli.command {
        telemetry::init_logs();
        let url = std::env::var(config::DATABASE_URL)
            .unwrap_or_else(|_| config::DEFAULT_DATABASE_URL.to_owned());
        if let Err(e) = tend_platform::migrate_only(&url).await {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
        tracing::info!("migrations applied");
        return ExitCode::SUCCESS;
    }
    service::main::<Platform>().await
}
