//! What happened to an instruction, in the words of a report.
//!
//! These are the rules of DESIGN.md's command lifecycle for the device
//! side, kept free of I/O so they can be read (and tested) in one place:
//! how an action's exit turns into a report, and how a restart decides a
//! reboot or shutdown that was under way when the agent stopped.

use serde_json::json;
use tend_proto::command::{CommandKind, ReportStatus};
use tend_proto::device::Report;

use crate::config::Actions;
use crate::executor::{ActionResult, End};
use crate::system::AGENT_VERSION;

/// The kinds this agent performs by running a configured command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reboot,
    Shutdown,
}

impl Action {
    pub fn of(kind: &str) -> Option<Action> {
        match kind.parse() {
            Ok(CommandKind::Reboot) => Some(Action::Reboot),
            Ok(CommandKind::Shutdown) => Some(Action::Shutdown),
            _ => None,
        }
    }

    pub fn argv(self, actions: &Actions) -> &[String] {
        match self {
            Action::Reboot => &actions.reboot,
            Action::Shutdown => &actions.shutdown,
        }
    }
}

/// What an action's returning command means.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Final(Report),
    /// The reboot command was accepted; only a new boot id can prove that
    /// the machine rebooted, so the instruction stays `in_progress`.
    AwaitRestart,
}

pub fn after_return(action: Action, argv: &[String], result: &ActionResult) -> Verdict {
    let command = argv.join(" ");
    let output = non_empty(&result.stdout);
    let stderr = non_empty(&result.stderr);
    match &result.end {
        End::Exited(status) if status.success() => match action {
            Action::Reboot => Verdict::AwaitRestart,
            Action::Shutdown => Verdict::Final(Report {
                status: ReportStatus::Succeeded,
                output,
                error: None,
                detail: Some(json!({"exit_code": 0, "stderr": stderr})),
            }),
        },
        End::Exited(status) => {
            let mut error = format!("`{command}` ended with {status}");
            if let Some(last) = stderr.as_deref().and_then(|s| s.lines().last()) {
                error.push_str(": ");
                error.push_str(last.trim());
            }
            Verdict::Final(Report {
                status: ReportStatus::Failed,
                output,
                error: Some(error),
                detail: Some(json!({"exit_code": status.code(), "stderr": stderr})),
            })
        }
        End::Error(e) => Verdict::Final(Report {
            status: ReportStatus::Failed,
            output,
            error: Some(format!("cannot run `{command}`: {e}")),
            detail: None,
        }),
        End::TimedOut(after) => Verdict::Final(Report {
            status: ReportStatus::Failed,
            output,
            error: Some(format!(
                "`{command}` did not finish within {} s and was killed",
                after.as_secs()
            )),
            detail: Some(json!({"stderr": stderr})),
        }),
    }
}

/// Decides a reboot or shutdown that was started before the agent last
/// stopped without reaching a final report. A changed boot id means the
/// machine went down; the same boot id means it did not, and the action is
/// failed rather than retried, so a broken reboot can never loop.
pub fn after_restart(action: Action, started_boot_id: &str, current_boot_id: &str) -> Report {
    let detail = Some(json!({
        "boot_id_before": started_boot_id,
        "boot_id_after": current_boot_id,
    }));
    let rebooted = started_boot_id != current_boot_id;
    let (status, error) = match (action, rebooted) {
        (_, true) => (ReportStatus::Succeeded, None),
        (Action::Reboot, false) => (
            ReportStatus::Failed,
            Some(
                "the agent restarted but the boot id did not change: the machine did not reboot (not retried)",
            ),
        ),
        (Action::Shutdown, false) => (
            ReportStatus::Failed,
            Some(
                "the agent restarted before the shutdown command finished, and the machine did not go down",
            ),
        ),
    };
    Report {
        status,
        output: None,
        error: error.map(str::to_owned),
        detail,
    }
}

/// A started instruction that is not an action; only a hand-edited journal
/// holds one, and it cannot be resumed.
pub fn interrupted() -> Report {
    failed("interrupted by an agent restart")
}

pub fn unsupported(kind: &str) -> Report {
    let kind = crate::limits::shorten(kind, crate::limits::MAX_KIND_BYTES);
    rejected(format!(
        "this agent (tend-agent {AGENT_VERSION}) does not support `{kind}` instructions yet"
    ))
}

/// Refuses params larger than [`crate::limits::MAX_PARAMS_BYTES`], and
/// params that do not fit a kind this agent knows (an unknown field, a
/// wrong type): the same rules the platform applies when the command is
/// created ([`tend_proto::params::parse`]), so only a forged or corrupted
/// instruction is refused here. An unknown kind is left to
/// [`unsupported`].
pub fn check_params(instruction: &tend_proto::device::Instruction) -> Result<(), Report> {
    use crate::limits::{MAX_PARAMS_BYTES, json_larger_than};
    if json_larger_than(&instruction.params, MAX_PARAMS_BYTES) {
        return Err(rejected(format!(
            "the params are larger than {MAX_PARAMS_BYTES} bytes: refused, and not kept"
        )));
    }
    match instruction.known_kind() {
        Some(kind) => tend_proto::params::parse(kind, &instruction.params)
            .map(drop)
            .map_err(|e| rejected(format!("the instruction's params are invalid: {e}"))),
        None => Ok(()),
    }
}

fn rejected(error: String) -> Report {
    Report {
        status: ReportStatus::Rejected,
        output: None,
        error: Some(error),
        detail: None,
    }
}

/// An instruction whose signature does not verify ([`crate::trust`]):
/// refused, never run.
pub fn unverified(why: &str) -> Report {
    Report {
        status: ReportStatus::Rejected,
        output: None,
        error: Some(format!(
            "refused: {why}; this device runs only instructions the platform signed for it"
        )),
        detail: None,
    }
}

/// An instruction handed over after its `expires_at` (by this device's
/// clock, with [`crate::runner`]'s tolerance): refused, never run. A
/// command the admin meant for a moment long past is not run now.
pub fn expired(
    expires_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Report {
    Report {
        status: ReportStatus::Rejected,
        output: None,
        error: Some(format!(
            "the instruction expired at {expires_at} and this device's clock says {now}: not running it"
        )),
        detail: None,
    }
}

/// An action journaled `started` but never spawned: the agent stopped (a
/// restart, a power cut) while it was still waiting for the server to
/// accept `in_progress`. A new boot id proves nothing here, and the action
/// is not run late on its own: the admin decides whether to send it again.
pub fn never_spawned() -> Report {
    failed(
        "not performed: the agent stopped before running the action (the server had not yet \
         accepted in_progress); it will not be run",
    )
}

/// The agent could not journal that the action was about to run, so it
/// did not run it: without that record a restart could not tell whether it
/// ran.
pub fn not_journaled(error: &str) -> Report {
    failed(&format!(
        "not performed: cannot journal that the action is about to run: {error}"
    ))
}

/// The server refused a final report as too large (HTTP 413). The same
/// bytes would be refused forever, and a report that never arrives leaves
/// the admin with a command that times out and no reason: so the output
/// is dropped and the instruction reported failed, saying why and keeping
/// the detail (a log query's counts).
pub fn too_large(report: &Report) -> Report {
    let bytes = report.output.as_ref().map_or(0, String::len);
    Report {
        status: ReportStatus::Failed,
        output: None,
        error: Some(format!(
            "the result ({bytes} bytes of output) was refused by the server as too large \
             (HTTP 413); ask for less (fewer lines, a narrower time range) or raise the \
             server's report size limit"
        )),
        detail: report.detail.clone(),
    }
}

/// The server refused the `in_progress` report (the command already ended
/// there, e.g. timed out), so the action was not performed.
pub fn not_performed(http_status: u16) -> Report {
    failed(&format!(
        "not performed: the server refused the in_progress report (HTTP {http_status})"
    ))
}

pub fn failed(error: &str) -> Report {
    Report {
        status: ReportStatus::Failed,
        output: None,
        error: Some(error.to_owned()),
        detail: None,
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.trim().is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Duration;

    use super::*;

    fn with_params(kind: &str, params: serde_json::Value) -> tend_proto::device::Instruction {
        tend_proto::device::Instruction {
            id: uuid::Uuid::new_v4(),
            kind: kind.into(),
            params,
            issued_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
            timeout_s: 60,
            trace_id: None,
            key_id: None,
            signature: None,
        }
    }

    #[test]
    fn params_a_kind_does_not_know_or_too_large_to_keep_are_rejected() {
        for (kind, params) in [
            ("reboot", json!({})),
            ("shutdown", json!({})),
            ("log_query", json!({"source": "app", "max_lines": 5})),
            ("format_disk", json!({"anything": true})),
        ] {
            assert_eq!(
                check_params(&with_params(kind, params.clone())),
                Ok(()),
                "{kind} {params}"
            );
        }
        for (kind, params, why) in [
            ("reboot", json!({"force": true}), "reboot takes no params"),
            ("shutdown", json!(null), "shutdown takes no params"),
            (
                "log_query",
                json!({"source": "app", "path": "/etc/shadow"}),
                "no param \"path\"",
            ),
            (
                "upgrade",
                json!({"artifact_id": uuid::Uuid::new_v4(), "force": 1}),
                "unknown field",
            ),
            (
                "restore",
                json!({"component": "app", "from": "usb"}),
                "unknown field",
            ),
            (
                "reboot",
                json!({"blob": "x".repeat(crate::limits::MAX_PARAMS_BYTES)}),
                "larger than 16384 bytes",
            ),
            (
                "format_disk",
                json!({"blob": "x".repeat(crate::limits::MAX_PARAMS_BYTES)}),
                "larger than",
            ),
        ] {
            let report = check_params(&with_params(kind, params)).unwrap_err();
            assert_eq!(report.status, ReportStatus::Rejected);
            let error = report.error.unwrap();
            assert!(error.contains(why), "{kind}: {error}");
        }
    }

    fn exited(code: i32, stderr: &str) -> ActionResult {
        ActionResult {
            end: End::Exited(ExitStatus::from_raw(code << 8)),
            stdout: String::new(),
            stderr: stderr.into(),
            duration: Duration::ZERO,
        }
    }

    fn argv() -> Vec<String> {
        vec!["systemctl".into(), "reboot".into()]
    }

    #[test]
    fn a_reboot_is_proven_only_by_a_changed_boot_id() {
        let report = after_restart(Action::Reboot, "boot-a", "boot-b");
        assert_eq!(report.status, ReportStatus::Succeeded);
        let report = after_restart(Action::Reboot, "boot-a", "boot-a");
        assert_eq!(report.status, ReportStatus::Failed);
        assert!(report.error.unwrap().contains("did not reboot"));
    }

    #[test]
    fn a_shutdown_interrupted_by_the_machine_going_down_succeeded() {
        let report = after_restart(Action::Shutdown, "boot-a", "boot-b");
        assert_eq!(report.status, ReportStatus::Succeeded);
        let report = after_restart(Action::Shutdown, "boot-a", "boot-a");
        assert_eq!(report.status, ReportStatus::Failed);
        assert!(report.error.unwrap().contains("did not go down"));
    }

    #[test]
    fn a_returning_reboot_waits_and_a_returning_shutdown_succeeds() {
        assert_eq!(
            after_return(Action::Reboot, &argv(), &exited(0, "")),
            Verdict::AwaitRestart
        );
        let Verdict::Final(report) = after_return(Action::Shutdown, &argv(), &exited(0, "")) else {
            panic!("a shutdown that exits 0 is final");
        };
        assert_eq!(report.status, ReportStatus::Succeeded);
    }

    #[test]
    fn a_failing_command_reports_its_status_and_stderr() {
        for action in [Action::Reboot, Action::Shutdown] {
            let Verdict::Final(report) =
                after_return(action, &argv(), &exited(1, "warming up\nAccess denied\n"))
            else {
                panic!("non-zero exit is final");
            };
            assert_eq!(report.status, ReportStatus::Failed);
            let error = report.error.unwrap();
            assert!(
                error.contains("systemctl reboot") && error.ends_with("Access denied"),
                "{error}"
            );
            assert_eq!(report.detail.unwrap()["exit_code"], 1);
        }
    }

    #[test]
    fn only_reboot_and_shutdown_are_actions() {
        assert_eq!(Action::of("reboot"), Some(Action::Reboot));
        assert_eq!(Action::of("shutdown"), Some(Action::Shutdown));
        for kind in ["log_query", "restore", "upgrade", "format_disk"] {
            assert_eq!(Action::of(kind), None);
        }
        assert_eq!(unsupported("upgrade").status, ReportStatus::Rejected);
    }
}
