//! The state directory is the agent's alone: `state_dir` and every
//! directory in it are 0700, every file in it 0600, whatever the umask
//! the agent was started with (systemd's `UMask=`, a shell's 022, an init
//! script's 000).
//!
//! The journal and the operation log hold every instruction's params and
//! outcome (log-query patterns, artifact references), the actions' output
//! files what the commands printed, and the downloads the component images
//! a peer may ask for: none of it is for other users of the device. Files
//! are created with these modes (a umask can only remove bits from them),
//! and [`tighten`] takes back what an older agent or another tool left
//! looser, at every start.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tracing::{info, warn};

/// The mode of `state_dir` and of every directory in it.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file in `state_dir`.
pub const FILE_MODE: u32 = 0o600;

/// How deep [`tighten`] looks: the agent's own layout is two levels deep
/// (`software/downloads/<file>`); a deeper tree is nothing the agent made.
const MAX_DEPTH: usize = 4;

/// `fs::create_dir_all`, with every directory it creates 0700.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Open options that create a file 0600 (an existing file keeps its mode:
/// [`tighten`] fixes those at start).
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// `File::create` (write, create, truncate), created 0600.
pub fn create(path: &Path) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Makes `state_dir` (created if missing) and what it holds no more open
/// than [`DIR_MODE`] and [`FILE_MODE`]. Symbolic links are not followed
/// and are left alone. What cannot be changed (a file of another owner)
/// is logged loudly and does not stop the agent: a device that stops
/// heartbeating is worse than one with a readable file. Returns how many
/// modes were changed.
pub fn tighten(state_dir: &Path) -> io::Result<usize> {
    create_dir_all(state_dir)?;
    let mut changed = 0;
    tighten_one(state_dir, DIR_MODE, &mut changed)?;
    walk(state_dir, 0, &mut changed);
    if changed > 0 {
        info!(
            state_dir = %state_dir.display(),
            "made {changed} state file(s) and directories private (0600 and 0700) that were open to other users"
        );
    }
    Ok(changed)
}

fn walk(dir: &Path, depth: usize, changed: &mut usize) {
    if depth >= MAX_DEPTH {
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!(path = %dir.display(), "cannot list {} to make it private: {e}", dir.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let result = if kind.is_dir() {
            let result = tighten_one(&path, DIR_MODE, changed);
            walk(&path, depth + 1, changed);
            result
        } else if kind.is_file() {
            tighten_one(&path, FILE_MODE, changed)
        } else {
            Ok(())
        };
        if let Err(e) = result {
            warn!(path = %path.display(), "cannot make {} private: {e}", path.display());
        }
    }
}

/// Clears the group and other bits of `path` when any is set, and the
/// owner's execute bit of a file (`mode` says which the kind allows).
fn tighten_one(path: &Path, mode: u32, changed: &mut usize) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let current = meta.permissions().mode() & 0o7777;
    if current & !mode == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(current & mode))?;
    *changed += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn files_and_directories_are_created_private_whatever_the_umask_allows() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        create_dir_all(&state.join("software/downloads")).unwrap();
        assert_eq!(mode(&state), DIR_MODE);
        assert_eq!(mode(&state.join("software/downloads")), DIR_MODE);
        create(&state.join("journal.jsonl")).unwrap();
        assert_eq!(mode(&state.join("journal.jsonl")), FILE_MODE);
        options()
            .create(true)
            .append(true)
            .open(state.join("operations.log"))
            .unwrap();
        assert_eq!(mode(&state.join("operations.log")), FILE_MODE);
    }

    #[test]
    fn a_state_dir_left_open_is_made_private_at_start_and_links_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let open = |path: &Path, m: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(m)).unwrap();
        };
        fs::create_dir_all(state.join("software/downloads")).unwrap();
        fs::create_dir_all(state.join("actions")).unwrap();
        for (file, m) in [
            ("journal.jsonl", 0o644),
            ("operations.log", 0o666),
            ("operations.log.1", 0o640),
            ("lock", 0o600),
            ("software/installed.json", 0o644),
            ("software/downloads/abc.part", 0o755),
        ] {
            fs::write(state.join(file), "x").unwrap();
            open(&state.join(file), m);
        }
        open(&state, 0o755);
        open(&state.join("software"), 0o775);
        open(&state.join("software/downloads"), 0o755);
        open(&state.join("actions"), 0o700);
        // Outside the state dir: a link to it must not be followed.
        let outside = dir.path().join("outside.log");
        fs::write(&outside, "x").unwrap();
        open(&outside, 0o644);
        symlink(&outside, state.join("link.log")).unwrap();

        let changed = tighten(&state).unwrap();
        assert_eq!(changed, 8, "everything looser, and only that");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("software")), 0o700);
        assert_eq!(mode(&state.join("software/downloads")), 0o700);
        assert_eq!(mode(&state.join("actions")), 0o700);
        for file in [
            "journal.jsonl",
            "operations.log",
            "operations.log.1",
            "lock",
            "software/installed.json",
            "software/downloads/abc.part",
        ] {
            assert_eq!(mode(&state.join(file)), 0o600, "{file}");
        }
        assert_eq!(mode(&outside), 0o644, "the link's target is not ours");
        assert_eq!(tighten(&state).unwrap(), 0, "nothing left to change");
    }
}
