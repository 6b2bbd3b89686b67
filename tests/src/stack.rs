//! The three services as real processes, with their own database and prefix.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::eventually;
use crate::proxy::Proxy;
use crate::redis_server::RedisServer;

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Platform,
    Sync,
    Monitor,
}

impl Service {
    fn binary(self) -> &'static str {
        match self {
            Service::Platform => "tend-platform",
            Service::Sync => "tend-sync",
            Service::Monitor => "tend-monitor",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub heartbeat_s: u64,
    pub sweep_ms: u64,
    /// Puts a [`Proxy`] of the test's own between the services and each
    /// store, and gives the stack a private Redis: see [`Faults`].
    pub faults: bool,
    /// Keeps artifacts in this bucket of the test's S3 server instead of a
    /// directory of the stack's own.
    pub s3: Option<crate::s3::S3Bucket>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_s: 1,
            sweep_ms: 200,
            faults: false,
            s3: None,
        }
    }
}

/// The fault injectors of a stack started with [`Options::faults`]: the
/// services reach PostgreSQL, Redis and RabbitMQ only through these
/// proxies, and Redis is a private server. Faults cut, stall or refuse
/// this stack's connections and restart its own Redis; the machine's
/// shared stores, which other tests use at the same time, are never
/// disturbed. The harness's own clients ([`Stack::sql`], [`Stack::redis`])
/// connect directly, so checks work while a fault is on.
pub struct Faults {
    pub postgres: Proxy,
    pub redis: Proxy,
    pub amqp: Proxy,
    pub redis_server: RedisServer,
}

struct Proc {
    service: Service,
    /// 0 for the first process of a service, then 1, 2… for replicas.
    n: usize,
    child: Option<Child>,
    port: u16,
    /// Where it serves `/metrics`: a port of its own for the platform and
    /// sync, the same as `port` for the monitor.
    metrics_port: u16,
    log: PathBuf,
}

/// A device's id and one-time secret, as the platform returned them.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: Uuid,
    pub secret: String,
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub db_name: String,
    pub instance: String,
    pub http: reqwest::Client,
    pub options: Options,
    admin_url: String,
    redis_url: String,
    amqp_url: String,
    /// The platform's admin token key and sync's device token key: each
    /// service gets its own only.
    admin_token_key: String,
    device_token_key: String,
    /// Variables a test set (`Some`) or removed (`None`) for one service,
    /// applied at its next start: see [`Stack::set_env`].
    env_overrides: Vec<(Service, String, Option<String>)>,
    /// The platform's instruction-signing key (PKCS#8 PEM in the stack's
    /// directory), and its public key as agents pin it.
    signing_key_file: PathBuf,
    signing_public_key: String,
    /// The store URLs the services get: the same as the harness's, or the
    /// fault proxies'.
    service_urls: [String; 3],
    pub faults: Option<Faults>,
    procs: Vec<Proc>,
    admin_token: tokio::sync::OnceCell<String>,
}

pub const ADMIN_USER: &str = "root";
pub const ADMIN_PASSWORD: &str = "correct-horse-battery";

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The directory holding the workspace's binaries (next to `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --all-targets)",
        path.display()
    );
    path
}

/// Makes an Ed25519 key for a stack's platform: writes it in `dir` as
/// PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` would, and answers
/// the file and the public key in base64.
fn signing_key(dir: &Path) -> (PathBuf, String) {
    use base64::Engine;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("a PEM key");
    let file = dir.join("signing-key.pem");
    std::fs::write(&file, pem.as_bytes()).expect("the signing key file");
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    (file, public)
}

/// `url` with its `host:port` replaced by `addr`.
fn with_addr(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (userinfo, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
    format!("{scheme}://{userinfo}{addr}{path}")
}

/// The socket address a store URL names (default port `port`).
fn addr_of(url: &str, port: u16) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap_or(host);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    host.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve the store address of {url}"))
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(Options::default()).await
    }

    /// Creates a database of its own and starts the three services.
    pub async fn start_with(options: Options) -> Stack {
        let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let admin_url = var(
            "TEND_TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let db_name = format!("tend_test_{tag}");
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL is required at {admin_url} (TEND_TEST_DATABASE_URL): {e}")
            });
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .expect("creating the test database");

        let dir = tempfile::Builder::new()
            .prefix("tend-e2e-")
            .tempdir()
            .expect("a temporary directory");
        let procs = [Service::Platform, Service::Sync, Service::Monitor]
            .into_iter()
            .map(|service| Proc {
                service,
                n: 0,
                child: None,
                port: 0,
                metrics_port: 0,
                log: dir.path().join(format!("{}.log", service.binary())),
            })
            .collect();
        let mut redis_url = var("TEND_TEST_REDIS_URL", "redis://127.0.0.1:6379");
        let amqp_url = var(
            "TEND_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        let pg_url = {
            let base = admin_url
                .rsplit_once('/')
                .map_or(admin_url.as_str(), |(b, _)| b);
            format!("{base}/{db_name}")
        };
        let mut service_urls = [pg_url.clone(), redis_url.clone(), amqp_url.clone()];
        let faults = if options.faults {
            let redis_server = RedisServer::start(dir.path().join("redis")).await;
            redis_url = redis_server.url();
            let postgres = Proxy::start("postgres", addr_of(&pg_url, 5432)).await;
            let redis = Proxy::start("redis", addr_of(&redis_url, 6379)).await;
            let amqp = Proxy::start("amqp", addr_of(&amqp_url, 5672)).await;
            service_urls = [
                with_addr(&pg_url, postgres.addr()),
                with_addr(&redis_url, redis.addr()),
                with_addr(&amqp_url, amqp.addr()),
            ];
            Some(Faults {
                postgres,
                redis,
                amqp,
                redis_server,
            })
        } else {
            None
        };
        let (signing_key_file, signing_public_key) = signing_key(dir.path());
        let mut stack = Stack {
            signing_key_file,
            signing_public_key,
            dir,
            db_name,
            instance: format!("test-{tag}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            options,
            admin_url,
            redis_url,
            amqp_url,
            admin_token_key: new_token_key(),
            device_token_key: new_token_key(),
            env_overrides: Vec::new(),
            service_urls,
            faults,
            procs,
            admin_token: tokio::sync::OnceCell::new(),
        };
        // The platform first: it migrates and creates the admin.
        stack.spawn(Service::Platform).await;
        stack.spawn(Service::Monitor).await;
        stack.spawn(Service::Sync).await;
        stack
    }

    /// The public key agents of this stack pin (`signing_keys`): standard
    /// base64 of the raw Ed25519 key.
    pub fn signing_public_key(&self) -> &str {
        &self.signing_public_key
    }

    /// Where this stack's file artifact store keeps its objects.
    pub fn artifact_dir(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// Every object of the stack's file artifact store (the files below
    /// [`Stack::artifact_dir`]).
    pub fn artifact_objects(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut todo = vec![self.artifact_dir()];
        while let Some(d) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    found.push(p);
                }
            }
        }
        found
    }

    /// Creates an artifact and uploads `body`; answers the artifact as the
    /// upload returned it (`ready`, with its size and SHA-256).
    pub async fn upload_artifact(
        &self,
        token: &str,
        component: &str,
        version: &str,
        device_types: &[&str],
        body: Vec<u8>,
    ) -> Value {
        let (status, a) = self
            .post(
                token,
                "/artifacts",
                json!({ "component": component, "version": version,
                        "device_types": device_types }),
            )
            .await;
        assert_eq!(status, 201, "creating artifact {component} {version}: {a}");
        let id = a["id"].as_str().expect("artifact id");
        let r = self
            .http
            .put(self.api(&format!("/artifacts/{id}/content")))
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("artifact upload");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "uploading artifact {component} {version}: {v}");
        v
    }

    /// Releases an artifact: update checks offer it to the devices of its
    /// types that run an older version.
    pub async fn release_artifact(&self, token: &str, id: &str) {
        let r = self
            .http
            .patch(self.api(&format!("/artifacts/{id}")))
            .bearer_auth(token)
            .json(&json!({ "released": true }))
            .send()
            .await
            .expect("artifact release");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "releasing artifact {id}: {v}");
    }

    pub fn database_url(&self) -> String {
        let base = self
            .admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&self.admin_url);
        format!("{base}/{}", self.db_name)
    }

    /// The admin token key the platform of this stack signs with.
    pub fn admin_token_key(&self) -> &str {
        &self.admin_token_key
    }

    /// The device token key the sync service of this stack signs with.
    pub fn device_token_key(&self) -> &str {
        &self.device_token_key
    }

    /// Sets (`Some`) or removes (`None`) a variable of one service's
    /// environment from its next start on (`spawn`, `spawn_nth`), and for
    /// [`Stack::start_to_exit`].
    pub fn set_env(&mut self, s: Service, var: &str, value: Option<&str>) {
        self.env_overrides
            .push((s, var.to_owned(), value.map(str::to_owned)));
    }

    /// The environment service `s` of this stack gets: what every service
    /// needs, its own token key, and the test's [`Stack::set_env`] changes.
    fn service_env(&self, s: Service) -> Vec<(String, String)> {
        let store = match &self.options.s3 {
            Some(bucket) => bucket.url("artifacts"),
            None => format!("file://{}", self.artifact_dir().display()),
        };
        let s3_vars = self.options.s3.iter().flat_map(|b| b.vars());
        let fixed = vec![
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("TEND_DATABASE_URL", self.service_urls[0].clone()),
            ("TEND_REDIS_URL", self.service_urls[1].clone()),
            ("TEND_AMQP_URL", self.service_urls[2].clone()),
            ("TEND_INSTANCE", self.instance.clone()),
            (
                "TEND_BOOTSTRAP_ADMIN",
                format!("{ADMIN_USER}:{ADMIN_PASSWORD}"),
            ),
            ("TEND_HEARTBEAT_S", self.options.heartbeat_s.to_string()),
            ("TEND_SWEEP_INTERVAL_MS", self.options.sweep_ms.to_string()),
            ("TEND_SHUTDOWN_GRACE_S", "5".to_owned()),
            ("TEND_ARTIFACT_STORE", store),
            (
                "TEND_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        let own_key = match s {
            Service::Platform => vec![
                ("TEND_ADMIN_TOKEN_KEY", self.admin_token_key.clone()),
                (
                    "TEND_SIGNING_KEY_FILE",
                    self.signing_key_file.display().to_string(),
                ),
            ],
            Service::Sync => vec![("TEND_DEVICE_TOKEN_KEY", self.device_token_key.clone())],
            Service::Monitor => vec![],
        };
        let mut env: Vec<(String, String)> = fixed
            .into_iter()
            .chain(own_key)
            .map(|(k, v)| (k.to_owned(), v))
            .chain(s3_vars)
            .collect();
        for (service, var, value) in &self.env_overrides {
            if *service != s {
                continue;
            }
            env.retain(|(k, _)| k != var);
            if let Some(v) = value {
                env.push((var.clone(), v.clone()));
            }
        }
        env
    }

    /// Starts service `s` with this stack's environment for it, expecting
    /// it to refuse to start: answers its exit code and what it printed.
    /// Panics if it still runs after 30 seconds.
    pub fn start_to_exit(&self, s: Service) -> (Option<i32>, String) {
        run_to_exit(s, self.service_env(s))
    }

    /// Starts (or restarts, on its previous port) one service and waits
    /// until it is ready.
    pub async fn spawn(&mut self, s: Service) {
        self.spawn_nth(s, 0).await;
    }

    fn proc_mut(&mut self, s: Service, n: usize) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.service == s && p.n == n)
            .unwrap_or_else(|| panic!("no {s:?} #{n} in this stack"))
    }

    fn proc(&self, s: Service, n: usize) -> &Proc {
        self.procs
            .iter()
            .find(|p| p.service == s && p.n == n)
            .unwrap_or_else(|| panic!("no {s:?} #{n} in this stack"))
    }

    /// Starts (or restarts, on its previous port) process `n` of a service
    /// (0 the first, then the replicas) and waits until it is ready.
    pub async fn spawn_nth(&mut self, s: Service, n: usize) {
        let env = self.service_env(s);
        let http = self.http.clone();
        launch(&http, s, env, self.proc_mut(s, n)).await;
    }

    /// How many processes of a service this stack has (running or not).
    pub fn count(&self, s: Service) -> usize {
        self.procs.iter().filter(|p| p.service == s).count()
    }

    /// The process id of process `n` of a service while it runs, to read
    /// its `/proc` entries.
    pub fn pid(&self, s: Service, n: usize) -> Option<u32> {
        self.proc(s, n).child.as_ref().map(Child::id)
    }

    /// Whether process `n` of a service is running.
    pub fn is_running(&self, s: Service, n: usize) -> bool {
        self.proc(s, n).child.is_some()
    }

    /// Starts one more replica of a service against the same stores, on a
    /// port of its own; returns its base URL.
    pub async fn spawn_replica(&mut self, s: Service) -> String {
        let n = self.count(s);
        self.procs.push(Proc {
            service: s,
            n,
            child: None,
            port: 0,
            metrics_port: 0,
            log: self
                .dir
                .path()
                .join(format!("{}-replica-{n}.log", s.binary())),
        });
        self.spawn_nth(s, n).await;
        self.url_nth(s, n)
    }

    /// SIGKILL: the service dies without draining.
    pub fn kill(&mut self, s: Service) {
        self.kill_nth(s, 0);
    }

    pub fn kill_nth(&mut self, s: Service, n: usize) {
        if let Some(mut c) = self.proc_mut(s, n).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit; returns the exit status code.
    pub fn terminate(&mut self, s: Service) -> Option<i32> {
        self.terminate_nth(s, 0)
    }

    pub fn terminate_nth(&mut self, s: Service, n: usize) -> Option<i32> {
        let mut c = self.proc_mut(s, n).child.take()?;
        signal(c.id(), "TERM");
        c.wait().ok()?.code()
    }

    pub fn url(&self, s: Service) -> String {
        self.url_nth(s, 0)
    }

    pub fn url_nth(&self, s: Service, n: usize) -> String {
        format!("http://127.0.0.1:{}", self.proc(s, n).port)
    }

    /// Where the first process of a service serves `/metrics` (a base URL):
    /// a port of its own for the platform and sync, the one port of the
    /// monitor.
    pub fn metrics_url(&self, s: Service) -> String {
        format!("http://127.0.0.1:{}", self.proc(s, 0).metrics_port)
    }

    /// The listening addresses of every process of a service, for a
    /// balancing [`Proxy`] in front of them.
    pub fn addrs(&self, s: Service) -> Vec<std::net::SocketAddr> {
        self.procs
            .iter()
            .filter(|p| p.service == s)
            .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p.port)))
            .collect()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url(Service::Platform))
    }

    pub fn device_api(&self, path: &str) -> String {
        format!("{}/device/v1{path}", self.url(Service::Sync))
    }

    /// Every process's log file name and text.
    pub fn logs(&self) -> Vec<(String, String)> {
        self.procs
            .iter()
            .map(|p| {
                let name = p.log.file_name().map(|n| n.to_string_lossy().into_owned());
                (
                    name.unwrap_or_default(),
                    std::fs::read_to_string(&p.log).unwrap_or_default(),
                )
            })
            .collect()
    }

    pub fn log_of(&self, s: Service) -> String {
        std::fs::read_to_string(&self.proc(s, 0).log).unwrap_or_default()
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .http
            .post(self.api("/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("login request");
        assert_eq!(r.status(), 200, "login of {username}");
        let v: Value = r.json().await.expect("login answer");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// A token of the bootstrap admin (admin of tenant `default`, system admin).
    pub async fn admin(&self) -> String {
        self.admin_token
            .get_or_init(|| self.login(ADMIN_USER, ADMIN_PASSWORD))
            .await
            .clone()
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.api(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("admin request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `DELETE` on the admin API; answers the status.
    pub async fn delete(&self, token: &str, path: &str) -> u16 {
        self.http
            .delete(self.api(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("admin API request")
            .status()
            .as_u16()
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.api(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("admin request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn new_device(&self, token: &str) -> Device {
        self.new_device_of_type(token, "kiosk", "kiosk").await
    }

    /// A device named `name` of type `device_type`.
    pub async fn new_device_of_type(&self, token: &str, name: &str, device_type: &str) -> Device {
        let (status, v) = self
            .post(
                token,
                "/devices",
                json!({ "name": name, "device_type": device_type, "labels": { "site": "test" } }),
            )
            .await;
        assert_eq!(status, 201, "device creation: {v}");
        Device {
            id: v["credentials"]["device_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("device_id"),
            secret: v["credentials"]["secret"]
                .as_str()
                .expect("secret")
                .to_owned(),
        }
    }

    /// A device token from the sync server at `sync` (a base URL; the
    /// stack's own with [`Stack::device_token`]).
    pub async fn device_token_at(&self, sync: &str, device: &Device) -> String {
        let r = self
            .http
            .post(format!("{sync}/device/v1/auth"))
            .json(&json!({ "device_id": device.id, "secret": device.secret }))
            .send()
            .await
            .expect("device auth request");
        assert_eq!(r.status(), 200, "device auth");
        let v: Value = r.json().await.expect("device auth answer");
        v["token"].as_str().expect("token").to_owned()
    }

    pub async fn device_token(&self, device: &Device) -> String {
        self.device_token_at(&self.url(Service::Sync), device).await
    }

    /// Queues a command; panics unless the platform answers 201.
    pub async fn queue(&self, token: &str, device: Uuid, body: Value) -> Uuid {
        let (status, v) = self
            .post(token, &format!("/devices/{device}/commands"), body)
            .await;
        assert_eq!(status, 201, "queueing a command: {v}");
        v["id"].as_str().and_then(|s| s.parse().ok()).expect("id")
    }

    pub async fn command(&self, token: &str, id: Uuid) -> Value {
        let (status, v) = self.get(token, &format!("/commands/{id}")).await;
        assert_eq!(status, 200, "command {id}: {v}");
        v
    }

    /// Waits until the command reaches `status`; panics if it reaches
    /// another terminal state or the time runs out.
    pub async fn wait_for(&self, token: &str, id: Uuid, status: &str, timeout: Duration) -> Value {
        eventually(timeout, &format!("command {id} to be {status}"), || async {
            let v = self.command(token, id).await;
            let now = v["status"].as_str().unwrap_or_default().to_owned();
            if now == status {
                return Some(v);
            }
            assert!(
                !now.parse::<tend_proto::CommandStatus>()
                    .is_ok_and(tend_proto::CommandStatus::is_terminal),
                "command {id} ended {now}, expected {status}: {v}"
            );
            None
        })
        .await
    }

    /// A Redis connection, for tests that tamper with the hot-path state.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is required (TEND_TEST_REDIS_URL)")
    }

    /// Deletes every Redis key of this installation.
    pub async fn flush_redis(&self) {
        let mut r = self.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.instance))
            .query_async(&mut r)
            .await
            .expect("KEYS");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut r)
                .await
                .expect("DEL");
        }
    }

    /// A client of this stack's database, for assertions on the record.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.database_url(), tokio_postgres::NoTls)
            .await
            .expect("the test database");
        tokio::spawn(conn);
        client
    }
}

/// A random token key: 64 hex digits, as `openssl rand -hex 32` makes.
pub fn new_token_key() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// Runs service `s` with exactly `env` (and `PATH`), expecting it to exit
/// on its own: answers its exit code and its output (stdout then stderr).
/// Panics if it still runs after 30 seconds.
pub fn run_to_exit(s: Service, env: Vec<(String, String)>) -> (Option<i32>, String) {
    let mut child = Command::new(bin(s.binary()))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .env("TEND_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", s.binary()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} still runs after 30 s: it was expected to refuse to start",
                s.binary()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("the service's output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Starts one service process with `env` and waits until it logs its
/// addresses and answers `/readyz`.
async fn launch(http: &reqwest::Client, s: Service, env: Vec<(String, String)>, p: &mut Proc) {
    assert!(p.child.is_none(), "{s:?} is already running");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&p.log)
        .expect("the service's log file");
    let start_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = Command::new(bin(s.binary()));
    command
        .env_clear()
        .envs(env)
        .env("TEND_LISTEN", format!("127.0.0.1:{}", p.port));
    // The monitor's one port is its metrics port.
    if s != Service::Monitor {
        command.env(
            "TEND_METRICS_LISTEN",
            format!("127.0.0.1:{}", p.metrics_port),
        );
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", s.binary()));
    p.child = Some(child);

    let log_path = p.log.clone();
    (p.port, p.metrics_port) = eventually(
        Duration::from_secs(60),
        &format!("{} to log its addresses", s.binary()),
        || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let fresh = text.get(start_len as usize..).unwrap_or("").to_owned();
            async move {
                let port = logged_port(&fresh, "listening on ")?;
                let metrics_port = logged_port(&fresh, "serving /metrics on ")?;
                Some((port, metrics_port))
            }
        },
    )
    .await;
    let ready = format!("http://127.0.0.1:{}/readyz", p.port);
    eventually(
        Duration::from_secs(30),
        &format!("{} to be ready", s.binary()),
        || {
            let (http, ready) = (http.clone(), ready.clone());
            async move {
                let r = http.get(&ready).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        },
    )
    .await;
}

/// The port of the first address logged after `words` in `log`.
fn logged_port(log: &str, words: &str) -> Option<u16> {
    log.lines().find_map(|l| {
        let rest = l.split(words).nth(1)?;
        let addr = rest.split_whitespace().next()?;
        addr.rsplit_once(':')?.1.parse::<u16>().ok()
    })
}

/// Sends a signal with kill(1): the workspace forbids unsafe code, and
/// these are our own children.
pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Stack {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for p in self.procs.iter() {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {} (last lines) ----", p.log.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        // Clean up from a thread of its own: Drop cannot await, and the
        // test's runtime may be shutting down.
        let (admin_url, db, redis_url, amqp_url, instance) = (
            self.admin_url.clone(),
            self.db_name.clone(),
            self.redis_url.clone(),
            self.amqp_url.clone(),
            self.instance.clone(),
        );
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((c, conn)) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .await;
                }
                if let Ok(client) = redis::Client::open(redis_url.as_str())
                    && let Ok(mut r) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{instance}:*"))
                        .query_async(&mut r)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(&keys).query_async(&mut r).await;
                    }
                }
                if let Ok(conn) =
                    lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
                        .await
                    && let Ok(ch) = conn.create_channel().await
                {
                    let _ = ch
                        .exchange_delete(
                            format!("{instance}.sync").into(),
                            lapin::options::ExchangeDeleteOptions::default(),
                        )
                        .await;
                    let _ = conn.close(200, "done".into()).await;
                }
            });
        })
        .join();
    }
}
