//! `--wait`: follow a command to its end, with a live status line.
//!
//! The API has no push channel for admins, so this polls
//! `GET /api/v1/commands/{id}` once a second: commands take seconds to
//! minutes, and one small GET a second per waiting admin is nothing to the
//! platform.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;
use tend_proto::CommandStatus;
use tokio::time::Instant;

use crate::client::Client;
use crate::exit::{Exit, Failure};
use crate::output::sanitize_line;

const POLL: Duration = Duration::from_secs(1);

/// How a wait ended.
pub enum Followed {
    /// The command reached a terminal state; the exit code it deserves.
    Ended(Value, Exit),
    /// The time ran out; the command's last known state.
    GaveUp(Value),
}

/// Follows `first` (the command as last seen) until it ends or `timeout`
/// passes. Outages while waiting are ridden out (a platform restart should
/// not end a wait), unless the last poll before the deadline failed too.
pub async fn follow(client: &Client, first: Value, timeout: Duration) -> Result<Followed, Failure> {
    let start = Instant::now();
    let deadline = start + timeout;
    let id = first["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/commands/{id}");
    let mut line = StatusLine::new(std::io::stderr().is_terminal());
    let mut command = first;
    let mut outage: Option<Failure> = None;
    loop {
        let status = command_status(&command);
        line.show(&command, outage.as_ref(), start.elapsed());
        if let Some(exit) = status.and_then(Exit::for_command) {
            line.finish();
            return Ok(Followed::Ended(command, exit));
        }
        let now = Instant::now();
        if now >= deadline {
            line.finish();
            return match outage {
                Some(f) => Err(f),
                None => Ok(Followed::GaveUp(command)),
            };
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
        match client.get(&path, &[]).await {
            Ok(v) => {
                command = v;
                outage = None;
            }
            Err(f @ Failure::Unreachable(_)) => outage = Some(f),
            Err(f @ Failure::Api { status, .. }) if status >= 500 => outage = Some(f),
            Err(f) => {
                line.finish();
                return Err(f);
            }
        }
    }
}

/// The message of a wait that ran out of time.
pub fn gave_up(command: &Value, timeout: Duration) -> Failure {
    Failure::WaitTimedOut(format!(
        "gave up waiting after {}: command {} is still {}",
        elapsed(timeout),
        cell(&command["id"]),
        cell(&command["status"]),
    ))
}

pub fn command_status(command: &Value) -> Option<CommandStatus> {
    serde_json::from_value(command["status"].clone()).ok()
}

fn cell(v: &Value) -> String {
    sanitize_line(v.as_str().unwrap_or("?"))
}

/// `42s`, `3m05s`, `1h02m03s`: short, and sortable by eye.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// The status on stderr: one line redrawn in place on a terminal, a line
/// per change otherwise (a CI log should not fill with repeats).
struct StatusLine {
    tty: bool,
    last: Option<String>,
    drawn: bool,
}

impl StatusLine {
    fn new(tty: bool) -> StatusLine {
        StatusLine {
            tty,
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, command: &Value, outage: Option<&Failure>, took: Duration) {
        let state = describe(command, outage);
        let mut err = std::io::stderr().lock();
        if self.tty {
            // \r and "erase line": the new text may be shorter than the old.
            let _ = write!(err, "\r\x1b[2K{state}  {}", elapsed(took));
            let _ = err.flush();
            self.drawn = true;
        } else if self.last.as_deref() != Some(state.as_str()) {
            let _ = writeln!(err, "{state}  {}", elapsed(took));
        }
        self.last = Some(state);
    }

    /// Ends the redrawn line so what follows starts on a line of its own.
    fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// `<id>  <kind>  <status>`, plus why the status may be stale.
fn describe(command: &Value, outage: Option<&Failure>) -> String {
    let mut s = format!(
        "{}  {}  {}",
        cell(&command["id"]),
        cell(&command["kind"]),
        cell(&command["status"])
    );
    if let Some(f) = outage {
        s.push_str(&format!(" (retrying: {f})"));
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn elapsed_time_is_short() {
        assert_eq!(elapsed(Duration::from_secs(0)), "0s");
        assert_eq!(elapsed(Duration::from_secs(42)), "42s");
        assert_eq!(elapsed(Duration::from_secs(185)), "3m05s");
        assert_eq!(elapsed(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn the_status_line_names_the_command_and_any_outage() {
        let c = json!({"id": "c1", "kind": "reboot", "status": "in_progress"});
        assert_eq!(describe(&c, None), "c1  reboot  in_progress");
        let down = Failure::Unreachable("cannot reach http://x: refused".into());
        assert_eq!(
            describe(&c, Some(&down)),
            "c1  reboot  in_progress (retrying: cannot reach http://x: refused)"
        );
    }

    #[test]
    fn an_unknown_status_keeps_the_wait_going() {
        assert_eq!(
            command_status(&json!({"status": "succeeded"})),
            Some(CommandStatus::Succeeded)
        );
        assert_eq!(command_status(&json!({"status": "paused"})), None);
    }

    #[test]
    fn giving_up_says_where_the_command_was() {
        let c = json!({"id": "c1", "status": "in_progress"});
        let f = gave_up(&c, Duration::from_secs(900));
        assert_eq!(f.exit(), Exit::WaitTimedOut);
        assert_eq!(
            f.to_string(),
            "gave up waiting after 15m00s: command c1 is still in_progress"
        );
    }
}
