//! `tend-sync`: the device API service. See the crate docs.

use std::process::ExitCode;

use clap::Parser;
use tend_core::service;
use tend_sync::SyncServer;

/// tend's device API: authentication, heartbeats, instructions and reports.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse();
    service::main::<SyncServer>().await
}
