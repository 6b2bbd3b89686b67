//! What can go wrong, and the exit code each outcome becomes.
//!
//! Scripts branch on the exit code, so every path out of tendctl goes
//! through [`Exit`]: a command that ran and failed (1) must never look like
//! a request the API refused (3) or a server that could not be reached (4),
//! because only the first means the device did something.

use std::process::ExitCode;

use tend_proto::CommandStatus;

/// tendctl's exit codes. Documented in `--help` and the crate docs; keep
/// the three in agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; with `--wait`, the command succeeded.
    Ok = 0,
    /// 1: the command ended unsuccessfully (failed, rejected, timed_out,
    /// expired, cancelled), or tendctl failed on this machine (its
    /// credentials file could not be written, say).
    Unsuccessful = 1,
    /// 2: usage error: clap's own code, also used for a confirmation that
    /// was not given.
    Usage = 2,
    /// 3: the API refused the request (4xx), including "not logged in".
    Refused = 3,
    /// 4: the server could not be reached, or answered 5xx or nonsense.
    Unavailable = 4,
    /// 5: `--wait` gave up before the command ended.
    WaitTimedOut = 5,
}

impl Exit {
    /// The exit code of a command that `--wait` followed to `status`, or
    /// `None` while it can still change.
    pub fn for_command(status: CommandStatus) -> Option<Exit> {
        match status {
            CommandStatus::Succeeded => Some(Exit::Ok),
            s if s.is_terminal() => Some(Exit::Unsuccessful),
            _ => None,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Why a tendctl invocation stopped early. Its `Display` is the one line
/// printed after `tendctl: `.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The API answered with an error status; `detail` is its
    /// problem+json `detail`.
    #[error("{detail} (HTTP {status})")]
    Api { status: u16, detail: String },
    /// No usable token: none saved, expired, for another server, or the
    /// API answered 401 to it.
    #[error("{0}")]
    NotLoggedIn(String),
    /// No answer at all, or one that is not the API's.
    #[error("{0}")]
    Unreachable(String),
    /// A wrong combination of arguments that clap cannot see.
    #[error("{0}")]
    Usage(String),
    /// `--wait` ran out of time; the command's last state was printed.
    #[error("{0}")]
    WaitTimedOut(String),
    /// A failure on this machine: files, terminal.
    #[error("{0}")]
    Local(String),
}

impl Failure {
    pub fn exit(&self) -> Exit {
        match self {
            Failure::Api { status, .. } if *status < 500 => Exit::Refused,
            Failure::Api { .. } => Exit::Unavailable,
            Failure::NotLoggedIn(_) => Exit::Refused,
            Failure::Unreachable(_) => Exit::Unavailable,
            Failure::Usage(_) => Exit::Usage,
            Failure::WaitTimedOut(_) => Exit::WaitTimedOut,
            Failure::Local(_) => Exit::Unsuccessful,
        }
    }

    /// A local I/O failure, with what tendctl was doing.
    pub fn local(doing: impl std::fmt::Display, e: impl std::fmt::Display) -> Failure {
        Failure::Local(format!("{doing}: {e}"))
    }
}

/// The message for every kind of missing or refused session, so users
/// learn one remedy.
pub const NOT_LOGGED_IN: &str = "not logged in or the session expired: run tendctl login";

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> Failure {
        Failure::Api {
            status,
            detail: "x".into(),
        }
    }

    #[test]
    fn client_errors_are_refusals_and_server_errors_are_unavailability() {
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(api(s).exit(), Exit::Refused, "HTTP {s}");
        }
        for s in [500, 502, 503, 504] {
            assert_eq!(api(s).exit(), Exit::Unavailable, "HTTP {s}");
        }
        assert_eq!(Failure::NotLoggedIn("x".into()).exit(), Exit::Refused);
        assert_eq!(Failure::Unreachable("x".into()).exit(), Exit::Unavailable);
        assert_eq!(Failure::Usage("x".into()).exit(), Exit::Usage);
        assert_eq!(Failure::WaitTimedOut("x".into()).exit(), Exit::WaitTimedOut);
        assert_eq!(Failure::Local("x".into()).exit(), Exit::Unsuccessful);
    }

    #[test]
    fn only_success_exits_zero_and_only_terminal_states_end_a_wait() {
        use CommandStatus::*;
        assert_eq!(Exit::for_command(Succeeded), Some(Exit::Ok));
        for s in [Failed, Rejected, TimedOut, Expired, Cancelled] {
            assert_eq!(Exit::for_command(s), Some(Exit::Unsuccessful), "{s:?}");
        }
        for s in [Queued, Delivered, InProgress] {
            assert_eq!(Exit::for_command(s), None, "{s:?}");
        }
    }

    #[test]
    fn exit_codes_are_the_documented_numbers() {
        let codes = [
            Exit::Ok,
            Exit::Unsuccessful,
            Exit::Usage,
            Exit::Refused,
            Exit::Unavailable,
            Exit::WaitTimedOut,
        ]
        .map(|e| e as u8);
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn an_api_failure_reads_as_detail_and_status() {
        let f = Failure::Api {
            status: 409,
            detail: "the command is delivered".into(),
        };
        assert_eq!(f.to_string(), "the command is delivered (HTTP 409)");
    }
}
