//! Fetching an image from peers: search (the LAN, and the configured
//! peers directly), try each peer that offered it, fall back to asking
//! the configured peers over HTTP, search again; a bounded number of
//! rounds, never past the caller's deadline.
//!
//! Peers are sources of bytes, never of trust: the digest (and the size,
//! when known) come from the caller. The bytes go to the same resumable
//! files as a download from tend-sync, so a peer that drops out hands
//! over to the next one at the offset reached. A file that does not hash
//! to the digest is thrown away, and every peer that sent part of it is
//! left out for the rest of the fetch.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::CONTENT_LENGTH;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::PeerSettings;
use super::discovery::{self, Found, Query};
use super::wire::{is_device_type, is_sha256};
use crate::software::download::{self, DEVICE_TYPE_HEADER, DownloadError, Progress};

/// Searches before giving up. Seed 000 goes back to searching when a
/// peer times out; three rounds give peers that were busy (serving others)
/// or rebooting a second and third chance, while a device with no peer at
/// all learns so within seconds.
pub const ROUNDS: u32 = 3;

/// What to fetch. The digest and size come from a signed instruction or
/// from the device's own record of what it ran, never from a peer.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    /// This device's type: only peers of the same type answer.
    pub device_type: &'a str,
    pub component: &'a str,
    /// 64 lowercase hex digits.
    pub sha256: &'a str,
    /// The image's size, when the trusted record knows it.
    pub size: Option<u64>,
    /// Without a trusted size: offers larger than this are refused, so a
    /// peer cannot fill the disk.
    pub max_size: u64,
}

/// A complete image, verified against [`Want::sha256`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFetched {
    /// `dir/<sha256>`.
    pub path: PathBuf,
    /// The peer that sent the last bytes.
    pub peer: SocketAddr,
    /// The byte that peer started at: 0 when it sent the whole image,
    /// more when it took over from an earlier peer or an earlier fetch,
    /// the size when the image was already complete on disk.
    pub resumed_from: u64,
}

/// What a fetch is doing, for the caller's operation log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A search of the LAN (and the configured peers) begins.
    Searching { round: u32 },
    /// Peers offered the image, in the order they will be tried.
    Found { peers: Vec<SocketAddr> },
    /// Nobody (else) offered it: the configured peers are asked directly.
    Configured { peers: Vec<SocketAddr> },
    /// A transfer from `peer` begins at byte `offset`.
    Trying { peer: SocketAddr, offset: u64 },
    /// `peer` did not provide the image; the next one is tried.
    PeerFailed { peer: SocketAddr, error: String },
    /// The image did not hash to the digest: its bytes were thrown away
    /// and these peers, which sent them, are not asked again.
    Corrupt { peers: Vec<SocketAddr> },
}

/// One peer asked, and why it did not provide the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub peer: SocketAddr,
    pub error: String,
}

/// Why a fetch from peers ended without the image.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Every round, or the deadline, passed without a peer that provided
    /// the image.
    #[error("{}", exhausted(sha256, *rounds, *deadline_passed, tried))]
    Exhausted {
        sha256: String,
        /// The searches made.
        rounds: u32,
        deadline_passed: bool,
        /// Every attempt, in order.
        tried: Vec<Tried>,
    },
    /// Writing the image failed (disk full, for one); another peer would
    /// not help.
    #[error("cannot store the image: {0}")]
    Storage(DownloadError),
    /// The request itself cannot be fetched (a malformed digest, an empty
    /// device type).
    #[error("{0}")]
    Invalid(String),
    #[error("the fetch from peers was cancelled")]
    Cancelled,
}

fn exhausted(sha256: &str, rounds: u32, deadline_passed: bool, tried: &[Tried]) -> String {
    let mut text = format!(
        "no peer provided image {sha256} after {rounds} search{}",
        if rounds == 1 { "" } else { "es" }
    );
    if deadline_passed {
        text.push_str(" (the deadline passed)");
    }
    if tried.is_empty() {
        text.push_str(": no peer offered it and none is configured");
    } else {
        text.push_str(": ");
        let each: Vec<String> = tried
            .iter()
            .map(|t| format!("{} ({})", t.peer, t.error))
            .collect();
        text.push_str(&each.join("; "));
    }
    text
}

/// Fetches `want` from peers on the LAN into `dir` (as `dir/<sha256>`,
/// through the same `.part` and `.offset` files as a download from
/// tend-sync), and returns the verified image.
///
/// `on_progress` is called as for [`download::fetch`], for each peer in
/// turn; `on_event` says which peers were found, tried and why they
/// failed. At most [`ROUNDS`] searches, and never past `deadline`; `stop`
/// ends the fetch at its next await.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    settings: &PeerSettings,
    want: &Want<'_>,
    dir: &Path,
    segment_bytes: u64,
    deadline: Instant,
    mut on_progress: impl FnMut(Progress),
    mut on_event: impl FnMut(PeerEvent),
    stop: &CancellationToken,
) -> Result<PeerFetched, PeerError> {
    if !is_sha256(want.sha256) {
        return Err(PeerError::Invalid(format!(
            "{:?} is not a SHA-256 in lowercase hex",
            want.sha256
        )));
    }
    if !is_device_type(want.device_type) {
        return Err(PeerError::Invalid(format!(
            "{:?} is not a device type",
            want.device_type
        )));
    }
    if !tend_proto::params::is_component_name(want.component) {
        return Err(PeerError::Invalid(format!(
            "{:?} is not a component name",
            want.component
        )));
    }
    let http = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        // A peer serves its own bytes; a redirect would make it a
        // pointer to anywhere.
        .redirect(reqwest::redirect::Policy::none())
        // Peers are on the LAN: a proxy set for the cloud would not reach
        // them.
        .no_proxy()
        .build()
        .map_err(|e| PeerError::Invalid(format!("cannot build an HTTP client: {e}")))?;
    let mut fetch = Fetch {
        settings,
        want,
        dir,
        segment_bytes,
        deadline,
        stop,
        http,
        excluded: HashSet::new(),
        contributors: Vec::new(),
        size_in_use: want.size,
        tried: Vec::new(),
    };
    let mut rounds = 0;
    while rounds < ROUNDS && Instant::now() < deadline {
        rounds += 1;
        on_event(PeerEvent::Searching { round: rounds });
        let found = fetch.search().await?;
        let offered: Vec<SocketAddr> = found.iter().map(|f| f.peer).collect();
        if !offered.is_empty() {
            on_event(PeerEvent::Found {
                peers: offered.clone(),
            });
        }
        for candidate in found {
            if let Some(fetched) = fetch
                .try_peer(
                    candidate.peer,
                    Some(candidate.size),
                    &mut on_progress,
                    &mut on_event,
                )
                .await?
            {
                return Ok(fetched);
            }
        }
        let configured: Vec<SocketAddr> = settings
            .peers
            .iter()
            .copied()
            .filter(|p| !offered.contains(p) && !fetch.excluded.contains(p))
            .collect();
        if !configured.is_empty() {
            on_event(PeerEvent::Configured {
                peers: configured.clone(),
            });
        }
        for peer in configured {
            if let Some(fetched) = fetch
                .try_peer(peer, None, &mut on_progress, &mut on_event)
                .await?
            {
                return Ok(fetched);
            }
        }
    }
    let error = PeerError::Exhausted {
        sha256: want.sha256.to_owned(),
        rounds,
        deadline_passed: Instant::now() >= deadline,
        tried: fetch.tried,
    };
    warn!(image = %want.sha256, "{error}");
    Err(error)
}

/// One fetch under way.
struct Fetch<'a> {
    settings: &'a PeerSettings,
    want: &'a Want<'a>,
    dir: &'a Path,
    segment_bytes: u64,
    deadline: Instant,
    stop: &'a CancellationToken,
    http: reqwest::Client,
    /// Peers that sent bytes of a file that did not verify.
    excluded: HashSet<SocketAddr>,
    /// Peers that sent bytes of the file growing now.
    contributors: Vec<SocketAddr>,
    /// The trusted size, or else the size the peers that sent the file's
    /// bytes so far agreed on.
    size_in_use: Option<u64>,
    tried: Vec<Tried>,
}

/// How a peer that cannot provide the image is passed over.
struct Skip(String);

impl Fetch<'_> {
    /// Searches for offers until the search timeout or the deadline,
    /// leaving out excluded peers.
    async fn search(&self) -> Result<Vec<Found>, PeerError> {
        let query = Query {
            device_type: self.want.device_type,
            component: self.want.component,
            sha256: self.want.sha256,
            size: self.size_in_use,
            max_size: self.want.max_size,
        };
        let timeout = self
            .settings
            .search_timeout
            .min(self.deadline.saturating_duration_since(Instant::now()));
        let searched = tokio::select! {
            _ = self.stop.cancelled() => return Err(PeerError::Cancelled),
            searched = discovery::search(
                self.settings.discovery_port(),
                &self.settings.peers,
                &query,
                timeout,
            ) => searched,
        };
        match searched {
            Ok(found) => Ok(found
                .into_iter()
                .filter(|f| !self.excluded.contains(&f.peer))
                .collect()),
            Err(e) => {
                // No socket, no interface: the configured peers may still
                // be reached over TCP.
                debug!("cannot search for peers: {e}");
                Ok(Vec::new())
            }
        }
    }

    /// Fetches the image from `peer`; `None` when it did not provide it
    /// (recorded in `tried`), an error when no other peer could do better.
    async fn try_peer(
        &mut self,
        peer: SocketAddr,
        offered: Option<u64>,
        on_progress: &mut impl FnMut(Progress),
        on_event: &mut impl FnMut(PeerEvent),
    ) -> Result<Option<PeerFetched>, PeerError> {
        if self.excluded.contains(&peer) {
            return Ok(None);
        }
        if Instant::now() >= self.deadline {
            return Ok(None);
        }
        let url = format!("http://{peer}/v1/images/{}", self.want.sha256);
        let size = match self.size(&url, offered).await {
            Ok(size) => size,
            Err(Skip(error)) => {
                self.failed(peer, error, on_event);
                return Ok(None);
            }
        };
        let source = download::Source::Peer(download::Peer {
            http: &self.http,
            url: &url,
            device_type: self.want.device_type,
            stall: self.settings.connect_timeout,
        });
        let target = download::Target {
            sha256: self.want.sha256,
            size,
            dir: self.dir,
            segment_bytes: self.segment_bytes,
            deadline: self.deadline,
        };
        let mut start = None;
        let mut reached = 0;
        let fetched = download::fetch_from(
            &source,
            &target,
            |p| {
                if start.is_none() {
                    start = Some(p.bytes);
                    on_event(PeerEvent::Trying {
                        peer,
                        offset: p.bytes,
                    });
                }
                reached = p.bytes;
                on_progress(p);
            },
            self.stop,
        )
        .await;
        let start = start.unwrap_or_default();
        if reached > start {
            if !self.contributors.contains(&peer) {
                self.contributors.push(peer);
            }
            self.size_in_use = Some(size);
        }
        match fetched {
            Ok(fetched) => {
                info!(peer = %peer, image = %self.want.sha256, "fetched image {} from peer {peer}", self.want.sha256);
                Ok(Some(PeerFetched {
                    path: fetched.path,
                    peer,
                    resumed_from: fetched.resumed_from,
                }))
            }
            Err(DownloadError::Corrupt { actual, .. }) => {
                let peers = std::mem::take(&mut self.contributors);
                warn!(image = %self.want.sha256, "the image from peers {peers:?} hashes to {actual}; none of them is asked again");
                for p in &peers {
                    self.excluded.insert(*p);
                    self.tried.push(Tried {
                        peer: *p,
                        error: format!("sent bytes of an image that hashes to {actual}"),
                    });
                }
                self.size_in_use = self.want.size;
                on_event(PeerEvent::Corrupt { peers });
                Ok(None)
            }
            Err(DownloadError::Cancelled) => Err(PeerError::Cancelled),
            Err(e @ DownloadError::Io { .. }) => Err(PeerError::Storage(e)),
            Err(DownloadError::TimedOut { last_error }) => {
                let error = match last_error {
                    Some(last) => format!("the deadline passed ({last})"),
                    None => "the deadline passed".into(),
                };
                self.failed(peer, error, on_event);
                Ok(None)
            }
            Err(e) => {
                self.failed(peer, e.to_string(), on_event);
                Ok(None)
            }
        }
    }

    /// The size to fetch from a peer: the trusted one, else the one the
    /// file's bytes so far came with, else what the peer offers (or, for
    /// a configured peer, says in answer to a HEAD).
    async fn size(&self, url: &str, offered: Option<u64>) -> Result<u64, Skip> {
        if let Some(size) = self.want.size {
            return Ok(size);
        }
        let size = match offered {
            Some(size) => size,
            None => self.head(url).await?,
        };
        if size > self.want.max_size {
            return Err(Skip(format!(
                "offers {size} bytes, more than the {} allowed",
                self.want.max_size
            )));
        }
        match self.size_in_use {
            Some(in_use) if in_use != size => Err(Skip(format!(
                "has {size} bytes, not the {in_use} of the image under way"
            ))),
            _ => Ok(size),
        }
    }

    /// What a peer says the image's size is, for a configured peer that
    /// made no offer.
    async fn head(&self, url: &str) -> Result<u64, Skip> {
        let asked = self
            .http
            .head(url)
            .header(DEVICE_TYPE_HEADER, self.want.device_type)
            .send();
        let wait = self
            .settings
            .connect_timeout
            .min(self.deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let response = tokio::select! {
            _ = self.stop.cancelled() => return Err(Skip("cancelled".into())),
            answered = tokio::time::timeout(wait, asked) => match answered {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(Skip(format!("cannot reach the peer: {}", crate::client::chain(&e)))),
                Err(_) => return Err(Skip(format!("no answer within {} ms", wait.as_millis()))),
            },
        };
        match response.status() {
            StatusCode::OK => response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Skip("answered without a size".into())),
            StatusCode::NOT_FOUND => Err(Skip("does not hold the image".into())),
            status => Err(Skip(format!("answered {status}"))),
        }
    }

    fn failed(&mut self, peer: SocketAddr, error: String, on_event: &mut impl FnMut(PeerEvent)) {
        debug!(peer = %peer, image = %self.want.sha256, "peer {peer} did not provide image {}: {error}", self.want.sha256);
        self.tried.push(Tried {
            peer,
            error: error.clone(),
        });
        on_event(PeerEvent::PeerFailed { peer, error });
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use super::super::testing::{Behaviour, FakePeer, Held, content, settings, sha256, start};
    use super::*;

    const SEGMENT: u64 = 1024;

    /// What a fetch reported, in order.
    #[derive(Default)]
    struct Seen {
        events: Mutex<Vec<PeerEvent>>,
        progress: Mutex<Vec<Progress>>,
    }

    impl Seen {
        fn events(&self) -> Vec<PeerEvent> {
            self.events.lock().unwrap().clone()
        }
    }

    fn want<'a>(sha256: &'a str, size: Option<u64>) -> Want<'a> {
        Want {
            device_type: "kiosk",
            component: "app",
            sha256,
            size,
            max_size: 1024 * 1024,
        }
    }

    async fn run(
        settings: &PeerSettings,
        want: &Want<'_>,
        dir: &Path,
        within: Duration,
        seen: &Seen,
    ) -> Result<PeerFetched, PeerError> {
        fetch(
            settings,
            want,
            dir,
            SEGMENT,
            Instant::now() + within,
            |p| seen.progress.lock().unwrap().push(p),
            |e| seen.events.lock().unwrap().push(e),
            &CancellationToken::new(),
        )
        .await
    }

    fn failed_peers(events: &[PeerEvent]) -> Vec<SocketAddr> {
        events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::PeerFailed { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    /// A port nothing listens on.
    async fn closed_port() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn an_image_is_fetched_from_a_configured_peer_of_the_same_type_end_to_end() {
        let images = tempfile::tempdir().unwrap();
        let bytes = content(10 * 1024 + 300);
        let mut camera_held = Held::default();
        let sha = camera_held.add(images.path(), "app", &bytes);
        let mut kiosk_held = Held::default();
        kiosk_held.add(images.path(), "app", &bytes);
        // Both hold the image; only the kiosk is of this device's type.
        let camera = start(&settings(), "camera", camera_held).await;
        let kiosk = start(&settings(), "kiosk", kiosk_held).await;
        let mut settings = settings();
        settings.peers = vec![camera.addr, kiosk.addr];
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();

        let fetched = run(
            &settings,
            &want(&sha, None),
            dir.path(),
            Duration::from_secs(10),
            &seen,
        )
        .await
        .unwrap();

        assert_eq!(fetched.path, dir.path().join(&sha));
        assert_eq!(fetched.peer, kiosk.addr);
        assert_eq!(fetched.resumed_from, 0);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        // The kiosk answered the search sent to the configured peers; the
        // camera stayed silent and was never needed.
        assert_eq!(
            seen.events(),
            [
                PeerEvent::Searching { round: 1 },
                PeerEvent::Found {
                    peers: vec![kiosk.addr]
                },
                PeerEvent::Trying {
                    peer: kiosk.addr,
                    offset: 0
                },
            ]
        );
        let progress = seen.progress.lock().unwrap();
        assert_eq!(
            progress.last(),
            Some(&Progress {
                bytes: 10_540,
                total: 10_540
            })
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [sha]);
    }

    #[tokio::test]
    async fn a_transfer_cut_halfway_resumes_from_the_next_peer_at_the_same_offset() {
        let bytes = content(8000);
        let sha = sha256(&bytes);
        let dying = FakePeer::start(bytes.clone(), Behaviour::DiesAfter(2500)).await;
        let honest = FakePeer::start(bytes.clone(), Behaviour::Honest).await;
        let mut settings = settings();
        settings.peers = vec![dying.addr, honest.addr];
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();

        let fetched = run(
            &settings,
            &want(&sha, Some(8000)),
            dir.path(),
            Duration::from_secs(10),
            &seen,
        )
        .await
        .unwrap();

        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        assert_eq!(fetched.peer, honest.addr);
        assert_eq!(fetched.resumed_from, 2500);
        assert_eq!(
            dying.ranges(),
            ["bytes=0-1023", "bytes=1024-2047", "bytes=2048-3071"]
        );
        assert_eq!(honest.ranges()[0], "bytes=2500-3523");
        assert_eq!(honest.ranges().len(), 6);
        let events = seen.events();
        assert!(events.contains(&PeerEvent::Trying {
            peer: dying.addr,
            offset: 0
        }));
        assert!(events.contains(&PeerEvent::Trying {
            peer: honest.addr,
            offset: 2500
        }));
        assert_eq!(failed_peers(&events), [dying.addr]);
    }

    #[tokio::test]
    async fn a_peer_that_sends_altered_bytes_is_left_out_and_an_honest_one_provides_the_image() {
        let bytes = content(6000);
        let sha = sha256(&bytes);
        let liar = FakePeer::start(bytes.clone(), Behaviour::Altered).await;
        let honest = FakePeer::start(bytes.clone(), Behaviour::Honest).await;
        let mut settings = settings();
        settings.peers = vec![liar.addr, honest.addr];
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();

        let fetched = run(
            &settings,
            &want(&sha, Some(6000)),
            dir.path(),
            Duration::from_secs(10),
            &seen,
        )
        .await
        .unwrap();

        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        assert_eq!(fetched.peer, honest.addr);
        assert_eq!(
            fetched.resumed_from, 0,
            "the altered bytes were thrown away"
        );
        assert_eq!(honest.ranges()[0], "bytes=0-1023");
        assert_eq!(liar.ranges().len(), 6, "asked once, never again");
        assert!(seen.events().contains(&PeerEvent::Corrupt {
            peers: vec![liar.addr]
        }));
    }

    #[tokio::test]
    async fn peers_that_together_sent_a_corrupt_image_are_all_left_out() {
        let bytes = content(6000);
        let sha = sha256(&bytes);
        // The first sends honest bytes and dies; the second alters a byte
        // in what it sends after; the hash cannot tell whose it was.
        let dying = FakePeer::start(bytes.clone(), Behaviour::DiesAfter(1000)).await;
        let liar = FakePeer::start(bytes.clone(), Behaviour::Altered).await;
        let honest = FakePeer::start(bytes.clone(), Behaviour::Honest).await;
        let mut settings = settings();
        settings.peers = vec![dying.addr, liar.addr, honest.addr];
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();

        let fetched = run(
            &settings,
            &want(&sha, Some(6000)),
            dir.path(),
            Duration::from_secs(10),
            &seen,
        )
        .await
        .unwrap();

        assert_eq!(fetched.peer, honest.addr);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        assert!(seen.events().contains(&PeerEvent::Corrupt {
            peers: vec![dying.addr, liar.addr]
        }));
        assert_eq!(honest.ranges()[0], "bytes=0-1023");
    }

    #[tokio::test]
    async fn a_peer_that_accepts_but_never_sends_is_left_after_the_connect_timeout() {
        let bytes = content(3000);
        let sha = sha256(&bytes);
        let silent = FakePeer::start(bytes.clone(), Behaviour::Silent).await;
        let honest = FakePeer::start(bytes.clone(), Behaviour::Honest).await;
        let mut settings = settings();
        settings.peers = vec![silent.addr, honest.addr];
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();
        let started = Instant::now();

        let fetched = run(
            &settings,
            &want(&sha, Some(3000)),
            dir.path(),
            Duration::from_secs(10),
            &seen,
        )
        .await
        .unwrap();

        assert_eq!(fetched.peer, honest.addr);
        let took = started.elapsed();
        assert!(
            took >= settings.connect_timeout && took < Duration::from_secs(2),
            "{took:?}"
        );
        let failed: Vec<String> = seen
            .events()
            .into_iter()
            .filter_map(|e| match e {
                PeerEvent::PeerFailed { peer, error } if peer == silent.addr => Some(error),
                _ => None,
            })
            .collect();
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].contains("nothing arrived for 300 ms"),
            "{}",
            failed[0]
        );
    }

    #[tokio::test]
    async fn without_any_peer_the_fetch_ends_with_what_it_tried_after_its_rounds() {
        let bytes = content(3000);
        let sha = sha256(&bytes);
        let gone = closed_port().await;
        let mut settings = settings();
        settings.peers = vec![gone];
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();
        let started = Instant::now();

        let error = run(
            &settings,
            &want(&sha, Some(3000)),
            dir.path(),
            Duration::from_secs(10),
            &seen,
        )
        .await
        .unwrap_err();

        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        match &error {
            PeerError::Exhausted {
                rounds,
                deadline_passed,
                tried,
                ..
            } => {
                assert_eq!(*rounds, ROUNDS);
                assert!(!deadline_passed);
                assert_eq!(tried.len(), 3);
                assert!(tried.iter().all(|t| t.peer == gone));
            }
            other => panic!("{other:?}"),
        }
        let text = error.to_string();
        assert!(
            text.contains(&sha)
                && text.contains(&gone.to_string())
                && text.contains("cannot reach"),
            "{text}"
        );
        let searches = seen
            .events()
            .iter()
            .filter(|e| matches!(e, PeerEvent::Searching { .. }))
            .count();
        assert_eq!(searches, 3);

        let error = run(
            &super::super::testing::settings(),
            &want(&sha, Some(3000)),
            dir.path(),
            Duration::from_secs(10),
            &Seen::default(),
        )
        .await
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("no peer offered it and none is configured"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_fetch_never_runs_past_its_deadline() {
        let bytes = content(3000);
        let sha = sha256(&bytes);
        let silent = FakePeer::start(bytes.clone(), Behaviour::Silent).await;
        let mut settings = settings();
        settings.peers = vec![silent.addr];
        settings.connect_timeout = Duration::from_secs(30);
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();

        let error = run(
            &settings,
            &want(&sha, Some(3000)),
            dir.path(),
            Duration::from_millis(400),
            &Seen::default(),
        )
        .await
        .unwrap_err();

        let took = started.elapsed();
        assert!(took < Duration::from_millis(700), "{took:?}");
        assert!(
            matches!(
                error,
                PeerError::Exhausted {
                    deadline_passed: true,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("deadline"), "{error}");
    }

    #[tokio::test]
    async fn without_a_trusted_size_a_configured_peer_is_asked_and_held_to_max_size() {
        let bytes = content(5000);
        let sha = sha256(&bytes);
        let honest = FakePeer::start(bytes.clone(), Behaviour::Honest).await;
        let mut settings = settings();
        settings.peers = vec![honest.addr];
        let dir = tempfile::tempdir().unwrap();
        let mut small = want(&sha, None);
        small.max_size = 4999;
        let seen = Seen::default();

        let error = run(
            &settings,
            &small,
            dir.path(),
            Duration::from_secs(10),
            &seen,
        )
        .await
        .unwrap_err();

        assert!(
            error.to_string().contains("more than the 4999 allowed"),
            "{error}"
        );
        assert!(honest.ranges().is_empty(), "nothing was downloaded");

        let fetched = run(
            &settings,
            &want(&sha, None),
            dir.path(),
            Duration::from_secs(10),
            &Seen::default(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_peer_with_another_size_than_the_trusted_one_is_passed_over() {
        let bytes = content(5000);
        let sha = sha256(&bytes);
        let longer = FakePeer::start(content(6000), Behaviour::Honest).await;
        let honest = FakePeer::start(bytes.clone(), Behaviour::Honest).await;
        let mut settings = settings();
        settings.peers = vec![longer.addr, honest.addr];
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();

        let fetched = run(
            &settings,
            &want(&sha, Some(5000)),
            dir.path(),
            Duration::from_secs(10),
            &seen,
        )
        .await
        .unwrap();

        assert_eq!(fetched.peer, honest.addr);
        assert_eq!(failed_peers(&seen.events()), [longer.addr]);
        assert_eq!(honest.ranges()[0], "bytes=0-1023");
    }

    #[tokio::test]
    async fn a_malformed_request_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let upper = "A".repeat(64);
        for bad in [
            want(&upper, None),
            Want {
                device_type: "",
                ..want(&"a".repeat(64), None)
            },
            Want {
                component: "../x",
                ..want(&"a".repeat(64), None)
            },
        ] {
            let error = run(
                &settings(),
                &bad,
                dir.path(),
                Duration::from_secs(1),
                &Seen::default(),
            )
            .await
            .unwrap_err();
            assert!(matches!(error, PeerError::Invalid(_)), "{error:?}");
        }
    }

    #[tokio::test]
    async fn a_cancelled_fetch_stops_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sha = sha256(b"x");
        let stop = CancellationToken::new();
        stop.cancel();

        let error = fetch(
            &settings(),
            &want(&sha, Some(1)),
            dir.path(),
            SEGMENT,
            Instant::now() + Duration::from_secs(10),
            |_| {},
            |_| {},
            &stop,
        )
        .await
        .unwrap_err();

        assert!(matches!(error, PeerError::Cancelled), "{error:?}");
    }
}
