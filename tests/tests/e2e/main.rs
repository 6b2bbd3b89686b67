//! End-to-end tests: the real binaries against real PostgreSQL, Redis and
//! RabbitMQ, each test with its own database and instance prefix.

mod artifacts;
mod bulk;
mod ddi;
mod enrolment;
mod hostile;
mod input;
mod isolation;
mod latency;
mod lifecycle;
mod log_query;
mod longpoll;
mod observability;
mod rauc_hawkbit;
mod resilience;
mod signing;
mod software;
mod store;
mod suricatta;
mod tendctl;
mod tls;
mod token_keys;
mod updates;
