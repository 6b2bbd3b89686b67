//! The command vocabulary: kinds, lifecycle states and their transitions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest `timeout_s` a command may have (a day): the platform
/// refuses more when a command is created, and the agent never lets an
/// instruction's command run longer, whatever the instruction says.
pub const MAX_TIMEOUT_S: u32 = 86_400;

/// What a command asks a device to do.
///
/// Every kind is listed so that the agent and the platform share one
/// spelling; which kinds the platform accepts is decided there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Reboot,
    Shutdown,
    LogQuery,
    Restore,
    Upgrade,
}

impl CommandKind {
    pub const ALL: [CommandKind; 5] = [
        CommandKind::Reboot,
        CommandKind::Shutdown,
        CommandKind::LogQuery,
        CommandKind::Restore,
        CommandKind::Upgrade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Reboot => "reboot",
            CommandKind::Shutdown => "shutdown",
            CommandKind::LogQuery => "log_query",
            CommandKind::Restore => "restore",
            CommandKind::Upgrade => "upgrade",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no command kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindParseError(pub String);

impl fmt::Display for KindParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown value {:?}", self.0)
    }
}

impl std::error::Error for KindParseError {}

impl FromStr for CommandKind {
    type Err = KindParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| KindParseError(s.to_owned()))
    }
}

/// Where a command is in its lifecycle.
///
/// `queued → delivered → in_progress → succeeded | failed | rejected`, plus
/// `expired` and `cancelled` (only from `queued`) and `timed_out` (from
/// `delivered` or `in_progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Queued,
    Delivered,
    InProgress,
    Succeeded,
    Failed,
    Rejected,
    TimedOut,
    Expired,
    Cancelled,
}

impl CommandStatus {
    pub const ALL: [CommandStatus; 9] = [
        CommandStatus::Queued,
        CommandStatus::Delivered,
        CommandStatus::InProgress,
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::Rejected,
        CommandStatus::TimedOut,
        CommandStatus::Expired,
        CommandStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Delivered => "delivered",
            CommandStatus::InProgress => "in_progress",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
            CommandStatus::Rejected => "rejected",
            CommandStatus::TimedOut => "timed_out",
            CommandStatus::Expired => "expired",
            CommandStatus::Cancelled => "cancelled",
        }
    }

    /// A terminal state is final: nothing moves a command out of it.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            CommandStatus::Queued | CommandStatus::Delivered | CommandStatus::InProgress
        )
    }

    /// Whether a device's report may still change the command.
    ///
    /// Reports come only from the device, so they start from `delivered` or
    /// `in_progress`; a repeated `in_progress` is allowed (an agent that
    /// restarted says it again). Terminal states never change; the caller
    /// decides whether an identical repeat is accepted idempotently, and a
    /// `queued` command was never handed to the device.
    pub fn accepts_reports(self) -> bool {
        matches!(self, CommandStatus::Delivered | CommandStatus::InProgress)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommandStatus {
    type Err = KindParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandStatus::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| KindParseError(s.to_owned()))
    }
}

/// The states a device may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    InProgress,
    Succeeded,
    Failed,
    Rejected,
}

impl ReportStatus {
    pub fn as_status(self) -> CommandStatus {
        match self {
            ReportStatus::InProgress => CommandStatus::InProgress,
            ReportStatus::Succeeded => CommandStatus::Succeeded,
            ReportStatus::Failed => CommandStatus::Failed,
            ReportStatus::Rejected => CommandStatus::Rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_round_trip_through_their_wire_names() {
        for k in CommandKind::ALL {
            assert_eq!(k.as_str().parse::<CommandKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for s in CommandStatus::ALL {
            assert_eq!(s.as_str().parse::<CommandStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("format_disk".parse::<CommandKind>().is_err());
    }

    #[test]
    fn only_delivered_and_in_progress_commands_accept_reports() {
        use CommandStatus::*;
        for s in CommandStatus::ALL {
            let open = matches!(s, Delivered | InProgress);
            assert_eq!(s.accepts_reports(), open, "{s}");
            assert_eq!(
                s.is_terminal(),
                !matches!(s, Queued | Delivered | InProgress)
            );
        }
    }
}
