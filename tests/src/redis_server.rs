//! A redis-server of the test's own, on a port of its own, so a test can
//! stop and restart Redis without touching the machine's shared one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A port for a private server, kept for its whole life even while it is
/// stopped: taken below Linux's ephemeral range (32768 and up), where the
/// services' and proxies' port-0 listeners never land, and from a counter,
/// so two servers of one test run never share one. The process id spreads
/// concurrent test runs apart.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let offset = (std::process::id() % 400) * 30;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (BASE + (offset + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {BASE} and {}", BASE + SPAN)
}

impl RedisServer {
    /// Starts `redis-server` (from PATH; install the `redis-server` Debian
    /// package) with no persistence, in `dir`, and waits until it answers.
    pub async fn start(dir: PathBuf) -> RedisServer {
        std::fs::create_dir_all(&dir).expect("the private Redis directory");
        let mut server = RedisServer {
            port: reserved_port(),
            dir,
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again (on the same port) after [`RedisServer::stop`]; an
    /// empty Redis, as after a restart without persistence.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the private Redis is running");
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server is required for the fault suite (apt install redis-server): {e}"
                )
            });
        self.child = Some(child);
        let url = self.url();
        eventually(
            Duration::from_secs(20),
            "the private Redis to answer",
            || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url.as_str()).ok()?;
                    let mut c = client.get_multiplexed_async_connection().await.ok()?;
                    redis::cmd("PING").query_async::<String>(&mut c).await.ok()
                }
            },
        )
        .await;
    }

    /// SIGKILL: Redis is gone, with everything it held.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
