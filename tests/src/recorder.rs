//! An HTTP proxy that records what an agent asks of tend-sync.
//!
//! The [`Proxy`](crate::Proxy) of `proxy.rs` moves bytes and sees no
//! requests; this one forwards each request whole and keeps what tests
//! assert on: which byte ranges of an artifact were served (a resumed
//! download fetches nothing twice), and how many final reports an
//! instruction got (exactly one, whatever happened on the device). The
//! agent reaches it through its `server_url` ([`Agent::set_server`]).
//!
//! Bodies are buffered, not streamed: the artifacts and reports of the
//! tests are a few MiB at most, and a whole answer is what the recorder
//! needs to see anyway.
//!
//! [`Agent::set_server`]: crate::Agent::set_server

use std::sync::{Arc, Mutex, PoisonError};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;
use uuid::Uuid;

/// One request and what answered it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    /// The `Range` header as the client sent it.
    pub range: Option<String>,
    pub status: u16,
    /// The bytes served (first, last; inclusive): from `Content-Range` of
    /// a 206, or the whole body of a 200. `None` for an empty answer.
    pub served: Option<(u64, u64)>,
    /// A report's JSON body (decompressed when it came gzip-compressed).
    pub report: Option<Value>,
}

/// The statuses that end an instruction.
const FINAL: [&str; 3] = ["succeeded", "failed", "rejected"];

/// Forwards everything to one upstream base URL and records each exchange.
/// Dropping it stops the server.
pub struct Recorder {
    url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    server: actix_web::dev::ServerHandle,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    log: Arc<Mutex<Vec<Exchange>>>,
}

/// Larger than any report or artifact a test sends through it.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

impl Recorder {
    /// Listens on 127.0.0.1:0 and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("recorder listener");
        let addr = listener.local_addr().expect("recorder address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = web::Data::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            // Redirects (to an object store) go back to the client as they
            // came, so it follows them itself; no timeout, because a
            // long-poll heartbeat is held by the server on purpose.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("recorder client"),
            log: log.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(BODY_LIMIT))
                .default_service(web::to(forward))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .expect("recorder listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Recorder {
            url: format!("http://{addr}"),
            log,
            server: handle,
        }
    }

    /// The base URL clients use instead of the upstream's.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every exchange so far, in the order the answers were sent.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The downloads of an artifact (`GET /device/v1/artifacts/{id}`).
    pub fn downloads(&self, artifact_id: &str) -> Vec<Exchange> {
        let path = format!("/device/v1/artifacts/{artifact_id}");
        self.exchanges()
            .into_iter()
            .filter(|e| e.method == "GET" && e.path == path)
            .collect()
    }

    /// How many reports with a final status (`succeeded`, `failed`,
    /// `rejected`) were sent for an instruction, whatever the answer.
    pub fn final_reports(&self, instruction: Uuid) -> usize {
        let path = format!("/device/v1/instructions/{instruction}/report");
        self.exchanges()
            .iter()
            .filter(|e| e.method == "POST" && e.path == path)
            .filter(|e| {
                e.report
                    .as_ref()
                    .and_then(|r| r["status"].as_str())
                    .is_some_and(|s| FINAL.contains(&s))
            })
            .count()
    }

    /// How many heartbeats were answered.
    pub fn heartbeats(&self) -> usize {
        self.exchanges()
            .iter()
            .filter(|e| e.path == "/device/v1/heartbeat" && e.status == 200)
            .count()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The stop command is sent at once; nobody needs to await it.
        drop(self.server.stop(false));
    }
}

/// Headers that belong to one hop, not to the request or answer.
const HOP: [&str; 6] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

async fn forward(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let gzip_declared = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    // The body extractor may already have decompressed it: then the
    // header no longer describes what is forwarded.
    let still_gzip = body.starts_with(&[0x1f, 0x8b]);
    let path = req.path().to_owned();
    let target = format!(
        "{}{}",
        shared.upstream,
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let method =
        reqwest::Method::from_bytes(req.method().as_str().as_bytes()).expect("an HTTP method");
    let mut out = shared.client.request(method, &target);
    for (name, value) in req.headers() {
        let name = name.as_str();
        if HOP.contains(&name) || (name == "content-encoding" && gzip_declared && !still_gzip) {
            continue;
        }
        out = out.header(name, value.as_bytes());
    }
    let report = path
        .ends_with("/report")
        .then(|| {
            let plain = if gzip_declared && still_gzip {
                let mut text = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
                    .ok()?;
                text
            } else {
                body.to_vec()
            };
            serde_json::from_slice(&plain).ok()
        })
        .flatten();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let answer = match out.body(body.to_vec()).send().await {
        Ok(answer) => answer,
        Err(e) => return HttpResponse::BadGateway().body(format!("recorder: upstream: {e}")),
    };
    let status = answer.status().as_u16();
    let mut reply =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("an HTTP status"));
    let mut content_range = None;
    for (name, value) in answer.headers() {
        if name.as_str() == "content-range" {
            content_range = value.to_str().ok().map(str::to_owned);
        }
        if !HOP.contains(&name.as_str()) {
            reply.append_header((name.as_str(), value.as_bytes()));
        }
    }
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => return HttpResponse::BadGateway().body(format!("recorder: upstream body: {e}")),
    };
    let served = match (status, content_range) {
        (206, Some(cr)) => parse_content_range(&cr),
        (200, _) if !bytes.is_empty() => Some((0, bytes.len() as u64 - 1)),
        _ => None,
    };
    shared
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Exchange {
            method: req.method().as_str().to_owned(),
            path,
            range,
            status,
            served,
            report,
        });
    reply.body(bytes)
}

/// `bytes 100-199/1000` → (100, 199).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (first, last) = value
        .strip_prefix("bytes ")?
        .split('/')
        .next()?
        .split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_ranges_are_read() {
        assert_eq!(
            super::parse_content_range("bytes 100-199/1000"),
            Some((100, 199))
        );
        assert_eq!(super::parse_content_range("bytes */1000"), None);
    }
}
