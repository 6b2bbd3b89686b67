//! The report at the end of a run, as text for people and as one JSON
//! object for the benchmark scripts (same figures, same names).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::stats::Percentiles;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub devices: u32,
    pub interval_s: u64,
    pub duration_s: u64,
    pub long_poll: bool,
    pub connections: u32,
    pub provisioning: Rate,
    pub authentication: Rate,
    pub heartbeats: Heartbeats,
    /// By `call/kind` (`heartbeat/http_503`, `report/timeout`), whole run.
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub fetches: u64,
    /// Instructions received, repeats included.
    pub instructions: u64,
    /// Instructions started, each id once.
    pub executions: u64,
    pub redelivered: u64,
    /// Reports the server accepted.
    pub reports: u64,
    pub commands: Commands,
}

/// How many things took how long.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub count: u64,
    pub failed: u64,
    pub seconds: f64,
    pub per_s: f64,
}

impl Rate {
    pub fn new(count: u64, failed: u64, seconds: f64) -> Rate {
        Rate {
            count,
            failed,
            seconds: round2(seconds),
            per_s: if seconds > 0.0 {
                round2(count as f64 / seconds)
            } else {
                0.0
            },
        }
    }
}

/// Heartbeats of the measured window (the drain after it is not counted).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Heartbeats {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Answered heartbeats per second of the window.
    pub per_s: f64,
    /// What the fleet asks for: devices / interval.
    pub offered_per_s: f64,
    /// From sending to the whole answer; with long-poll it includes the
    /// time the server held the heartbeat.
    pub latency_ms: Percentiles,
    /// How late heartbeats went out (waiting for a pooled connection, or
    /// the simulator itself saturated): if this grows, the figures measure
    /// the simulator, not the server.
    pub send_lag_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Commands {
    pub queued: u64,
    /// Queue requests the platform refused or did not answer.
    pub queue_failed: u64,
    /// With a `delivered_at` when read back.
    pub delivered: u64,
    pub succeeded: u64,
    /// Every status read back, and `unread` for those that could not be.
    pub statuses: BTreeMap<String, u64>,
    /// `delivered_at - created_at`, as the platform recorded them.
    pub delivery_ms: Percentiles,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn pct(p: &Percentiles) -> String {
    format!(
        "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (n={})",
        p.p50, p.p90, p.p99, p.max, p.count
    )
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let h = &self.heartbeats;
        let c = &self.commands;
        let _ = writeln!(
            s,
            "tend-fleet: {} devices, heartbeat every {} s ({}), {} s measured, {} connections",
            self.devices,
            self.interval_s,
            if self.long_poll {
                "long-poll"
            } else {
                "polling"
            },
            self.duration_s,
            self.connections
        );
        for (what, r) in [
            ("provisioning", &self.provisioning),
            ("authentication", &self.authentication),
        ] {
            let _ = writeln!(
                s,
                "{what:<15} {} devices in {:.2} s ({:.0}/s), {} failed",
                r.count, r.seconds, r.per_s, r.failed
            );
        }
        let _ = writeln!(
            s,
            "heartbeats      {} sent, {} ok, {} failed: {:.1}/s (offered {:.1}/s)",
            h.sent, h.ok, h.failed, h.per_s, h.offered_per_s
        );
        let _ = writeln!(s, "  latency ms    {}", pct(&h.latency_ms));
        let _ = writeln!(s, "  send lag ms   {}", pct(&h.send_lag_ms));
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "errors          {} ({errors})", self.errors_total);
        let _ = writeln!(
            s,
            "devices         {} fetches, {} instructions, {} executions, {} redelivered, {} reports",
            self.fetches, self.instructions, self.executions, self.redelivered, self.reports
        );
        let statuses = c
            .statuses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "commands        {} queued ({} failed to queue), {} delivered, {} succeeded [{statuses}]",
            c.queued, c.queue_failed, c.delivered, c.succeeded
        );
        let _ = writeln!(s, "  queued→delivered ms {}", pct(&c.delivery_ms));
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let p = Percentiles {
            count: 10,
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            max: 4.0,
        };
        Report {
            devices: 1000,
            interval_s: 2,
            duration_s: 30,
            long_poll: false,
            connections: 1000,
            provisioning: Rate::new(1000, 0, 0.5),
            authentication: Rate::new(1000, 0, 2.0),
            heartbeats: Heartbeats {
                sent: 15_000,
                ok: 15_000,
                failed: 0,
                per_s: 500.0,
                offered_per_s: 500.0,
                latency_ms: p,
                send_lag_ms: p,
            },
            errors: BTreeMap::from([("report/http_409".to_owned(), 1)]),
            errors_total: 1,
            fetches: 30,
            instructions: 30,
            executions: 30,
            redelivered: 0,
            reports: 60,
            commands: Commands {
                queued: 30,
                queue_failed: 0,
                delivered: 30,
                succeeded: 30,
                statuses: BTreeMap::from([("succeeded".to_owned(), 30)]),
                delivery_ms: p,
            },
        }
    }

    #[test]
    fn rates_are_counts_over_seconds() {
        let r = Rate::new(1000, 2, 0.4);
        assert_eq!(r.per_s, 2500.0);
        assert_eq!(Rate::new(5, 0, 0.0).per_s, 0.0);
    }

    #[test]
    fn the_json_report_has_the_keys_scripts_read() {
        let v: serde_json::Value = serde_json::from_str(&sample().json()).unwrap();
        for key in [
            "/devices",
            "/provisioning/per_s",
            "/heartbeats/per_s",
            "/heartbeats/latency_ms/p99",
            "/heartbeats/send_lag_ms/max",
            "/errors/report~1http_409",
            "/commands/delivery_ms/p50",
            "/commands/succeeded",
        ] {
            assert!(v.pointer(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn the_text_report_names_every_figure() {
        let t = sample().text();
        assert!(t.contains("500.0/s (offered 500.0/s)"), "{t}");
        assert!(t.contains("p99 3.00"), "{t}");
        assert!(t.contains("report/http_409 1"), "{t}");
        assert!(t.contains("30 queued (0 failed to queue), 30 delivered, 30 succeeded"));
    }
}
