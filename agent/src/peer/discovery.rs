//! Finding peers: the responder a serving device runs, and the search a
//! device that needs an image sends.
//!
//! A search goes out on every usable IPv4 interface twice: to the group
//! [`GROUP`](super::wire::GROUP) with that interface as the multicast
//! interface, and to the interface's directed broadcast address, for
//! switches and access points that drop multicast. Neither needs a
//! default route, so a device whose uplink is cut still finds its LAN.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Images;
use super::wire::{GROUP, MAX_DATAGRAM, Message, Offer, Search, VERSION};

/// Interfaces that come up after the start (a cable plugged in, Wi-Fi
/// joined) are joined within this.
const REJOIN_EVERY: Duration = Duration::from_secs(30);

/// Answers per second, and the burst allowed: a fleet that recovers at
/// once asks a few times per device, while a flood of forged searches
/// (with a spoofed source) cannot turn the device into a reflector.
const ANSWERS_PER_SECOND: f64 = 20.0;

/// Once one peer answered, others on the same LAN answer within a few
/// milliseconds; waiting a little gathers them without waiting for the
/// whole search timeout.
const GATHER_AFTER_FIRST: Duration = Duration::from_millis(200);

/// The most peers one search keeps: enough to survive a few dead or
/// dishonest ones, few enough that stalling candidates cannot use up the
/// whole deadline.
const MAX_CANDIDATES: usize = 8;

/// One IPv4 interface a search can go out on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interface {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `None` on point-to-point links.
    pub broadcast: Option<Ipv4Addr>,
    pub netmask: Ipv4Addr,
}

impl Interface {
    /// Whether `ip` is on this interface's subnet.
    fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask);
        u32::from(self.ip) & mask == u32::from(ip) & mask
    }
}

/// The up, non-loopback IPv4 interfaces. Many drivers report their
/// operational state as unknown, so only the states that mean "down" are
/// left out.
pub(crate) fn interfaces() -> Vec<Interface> {
    use if_addrs::{IfAddr, IfOperStatus};
    let all = match if_addrs::get_if_addrs() {
        Ok(all) => all,
        Err(e) => {
            debug!("cannot list the network interfaces: {e}");
            return Vec::new();
        }
    };
    all.into_iter()
        .filter(|i| {
            !i.is_loopback()
                && !matches!(
                    i.oper_status,
                    IfOperStatus::Down | IfOperStatus::NotPresent | IfOperStatus::LowerLayerDown
                )
        })
        .filter_map(|i| match i.addr {
            IfAddr::V4(v4) => Some(Interface {
                name: i.name,
                ip: v4.ip,
                broadcast: v4.broadcast.filter(|b| !b.is_unspecified()),
                netmask: v4.netmask,
            }),
            IfAddr::V6(_) => None,
        })
        .collect()
}

/// A UDP socket on `0.0.0.0:port` that several processes may share (an
/// agent restarting while the old one still holds the port, or a test
/// with two devices on one host).
fn shared_udp(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

/// Answers searches for images this device holds, from devices of its
/// type.
pub(crate) struct Responder {
    socket: UdpSocket,
    device_type: String,
    images: Arc<dyn Images>,
    /// Where this device's image server listens, sent in each offer.
    http_port: u16,
    budget: Budget,
    /// The interfaces as last listed (at each re-join): a search from
    /// outside their subnets (a WAN or cellular link) gets no answer, so
    /// the device tells nobody beyond its LAN which images it holds.
    links: Vec<Interface>,
}

impl Responder {
    /// Binds the discovery port; the group is joined when it runs.
    pub(crate) fn bind(
        port: u16,
        http_port: u16,
        device_type: String,
        images: Arc<dyn Images>,
    ) -> io::Result<Responder> {
        Ok(Responder {
            socket: shared_udp(port)?,
            device_type,
            images,
            http_port,
            budget: Budget::new(ANSWERS_PER_SECOND),
            links: Vec::new(),
        })
    }

    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Answers searches until `stop` is cancelled.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        self.join();
        let mut rejoin =
            tokio::time::interval_at(tokio::time::Instant::now() + REJOIN_EVERY, REJOIN_EVERY);
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One byte more than allowed, to tell a datagram at the limit from
        // one cut to fit the buffer.
        let mut buf = vec![0; MAX_DATAGRAM + 1];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = rejoin.tick() => self.join(),
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        if !self.on_lan(from) {
                            debug!(peer = %from, "ignoring a search from {from}: not on this device's LAN");
                            continue;
                        }
                        if let Some(offer) = self.answer(&buf[..n], from)
                            && let Err(e) = self.socket.send_to(&offer, from).await
                        {
                            debug!(peer = %from, "cannot answer the search of {from}: {e}");
                        }
                    }
                    // An ICMP error from an earlier answer surfaces here on
                    // Linux; it says nothing about the next datagram.
                    Err(e) => debug!("discovery socket: {e}"),
                },
            }
        }
    }

    /// Joins the group on every usable interface. Joining twice fails with
    /// "address in use", which is what a re-join of a known interface
    /// looks like.
    fn join(&mut self) {
        self.links = interfaces();
        for interface in &self.links {
            match self.socket.join_multicast_v4(GROUP, interface.ip) {
                Ok(()) => debug!(
                    interface = %interface.name,
                    "listening for peer searches on {} ({})", interface.name, interface.ip
                ),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
                Err(e) => debug!(
                    interface = %interface.name,
                    "cannot join the peer discovery group on {}: {e}", interface.name
                ),
            }
        }
    }

    /// Whether `from` is on the subnet of one of this device's interfaces
    /// (or this device itself).
    fn on_lan(&self, from: SocketAddr) -> bool {
        match from.ip() {
            std::net::IpAddr::V4(ip) => {
                ip.is_loopback() || self.links.iter().any(|link| link.on_link(ip))
            }
            std::net::IpAddr::V6(_) => false,
        }
    }

    /// The offer to send back for `datagram`, if it is a search this
    /// device should answer. Everything else is dropped without a word: a
    /// peer of another type, or without the image, stays silent.
    pub(crate) fn answer(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let search = match Message::decode(datagram) {
            Ok(Message::Search(search)) => search,
            Ok(Message::Offer(_)) => return None,
            Err(e) => {
                debug!(peer = %from, "ignoring a datagram from {from}: {e}");
                return None;
            }
        };
        let Search {
            nonce,
            device_type,
            component,
            sha256,
            ..
        } = search;
        if device_type != self.device_type {
            return None;
        }
        let image = self
            .images
            .find(&sha256)
            .filter(|image| image.component == component)?;
        if !self.budget.take(Instant::now()) {
            debug!(peer = %from, "not answering {from}: too many searches");
            return None;
        }
        debug!(peer = %from, "offering image {sha256} of {component} to {from}");
        Some(
            Message::Offer(Offer {
                v: VERSION,
                nonce,
                sha256,
                size: image.size,
                port: self.http_port,
            })
            .encode(),
        )
    }
}

/// A token bucket: `rate` tokens a second, as many at most.
struct Budget {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(rate: f64) -> Budget {
        Budget {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a search looks for.
pub(crate) struct Query<'a> {
    pub device_type: &'a str,
    pub component: &'a str,
    pub sha256: &'a str,
    /// The size the image must have, when the caller knows it.
    pub size: Option<u64>,
    /// Offers of larger images are not believed.
    pub max_size: u64,
}

/// A peer that offered the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// The offer's source address, with its image server's port.
    pub peer: SocketAddr,
    pub size: u64,
}

/// Where one copy of a search goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Destination {
    pub to: SocketAddrV4,
    /// The interface a multicast copy leaves by.
    pub via: Option<Ipv4Addr>,
}

/// Every copy of a search on this device's LAN: the group and the
/// directed broadcast address of each usable interface on `port`, then
/// each of `unicast` (the configured peers, which may be on another
/// subnet).
pub(crate) fn destinations(
    interfaces: &[Interface],
    port: u16,
    unicast: &[SocketAddr],
) -> Vec<Destination> {
    let mut all = Vec::new();
    for interface in interfaces {
        all.push(Destination {
            to: SocketAddrV4::new(GROUP, port),
            via: Some(interface.ip),
        });
        if let Some(broadcast) = interface.broadcast {
            all.push(Destination {
                to: SocketAddrV4::new(broadcast, port),
                via: None,
            });
        }
    }
    all.extend(unicast.iter().filter_map(|addr| match addr {
        SocketAddr::V4(v4) => Some(Destination { to: *v4, via: None }),
        SocketAddr::V6(_) => None,
    }));
    all
}

/// Searches the LAN (and `unicast`) for peers holding `query`'s image,
/// for at most `timeout`. Offers from this device's own addresses (its
/// responder hears its own broadcast) are left out.
pub(crate) async fn search(
    port: u16,
    unicast: &[SocketAddr],
    query: &Query<'_>,
    timeout: Duration,
) -> io::Result<Vec<Found>> {
    let interfaces = interfaces();
    let own: HashSet<IpAddr> = interfaces.iter().map(|i| IpAddr::V4(i.ip)).collect();
    let found = search_at(&destinations(&interfaces, port, unicast), query, timeout).await?;
    Ok(found
        .into_iter()
        .filter(|f| !own.contains(&f.peer.ip()))
        .collect())
}

/// Sends one search to each of `destinations` and gathers the offers that
/// answer it: until `timeout`, or shortly after the first.
pub(crate) async fn search_at(
    destinations: &[Destination],
    query: &Query<'_>,
    timeout: Duration,
) -> io::Result<Vec<Found>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    socket.set_broadcast(true)?;
    // One hop: the search is for this LAN only.
    socket.set_multicast_ttl_v4(1)?;
    socket.set_multicast_loop_v4(false)?;
    let nonce = super::wire::nonce();
    let search = Message::Search(Search {
        v: VERSION,
        nonce: nonce.clone(),
        device_type: query.device_type.to_owned(),
        component: query.component.to_owned(),
        sha256: query.sha256.to_owned(),
    })
    .encode();
    for destination in destinations {
        if let Some(via) = destination.via
            && let Err(e) = SockRef::from(&socket).set_multicast_if_v4(&via)
        {
            debug!("cannot search through {via}: {e}");
            continue;
        }
        // A destination that cannot be reached (an interface without a
        // route for it) must not keep the others from being tried.
        if let Err(e) = socket.send_to(&search, destination.to).await {
            debug!("cannot send a peer search to {}: {e}", destination.to);
        }
    }

    let mut found: Vec<Found> = Vec::new();
    let mut until = Instant::now() + timeout;
    let mut buf = vec![0; MAX_DATAGRAM + 1];
    loop {
        let received = tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            received = socket.recv_from(&mut buf) => received,
        };
        let (n, from) = match received {
            Ok(received) => received,
            Err(e) => {
                debug!("peer search socket: {e}");
                continue;
            }
        };
        let offer = match Message::decode(&buf[..n]) {
            Ok(Message::Offer(offer)) => offer,
            Ok(Message::Search(_)) => continue,
            Err(e) => {
                debug!(peer = %from, "ignoring a datagram from {from}: {e}");
                continue;
            }
        };
        if offer.nonce != nonce || offer.sha256 != query.sha256 {
            debug!(peer = %from, "ignoring an offer from {from} for another search");
            continue;
        }
        let plausible = match query.size {
            Some(size) => offer.size == size,
            None => offer.size <= query.max_size,
        };
        if !plausible {
            debug!(peer = %from, "ignoring the offer of {from}: {} bytes", offer.size);
            continue;
        }
        // One offer per address: a host that answers from many ports
        // could otherwise fill the list with candidates that all stall.
        let peer = SocketAddr::new(from.ip(), offer.port);
        if found.iter().any(|f| f.peer.ip() == peer.ip()) {
            continue;
        }
        debug!(peer = %peer, "{peer} offers image {}", query.sha256);
        if found.is_empty() {
            until = until.min(Instant::now() + GATHER_AFTER_FIRST);
        }
        found.push(Found {
            peer,
            size: offer.size,
        });
        if found.len() >= MAX_CANDIDATES {
            break;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::Image;
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const OTHER: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    struct One;

    impl Images for One {
        fn find(&self, sha256: &str) -> Option<Image> {
            (sha256 == SHA).then(|| Image {
                component: "app".into(),
                path: PathBuf::from("/nonexistent"),
                size: 1234,
            })
        }
    }

    fn search(device_type: &str, component: &str, sha256: &str) -> Vec<u8> {
        Message::Search(Search {
            v: VERSION,
            nonce: "00112233445566ff".into(),
            device_type: device_type.into(),
            component: component.into(),
            sha256: sha256.into(),
        })
        .encode()
    }

    async fn responder() -> (CancellationToken, SocketAddr) {
        let responder = Responder::bind(0, 7800, "kiosk".into(), Arc::new(One)).unwrap();
        let port = responder.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        tokio::spawn(responder.run(stop.clone()));
        (stop, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// What comes back to a socket that sent `datagram` to `to`, within
    /// 300 ms.
    async fn exchange(to: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        socket.send_to(datagram, to).await.unwrap();
        let mut buf = vec![0; 2048];
        let answer =
            tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await;
        answer.ok().map(|r| buf[..r.unwrap().0].to_vec())
    }

    #[tokio::test]
    async fn a_search_of_the_right_type_for_a_held_image_gets_an_offer() {
        let (stop, at) = responder().await;

        let answer = exchange(at, &search("kiosk", "app", SHA)).await.unwrap();

        assert_eq!(
            Message::decode(&answer),
            Ok(Message::Offer(Offer {
                v: 1,
                nonce: "00112233445566ff".into(),
                sha256: SHA.into(),
                size: 1234,
                port: 7800,
            }))
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn another_type_another_component_or_an_unknown_image_get_no_answer() {
        let (stop, at) = responder().await;

        for datagram in [
            search("camera", "app", SHA),
            search("kiosk", "os", SHA),
            search("kiosk", "app", OTHER),
        ] {
            assert_eq!(exchange(at, &datagram).await, None);
        }
        // The responder is still there for a proper search.
        assert!(exchange(at, &search("kiosk", "app", SHA)).await.is_some());
        stop.cancel();
    }

    #[tokio::test]
    async fn malformed_oversized_and_foreign_datagrams_are_ignored() {
        let (stop, at) = responder().await;
        let mut oversized = search("kiosk", "app", SHA);
        oversized.pop();
        oversized.extend(std::iter::repeat_n(b' ', MAX_DATAGRAM));
        oversized.push(b'}');
        let future = String::from_utf8(search("kiosk", "app", SHA))
            .unwrap()
            .replace("\"v\":1", "\"v\":2");

        for datagram in [
            b"\x00\x01garbage".to_vec(),
            b"{\"tend\":\"search\"}".to_vec(),
            oversized,
            future.into_bytes(),
            Message::Offer(Offer {
                v: 1,
                nonce: "00112233445566ff".into(),
                sha256: SHA.into(),
                size: 1,
                port: 1,
            })
            .encode(),
        ] {
            assert_eq!(exchange(at, &datagram).await, None);
        }
        assert!(exchange(at, &search("kiosk", "app", SHA)).await.is_some());
        stop.cancel();
    }

    #[tokio::test]
    async fn answers_are_rate_limited_so_a_flood_cannot_use_the_device_as_a_reflector() {
        let mut responder = Responder::bind(0, 7800, "kiosk".into(), Arc::new(One)).unwrap();
        let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let datagram = search("kiosk", "app", SHA);

        let answered = (0..100)
            .filter(|_| responder.answer(&datagram, from).is_some())
            .count();

        assert!((20..=22).contains(&answered), "{answered}");
        let mut budget = Budget::new(20.0);
        let start = Instant::now();
        assert_eq!((0..40).filter(|_| budget.take(start)).count(), 20);
        assert!(budget.take(start + Duration::from_millis(100)));
        assert!(budget.take(start + Duration::from_millis(100)));
        assert!(!budget.take(start + Duration::from_millis(100)));
    }

    /// A responder that answers every search with `offers(nonce)`, as
    /// a misbehaving or confused peer might.
    async fn fake_responder(offers: fn(&str) -> Vec<Offer>) -> (CancellationToken, SocketAddr) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let at = socket.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 2048];
            loop {
                let (n, from) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    r = socket.recv_from(&mut buf) => r.unwrap(),
                };
                let Ok(Message::Search(search)) = Message::decode(&buf[..n]) else {
                    continue;
                };
                for offer in offers(&search.nonce) {
                    socket
                        .send_to(&Message::Offer(offer).encode(), from)
                        .await
                        .unwrap();
                }
            }
        });
        (stop, at)
    }

    fn offer(nonce: &str, sha256: &str, size: u64, port: u16) -> Offer {
        Offer {
            v: 1,
            nonce: nonce.into(),
            sha256: sha256.into(),
            size,
            port,
        }
    }

    fn query(size: Option<u64>) -> Query<'static> {
        Query {
            device_type: "kiosk",
            component: "app",
            sha256: SHA,
            size,
            max_size: 10_000,
        }
    }

    #[tokio::test]
    async fn a_search_keeps_only_offers_that_answer_it_with_a_plausible_size() {
        let (stop, at) = fake_responder(|nonce| {
            vec![
                offer("ffffffffffffffff", SHA, 1234, 7001),
                offer(nonce, OTHER, 1234, 7002),
                offer(nonce, SHA, 99_999, 7003),
                offer(nonce, SHA, 1234, 7004),
                offer(nonce, SHA, 1234, 7004),
                offer(nonce, SHA, 4321, 7005),
            ]
        })
        .await;
        let started = Instant::now();

        let found = super::search(at.port(), &[at], &query(None), Duration::from_secs(3))
            .await
            .unwrap();

        let peer = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // One offer per address: the later one from another port of the
        // same host is dropped.
        assert_eq!(
            found,
            [Found {
                peer: peer(7004),
                size: 1234
            }]
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "returns shortly after the first offer: {:?}",
            started.elapsed()
        );
        let found = search_at(
            &destinations(&[], 0, &[at]),
            &query(Some(4321)),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].peer, peer(7005));
        stop.cancel();
    }

    #[tokio::test]
    async fn a_search_nobody_answers_ends_at_its_timeout() {
        let (stop, at) = fake_responder(|_| Vec::new()).await;
        let started = Instant::now();

        let found = search_at(
            &destinations(&[], 0, &[at]),
            &query(None),
            Duration::from_millis(150),
        )
        .await
        .unwrap();

        assert!(found.is_empty());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(1),
            "{took:?}"
        );
        stop.cancel();
    }

    #[test]
    fn only_addresses_on_an_interface_subnet_are_on_the_lan() {
        let eth0 = Interface {
            name: "eth0".into(),
            ip: Ipv4Addr::new(192, 168, 1, 10),
            broadcast: Some(Ipv4Addr::new(192, 168, 1, 255)),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
        };
        assert!(eth0.on_link(Ipv4Addr::new(192, 168, 1, 200)));
        assert!(!eth0.on_link(Ipv4Addr::new(192, 168, 2, 200)));
        assert!(!eth0.on_link(Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    fn a_search_goes_to_the_group_and_the_broadcast_address_of_each_interface() {
        let listed = [
            Interface {
                name: "eth0".into(),
                ip: Ipv4Addr::new(192, 168, 1, 10),
                broadcast: Some(Ipv4Addr::new(192, 168, 1, 255)),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
            },
            Interface {
                name: "wg0".into(),
                ip: Ipv4Addr::new(10, 9, 0, 2),
                broadcast: None,
                netmask: Ipv4Addr::new(255, 255, 255, 255),
            },
        ];
        let configured = ["10.0.0.5:7717".parse().unwrap()];

        let all = destinations(&listed, 7717, &configured);

        let group = SocketAddrV4::new(GROUP, 7717);
        assert_eq!(
            all,
            [
                Destination {
                    to: group,
                    via: Some(Ipv4Addr::new(192, 168, 1, 10))
                },
                Destination {
                    to: "192.168.1.255:7717".parse().unwrap(),
                    via: None
                },
                Destination {
                    to: group,
                    via: Some(Ipv4Addr::new(10, 9, 0, 2))
                },
                Destination {
                    to: "10.0.0.5:7717".parse().unwrap(),
                    via: None
                },
            ]
        );
        assert!(interfaces().iter().all(|i| !i.ip.is_loopback()));
    }
}
