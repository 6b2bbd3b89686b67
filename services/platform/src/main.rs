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
        tend_core::tls::install_default_provider();
        let (url, tls) = match config::database(&std::env::vars().collect()) {
            Ok(database) => database,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = tend_platform::migrate_only(url.expose(), &tls).await {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
        tracing::info!("migrations applied");
        return ExitCode::SUCCESS;
    }
    service::main::<Platform>().await
}
