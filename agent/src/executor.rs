//! Runs an action's configured argv and captures what it printed.
//!
//! The child writes to files under `state_dir/actions/` rather than to
//! pipes: when the agent stops while the command still runs (SIGTERM during
//! a `poweroff`), the child must be able to go on writing, and a closed
//! pipe would kill it with SIGPIPE. Only the tail of each stream is kept for
//! the report, so a chatty command cannot blow up the report body.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tracing::warn;
use uuid::Uuid;

/// How much of stdout and of stderr is kept: enough for any error message,
/// well below what the server accepts in one report.
pub const TAIL_BYTES: u64 = 64 * 1024;

/// The environment variable that tells the action which instruction it
/// performs, so scripts can log or correlate it.
pub const INSTRUCTION_ID_ENV: &str = "TEND_INSTRUCTION_ID";

/// How the command ended.
#[derive(Debug)]
pub enum End {
    Exited(ExitStatus),
    /// It could not be started (missing binary, no permission) or waited for.
    Error(io::Error),
    /// It ran past the instruction's timeout and was killed.
    TimedOut(Duration),
}

#[derive(Debug)]
pub struct ActionResult {
    pub end: End,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

/// The folder for the actions' output files.
pub fn output_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("actions")
}

/// Removes output files left by a previous run: their instruction was
/// decided from the boot id, and nobody will read them.
pub fn clear_output_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), "cannot remove old action output: {e}");
    }
}

/// Runs `argv` to completion or until `timeout`. A child that outlives the
/// caller (the future is dropped at agent shutdown) keeps running.
pub async fn run(
    argv: &[String],
    instruction_id: Uuid,
    dir: &Path,
    timeout: Duration,
) -> ActionResult {
    run_with(argv, instruction_id, dir, timeout, &[], "during_action").await
}

/// [`run`] with extra environment variables, and the fault point met while
/// the child runs.
pub async fn run_with(
    argv: &[String],
    instruction_id: Uuid,
    dir: &Path,
    timeout: Duration,
    env: &[(&str, &str)],
    fault_point: &str,
) -> ActionResult {
    let started = Instant::now();
    let stdout_path = dir.join(format!("{instruction_id}.stdout"));
    let stderr_path = dir.join(format!("{instruction_id}.stderr"));
    let end = match spawn(argv, instruction_id, env, dir, &stdout_path, &stderr_path) {
        Err(e) => End::Error(e),
        Ok(mut child) => match tokio::time::timeout(timeout, async {
            crate::fault::hit(fault_point, instruction_id);
            child.wait().await
        })
        .await
        {
            Ok(Ok(status)) => End::Exited(status),
            Ok(Err(e)) => End::Error(e),
            Err(_) => {
                // Only the direct child is killed; a command that forks
                // helpers into the background owns them.
                if let Err(e) = child.kill().await {
                    warn!(instruction.id = %instruction_id, "cannot kill the timed-out action: {e}");
                }
                End::TimedOut(timeout)
            }
        },
    };
    let result = ActionResult {
        end,
        stdout: tail(&stdout_path),
        stderr: tail(&stderr_path),
        duration: started.elapsed(),
    };
    for path in [&stdout_path, &stderr_path] {
        let _ = fs::remove_file(path);
    }
    result
}

fn spawn(
    argv: &[String],
    instruction_id: Uuid,
    env: &[(&str, &str)],
    dir: &Path,
    stdout: &Path,
    stderr: &Path,
) -> io::Result<tokio::process::Child> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    crate::private::create_dir_all(dir)?;
    Command::new(program)
        .args(args)
        .env(INSTRUCTION_ID_ENV, instruction_id.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(crate::private::create(stdout)?)
        .stderr(crate::private::create(stderr)?)
        // Its own process group, so a Ctrl-C meant for the agent in a
        // terminal does not also interrupt a running shutdown.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
}

fn tail(path: &Path) -> String {
    let read = || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    read()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn output_exit_status_and_instruction_id_are_captured() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let result = run(
            &argv(&[
                "sh",
                "-c",
                "echo out $TEND_INSTRUCTION_ID; echo err >&2; exit 3",
            ]),
            id,
            dir.path(),
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(result.end, End::Exited(s) if s.code() == Some(3)));
        assert_eq!(result.stdout, format!("out {id}\n"));
        assert_eq!(result.stderr, "err\n");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "output files removed"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let result = run(
            &argv(&["/nonexistent/tend-action"]),
            Uuid::new_v4(),
            dir.path(),
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(result.end, End::Error(ref e) if e.kind() == io::ErrorKind::NotFound));
    }

    #[tokio::test]
    async fn only_the_tail_of_a_long_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let result = run(
            &argv(&[
                "sh",
                "-c",
                "head -c 200000 /dev/zero | tr '\\0' a; echo END",
            ]),
            Uuid::new_v4(),
            dir.path(),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(result.stdout.len() as u64, TAIL_BYTES);
        assert!(result.stdout.ends_with("aEND\n"));
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let result = run(
            &argv(&["sleep", "30"]),
            Uuid::new_v4(),
            dir.path(),
            Duration::from_millis(200),
        )
        .await;
        assert!(matches!(result.end, End::TimedOut(_)));
        assert!(result.duration < Duration::from_secs(10));
    }
}
