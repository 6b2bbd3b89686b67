//! The monitor's HTTP surface: health, readiness and metrics only. It has
//! no API of its own; its work happens in the background loops.

use actix_web::{HttpResponse, web};
use tend_core::db::{self, Pool};
use tend_core::http;
use tend_core::live::Live;
use tend_core::shutdown::Shutdown;

use crate::relay::AmqpStatus;

/// What `/readyz` checks.
pub(crate) struct State {
    pub pool: Pool,
    pub live: Live,
    pub amqp: AmqpStatus,
    /// Readiness fails once the drain has begun.
    pub shutdown: Shutdown,
}

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(http::healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(http::metrics));
}

/// `GET /readyz`: 503 while draining or without PostgreSQL, where all of
/// the monitor's work starts. Redis and the relay's RabbitMQ connection are
/// reported (`"down: …"`) but do not fail readiness: the monitor keeps
/// sweeping without them (offline detection pauses, the outbox waits), and
/// each loop reconnects by itself; there is nothing a restart or a
/// different replica would do better.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    if state.shutdown.is_draining() {
        return http::draining();
    }
    let (postgres, redis) = tokio::join!(db::ping(&state.pool), state.live.ping());
    http::readiness(
        vec![("postgres", postgres.map_err(|e| e.to_string()))],
        vec![
            ("redis", redis.map_err(|e| e.to_string())),
            ("rabbitmq", state.amqp.check()),
        ],
    )
}
