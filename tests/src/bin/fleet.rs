//! `tend-fleet`: the fleet simulator. Parses and checks the command line,
//! runs [`tend_tests::fleet::run`] under a hard time limit, prints the
//! report (text, or one JSON object with `--json`) on stdout; progress
//! goes to stderr.
//!
//! Exit codes: 0 the run completed, 1 it failed, 2 the arguments were
//! refused.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tend_tests::fleet::{self, args::Args};

/// Time a run may take besides its measured window: provisioning, device
/// authentication, the drain and reading commands back. Past it the
/// simulator gives up, so that no run outlives its window by much.
const OVERHEAD_LIMIT: Duration = Duration::from_secs(20 * 60);

#[tokio::main]
async fn main() -> ExitCode {
    let plan = match Args::parse().plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tend-fleet: {e}");
            return ExitCode::from(2);
        }
    };
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Err(e) = fleet::args::check_open_files(plan.connections, &limits)
    {
        eprintln!("tend-fleet: {e}");
        return ExitCode::from(2);
    }
    let json = plan.json;
    let limit = plan.duration + OVERHEAD_LIMIT;
    match tokio::time::timeout(limit, fleet::run(plan)).await {
        Ok(Ok(report)) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("tend-fleet: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("tend-fleet: gave up after {} s", limit.as_secs());
            ExitCode::FAILURE
        }
    }
}
