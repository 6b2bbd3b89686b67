//! `tend-agent`: parses the command line, starts logging and runs the agent
//! until SIGTERM or SIGINT.

use std::fmt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tend_agent::{Config, Stopped};
use tend_proto::text::EscapeControls;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

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

/// Logs on stdout: JSON lines with `TEND_LOG_FORMAT=json`, else text lines
/// whose fields are written by [`EscapedFields`].
fn init_tracing() {
    let filter = EnvFilter::try_from_env("TEND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if std::env::var("TEND_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.fmt_fields(EscapedFields::default()).init();
    }
}

/// The text format's fields, the message among them, with their control
/// characters escaped ([`EscapeControls`]): a server's error message, a log
/// line the agent quotes or a path can then never start a line of its own
/// in the agent's log, nor send escape sequences to the terminal of whoever
/// reads it. (The services write theirs the same way.)
#[derive(Default)]
struct EscapedFields(DefaultFields);

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut escaped = EscapeControls(&mut writer);
        self.0.format_fields(Writer::new(&mut escaped), fields)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_server_error_with_control_characters_stays_on_one_log_line() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .fmt_fields(EscapedFields::default())
            .finish();
        let hostile = "bad gateway\nERROR tend_agent: rebooting now\r\x1b[31m";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(error = %hostile, "heartbeat failed: {hostile}");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");
        let escaped = "bad gateway\\nERROR tend_agent: rebooting now\\r\\x1b[31m";
        assert!(
            text.contains(&format!("heartbeat failed: {escaped}")),
            "{text:?}"
        );
        assert!(text.contains(&format!("error={escaped}")), "{text:?}");
    }
}
