//! What every HTTP service of tend shares: the problem+json error type, the
//! extractor error handlers that turn bad input into 4xx answers, request
//! metrics, and the health endpoints.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use serde::Serialize;

use crate::db::DbError;

/// The error answer of every route, as `application/problem+json`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, bad query string).
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing, forged or expired credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but the role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such object, or one of another tenant.
    #[error("{0}")]
    NotFound(String),
    /// 409: the object's state forbids it (or a name is taken).
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over the limit.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed, but the values are wrong.
    #[error("{0}")]
    Unprocessable(String),
    /// 503: a backing service does not answer; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; the cause is logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if let ApiError::Internal(e) = self {
            tracing::error!(error = format!("{e:#}"), "internal error: {e:#}");
        }
        let body = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let mut res = HttpResponse::build(status);
        res.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        match self {
            ApiError::Unauthorized(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            ApiError::Unavailable(_) => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
            }
            _ => {}
        }
        res.body(serde_json::to_string(&body).unwrap_or_default())
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_data_error() {
            let why = match &e {
                DbError::Postgres(pg) => pg
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            ApiError::Unprocessable(format!("a value was refused: {why}"))
        } else if e.is_unavailable() {
            metrics::counter!("tend_backing_store_errors_total", "store" => "postgres")
                .increment(1);
            tracing::warn!("database unavailable: {e}");
            ApiError::Unavailable("the database is unavailable; try again shortly".into())
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        metrics::counter!("tend_backing_store_errors_total", "store" => "redis").increment(1);
        tracing::warn!("redis unavailable: {e}");
        ApiError::Unavailable("the cache is unavailable; try again shortly".into())
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(anyhow::anyhow!("blocking task failed: {e}"))
    }
}

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
    counters: Vec<(actix_web::http::Method, u16, metrics::Counter)>,
    histograms: Vec<(actix_web::http::Method, metrics::Histogram)>,
}

impl RouteHandles {
    fn record(&mut self, method: &actix_web::http::Method, status: u16, seconds: f64, route: &str) {
        let counter = match self
            .counters
            .iter()
            .find(|(m, s, _)| m == method && *s == status)
        {
            Some((_, _, c)) => c.clone(),
            None => {
                let c = metrics::counter!("tend_http_requests_total",
                    "method" => method.to_string(), "route" => route.to_owned(), "status" => status.to_string());
                self.counters.push((method.clone(), status, c.clone()));
                c
            }
        };
        counter.increment(1);
        let histogram = match self.histograms.iter().find(|(m, _)| m == method) {
            Some((_, h)) => h.clone(),
            None => {
                let h = metrics::histogram!("tend_http_request_duration_seconds",
                    "method" => method.to_string(), "route" => route.to_owned());
                self.histograms.push((method.clone(), h.clone()));
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

    async fn body_of(res: HttpResponse) -> serde_json::Value {
        serde_json::from_slice(&to_bytes(res.into_body()).await.unwrap()).unwrap()
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

    #[actix_web::test]
    async fn a_database_that_does_not_answer_is_a_503_problem_with_retry_after() {
        for err in [
            DbError::Pool(deadpool_postgres::PoolError::Timeout(
                deadpool_postgres::TimeoutType::Wait,
            )),
            DbError::Pool(deadpool_postgres::PoolError::Closed),
            DbError::Timeout(crate::db::REQUEST_DEADLINE),
        ] {
            let api = ApiError::from(err);
            assert!(matches!(api, ApiError::Unavailable(_)), "{api:?}");
            let res = api.error_response();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "5");
            assert_eq!(
                res.headers().get(header::CONTENT_TYPE).unwrap(),
                "application/problem+json"
            );
            let body = body_of(res).await;
            assert_eq!(body["status"], 503);
        }
    }
}
