//! Progress of a long transfer (hashing and uploading an artifact) on
//! stderr: a bar on a terminal, a line every 10 % otherwise, so a CI log
//! shows that an upload moves without filling up.

use std::io::{IsTerminal, Write};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Lines printed off a terminal: one per tenth of the total.
const STEPS: u64 = 10;

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    how: Show,
}

enum Show {
    Bar(ProgressBar),
    /// The last tenth printed.
    Lines(u64),
    Nothing,
}

impl Progress {
    /// A bar on a terminal, else a line every 10 %.
    pub fn new(label: &str, total: u64) -> Progress {
        Progress::with(label, total, Show::Lines(0))
    }

    /// A bar on a terminal, else nothing: for a step that is quick next to
    /// the one whose lines follow.
    pub fn terminal_only(label: &str, total: u64) -> Progress {
        Progress::with(label, total, Show::Nothing)
    }

    fn with(label: &str, total: u64, off_terminal: Show) -> Progress {
        let how = if std::io::stderr().is_terminal() {
            Show::Bar(bar(label, total))
        } else {
            off_terminal
        };
        Progress {
            label: label.to_owned(),
            total,
            done: 0,
            how,
        }
    }

    /// Counts `n` more bytes done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        match &mut self.how {
            Show::Bar(b) => b.inc(n),
            Show::Lines(shown) => {
                if let Some(step) = step_reached(self.done, self.total, *shown) {
                    *shown = step;
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "{}",
                        line(&self.label, self.done, self.total)
                    );
                }
            }
            Show::Nothing => {}
        }
    }
}

/// The bar is cleared when its transfer is over (or abandoned), so the
/// next message starts on a clean line.
impl Drop for Progress {
    fn drop(&mut self) {
        if let Show::Bar(b) = &self.how {
            b.finish_and_clear();
        }
    }
}

fn bar(label: &str, total: u64) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(label.to_owned())
}

/// The tenth that `done` of `total` reached, if it is past `shown`. An
/// empty total is all done at once.
fn step_reached(done: u64, total: u64, shown: u64) -> Option<u64> {
    let step = if total == 0 {
        STEPS
    } else {
        // u128: `done * STEPS` of a file of exabytes would overflow.
        (u128::from(done) * u128::from(STEPS) / u128::from(total)) as u64
    };
    (step > shown).then_some(step)
}

/// `uploading app.tar.gz: 40% (2.00 MiB of 5.00 MiB)`.
fn line(label: &str, done: u64, total: u64) -> String {
    let percent = (u128::from(done) * 100)
        .checked_div(u128::from(total))
        .unwrap_or(100);
    format!(
        "{label}: {percent}% ({} of {})",
        HumanBytes(done),
        HumanBytes(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_printed_once_per_tenth_reached() {
        let total = 1000;
        let mut shown = 0;
        let mut printed = Vec::new();
        for done in (0..=total).step_by(30) {
            if let Some(s) = step_reached(done, total, shown) {
                shown = s;
                printed.push(s);
            }
        }
        if let Some(s) = step_reached(total, total, shown) {
            printed.push(s);
        }
        assert_eq!(printed, (1..=10).collect::<Vec<_>>());
        assert_eq!(step_reached(0, 0, 0), Some(10), "an empty file is done");
        assert_eq!(step_reached(u64::MAX, u64::MAX, 0), Some(10), "no overflow");
    }

    #[test]
    fn a_line_says_how_far_in_bytes_and_percent() {
        assert_eq!(
            line("uploading app.tar.gz", 2 << 20, 5 << 20),
            "uploading app.tar.gz: 40% (2.00 MiB of 5.00 MiB)"
        );
        assert_eq!(line("uploading e", 0, 0), "uploading e: 100% (0 B of 0 B)");
    }
}
