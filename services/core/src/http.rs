//! What every HTTP service of tend shares: the extractor error handlers
//! that turn bad input into 4xx answers (as [`ApiError`]s), request
//! metrics and ids, the trace id, and the health endpoints.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, web};

use crate::error::ApiError;

/// JSON bodies: size limit and errors as problem+json. Syntax errors are 400,
/// values of the wrong type or shape are 422.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _req| json_error(err, limit).into())
}

/// The answer for a JSON body that cannot be read, for extractors that set
/// their own limit.
pub fn json_error(err: JsonPayloadError, limit: usize) -> ApiError {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge(limit)
        }
        JsonPayloadError::ContentType => {
            ApiError::UnsupportedMediaType("send the body as application/json".into())
        }
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            ApiError::Unprocessable(format!("invalid body: {e}"))
        }
        JsonPayloadError::Deserialize(e) => ApiError::BadRequest(format!("malformed JSON: {e}")),
        other => ApiError::BadRequest(format!("unreadable body: {other}")),
    }
}

/// Path segments that do not parse (an id that is not a UUID) name no
/// object: 404, as for an unknown id.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err: PathError, _req| {
        ApiError::NotFound(format!("no such resource: {err}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
        ApiError::BadRequest(format!("invalid query string: {err}")).into()
    })
}

/// The trace id of the request's W3C `traceparent` header, if it has a
/// valid one: what ties a command to the logs of every service it passes.
pub fn trace_id(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("traceparent")
        .and_then(|h| h.to_str().ok())
        .and_then(tend_proto::device::trace_id_of_traceparent)
        .map(str::to_owned)
}

/// The answer for routes that do not exist.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.path())).error_response()
}

/// Counts requests by route and status and times them. The route is the
/// matched pattern (`/api/v1/devices/{id}`), so ids never become labels; a
/// resource named after its pattern (`.name("/device/v1/heartbeat")`) is
/// read without building the string
/// (the heartbeat route is, being the hot path). Metric handles are kept per
/// worker thread: after the first request of a kind, recording is two
/// atomic updates, not a registry lookup.
pub async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let res = next.call(req).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let request = res.request();
    let status = res.status().as_u16();
    let method = request.method();
    // Only names that are patterns: actix's route macros name resources
    // after their handler function.
    let route: std::borrow::Cow<'_, str> = match request.match_name() {
        Some(name) if name.starts_with('/') => name.into(),
        _ => request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned())
            .into(),
    };
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        match handles.get_mut(route.as_ref()) {
            Some(per_route) => per_route.record(method, status, elapsed, &route),
            None => handles
                .entry(route.to_string())
                .or_default()
                .record(method, status, elapsed, &route),
        }
    });
    Ok(res)
}

thread_local! {
    static HANDLES: std::cell::RefCell<std::collections::HashMap<String, RouteHandles>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// One route's counters (by method and status) and histograms (by method).
#[derive(Default)]
struct RouteHandles {
    counters: Vec<(&'static str, u16, metrics::Counter)>,
    histograms: Vec<(&'static str, metrics::Histogram)>,
}

/// The metric label of a method: one of a fixed set, so that requests with
/// invented methods (anyone may send them, unauthenticated) cannot add
/// series without bound.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl RouteHandles {
    fn record(&mut self, method: &actix_web::http::Method, status: u16, seconds: f64, route: &str) {
        let method = method_label(method);
        let counter = match self
            .counters
            .iter()
            .find(|(m, s, _)| *m == method && *s == status)
        {
            Some((_, _, c)) => c.clone(),
            None => {
                let c = metrics::counter!("tend_http_requests_total",
                    "method" => method, "route" => route.to_owned(), "status" => status.to_string());
                self.counters.push((method, status, c.clone()));
                c
            }
        };
        counter.increment(1);
        let histogram = match self.histograms.iter().find(|(m, _)| *m == method) {
            Some((_, h)) => h.clone(),
            None => {
                let h = metrics::histogram!("tend_http_request_duration_seconds",
                    "method" => method, "route" => route.to_owned());
                self.histograms.push((method, h.clone()));
                h
            }
        };
        histogram.record(seconds);
    }
}

/// Answers every request with its id (`x-request-id`), the one the logs of
/// that request carry, so a client's report can be matched to the logs.
/// Wrap it inside `TracingLogger`, which assigns the id.
pub async fn request_id_header(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(|id| id.to_string());
    let mut res = next.call(req).await?;
    if let Some(id) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        res.headers_mut()
            .insert(header::HeaderName::from_static("x-request-id"), id);
    }
    Ok(res)
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// The `/readyz` answer from named checks: 200 while every `required`
/// check passes, else 503. A `degradable` check names a backing service the
/// process keeps serving without (sync answers heartbeats through a Redis
/// or RabbitMQ outage): its failure shows in the body as `"down: …"` but
/// leaves the process ready, because taking every replica out of its
/// Service for a shared outage would stop what still works.
///
/// The body is `{"ready": bool, "checks": {name: "ok" | reason}}`.
pub fn readiness(
    required: Vec<(&'static str, Result<(), String>)>,
    degradable: Vec<(&'static str, Result<(), String>)>,
) -> HttpResponse {
    let ready = required.iter().all(|(_, r)| r.is_ok());
    let required = required.into_iter().map(|(name, r)| {
        let v = match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => e,
        };
        (name.to_owned(), v.into())
    });
    let degradable = degradable.into_iter().map(|(name, r)| {
        let v = match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("down: {e}"),
        };
        (name.to_owned(), v.into())
    });
    let body: serde_json::Map<String, serde_json::Value> = required.chain(degradable).collect();
    let mut res = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    res.json(serde_json::json!({ "ready": ready, "checks": body }))
}

/// The `/readyz` answer of a draining process: 503, so that load balancers
/// stop sending it requests while the in-flight ones finish.
pub fn draining() -> HttpResponse {
    readiness(
        vec![("draining", Err("shutting down".to_owned()))],
        Vec::new(),
    )
}

/// `GET /metrics` in Prometheus text format.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics().render())
}

/// The bearer token of a request, if it carries one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;
    use actix_web::http::StatusCode;

    async fn body_of(res: HttpResponse) -> serde_json::Value {
        serde_json::from_slice(&to_bytes(res.into_body()).await.unwrap()).unwrap()
    }

    #[test]
    fn invented_methods_share_one_metric_label() {
        use actix_web::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::HEAD), "HEAD");
        for invented in ["FOO", "BREW", "X1234"] {
            let m = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other");
        }
    }

    #[actix_web::test]
    async fn a_degradable_check_that_fails_is_reported_but_keeps_the_process_ready() {
        let res = readiness(
            vec![("postgres", Ok(()))],
            vec![
                ("redis", Err("connection refused".into())),
                ("rabbitmq", Ok(())),
            ],
        );
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            body_of(res).await,
            serde_json::json!({
                "ready": true,
                "checks": { "postgres": "ok", "redis": "down: connection refused", "rabbitmq": "ok" }
            })
        );
    }

    #[actix_web::test]
    async fn a_required_check_that_fails_makes_the_process_unready() {
        let res = readiness(
            vec![("postgres", Err("the database did not answer".into()))],
            vec![("redis", Ok(()))],
        );
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_of(res).await;
        assert_eq!(body["ready"], false);
        assert_eq!(body["checks"]["postgres"], "the database did not answer");
        assert_eq!(body["checks"]["redis"], "ok");

        let res = draining();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_of(res).await["checks"]["draining"], "shutting down");
    }
}

/// An address block such as `10.0.0.0/8` or `fd00::/8`; a bare address is
/// a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Cidr, &'static str> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: std::net::IpAddr = addr
            .parse()
            .map_err(|_| "expected an address or a block such as 10.0.0.0/8")?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or("the prefix length is out of range")?,
        };
        Ok(Cidr { net, bits })
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not one (walking from
/// the right, as each proxy appends the address it saw). An address the
/// client wrote itself is never believed past an untrusted hop.
pub fn client_address(req: &actix_web::HttpRequest, trusted: &[Cidr]) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

#[cfg(test)]
mod cidr_tests {
    use super::*;

    #[test]
    fn blocks_contain_their_addresses_only() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_addresses_are_believed_only_through_trusted_proxies() {
        use actix_web::test::TestRequest;
        let proxy: Vec<Cidr> = vec!["127.0.0.1".parse().unwrap()];
        let req = |peer: &str, xff: &str| {
            TestRequest::default()
                .peer_addr(format!("{peer}:5000").parse().unwrap())
                .insert_header(("x-forwarded-for", xff))
                .to_http_request()
        };
        let ip = |s: &str| Some(s.parse().unwrap());
        // Through the trusted proxy: the address it saw.
        assert_eq!(
            client_address(&req("127.0.0.1", "198.51.100.4"), &proxy),
            ip("198.51.100.4")
        );
        // A client's own forged entry left of the real one is not believed.
        assert_eq!(
            client_address(&req("127.0.0.1", "10.9.9.9, 198.51.100.4"), &proxy),
            ip("198.51.100.4")
        );
        // Not through a trusted proxy: the header is ignored.
        assert_eq!(
            client_address(&req("203.0.113.5", "198.51.100.4"), &proxy),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_address(&req("127.0.0.1", "198.51.100.4"), &[]),
            ip("127.0.0.1")
        );
        // Garbage stops the walk at the last good address.
        assert_eq!(
            client_address(&req("127.0.0.1", "junk"), &proxy),
            ip("127.0.0.1")
        );
    }
}
