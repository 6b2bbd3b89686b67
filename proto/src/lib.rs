//! Wire types shared by tend's services and its device agent.
//!
//! Everything here is plain data with serde derives: no I/O, no runtime.
//! The admin API's request and response bodies live with the platform; this
//! crate holds what crosses the device boundary (the device API of
//! `tend-sync`), the command vocabulary both sides must agree on, the rules
//! a command's params must follow, the one rule for NUL characters in
//! stored text (and for control characters in text logs), and the event
//! payloads the services exchange over RabbitMQ.

pub mod command;
pub mod device;
pub mod event;
pub mod params;
pub mod signing;
pub mod text;
pub mod version;

pub use command::{CommandKind, CommandStatus, KindParseError};
pub use params::{CommandParams, LogQueryParams, ParamsError};
