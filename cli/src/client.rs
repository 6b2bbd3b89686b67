//! The admin API over HTTP: requests with the bearer token, answers as JSON,
//! errors from their problem+json `detail`.
//!
//! Bodies stay `serde_json::Value`s: `--json` prints the API's answer as
//! it came, fields this version of tendctl does not know included.

use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde_json::Value;

use crate::exit::{Failure, NOT_LOGGED_IN};

/// Long enough for a login's password hashing on a busy server, short
/// enough that a hung server does not hang a script.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a second below which an upload is given up: a link slower than
/// this would take hours over a typical image, and a stalled one must not
/// hang a script forever.
const SLOWEST_UPLOAD: u64 = 100_000;

/// Sends of an idempotent request before giving up: three, a second and
/// then two apart, ride out a dropped connection or a replica restarting.
const IDEMPOTENT_ATTEMPTS: u64 = 3;

fn upload_timeout(len: u64) -> Duration {
    REQUEST_TIMEOUT + Duration::from_secs(len / SLOWEST_UPLOAD)
}

/// The platform's base URL in one spelling (no trailing slash), so a saved
/// session is matched to the server it came from.
pub fn normalize_server(s: &str) -> Result<String, Failure> {
    let bad = |why: &str| Failure::Usage(format!("--server {s:?} {why}"));
    let url = Url::parse(s).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

pub struct Client {
    http: reqwest::Client,
    server: String,
    /// `None` for the one call that needs none: login.
    token: Option<String>,
}

impl Client {
    /// `server` as returned by [`normalize_server`].
    pub fn new(server: String, token: Option<String>) -> Result<Client, Failure> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("tendctl/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Failure::local("setting up the HTTP client", e))?;
        Ok(Client {
            http,
            server,
            token,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.server));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        self.send(self.request(Method::GET, path).query(query))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// A POST with an `Idempotency-Key`, sent again with the same key when
    /// the answer is lost (no answer in time, a broken connection): the
    /// server answers a repeated request with the first answer, so the
    /// work is done once whatever happened to the answers.
    pub async fn post_idempotent(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> Result<Value, Failure> {
        let mut attempt = 1;
        loop {
            let req = self
                .request(Method::POST, path)
                .header("Idempotency-Key", key)
                .json(body);
            match self.send(req).await {
                Err(Failure::Unreachable(why)) if attempt < IDEMPOTENT_ATTEMPTS => {
                    eprintln!("{why}; asking again with the same idempotency key");
                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.send(self.request(Method::PATCH, path).json(body))
            .await
    }

    /// A PUT of `len` bytes streamed from `body` (an artifact's content).
    /// The whole-request timeout of every other call would cut a large
    /// upload short, so this one is allowed [`REQUEST_TIMEOUT`] plus the
    /// time the bytes take at [`SLOWEST_UPLOAD`].
    pub async fn put_stream(
        &self,
        path: &str,
        body: reqwest::Body,
        len: u64,
    ) -> Result<Value, Failure> {
        let req = self
            .request(Method::PUT, path)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .timeout(upload_timeout(len))
            .body(body);
        self.send(req).await
    }

    /// A DELETE; the API answers 204 without a body.
    pub async fn delete(&self, path: &str) -> Result<(), Failure> {
        self.send(self.request(Method::DELETE, path))
            .await
            .map(drop)
    }

    /// Sends and sorts the answer: a JSON body (`Null` when empty), or the
    /// failure with the exit code it deserves.
    async fn send(&self, req: RequestBuilder) -> Result<Value, Failure> {
        let res = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status == StatusCode::UNAUTHORIZED && self.token.is_some() {
            return Err(Failure::NotLoggedIn(NOT_LOGGED_IN.into()));
        }
        if !status.is_success() {
            return Err(Failure::Api {
                status: status.as_u16(),
                detail: problem_detail(status, &body),
            });
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|_| {
            Failure::Unreachable(format!(
                "{} answered HTTP {status} with something other than JSON: is it a tend platform?",
                self.server
            ))
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> Failure {
        let why = if e.is_timeout() {
            "no answer in time".to_owned()
        } else {
            // reqwest's own message ("error sending request for url …") says
            // little; the innermost cause says what happened ("Connection
            // refused").
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            cause.to_string()
        };
        Failure::Unreachable(format!("cannot reach {}: {why}", self.server))
    }
}

/// The human part of an error answer: problem+json `detail`, else `title`,
/// else the start of the body, else the status's name.
pub fn problem_detail(status: StatusCode, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        for field in ["detail", "title"] {
            if let Some(s) = v[field].as_str().filter(|s| !s.trim().is_empty()) {
                return crate::output::sanitize_line(s);
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    match first {
        // A proxy's HTML page or a stack trace: one bounded line is enough.
        Some(l) => crate::output::sanitize_line(&l.chars().take(200).collect::<String>()),
        None => status
            .canonical_reason()
            .unwrap_or("unexpected answer")
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_url_has_one_spelling() {
        assert_eq!(
            normalize_server("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_server("https://tend.example/admin/").unwrap(),
            "https://tend.example/admin"
        );
        assert!(normalize_server("127.0.0.1:8080").is_err());
        assert!(normalize_server("ftp://host").is_err());
        assert!(normalize_server("http://host/?x=1").is_err());
    }

    #[test]
    fn the_problem_detail_is_preferred_then_title_then_text() {
        let s = StatusCode::CONFLICT;
        let problem = br#"{"type":"about:blank","title":"Conflict","status":409,"detail":"the command is delivered"}"#;
        assert_eq!(problem_detail(s, problem), "the command is delivered");
        assert_eq!(problem_detail(s, br#"{"title":"Conflict"}"#), "Conflict");
        assert_eq!(
            problem_detail(StatusCode::BAD_GATEWAY, b"\n<h1>502 Bad Gateway</h1>\n"),
            "<h1>502 Bad Gateway</h1>"
        );
        assert_eq!(problem_detail(StatusCode::NOT_FOUND, b""), "Not Found");
    }

    #[test]
    fn an_upload_gets_the_usual_timeout_plus_its_bytes_at_the_slowest_rate() {
        assert_eq!(upload_timeout(0), REQUEST_TIMEOUT);
        assert_eq!(
            upload_timeout(1_000_000_000),
            REQUEST_TIMEOUT + Duration::from_secs(10_000)
        );
    }

    #[test]
    fn a_detail_cannot_drive_the_terminal() {
        let body = br#"{"detail":"bad\u001b[2J\nnews"}"#;
        assert_eq!(
            problem_detail(StatusCode::BAD_REQUEST, body),
            "bad\\u{1b}[2J\\nnews"
        );
    }
}
