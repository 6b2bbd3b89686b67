//! The fault suite: tend against crashes, stops and store outages.
//!
//! Every stack here is started with `Options::faults`: the services reach
//! PostgreSQL, Redis and RabbitMQ through TCP proxies the test owns, and
//! Redis is a private `redis-server`, so faults never disturb the shared
//! stores other tests use. Agents are the real `tend-agent` binary, built
//! with its fault points (`agent/src/fault.rs`).
//!
//! - [`suite`]: a stream of commands under every fault kind, one after
//!   another, with two replicas of every service; the invariants are
//!   checked at the end and written as the table of `RELIABILITY.md`.
//!   `TEND_FAULT_SECONDS` sets its length (150 s by default; a soak is
//!   `deploy/local/soak.sh`).
//! - [`degraded`]: what each store's outage costs, one store at a time.

mod degraded;
mod suite;
