//! Where artifact bytes live: [`ArtifactStore`], one interface over a local
//! directory and an S3-compatible object store.
//!
//! Software images run to gigabytes, too big for PostgreSQL and for
//! memory. tend-platform streams uploads into the store and tend-sync
//! streams ranges of them to devices (or hands a device a presigned URL of
//! the object store), so both open the same store, named by
//! `TEND_ARTIFACT_STORE`:
//!
//! - `file:///abs/dir`: a directory, for a single node or a Kubernetes
//!   volume that every replica mounts;
//! - `s3://bucket[/prefix]`: any S3-compatible store, with endpoint,
//!   region and keys from the usual `AWS_*` variables (`AWS_ENDPOINT_URL`,
//!   `AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a plain-http one).
//!
//! Memory stays bounded whatever the object's size: an upload holds at most
//! [`PARTS_IN_FLIGHT`] parts being sent plus one being filled, each
//! [`PART_SIZE`] bytes, that is 24 MiB; a download holds one chunk at a time
//! (16 KiB from a directory, what the HTTP client read from S3).
//!
//! No call waits forever on a store that stalls: each has a deadline
//! ([`CALL_TIMEOUT`], [`PART_TIMEOUT`]) and a download bounds the wait for
//! each chunk ([`CHUNK_TIMEOUT`]), not its total, so a long download at a
//! steady pace is never cut. A store that fails or stalls is
//! [`StoreError::Unavailable`], which a route answers 503.

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Display};
use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    ClientOptions, GetOptions, GetRange, GetResultPayload, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutPayload, RetryConfig,
};
use rustix::io::ReadWriteFlags;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::config::ARTIFACT_STORE;
use crate::error::ApiError;

/// The size of each part of a multipart upload. S3 wants at least 5 MiB
/// for every part but the last and some S3-compatible stores want them all
/// the same size, which fixed 8 MiB parts give. With S3's limit of 10,000
/// parts, an object can reach 78 GiB, far beyond any software image.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts of one upload sent at once. Two keep the connection busy while the
/// next part fills from the client; more would only add memory per upload
/// (see the module header: 24 MiB with three parts of 8 MiB in memory).
pub const PARTS_IN_FLIGHT: usize = 2;

/// The deadline of one store call that moves little data: a HEAD, a
/// DELETE, starting or completing a multipart upload, the headers of a GET.
/// A healthy store answers these in milliseconds; 30 s leaves room for
/// object_store's own retries ([`RETRIES`] within [`RETRY_TIMEOUT`]) and
/// reports a stalled store well before a client gives up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest wait for a part of [`PART_SIZE`] to be stored (or for a
/// body that fits in one part to be PUT). 120 s for 8 MiB is 70 KB/s: a
/// store slower than that is treated as down.
pub const PART_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest wait for the next chunk of a download from the store. The
/// total is unbounded: a gigabyte to a slow device takes what it takes.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// object_store's retries of a failed request (5xx, connection reset), and
/// the time after which it stops retrying: enough to ride out a store that
/// restarts, short enough to fit in [`CALL_TIMEOUT`]. Its defaults (10
/// retries over 3 minutes) would outlast every deadline above.
const RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// The chunk size of a download from a directory. Chunks are read one at a
/// time, when the client has taken the previous one, so this is what a
/// download that waits on a slow device holds; 16 KiB keeps that well under
/// the 64 KB per download that 1,000 concurrent downloads may cost, and
/// is large enough that a cached chunk costs one system call.
const FILE_CHUNK: usize = 16 * 1024;

/// The key [`ArtifactStore::check`] lists; nothing ever writes it, so the
/// answer is an empty list.
const CHECK_KEY: &str = "tend-store-check";

/// What went wrong with a store call, as a route needs to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The body is longer than the limit (in bytes) the caller set; nothing
    /// was kept.
    #[error("the artifact is larger than {0} bytes")]
    TooLarge(u64),
    /// No object under that key.
    #[error("no such object in the artifact store")]
    NotFound,
    /// The client's body failed (connection lost, truncated); nothing was
    /// kept.
    #[error("the upload failed: {0}")]
    Body(String),
    /// A range that is empty or starts at or past the object's end. The
    /// caller checks ranges against the artifact's size first, so this is
    /// a bug, not a client's mistake.
    #[error("range {}..{} is not within the object", .0.start, .0.end)]
    InvalidRange(Range<u64>),
    /// A key that is not a plain name (letters, digits, `-`, `_`, `.`).
    /// Keys are ids chosen by tend, so this too is a bug.
    #[error("{0:?} is not a valid artifact key")]
    InvalidKey(String),
    /// The store failed or did not answer in time; retrying later may work.
    #[error("the artifact store is unavailable: {0}")]
    Unavailable(String),
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound,
            e => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// Follows the policy of [`crate::error`]: what the client did wrong is a
/// 4xx, a store that fails is a 503 logged as a warning and counted, and a
/// caller's bug is an opaque 500.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge(limit) => {
                ApiError::PayloadTooLarge(usize::try_from(limit).unwrap_or(usize::MAX))
            }
            StoreError::NotFound => ApiError::NotFound("the artifact's content is missing".into()),
            StoreError::Body(why) => ApiError::BadRequest(format!("the upload failed: {why}")),
            StoreError::Unavailable(why) => {
                metrics::counter!("tend_backing_store_errors_total", "store" => "artifacts")
                    .increment(1);
                tracing::warn!("artifact store unavailable: {why}");
                ApiError::Unavailable("the artifact store is unavailable; try again shortly".into())
            }
            e @ (StoreError::InvalidRange(_) | StoreError::InvalidKey(_)) => {
                ApiError::Internal(e.into())
            }
        }
    }
}

/// What [`ArtifactStore::put_stream`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    /// The SHA-256 of the bytes, in lowercase hex.
    pub sha256: String,
    /// The SHA-1 and MD5 of the bytes, in lowercase hex: hawkBit DDI
    /// clients are offered them beside the SHA-256.
    pub sha1: String,
    pub md5: String,
}

/// The three digests of an artifact, computed in one pass over its bytes.
#[derive(Default)]
pub struct Digests {
    sha256: Sha256,
    sha1: sha1::Sha1,
    md5: md5::Md5,
    size: u64,
}

impl Digests {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.sha1.update(bytes);
        self.md5.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(self) -> Stored {
        Stored {
            size: self.size,
            sha256: hex(&self.sha256.finalize()),
            sha1: hex(&self.sha1.finalize()),
            md5: hex(&self.md5.finalize()),
        }
    }
}

/// The artifact store of `TEND_ARTIFACT_STORE`. Cheap to clone: one
/// connection pool (S3) shared by every clone.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Joined in front of every key.
    prefix: Path,
    /// The URL it was opened with, for logs and errors.
    url: String,
}

enum Backend {
    Directory { fs: LocalFileSystem, root: PathBuf },
    S3(AmazonS3),
}

impl fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArtifactStore")
            .field(&self.inner.url)
            .finish()
    }
}

/// Where a `TEND_ARTIFACT_STORE` URL points.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    Directory(PathBuf),
    S3 { bucket: String, prefix: Path },
}

const EXPECTED: &str = "expected file:///absolute/directory or s3://bucket[/prefix]";

/// Checks a `TEND_ARTIFACT_STORE` value without touching the store; the
/// error says what is wrong with it. [`crate::config`] calls it at startup.
pub fn validate_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

fn parse_url(raw: &str) -> Result<Location, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{EXPECTED}, got {raw:?} ({e})"))?;
    match url.scheme() {
        "file" => {
            // `file://relative/dir` parses with "relative" as the host,
            // and `file:relative` as `/relative`.
            let host = url.host_str().unwrap_or("");
            if !raw.starts_with("file://") || !(host.is_empty() || host == "localhost") {
                return Err(format!(
                    "{EXPECTED}, got {raw:?}: a file URL needs an absolute path (three slashes)"
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!("{EXPECTED}, got {raw:?}"));
            }
            let dir = url
                .to_file_path()
                .map_err(|()| format!("{EXPECTED}, got {raw:?}: not a directory path"))?;
            Ok(Location::Directory(dir))
        }
        "s3" => {
            let bucket = url.host_str().unwrap_or("");
            if bucket.is_empty() {
                return Err(format!("{EXPECTED}, got {raw:?}: the bucket is missing"));
            }
            if url.port().is_some()
                || !url.username().is_empty()
                || url.password().is_some()
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(format!(
                    "{EXPECTED}, got {raw:?}: the endpoint and keys come from the AWS_* variables, not the URL"
                ));
            }
            let prefix = url.path().trim_matches('/');
            let prefix = Path::parse(prefix)
                .map_err(|e| format!("{EXPECTED}, got {raw:?}: bad prefix ({e})"))?;
            Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix,
            })
        }
        other => Err(format!("{EXPECTED}, got a {other}: URL")),
    }
}

impl ArtifactStore {
    /// Opens the store and checks that it answers, retrying as a service
    /// does for its other backing services at startup.
    pub async fn connect(url: &str) -> anyhow::Result<ArtifactStore> {
        let store = ArtifactStore::open(url)?;
        crate::retry::at_startup("the artifact store", ARTIFACT_STORE, || store.check()).await?;
        Ok(store)
    }

    /// Opens the store `url` names (`file:///abs/dir` or
    /// `s3://bucket[/prefix]`), with the S3 settings of the process's
    /// `AWS_*` variables. A directory is created if missing. Anything else
    /// is an error naming `TEND_ARTIFACT_STORE`. Does not contact the store:
    /// see [`ArtifactStore::check`].
    pub fn open(url: &str) -> anyhow::Result<ArtifactStore> {
        Self::open_with(url, &std::env::vars().collect())
    }

    /// [`ArtifactStore::open`] with the `AWS_*` variables taken from `vars`
    /// rather than the process environment (other keys are ignored), so
    /// tests point it at their own S3 server without `std::env::set_var`.
    pub fn open_with(url: &str, vars: &HashMap<String, String>) -> anyhow::Result<ArtifactStore> {
        let location = parse_url(url).map_err(|why| anyhow::anyhow!("{ARTIFACT_STORE}: {why}"))?;
        let (backend, prefix) = match location {
            Location::Directory(root) => {
                std::fs::create_dir_all(&root).with_context(|| {
                    format!("{ARTIFACT_STORE}: cannot create {}", root.display())
                })?;
                // fsync: an artifact acknowledged as stored must survive a
                // power cut; each is written once, so the cost is small.
                let fs = LocalFileSystem::new_with_prefix(&root)
                    .with_context(|| format!("{ARTIFACT_STORE}: cannot use {}", root.display()))?
                    .with_fsync(true);
                (Backend::Directory { fs, root }, Path::default())
            }
            Location::S3 { bucket, prefix } => {
                // No whole-request timeout: it would cut long downloads.
                // The read timeout bounds each wait for the store instead,
                // and every call here has its own deadline on top.
                let client = ClientOptions::new()
                    .with_timeout_disabled()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_read_timeout(CHUNK_TIMEOUT);
                let retry = RetryConfig {
                    max_retries: RETRIES,
                    retry_timeout: RETRY_TIMEOUT,
                    ..RetryConfig::default()
                };
                let mut builder = AmazonS3Builder::new()
                    .with_client_options(client)
                    .with_retry(retry);
                // What AmazonS3Builder::from_env does, from `vars`.
                for (key, value) in vars {
                    if key.starts_with("AWS_")
                        && let Ok(config) = key.to_ascii_lowercase().parse()
                    {
                        builder = builder.with_config(config, value);
                    }
                }
                let s3 = builder
                    .with_bucket_name(&bucket)
                    .build()
                    .with_context(|| format!("{ARTIFACT_STORE}: cannot use bucket {bucket}"))?;
                (Backend::S3(s3), prefix)
            }
        };
        Ok(ArtifactStore {
            inner: Arc::new(Inner {
                backend,
                prefix,
                url: url.to_owned(),
            }),
        })
    }

    fn object_store(&self) -> &dyn ObjectStore {
        match &self.inner.backend {
            Backend::Directory { fs, .. } => fs,
            Backend::S3(s3) => s3,
        }
    }

    /// The object's path: the key under the URL's prefix.
    fn path(&self, key: &str) -> Result<Path, StoreError> {
        let plain = !key.is_empty()
            && key.len() <= 200
            && key != "."
            && key != ".."
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !plain {
            return Err(StoreError::InvalidKey(key.to_owned()));
        }
        Ok(self.inner.prefix.clone().join(key))
    }

    /// Streams `body` into the object `key`, computing its size and SHA-256
    /// on the way, with bounded memory (see the module header). A body
    /// that fits in one part is sent in one PUT, a longer one as a
    /// multipart upload; either way the object appears whole or not at all
    /// (a directory store writes a staging file and renames it).
    ///
    /// A body longer than `limit` bytes is [`StoreError::TooLarge`], a
    /// failing body [`StoreError::Body`], a failing store
    /// [`StoreError::Unavailable`]; after any error the upload is aborted
    /// and `key` holds no new object. If the future is dropped halfway (the
    /// client went away), the upload is aborted in the background.
    ///
    /// Meant for a key that holds nothing yet: when the last step (the PUT
    /// or completing the multipart upload) fails, the key is deleted, since
    /// the store may have kept the object without answering.
    pub async fn put_stream<S, E>(
        &self,
        key: &str,
        body: S,
        limit: u64,
    ) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let path = self.path(key)?;
        let mut upload = None;
        let result = self.upload(&path, body, limit, &mut upload).await;
        match result {
            Ok(stored) => Ok(stored),
            Err(Failure { error, committing }) => {
                if let Some(parts) = upload.take() {
                    parts.abort().await;
                }
                if committing {
                    let _ = self.delete(key).await;
                }
                Err(error)
            }
        }
    }

    async fn upload<S, E>(
        &self,
        path: &Path,
        mut body: S,
        limit: u64,
        upload: &mut Option<Parts>,
    ) -> Result<Stored, Failure>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let mut digests = Digests::default();
        let mut pending = Pending::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Failure::before(StoreError::Body(e.to_string())))?;
            if digests.size() + chunk.len() as u64 > limit {
                return Err(Failure::before(StoreError::TooLarge(limit)));
            }
            digests.update(&chunk);
            pending.push(chunk);
            while pending.len >= PART_SIZE {
                let part = pending.take(PART_SIZE);
                let parts = match upload {
                    Some(parts) => parts,
                    None => upload.insert(
                        Parts::start(self.object_store(), path)
                            .await
                            .map_err(Failure::before)?,
                    ),
                };
                parts.send(part).await.map_err(Failure::before)?;
            }
        }
        match upload {
            None => {
                let payload = pending.take(pending.len);
                deadline(PART_TIMEOUT, "storing the artifact", async {
                    self.object_store().put(path, payload).await
                })
                .await
                .map_err(Failure::committing)?;
            }
            Some(parts) => {
                if pending.len > 0 {
                    let last = pending.take(pending.len);
                    parts.send(last).await.map_err(Failure::before)?;
                }
                parts.finish().await?;
            }
        }
        Ok(digests.finish())
    }

    /// Reads the object `key` of `size` bytes through once and returns its
    /// digests: for artifacts stored before SHA-1 and MD5 were kept.
    pub async fn digests(&self, key: &str, size: u64) -> Result<Stored, StoreError> {
        let mut digests = Digests::default();
        if size > 0 {
            let mut bytes = self.get_range(key, 0..size).await?;
            while let Some(chunk) = bytes.next().await {
                digests.update(&chunk?);
            }
        }
        Ok(digests.finish())
    }

    /// Deletes the object `key`; deleting a missing one is Ok.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match deadline(CALL_TIMEOUT, "deleting an artifact", async {
            self.object_store().delete(&path).await
        })
        .await
        {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The bytes of `range` (end exclusive) of the object `key`, streamed.
    /// `NotFound` when the object is missing. The range must start within
    /// the object (its size is in the database, or from
    /// [`ArtifactStore::size`]); one that goes past the end stops at the
    /// end. Each chunk's wait is bounded by [`CHUNK_TIMEOUT`], and a stream
    /// that ends before the range does ends with an error, so a client
    /// never takes a short body for a whole one.
    pub async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let path = self.path(key)?;
        if range.start >= range.end {
            return Err(StoreError::InvalidRange(range));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let result = match deadline(CALL_TIMEOUT, "reading an artifact", async {
            self.object_store().get_opts(&path, options).await
        })
        .await
        {
            Ok(result) => result,
            // A start past the end fails the GET like a broken store would
            // (a 416 from S3, an I/O error from a file); the size tells them
            // apart.
            Err(StoreError::Unavailable(why)) if range.start > 0 => {
                return Err(match self.size(key).await {
                    Ok(size) if range.start >= size => StoreError::InvalidRange(range),
                    _ => StoreError::Unavailable(why),
                });
            }
            Err(e) => return Err(e),
        };
        let expected = result.range.end - result.range.start;
        let chunks: BoxStream<'static, Result<Bytes, StoreError>> = match result.payload {
            GetResultPayload::File(file, _) => file_stream(file, result.range.start, expected),
            GetResultPayload::Stream(s) => s.map(|c| c.map_err(StoreError::from)).boxed(),
        };
        Ok(bounded_stream(chunks, expected))
    }

    /// The size in bytes of the object `key` (a HEAD).
    pub async fn size(&self, key: &str) -> Result<u64, StoreError> {
        let path = self.path(key)?;
        let meta = deadline(CALL_TIMEOUT, "asking an artifact's size", async {
            self.object_store().head(&path).await
        })
        .await?;
        Ok(meta.size)
    }

    /// A URL from which a client can GET the object `key` (with `Range`)
    /// directly from the object store, valid for `expires`: a presigned
    /// GET for S3, `None` for a directory, which only tend can read.
    /// Signing is local; it checks neither that the object exists nor that
    /// the client can reach the store's endpoint.
    pub async fn presigned_get(
        &self,
        key: &str,
        expires: Duration,
    ) -> Result<Option<url::Url>, StoreError> {
        let path = self.path(key)?;
        match &self.inner.backend {
            Backend::Directory { .. } => Ok(None),
            Backend::S3(s3) => {
                // Bounded: signing may first fetch credentials (instance
                // metadata, web identity).
                let url = deadline(CALL_TIMEOUT, "signing an artifact URL", async {
                    s3.signed_url(http::Method::GET, &path, expires).await
                })
                .await?;
                Ok(Some(url))
            }
        }
    }

    /// Whether the store answers, for `/readyz` and startup: the directory
    /// exists, or the bucket answers a listing with these credentials (of
    /// a prefix that matches nothing, so the answer is small; a HEAD would
    /// not do, as S3 answers a HEAD in a missing bucket with a bare 404,
    /// like a missing object). Bounded by [`CALL_TIMEOUT`].
    pub async fn check(&self) -> Result<(), StoreError> {
        match &self.inner.backend {
            Backend::Directory { root, .. } => {
                let root = root.clone();
                let meta = tokio::time::timeout(CALL_TIMEOUT, tokio::fs::metadata(&root))
                    .await
                    .map_err(|_| timed_out("checking the artifact directory", CALL_TIMEOUT))?
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", root.display())))?;
                if meta.is_dir() {
                    Ok(())
                } else {
                    Err(StoreError::Unavailable(format!(
                        "{} is not a directory",
                        root.display()
                    )))
                }
            }
            Backend::S3(s3) => {
                let probe = self.path(CHECK_KEY)?;
                match deadline(CALL_TIMEOUT, "listing the bucket", async {
                    s3.list_with_delimiter(Some(&probe)).await
                })
                .await
                {
                    Ok(_) => Ok(()),
                    Err(StoreError::NotFound) => Err(StoreError::Unavailable(format!(
                        "no such bucket in {}",
                        self.inner.url
                    ))),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// An error of [`ArtifactStore::upload`], and whether it came at the last
/// step, after which the store may hold the object anyway.
struct Failure {
    error: StoreError,
    committing: bool,
}

impl Failure {
    fn before(error: StoreError) -> Self {
        Failure {
            error,
            committing: false,
        }
    }

    fn committing(error: StoreError) -> Self {
        Failure {
            error,
            committing: true,
        }
    }
}

/// Body bytes not yet sent: less than one part, plus the chunk just read.
#[derive(Default)]
struct Pending {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Pending {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// The first `n` bytes (n <= len), without copying them.
    fn take(&mut self, n: usize) -> PutPayload {
        let mut taken = Vec::new();
        let mut left = n;
        while left > 0 {
            let Some(first) = self.chunks.front_mut() else {
                break;
            };
            if first.len() <= left {
                left -= first.len();
                taken.extend(self.chunks.pop_front());
            } else {
                taken.push(first.split_to(left));
                left = 0;
            }
        }
        self.len -= n;
        taken.into_iter().collect()
    }
}

/// A multipart upload under way, with its parts in flight. Dropped before
/// [`Parts::finish`] or [`Parts::abort`] (the request was cancelled), it
/// aborts the upload in the background: S3 keeps the parts of an upload
/// nobody aborts, and bills them, until a lifecycle rule removes them.
struct Parts {
    upload: Option<Box<dyn MultipartUpload>>,
    in_flight: JoinSet<object_store::Result<()>>,
}

impl Parts {
    async fn start(store: &dyn ObjectStore, path: &Path) -> Result<Parts, StoreError> {
        let upload = deadline(CALL_TIMEOUT, "starting an upload", async {
            store.put_multipart(path).await
        })
        .await?;
        Ok(Parts {
            upload: Some(upload),
            in_flight: JoinSet::new(),
        })
    }

    /// Sends a part, after waiting until fewer than [`PARTS_IN_FLIGHT`] are
    /// in flight: this wait is what holds the client's body back.
    async fn send(&mut self, part: PutPayload) -> Result<(), StoreError> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_for_one().await?;
        }
        let upload = self.upload.as_mut().expect("an upload under way");
        self.in_flight.spawn(upload.put_part(part));
        Ok(())
    }

    async fn wait_for_one(&mut self) -> Result<(), StoreError> {
        match tokio::time::timeout(PART_TIMEOUT, self.in_flight.join_next()).await {
            Err(_) => Err(timed_out("storing a part of the artifact", PART_TIMEOUT)),
            Ok(None) => Ok(()),
            Ok(Some(Err(join))) => Err(StoreError::Unavailable(format!("part upload: {join}"))),
            Ok(Some(Ok(result))) => result.map_err(StoreError::from),
        }
    }

    /// Waits for every part, then completes the upload.
    async fn finish(&mut self) -> Result<(), Failure> {
        while !self.in_flight.is_empty() {
            self.wait_for_one().await.map_err(Failure::before)?;
        }
        let upload = self.upload.as_mut().expect("an upload under way");
        deadline(CALL_TIMEOUT, "completing the upload", upload.complete())
            .await
            .map_err(Failure::committing)?;
        self.upload = None;
        Ok(())
    }

    /// Stops the parts in flight and aborts the upload, so the store drops
    /// what it received. A failure is logged: nothing else can be done.
    async fn abort(mut self) {
        self.in_flight.abort_all();
        if let Some(mut upload) = self.upload.take()
            && let Err(e) = deadline(CALL_TIMEOUT, "aborting an upload", upload.abort()).await
        {
            tracing::warn!("could not abort an artifact upload: {e}");
        }
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = deadline(CALL_TIMEOUT, "aborting an upload", upload.abort()).await {
                    tracing::warn!("could not abort a cancelled artifact upload: {e}");
                }
            });
        }
    }
}

/// Runs a store call with a deadline; a call past it is `Unavailable`.
async fn deadline<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = object_store::Result<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(timed_out(what, limit)),
    }
}

fn timed_out(what: &str, limit: Duration) -> StoreError {
    StoreError::Unavailable(format!("{what} took longer than {} s", limit.as_secs()))
}

/// `len` bytes of `file` from `start`, in chunks of [`FILE_CHUNK`], each
/// read only when the previous one has been taken: a download whose client
/// reads slowly holds one chunk, never a read-ahead buffer.
///
/// A chunk already in the page cache (the common case: every device of a
/// rollout fetches the same artifact) is read in place with
/// `preadv2(RWF_NOWAIT)`, which never blocks; only a chunk that must come
/// from the disk goes through the blocking pool. Going through the pool
/// for every chunk, as `tokio::fs` does, costs a thread hand-off per
/// chunk and was most of tend-sync's gap to nginx on cached files.
fn file_stream(
    file: std::fs::File,
    start: u64,
    len: u64,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    struct Chunks {
        file: Arc<std::fs::File>,
        at: u64,
        end: u64,
        /// Cleared once the file system answers that it cannot read
        /// without blocking, so later chunks skip straight to the pool.
        nowait: bool,
    }
    let chunks = Chunks {
        file: Arc::new(file),
        at: start,
        end: start.saturating_add(len),
        nowait: true,
    };
    futures_util::stream::unfold(chunks, |mut c| async move {
        if c.at >= c.end {
            return None;
        }
        let want = (c.end - c.at).min(FILE_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut read = None;
        if c.nowait {
            let mut slices = [std::io::IoSliceMut::new(&mut buf)];
            match rustix::io::preadv2(&*c.file, &mut slices, c.at, ReadWriteFlags::NOWAIT) {
                Ok(n) if n > 0 => read = Some(Ok(n)),
                // Not cached (EAGAIN), or nothing cached yet (0 bytes at a
                // position the file has): read it blocking.
                Ok(_) | Err(rustix::io::Errno::AGAIN) => {}
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => c.nowait = false,
                Err(e) => read = Some(Err(std::io::Error::from(e))),
            }
        }
        let read = match read {
            Some(read) => read.map(|n| (n, buf)),
            None => {
                let (file, at) = (c.file.clone(), c.at);
                tokio::task::spawn_blocking(move || {
                    rustix::io::pread(&*file, &mut buf[..], at)
                        .map(|n| (n, buf))
                        .map_err(std::io::Error::from)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
        };
        let item = match read {
            Ok((0, _)) => Err(StoreError::Unavailable(format!(
                "reading a file: it ended {} bytes early",
                c.end - c.at
            ))),
            Ok((n, mut buf)) => {
                buf.truncate(n);
                c.at += n as u64;
                Ok(Bytes::from(buf))
            }
            Err(e) => Err(StoreError::Unavailable(format!("reading a file: {e}"))),
        };
        if item.is_err() {
            // Nothing more is read after an error.
            c.at = c.end;
        }
        Some((item, c))
    })
    .boxed()
}

/// `chunks` with each wait bounded by [`CHUNK_TIMEOUT`], ending with an
/// error if it ends before `expected` bytes (or after an error).
fn bounded_stream(
    chunks: BoxStream<'static, Result<Bytes, StoreError>>,
    expected: u64,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    struct State {
        chunks: BoxStream<'static, Result<Bytes, StoreError>>,
        left: u64,
        done: bool,
    }
    let state = State {
        chunks,
        left: expected,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let item = match tokio::time::timeout(CHUNK_TIMEOUT, s.chunks.next()).await {
            Err(_) => Err(timed_out("waiting for the artifact store", CHUNK_TIMEOUT)),
            Ok(None) if s.left == 0 => return None,
            Ok(None) => Err(StoreError::Unavailable(format!(
                "the object ended {} bytes early",
                s.left
            ))),
            Ok(Some(Ok(chunk))) => {
                s.left = s.left.saturating_sub(chunk.len() as u64);
                Ok(chunk)
            }
            Ok(Some(Err(e))) => Err(e),
        };
        s.done = item.is_err();
        Some((item, s))
    })
    .boxed()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;
    use actix_web::http::StatusCode;
    use futures_util::TryStreamExt;

    use super::*;

    /// Bytes that differ from position to position, so that an off-by-one
    /// range shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
            .collect()
    }

    /// `data` as a client's body arrives: chunks of an awkward size.
    fn body(
        data: &[u8],
        chunk: usize,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        let chunks: Vec<_> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks)
    }

    fn sha256(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    fn directory() -> (tempfile::TempDir, ArtifactStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let store = ArtifactStore::open(url.as_str()).unwrap();
        (dir, store)
    }

    /// Every file under the store's directory, staging files included.
    fn files_in(dir: &tempfile::TempDir) -> Vec<String> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    async fn read(store: &ArtifactStore, key: &str, range: Range<u64>) -> Vec<u8> {
        let chunks: Vec<Bytes> = store
            .get_range(key, range)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn a_small_upload_is_stored_with_its_size_and_sha256() {
        let (dir, store) = directory();
        let stored = store
            .put_stream("small", body(b"hello", 2), 1024)
            .await
            .unwrap();
        assert_eq!(
            stored,
            Stored {
                size: 5,
                sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(),
                sha1: "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".into(),
                md5: "5d41402abc4b2a76b9719d911017c592".into(),
            }
        );
        assert_eq!(store.digests("small", 5).await.unwrap(), stored);
        assert_eq!(std::fs::read(dir.path().join("small")).unwrap(), b"hello");
        assert_eq!(store.size("small").await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_streamed_upload_of_several_parts_is_stored_whole_with_its_sha256() {
        let (dir, store) = directory();
        // Three whole parts and a short last one, in chunks that straddle
        // the part boundaries.
        let data = pattern(3 * PART_SIZE + 12_345);
        let stored = store
            .put_stream("big", body(&data, 65_521), u64::MAX)
            .await
            .unwrap();
        assert_eq!(stored.size, data.len() as u64);
        assert_eq!(stored.sha256, sha256(&data));
        assert!(std::fs::read(dir.path().join("big")).unwrap() == data);
        assert_eq!(files_in(&dir), ["big"], "no staging file is left");
    }

    #[tokio::test]
    async fn an_upload_of_exactly_the_limit_is_kept() {
        let (_dir, store) = directory();
        let stored = store
            .put_stream("exact", body(&pattern(1000), 300), 1000)
            .await
            .unwrap();
        assert_eq!(stored.size, 1000);
    }

    #[tokio::test]
    async fn an_upload_past_the_limit_is_refused_and_leaves_no_object() {
        let (dir, store) = directory();
        // One under a part (a single PUT) and several parts (multipart).
        for (len, limit) in [(1001, 1000), (3 * PART_SIZE, 2 * PART_SIZE as u64 + 1)] {
            let err = store
                .put_stream("too-big", body(&pattern(len), 65_536), limit)
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::TooLarge(l) if l == limit),
                "{err:?}"
            );
            assert!(matches!(
                store.size("too-big").await,
                Err(StoreError::NotFound)
            ));
            assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        }
    }

    #[tokio::test]
    async fn an_upload_whose_body_fails_halfway_leaves_no_object() {
        let (dir, store) = directory();
        for len in [1000, 2 * PART_SIZE + 10] {
            let data = pattern(len);
            let failing = body(&data, 65_536).chain(futures_util::stream::iter([Err(
                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"),
            )]));
            let err = store
                .put_stream("broken", failing, u64::MAX)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, StoreError::Body(why) if why.contains("connection reset")),
                "{err:?}"
            );
            assert!(matches!(
                store.size("broken").await,
                Err(StoreError::NotFound)
            ));
            assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        }
    }

    #[tokio::test]
    async fn get_range_returns_exactly_the_bytes_asked_for() {
        let (_dir, store) = directory();
        // Longer than a few file chunks, so ranges cross their boundaries.
        let data = pattern(5 * FILE_CHUNK + 17);
        store
            .put_stream("image", body(&data, 10_000), u64::MAX)
            .await
            .unwrap();
        let len = data.len() as u64;
        for range in [
            0..1,
            len - 1..len,
            4242..4243,
            1024..2048,
            FILE_CHUNK as u64 - 1..FILE_CHUNK as u64 + 1,
            0..len,
        ] {
            let got = read(&store, "image", range.clone()).await;
            let want = &data[range.start as usize..range.end as usize];
            assert!(got == want, "range {range:?}: {} bytes", got.len());
        }
        // Past the end stops at the end.
        assert!(read(&store, "image", len - 10..len + 100).await == data[data.len() - 10..]);
    }

    #[tokio::test]
    async fn a_range_that_is_empty_or_starts_past_the_end_is_invalid() {
        let (_dir, store) = directory();
        store
            .put_stream("k", body(b"0123456789", 4), 100)
            .await
            .unwrap();
        let backwards = Range { start: 7, end: 3 };
        for range in [5..5, backwards, 10..11, 20..30] {
            let err = store.get_range("k", range.clone()).await.err().unwrap();
            assert!(
                matches!(err, StoreError::InvalidRange(_)),
                "{range:?}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_key_is_not_found_and_deleting_it_is_fine() {
        let (_dir, store) = directory();
        assert!(matches!(
            store.size("nothing").await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.get_range("nothing", 0..10).await.err().unwrap(),
            StoreError::NotFound
        ));
        store.delete("nothing").await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_object_is_gone() {
        let (dir, store) = directory();
        store.put_stream("k", body(b"abc", 1), 100).await.unwrap();
        store.delete("k").await.unwrap();
        assert!(matches!(store.size("k").await, Err(StoreError::NotFound)));
        assert!(files_in(&dir).is_empty());
    }

    #[tokio::test]
    async fn keys_that_are_not_plain_names_are_refused() {
        let (_dir, store) = directory();
        for key in ["", ".", "..", "../etc/passwd", "a/b", "a#1", "ü"] {
            let err = store.size(key).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidKey(_)), "{key:?}: {err:?}");
        }
    }

    #[test]
    fn open_refuses_what_is_not_a_directory_or_a_bucket_and_names_the_variable() {
        for url in [
            "",
            "http://x",
            "file://relative/dir",
            "file:relative",
            "s3://",
            "s3:///prefix",
            "s3://bucket/a//b",
            "s3://key:secret@bucket",
            "/var/lib/tend/artifacts",
        ] {
            let err = ArtifactStore::open_with(url, &HashMap::new()).unwrap_err();
            let shown = format!("{err:#}");
            assert!(
                shown.starts_with("TEND_ARTIFACT_STORE: "),
                "{url:?}: {shown}"
            );
        }
    }

    #[test]
    fn an_s3_url_names_the_bucket_and_the_prefix_every_key_goes_under() {
        assert_eq!(
            parse_url("s3://artifacts/tend/prod/").unwrap(),
            Location::S3 {
                bucket: "artifacts".into(),
                prefix: Path::from("tend/prod"),
            }
        );
        assert_eq!(
            parse_url("file:///var/lib/tend/artifacts").unwrap(),
            Location::Directory("/var/lib/tend/artifacts".into())
        );
        let vars = HashMap::from([
            (
                "AWS_ENDPOINT_URL".to_owned(),
                "http://127.0.0.1:1".to_owned(),
            ),
            ("AWS_ALLOW_HTTP".to_owned(), "true".to_owned()),
        ]);
        let store = ArtifactStore::open_with("s3://artifacts/tend/prod", &vars).unwrap();
        assert_eq!(store.path("abc").unwrap().as_ref(), "tend/prod/abc");
        let store = ArtifactStore::open_with("s3://artifacts", &vars).unwrap();
        assert_eq!(store.path("abc").unwrap().as_ref(), "abc");
    }

    #[tokio::test]
    async fn a_directory_store_has_no_presigned_url() {
        let (_dir, store) = directory();
        let url = store
            .presigned_get("k", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(url.is_none());
    }

    #[tokio::test]
    async fn the_check_fails_once_the_directory_is_gone() {
        let (dir, store) = directory();
        store.check().await.unwrap();
        std::fs::remove_dir(dir.path()).unwrap();
        assert!(matches!(
            store.check().await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_whose_store_stalls_ends_with_unavailable_after_the_chunk_timeout() {
        let stalled = futures_util::stream::iter([Ok(Bytes::from_static(b"abc"))])
            .chain(futures_util::stream::pending())
            .boxed();
        let mut stream = bounded_stream(stalled, 10);
        assert_eq!(stream.next().await.unwrap().unwrap(), "abc");
        let started = tokio::time::Instant::now();
        assert!(matches!(
            stream.next().await,
            Some(Err(StoreError::Unavailable(_)))
        ));
        assert_eq!(started.elapsed(), CHUNK_TIMEOUT);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_download_that_ends_early_ends_with_an_error() {
        let short = futures_util::stream::iter([Ok(Bytes::from_static(b"abc"))]).boxed();
        let items: Vec<_> = bounded_stream(short, 10).collect().await;
        assert_eq!(items.len(), 2);
        assert!(matches!(items[1], Err(StoreError::Unavailable(_))));
    }

    /// How the routes use it: the request's `web::Payload` is the stream
    /// `put_stream` takes, and `get_range`'s stream is a response body.
    #[actix_web::test]
    async fn actix_handlers_stream_a_payload_in_and_a_range_out() {
        use actix_web::{App, HttpResponse, test, web};

        async fn upload(
            store: web::Data<ArtifactStore>,
            body: web::Payload,
        ) -> Result<HttpResponse, ApiError> {
            // web::Payload has no size limit of its own (PayloadConfig's
            // 256 KiB is for the Bytes and Json extractors): this is it.
            let stored = store.put_stream("a", body, 4 << 20).await?;
            Ok(HttpResponse::Ok().body(stored.sha256))
        }
        async fn download(store: web::Data<ArtifactStore>) -> Result<HttpResponse, ApiError> {
            let chunks = store.get_range("a", 2..5).await?;
            Ok(HttpResponse::PartialContent().streaming(chunks))
        }
        let (_dir, store) = directory();
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(store))
                .route("/a", web::put().to(upload))
                .route("/a", web::get().to(download)),
        )
        .await;

        let data = pattern(3 << 20);
        let put = test::TestRequest::put()
            .uri("/a")
            .set_payload(data.clone())
            .to_request();
        let sha = test::call_and_read_body(&app, put).await;
        assert_eq!(sha, sha256(&data).as_bytes());
        let get = test::TestRequest::get().uri("/a").to_request();
        assert_eq!(test::call_and_read_body(&app, get).await, data[2..5]);

        let too_big = test::TestRequest::put()
            .uri("/a")
            .set_payload(vec![0u8; (4 << 20) + 1])
            .to_request();
        let res = test::call_service(&app, too_big).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// Callers may spawn these on the runtime when their body stream is
    /// `Send` (actix's `web::Payload` is not, which handlers allow).
    #[tokio::test]
    async fn the_store_futures_are_send_when_the_body_is() {
        fn assert_send<T: Send>(_: &T) {}
        let (_dir, store) = directory();
        let put = store.put_stream("k", body(b"x", 1), 1);
        assert_send(&put);
        put.await.unwrap();
        assert_send(&store.get_range("k", 0..1));
        assert_send(&store.check());
    }

    #[test]
    fn store_errors_become_the_statuses_of_the_error_policy() {
        for (err, status) in [
            (StoreError::TooLarge(10), StatusCode::PAYLOAD_TOO_LARGE),
            (StoreError::NotFound, StatusCode::NOT_FOUND),
            (StoreError::Body("reset".into()), StatusCode::BAD_REQUEST),
            (
                StoreError::Unavailable("timeout".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                StoreError::InvalidRange(1..1),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                StoreError::InvalidKey("a/b".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ] {
            assert_eq!(ApiError::from(err).status_code(), status);
        }
    }
}
