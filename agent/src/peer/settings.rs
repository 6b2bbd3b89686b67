//! `[peer]`: whether this device serves its images to peers, where, and
//! how long a device that needs an image searches and waits for them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::Deserialize;

/// The port of the contract's example; the discovery port is the same
/// number, so one rule in a firewall covers both.
pub const DEFAULT_PORT: u16 = 7717;
pub const DEFAULT_SEARCH_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3000;
/// A device serving four peers at once still has bandwidth and CPU left
/// for its own work; a fleet recovering together spreads over several
/// healthy peers.
pub const DEFAULT_MAX_TRANSFERS: usize = 4;
/// Below 50 ms not even a busy LAN answers; above a minute a device with
/// a broken component waits longer than a person at it would.
pub const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 50..=60_000;
pub const MAX_TRANSFERS_RANGE: std::ops::RangeInclusive<usize> = 1..=64;
/// Each configured peer may cost a connect timeout per round.
pub const MAX_PEERS: usize = 32;
/// Ten minutes without the server: long enough that a brief outage never
/// sets a recovery off, short enough that a kiosk broken at night is back
/// before the doors open.
pub const DEFAULT_OFFLINE_RECOVER_S: u64 = 600;
/// 0 turns the offline trigger off; below 5 s every lost heartbeat would
/// count as an outage.
pub const OFFLINE_RECOVER_S_RANGE: std::ops::RangeInclusive<u64> = 5..=604_800;

/// `[peer]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// Offer this device's verified component images to peers of its type.
    pub serve: bool,
    /// Where the image server listens; its port is also the UDP port of
    /// discovery, for searching and for answering.
    pub listen: SocketAddr,
    /// Asked in turn, over HTTP, when a search finds nobody (multicast and
    /// broadcast dropped, or peers on another subnet). Each search is also
    /// sent to them directly, so one that answers it is tried like a
    /// neighbour that did.
    pub peers: Vec<SocketAddr>,
    /// How long a search waits for offers.
    pub search_timeout: Duration,
    /// How long a connection to a peer may take, and how long a transfer
    /// may go without a byte before the next peer is tried.
    pub connect_timeout: Duration,
    /// How many peers this device serves at once; one more is told to
    /// come back later (503).
    pub max_transfers: usize,
    /// Restore a broken component (its health check fails and it has no
    /// backup) from a peer without waiting for an instruction: at start,
    /// and once the server has been out of reach for `offline_recover`.
    pub auto_recover: bool,
    /// How long the server must be out of reach before the agent looks for
    /// broken components on its own; `None` (0 in the file): only at start.
    pub offline_recover: Option<Duration>,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            serve: false,
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            peers: Vec::new(),
            search_timeout: Duration::from_millis(DEFAULT_SEARCH_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            max_transfers: DEFAULT_MAX_TRANSFERS,
            auto_recover: true,
            offline_recover: Some(Duration::from_secs(DEFAULT_OFFLINE_RECOVER_S)),
        }
    }
}

impl PeerSettings {
    /// The UDP port searches are sent to and answered on.
    pub fn discovery_port(&self) -> u16 {
        self.listen.port()
    }
}

/// The table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeer {
    serve: Option<bool>,
    listen: Option<String>,
    peers: Option<Vec<String>>,
    search_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    max_transfers: Option<usize>,
    auto_recover: Option<bool>,
    offline_recover_s: Option<u64>,
}

impl PeerSettings {
    pub(crate) fn parse(raw: RawPeer) -> anyhow::Result<PeerSettings> {
        let defaults = PeerSettings::default();
        let listen = match raw.listen {
            Some(text) => text.trim().parse::<SocketAddr>().map_err(|e| {
                anyhow!("peer.listen {text:?} is not an address and port (\"0.0.0.0:7717\"): {e}")
            })?,
            None => defaults.listen,
        };
        // Discovery is IPv4 multicast and broadcast; an IPv6 listener
        // would serve peers that can never find it.
        if !listen.is_ipv4() {
            bail!("peer.listen {listen} must be an IPv4 address");
        }
        let peers = raw
            .peers
            .unwrap_or_default()
            .into_iter()
            .map(|text| {
                let addr = text.trim().parse::<SocketAddr>().map_err(|e| {
                    anyhow!("peer.peers: {text:?} is not an address and port (\"192.168.1.20:7717\"): {e}")
                })?;
                if addr.ip().is_unspecified() || addr.port() == 0 {
                    bail!("peer.peers: {addr} names no peer");
                }
                Ok(addr)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if peers.len() > MAX_PEERS {
            bail!("peer.peers lists more than {MAX_PEERS} peers");
        }
        let timeout = |key: &str, value: Option<u64>, default: Duration| {
            let ms = value.unwrap_or(default.as_millis() as u64);
            if !TIMEOUT_MS_RANGE.contains(&ms) {
                bail!(
                    "peer.{key} must be between {} and {}",
                    TIMEOUT_MS_RANGE.start(),
                    TIMEOUT_MS_RANGE.end()
                );
            }
            Ok(Duration::from_millis(ms))
        };
        let max_transfers = raw.max_transfers.unwrap_or(defaults.max_transfers);
        if !MAX_TRANSFERS_RANGE.contains(&max_transfers) {
            bail!(
                "peer.max_transfers must be between {} and {}",
                MAX_TRANSFERS_RANGE.start(),
                MAX_TRANSFERS_RANGE.end()
            );
        }
        let offline_recover = match raw.offline_recover_s {
            None => defaults.offline_recover,
            Some(0) => None,
            Some(s) if OFFLINE_RECOVER_S_RANGE.contains(&s) => Some(Duration::from_secs(s)),
            Some(_) => bail!(
                "peer.offline_recover_s must be 0 (off) or between {} and {}",
                OFFLINE_RECOVER_S_RANGE.start(),
                OFFLINE_RECOVER_S_RANGE.end()
            ),
        };
        Ok(PeerSettings {
            serve: raw.serve.unwrap_or(defaults.serve),
            auto_recover: raw.auto_recover.unwrap_or(defaults.auto_recover),
            offline_recover,
            listen,
            peers,
            search_timeout: timeout(
                "search_timeout_ms",
                raw.search_timeout_ms,
                defaults.search_timeout,
            )?,
            connect_timeout: timeout(
                "connect_timeout_ms",
                raw.connect_timeout_ms,
                defaults.connect_timeout,
            )?,
            max_transfers,
        })
    }
}
