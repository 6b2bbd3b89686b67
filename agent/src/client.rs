//! The device API of `tend-sync`, as the agent calls it.
//!
//! It owns the device token: it authenticates lazily, renews the token
//! before it expires, and re-authenticates once when the server answers 401
//! anyway (the server restarted with a new key, or the clock drifted).

use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RANGE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use tend_proto::device::{
    AuthRequest, AuthResponse, Heartbeat, HeartbeatResponse, Instruction, Instructions, Recovery,
    Report, UpdateCheck, UpdateCheckResponse,
};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::limits::{ERROR_BODY_BYTES, INSTRUCTIONS_BODY_BYTES, SMALL_BODY_BYTES};
use crate::sanitize;
use crate::system::AGENT_VERSION;

/// Connecting should be quick even on a poor link; a longer wait means the
/// server is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a pending device waits between asking whether it was
/// accepted, whatever the server says.
const PENDING_RETRY_MAX_S: u64 = 300;
/// The longest a token is used, whatever the server says its lifetime is.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Report bodies larger than this are sent gzip-compressed. Log text
/// shrinks five- to tenfold, which matters on a metered cellular link;
/// below a few KiB the saving is not worth the CPU.
pub const COMPRESS_ABOVE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not get an answer (connection refused, timeout).
    #[error("cannot reach the server: {}", chain(.0))]
    Unreachable(reqwest::Error),
    /// `POST /device/v1/auth` answered 401: wrong secret or decommissioned.
    #[error("the server refused this device's credentials")]
    AuthRefused,
    /// `POST /device/v1/auth` answered 403 with `Retry-After`: the device
    /// enrolled itself and waits for an admin to accept it.
    #[error("this device waits for an admin to accept its enrolment")]
    Pending { retry_after: Duration },
    #[error("the server answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("cannot read the server's answer: {}", chain(.0))]
    Decode(reqwest::Error),
    /// The answer is not the JSON the contract describes (malformed, a
    /// number of the wrong type or out of range).
    #[error("the server's answer to {what} is not valid: {error}")]
    Invalid {
        what: &'static str,
        error: serde_json::Error,
    },
    /// The answer's body is larger than the agent reads for this request;
    /// the rest was not read.
    #[error("the server's answer to {what} is larger than {limit} bytes; not read further")]
    TooLarge { what: &'static str, limit: usize },
    #[error("cannot encode the request: {0}")]
    Encode(std::io::Error),
}

impl ClientError {
    /// The server answered with a 5xx: it is up, but failed on this
    /// request (possibly because of its content).
    pub fn is_server_error(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if status.is_server_error())
    }
}

/// reqwest's own message hides the cause ("error sending request");
/// logs need the whole chain on one line.
pub(crate) fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How a report ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// Refused for good; sending it again cannot change the answer.
    Refused(StatusCode),
}

struct Token {
    value: String,
    renew_at: Instant,
}

pub struct Client {
    /// The bound on one exchange; a held heartbeat adds its wait to it.
    timeout: Duration,
    http: reqwest::Client,
    base: String,
    device_id: Uuid,
    secret: String,
    token: Mutex<Option<Token>>,
    /// The device's type, as the server last told it (peer recovery
    /// searches for peers of this type only).
    device_type: watch::Sender<Option<String>>,
    /// Delays between report attempts, and between the requests of a
    /// download that failed.
    pub(crate) retry: Backoff,
}

impl Client {
    pub fn new(config: &Config) -> anyhow::Result<Client> {
        let timeout = Duration::from_secs(config.request_timeout_s);
        // reqwest's default redirect policy (up to 10 hops) stays: an
        // artifact download may be sent on to the object store.
        let builder = reqwest::Client::builder()
            .user_agent(format!("tend-agent/{AGENT_VERSION}"))
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout));
        // A private CA is trusted beside the system's roots, not instead of
        // them: a download may be redirected to a public object store.
        let builder = match &config.ca_file {
            Some(ca) => builder.tls_certs_merge(ca.certificates.iter().cloned()),
            None => builder,
        };
        let http = builder.build()?;
        Ok(Client {
            http,
            timeout,
            base: config.server_url.clone(),
            device_id: config.device_id,
            secret: config.device_secret.clone(),
            token: Mutex::new(None),
            device_type: watch::Sender::new(None),
            retry: Backoff::default(),
        })
    }

    /// The device's type: what the server told at the last authentication,
    /// or what [`Client::assume_device_type`] set before it.
    pub fn device_type(&self) -> watch::Receiver<Option<String>> {
        self.device_type.subscribe()
    }

    /// Sets the device's type remembered from an earlier run, so a device
    /// that starts without a link to the server can still find its peers.
    /// What the server says at the next authentication replaces it.
    pub fn assume_device_type(&self, device_type: String) {
        self.device_type.send_if_modified(|known| {
            if known.is_some() {
                return false;
            }
            *known = Some(device_type);
            true
        });
    }

    /// Sends a heartbeat. One that asks to be held (`wait_s`) may take that
    /// long on top of the usual request timeout.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatResponse, ClientError> {
        let url = format!("{}/device/v1/heartbeat", self.base);
        let timeout = self.timeout + Duration::from_secs(heartbeat.wait_s.unwrap_or(0).into());
        let response = self
            .send_authed(|token| {
                self.http
                    .post(&url)
                    .bearer_auth(token)
                    .timeout(timeout)
                    .json(heartbeat)
            })
            .await?;
        decode(response, "the heartbeat", SMALL_BODY_BYTES).await
    }

    pub async fn instructions(&self) -> Result<Vec<Instruction>, ClientError> {
        let url = format!("{}/device/v1/instructions", self.base);
        let response = self
            .send_authed(|token| self.http.get(&url).bearer_auth(token))
            .await?;
        decode::<Instructions>(response, "the instructions fetch", INSTRUCTIONS_BODY_BYTES)
            .await
            .map(|list| list.instructions)
    }

    /// `POST /device/v1/update-check`: the server queues an upgrade for
    /// what should change and says whether work is pending.
    pub async fn update_check(
        &self,
        check: &UpdateCheck,
    ) -> Result<UpdateCheckResponse, ClientError> {
        let url = format!("{}/device/v1/update-check", self.base);
        let response = self
            .send_authed(|token| self.http.post(&url).bearer_auth(token).json(check))
            .await?;
        decode(response, "the update check", SMALL_BODY_BYTES).await
    }

    /// Sends one report once (plus one retry after re-authenticating).
    /// An `Err` is worth retrying; `Ok` settles the report. NUL characters
    /// are replaced (see [`sanitize`]) and a large body is compressed.
    /// `trace_id` goes back as a W3C `traceparent` header so the server
    /// logs the report under the command's trace.
    pub async fn report(
        &self,
        id: Uuid,
        report: &Report,
        trace_id: Option<&str>,
    ) -> Result<Delivery, ClientError> {
        let traceparent = trace_id.map(|t| tend_proto::device::traceparent(t, rand::random()));
        let url = format!("{}/device/v1/instructions/{id}/report", self.base);
        let (body, gzip) = encode_report(&sanitize::report(report)).map_err(ClientError::Encode)?;
        let response = self
            .send_authed(|token| {
                let request = self
                    .http
                    .post(&url)
                    .bearer_auth(token)
                    .header(CONTENT_TYPE, "application/json");
                let request = if gzip {
                    request.header(CONTENT_ENCODING, "gzip")
                } else {
                    request
                };
                let request = match &traceparent {
                    Some(t) => request.header("traceparent", t),
                    None => request,
                };
                request.body(body.clone())
            })
            .await?;
        settle(response).await
    }

    /// Sends the record of a restore the agent ran on its own (no
    /// instruction asked for it), for the device's command history.
    pub async fn record_recovery(&self, recovery: &Recovery) -> Result<Delivery, ClientError> {
        let url = format!("{}/device/v1/recoveries", self.base);
        let recovery = Recovery {
            report: sanitize::report(&recovery.report).into_owned(),
            ..recovery.clone()
        };
        let response = self
            .send_authed(|token| self.http.post(&url).bearer_auth(token).json(&recovery))
            .await?;
        settle(response).await
    }

    /// Sends a report until the server settles it. Never gives up on its
    /// own: callers stop it by dropping the future (at agent shutdown), and
    /// the journal keeps the report for the next start.
    pub async fn report_until_settled(
        &self,
        id: Uuid,
        report: &Report,
        trace_id: Option<&str>,
    ) -> Delivery {
        let mut backoff = self.retry.clone();
        loop {
            match self.report(id, report, trace_id).await {
                Ok(delivery) => return delivery,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(
                        instruction.id = %id,
                        retry_in_ms = delay.as_millis() as u64,
                        "report {} for instruction {id} not delivered: {e}",
                        report.status.as_status()
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Asks for bytes `start..=end` of an artifact. The answer is returned
    /// whatever its status, body unread: the caller streams it. The
    /// client's timeout bounds the whole exchange, body included, so a
    /// range must be small enough to arrive in it.
    ///
    /// No `If-Range`: an artifact's bytes never change (the whole download
    /// is checked against its SHA-256 at the end), and an object store
    /// compares `If-Range` with its own ETag, not tend's digest, and would
    /// answer every range with the whole object.
    ///
    /// The server may answer 302 with a presigned object-store URL; reqwest
    /// follows it with `Range` but drops `Authorization`, as it does on any
    /// redirect to another host, port or scheme, so the device token never
    /// reaches the store.
    pub async fn artifact_range(
        &self,
        artifact_id: Uuid,
        start: u64,
        end: u64,
    ) -> Result<Response, ClientError> {
        let url = format!("{}/device/v1/artifacts/{artifact_id}", self.base);
        let range = format!("bytes={start}-{end}");
        self.send_authed(|token| self.http.get(&url).bearer_auth(token).header(RANGE, &range))
            .await
    }

    /// Sends a request with the current token; on a 401, fetches a new
    /// token and sends it once more. A second 401 is the caller's to handle.
    async fn send_authed(
        &self,
        request: impl Fn(&str) -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        let token = self.token().await?;
        let response = request(&token)
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        debug!("the server refused the device token; authenticating again");
        self.forget(&token).await;
        let token = self.token().await?;
        request(&token)
            .send()
            .await
            .map_err(ClientError::Unreachable)
    }

    async fn token(&self) -> Result<String, ClientError> {
        // Held across the auth request so concurrent callers wait for one
        // authentication instead of each starting their own.
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let auth = self.authenticate().await?;
        let device_type = auth.device_type.clone().filter(|t| {
            let valid = tend_proto::device::is_device_type(t);
            if !valid {
                // Kept on disk and sent to peers: only a real type name.
                warn!(
                    "the server named a device type that is not one ({} bytes); ignoring it",
                    t.len()
                );
            }
            valid
        });
        if let Some(device_type) = device_type {
            self.device_type.send_if_modified(|known| {
                let changed = known.as_ref() != Some(&device_type);
                *known = Some(device_type);
                changed
            });
        }
        // Renewing after three quarters of the lifetime leaves the last
        // quarter as margin for clock drift and slow requests.
        // Clamped: a broken or hostile server's lifetime must neither
        // overflow the clock nor keep a token for ever.
        let lifetime = Duration::from_secs(auth.expires_in).min(MAX_TOKEN_LIFETIME);
        *slot = Some(Token {
            value: auth.token.clone(),
            renew_at: Instant::now() + lifetime.mul_f64(0.75),
        });
        info!(
            expires_in_s = auth.expires_in,
            "authenticated with the server"
        );
        Ok(auth.token)
    }

    /// Drops `used` unless another task already replaced it.
    async fn forget(&self, used: &str) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == used) {
            *slot = None;
        }
    }

    async fn authenticate(&self) -> Result<AuthResponse, ClientError> {
        let url = format!("{}/device/v1/auth", self.base);
        let body = AuthRequest {
            device_id: self.device_id,
            secret: self.secret.clone(),
        };
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(ClientError::AuthRefused);
        }
        if response.status() == StatusCode::FORBIDDEN
            && let Some(seconds) = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        {
            // Bounded both ways: a server cannot make a waiting device
            // spin, nor fall silent for a day.
            let retry_after = Duration::from_secs(seconds.clamp(1, PENDING_RETRY_MAX_S));
            return Err(ClientError::Pending { retry_after });
        }
        decode(response, "the authentication", SMALL_BODY_BYTES).await
    }
}

/// Whether the server settled a report: accepted it, or refused it for
/// good. Anything else is an error worth another try.
async fn settle(response: Response) -> Result<Delivery, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(Delivery::Accepted);
    }
    // 404 and 409 are the contract's final refusals. 400, 413 and 422
    // judge the body itself, which the same bytes cannot fix either.
    if matches!(
        status,
        StatusCode::NOT_FOUND
            | StatusCode::CONFLICT
            | StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY
    ) {
        return Ok(Delivery::Refused(status));
    }
    Err(status_error(response).await)
}

/// The JSON body of a report, gzip-compressed when over
/// [`COMPRESS_ABOVE`] (the second value says whether it is).
fn encode_report(report: &Report) -> std::io::Result<(Vec<u8>, bool)> {
    let json = serde_json::to_vec(report)?;
    if json.len() <= COMPRESS_ABOVE {
        return Ok((json, false));
    }
    // The fastest level: a 1 MiB log output compresses in milliseconds on
    // a small ARM board and still shrinks several times.
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
    encoder.write_all(&json)?;
    Ok((encoder.finish()?, true))
}

/// The JSON answer of a successful request, read up to `limit` bytes
/// (`what` names the request in errors).
async fn decode<T: DeserializeOwned>(
    response: Response,
    what: &'static str,
    limit: usize,
) -> Result<T, ClientError> {
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    let body = read_limited(response, limit)
        .await?
        .ok_or(ClientError::TooLarge { what, limit })?;
    serde_json::from_slice(&body).map_err(|error| ClientError::Invalid { what, error })
}

/// The whole body, read chunk by chunk; `None` as soon as it is larger
/// than `limit` (a `Content-Length` over it is refused before a byte is
/// read). What a body costs the agent is the limit at most, whatever the
/// server sends; a body that never ends is cut by the request timeout.
pub(crate) async fn read_limited(
    mut response: Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, ClientError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ClientError::Decode)? {
        if chunk.len() > limit - body.len() {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

async fn status_error(mut response: Response) -> ClientError {
    let status = response.status();
    // Enough of a problem+json body to see its title and detail in a log;
    // the rest is never read.
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_BYTES
        && let Ok(Some(chunk)) = response.chunk().await
    {
        let take = chunk.len().min(ERROR_BODY_BYTES - bytes.len());
        bytes.extend_from_slice(&chunk[..take]);
    }
    let mut body = String::from_utf8_lossy(&bytes).into_owned();
    if let Some((cut, _)) = body.char_indices().nth(300) {
        body.truncate(cut);
    }
    ClientError::Status { status, body }
}

#[cfg(test)]
mod tests {
    use tend_proto::command::ReportStatus;
    use wiremock::matchers::{header, method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    fn config_for(server: &MockServer) -> Config {
        Config::from_toml_str(&format!(
            "server_url = \"{}\"\ndevice_id = \"{}\"\ndevice_secret = \"s\"\nrequest_timeout_s = 5\naccept_unsigned = true\n",
            server.uri(),
            Uuid::new_v4()
        ))
        .unwrap()
    }

    fn fast_client(server: &MockServer) -> Client {
        let mut client = Client::new(&config_for(server)).unwrap();
        client.retry = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        client
    }

    async fn auth_gives(server: &MockServer, token: &str, expected_calls: u64) {
        Mock::given(method("POST"))
            .and(path("/device/v1/auth"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"token": token, "expires_in": 3600})),
            )
            .up_to_n_times(1)
            .expect(expected_calls.min(1))
            .mount(server)
            .await;
    }

    fn report_path(id: Uuid) -> String {
        format!("/device/v1/instructions/{id}/report")
    }

    #[tokio::test]
    async fn reports_are_retried_until_the_server_refuses_them_for_good() {
        for final_status in [409, 404] {
            let server = MockServer::start().await;
            auth_gives(&server, "t1", 1).await;
            let id = Uuid::new_v4();
            Mock::given(method("POST"))
                .and(path(report_path(id)))
                .respond_with(ResponseTemplate::new(503))
                .up_to_n_times(2)
                .expect(2)
                .mount(&server)
                .await;
            Mock::given(method("POST"))
                .and(path(report_path(id)))
                .respond_with(ResponseTemplate::new(final_status))
                .expect(1)
                .mount(&server)
                .await;

            let client = fast_client(&server);
            let delivery = client
                .report_until_settled(id, &Report::status(ReportStatus::Succeeded), None)
                .await;
            assert_eq!(
                delivery,
                Delivery::Refused(StatusCode::from_u16(final_status).unwrap())
            );
            server.verify().await;
        }
    }

    /// The JSON of a report as the server would read it.
    fn report_body(request: &wiremock::Request) -> serde_json::Value {
        let gzip = request
            .headers
            .get("content-encoding")
            .is_some_and(|v| v == "gzip");
        let json = if gzip {
            let mut json = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&request.body[..]),
                &mut json,
            )
            .unwrap();
            json
        } else {
            request.body.clone()
        };
        serde_json::from_slice(&json).unwrap()
    }

    #[tokio::test]
    async fn reports_carry_no_nul_and_large_ones_travel_gzip_compressed() {
        let server = MockServer::start().await;
        auth_gives(&server, "t", 1).await;
        Mock::given(method("POST"))
            .and(path_regex("/report$"))
            .and(header("content-type", "application/json"))
            .respond_with(ResponseTemplate::new(200))
            .expect(2)
            .mount(&server)
            .await;
        let client = fast_client(&server);
        let small = Report {
            status: ReportStatus::Failed,
            output: Some("out\0put".into()),
            error: Some("bad\0".into()),
            detail: Some(serde_json::json!({"stderr": "e\0"})),
        };
        let large = Report {
            status: ReportStatus::Succeeded,
            output: Some("2026-11-21T10:00:00Z a log line\0\n".repeat(1000)),
            error: None,
            detail: None,
        };
        for report in [&small, &large] {
            let delivery = client.report(Uuid::new_v4(), report, None).await.unwrap();
            assert_eq!(delivery, Delivery::Accepted);
        }

        let requests = server.received_requests().await.unwrap();
        let reports: Vec<_> = requests
            .iter()
            .filter(|r| r.url.path().ends_with("/report"))
            .collect();
        assert!(
            reports
                .iter()
                .all(|r| !r.body.windows(6).any(|w| w == b"\\u0000"))
        );
        assert!(reports[0].headers.get("content-encoding").is_none());
        assert_eq!(report_body(reports[0])["output"], "out\u{FFFD}put");
        assert_eq!(report_body(reports[0])["detail"]["stderr"], "e\u{FFFD}");
        assert_eq!(reports[1].headers["content-encoding"], "gzip");
        assert!(reports[1].body.len() < 8 * 1024, "compressed");
        let body = report_body(reports[1]);
        assert_eq!(
            body["output"].as_str().unwrap(),
            "2026-11-21T10:00:00Z a log line\u{FFFD}\n".repeat(1000)
        );
        server.verify().await;
    }

    #[tokio::test]
    async fn a_401_makes_the_agent_authenticate_again_and_retry_once() {
        let server = MockServer::start().await;
        auth_gives(&server, "old", 1).await;
        Mock::given(method("POST"))
            .and(path("/device/v1/heartbeat"))
            .and(header("authorization", "Bearer old"))
            .respond_with(ResponseTemplate::new(401))
            .expect(1)
            .mount(&server)
            .await;
        let client = fast_client(&server);
        // The first token is cached; the next auth hands out a new one.
        client.token().await.unwrap();
        auth_gives(&server, "new", 1).await;
        Mock::given(method("POST"))
            .and(path("/device/v1/heartbeat"))
            .and(header("authorization", "Bearer new"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"pending": true, "next_heartbeat_s": 7})),
            )
            .expect(1)
            .mount(&server)
            .await;

        let answer = client.heartbeat(&Heartbeat::default()).await.unwrap();
        assert!(answer.pending);
        assert_eq!(answer.next_heartbeat_s, 7);
        server.verify().await;
    }

    #[tokio::test]
    async fn a_token_is_renewed_before_it_expires() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/device/v1/auth"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"token": "short", "expires_in": 0})),
            )
            .expect(2)
            .mount(&server)
            .await;
        let client = fast_client(&server);
        client.token().await.unwrap();
        client.token().await.unwrap();
        server.verify().await;
    }

    #[tokio::test]
    async fn an_endless_token_lifetime_neither_panics_nor_lasts_for_ever() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/device/v1/auth"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"token": "t", "expires_in": u64::MAX})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let client = fast_client(&server);
        assert_eq!(client.token().await.unwrap(), "t");
        let renew_at = client.token.lock().await.as_ref().unwrap().renew_at;
        assert!(renew_at <= Instant::now() + MAX_TOKEN_LIFETIME);
        server.verify().await;
    }

    #[tokio::test]
    async fn an_answer_over_its_limit_is_refused_without_being_read_whole() {
        let server = MockServer::start().await;
        auth_gives(&server, "t", 1).await;
        // Declared: refused before a byte of the body is read.
        let huge = format!(
            "{{\"instructions\": [], \"padding\": \"{}\"}}",
            "x".repeat(INSTRUCTIONS_BODY_BYTES)
        );
        Mock::given(method("GET"))
            .and(path("/device/v1/instructions"))
            .respond_with(ResponseTemplate::new(200).set_body_string(huge))
            .mount(&server)
            .await;
        let client = fast_client(&server);
        let e = client.instructions().await.unwrap_err();
        assert!(matches!(e, ClientError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");

        // A heartbeat answer is held to the small limit.
        Mock::given(method("POST"))
            .and(path("/device/v1/heartbeat"))
            .respond_with(ResponseTemplate::new(200).set_body_string(format!(
                "{{\"pending\": false, \"next_heartbeat_s\": 1, \"x\": \"{}\"}}",
                "y".repeat(SMALL_BODY_BYTES)
            )))
            .mount(&server)
            .await;
        let e = client.heartbeat(&Heartbeat::default()).await.unwrap_err();
        assert!(matches!(e, ClientError::TooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn numbers_of_the_wrong_type_or_sign_are_an_invalid_answer() {
        for body in [
            r#"{"pending": false, "next_heartbeat_s": -1}"#,
            r#"{"pending": false, "next_heartbeat_s": 2.5}"#,
            r#"{"pending": false, "next_heartbeat_s": "30"}"#,
            r#"{"pending": false, "next_heartbeat_s": 18446744073709551616}"#,
            r#"{"pending": false, "#,
        ] {
            let server = MockServer::start().await;
            auth_gives(&server, "t", 1).await;
            Mock::given(method("POST"))
                .and(path("/device/v1/heartbeat"))
                .respond_with(ResponseTemplate::new(200).set_body_string(body))
                .mount(&server)
                .await;
            let e = fast_client(&server)
                .heartbeat(&Heartbeat::default())
                .await
                .unwrap_err();
            assert!(matches!(e, ClientError::Invalid { .. }), "{body}: {e}");
            assert!(e.to_string().contains("the heartbeat is not valid"), "{e}");
        }
    }

    #[tokio::test]
    async fn an_error_answer_is_read_only_as_far_as_a_log_line_needs() {
        let server = MockServer::start().await;
        auth_gives(&server, "t", 1).await;
        Mock::given(method("POST"))
            .and(path("/device/v1/heartbeat"))
            .respond_with(ResponseTemplate::new(500).set_body_string("e".repeat(10 << 20)))
            .mount(&server)
            .await;
        let e = fast_client(&server)
            .heartbeat(&Heartbeat::default())
            .await
            .unwrap_err();
        let ClientError::Status { status, body } = e else {
            panic!("{e}");
        };
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body.len(), 300);
    }

    #[tokio::test]
    async fn refused_credentials_and_unreachable_servers_are_told_apart() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/device/v1/auth"))
            .respond_with(ResponseTemplate::new(401))
            .mount(&server)
            .await;
        let client = fast_client(&server);
        let e = client.heartbeat(&Heartbeat::default()).await.unwrap_err();
        assert!(matches!(e, ClientError::AuthRefused), "{e}");

        let config = Config::from_toml_str(&format!(
            "server_url = \"http://127.0.0.1:9\"\ndevice_id = \"{}\"\ndevice_secret = \"s\"\naccept_unsigned = true\n",
            Uuid::new_v4()
        ))
        .unwrap();
        let e = Client::new(&config)
            .unwrap()
            .instructions()
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
        assert!(e.to_string().contains("refused"), "{e}");
    }
}
