//! The port of its own where tend-platform and tend-sync serve `/metrics`.
//!
//! The public ports (the admin API, the device API) are reached by anyone
//! the Ingress lets through; metrics tell an outsider how many devices
//! there are, which routes fail and how busy the fleet is. They are served
//! on a second listener instead (`TEND_METRICS_LISTEN`), which the network
//! lets only the monitoring system reach, as the monitor's one port
//! already is. The public ports answer 404 for `/metrics`.
//!
//! The server runs as one of the service's background loops: it keeps
//! answering scrapes while the requests of the public port drain, and stops
//! with the other loops after them, within the same grace period.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};

use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::http;

/// How long a scrape in flight may finish once the server stops: a scrape
/// is one render of the registry, a few milliseconds.
const STOP_TIMEOUT_S: u64 = 1;

/// The bound metrics listener, ready to [`serve`](Self::serve).
pub struct MetricsPort {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsPort {
    /// Binds `addr` (`TEND_METRICS_LISTEN`, port 0 works). Called while the
    /// service builds, so a taken port stops it at start.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<MetricsPort> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} (TEND_METRICS_LISTEN)"))?;
        let addr = listener
            .local_addr()
            .context("reading the bound metrics address")?;
        Ok(MetricsPort { listener, addr })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET /metrics` and `GET /healthz` (for a probe of the port
    /// itself) until `stop` is cancelled; anything else is 404. Scrapes are
    /// not counted in the request metrics: they are the monitoring
    /// system's traffic, not the service's. Returns early, which stops the
    /// service as any background loop that ends does, only if the server
    /// fails.
    pub fn serve(self, stop: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let addr = self.addr;
        let server = HttpServer::new(|| {
            App::new()
                .route("/metrics", web::get().to(http::metrics))
                .route("/healthz", web::get().to(http::healthz))
                .default_service(web::to(http::not_found))
        })
        // A scrape every few seconds: one worker is plenty.
        .workers(1)
        .shutdown_timeout(STOP_TIMEOUT_S)
        .disable_signals()
        .listen(self.listener)
        .map(|s| s.run());
        async move {
            let server = match server {
                Ok(server) => server,
                Err(e) => {
                    tracing::error!("cannot serve metrics on {addr}: {e}");
                    return;
                }
            };
            let handle = server.handle();
            let mut running = tokio::spawn(server);
            tokio::select! {
                r = &mut running => {
                    match r {
                        Ok(Ok(())) => tracing::error!("the metrics server on {addr} stopped on its own"),
                        Ok(Err(e)) => tracing::error!("the metrics server on {addr} failed: {e}"),
                        Err(e) => tracing::error!("the metrics server task failed: {e}"),
                    }
                    return;
                }
                () = stop.cancelled() => {}
            }
            handle.stop(true).await;
            if let Ok(Err(e)) = running.await {
                tracing::warn!("the metrics server on {addr} failed while stopping: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    /// A plain HTTP/1.0 GET over a socket: status line and body.
    fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    }

    async fn get_async(addr: SocketAddr, path: &'static str) -> std::io::Result<String> {
        tokio::task::spawn_blocking(move || get(addr, path))
            .await
            .expect("the request thread")
    }

    #[tokio::test]
    async fn metrics_are_served_until_stopped_and_nothing_else_is() {
        crate::telemetry::metrics();
        metrics::counter!("tend_metrics_port_test_total").increment(1);
        let port = MetricsPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = port.local_addr();
        assert_ne!(addr.port(), 0);
        let stop = CancellationToken::new();
        let served = tokio::spawn(port.serve(stop.clone()));

        let answer = get_async(addr, "/metrics").await.unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.contains("tend_metrics_port_test_total"), "{answer}");
        let answer = get_async(addr, "/healthz").await.unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        let answer = get_async(addr, "/api/v1/devices").await.unwrap();
        assert!(answer.starts_with("HTTP/1.0 404"), "{answer}");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the server stops within its timeout")
            .unwrap();
        assert!(get_async(addr, "/metrics").await.is_err());
    }

    #[test]
    fn a_taken_port_is_refused_at_bind_naming_the_variable() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = MetricsPort::bind(taken.local_addr().unwrap())
            .err()
            .expect("the port is taken");
        assert!(
            format!("{err:#}").contains("TEND_METRICS_LISTEN"),
            "{err:#}"
        );
    }
}
