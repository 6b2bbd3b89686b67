//! `bare_actix`: the smallest actix-web server that answers tend's heartbeat,
//! the yardstick of `deploy/bench/heartbeat.sh`.
//!
//! It serves `POST /device/v1/heartbeat` the way `tend-sync` does, minus
//! everything that is tend's own work: the same actix-web (the workspace
//! dependency, same features), the same number of workers (actix's default,
//! one per core the process may run on), the same runtime shape (a Tokio
//! `main` running the `HttpServer`), the same request body read and
//! deserialized into [`Heartbeat`] under the same 16 KiB limit, and the same
//! answer serialized from [`HeartbeatResponse`] (`{"pending":false,
//! "next_heartbeat_s":30}`, the size of tend-sync's). No token check, no
//! Redis, no metrics middleware. The ratio of the two servers' rates on the
//! same load is then what tend's heartbeat path costs over actix itself.
//!
//! Usage: `bare_actix [ADDR]` (default `127.0.0.1:0`; `BARE_LISTEN` works
//! too). Logs `bare_actix listening on ADDR` once bound; `GET /healthz`
//! answers 200. Stops at SIGINT/SIGTERM (actix's own signal handling).

use actix_web::{App, HttpResponse, HttpServer, web};
use tend_proto::device::{Heartbeat, HeartbeatResponse};

/// tend-sync's heartbeat body limit.
const HEARTBEAT_LIMIT: usize = 16 * 1024;
/// tend-sync's default `TEND_HEARTBEAT_S`, so the answer has the same bytes.
const NEXT_HEARTBEAT_S: u64 = 30;

async fn heartbeat(body: web::Json<Heartbeat>) -> HttpResponse {
    // Read like tend-sync does (the value is consumed, not just parsed).
    let _ = body.into_inner();
    HttpResponse::Ok().json(HeartbeatResponse {
        pending: false,
        next_heartbeat_s: NEXT_HEARTBEAT_S,
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = match args.next().as_deref() {
        Some("-h" | "--help") => {
            println!(
                "bare_actix [ADDR]: a bare actix-web heartbeat endpoint for benchmarks \
                 (default 127.0.0.1:0, or BARE_LISTEN)"
            );
            return Ok(());
        }
        Some("-V" | "--version") => {
            println!("bare_actix {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(a) => a.to_owned(),
        None => std::env::var("BARE_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".to_owned()),
    };
    let listener = std::net::TcpListener::bind(&addr)?;
    let bound = listener.local_addr()?;
    let server = HttpServer::new(|| {
        App::new()
            .route("/healthz", web::get().to(healthz))
            .service(
                web::resource("/device/v1/heartbeat")
                    .app_data(web::JsonConfig::default().limit(HEARTBEAT_LIMIT))
                    .route(web::post().to(heartbeat)),
            )
    })
    .listen(listener)?
    .run();
    println!("bare_actix listening on {bound}");
    server.await
}
