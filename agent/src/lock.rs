//! One agent per state directory.
//!
//! The journal is what keeps a command from running twice, and it only can
//! if a single process reads and appends it: two agents started on the same
//! `state_dir` (a unit file and a forgotten manual run, say) would each load
//! the journal, each fetch the same instruction and each execute it. The
//! first agent takes an exclusive advisory lock on `state_dir/lock` and
//! holds it for its whole life; a second one refuses to start. The kernel
//! drops the lock when the holder exits, however it exits, so a crash never
//! leaves a stale lock behind.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, anyhow};

pub const FILE_NAME: &str = "lock";

/// Held while the agent runs; dropping it releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Locks `state_dir` (creating it if needed), or says which agent holds it.
pub fn acquire(state_dir: &Path) -> anyhow::Result<StateLock> {
    crate::private::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    let path = state_dir.join(FILE_NAME);
    let mut file = crate::private::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(", pid {pid}"),
            };
            return Err(anyhow!(
                "another tend-agent is already running with state_dir {} (it holds {}{holder})",
                state_dir.display(),
                path.display()
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    // The holder's pid, for the operator who finds the second agent
    // refusing to start. Informational only: the lock is what counts.
    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()));
    if let Err(e) = written {
        tracing::debug!(path = %path.display(), "cannot write the pid into the lock file: {e}");
    }
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_on_the_same_state_dir_is_refused_until_the_first_stops() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let first = acquire(&state_dir).unwrap();

        let e = acquire(&state_dir).unwrap_err();
        let message = format!("{e:#}");
        assert!(
            message.contains("another tend-agent is already running")
                && message.contains(&format!("pid {}", std::process::id()))
                && !message.contains('\n'),
            "{message}"
        );

        drop(first);
        acquire(&state_dir).expect("released when the holder is dropped");
    }
}
