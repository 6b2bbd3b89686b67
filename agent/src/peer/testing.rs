//! Peers for the tests of this module: real servers on 127.0.0.1 with
//! images in a temporary directory, and a hand-written HTTP peer that
//! misbehaves on purpose and records the ranges it was asked for.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Image, Images, PeerSettings, Server};

/// Bytes that differ from one position to the next, so a range written
/// at the wrong place changes the hash.
pub fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Images held by a test device.
#[derive(Default)]
pub struct Held(HashMap<String, Image>);

impl Held {
    /// Writes `bytes` under `dir` as an image of `component`; returns its
    /// digest.
    pub fn add(&mut self, dir: &Path, component: &str, bytes: &[u8]) -> String {
        let sha256 = sha256(bytes);
        let path = dir.join(format!("{component}-{sha256}.img"));
        std::fs::write(&path, bytes).unwrap();
        self.0.insert(
            sha256.clone(),
            Image {
                component: component.into(),
                path,
                size: bytes.len() as u64,
            },
        );
        sha256
    }

    pub fn insert(&mut self, sha256: &str, image: Image) {
        self.0.insert(sha256.into(), image);
    }
}

impl Images for Held {
    fn find(&self, sha256: &str) -> Option<Image> {
        self.0.get(sha256).cloned()
    }
}

/// Settings for a device on 127.0.0.1 with short timeouts, so a test
/// that waits for one waits a fraction of a second.
pub fn settings() -> PeerSettings {
    PeerSettings {
        serve: true,
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        peers: Vec::new(),
        search_timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(300),
        max_transfers: 4,
        ..PeerSettings::default()
    }
}

/// A serving device; stops when the token is cancelled or dropped with
/// the returned guard.
pub struct Running {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start(settings: &PeerSettings, device_type: &str, images: Held) -> Running {
    let (server, addr) = Server::bind(settings, device_type.into(), Arc::new(images))
        .await
        .unwrap();
    start_bound(server, addr)
}

pub fn start_bound(server: Server, addr: SocketAddr) -> Running {
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    Running { addr, stop }
}

/// How a [`FakePeer`] behaves.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    Honest,
    /// Sends one byte of every image altered.
    Altered,
    /// Dies (closes every connection at once) after sending this many
    /// bytes of body in all.
    DiesAfter(u64),
    /// Accepts connections and never answers.
    Silent,
}

/// An HTTP peer written by hand: one request per connection, ranges
/// only, no checks but the ones a test needs.
pub struct FakePeer {
    pub addr: SocketAddr,
    /// Each GET's `Range`, in order.
    pub ranges: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakePeer {
    pub async fn start(bytes: Vec<u8>, behaviour: Behaviour) -> FakePeer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen, stopped) = (ranges.clone(), stop.clone());
        let bytes = Arc::new(bytes);
        let sent = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let (seen, bytes, sent, stopped) =
                    (seen.clone(), bytes.clone(), sent.clone(), stopped.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stopped.cancelled() => {}
                        _ = answer(stream, &bytes, behaviour, &seen, &sent) => {}
                    }
                });
            }
        });
        FakePeer { addr, ranges, stop }
    }

    pub fn ranges(&self) -> Vec<String> {
        self.ranges.lock().unwrap().clone()
    }
}

async fn answer(
    mut stream: TcpStream,
    bytes: &[u8],
    behaviour: Behaviour,
    seen: &Mutex<Vec<String>>,
    sent: &AtomicU64,
) {
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let size = bytes.len() as u64;
    if let Behaviour::Silent = behaviour {
        std::future::pending::<()>().await;
    }
    if let Behaviour::DiesAfter(limit) = behaviour
        && sent.load(Ordering::SeqCst) >= limit
    {
        return;
    }
    if head.starts_with("head ") {
        let answer =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n");
        let _ = stream.write_all(answer.as_bytes()).await;
        return;
    }
    let range = head
        .lines()
        .find_map(|l| l.strip_prefix("range:"))
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    seen.lock().unwrap().push(range.clone());
    let (first, last) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .unwrap();
    let last = last.min(size - 1);
    let mut body = bytes[first as usize..=last as usize].to_vec();
    if let Behaviour::Altered = behaviour {
        let middle = size / 2;
        if (first..=last).contains(&middle) {
            body[(middle - first) as usize] ^= 0xff;
        }
    }
    if let Behaviour::DiesAfter(limit) = behaviour {
        let allowed = limit.saturating_sub(sent.load(Ordering::SeqCst));
        body.truncate(allowed.min(body.len() as u64) as usize);
    }
    let answer = format!(
        "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {first}-{last}/{size}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        last - first + 1
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    sent.fetch_add(body.len() as u64, Ordering::SeqCst);
    let _ = stream.flush().await;
}
