//! LAN peer recovery (seed 000): a device whose component is broken, or
//! that cannot reach the cloud, restores the component's image from a
//! healthy device of the same type on its LAN.
//!
//! A serving device ([`serve`]) answers searches for images it holds and
//! serves them over HTTP with `Range`; a device that needs one
//! ([`fetch`]) searches, tries each peer that offered it, falls back to
//! the configured peers, and searches again, within a bounded number of
//! rounds and its deadline. The image is checked against the digest the
//! device already trusts (a signed instruction or its own record), never
//! against what a peer says: a peer is a source of bytes, not of trust.
//!
//! Discovery is a plain UDP search, multicast to `239.255.77.17` with a
//! directed broadcast beside it, rather than DNS-SD/mDNS:
//! - the question is "who holds the image with this SHA-256?", and a
//!   SHA-256 in hex is 64 characters while a DNS label holds at most 63,
//!   so it cannot be asked as a service subtype;
//! - embedded images often have no mDNS responder, and a second one on
//!   port 5353 fights avahi where there is one;
//! - mDNS has no broadcast fallback for the access points and switches
//!   that drop multicast, which a broadcast next to the multicast covers.
//!
//! The engine decides what may be served through [`Images`]: only images
//! the device holds and has verified.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

mod discovery;
mod fetch;
mod server;
pub mod settings;
#[cfg(test)]
mod testing;
mod wire;

pub use crate::software::download::Progress;
pub use fetch::{PeerError, PeerEvent, PeerFetched, ROUNDS, Tried, Want, fetch};
pub use server::Server;
pub use settings::PeerSettings;
pub use wire::{GROUP, is_sha256};

/// An image this device may hand to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The component it is an image of; a search names the component, and
    /// an image of another one is not an answer.
    pub component: String,
    /// The verified file, read as it is served.
    pub path: PathBuf,
    /// Its size when it was verified; a file of another size is not
    /// served.
    pub size: u64,
}

/// What this device holds and has verified, by SHA-256 (64 lowercase hex
/// digits). Asked for every search and every request, so it answers from
/// what the device already knows (its record of installed versions and
/// backups), without hashing anything.
pub trait Images: Send + Sync + 'static {
    fn find(&self, sha256: &str) -> Option<Image>;
}

/// Runs the responder and the HTTP server until `stop` is cancelled.
///
/// Binding errors (the port taken, an address not on this device) are
/// returned at once, so the caller can log them and carry on without
/// serving.
pub async fn serve(
    settings: PeerSettings,
    device_type: String,
    images: Arc<dyn Images>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (server, _) = Server::bind(&settings, device_type, images).await?;
    server.run(stop).await
}
