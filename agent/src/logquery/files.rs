//! Which files a log source stands for, and opening them without following
//! links.
//!
//! The agent runs as root and applications usually own their log
//! directory. If the agent followed a symbolic link, an application (or
//! whoever took it over) could replace its log with a link to
//! `/etc/shadow` or a private key and have it shipped to the cloud by the
//! next `log_query`. So a source's file, and each of its rotated files,
//! must be a regular file reached without a link in the last component:
//! it is checked with `lstat` for a clear refusal, and opened with
//! `O_NOFOLLOW` and checked again with `fstat` on the open file, so a link
//! or FIFO swapped in between the check and the open is refused too
//! (`O_NONBLOCK` keeps opening a FIFO from hanging). The directories above
//! the file are the administrator's: they are followed as configured and
//! must not be writable by the application.
//!
//! Rotation follows logrotate's naming: `P.1` (newest) … `P.N`, each
//! possibly gzip-compressed as `P.N.gz`.

use std::ffi::OsString;
use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::timestamp::Stamp;
use super::{QueryError, Settings};

/// The built-in source: the agent's own operation log.
pub const OPERATIONS: &str = "operations";

/// Rotated files looked for beyond the live one; logrotate setups keep far
/// fewer, and the bound keeps a directory full of numbered files from
/// turning a query into thousands of `stat` calls.
pub const MAX_ROTATIONS: u32 = 100;

/// One file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub gzip: bool,
}

impl LogFile {
    /// The file name, as listed in the result's `detail.files`.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap_or(self.path.as_os_str())
            .to_string_lossy()
            .into_owned()
    }
}

/// The path that source `name` stands for: one of the configured sources,
/// or the operation log.
pub fn resolve(name: &str, settings: &Settings) -> Result<PathBuf, QueryError> {
    // A name is a key, never a path: refusing these outright means no
    // future change to the lookup can turn one into a path traversal.
    if name.is_empty() || name.contains('/') || name.contains("..") || name.contains('\0') {
        return Err(QueryError::Rejected(format!(
            "{name:?} is not a log source name: it must be non-empty and contain no `/` or `..`"
        )));
    }
    if name == OPERATIONS {
        return Ok(settings.operations_log.clone());
    }
    settings.sources.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = settings
            .sources
            .keys()
            .map(String::as_str)
            .chain([OPERATIONS])
            .collect();
        QueryError::Rejected(format!(
            "unknown log source {name:?}; this device has: {}",
            known.join(", ")
        ))
    })
}

/// The files of the source at `path`, oldest first: rotated files from the
/// highest number down, then `path` itself. A missing `path` is not an
/// error (the log appears later, or was just rotated away). When `since`
/// is given, a rotated file last modified before it is skipped: it cannot
/// hold a newer line.
pub fn discover(path: &Path, since: Option<Stamp>) -> Result<Vec<LogFile>, QueryError> {
    let live = check(path)?.map(|_| LogFile {
        path: path.to_owned(),
        gzip: false,
    });
    let mut files = Vec::new();
    for n in 1..=MAX_ROTATIONS {
        let plain = with_suffix(path, &format!(".{n}"));
        // Both exist while logrotate compresses `P.N` into `P.N.gz`; the
        // plain one is complete, the other may not be yet.
        let found = match check(&plain)? {
            Some(meta) => Some((plain, meta, false)),
            None => {
                let gz = with_suffix(path, &format!(".{n}.gz"));
                check(&gz)?.map(|meta| (gz, meta, true))
            }
        };
        let Some((path, meta, gzip)) = found else {
            break;
        };
        let older_than_since = since.is_some_and(|since| {
            meta.modified()
                .is_ok_and(|mtime| Stamp::of_system_time(mtime) < since)
        });
        if !older_than_since {
            files.push(LogFile { path, gzip });
        }
    }
    files.reverse();
    files.extend(live);
    Ok(files)
}

/// Opens `file` for reading, decompressing `.gz` files on the fly.
pub fn open(file: &LogFile) -> Result<Box<dyn Read + Send>, QueryError> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&file.path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => symlink(&file.path),
            _ => QueryError::unreadable(&file.path, e),
        })?;
    let meta = opened
        .metadata()
        .map_err(|e| QueryError::unreadable(&file.path, e))?;
    kind(&file.path, &meta)?;
    Ok(if file.gzip {
        // Multi-member: `gzip -c a b > c.gz` and some rotators append
        // members, which a plain decoder would stop reading after the first.
        Box::new(MultiGzDecoder::new(opened))
    } else {
        Box::new(opened) as Box<dyn Read + Send>
    })
}

/// `Ok(None)` when `path` does not exist; refuses anything but a regular
/// file.
fn check(path: &Path) -> Result<Option<Metadata>, QueryError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => kind(path, &meta).map(|()| Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(QueryError::unreadable(path, e)),
    }
}

fn kind(path: &Path, meta: &Metadata) -> Result<(), QueryError> {
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        Err(symlink(path))
    } else if file_type.is_dir() {
        Err(QueryError::Rejected(format!(
            "{} is a directory, not a log file",
            path.display()
        )))
    } else if !file_type.is_file() {
        Err(QueryError::Rejected(format!(
            "{} is not a regular file (a FIFO, socket or device is never read)",
            path.display()
        )))
    } else if meta.nlink() > 1 {
        // A hard link is a link too: whoever can write the log directory
        // could link any file readable by the agent into it.
        Err(QueryError::Rejected(format!(
            "{} has {} names (hard links); a log file is read only when it has one",
            path.display(),
            meta.nlink()
        )))
    } else {
        Ok(())
    }
}

fn symlink(path: &Path) -> QueryError {
    QueryError::Rejected(format!(
        "{} is a symbolic link; log files are never read through a link \
         (configure the file it points to instead)",
        path.display()
    ))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}
