//! The `tendctl` binary: parse the command line, run it, exit with its code
//! (see the library's docs or `tendctl --help` for the codes).

use std::process::ExitCode;

use clap::Parser;

// One thread: tendctl makes one request at a time.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = tendctl::cli::Cli::parse();
    tendctl::run(cli, |k| std::env::var(k).ok()).await.into()
}
