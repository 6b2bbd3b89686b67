//! Fault points: places where the fault-injection suite makes the agent
//! die as abruptly as a power cut, to prove that the journal never lets a
//! command run twice and never loses its outcome.
//!
//! Compiled in only with the `fault-points` feature (the test suite turns
//! it on; release packages are built without it, and then every point is
//! an empty inline function). Even when compiled in, nothing happens unless
//! `TEND_AGENT_FAULTS` names the point, as a comma-separated list of
//! `point=probability`:
//!
//! ```text
//! TEND_AGENT_FAULTS=after_fetch=0.05,during_action=0.1
//! ```
//!
//! The points, in the order an instruction meets them:
//! - `after_fetch`: instructions fetched (now `delivered`), nothing journaled;
//! - `after_journal`: `started` journaled, `in_progress` not yet reported;
//! - `during_action`: the action's process was spawned and is running;
//! - for an upgrade or restore: `during_download` (a segment was saved),
//!   `after_verify` (the download verified), `after_backup` (the new
//!   version staged beside the old one, which the swap makes the backup),
//!   `during_install` (the swap done or the install command run, before
//!   `after`), `during_health_check` (the health check running);
//! - `before_report`: the final report journaled, not yet sent.
//!
//! The agent aborts (SIGABRT: no destructor runs, nothing is flushed that
//! was not already fsync'd), which is what a crash or a power cut leaves.

/// The names [`hit`] accepts (checked only when the points are compiled in).
#[cfg(feature = "fault-points")]
pub const POINTS: [&str; 9] = [
    "after_fetch",
    "after_journal",
    "during_action",
    "during_download",
    "after_verify",
    "after_backup",
    "during_install",
    "during_health_check",
    "before_report",
];

#[cfg(feature = "fault-points")]
mod enabled {
    use std::collections::HashMap;
    use std::sync::LazyLock;

    /// Probability per point, read once from the environment.
    static FAULTS: LazyLock<HashMap<String, f64>> = LazyLock::new(|| {
        std::env::var("TEND_AGENT_FAULTS")
            .map(|spec| parse(&spec))
            .unwrap_or_default()
    });

    pub(super) fn parse(spec: &str) -> HashMap<String, f64> {
        spec.split(',')
            .filter_map(|item| {
                let (name, p) = item.trim().split_once('=')?;
                let p: f64 = p.trim().parse().ok()?;
                (super::POINTS.contains(&name.trim()) && (0.0..=1.0).contains(&p))
                    .then(|| (name.trim().to_owned(), p))
            })
            .collect()
    }

    pub fn hit(point: &str, about: impl std::fmt::Display) {
        if let Some(&p) = FAULTS.get(point)
            && rand::random::<f64>() < p
        {
            eprintln!("tend-agent: fault point {point} at instruction {about}: aborting");
            std::process::abort();
        }
    }
}

/// Aborts the agent here if the fault suite asked for it (see the module
/// documentation), saying which instruction(s) it was handling (`about`);
/// does nothing otherwise.
#[cfg(feature = "fault-points")]
pub use enabled::hit;

/// Without the `fault-points` feature a fault point is nothing at all.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub fn hit(_point: &str, _about: impl std::fmt::Display) {}

#[cfg(all(test, feature = "fault-points"))]
mod tests {
    #[test]
    fn only_known_points_with_a_probability_are_armed() {
        let armed =
            super::enabled::parse("after_fetch=0.5, during_action=1,nope=1,before_report=2,x");
        assert_eq!(armed.len(), 2);
        assert_eq!(armed["after_fetch"], 0.5);
        assert_eq!(armed["during_action"], 1.0);
    }
}
