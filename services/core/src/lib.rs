//! Code shared by tend's three cloud services.
//!
//! - [`config`]: settings from the environment, validated at startup;
//! - [`db`]: the PostgreSQL pool, the migrations and every SQL statement;
//! - [`live`]: presence in Redis (the pending flags live in each sync
//!   replica's memory);
//! - [`amqp`]: RabbitMQ naming and connection;
//! - [`auth`]: tokens, passwords and device secrets;
//! - [`http`]: the problem+json error type and the endpoints every service has;
//! - [`telemetry`] and [`shutdown`]: logs, metrics and the SIGTERM drain.

pub mod amqp;
pub mod auth;
pub mod config;
pub mod db;
pub mod http;
pub mod live;
pub mod shutdown;
pub mod telemetry;

pub use config::Settings;
