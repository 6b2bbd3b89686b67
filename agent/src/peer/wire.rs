//! The discovery datagrams: a search ("who of my type holds this image?")
//! and the offer that answers it, as small JSON objects.
//!
//! Anything that is not exactly one of them (too large, malformed, another
//! version, a field out of shape) is dropped without an answer: a device
//! on a shared LAN hears whatever anyone sends to the group.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Organisation-local scope (RFC 2365): routers at the site's edge do not
/// forward it, and a search is meant for the device's own LAN anyway.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 17);

/// A search with the longest device type and component names is well
/// under this; a larger datagram is not one of ours.
pub const MAX_DATAGRAM: usize = 1024;

pub const VERSION: u32 = 1;

/// Device types are names an admin gives ("kiosk-v2"), short by nature.
const MAX_DEVICE_TYPE: usize = 128;

/// One datagram, tagged by its `tend` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tend", rename_all = "lowercase")]
pub(crate) enum Message {
    Search(Search),
    Offer(Offer),
}

/// Sent to the group and to each interface's broadcast address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Search {
    pub v: u32,
    /// 16 random hex digits: the searcher keeps only offers that echo it,
    /// so a stray or replayed offer is not taken for an answer.
    pub nonce: String,
    pub device_type: String,
    pub component: String,
    pub sha256: String,
}

/// Sent back, unicast, to the address and port the search came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Offer {
    pub v: u32,
    pub nonce: String,
    pub sha256: String,
    pub size: u64,
    /// The peer's image server; its address is where the offer came from.
    pub port: u16,
}

impl Message {
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a message is plain data")
    }

    /// The message in `datagram`, if it is a well-formed one of ours.
    pub(crate) fn decode(datagram: &[u8]) -> Result<Message, String> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(format!(
                "{} bytes, more than {MAX_DATAGRAM}",
                datagram.len()
            ));
        }
        let message: Message =
            serde_json::from_slice(datagram).map_err(|e| format!("not a message: {e}"))?;
        let (v, nonce, sha256) = match &message {
            Message::Search(s) => (s.v, &s.nonce, &s.sha256),
            Message::Offer(o) => (o.v, &o.nonce, &o.sha256),
        };
        if v != VERSION {
            return Err(format!("version {v}"));
        }
        if !is_hex(nonce, 16) {
            return Err(format!("nonce {nonce:?}"));
        }
        if !is_sha256(sha256) {
            return Err(format!("sha256 {sha256:?}"));
        }
        match &message {
            Message::Search(s) => {
                if !is_device_type(&s.device_type) {
                    return Err(format!("device_type {:?}", s.device_type));
                }
                if !tend_proto::params::is_component_name(&s.component) {
                    return Err(format!("component {:?}", s.component));
                }
            }
            Message::Offer(o) => {
                if o.port == 0 || o.size == 0 {
                    return Err(format!("size {} on port {}", o.size, o.port));
                }
            }
        }
        Ok(message)
    }
}

/// A fresh nonce for a search.
pub(crate) fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// 64 lowercase hex digits: how digests are written everywhere in tend,
/// so one image has one spelling and one file name.
pub fn is_sha256(text: &str) -> bool {
    is_hex(text, 64)
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Printable ASCII without spaces: it travels in an HTTP header and in
/// log lines.
pub(crate) fn is_device_type(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_DEVICE_TYPE && text.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn search() -> Search {
        Search {
            v: 1,
            nonce: "0123456789abcdef".into(),
            device_type: "kiosk".into(),
            component: "app".into(),
            sha256: SHA.into(),
        }
    }

    #[test]
    fn a_search_is_the_json_object_of_the_protocol() {
        let bytes = Message::Search(search()).encode();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"tend": "search", "v": 1, "nonce": "0123456789abcdef",
                "device_type": "kiosk", "component": "app", "sha256": SHA})
        );
        assert_eq!(Message::decode(&bytes), Ok(Message::Search(search())));
        let offer = serde_json::json!({"tend": "offer", "v": 1, "nonce": "0123456789abcdef",
            "sha256": SHA, "size": 10, "port": 7717});
        assert!(matches!(
            Message::decode(offer.to_string().as_bytes()),
            Ok(Message::Offer(Offer {
                size: 10,
                port: 7717,
                ..
            }))
        ));
        assert_eq!(nonce().len(), 16);
        assert!(is_hex(&nonce(), 16));
    }

    #[test]
    fn datagrams_out_of_shape_are_refused() {
        let with = |f: &dyn Fn(&mut Search)| {
            let mut s = search();
            f(&mut s);
            Message::decode(&Message::Search(s).encode())
        };
        assert!(with(&|s| s.v = 2).is_err());
        assert!(with(&|s| s.nonce = "xyz".into()).is_err());
        assert!(with(&|s| s.sha256 = SHA.to_uppercase()).is_err());
        assert!(with(&|s| s.sha256 = "../../etc/passwd".into()).is_err());
        assert!(with(&|s| s.device_type = String::new()).is_err());
        assert!(with(&|s| s.device_type = "a b".into()).is_err());
        assert!(with(&|s| s.component = "a/b".into()).is_err());
        assert!(Message::decode(b"not json").is_err());
        assert!(Message::decode(br#"{"tend":"hello","v":1}"#).is_err());
        let mut padded = search();
        padded.device_type = "k".repeat(100);
        padded.component = "c".repeat(64);
        assert!(Message::decode(&Message::Search(padded.clone()).encode()).is_ok());
        let mut big = Message::Search(padded).encode();
        big.truncate(big.len() - 1);
        big.extend(std::iter::repeat_n(b' ', MAX_DATAGRAM));
        big.push(b'}');
        assert!(Message::decode(&big).unwrap_err().contains("more than"));
    }
}
