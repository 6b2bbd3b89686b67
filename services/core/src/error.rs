//! The error policy of tend's HTTP services, in one place.
//!
//! - Every route answers errors as one type, [`ApiError`], which becomes an
//!   `application/problem+json` answer with `title`, `status` and `detail`.
//!   Each variant documents its status. A client's mistake is always a
//!   4xx that says what to fix: unreadable JSON 400, wrong values 422, an
//!   unknown id or another tenant's 404 (never 403: ids of other tenants
//!   are not confirmed to exist), a state that forbids it 409.
//! - Library code below the routes returns its own `thiserror` enums
//!   ([`DbError`] for the store) that say what happened; the `From`
//!   conversions here decide what it means for the client, so that
//!   handlers use `?` and never map errors by hand. The one exception is a
//!   unique-constraint violation, which the handler maps to 409 by
//!   constraint name, because only it knows what was taken.
//! - A backing service that does not answer (pool timeout, closed
//!   connection, a deadline passed, SQLSTATE classes 08/53/57P) is 503 with
//!   `Retry-After`: retrying later may work, and the request changed
//!   nothing it did not roll back. It is logged as a warning and counted in
//!   `tend_backing_store_errors_total`.
//! - A value PostgreSQL refuses as data (SQLSTATE class 22: a NUL, a date
//!   out of range) is the client's: 422.
//! - Anything else is a bug: an opaque 500 whose cause chain is logged
//!   once, here, where it becomes the answer, and never shown.
//! - Background loops, startup and `main` use `anyhow` with `.context("…")`
//!   instead: nobody answers them but the log.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
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
    /// 410: the object existed but its time is over (a hawkBit action
    /// that has ended, for DDI clients).
    #[error("{0}")]
    Gone(String),
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
    /// 429: the caller sent more than its share; `Retry-After` says when
    /// to try again.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_s: u32 },
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
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            ApiError::TooManyRequests { retry_after_s, .. } => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after_s)));
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

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(anyhow::anyhow!("blocking task failed: {e}"))
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::from(e).into()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;

    use super::*;

    async fn body_of(res: HttpResponse) -> serde_json::Value {
        serde_json::from_slice(&to_bytes(res.into_body()).await.unwrap()).unwrap()
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
