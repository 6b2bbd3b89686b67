//! A private LAN inside this machine for peer-recovery tests: a bridge in
//! the test's network namespace and one network namespace per "device",
//! joined to the bridge by a veth pair. Loopback has no multicast; this
//! LAN does, so agents find each other the way they would at a site.
//!
//! Addresses come from 198.18.0.0/15, the range set aside for network
//! tests (RFC 2544), so they never clash with a real network: the LAN is
//! `198.18.N.0/24` with the bridge at `.1`, and "the cloud" is
//! `198.19.N.1`, an address of the test's own namespace that the devices
//! reach through their default route via the bridge. Removing that route
//! cuts a device's uplink while its LAN keeps working.
//!
//! Needs root (CAP_NET_ADMIN) and `ip` from iproute2; blocking a device's
//! discovery traffic needs `nft` (nftables). Everything is removed on drop,
//! and namespaces left by a test process that died are removed by the next
//! one.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU8, Ordering};

/// Names of what this module creates start with it, followed by the
/// creating process's id.
const PREFIX: &str = "tl";

pub struct Lan {
    /// `tl<pid>x<n>` (hex): the bridge, and the stem of every name on this
    /// LAN, short enough for a veth name (15 bytes) after `h<i>`.
    name: String,
    /// N in 198.18.N.0/24 and 198.19.N.1.
    net: u8,
    hosts: Vec<Host>,
}

/// A device's namespace on a [`Lan`].
#[derive(Debug, Clone)]
pub struct Host {
    /// The network namespace, for `ip netns exec`.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The veth end inside the namespace.
    pub interface: String,
}

impl Lan {
    /// Creates the bridge and the cloud address.
    ///
    /// Panics with what to do when the process may not create network
    /// namespaces: these tests never skip themselves.
    pub fn new() -> Lan {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        assert_root();
        remove_leftovers();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // One /24 per LAN, starting from one that depends on the pid and
        // skipping any a LAN of another test process already uses.
        let first = ((std::process::id() as u8).wrapping_mul(16)).wrapping_add(n % 16);
        let net = (0..=255u8)
            .map(|i| first.wrapping_add(i.wrapping_mul(17)))
            .find(|&net| !in_use(net))
            .expect("a free 198.18.N.0/24 for the test LAN");
        let name = format!("{PREFIX}{:x}x{n:x}", std::process::id());
        let lan = Lan {
            name,
            net,
            hosts: Vec::new(),
        };
        ip(&["link", "add", &lan.name, "type", "bridge"]);
        // Without a multicast querier, snooping may stop flooding a group
        // once its first membership report has aged out.
        ip(&[
            "link",
            "set",
            &lan.name,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lan.gateway()),
            "dev",
            &lan.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/32", lan.cloud_ip()),
            "dev",
            &lan.name,
        ]);
        ip(&["link", "set", &lan.name, "up"]);
        lan
    }

    /// The bridge's address: every device's gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.net, 1)
    }

    /// Where the devices reach the cloud services (see [`Lan::cloud_addr`]).
    pub fn cloud_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.net, 1)
    }

    /// An address on the cloud IP for a listener of the test (a proxy to
    /// tend-sync, say).
    pub fn cloud_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.cloud_ip(), port))
    }

    /// Adds a device's namespace, up, with its default route via the
    /// bridge.
    pub fn host(&mut self, label: &str) -> Host {
        let i = self.hosts.len();
        assert!(i < 200, "too many hosts on one LAN");
        let netns = format!("{}-{label}", self.name);
        let outside = format!("{}h{i:x}", self.name);
        assert!(outside.len() <= 15, "interface name {outside} too long");
        let inside = "eth0".to_string();
        let ip4 = Ipv4Addr::new(198, 18, self.net, 10 + i as u8);
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &netns,
        ]);
        ip(&["link", "set", &outside, "master", &self.name]);
        ip(&["link", "set", &outside, "up"]);
        let host = Host {
            netns,
            ip: ip4,
            interface: inside,
        };
        host.ip(&["link", "set", "lo", "up"]);
        host.ip(&[
            "addr",
            "add",
            &format!("{ip4}/24"),
            "broadcast",
            &format!("198.18.{}.255", self.net),
            "dev",
            &host.interface,
        ]);
        host.ip(&["link", "set", &host.interface, "up"]);
        host.restore_uplink(self);
        self.hosts.push(host.clone());
        host
    }
}

impl Default for Lan {
    fn default() -> Lan {
        Lan::new()
    }
}

impl Host {
    /// Runs `ip ARGS` in this namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.netns, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs a command in this namespace and returns what it printed.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {program}: {e}", self.netns))
    }

    /// Removes the default route: the cloud is unreachable, the LAN is not.
    pub fn cut_uplink(&self) {
        self.ip(&["route", "del", "default"]);
    }

    /// Puts the default route (back) via the bridge.
    pub fn restore_uplink(&self, lan: &Lan) {
        self.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &lan.gateway().to_string(),
        ]);
    }

    /// Drops every UDP datagram this host sends to `port`: its searches
    /// reach nobody, by multicast or by broadcast.
    pub fn block_udp_out(&self, port: u16) {
        let nft = |args: &[&str]| {
            let out = self.exec("nft", args);
            assert!(
                out.status.success(),
                "nft {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        nft(&["add", "table", "inet", "tend_test"]);
        nft(&[
            "add",
            "chain",
            "inet",
            "tend_test",
            "out",
            "{ type filter hook output priority 0; }",
        ]);
        nft(&[
            "add",
            "rule",
            "inet",
            "tend_test",
            "out",
            "udp",
            "dport",
            &port.to_string(),
            "drop",
        ]);
    }

    /// Drops multicast this host sends, so only the broadcast fallback
    /// and configured peers remain.
    pub fn block_multicast_out(&self) {
        let out = self.exec(
            "nft",
            &["add table inet tend_mc; \
                 add chain inet tend_mc out { type filter hook output priority 0; }; \
                 add rule inet tend_mc out ip daddr 224.0.0.0/4 drop"],
        );
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting the namespace deletes its veth end, and with it the
            // other end on the bridge.
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Whether an address of 198.18.N.0/24 or 198.19.N.0/24 is already on an
/// interface of this namespace (another test process's LAN).
fn in_use(net: u8) -> bool {
    let listed = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    listed.contains(&format!(" 198.18.{net}.")) || listed.contains(&format!(" 198.19.{net}."))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn assert_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the LAN tests create network namespaces and need root: run the test command as root \
         (CI does)"
    );
}

/// Namespaces and bridges of test processes that are gone (killed before
/// their drop ran).
fn remove_leftovers() {
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let owner = |name: &str| -> Option<u32> {
        let rest = name.strip_prefix(PREFIX)?;
        let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        let pid = u32::from_str_radix(&hex, 16).ok()?;
        rest[hex.len()..].starts_with('x').then_some(pid)
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if owner(name).is_some_and(|pid| !alive(pid)) {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line
                .split(':')
                .nth(1)
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            if owner(&name).is_some_and(|pid| !alive(pid)) {
                let _ = Command::new("ip").args(["link", "del", &name]).output();
            }
        }
    }
}
