//! LAN peer recovery (seed 000).
pub mod settings;
pub use settings::PeerSettings;
