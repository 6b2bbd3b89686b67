//! The simulator's command line, and the checks that keep a run bounded:
//! in devices, in time, in open connections, and to this machine.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use reqwest::Url;

/// The most devices one run simulates: the largest fleet the benchmarks
/// measure.
pub const MAX_DEVICES: u32 = 100_000;
/// A run measures at most an hour, then stops by itself.
pub const MAX_DURATION_S: u64 = 3600;
pub const MAX_INTERVAL_S: u64 = 3600;
/// Every queued command is read back from the platform at the end, one
/// request each: 100/s for an hour is 360,000 reads, a few minutes.
pub const MAX_COMMANDS_PER_S: f64 = 100.0;
/// Each connection is an open file; this machine allows about 20,000 per
/// process, and the simulator needs a few hundred more for itself.
pub const MAX_CONNECTIONS: u32 = 18_000;
/// Enough to carry 100,000 devices at a 30 s interval (3,300 requests/s at
/// well under a second each) without one file per device.
pub const DEFAULT_CONNECTIONS: u32 = 2000;
/// Files the process needs besides its device connections (runtime,
/// stdio, the platform client, headroom for connections being replaced).
const OTHER_FILES: u64 = 300;
/// Connections per HTTP client: each client's pool is one lock, so a large
/// pool is split among several clients to keep that lock cool.
pub const CONNECTIONS_PER_CLIENT: u32 = 1000;

/// tend-fleet: provisions simulated devices in bulk, runs them as agents
/// (heartbeats, fetches, reports) over pooled keep-alive connections while
/// queuing commands through the platform, then reports rates, latency
/// percentiles and errors. Bounded in devices and time; loopback only.
#[derive(Debug, Clone, Parser)]
#[command(name = "tend-fleet", version)]
pub struct Args {
    /// Base URL of tend-platform (the admin API).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub platform: String,
    /// Base URL of tend-sync (the device API).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub sync: String,
    /// An admin of the tenant the devices are created in.
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// That admin's password (the environment keeps it out of `ps`).
    #[arg(long, env = "TEND_FLEET_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Simulated devices, 1 to 100000.
    #[arg(long)]
    pub devices: u32,
    /// Seconds between a device's heartbeats (±10 % jitter); with
    /// --long-poll, how long a heartbeat asks to be held.
    #[arg(long, default_value_t = 30)]
    pub interval_s: u64,
    /// Seconds measured, at most 3600; the run then drains and stops.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Heartbeats ask to be held (`wait_s` = interval) and the next one
    /// follows the answer's `next_heartbeat_s`.
    #[arg(long)]
    pub long_poll: bool,
    /// Commands (`shutdown`) queued per second to random devices, 0 to 100.
    #[arg(long, default_value_t = 1.0)]
    pub commands_per_s: f64,
    /// Keep-alive connections to the sync server shared by all devices
    /// (default: min(devices, 2000); with --long-poll, one per device).
    #[arg(long)]
    pub connections: Option<u32>,
    /// Print a progress line to stderr this often.
    #[arg(long)]
    pub report_every_s: Option<u64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Allow URLs that are not on this machine (127.0.0.0/8, ::1, localhost).
    #[arg(long)]
    pub allow_remote: bool,
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub platform: Url,
    pub sync: Url,
    pub username: String,
    pub password: String,
    pub devices: u32,
    pub interval: Duration,
    pub duration: Duration,
    pub long_poll: bool,
    pub commands_per_s: f64,
    pub connections: u32,
    /// How many HTTP clients share the connections.
    pub clients: u32,
    pub report_every: Option<Duration>,
    pub json: bool,
}

impl Args {
    /// Checks every bound; the error is one line for the user.
    pub fn plan(self) -> Result<Plan, String> {
        if !(1..=MAX_DEVICES).contains(&self.devices) {
            return Err(format!("--devices must be 1 to {MAX_DEVICES}"));
        }
        if !(1..=MAX_INTERVAL_S).contains(&self.interval_s) {
            return Err(format!("--interval-s must be 1 to {MAX_INTERVAL_S}"));
        }
        if !(1..=MAX_DURATION_S).contains(&self.duration_s) {
            return Err(format!("--duration-s must be 1 to {MAX_DURATION_S}"));
        }
        if !self.commands_per_s.is_finite()
            || !(0.0..=MAX_COMMANDS_PER_S).contains(&self.commands_per_s)
        {
            return Err(format!(
                "--commands-per-s must be 0 to {MAX_COMMANDS_PER_S}"
            ));
        }
        if self.report_every_s == Some(0) {
            return Err("--report-every-s must be at least 1".into());
        }
        let connections = self.connections.unwrap_or(if self.long_poll {
            self.devices
        } else {
            self.devices.min(DEFAULT_CONNECTIONS)
        });
        if !(1..=MAX_CONNECTIONS).contains(&connections) {
            return Err(format!(
                "--connections must be 1 to {MAX_CONNECTIONS} (each is an open file){}",
                if self.long_poll {
                    "; with --long-poll every waiting device holds one, so simulate at most that many"
                } else {
                    ""
                }
            ));
        }
        if self.long_poll && connections < self.devices {
            return Err(format!(
                "with --long-poll every waiting device holds a connection: --connections ({connections}) \
                 must be at least --devices ({})",
                self.devices
            ));
        }
        let platform = checked_url("--platform", &self.platform, self.allow_remote)?;
        let sync = checked_url("--sync", &self.sync, self.allow_remote)?;
        Ok(Plan {
            platform,
            sync,
            username: self.username,
            password: self.password,
            devices: self.devices,
            interval: Duration::from_secs(self.interval_s),
            duration: Duration::from_secs(self.duration_s),
            long_poll: self.long_poll,
            commands_per_s: self.commands_per_s,
            connections,
            clients: connections.div_ceil(CONNECTIONS_PER_CLIENT),
            report_every: self.report_every_s.map(Duration::from_secs),
            json: self.json,
        })
    }
}

/// An http(s) URL; on this machine unless `allow_remote`, because load
/// tests here may only target loopback.
fn checked_url(flag: &str, s: &str, allow_remote: bool) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{flag}: {s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{flag}: {s:?} is not an http(s) URL"));
    }
    if !allow_remote && !is_loopback(&url) {
        return Err(format!(
            "{flag}: {s:?} is not on this machine (127.0.0.0/8, ::1, localhost); \
             pass --allow-remote to load another host"
        ));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(h) if h.eq_ignore_ascii_case("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Refuses a plan that needs more open files than the process may have,
/// given the text of `/proc/self/limits`; better one clear line now than
/// "too many open files" in the middle of a run.
pub fn check_open_files(connections: u32, limits: &str) -> Result<(), String> {
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    match soft {
        Some(soft) if u64::from(connections) + OTHER_FILES > soft => Err(format!(
            "{connections} connections need about {} open files, but this process may open {soft} \
             (ulimit -n): lower --connections",
            u64::from(connections) + OTHER_FILES
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid command line, with `extra` flags added or overriding.
    fn args(extra: &[&str]) -> Args {
        let mut base = vec![
            ("--password", "pw"),
            ("--devices", "1000"),
            ("--interval-s", "2"),
            ("--duration-s", "30"),
        ];
        let mut rest = Vec::new();
        let mut i = 0;
        while i < extra.len() {
            match base.iter_mut().find(|(k, _)| *k == extra[i]) {
                Some(b) => {
                    b.1 = extra[i + 1];
                    i += 2;
                }
                None => {
                    rest.push(extra[i]);
                    i += 1;
                }
            }
        }
        let argv = std::iter::once("tend-fleet")
            .chain(base.into_iter().flat_map(|(k, v)| [k, v]))
            .chain(rest);
        Args::try_parse_from(argv).expect("valid arguments")
    }

    #[test]
    fn defaults_share_at_most_two_thousand_connections() {
        let plan = args(&[]).plan().unwrap();
        assert_eq!(plan.connections, 1000);
        assert_eq!(plan.clients, 1);
        let plan = args(&["--devices", "100000"]).plan().unwrap();
        assert_eq!(plan.connections, 2000);
        assert_eq!(plan.clients, 2);
        assert_eq!(plan.commands_per_s, 1.0);
    }

    #[test]
    fn long_poll_needs_a_connection_per_device() {
        let plan = args(&["--long-poll"]).plan().unwrap();
        assert_eq!(plan.connections, 1000);
        assert!(
            args(&["--long-poll", "--connections", "500"])
                .plan()
                .is_err()
        );
        assert!(args(&["--long-poll", "--devices", "50000"]).plan().is_err());
    }

    #[test]
    fn runs_are_bounded_in_count_time_and_rate() {
        for bad in [
            &["--devices", "0"][..],
            &["--devices", "100001"],
            &["--duration-s", "0"],
            &["--duration-s", "3601"],
            &["--interval-s", "0"],
            &["--commands-per-s", "101"],
            &["--commands-per-s=-1"],
            &["--commands-per-s", "NaN"],
            &["--connections", "0"],
            &["--connections", "18001"],
            &["--report-every-s", "0"],
        ] {
            assert!(args(bad).plan().is_err(), "{bad:?} was accepted");
        }
        assert!(args(&["--commands-per-s", "0"]).plan().is_ok());
    }

    #[test]
    fn only_loopback_urls_unless_allowed() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.8.0.1",
            "http://localhost:1",
            "http://[::1]:8081",
        ] {
            assert!(args(&["--sync", ok]).plan().is_ok(), "{ok} refused");
        }
        for bad in [
            "http://10.0.0.1:8081",
            "http://192.168.1.5",
            "http://example.com",
            "ftp://127.0.0.1",
            "127.0.0.1:8081",
        ] {
            assert!(args(&["--sync", bad]).plan().is_err(), "{bad} accepted");
        }
        assert!(
            args(&["--platform", "http://10.0.0.1", "--allow-remote"])
                .plan()
                .is_ok()
        );
    }

    #[test]
    fn plans_beyond_the_open_file_limit_are_refused() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                20000                files\n";
        assert!(check_open_files(18_000, limits).is_ok());
        assert!(check_open_files(19_800, limits).is_err());
        assert!(check_open_files(18_000, "no such line").is_ok());
    }
}
