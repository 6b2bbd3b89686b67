//! How a service stops: one token tree per process, and one drain.
//!
//! Kubernetes stops a pod by sending SIGTERM, taking it out of its
//! Service's endpoints at about the same time, and sending SIGKILL after
//! `terminationGracePeriodSeconds`. In between, tend drains, in this order:
//!
//! 1. [`Shutdown::draining`] is cancelled (by SIGTERM, or because a part of
//!    the service failed): `/readyz` answers 503, held long-polls are
//!    answered at once, and the HTTP server stops accepting connections
//!    while it finishes the requests in flight;
//! 2. once HTTP has drained, [`Shutdown::background`] is cancelled: the
//!    background loops (flushers, consumers, sweeps) finish their step and
//!    return. They stop after the requests rather than with them because
//!    requests feed them: the last presence flush must carry the last
//!    heartbeats, and the revocation list must stay fresh while requests
//!    are still answered;
//! 3. whatever is still running when the grace period
//!    (`TEND_SHUTDOWN_GRACE_S`, shorter than the pod's) has passed since
//!    the drain began is dropped, so the process always exits in time.
//!
//! `draining` is a child of `background`, so the tree has one root: a
//! cancelled root stops everything.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The stop signals of one service process. Cheap to clone; every clone
/// is the same tree.
#[derive(Clone, Debug)]
pub struct Shutdown {
    background: CancellationToken,
    draining: CancellationToken,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let background = CancellationToken::new();
        let draining = background.child_token();
        Shutdown {
            background,
            draining,
        }
    }

    /// Begins the drain, as SIGTERM does.
    pub fn begin(&self) {
        self.draining.cancel();
    }

    /// Whether the drain has begun: `/readyz` answers 503 from then on.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Cancelled when the drain begins: what request handlers that hold a
    /// request (long-poll) watch.
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// Cancelled once HTTP has drained: what background loops watch.
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    /// Begins the drain when the process receives SIGTERM (what Kubernetes
    /// sends first) or SIGINT (Ctrl-C). Call it once the service is built:
    /// until then the default action of the signals (exit at once) is
    /// the right one for a service still connecting.
    pub fn on_signals(&self) {
        let token = self.draining.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, draining"),
                _ = int.recv() => tracing::info!("SIGINT received, draining"),
                _ = token.cancelled() => return,
            }
            token.cancel();
        });
    }
}

/// A service's background loops. Each watches [`Shutdown::background`] and
/// returns once it is cancelled; one that returns before, or panics, stops
/// the service: a replica without its revocation list or its relay must
/// not limp on as if it were whole, and its restart brings the loop back.
#[derive(Default)]
pub struct Background {
    tasks: JoinSet<(&'static str, ())>,
}

impl Background {
    /// Runs `task` under `name` (which the logs use if it stops early).
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move { (name, task.await) });
    }
}

/// Runs `server` (built with `.disable_signals()` and a
/// `shutdown_timeout` of `grace`) and `background` until the drain begins,
/// then drains them as the module docs say. Answers an error when a part
/// stopped on its own (the HTTP server, a loop) or failed while draining;
/// a SIGTERM drain that finishes in time is `Ok`.
pub async fn serve(
    name: &str,
    server: actix_web::dev::Server,
    mut background: Background,
    shutdown: &Shutdown,
    grace: Duration,
) -> anyhow::Result<()> {
    let handle = server.handle();
    let mut server = tokio::spawn(server);
    let tasks = &mut background.tasks;

    // Each early end re-checks the token: a part that ended because the
    // drain began is a clean stop, not a failure.
    let mut failure = tokio::select! {
        biased;
        _ = shutdown.draining.cancelled() => None,
        r = &mut server => match r {
            _ if shutdown.is_draining() => None,
            Ok(Ok(())) => Some(anyhow!("the HTTP server stopped on its own")),
            Ok(Err(e)) => Some(anyhow!(e).context("the HTTP server failed")),
            Err(e) => Some(anyhow!(e).context("the HTTP server task failed")),
        },
        Some(r) = tasks.join_next() => match r {
            Ok((task, ())) => Some(anyhow!("the background loop {task} stopped on its own")),
            Err(e) => Some(anyhow!(e).context("a background loop failed")),
        },
    };
    if let Some(e) = &failure {
        tracing::error!("{name}: {e:#}; draining");
    }
    shutdown.begin();
    let until = Instant::now() + grace;
    tracing::info!(grace_s = grace.as_secs(), "{name} draining");

    // 1. HTTP: stop accepting, finish what is in flight. actix-web's own
    // shutdown timeout (the same grace) closes what is left.
    let http = tokio::time::timeout_at(until, async {
        handle.stop(true).await;
        // A task that already finished was awaited above, and may not be
        // awaited twice.
        if !server.is_finished() {
            (&mut server)
                .await
                .context("the HTTP server task failed")??;
        }
        anyhow::Ok(())
    })
    .await;
    match http {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            failure.get_or_insert(e);
        }
        Err(_) => server.abort(),
    }

    // 2. Background loops: each finishes its step and returns.
    shutdown.background.cancel();
    let loops = tokio::time::timeout_at(until, async {
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                return Err(anyhow!(e).context("a background loop failed while draining"));
            }
        }
        Ok(())
    })
    .await;
    match loops {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            failure.get_or_insert(e);
        }
        Err(_) => {
            // A step held by a backing service that does not answer.
            tracing::warn!(
                grace_s = grace.as_secs(),
                "{name}: still busy at the end of the grace period; dropping what is left"
            );
            tasks.abort_all();
        }
    }
    match failure {
        None => {
            tracing::info!("{name} stopped");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn server() -> (actix_web::dev::Server, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = actix_web::HttpServer::new(actix_web::App::new)
            .workers(1)
            .listen(listener)
            .unwrap()
            .shutdown_timeout(1)
            .disable_signals()
            .run();
        (server, addr)
    }

    #[tokio::test]
    async fn background_loops_stop_only_after_http_has_drained() {
        let shutdown = Shutdown::new();
        let (server, _) = server();
        let stopped_after_drain = Arc::new(AtomicBool::new(false));
        let mut background = Background::default();
        {
            let (token, draining, seen) = (
                shutdown.background(),
                shutdown.draining().clone(),
                stopped_after_drain.clone(),
            );
            background.spawn("watcher", async move {
                token.cancelled().await;
                seen.store(draining.is_cancelled(), Ordering::SeqCst);
            });
        }
        let s = shutdown.clone();
        let run = tokio::spawn(async move {
            serve("test", server, background, &s, Duration::from_secs(5)).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!shutdown.is_draining());
        shutdown.begin();
        run.await.unwrap().unwrap();
        assert!(stopped_after_drain.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_loop_that_stops_on_its_own_drains_the_service_and_is_an_error() {
        let shutdown = Shutdown::new();
        let (server, _) = server();
        let mut background = Background::default();
        background.spawn("quitter", async {});
        let err = serve(
            "test",
            server,
            background,
            &shutdown,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("quitter"), "{err}");
        assert!(shutdown.is_draining());
    }

    #[tokio::test]
    async fn a_loop_stuck_past_the_grace_period_is_dropped() {
        let shutdown = Shutdown::new();
        let (server, _) = server();
        let mut background = Background::default();
        background.spawn("stuck", std::future::pending());
        shutdown.begin();
        let started = Instant::now();
        serve(
            "test",
            server,
            background,
            &shutdown,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
