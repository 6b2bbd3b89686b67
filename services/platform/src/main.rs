//! `tend-platform`: the admin API service. See the crate docs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tend_core::signing::InstructionSigner;
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
    /// Print the public key of the instruction-signing key at PATH, as
    /// agents pin it (`signing_keys`: base64 of the raw Ed25519 key); its
    /// key id goes to stderr.
    SigningKey {
        /// A PKCS#8 PEM Ed25519 private key (TEND_SIGNING_KEY_FILE).
        path: std::path::PathBuf,
        /// Make a new key at PATH first, unless a file is already there.
        #[arg(long)]
        create: bool,
    },
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
    if let Some(Cmd::SigningKey { path, create }) = cli.command {
        let signer = if create && !path.exists() {
            InstructionSigner::create(&path)
        } else {
            InstructionSigner::load(&path)
        };
        return match signer {
            Ok(signer) => {
                println!("{}", signer.public_key_base64());
                eprintln!("key id {}", signer.key_id());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    service::main::<Platform>().await
}
