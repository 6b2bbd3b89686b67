//! A hostile sync server, and the real agent in front of it.
//!
//! [`HostileServer`] is not a mock of tend-sync: it is a small HTTP/1.1
//! server (plain, or TLS with a certificate of the test's own CA) that
//! answers each request with whatever the test decides, including what no
//! working server sends: numbers out of every range, bodies of tens of
//! MiB, bodies that never end, malformed JSON, instructions that must
//! never run. It records every request, so a test can see what the agent
//! asked and reported.
//!
//! [`HostileAgent`] runs the real `tend-agent` binary against it, with
//! actions that only write a marker file, and reads what the kernel says
//! of the process (alive, peak memory) and what its state directory holds.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agent::toml_array;
use crate::stack::bin;

/// One request the agent sent.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Decompressed when it came gzip-compressed (reports).
    pub body: Vec<u8>,
}

impl Request {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A body the server sends.
#[derive(Debug, Clone)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `prefix`, then `len` copies of `fill`, written as it goes (never
    /// held in memory), without a `Content-Length`: the body ends when the
    /// connection closes.
    Huge {
        prefix: Vec<u8>,
        fill: u8,
        len: u64,
    },
    /// `prefix`, then one byte every `every`, for ever.
    Drip {
        prefix: Vec<u8>,
        every: Duration,
    },
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Answer {
    pub fn json(value: &Value) -> Answer {
        Answer::raw(200, value.to_string())
    }

    /// `text` as an `application/json` body, however malformed.
    pub fn raw(status: u16, text: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Body::Bytes(text.into().into_bytes()),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Decides the answer to a request; `n` counts the earlier requests to
/// the same method and path (0 for the first).
pub type Behaviour = dyn Fn(&Request, usize) -> Option<Answer> + Send + Sync;

/// What an ordinary server answers, for what a test does not override:
/// a token for an hour, heartbeats every second with nothing pending, no
/// instructions, every report accepted.
pub fn ordinary(request: &Request) -> Answer {
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/device/v1/auth") => Answer::json(&json!({"token": "t", "expires_in": 3600})),
        ("POST", "/device/v1/heartbeat") => {
            Answer::json(&json!({"pending": false, "next_heartbeat_s": 1}))
        }
        ("GET", "/device/v1/instructions") => Answer::json(&json!({"instructions": []})),
        ("POST", "/device/v1/update-check") => Answer::json(&json!({"pending": false})),
        ("POST", _) => Answer::json(&json!({})),
        _ => Answer::raw(404, "{}"),
    }
}

/// An instruction as tend-sync would send it: `expires_at` in an hour,
/// `timeout_s` 60, unless the test changes them.
pub fn instruction(kind: &str, params: Value) -> Value {
    let now = chrono::Utc::now();
    json!({
        "id": Uuid::new_v4(),
        "kind": kind,
        "params": params,
        "issued_at": now,
        "expires_at": now + chrono::Duration::hours(1),
        "timeout_s": 60,
    })
}

/// The server.
pub struct HostileServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: CancellationToken,
}

impl HostileServer {
    /// Serves plain HTTP on 127.0.0.1; `behaviour` answers first, then
    /// [`ordinary`].
    pub async fn start(
        behaviour: impl Fn(&Request, usize) -> Option<Answer> + Send + Sync + 'static,
    ) -> HostileServer {
        HostileServer::serve(None, Arc::new(behaviour)).await
    }

    /// Serves HTTPS with `tls`'s certificate.
    pub async fn start_tls(
        tls: &TestCa,
        behaviour: impl Fn(&Request, usize) -> Option<Answer> + Send + Sync + 'static,
    ) -> HostileServer {
        HostileServer::serve(Some(tls.acceptor()), Arc::new(behaviour)).await
    }

    async fn serve(tls: Option<TlsAcceptor>, behaviour: Arc<Behaviour>) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (shared, token) = (requests.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let (tls, behaviour, requests, token) = (
                    tls.clone(),
                    behaviour.clone(),
                    shared.clone(),
                    token.clone(),
                );
                tokio::spawn(async move {
                    let served = async {
                        match tls {
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    exchange(stream, &*behaviour, &requests).await;
                                }
                            }
                            None => exchange(stream, &*behaviour, &requests).await,
                        }
                    };
                    token.run_until_cancelled(served).await;
                });
            }
        });
        HostileServer {
            addr,
            scheme,
            requests,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` (the name the
    /// test certificate is made for).
    pub fn url(&self) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}", self.addr.port()),
            _ => format!("http://{}", self.addr),
        }
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests to `path` (any method).
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The reports received: (instruction id, report body).
    pub fn reports(&self) -> Vec<(String, Value)> {
        self.requests()
            .into_iter()
            .filter_map(|r| {
                let id = r
                    .path
                    .strip_prefix("/device/v1/instructions/")?
                    .strip_suffix("/report")?;
                Some((id.to_owned(), r.json()))
            })
            .collect()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads one request, answers it and closes the connection.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    behaviour: &Behaviour,
    requests: &Mutex<Vec<Request>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let answer = {
        let mut all = requests.lock().unwrap_or_else(PoisonError::into_inner);
        let n = all
            .iter()
            .filter(|r| r.method == request.method && r.path == request.path)
            .count();
        all.push(request.clone());
        drop(all);
        behaviour(&request, n).unwrap_or_else(|| ordinary(&request))
    };
    let _ = write_answer(&mut stream, &answer).await;
    let _ = stream.shutdown().await;
}

/// The request head (at most 64 KiB) and its `Content-Length` body (at
/// most 16 MiB): the agent under test is the only client.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Request> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?);
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(16 * 1024 * 1024);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(64 * 1024)];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if header("content-encoding").as_deref() == Some("gzip") {
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .is_ok()
        {
            body = plain;
        }
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

async fn write_answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    answer: &Answer,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} Hostile\r\nconnection: close\r\n",
        answer.status
    );
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Body::Bytes(bytes) = &answer.body {
        head.push_str(&format!("content-length: {}\r\n", bytes.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    match &answer.body {
        Body::Bytes(bytes) => stream.write_all(bytes).await?,
        Body::Huge { prefix, fill, len } => {
            stream.write_all(prefix).await?;
            let block = vec![*fill; 64 * 1024];
            let mut left = *len;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                stream.write_all(&block[..n]).await?;
                left -= n as u64;
            }
        }
        Body::Drip { prefix, every } => {
            stream.write_all(prefix).await?;
            stream.flush().await?;
            loop {
                tokio::time::sleep(*every).await;
                stream.write_all(b" ").await?;
                stream.flush().await?;
            }
        }
    }
    stream.flush().await
}

/// A certificate authority made for one test with the `openssl` command,
/// and a server certificate it signed for `localhost` and 127.0.0.1.
pub struct TestCa {
    /// The CA's certificate (PEM): what the agent's `ca_file` names.
    pub ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("CA directory");
        let ca_key = dir.join("ca.key");
        let ca_file = dir.join("ca.pem");
        let key = dir.join("server.key");
        let csr = dir.join("server.csr");
        let cert = dir.join("server.pem");
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n",
        )
        .expect("extensions file");
        let p = |path: &Path| path.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca_file),
            "-days",
            "2",
            "-subj",
            "/CN=tend test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca_file),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-out",
            &p(&cert),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ]);
        TestCa { ca_file, cert, key }
    }

    fn acceptor(&self) -> TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .expect("server certificate")
            .collect::<Result<_, _>>()
            .expect("server certificate");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("server key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate and key");
        TlsAcceptor::from(Arc::new(config))
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl (the tests make their certificates with it)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The configuration of an agent in front of a hostile server: the one
/// place it is written, so a key every agent needs is added here once.
/// The actions only append the instruction id to `ran`; a short request
/// timeout makes a body that never ends cost seconds, not half a minute.
///
/// `signing_key` is the public key the agent pins. Without one the agent
/// runs unsigned instructions (`accept_unsigned`): most tests here show
/// what holds besides signatures, the bounds and checks that protect a
/// device even from a server that could sign.
pub fn agent_config(
    server_url: &str,
    dir: &Path,
    ca_file: Option<&Path>,
    signing_key: Option<&str>,
) -> String {
    let ran = dir.join("ran");
    let action = toml_array(&[
        "sh",
        "-c",
        &format!("echo \"$TEND_INSTRUCTION_ID\" >> '{}'", ran.display()),
    ]);
    let ca_file = ca_file
        .map(|path| format!("ca_file = \"{}\"\n", path.display()))
        .unwrap_or_default();
    let trust = match signing_key {
        Some(key) => format!("signing_keys = [\"{key}\"]\n"),
        None => "accept_unsigned = true\n".to_owned(),
    };
    format!(
        "server_url = \"{server_url}\"\n\
         {ca_file}\
         {trust}\
         device_id = \"{id}\"\n\
         device_secret = \"hostile-test-secret\"\n\
         state_dir = \"{state}\"\n\
         boot_id_file = \"{boot}\"\n\
         request_timeout_s = 2\n\
         \n[actions]\nreboot = {action}\nshutdown = {action}\n",
        id = Uuid::new_v4(),
        state = dir.join("state").display(),
        boot = dir.join("boot_id").display(),
    )
}

/// The real agent, configured by [`agent_config`], in a temporary
/// directory of its own.
pub struct HostileAgent {
    pub dir: PathBuf,
    child: Child,
    _tmp: tempfile::TempDir,
}

impl HostileAgent {
    pub fn start(server_url: &str, ca_file: Option<&Path>) -> HostileAgent {
        HostileAgent::start_with(server_url, ca_file, None)
    }

    /// [`HostileAgent::start`] for an agent that pins `signing_key`.
    pub fn start_pinned(server_url: &str, signing_key: &str) -> HostileAgent {
        HostileAgent::start_with(server_url, None, Some(signing_key))
    }

    fn start_with(
        server_url: &str,
        ca_file: Option<&Path>,
        signing_key: Option<&str>,
    ) -> HostileAgent {
        let tmp = tempfile::Builder::new()
            .prefix("tend-hostile-agent-")
            .tempdir()
            .expect("agent directory");
        let dir = tmp.path();
        std::fs::write(dir.join("boot_id"), format!("{}\n", Uuid::new_v4())).expect("boot id");
        let config = dir.join("agent.toml");
        std::fs::write(&config, agent_config(server_url, dir, ca_file, signing_key))
            .expect("agent config");
        let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let child = Command::new(bin("tend-agent"))
            .arg("--config")
            .arg(&config)
            .env(
                "TEND_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting tend-agent");
        HostileAgent {
            dir: dir.to_owned(),
            child,
            _tmp: tmp,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The most resident memory the process ever had (`VmHWM`), in bytes.
    pub fn peak_memory_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the agent's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc status")
            * 1024
    }

    /// What the state directory holds on disk, in bytes.
    pub fn state_bytes(&self) -> u64 {
        fn size(path: &Path) -> u64 {
            let Ok(meta) = std::fs::symlink_metadata(path) else {
                return 0;
            };
            if !meta.is_dir() {
                return meta.len();
            }
            std::fs::read_dir(path)
                .map(|entries| entries.flatten().map(|e| size(&e.path())).sum())
                .unwrap_or(0)
        }
        size(&self.dir.join("state"))
    }

    /// What in the state directory other users could read or enter: the
    /// directory and its subdirectories must be 0700, its files 0600.
    pub fn open_state_files(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        fn walk(path: &Path, open: &mut Vec<String>) {
            let Ok(meta) = std::fs::symlink_metadata(path) else {
                return;
            };
            let mode = meta.permissions().mode() & 0o777;
            let allowed = if meta.is_dir() { 0o700 } else { 0o600 };
            if mode & !allowed != 0 {
                open.push(format!("{} {mode:o}", path.display()));
            }
            if meta.is_dir() {
                for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                    walk(&entry.path(), open);
                }
            }
        }
        let mut open = Vec::new();
        walk(&self.dir.join("state"), &mut open);
        open
    }

    /// The instruction ids the actions ran.
    pub fn ran(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("ran"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for HostileAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
