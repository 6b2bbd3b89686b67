//! Artifact downloads: one artifact fetched in byte ranges, resumed where
//! it stopped, and checked against its signed SHA-256 before anything
//! uses it.
//!
//! A device may be on a slow, metered or flaky link, and may lose power
//! midway. The bytes grow in `dir/<sha256>.part`, and the offset reached
//! is recorded in `dir/<sha256>.offset` only once the bytes before it are
//! on disk, so a killed agent, a cut connection or a reboot resumes at the
//! last recorded offset, never from zero. The file becomes `dir/<sha256>`
//! only once its hash is the signed one.
//!
//! The bytes come from a [`Source`]: tend-sync (and the object store it
//! may redirect to), or a peer on the LAN (seed 000). Both write the same
//! files, so a transfer cut halfway goes on from another source at the
//! offset reached; the hash at the end vouches for every byte, whoever
//! sent it.
//!
//! Bodies go to disk chunk by chunk: no range and no file is ever held in
//! memory, so what a download costs the agent does not grow with its size.

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, RANGE, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use sha2::{Digest, Sha256};
use tend_proto::params::ArtifactRef;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::client::{self, Client, ClientError};

/// With small ranges, syncing after each one would cost more than the
/// transfer on flash storage; syncing at least every 256 KiB or 2 s bounds
/// what a crash makes the device fetch again.
const SYNC_BYTES: u64 = 256 * 1024;
const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Reads of the file when hashing it.
const HASH_BUFFER: usize = 64 * 1024;

/// As much of an error body as a report needs to show what the server
/// said; the rest is never read.
const ERROR_BODY_BYTES: usize = 1024;

/// The header that tells a peer which device type asks; a peer serves
/// only devices of its own type.
pub const DEVICE_TYPE_HEADER: &str = "tend-device-type";

/// What to download, where, and until when.
pub struct Request<'a> {
    pub artifact: &'a ArtifactRef,
    /// `state_dir/software/downloads`; created if missing.
    pub dir: &'a Path,
    /// The size of each range asked for (the last one is shorter).
    pub segment_bytes: u64,
    /// When retrying stops and the download gives up.
    pub deadline: Instant,
}

/// What to download from any [`Source`]: the bytes whose SHA-256 the
/// caller trusts, and how large they are.
pub struct Target<'a> {
    /// From a signed instruction or the device's own record, never from
    /// the source.
    pub sha256: &'a str,
    pub size: u64,
    /// Created if missing.
    pub dir: &'a Path,
    /// The size of each range asked for (the last one is shorter).
    pub segment_bytes: u64,
    /// When the download gives up.
    pub deadline: Instant,
}

/// Where a download's bytes come from.
pub enum Source<'a> {
    /// tend-sync's artifact route, with the device token. The server is
    /// the only source, so setbacks are retried with the client's backoff
    /// until the deadline.
    Server {
        client: &'a Client,
        artifact_id: Uuid,
    },
    /// A peer's image route. A peer is one source among several: any
    /// setback ends the download with [`DownloadError::Interrupted`] (what
    /// arrived is kept), so the caller moves on to the next peer instead
    /// of waiting for this one.
    Peer(Peer<'a>),
}

/// One peer's image, and how long to wait for it.
pub struct Peer<'a> {
    /// Without redirects: a peer serves its own bytes or nothing.
    pub http: &'a reqwest::Client,
    /// `http://<addr>/v1/images/<sha256>`.
    pub url: &'a str,
    /// This device's type, sent in [`DEVICE_TYPE_HEADER`].
    pub device_type: &'a str,
    /// A request answered, or a body that moves, within this; otherwise
    /// the peer has stalled.
    pub stall: Duration,
}

impl Source<'_> {
    /// How setbacks are retried; `None`: they end the download.
    fn retry(&self) -> Option<Backoff> {
        match self {
            Source::Server { client, .. } => Some(client.retry.clone()),
            Source::Peer(_) => None,
        }
    }

    /// How long the source may go without answering or sending a byte.
    fn stall(&self) -> Option<Duration> {
        match self {
            Source::Server { .. } => None,
            Source::Peer(peer) => Some(peer.stall),
        }
    }
}

/// How logs name a download.
impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Server { artifact_id, .. } => write!(f, "artifact {artifact_id}"),
            Source::Peer(peer) => write!(f, "{}", peer.url),
        }
    }
}

/// How far a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    pub total: u64,
}

/// A complete, verified download.
#[derive(Debug)]
pub struct Fetched {
    /// `dir/<sha256>`.
    pub path: PathBuf,
    /// The byte it started at: 0 for a fresh download, the artifact's size
    /// when it was already complete.
    pub resumed_from: u64,
}

/// Why a download stopped. Only `Corrupt` removes what was downloaded;
/// after any other error the next [`fetch`] resumes, and [`remove`]
/// clears what a caller no longer wants.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The source will not serve the artifact: from the server, 404 once
    /// no open command of this device names it (cancelled, timed out),
    /// 403, 410; from a peer, 404 for an image it does not hold. Final.
    #[error("the download was refused ({status}): {body}")]
    Refused { status: StatusCode, body: String },
    /// The whole file's SHA-256 is not the signed one; the partial file
    /// was removed.
    #[error("the downloaded file's SHA-256 is {actual}, not the signed {expected}")]
    Corrupt { expected: String, actual: String },
    /// The source's file is not as large as the trusted size says.
    #[error("the source has {actual} bytes for this download, not the {expected} it should")]
    Size { expected: u64, actual: u64 },
    /// An answer no working server gives (another range than the one
    /// asked for, more bytes than announced, a malformed reference).
    #[error("unusable answer: {0}")]
    Unusable(String),
    /// Reading or writing the download's files failed (disk full, for
    /// one). Final.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the download did not finish before its deadline{}", last_error.as_ref().map(|e| format!(" (last: {e})")).unwrap_or_default())]
    TimedOut { last_error: Option<String> },
    /// A source that is not retried (a peer) could not be reached, was
    /// busy, stalled or broke off; what arrived is kept for the next one.
    #[error("{0}")]
    Interrupted(String),
    #[error("the download was cancelled")]
    Cancelled,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Downloads `request.artifact` from tend-sync into `request.dir`,
/// resuming what an earlier call left, and returns the verified file.
///
/// `on_progress` is called once at the start with the offset resumed
/// from, then after each range (its caller decides how often to report),
/// and where a download that fails stopped.
/// Connection errors, timeouts, 5xx, 401, 408 and 429 are retried with
/// the client's backoff (at least the server's `Retry-After`) until
/// `request.deadline`; `stop` ends the download at its next await. Either
/// way, what reached the disk is recorded for the next call.
pub async fn fetch(
    client: &Client,
    request: &Request<'_>,
    on_progress: impl FnMut(Progress),
    stop: &CancellationToken,
) -> Result<Fetched, DownloadError> {
    let artifact = request.artifact;
    let source = Source::Server {
        client,
        artifact_id: artifact.id,
    };
    let target = Target {
        sha256: &artifact.sha256,
        size: artifact.size,
        dir: request.dir,
        segment_bytes: request.segment_bytes,
        deadline: request.deadline,
    };
    fetch_from(&source, &target, on_progress, stop).await
}

/// Downloads `target` from `source` into `target.dir`, resuming what an
/// earlier call left (from this source or another), and returns the
/// verified file. As [`fetch`], except that a source that is not retried
/// ([`Source::Peer`]) ends the download at its first setback.
pub async fn fetch_from(
    source: &Source<'_>,
    target: &Target<'_>,
    mut on_progress: impl FnMut(Progress),
    stop: &CancellationToken,
) -> Result<Fetched, DownloadError> {
    let total = target.size;
    let files = Files::new(target.dir, target.sha256)
        .ok_or_else(|| DownloadError::Unusable(format!("{:?} is not a SHA-256", target.sha256)))?;
    let dir = target.dir.to_owned();
    tokio::task::spawn_blocking(move || crate::private::create_dir_all(&dir))
        .await
        .map_err(io::Error::other)
        .flatten()
        .map_err(io_at(target.dir))?;

    if already_complete(&files, total, stop).await? {
        on_progress(Progress {
            bytes: total,
            total,
        });
        return Ok(Fetched {
            path: files.complete,
            resumed_from: total,
        });
    }

    let partial = Partial::open(&files, total, target.segment_bytes).await?;
    let resumed_from = partial.offset;
    if resumed_from > 0 {
        info!(download = %source, "resuming the download of {source} at byte {resumed_from} of {total}");
    }
    on_progress(Progress {
        bytes: resumed_from,
        total,
    });
    let mut transfer = Transfer {
        source,
        target,
        partial,
        reported: resumed_from,
        on_progress,
        stop,
        last_error: None,
    };
    let transferred = transfer.run().await;
    if transferred.is_err() {
        transfer.report_stop();
    }
    let mut partial = transfer.partial;
    if let Err(e) = transferred {
        if let Err(sync) = partial.persist().await {
            warn!(download = %source, "cannot record how far the download of {source} got: {sync}");
        }
        return Err(e);
    }
    partial.persist().await?;
    drop(partial);

    let actual = sha256_of(&files.part, stop).await?;
    if actual != files.sha256 {
        let (dir, sha256) = (target.dir.to_owned(), files.sha256.clone());
        // Unlinking a large file may take a while on some filesystems.
        let _ = tokio::task::spawn_blocking(move || remove(&dir, &sha256)).await;
        return Err(DownloadError::Corrupt {
            expected: files.sha256,
            actual,
        });
    }
    tokio::fs::rename(&files.part, &files.complete)
        .await
        .map_err(io_at(&files.part))?;
    remove_if_there(&files.offset);
    sync_dir(target.dir).await?;
    Ok(Fetched {
        path: files.complete,
        resumed_from,
    })
}

/// Deletes the download of `sha256` in `dir`, complete or partial. A
/// file that cannot be removed is logged, not returned: nothing else
/// reads it, and the next download of it starts by checking it.
pub fn remove(dir: &Path, sha256: &str) {
    let Some(files) = Files::new(dir, sha256) else {
        warn!("not removing the download {sha256:?}: not a SHA-256");
        return;
    };
    for path in [
        &files.complete,
        &files.part,
        &files.offset,
        &files.offset_tmp,
    ] {
        remove_if_there(path);
    }
}

/// Where the complete, verified download of `sha256` is kept in `dir`.
pub fn path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(sha256.to_ascii_lowercase())
}

/// Deletes every download in `dir`, complete or partial, except those of
/// the digests in `keep` (what a component runs and what its backup
/// holds, which a peer may ask for).
pub fn remove_others(dir: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let digest = name.split('.').next().unwrap_or_default();
        if !keep.iter().any(|k| k.eq_ignore_ascii_case(digest)) {
            remove_if_there(&entry.path());
        }
    }
}

fn remove_if_there(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot remove {}: {e}", path.display()),
    }
}

/// The files of one download.
struct Files {
    /// Lowercase, as the server's ETag and [`sha256_of`] spell it.
    sha256: String,
    complete: PathBuf,
    part: PathBuf,
    offset: PathBuf,
    offset_tmp: PathBuf,
}

impl Files {
    /// `None` unless `sha256` is 64 hex digits, so that a forged reference
    /// cannot name a path outside `dir`.
    fn new(dir: &Path, sha256: &str) -> Option<Files> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let sha256 = sha256.to_ascii_lowercase();
        Some(Files {
            complete: dir.join(&sha256),
            part: dir.join(format!("{sha256}.part")),
            offset: dir.join(format!("{sha256}.offset")),
            offset_tmp: dir.join(format!("{sha256}.offset.tmp")),
            sha256,
        })
    }
}

/// The complete download of `sha256` in `dir` when it is there and still
/// hashes to it (of `size` bytes, when known): a restore needs no source
/// then. One that does not verify is removed.
pub async fn verified_copy(
    dir: &Path,
    sha256: &str,
    size: Option<u64>,
    stop: &CancellationToken,
) -> Result<Option<PathBuf>, DownloadError> {
    let Some(files) = Files::new(dir, sha256) else {
        return Ok(None);
    };
    let total = match size {
        Some(size) => size,
        None => match tokio::fs::metadata(&files.complete).await {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&files.complete)(e)),
        },
    };
    Ok(already_complete(&files, total, stop)
        .await?
        .then_some(files.complete))
}

/// Whether the complete file is already there and verified. One that does
/// not verify is removed, to be downloaded again; leftovers of the
/// download that produced a verified one are removed too.
async fn already_complete(
    files: &Files,
    total: u64,
    stop: &CancellationToken,
) -> Result<bool, DownloadError> {
    let size = match tokio::fs::metadata(&files.complete).await {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_at(&files.complete)(e)),
    };
    if size == total && sha256_of(&files.complete, stop).await? == files.sha256 {
        remove_if_there(&files.part);
        remove_if_there(&files.offset);
        return Ok(true);
    }
    warn!(
        "{} is not the artifact it is named for; downloading it again",
        files.complete.display()
    );
    tokio::fs::remove_file(&files.complete)
        .await
        .map_err(io_at(&files.complete))?;
    Ok(false)
}

/// The `.part` file and the offset recorded for it.
struct Partial {
    /// Opened for appending: every write goes to the end, which is the
    /// offset reached.
    file: tokio::fs::File,
    part: PathBuf,
    offset_path: PathBuf,
    offset_tmp: PathBuf,
    /// Bytes handed to the file.
    offset: u64,
    /// The offset last recorded, with the bytes before it on disk.
    synced: u64,
    synced_at: Instant,
    /// Unrecorded bytes that make a sync due even mid-range: a range's
    /// worth (one sync pair per range), at least [`SYNC_BYTES`].
    sync_bytes: u64,
}

impl Partial {
    /// Opens the partial file at the recorded offset, cutting off what was
    /// written after it: those bytes may not have reached the disk.
    async fn open(files: &Files, total: u64, segment_bytes: u64) -> Result<Partial, DownloadError> {
        let file = tokio::fs::OpenOptions::from(crate::private::options())
            .create(true)
            .append(true)
            .open(&files.part)
            .await
            .map_err(io_at(&files.part))?;
        let len = file.metadata().await.map_err(io_at(&files.part))?.len();
        let recorded = read_offset(&files.offset).await;
        let mut offset = recorded.min(len);
        if offset > total {
            warn!(
                "{} claims more bytes than the artifact has; starting again",
                files.part.display()
            );
            offset = 0;
        }
        if len != offset {
            file.set_len(offset).await.map_err(io_at(&files.part))?;
        }
        let mut partial = Partial {
            file,
            part: files.part.clone(),
            offset_path: files.offset.clone(),
            offset_tmp: files.offset_tmp.clone(),
            offset,
            synced: recorded,
            synced_at: Instant::now(),
            sync_bytes: segment_bytes.max(SYNC_BYTES),
        };
        // A record past the file would, after bytes are appended and the
        // power fails, vouch for bytes that never reached the disk.
        partial.persist().await?;
        Ok(partial)
    }

    async fn append(&mut self, data: &[u8]) -> Result<(), DownloadError> {
        self.file.write_all(data).await.map_err(io_at(&self.part))?;
        self.offset += data.len() as u64;
        if self.offset - self.synced >= self.sync_bytes {
            self.persist().await?;
        }
        Ok(())
    }

    /// At the end of a range: records the offset if the last record is
    /// [`SYNC_INTERVAL`] old.
    async fn range_done(&mut self) -> Result<(), DownloadError> {
        if self.synced_at.elapsed() >= SYNC_INTERVAL {
            self.persist().await?;
        }
        Ok(())
    }

    /// Puts the bytes on disk, then records the offset they reach.
    async fn persist(&mut self) -> Result<(), DownloadError> {
        if self.offset == self.synced {
            return Ok(());
        }
        // `flush` first: tokio's `sync_data` would swallow the error of a
        // write still in flight.
        self.file.flush().await.map_err(io_at(&self.part))?;
        self.file.sync_data().await.map_err(io_at(&self.part))?;
        let (path, tmp, offset) = (
            self.offset_path.clone(),
            self.offset_tmp.clone(),
            self.offset,
        );
        tokio::task::spawn_blocking(move || write_offset(&path, &tmp, offset))
            .await
            .map_err(io::Error::other)
            .flatten()
            .map_err(io_at(&self.offset_path))?;
        self.synced = self.offset;
        self.synced_at = Instant::now();
        if self.offset > 0 {
            crate::fault::hit("during_download", self.offset);
        }
        Ok(())
    }

    /// Empties the file, for a download that must start again.
    async fn restart(&mut self) -> Result<(), DownloadError> {
        self.file.flush().await.map_err(io_at(&self.part))?;
        self.file.set_len(0).await.map_err(io_at(&self.part))?;
        self.offset = 0;
        self.persist().await
    }
}

/// The recorded offset; 0 when there is none or it is unreadable.
async fn read_offset(path: &Path) -> u64 {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            warn!("{} is not an offset; starting again", path.display());
            0
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => {
            warn!("cannot read {}: {e}; starting again", path.display());
            0
        }
    }
}

/// Replaces the offset file in one rename; synced first, so the record
/// after a crash is either the old offset or the new one.
fn write_offset(path: &Path, tmp: &Path, offset: u64) -> io::Result<()> {
    let mut file = crate::private::create(tmp)?;
    writeln!(file, "{offset}")?;
    file.sync_data()?;
    std::fs::rename(tmp, path)
}

/// Makes a rename in `dir` survive a power failure.
async fn sync_dir(dir: &Path) -> Result<(), DownloadError> {
    let owned = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&owned)?.sync_all())
        .await
        .map_err(io::Error::other)
        .flatten()
        .map_err(io_at(dir))
}

/// The SHA-256 of a file in lowercase hex, computed on a blocking thread
/// that gives up when `stop` is cancelled.
async fn sha256_of(path: &Path, stop: &CancellationToken) -> Result<String, DownloadError> {
    let (owned, stop) = (path.to_owned(), stop.clone());
    let hashed = tokio::task::spawn_blocking(move || -> io::Result<Option<String>> {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; HASH_BUFFER];
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(hex(&hasher.finalize())))
    })
    .await
    .map_err(io::Error::other)
    .flatten()
    .map_err(io_at(path))?;
    hashed.ok_or(DownloadError::Cancelled)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Why a request did not bring its range.
enum Setback {
    /// Worth another request after a backoff, and not before `after` (the
    /// server's `Retry-After`).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// The partial file is suspect: start again from byte 0, once; the
    /// error is the answer if it happens again.
    Restart(DownloadError),
    Fail(DownloadError),
}

impl From<DownloadError> for Setback {
    fn from(e: DownloadError) -> Setback {
        Setback::Fail(e)
    }
}

/// One download under way.
struct Transfer<'a, P> {
    source: &'a Source<'a>,
    target: &'a Target<'a>,
    partial: Partial,
    /// The offset last passed to `on_progress`.
    reported: u64,
    on_progress: P,
    stop: &'a CancellationToken,
    /// For the report when the deadline passes.
    last_error: Option<String>,
}

impl<P: FnMut(Progress)> Transfer<'_, P> {
    /// Asks for one range after another until the file is complete.
    async fn run(&mut self) -> Result<(), DownloadError> {
        let (source, total) = (self.source, self.target.size);
        let mut retry = source.retry();
        let mut restarted = false;
        while self.partial.offset < total {
            let before = self.partial.offset;
            let setback = match self.range().await {
                Ok(()) => {
                    if let Some(backoff) = &mut retry {
                        backoff.reset();
                    }
                    continue;
                }
                Err(setback) => setback,
            };
            match setback {
                Setback::Fail(e) => return Err(e),
                // Only the server may make the device drop what it has: a
                // peer that claims the file is shorter is merely skipped.
                Setback::Restart(e) if restarted || retry.is_none() => return Err(e),
                Setback::Restart(e) => {
                    warn!(download = %source, "downloading {source} again from its first byte: {e}");
                    restarted = true;
                    self.partial.restart().await?;
                    self.reported = 0;
                    (self.on_progress)(Progress { bytes: 0, total });
                }
                Setback::Retry { error, after } => {
                    let Some(backoff) = &mut retry else {
                        return Err(DownloadError::Interrupted(error));
                    };
                    // A link that drops now and then but moves the download
                    // on is not a server that is down.
                    if self.partial.offset > before {
                        backoff.reset();
                    }
                    let delay = backoff
                        .next_delay()
                        .max(after.unwrap_or_default().min(backoff.cap()));
                    warn!(
                        download = %source,
                        retry_in_ms = delay.as_millis() as u64,
                        "download of {source} stopped at byte {} of {total}: {error}",
                        self.partial.offset
                    );
                    self.last_error = Some(error);
                    if Instant::now() + delay >= self.target.deadline {
                        return Err(self.timed_out());
                    }
                    // What arrived before the setback is recorded, so a
                    // crash while waiting does not lose it.
                    self.partial.persist().await?;
                    self.watch(tokio::time::sleep(delay)).await?;
                }
            }
        }
        Ok(())
    }

    /// Asks the source for bytes `start..=end`.
    async fn ask(&self, start: u64, end: u64) -> Result<Response, Setback> {
        match self.source {
            Source::Server {
                client,
                artifact_id,
            } => match self
                .watch(client.artifact_range(*artifact_id, start, end))
                .await?
            {
                Ok(response) => Ok(response),
                Err(ClientError::AuthRefused) => Err(Setback::Fail(DownloadError::Refused {
                    status: StatusCode::UNAUTHORIZED,
                    body: ClientError::AuthRefused.to_string(),
                })),
                Err(e) => Err(Setback::Retry {
                    error: e.to_string(),
                    after: None,
                }),
            },
            Source::Peer(peer) => {
                let asked = peer
                    .http
                    .get(peer.url)
                    .header(RANGE, format!("bytes={start}-{end}"))
                    .header(DEVICE_TYPE_HEADER, peer.device_type)
                    .send();
                match self.patiently(asked).await? {
                    Some(Ok(response)) => Ok(response),
                    Some(Err(e)) => Err(Setback::Retry {
                        error: format!("cannot reach the peer: {}", client::chain(&e)),
                        after: None,
                    }),
                    None => Err(self.stalled()),
                }
            }
        }
    }

    /// Asks for the next range and writes what comes back.
    async fn range(&mut self) -> Result<(), Setback> {
        let (source, total) = (self.source, self.target.size);
        let start = self.partial.offset;
        let end = start
            .saturating_add(self.target.segment_bytes.max(1))
            .min(total)
            - 1;
        let response = self.ask(start, end).await?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = header(&response, CONTENT_RANGE);
                let Some((first, last, size)) = range.as_deref().and_then(content_range) else {
                    return Err(Setback::Fail(DownloadError::Unusable(format!(
                        "206 with Content-Range {range:?}"
                    ))));
                };
                if size != total {
                    return Err(size_error(total, size));
                }
                if first != start || last < first || last > end {
                    return Err(Setback::Fail(DownloadError::Unusable(format!(
                        "bytes {first}-{last} in answer to a request for bytes {start}-{end}"
                    ))));
                }
                self.body(response, 0, last - first + 1).await?;
                self.partial.range_done().await?;
                Ok(())
            }
            // The whole artifact: the server (or the object store it sent
            // the device to) ignored the range. The bytes already here are skipped rather
            // than written again, which keeps the recorded offset from
            // going back; the hash at the end vouches for the result.
            StatusCode::OK => {
                if let Some(size) = response.content_length()
                    && size != total
                {
                    return Err(size_error(total, size));
                }
                if start > 0 {
                    warn!(download = %source, "the source sent all of {source} instead of bytes {start}-{end}; skipping the first {start}");
                }
                self.body(response, start, total - start).await
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let range = header(&response, CONTENT_RANGE);
                if let Some(size) = range.as_deref().and_then(unsatisfied_size)
                    && size != total
                {
                    return Err(size_error(total, size));
                }
                Err(Setback::Restart(DownloadError::Refused {
                    status,
                    body: format!("bytes {start}-{end} of {total} are past the end"),
                }))
            }
            _ if status.is_server_error()
                || matches!(
                    status,
                    StatusCode::UNAUTHORIZED
                        | StatusCode::REQUEST_TIMEOUT
                        | StatusCode::TOO_MANY_REQUESTS
                ) =>
            {
                let after = header(&response, RETRY_AFTER)
                    .and_then(|s| s.trim().parse().ok())
                    .map(Duration::from_secs);
                let body = self.error_body(response).await?;
                let who = match source {
                    Source::Server { .. } => "the server",
                    Source::Peer(_) => "the peer",
                };
                Err(Setback::Retry {
                    error: format!("{who} answered {status}: {body}"),
                    after,
                })
            }
            _ => {
                let body = self.error_body(response).await?;
                Err(Setback::Fail(DownloadError::Refused { status, body }))
            }
        }
    }

    /// Appends a body to the file, after dropping its first `skip` bytes;
    /// `len` is what the body should bring after those.
    async fn body(
        &mut self,
        mut response: Response,
        mut skip: u64,
        len: u64,
    ) -> Result<(), Setback> {
        let mut left = len;
        loop {
            let chunk = match self.patiently(response.chunk()).await? {
                Some(Ok(Some(chunk))) => chunk,
                Some(Ok(None)) => break,
                Some(Err(e)) => {
                    return Err(Setback::Retry {
                        error: format!("the transfer broke off: {}", client::chain(&e)),
                        after: None,
                    });
                }
                None => return Err(self.stalled()),
            };
            let mut data = &chunk[..];
            if skip > 0 {
                let n = skip.min(data.len() as u64);
                data = &data[n as usize..];
                skip -= n;
            }
            if data.len() as u64 > left {
                return Err(Setback::Fail(DownloadError::Unusable(format!(
                    "more than the {len} bytes announced"
                ))));
            }
            self.partial.append(data).await?;
            left -= data.len() as u64;
            self.report();
        }
        if left > 0 {
            return Err(Setback::Retry {
                error: format!("the transfer ended after {} of {len} bytes", len - left),
                after: None,
            });
        }
        Ok(())
    }

    /// Calls `on_progress` once per range's worth of bytes, and at the end.
    fn report(&mut self) {
        let (offset, total) = (self.partial.offset, self.target.size);
        if offset - self.reported >= self.target.segment_bytes || offset == total {
            self.reported = offset;
            (self.on_progress)(Progress {
                bytes: offset,
                total,
            });
        }
    }

    /// Tells `on_progress` where a download that failed stopped, so a
    /// caller that moves to another source knows what this one brought.
    fn report_stop(&mut self) {
        if self.partial.offset != self.reported {
            self.reported = self.partial.offset;
            (self.on_progress)(Progress {
                bytes: self.partial.offset,
                total: self.target.size,
            });
        }
    }

    /// The start of an error answer's body, as text.
    async fn error_body(&self, mut response: Response) -> Result<String, DownloadError> {
        let mut bytes = Vec::new();
        while bytes.len() < ERROR_BODY_BYTES
            && let Some(Ok(Some(chunk))) = self.patiently(response.chunk()).await?
        {
            let take = chunk.len().min(ERROR_BODY_BYTES - bytes.len());
            bytes.extend_from_slice(&chunk[..take]);
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some((cut, _)) = text.char_indices().nth(300) {
            text.truncate(cut);
        }
        Ok(text)
    }

    /// Runs `work` unless `stop` is cancelled or the deadline passes first.
    async fn watch<T>(&self, work: impl Future<Output = T>) -> Result<T, DownloadError> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Err(DownloadError::Cancelled),
            _ = tokio::time::sleep_until(self.target.deadline) => Err(self.timed_out()),
            out = work => Ok(out),
        }
    }

    /// As [`Transfer::watch`], and `None` when the source has a stall
    /// limit and `work` takes longer.
    async fn patiently<T>(
        &self,
        work: impl Future<Output = T>,
    ) -> Result<Option<T>, DownloadError> {
        match self.source.stall() {
            Some(stall) => Ok(self.watch(tokio::time::timeout(stall, work)).await?.ok()),
            None => self.watch(work).await.map(Some),
        }
    }

    fn stalled(&self) -> Setback {
        let stall = self.source.stall().unwrap_or_default();
        Setback::Retry {
            error: format!(
                "nothing arrived for {} ms at byte {}",
                stall.as_millis(),
                self.partial.offset
            ),
            after: None,
        }
    }

    fn timed_out(&self) -> DownloadError {
        DownloadError::TimedOut {
            last_error: self.last_error.clone(),
        }
    }
}

fn size_error(expected: u64, actual: u64) -> Setback {
    Setback::Fail(DownloadError::Size { expected, actual })
}

fn header(response: &Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `bytes <first>-<last>/<size>`.
fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        size.trim().parse().ok()?,
    ))
}

/// The size in a 416's `bytes */<size>`.
fn unsatisfied_size(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes */")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

    use super::*;
    use crate::config::Config;

    /// Serves an artifact as tend-sync does: one range as 206 with its
    /// `Content-Range`, 416 past the end, the whole artifact without a
    /// `Range`.
    struct Serves(Vec<u8>);

    impl Respond for Serves {
        fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
            let size = self.0.len() as u64;
            let Some(range) = range_of(request) else {
                return ResponseTemplate::new(200).set_body_bytes(self.0.clone());
            };
            let (first, last) = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
                .unwrap();
            if first >= size {
                return ResponseTemplate::new(416)
                    .insert_header("content-range", format!("bytes */{size}"));
            }
            let last = last.min(size - 1);
            ResponseTemplate::new(206)
                .insert_header("content-range", format!("bytes {first}-{last}/{size}"))
                .set_body_bytes(self.0[first as usize..=last as usize].to_vec())
        }
    }

    fn range_of(request: &wiremock::Request) -> Option<String> {
        request
            .headers
            .get("range")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Bytes that differ from one position to the next, so a range written
    /// at the wrong place changes the hash.
    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn artifact_of(bytes: &[u8]) -> ArtifactRef {
        ArtifactRef {
            id: uuid::Uuid::new_v4(),
            component: "app".into(),
            version: "1.2.3".into(),
            size: bytes.len() as u64,
            sha256: hex(&Sha256::digest(bytes)),
        }
    }

    fn artifact_path(artifact: &ArtifactRef) -> String {
        format!("/device/v1/artifacts/{}", artifact.id)
    }

    /// A server that hands out the token `t`.
    async fn tend_sync() -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/device/v1/auth"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"token": "t", "expires_in": 3600})),
            )
            .mount(&server)
            .await;
        server
    }

    fn client_for(server: &MockServer) -> Client {
        let config = Config::from_toml_str(&format!(
            "server_url = \"{}\"\ndevice_id = \"{}\"\ndevice_secret = \"s\"\nrequest_timeout_s = 5\naccept_unsigned = true\n",
            server.uri(),
            uuid::Uuid::new_v4()
        ))
        .unwrap();
        let mut client = Client::new(&config).unwrap();
        client.retry = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        client
    }

    async fn serve(server: &MockServer, artifact: &ArtifactRef, bytes: &[u8]) {
        Mock::given(method("GET"))
            .and(path(artifact_path(artifact)))
            .respond_with(Serves(bytes.to_vec()))
            .mount(server)
            .await;
    }

    fn request<'a>(artifact: &'a ArtifactRef, dir: &'a Path, segment_bytes: u64) -> Request<'a> {
        Request {
            artifact,
            dir,
            segment_bytes,
            deadline: Instant::now() + Duration::from_secs(30),
        }
    }

    /// Runs a download to its end, with the progress it reported.
    async fn fetch_with_progress(
        client: &Client,
        request: &Request<'_>,
    ) -> (Result<Fetched, DownloadError>, Vec<Progress>) {
        let mut progress = Vec::new();
        let fetched = fetch(
            client,
            request,
            |p| progress.push(p),
            &CancellationToken::new(),
        )
        .await;
        (fetched, progress)
    }

    async fn ranges_asked(server: &MockServer) -> Vec<String> {
        server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() == "GET")
            .map(|r| range_of(r).unwrap_or_default())
            .collect()
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn record(dir: &Path, artifact: &ArtifactRef, part: &[u8], offset: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{}.part", artifact.sha256)), part).unwrap();
        std::fs::write(dir.join(format!("{}.offset", artifact.sha256)), offset).unwrap();
    }

    #[tokio::test]
    async fn a_download_in_small_segments_asks_for_each_byte_range_once_and_verifies_the_file() {
        let server = tend_sync().await;
        let bytes = content(10 * 1024 + 300);
        let artifact = artifact_of(&bytes);
        serve(&server, &artifact, &bytes).await;
        let client = client_for(&server);
        let dir = tempfile::tempdir().unwrap();
        let downloads = dir.path().join("software/downloads");

        let (fetched, progress) =
            fetch_with_progress(&client, &request(&artifact, &downloads, 1024)).await;

        let fetched = fetched.unwrap();
        assert_eq!(fetched.path, downloads.join(&artifact.sha256));
        assert_eq!(fetched.resumed_from, 0);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        assert_eq!(files_in(&downloads), [artifact.sha256.as_str()]);
        let expected: Vec<String> = (0..11)
            .map(|i| format!("bytes={}-{}", i * 1024, (i * 1024 + 1023).min(10_539)))
            .collect();
        assert_eq!(ranges_asked(&server).await, expected);
        let requests = server.received_requests().await.unwrap();
        for r in requests.iter().filter(|r| r.method.as_str() == "GET") {
            assert_eq!(r.headers["authorization"], "Bearer t");
        }
        let reached: Vec<u64> = progress.iter().map(|p| p.bytes).collect();
        let mut steps: Vec<u64> = (0..=10).map(|i| i * 1024).collect();
        steps.push(10_540);
        assert_eq!(reached, steps, "once at the start, then after each range");
        assert!(progress.iter().all(|p| p.total == 10_540));

        // A second call finds the verified file and asks for nothing.
        let (again, progress) =
            fetch_with_progress(&client, &request(&artifact, &downloads, 1024)).await;
        assert_eq!(again.unwrap().resumed_from, 10_540);
        assert_eq!(
            progress,
            [Progress {
                bytes: 10_540,
                total: 10_540
            }]
        );
        assert_eq!(ranges_asked(&server).await.len(), 11);
    }

    #[tokio::test]
    async fn a_download_resumes_at_the_offset_it_had_recorded() {
        let server = tend_sync().await;
        let bytes = content(8000);
        let artifact = artifact_of(&bytes);
        serve(&server, &artifact, &bytes).await;
        let dir = tempfile::tempdir().unwrap();
        // Bytes past the record may never have reached the disk: they are
        // cut off, whatever they are.
        let mut part = bytes[..3000].to_vec();
        part.extend_from_slice(b"torn write");
        record(dir.path(), &artifact, &part, "3000\n");

        let (fetched, progress) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 1024)).await;

        let fetched = fetched.unwrap();
        assert_eq!(fetched.resumed_from, 3000);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        let ranges = ranges_asked(&server).await;
        assert_eq!(ranges[0], "bytes=3000-4023");
        assert_eq!(ranges.len(), 5);
        assert_eq!(
            progress[0],
            Progress {
                bytes: 3000,
                total: 8000
            }
        );
        assert_eq!(files_in(dir.path()), [artifact.sha256.as_str()]);
    }

    #[tokio::test]
    async fn a_cancelled_download_records_its_progress_and_the_next_one_resumes_there() {
        let server = tend_sync().await;
        let bytes = content(8000);
        let artifact = artifact_of(&bytes);
        serve(&server, &artifact, &bytes).await;
        let client = client_for(&server);
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();

        let cancelled = fetch(
            &client,
            &request(&artifact, dir.path(), 1024),
            |p| {
                if p.bytes >= 4096 {
                    stop.cancel();
                }
            },
            &stop,
        )
        .await;

        assert!(
            matches!(cancelled, Err(DownloadError::Cancelled)),
            "{cancelled:?}"
        );
        let offset = dir.path().join(format!("{}.offset", artifact.sha256));
        assert_eq!(std::fs::read_to_string(offset).unwrap(), "4096\n");
        let (fetched, _) =
            fetch_with_progress(&client, &request(&artifact, dir.path(), 1024)).await;
        let fetched = fetched.unwrap();
        assert_eq!(fetched.resumed_from, 4096);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        assert_eq!(ranges_asked(&server).await[4], "bytes=4096-5119");

        remove(dir.path(), &artifact.sha256);
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn bytes_that_are_not_the_signed_ones_are_corrupt_and_leave_nothing_behind() {
        let server = tend_sync().await;
        let bytes = content(5000);
        let mut artifact = artifact_of(&bytes);
        artifact.sha256 = hex(&Sha256::digest(b"what was signed"));
        serve(&server, &artifact, &bytes).await;
        let dir = tempfile::tempdir().unwrap();

        let (fetched, _) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 1024)).await;

        match fetched {
            Err(DownloadError::Corrupt { expected, actual }) => {
                assert_eq!(expected, artifact.sha256);
                assert_eq!(actual, hex(&Sha256::digest(&bytes)));
            }
            other => panic!("{other:?}"),
        }
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_404_is_a_final_refusal() {
        let server = tend_sync().await;
        let artifact = artifact_of(&content(5000));
        Mock::given(method("GET"))
            .and(path(artifact_path(&artifact)))
            .respond_with(
                ResponseTemplate::new(404).set_body_string("no such artifact for this device"),
            )
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();

        let (fetched, _) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 1024)).await;

        match fetched {
            Err(DownloadError::Refused { status, body }) => {
                assert_eq!(status, StatusCode::NOT_FOUND);
                assert_eq!(body, "no such artifact for this device");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ranges_asked(&server).await.len(), 1);
    }

    #[tokio::test]
    async fn a_busy_server_is_asked_again_until_it_serves() {
        let server = tend_sync().await;
        let bytes = content(3000);
        let artifact = artifact_of(&bytes);
        Mock::given(method("GET"))
            .and(path(artifact_path(&artifact)))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .mount(&server)
            .await;
        serve(&server, &artifact, &bytes).await;
        let dir = tempfile::tempdir().unwrap();

        let (fetched, _) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 1024)).await;

        assert_eq!(std::fs::read(fetched.unwrap().path).unwrap(), bytes);
        let ranges = ranges_asked(&server).await;
        assert_eq!(
            ranges,
            [
                "bytes=0-1023",
                "bytes=0-1023",
                "bytes=0-1023",
                "bytes=1024-2047",
                "bytes=2048-2999"
            ]
        );
    }

    #[tokio::test]
    async fn a_server_busy_past_the_deadline_times_the_download_out() {
        let server = tend_sync().await;
        let artifact = artifact_of(&content(3000));
        Mock::given(method("GET"))
            .and(path(artifact_path(&artifact)))
            .respond_with(ResponseTemplate::new(503).set_body_string("too many downloads at once"))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let mut request = request(&artifact, dir.path(), 1024);
        request.deadline = Instant::now() + Duration::from_millis(200);

        let (fetched, _) = fetch_with_progress(&client_for(&server), &request).await;

        match fetched {
            Err(e @ DownloadError::TimedOut { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("503") && text.contains("too many downloads"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_redirect_to_the_object_store_is_followed_without_the_device_token() {
        let server = tend_sync().await;
        let store = MockServer::start().await;
        let bytes = content(10_000);
        let artifact = artifact_of(&bytes);
        Mock::given(method("GET"))
            .and(path(artifact_path(&artifact)))
            .respond_with(ResponseTemplate::new(302).insert_header(
                "location",
                format!("{}/bucket/artifact?X-Amz-Signature=abc", store.uri()),
            ))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bucket/artifact"))
            .respond_with(Serves(bytes.clone()))
            .mount(&store)
            .await;
        let dir = tempfile::tempdir().unwrap();

        let (fetched, _) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 4096)).await;

        assert_eq!(std::fs::read(fetched.unwrap().path).unwrap(), bytes);
        let expected = ["bytes=0-4095", "bytes=4096-8191", "bytes=8192-9999"];
        assert_eq!(ranges_asked(&server).await, expected);
        assert_eq!(ranges_asked(&store).await, expected);
        for r in store.received_requests().await.unwrap() {
            assert!(r.headers.get("authorization").is_none(), "{:?}", r.headers);
        }
    }

    #[tokio::test]
    async fn a_server_that_ignores_ranges_still_completes_the_download() {
        let server = tend_sync().await;
        let bytes = content(6000);
        let artifact = artifact_of(&bytes);
        Mock::given(method("GET"))
            .and(path(artifact_path(&artifact)))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(bytes.clone()))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), &artifact, &bytes[..2000], "2000");

        let (fetched, progress) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 1024)).await;

        let fetched = fetched.unwrap();
        assert_eq!(fetched.resumed_from, 2000);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        assert_eq!(ranges_asked(&server).await, ["bytes=2000-3023"]);
        assert_eq!(
            progress.last(),
            Some(&Progress {
                bytes: 6000,
                total: 6000
            })
        );
    }

    #[tokio::test]
    async fn a_416_starts_the_download_again_from_the_first_byte_once() {
        let server = tend_sync().await;
        let bytes = content(3000);
        let artifact = artifact_of(&bytes);
        Mock::given(method("GET"))
            .and(path(artifact_path(&artifact)))
            .respond_with(ResponseTemplate::new(416).insert_header("content-range", "bytes */3000"))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        serve(&server, &artifact, &bytes).await;
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), &artifact, &bytes[..2000], "2000");

        let (fetched, _) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 1024)).await;

        assert_eq!(std::fs::read(fetched.unwrap().path).unwrap(), bytes);
        assert_eq!(
            ranges_asked(&server).await,
            [
                "bytes=2000-2999",
                "bytes=0-1023",
                "bytes=1024-2047",
                "bytes=2048-2999"
            ]
        );
    }

    #[tokio::test]
    async fn a_complete_file_that_does_not_verify_is_downloaded_again() {
        let server = tend_sync().await;
        let bytes = content(3000);
        let artifact = artifact_of(&bytes);
        serve(&server, &artifact, &bytes).await;
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = bytes.clone();
        damaged[1500] ^= 1;
        std::fs::write(dir.path().join(&artifact.sha256), &damaged).unwrap();

        let (fetched, _) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 1024)).await;

        let fetched = fetched.unwrap();
        assert_eq!(fetched.resumed_from, 0);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_server_with_another_size_for_the_artifact_is_not_downloaded_from() {
        let server = tend_sync().await;
        let bytes = content(3000);
        let mut artifact = artifact_of(&bytes);
        artifact.size = 4000;
        serve(&server, &artifact, &bytes).await;
        let dir = tempfile::tempdir().unwrap();

        let (fetched, _) =
            fetch_with_progress(&client_for(&server), &request(&artifact, dir.path(), 1024)).await;

        assert!(
            matches!(
                fetched,
                Err(DownloadError::Size {
                    expected: 4000,
                    actual: 3000
                })
            ),
            "{fetched:?}"
        );
    }
}
