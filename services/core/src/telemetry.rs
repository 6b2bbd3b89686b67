//! Logs and metrics, set up once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Starts logging: filter from `TEND_LOG` (default `info`), JSON lines when
/// `TEND_LOG_FORMAT=json`. Safe to call more than once (tests do).
pub fn init_logs() {
    let filter = EnvFilter::try_from_env("TEND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TEND_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The process's Prometheus recorder; installed on first use, so several
/// services started in one test process share it.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static, non-empty bucket list")
                .install_recorder()
                .expect("no other metrics recorder is installed in tend's processes");
            // Shown at zero from the start, so an alert on their rate works
            // before the first failure.
            for store in ["postgres", "redis"] {
                metrics::counter!("tend_backing_store_errors_total", "store" => store).increment(0);
            }
            handle
        })
        .clone()
}
