//! What a run measures: counters, latency histograms and errors by kind,
//! shared by every simulated device.
//!
//! Latencies go into HDR histograms (three significant digits, 1 µs to one
//! hour), so memory stays the same whether a run records a thousand
//! heartbeats or a hundred million.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use uuid::Uuid;

/// A latency distribution, recorded in microseconds.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

/// The longest latency recorded as itself; longer ones count as this.
const MAX_US: u64 = 3_600_000_000;

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(MAX_US);
        // 0 µs is below the lowest trackable value; loopback can be that fast.
        self.0.saturating_record(us.max(1));
    }

    /// Records `us` microseconds between two timestamps; a negative span
    /// (clocks of two machines, or a clock step) counts as 0.
    pub fn record_signed_us(&mut self, us: i64) {
        self.record(Duration::from_micros(us.max(0) as u64));
    }

    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// A distribution in milliseconds, rounded to 0.01 ms (the histogram keeps
/// three significant digits: 0.1 % of the value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Why a request failed, as the report counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with this status.
    Status(u16),
    Timeout,
    Connect,
    /// An answer that is not what the device API promises.
    Decode,
    /// Any other transport error (connection reset, say).
    Transport,
}

impl Failure {
    pub fn of(e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_connect() {
            Failure::Connect
        } else if e.is_decode() {
            Failure::Decode
        } else {
            Failure::Transport
        }
    }

    pub fn kind(self) -> String {
        match self {
            Failure::Status(s) => format!("http_{s}"),
            Failure::Timeout => "timeout".into(),
            Failure::Connect => "connect".into(),
            Failure::Decode => "decode".into(),
            Failure::Transport => "transport".into(),
        }
    }
}

/// The device API calls the report counts errors of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Auth,
    Heartbeat,
    Fetch,
    Report,
    Queue,
    Read,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Auth => "auth",
            Op::Heartbeat => "heartbeat",
            Op::Fetch => "fetch",
            Op::Report => "report",
            Op::Queue => "queue",
            Op::Read => "read",
        }
    }
}

/// The error key of the report: `heartbeat/http_503`, `fetch/timeout`.
pub fn error_key(op: Op, f: Failure) -> String {
    format!("{}/{}", op.as_str(), f.kind())
}

/// Everything the devices and the command queuer count. Counters are
/// atomics; histograms and maps sit behind locks held for a few
/// nanoseconds per record.
#[derive(Default)]
pub struct Stats {
    pub heartbeats_ok: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    /// Heartbeat answers that said `pending`.
    pub pending: AtomicU64,
    pub fetches: AtomicU64,
    /// Instructions received, repeats included.
    pub instructions: AtomicU64,
    /// Instructions started (reported `in_progress`): each id once.
    pub executions: AtomicU64,
    /// Instructions received again after their final report was accepted.
    pub redelivered: AtomicU64,
    /// Reports the server accepted.
    pub reports: AtomicU64,
    pub commands_queued: AtomicU64,
    latency: Mutex<Latency>,
    lag: Mutex<Latency>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Commands whose final report the server took (or that it had already
    /// ended): the run drains until every queued command is in here.
    finished: Mutex<HashSet<Uuid>>,
}

/// The heartbeat figures at the end of the measured window.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatWindow {
    pub ok: u64,
    pub failed: u64,
    pub latency: Percentiles,
    pub send_lag: Percentiles,
}

impl Stats {
    /// A heartbeat answered 200 after `took`, sent `lag` after its time.
    pub fn heartbeat_ok(&self, took: Duration, lag: Duration) {
        self.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
        lock(&self.latency).record(took);
        lock(&self.lag).record(lag);
    }

    pub fn error(&self, op: Op, f: Failure) {
        if op == Op::Heartbeat {
            self.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
        }
        *lock(&self.errors).entry(error_key(op, f)).or_default() += 1;
    }

    pub fn finished(&self, id: Uuid) {
        lock(&self.finished).insert(id);
    }

    /// How many of `ids` have finished.
    pub fn count_finished(&self, ids: &[Uuid]) -> usize {
        let finished = lock(&self.finished);
        ids.iter().filter(|id| finished.contains(id)).count()
    }

    pub fn finished_count(&self) -> usize {
        lock(&self.finished).len()
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }

    pub fn errors_total(&self) -> u64 {
        lock(&self.errors).values().sum()
    }

    /// Forgets the heartbeats counted so far: the measured window starts
    /// after the warm-up.
    pub fn start_window(&self) {
        self.heartbeats_ok.store(0, Ordering::Relaxed);
        self.heartbeats_failed.store(0, Ordering::Relaxed);
        *lock(&self.latency) = Latency::default();
        *lock(&self.lag) = Latency::default();
    }

    pub fn heartbeat_window(&self) -> HeartbeatWindow {
        HeartbeatWindow {
            ok: self.heartbeats_ok.load(Ordering::Relaxed),
            failed: self.heartbeats_failed.load(Ordering::Relaxed),
            latency: lock(&self.latency).summary(),
            send_lag: lock(&self.lag).summary(),
        }
    }

    pub fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A poisoned lock only means another device task panicked; its figures
/// are still good.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latency::default();
        for ms in 1..=1000 {
            l.record(Duration::from_millis(ms));
        }
        let p = l.summary();
        assert_eq!(p.count, 1000);
        // Three significant digits: within 0.1 % of the exact value.
        for (got, want) in [
            (p.p50, 500.0),
            (p.p90, 900.0),
            (p.p99, 990.0),
            (p.max, 1000.0),
        ] {
            assert!((got - want).abs() <= want * 0.001, "{got} vs {want}");
        }
    }

    #[test]
    fn empty_tiny_and_huge_latencies_are_kept_in_bounds() {
        assert_eq!(Latency::default().summary(), Percentiles::default());
        let mut l = Latency::default();
        l.record(Duration::ZERO);
        l.record_signed_us(-5);
        l.record(Duration::from_secs(10 * 3600));
        let p = l.summary();
        assert_eq!(p.count, 3);
        assert_eq!(p.p50, 0.0);
        assert!((p.max - 3_600_000.0).abs() <= 3_600.0, "{}", p.max);
    }

    #[test]
    fn errors_are_counted_by_call_and_kind() {
        let s = Stats::default();
        s.error(Op::Heartbeat, Failure::Status(503));
        s.error(Op::Heartbeat, Failure::Status(503));
        s.error(Op::Report, Failure::Timeout);
        let e = s.errors();
        assert_eq!(e["heartbeat/http_503"], 2);
        assert_eq!(e["report/timeout"], 1);
        assert_eq!(s.errors_total(), 3);
        assert_eq!(s.heartbeat_window().failed, 2);
    }
}
