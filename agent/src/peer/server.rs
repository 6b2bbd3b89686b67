//! The image server: `GET /v1/images/{sha256}` for peers of this device's
//! type, with `Range`, and nothing else.
//!
//! Anyone on the LAN can connect, so the server gives nothing away: a
//! path of another shape, a digest it does not hold, or another device
//! type all get the same empty 404, logged at debug only (a scan would
//! otherwise fill the log). Bodies are read from the file in small chunks
//! as the peer takes them, so a transfer costs a few KiB of memory
//! whatever the image's size.

use std::convert::Infallible;
use std::io::{self, SeekFrom};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderValue, RANGE,
    RETRY_AFTER,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::discovery::Responder;
use super::wire::{is_device_type, is_sha256};
use super::{Images, PeerSettings};
use crate::software::download::DEVICE_TYPE_HEADER;

/// What each read of an image brings: small enough that many transfers
/// cost little memory on a small device, large enough that the system
/// calls do not dominate.
const CHUNK_BYTES: usize = 16 * 1024;

/// A peer sends its request line and headers in one go; more than this
/// is a connection held open on purpose.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with no byte in either direction for this long (an idle
/// keep-alive, or a peer that stopped reading mid-transfer) is closed, and
/// its transfer slot freed. A fetching peer gives up on a stall after its
/// own connect timeout (3 s by default), so this only frees what a peer
/// that vanished left behind.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections open at once, transfers or not; one more is closed at
/// once. A device serves a handful of peers; a scan of the LAN must not
/// cost it a task per connection.
const MAX_CONNECTIONS: usize = 64;

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// The image server and the discovery responder of one device, bound and
/// ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    responder: Responder,
    state: Arc<State>,
}

struct State {
    device_type: String,
    images: Arc<dyn Images>,
    /// One permit per transfer under way.
    transfers: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    idle: Duration,
}

impl Server {
    /// Binds `settings.listen` for HTTP, and UDP on the port it got for
    /// discovery, and returns the HTTP address (whose port is the one
    /// chosen when `listen` asks for port 0).
    pub async fn bind(
        settings: &PeerSettings,
        device_type: String,
        images: Arc<dyn Images>,
    ) -> anyhow::Result<(Server, SocketAddr)> {
        if !is_device_type(&device_type) {
            bail!("{device_type:?} is not a device type a peer could ask for");
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot serve peers on {}", settings.listen))?;
        let addr = listener
            .local_addr()
            .context("while reading the peer server's address")?;
        let responder = Responder::bind(
            addr.port(),
            addr.port(),
            device_type.clone(),
            images.clone(),
        )
        .with_context(|| format!("cannot answer peer searches on UDP port {}", addr.port()))?;
        let state = Arc::new(State {
            device_type,
            images,
            transfers: Arc::new(Semaphore::new(settings.max_transfers)),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            idle: IDLE_TIMEOUT,
        });
        Ok((
            Server {
                listener,
                responder,
                state,
            },
            addr,
        ))
    }

    /// Answers searches and serves images until `stop` is cancelled; then
    /// closes every connection (a peer resumes elsewhere) and returns.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Server {
            listener,
            responder,
            state,
        } = self;
        let tasks = TaskTracker::new();
        tasks.spawn(responder.run(stop.clone()));
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, from) = match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, for one: the next accept may
                // work once a connection closes.
                Err(e) => {
                    warn!("cannot accept a peer connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // A range's headers and body go out in separate writes; with
            // Nagle's algorithm the body would wait for the peer's delayed
            // ACK of the headers, milliseconds per range.
            if let Err(e) = stream.set_nodelay(true) {
                debug!(peer = %from, "cannot set TCP_NODELAY: {e}");
            }
            let Ok(permit) = state.connections.clone().try_acquire_owned() else {
                debug!(peer = %from, "closing the connection of {from}: too many connections");
                continue;
            };
            tasks.spawn(connection(
                state.clone(),
                stream,
                from,
                permit,
                stop.clone(),
            ));
        }
        tasks.close();
        tasks.wait().await;
        Ok(())
    }

    #[cfg(test)]
    fn with_idle(mut self, idle: Duration) -> Server {
        Arc::get_mut(&mut self.state).expect("not running yet").idle = idle;
        self
    }
}

/// Serves one connection until it closes, goes idle or `stop` is
/// cancelled.
async fn connection(
    state: Arc<State>,
    stream: TcpStream,
    from: SocketAddr,
    _permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io: stream,
        activity: activity.clone(),
    });
    let idle = state.idle;
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.answer(request, from).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(served);
    loop {
        tokio::select! {
            ended = served.as_mut() => {
                if let Err(e) = ended {
                    debug!(peer = %from, "connection of {from} ended: {e}");
                }
                return;
            }
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(activity.last() + idle) => {
                if activity.last() + idle <= Instant::now() {
                    debug!(peer = %from, "closing the connection of {from}: nothing moved for {} s", idle.as_secs());
                    return;
                }
            }
        }
    }
}

/// Why a request gets the 404 that says nothing.
struct Refused(String);

impl State {
    async fn answer(&self, request: Request<Incoming>, from: SocketAddr) -> Response<Body> {
        let (method, path) = (request.method().clone(), request.uri().to_string());
        match self.image(&request, from).await {
            Ok(response) => response,
            Err(Refused(reason)) => {
                debug!(peer = %from, "refused {method} {path:?} from {from}: {reason}");
                status(StatusCode::NOT_FOUND)
            }
        }
    }

    async fn image(
        &self,
        request: &Request<Incoming>,
        from: SocketAddr,
    ) -> Result<Response<Body>, Refused> {
        let head = match *request.method() {
            Method::GET => false,
            Method::HEAD => true,
            ref other => return Err(Refused(format!("method {other}"))),
        };
        let uri = request.uri();
        let sha256 = uri
            .path()
            .strip_prefix("/v1/images/")
            .filter(|s| is_sha256(s) && uri.query().is_none())
            .ok_or_else(|| Refused("not an image path".into()))?;
        let device_type = request
            .headers()
            .get(DEVICE_TYPE_HEADER)
            .and_then(|v| v.to_str().ok());
        if device_type != Some(self.device_type.as_str()) {
            return Err(Refused(format!("device type {device_type:?}")));
        }
        let image = self
            .images
            .find(sha256)
            .ok_or_else(|| Refused("an image this device does not hold".into()))?;
        let mut file = tokio::fs::File::open(&image.path)
            .await
            .map_err(|e| Refused(format!("{}: {e}", image.path.display())))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| Refused(format!("{}: {e}", image.path.display())))?
            .len();
        // The record says what was verified; a file that changed since is
        // not that image any more.
        if size != image.size {
            return Err(Refused(format!(
                "{} has {size} bytes, not the {} verified",
                image.path.display(),
                image.size
            )));
        }

        let (partial, first, last) = match selection(request.headers().get(RANGE), size) {
            Selection::Whole => (false, 0, size.saturating_sub(1)),
            Selection::Part(first, last) => (true, first, last),
            Selection::Unsatisfiable => {
                let mut response = status(StatusCode::RANGE_NOT_SATISFIABLE);
                set(&mut response, CONTENT_RANGE, format!("bytes */{size}"));
                return Ok(response);
            }
        };
        let len = if size == 0 { 0 } else { last - first + 1 };
        let mut response = status(if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        });
        set(&mut response, CONTENT_LENGTH, len.to_string());
        set(&mut response, ETAG, format!("\"{sha256}\""));
        set(&mut response, ACCEPT_RANGES, "bytes".into());
        set(
            &mut response,
            CONTENT_TYPE,
            "application/octet-stream".into(),
        );
        if partial {
            set(
                &mut response,
                CONTENT_RANGE,
                format!("bytes {first}-{last}/{size}"),
            );
        }
        if head {
            return Ok(response);
        }

        let Ok(slot) = self.transfers.clone().try_acquire_owned() else {
            debug!(peer = %from, "telling {from} to come back later: serving as many peers as allowed");
            let mut busy = status(StatusCode::SERVICE_UNAVAILABLE);
            set(&mut busy, RETRY_AFTER, "1".into());
            return Ok(busy);
        };
        if first > 0 {
            file.seek(SeekFrom::Start(first))
                .await
                .map_err(|e| Refused(format!("{}: {e}", image.path.display())))?;
        }
        debug!(peer = %from, "sending bytes {first}-{last} of image {sha256} ({}) to {from}", image.component);
        *response.body_mut() = stream(file, len, slot);
        Ok(response)
    }
}

/// The body that reads `len` bytes of `file` as the peer takes them, and
/// frees its transfer slot when it ends or the connection drops.
fn stream(file: tokio::fs::File, len: u64, slot: OwnedSemaphorePermit) -> Body {
    let chunks =
        futures_util::stream::try_unfold((file, len, slot), |(mut file, left, slot)| async move {
            if left == 0 {
                return Ok(None);
            }
            let mut buf = vec![0; left.min(CHUNK_BYTES as u64) as usize];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image ended before its size",
                ));
            }
            buf.truncate(n);
            Ok(Some((
                Frame::data(Bytes::from(buf)),
                (file, left - n as u64, slot),
            )))
        });
    StreamBody::new(chunks).boxed_unsync()
}

fn status(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn set(response: &mut Response<Body>, name: hyper::header::HeaderName, value: String) {
    let value = HeaderValue::try_from(value).expect("header values built from numbers and hex");
    response.headers_mut().insert(name, value);
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Selection {
    /// No range, or one this server does not do (several ranges, another
    /// unit, a malformed one): the whole image, as HTTP allows.
    Whole,
    /// Bytes `first..=last`, within the image.
    Part(u64, u64),
    /// A range that starts past the end.
    Unsatisfiable,
}

fn selection(header: Option<&HeaderValue>, size: u64) -> Selection {
    let Some(spec) = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Selection::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Selection::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    if first.trim().is_empty() {
        // `bytes=-n`: the last n bytes.
        return match number(last) {
            Some(n) if n > 0 && size > 0 => Selection::Part(size.saturating_sub(n), size - 1),
            Some(_) => Selection::Unsatisfiable,
            None => Selection::Whole,
        };
    }
    let Some(first) = number(first) else {
        return Selection::Whole;
    };
    let last = if last.trim().is_empty() {
        None
    } else {
        match number(last) {
            Some(last) if last >= first => Some(last),
            _ => return Selection::Whole,
        }
    };
    if first >= size {
        return Selection::Unsatisfiable;
    }
    Selection::Part(first, last.unwrap_or(u64::MAX).min(size - 1))
}

/// When a connection last moved a byte.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A connection that records each byte it moves in its [`Activity`].
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::testing::{Held, content, settings, start, start_bound};
    use super::*;

    /// Sends `head` as it is (no client rewrites `..` or the method) and
    /// returns the status line and headers of the answer.
    async fn raw(addr: SocketAddr, head: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn get(path: &str, device_type: Option<&str>) -> String {
        let mut head = format!("GET {path} HTTP/1.1\r\nhost: peer\r\nconnection: close\r\n");
        if let Some(t) = device_type {
            head.push_str(&format!("tend-device-type: {t}\r\n"));
        }
        head + "\r\n"
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    async fn ask(addr: SocketAddr, sha256: &str, range: Option<&str>) -> reqwest::Response {
        let mut request = client()
            .get(format!("http://{addr}/v1/images/{sha256}"))
            .header(DEVICE_TYPE_HEADER, "kiosk");
        if let Some(range) = range {
            request = request.header(RANGE, range);
        }
        request.send().await.unwrap()
    }

    fn text(response: &reqwest::Response, name: &str) -> String {
        response.headers()[name].to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn ranges_are_served_as_206_and_no_range_as_the_whole_image() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = content(100_000);
        let mut held = Held::default();
        let sha = held.add(dir.path(), "app", &bytes);
        let peer = start(&settings(), "kiosk", held).await;

        let part = ask(peer.addr, &sha, Some("bytes=1000-1999")).await;
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(text(&part, "content-range"), "bytes 1000-1999/100000");
        assert_eq!(text(&part, "content-length"), "1000");
        assert_eq!(text(&part, "etag"), format!("\"{sha}\""));
        assert_eq!(text(&part, "accept-ranges"), "bytes");
        assert_eq!(part.bytes().await.unwrap(), bytes[1000..2000]);

        let tail = ask(peer.addr, &sha, Some("bytes=99000-")).await;
        assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(text(&tail, "content-range"), "bytes 99000-99999/100000");
        assert_eq!(tail.bytes().await.unwrap(), bytes[99_000..]);

        let past = ask(peer.addr, &sha, Some("bytes=99990-200000")).await;
        assert_eq!(text(&past, "content-range"), "bytes 99990-99999/100000");
        assert_eq!(past.bytes().await.unwrap(), bytes[99_990..]);

        let whole = ask(peer.addr, &sha, None).await;
        assert_eq!(whole.status(), StatusCode::OK);
        assert_eq!(text(&whole, "content-length"), "100000");
        assert!(whole.headers().get("content-range").is_none());
        assert_eq!(whole.bytes().await.unwrap(), bytes);

        let head = client()
            .head(format!("http://{}/v1/images/{sha}", peer.addr))
            .header(DEVICE_TYPE_HEADER, "kiosk")
            .header(RANGE, "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(text(&head, "content-length"), "10");
        assert_eq!(text(&head, "content-range"), "bytes 10-19/100000");
        assert!(head.bytes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_range_past_the_end_is_416_with_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Held::default();
        let sha = held.add(dir.path(), "app", &content(5000));
        let peer = start(&settings(), "kiosk", held).await;

        for range in ["bytes=5000-5999", "bytes=7000-"] {
            let answer = ask(peer.addr, &sha, Some(range)).await;
            assert_eq!(
                answer.status(),
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{range}"
            );
            assert_eq!(text(&answer, "content-range"), "bytes */5000");
        }
    }

    #[tokio::test]
    async fn unknown_digests_other_types_and_other_paths_all_get_the_same_404() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Held::default();
        let sha = held.add(dir.path(), "app", &content(5000));
        // Held, but its file is no longer what was verified.
        let changed = super::super::testing::sha256(b"changed");
        let path = dir.path().join("changed.img");
        std::fs::write(&path, b"changed since").unwrap();
        held.insert(
            &changed,
            super::super::Image {
                component: "app".into(),
                path,
                size: 7,
            },
        );
        let peer = start(&settings(), "kiosk", held).await;
        let unknown = super::super::testing::sha256(b"not held");

        assert!(
            raw(peer.addr, &get(&format!("/v1/images/{sha}"), Some("kiosk")))
                .await
                .starts_with("HTTP/1.1 200")
        );
        let refused = [
            get(&format!("/v1/images/{unknown}"), Some("kiosk")),
            get(&format!("/v1/images/{sha}"), Some("camera")),
            get(&format!("/v1/images/{sha}"), None),
            get(&format!("/v1/images/{changed}"), Some("kiosk")),
            get(&format!("/v1/images/{}", sha.to_uppercase()), Some("kiosk")),
            get(&format!("/v1/images/{sha}/"), Some("kiosk")),
            get(&format!("/v1/images/{sha}?x=1"), Some("kiosk")),
            get(&format!("/v1/images/../images/{sha}"), Some("kiosk")),
            get(&format!("/v1/images/{sha}/../{sha}"), Some("kiosk")),
            get("/v1/images/../../../etc/passwd", Some("kiosk")),
            get("/v1/images/", Some("kiosk")),
            get("/", Some("kiosk")),
            format!(
                "DELETE /v1/images/{sha} HTTP/1.1\r\nhost: peer\r\nconnection: close\r\n\
                 tend-device-type: kiosk\r\n\r\n"
            ),
        ];
        for request in refused {
            let answer = raw(peer.addr, &request).await;
            assert!(
                answer.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{request}: {answer}"
            );
            assert!(answer.contains("content-length: 0\r\n"), "{answer}");
        }
    }

    #[tokio::test]
    async fn one_transfer_more_than_max_transfers_is_told_to_come_back() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than what the sockets buffer, so a transfer nobody reads
        // stays under way; sparse, so it costs no disk.
        let size = 256 * 1024 * 1024;
        let path = dir.path().join("big.img");
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let sha = super::super::testing::sha256(b"big");
        let mut held = Held::default();
        held.insert(
            &sha,
            super::super::Image {
                component: "os".into(),
                path,
                size,
            },
        );
        let mut settings = settings();
        settings.max_transfers = 1;
        let peer = start(&settings, "kiosk", held).await;

        let mut stalled = TcpStream::connect(peer.addr).await.unwrap();
        stalled
            .write_all(get(&format!("/v1/images/{sha}"), Some("kiosk")).as_bytes())
            .await
            .unwrap();
        let mut first = [0; 12];
        stalled.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");

        let busy = ask(peer.addr, &sha, Some("bytes=0-9")).await;
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(text(&busy, "retry-after"), "1");
        // Only transfers count: a HEAD is still answered.
        let head = client()
            .head(format!("http://{}/v1/images/{sha}", peer.addr))
            .header(DEVICE_TYPE_HEADER, "kiosk")
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);

        // The slot is free again once that transfer's peer goes away.
        drop(stalled);
        let mut answered = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..50 {
            answered = ask(peer.addr, &sha, Some("bytes=0-9")).await.status();
            if answered == StatusCode::PARTIAL_CONTENT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(answered, StatusCode::PARTIAL_CONTENT);
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_loses_its_slot_after_the_idle_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let size = 256 * 1024 * 1024;
        let path = dir.path().join("big.img");
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let sha = super::super::testing::sha256(b"big");
        let mut held = Held::default();
        held.insert(
            &sha,
            super::super::Image {
                component: "os".into(),
                path,
                size,
            },
        );
        let mut settings = settings();
        settings.max_transfers = 1;
        let (server, addr) = Server::bind(&settings, "kiosk".into(), Arc::new(held))
            .await
            .unwrap();
        let _peer = start_bound(server.with_idle(Duration::from_millis(300)), addr);

        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(get(&format!("/v1/images/{sha}"), Some("kiosk")).as_bytes())
            .await
            .unwrap();
        let mut first = [0; 12];
        stalled.read_exact(&mut first).await.unwrap();
        assert_eq!(
            ask(addr, &sha, Some("bytes=0-9")).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        tokio::time::sleep(Duration::from_millis(800)).await;

        assert_eq!(
            ask(addr, &sha, Some("bytes=0-9")).await.status(),
            StatusCode::PARTIAL_CONTENT
        );
        drop(stalled);
    }

    #[test]
    fn range_headers_are_read_as_http_says() {
        let at = |v: &str| selection(Some(&HeaderValue::from_str(v).unwrap()), 1000);
        assert_eq!(selection(None, 1000), Selection::Whole);
        assert_eq!(at("bytes=0-99"), Selection::Part(0, 99));
        assert_eq!(at("bytes=900-"), Selection::Part(900, 999));
        assert_eq!(at("bytes=900-5000"), Selection::Part(900, 999));
        assert_eq!(at("bytes=-100"), Selection::Part(900, 999));
        assert_eq!(at("bytes=-5000"), Selection::Part(0, 999));
        assert_eq!(at("bytes=1000-"), Selection::Unsatisfiable);
        assert_eq!(at("bytes=-0"), Selection::Unsatisfiable);
        for ignored in [
            "bytes=5-1",
            "bytes=0-1,5-9",
            "items=0-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes",
        ] {
            assert_eq!(at(ignored), Selection::Whole, "{ignored}");
        }
    }
}
