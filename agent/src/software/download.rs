// TEMPORARY STUB (replaced by the real module before commit)
use crate::client::Client;
use std::path::{Path, PathBuf};
use tend_proto::params::ArtifactRef;
use tokio_util::sync::CancellationToken;
pub struct Request<'a> {
    pub artifact: &'a ArtifactRef,
    pub dir: &'a Path,
    pub segment_bytes: u64,
    pub deadline: tokio::time::Instant,
}
pub struct Progress {
    pub bytes: u64,
    pub total: u64,
}
pub struct Fetched {
    pub path: PathBuf,
    pub resumed_from: u64,
}
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cancelled")]
    Cancelled,
    #[error("x")]
    Other,
}
pub async fn fetch(
    _c: &Client,
    _r: &Request<'_>,
    mut _p: impl FnMut(Progress),
    _s: &CancellationToken,
) -> Result<Fetched, DownloadError> {
    Err(DownloadError::Other)
}
pub fn path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(sha256)
}
pub fn remove_others(_dir: &Path, _keep: &[String]) {}
