//! Code shared by tend's three cloud services.
//!
//! - [`config`]: settings from the environment, validated at startup;
//! - [`db`]: the PostgreSQL pool, the migrations and every SQL statement;
//! - [`live`]: presence in Redis (the pending flags live in each sync
//!   replica's memory);
//! - [`amqp`]: RabbitMQ naming and connection;
//! - [`tls`]: TLS to PostgreSQL, Redis and RabbitMQ, and the CA files;
//! - [`store`]: artifact bytes, in a directory or an S3-compatible store;
//! - [`retry`]: backoff, outage logging and startup retries, for every loop;
//! - [`auth`]: tokens, passwords and device secrets;
//! - [`signing`]: the platform's key that signs every instruction;
//! - [`token_key`]: the token keys, one per service, checked at start;
//! - [`error`]: the error policy and [`error::ApiError`], the problem+json answer;
//! - [`http`]: extractor settings, request metrics and the endpoints every service has;
//! - [`metrics_port`]: `/metrics` on a port of its own, off the public ones;
//! - [`service`]: a service process's life, from `main` to its exit code;
//! - [`telemetry`] and [`shutdown`]: logs, metrics, and the token tree and
//!   drain of SIGTERM.

pub mod amqp;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod live;
pub mod metrics_port;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token_key;

pub use config::Settings;
