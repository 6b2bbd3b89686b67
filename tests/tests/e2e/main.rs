//! End-to-end tests: the real binaries against real PostgreSQL, Redis and
//! RabbitMQ, each test with its own database and instance prefix.

mod artifacts;
mod audit;
mod bulk;
mod bulk_commands;
mod ddi;
mod enrolment;
mod hostile;
mod idempotency;
mod input;
mod isolation;
mod latency;
mod lifecycle;
mod log_query;
mod login;
mod longpoll;
mod observability;
mod presence;
mod rauc_hawkbit;
mod resilience;
mod routes;
mod signing;
mod software;
mod store;
mod suricatta;
mod tendctl;
mod tls;
mod token_keys;
mod updates;
mod users;
