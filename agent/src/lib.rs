//! tend's device agent.
//!
//! It heartbeats to `tend-sync`, fetches the instructions the server holds
//! for this device, journals each one durably before acting on it so that
//! nothing runs twice, performs reboots and shutdowns with the configured
//! commands, answers log queries from the configured log sources, records
//! every operation in `state_dir/operations.log`, and reports the outcome
//! until the server has it.
//!
//! The binary is a thin shell around [`run`], so tests can drive the agent
//! in-process with a [`Config`] and a cancellation token.

mod backoff;
mod client;
pub mod config;
mod executor;
mod fault;
mod identity;
mod journal;
mod limits;
mod lock;
pub mod logquery;
mod oplog;
mod outcome;
pub mod peer;
mod private;
mod runner;
mod sanitize;
mod software;
mod system;
mod tls;
pub mod trust;

pub use config::Config;
pub use runner::{Stopped, prove, run};
pub use system::AGENT_VERSION;
