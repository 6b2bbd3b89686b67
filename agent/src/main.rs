//! `tend-agent`: parses the command line, starts logging and runs the agent
//! until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tend_agent::{Config, Stopped};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// `--version` says when the fault suite's fault points are compiled in,
/// so that an armed build can never pass for a release.
const VERSION: &str = if cfg!(feature = "fault-points") {
    concat!(env!("CARGO_PKG_VERSION"), " (fault points)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// tend's device agent: heartbeats to tend-sync, runs the remote commands
/// it is sent, and reports their outcome.
#[derive(Debug, Parser)]
#[command(name = "tend-agent", version = VERSION, about)]
struct Cli {
    /// The agent's TOML configuration file.
    #[arg(long, env = "TEND_AGENT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Prove this binary can work with this configuration: authenticate
    /// and send one heartbeat, then exit (0: it can). A running agent
    /// tries a new binary of itself this way before it replaces itself.
    #[arg(long)]
    prove: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    // One thread is plenty for a heartbeat loop and a few child processes,
    // and keeps the agent light on small devices.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::from(e).context("cannot start the async runtime")),
    };
    if cli.prove {
        return match runtime.block_on(tend_agent::prove(&config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    match runtime.block_on(run(config)) {
        Ok(Stopped::Shutdown) => ExitCode::SUCCESS,
        Ok(Stopped::Restart(exe)) => {
            drop(runtime);
            restart(&exe)
        }
        Err(e) => fail(&e),
    }
}

/// Replaces this process with `exe` and the same arguments: the agent's
/// own upgrade (or its rollback) takes effect under the same process id,
/// so a service manager sees one agent that kept running.
fn restart(exe: &std::path::Path) -> ExitCode {
    use std::os::unix::process::CommandExt;
    tracing::info!("restarting as {}", exe.display());
    let e = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    // Still here: the exec failed. Exiting non-zero lets the service
    // manager start the agent again, and the journal takes it from there.
    fail(&anyhow::Error::from(e).context(format!("cannot restart as {}", exe.display())))
}

async fn run(config: Config) -> anyhow::Result<Stopped> {
    let shutdown = CancellationToken::new();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = sigint.recv() => tracing::info!("SIGINT received; stopping"),
        }
        token.cancel();
    });
    tend_agent::run(config, shutdown).await
}

/// The contract's "one-line, human-readable reason", on stderr.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("tend-agent: {e:#}");
    ExitCode::FAILURE
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("TEND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if std::env::var("TEND_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
