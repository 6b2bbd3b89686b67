//! The file-system moves an install is made of, each one durable when it
//! returns: what it wrote is fsync'd, and so is the directory a rename
//! changed, so a power cut right after leaves it done, never half done.
//!
//! A new version is staged beside the installed one (same file system)
//! and swapped in with one `renameat2(RENAME_EXCHANGE)`: at every instant
//! `path` holds either the whole old version or the whole new one, and
//! the other one sits under the staging name, ready to become the backup
//! or to be swapped back.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use rustix::fs::{CWD, RenameFlags};

/// Bytes free for an unprivileged writer on the file system that holds
/// `path` (or its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(existing_ancestor(path)?)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The device of the file system that holds `path` (or its nearest
/// existing ancestor): two paths on one device share free space.
pub fn device_of(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(existing_ancestor(path)?)?.dev())
}

fn existing_ancestor(path: &Path) -> io::Result<&Path> {
    path.ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no existing ancestor"))
}

/// The inode of `path` itself (not of what a symlink points to): how a
/// restart tells whether a swap happened.
pub fn inode(path: &Path) -> io::Result<u64> {
    Ok(fs::symlink_metadata(path)?.ino())
}

pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Swaps the two names atomically; both must exist. The file system must
/// support `RENAME_EXCHANGE` (ext4, xfs, btrfs, f2fs, tmpfs do).
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(|e| {
        let e = io::Error::from(e);
        if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
            io::Error::new(
                e.kind(),
                format!(
                    "the file system under {} cannot swap two names atomically (RENAME_EXCHANGE): {e}",
                    a.display()
                ),
            )
        } else {
            e
        }
    })?;
    sync_parent(a)?;
    sync_parent(b)
}

/// `rename`, then fsync of the directories involved.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_parent(from)?;
    sync_parent(to)
}

/// Removes a file or a whole directory; a missing one is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => sync_parent(path),
    }
}

pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Copies a file's bytes and permissions to `to` (created or truncated),
/// and fsyncs it.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = File::open(from)?;
    let mut dst = File::create(to)?;
    io::copy(&mut src, &mut dst)?;
    dst.set_permissions(src.metadata()?.permissions())?;
    dst.sync_all()?;
    sync_parent(to)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync,
/// rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let mut file = File::create(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    rename(tmp, path)
}

/// As [`write_atomic`], for a file of the state directory: created 0600
/// (see [`crate::private`]).
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let mut file = crate::private::create(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    rename(tmp, path)
}

/// The version in the first line of `file`, if it holds a valid one.
pub fn read_version(file: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(file)
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    let version = text.lines().next()?.trim();
    tend_proto::version::is_valid(version).then(|| version.to_owned())
}

/// The size a gzip stream says its content has (its ISIZE trailer: the
/// size modulo 4 GiB, so a hint, not a bound).
pub fn gzip_content_size(archive: &Path) -> io::Result<u64> {
    let mut file = File::open(archive)?;
    file.seek(SeekFrom::End(-4))?;
    let mut trailer = [0u8; 4];
    file.read_exact(&mut trailer)?;
    Ok(u32::from_le_bytes(trailer).into())
}

/// Unpacks a `.tar.gz` into `dest` (created; it must not exist), whose
/// contents become the archive's top level. Only regular files,
/// directories and links are accepted, and no entry may leave `dest`
/// (absolute paths and `..` are refused). Everything written is on disk
/// when this returns.
pub fn unpack_tar_gz(archive: &Path, dest: &Path) -> io::Result<()> {
    fs::create_dir(dest)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(
        File::open(archive)?,
    )));
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    tar.set_unpack_xattrs(false);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let path = entry.path()?.into_owned();
        if path.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        }) {
            return Err(invalid(format!(
                "the archive entry {} points outside the component",
                path.display()
            )));
        }
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            return Err(invalid(format!(
                "the archive entry {} is neither a file, a directory nor a link",
                path.display()
            )));
        }
        // `unpack_in` also refuses to write through a symlink that leads
        // out of `dest`.
        if !entry.unpack_in(dest)? {
            return Err(invalid(format!(
                "the archive entry {} points outside the component",
                path.display()
            )));
        }
    }
    let dir = File::open(dest)?;
    rustix::fs::syncfs(&dir)?;
    sync_parent(dest)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn exchange_swaps_two_directories_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("VERSION"), "1\n").unwrap();
        fs::write(b.join("VERSION"), "2\n").unwrap();
        let ino_b = inode(&b).unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(read_version(&a.join("VERSION")).as_deref(), Some("2"));
        assert_eq!(read_version(&b.join("VERSION")).as_deref(), Some("1"));
        assert_eq!(inode(&a).unwrap(), ino_b);
        assert!(exchange(&a, &dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_tar_gz_becomes_the_contents_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("VERSION"), "2.0.0\n").unwrap();
        fs::write(src.join("bin/run"), "#!/bin/sh\n").unwrap();
        let archive = dir.path().join("app.tar.gz");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-czf")
            .arg(&archive)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let dest = dir.path().join("dest");
        unpack_tar_gz(&archive, &dest).unwrap();
        assert_eq!(
            read_version(&dest.join("VERSION")).as_deref(),
            Some("2.0.0")
        );
        assert!(dest.join("bin/run").is_file());
        assert!(gzip_content_size(&archive).unwrap() > 1024);
    }

    #[test]
    fn an_archive_that_is_not_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("junk.tar.gz");
        fs::write(&archive, b"not gzip at all").unwrap();
        assert!(unpack_tar_gz(&archive, &dir.path().join("dest")).is_err());
    }

    #[test]
    fn versions_are_read_from_the_first_line_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("VERSION");
        fs::write(&file, "1.2.3\nbuilt yesterday\n").unwrap();
        assert_eq!(read_version(&file).as_deref(), Some("1.2.3"));
        fs::write(&file, "not a version!\n").unwrap();
        assert_eq!(read_version(&file), None);
        assert_eq!(read_version(&dir.path().join("missing")), None);
    }

    #[test]
    fn free_space_is_read_from_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(&dir.path().join("not/yet/there")).unwrap() > 0);
        assert_eq!(
            device_of(&dir.path().join("x")).unwrap(),
            device_of(dir.path()).unwrap()
        );
    }
}
