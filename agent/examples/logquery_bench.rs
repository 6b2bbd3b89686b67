//! Benchmark of the agent's `log_query` on one large log file.
//!
//! Generates a log of the requested size (timestamped request lines, and
//! every 100th record an ERROR with a four-line stack trace, so the
//! exception pattern matches about 1 % of the lines), then runs the query
//! function the agent runs, in this process, and prints elapsed time and
//! throughput for each query, and the process's peak RSS. Run it under
//! `/usr/bin/time -v` to read the peak RSS from the outside as well:
//!
//! ```text
//! cargo run --release -p tend-agent --example logquery_bench -- --size-mb 1024
//! ```
//!
//! The file is written to a temporary directory (removed at the end)
//! unless `--path` names one (then kept). It is read right after being
//! written, so it is in the page cache: the figures are the query's own
//! cost, not the disk's.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use clap::Parser;
use serde_json::{Value, json};
use tend_agent::Config;
use tend_agent::logquery::{self, Stop};

#[derive(Parser)]
#[command(about = "Generate a large log and time the agent's log_query on it")]
struct Args {
    /// Size of the generated log, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mb: u64,
    /// Write the log here (and keep it) instead of in a temporary directory.
    #[arg(long)]
    path: Option<PathBuf>,
}

/// The first line's time; lines are 50 ms apart.
const START: &str = "2026-11-01T00:00:00Z";
const STEP_MS: i64 = 50;
/// The pattern that selects the error records: one line in about 100.
const PATTERN: &str = "SocketTimeoutException";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| temp.path().join("app.log"));

    let started = Instant::now();
    let generated = generate(&path, args.size_mb * 1024 * 1024)?;
    let size = std::fs::metadata(&path)?.len();
    println!(
        "generated {} ({:.0} MB, {} lines) in {:.1} s",
        path.display(),
        size as f64 / 1e6,
        generated.lines,
        started.elapsed().as_secs_f64()
    );

    let config = Config::from_toml_str(&format!(
        "server_url = \"http://127.0.0.1:9\"\n\
         device_id = \"6f1c1a52-8d7e-4f2b-9a51-2f6e8c1d0b11\"\n\
         device_secret = \"bench\"\n\
         accept_unsigned = true\n\
         state_dir = {:?}\n\
         [log_sources]\nbench = {:?}\n",
        temp.path().join("state").display().to_string(),
        path.display().to_string(),
    ))?;
    let since = generated.since.to_rfc3339_opts(SecondsFormat::Millis, true);
    let queries = [
        (
            "since (last ~10 %)",
            json!({"source": "bench", "since": since}),
        ),
        (
            "full scan with a pattern (~1 % of lines)",
            json!({"source": "bench", "pattern": PATTERN}),
        ),
        (
            "since + pattern",
            json!({"source": "bench", "since": since, "pattern": PATTERN}),
        ),
        ("full scan, no filter", json!({"source": "bench"})),
    ];
    println!(
        "{:<42} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "query", "elapsed_s", "MB/s", "matched", "returned", "bytes"
    );
    for (name, params) in queries {
        run(name, &params, &config, size)?;
    }
    println!(
        "peak RSS (VmHWM): {}",
        peak_rss().unwrap_or_else(|| "unknown".into())
    );
    if args.path.is_some() {
        println!("kept {}", path.display());
    }
    Ok(())
}

fn run(name: &str, params: &Value, config: &Config, size: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let answer = logquery::run(params, &config.log_query, &Stop::never())?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{name:<42} {elapsed:>9.2} {:>9.0} {:>10} {:>9} {:>9}",
        size as f64 / 1e6 / elapsed,
        answer.matched,
        answer.returned,
        answer.output.len()
    );
    Ok(())
}

struct Generated {
    lines: u64,
    /// The time of the first record in the last tenth of the file.
    since: DateTime<Utc>,
}

fn generate(path: &PathBuf, target: u64) -> anyhow::Result<Generated> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let start = DateTime::parse_from_rfc3339(START)?.to_utc();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut written: u64 = 0;
    let mut lines: u64 = 0;
    let mut since = None;
    let mut record: u64 = 0;
    let mut line = String::with_capacity(256);
    while written < target {
        let at = start + TimeDelta::milliseconds(record as i64 * STEP_MS);
        if since.is_none() && written >= target / 10 * 9 {
            since = Some(at);
        }
        let stamp = at.to_rfc3339_opts(SecondsFormat::Millis, true);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        line.clear();
        if record % 100 == 99 {
            line.push_str(&format!(
                "{stamp} ERROR [worker-{}] request {} failed\n\
                 java.net.{PATTERN}: Read timed out after {} ms\n\
                 \tat java.net.SocketInputStream.read(SocketInputStream.java:150)\n\
                 \tat com.example.kiosk.Backend.fetch(Backend.java:{})\n\
                 \tat com.example.kiosk.Worker.run(Worker.java:88)\n",
                rng % 8,
                rng % 100_000,
                rng % 30_000,
                rng % 500,
            ));
            lines += 5;
        } else {
            line.push_str(&format!(
                "{stamp} INFO  [worker-{}] GET /api/v1/items/{} 200 {} ms user={:x}\n",
                rng % 8,
                rng % 100_000,
                rng % 250,
                rng >> 16
            ));
            lines += 1;
        }
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        record += 1;
    }
    out.flush()?;
    Ok(Generated {
        lines,
        since: since.unwrap_or(start),
    })
}

/// The process's peak resident memory, from `/proc/self/status`.
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line["VmHWM:".len()..].trim().to_owned())
}
