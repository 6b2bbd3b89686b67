//! The process-wide stop signal: one token, cancelled on SIGTERM or SIGINT,
//! watched by every loop and server.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled when the process receives SIGTERM (what
/// Kubernetes sends first) or SIGINT (Ctrl-C).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, draining"),
            _ = int.recv() => tracing::info!("SIGINT received, draining"),
        }
        t.cancel();
    });
    token
}
