//! A real S3-protocol server for tests of the artifact store, and a fresh
//! bucket for each test.
//!
//! One server per test process, started on first use by
//! `deploy/local/s3-server.sh` (moto's server mode, installed on first use
//! into a venv under `target/`), on a port of its own like the private
//! Redis servers of [`crate::redis_server`]. A static is never dropped, so
//! the script watches this process's id instead and stops the server when
//! the process exits, however it exits. A test that cannot get a server
//! fails with the reason; it never skips.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::redis_server::reserved_port;

/// The credentials every test uses: moto accepts any, but a client must
/// sign its requests with some.
const ACCESS_KEY: &str = "tend-test";
const SECRET_KEY: &str = "tend-test-secret";

struct Server {
    endpoint: String,
    /// Kept so that the child is reaped by nobody else; the script stops
    /// the server when this process exits.
    _script: Mutex<Child>,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/s3-server.sh")
}

/// Installs moto if needed (about 30 s the first time on a machine), then
/// starts the server and waits until it prints its URL.
async fn start() -> Server {
    let script = script();
    let install = tokio::task::spawn_blocking({
        let script = script.clone();
        move || Command::new("bash").arg(&script).arg("install").output()
    })
    .await
    .expect("the install task")
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        install.status.success(),
        "{} install failed ({}): {}",
        script.display(),
        install.status,
        String::from_utf8_lossy(&install.stderr)
    );

    let port = reserved_port();
    let mut child = Command::new("bash")
        .arg(&script)
        .args(["start", &port.to_string(), &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its request log is noise unless asked for.
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    // The script prints the URL once the server answers, or exits.
    let first_line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let endpoint = match tokio::time::timeout(Duration::from_secs(60), first_line).await {
        Ok(Ok(Ok(line))) if line.starts_with("http://") => line.trim().to_owned(),
        other => {
            let _ = child.kill();
            panic!(
                "the S3 test server did not start on port {port} ({other:?}); \
                 run `bash deploy/local/s3-server.sh start {port}` to see why"
            )
        }
    };
    Server {
        endpoint,
        _script: Mutex::new(child),
    }
}

/// A bucket of a test's own on the process's S3 server.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub name: String,
}

impl S3Bucket {
    /// Starts the server if this process has none yet, and creates an empty
    /// bucket with a fresh name (a plain `PUT /bucket`, which moto accepts
    /// unsigned).
    pub async fn create() -> S3Bucket {
        let server = SERVER.get_or_init(start).await;
        let name = format!("tend-test-{}", uuid::Uuid::new_v4().simple());
        let res = reqwest::Client::new()
            .put(format!("{}/{name}", server.endpoint))
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating bucket {name} on {}: {e}", server.endpoint));
        assert!(
            res.status().is_success(),
            "creating bucket {name}: {}",
            res.status()
        );
        S3Bucket {
            endpoint: server.endpoint.clone(),
            name,
        }
    }

    /// `s3://bucket/prefix`, for `TEND_ARTIFACT_STORE`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// The `AWS_*` variables a client of this server needs, as the services
    /// read them from their environment.
    pub fn vars(&self) -> HashMap<String, String> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}
