//! The API's one error type and its one conversion to an HTTP response.
//!
//! User errors carry a stable `code` and a message; internal errors are logged and answered with
//! an opaque 500 that leaks no SQL, paths or stack traces.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::dto::{ErrorBody, ErrorDetail};

use crate::import::FileError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("missing or invalid API token")]
    Unauthorized,
    /// 403: the caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 403: a cookie-authenticated request that changes something came from another site.
    #[error("cross-origin request refused")]
    CrossOrigin,
    /// 429: the token sent more requests than its rate allows; retry after this many seconds.
    #[error("rate limit exceeded")]
    RateLimited { retry_after: u64 },
    /// 429: the token already has `--max-uploads-per-token` uploads in progress.
    #[error("too many uploads in progress")]
    TooManyUploads { retry_after: u64 },
    /// 408: the upload's body arrived slower than `--min-body-rate`.
    #[error("{0}")]
    BodyTimeout(String),
    /// 507: the upload could not be stored (the disk or the database is full).
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    TooLarge(String),
    /// 503 `unavailable` with `Retry-After`: the database cannot be reached (down, restarting)
    /// or cannot write (disk full). The text is for the log only.
    #[error("{0}")]
    Unavailable(String),
    /// 503 `busy`: every database connection stayed in use for the whole wait.
    #[error("{0}")]
    Busy(String),
    /// 409: the request clashes with a job's state or with another job.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        job: Option<i64>,
    },
    /// Not an error: a finished response to send as it is (an idempotent replay found late).
    #[error("replayed response")]
    Replay(Box<Response>),
    /// 410 `expired`: what was asked for existed and is gone (an export's file, swept).
    #[error("{0}")]
    Gone(String),
    /// 416 `range_not_satisfiable` with `Content-Range: bytes */size`.
    #[error("the requested range is not within the file's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The answer for a failed write of an upload: 507 when the disk is full (or over quota),
    /// otherwise an internal error.
    pub fn storage(e: std::io::Error, what: &str) -> Self {
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        if matches!(e.kind(), StorageFull | QuotaExceeded) {
            ApiError::InsufficientStorage(format!("{what}: {e}"))
        } else {
            ApiError::Internal(format!("{what}: {e}"))
        }
    }

    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io(io) => ApiError::Internal(format!("reading upload: {io}")),
            other => ApiError::BadRequest {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Busy(m) => ApiError::Busy(m),
            StoreError::Full(m) => ApiError::InsufficientStorage(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        let (status, code, message) = match self {
            ApiError::Replay(response) => return *response,
            ApiError::Conflict { code, message, job } => {
                let body = ErrorBody {
                    success: false,
                    error: ErrorDetail {
                        code: code.into(),
                        message,
                        job_id: job,
                        status_url: job.map(|id| format!("/api/v1/import/status/{id}")),
                    },
                };
                return (StatusCode::CONFLICT, Json(body)).into_response();
            }
            ApiError::RangeNotSatisfiable { size } => {
                let body = ErrorBody {
                    success: false,
                    error: ErrorDetail {
                        code: "range_not_satisfiable".into(),
                        message: format!(
                            "the requested range is not within the file's {size} bytes"
                        ),
                        job_id: None,
                        status_url: None,
                    },
                };
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(axum::http::header::CONTENT_RANGE, format!("bytes */{size}"))],
                    Json(body),
                )
                    .into_response();
            }
            other => other.parts(),
        };
        let body = Json(ErrorBody {
            success: false,
            error: ErrorDetail {
                code: code.into(),
                message,
                job_id: None,
                status_url: None,
            },
        });
        match retry_after {
            Some(seconds) => (
                status,
                [(axum::http::header::RETRY_AFTER, seconds.to_string())],
                body,
            )
                .into_response(),
            None => (status, body).into_response(),
        }
    }
}

impl ApiError {
    /// Seconds a client should wait before trying again (`Retry-After`), where that is known.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after } | ApiError::TooManyUploads { retry_after } => {
                Some(*retry_after)
            }
            ApiError::Busy(_) => Some(1),
            // The database is down or restarting: workers wait it out with backoff; clients
            // asking every couple of seconds see it return soon enough.
            ApiError::Unavailable(_) => Some(2),
            _ => None,
        }
    }

    /// Status, code and message of the plain error kinds.
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, *code, message.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid API token: send `Authorization: Bearer <token>` or a `token` cookie".to_string(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            ApiError::CrossOrigin => (
                StatusCode::FORBIDDEN,
                "cross_origin_request",
                "a request authenticated by the session cookie may change something only from this server's own pages (its Origin names another site); send the token as `Authorization: Bearer` instead".to_string(),
            ),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", m.clone()),
            ApiError::Unavailable(internal) => {
                tracing::warn!(error = %internal, "database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is busy or unavailable; try again shortly".to_string(),
                )
            }
            ApiError::Internal(internal) => {
                tracing::error!(error = %internal, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal server error; the details are in the server log".to_string(),
                )
            }
            ApiError::Busy(internal) => {
                tracing::warn!(error = %internal, "database connections exhausted");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the server is busy (every database connection is in use); retry after 1 s".to_string(),
                )
            }
            ApiError::RateLimited { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests for this token; retry after {retry_after} s"),
            ),
            ApiError::TooManyUploads { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_uploads",
                format!(
                    "this token already has the most uploads in progress at once; retry after {retry_after} s"
                ),
            ),
            ApiError::BodyTimeout(m) => (StatusCode::REQUEST_TIMEOUT, "body_timeout", m.clone()),
            ApiError::InsufficientStorage(internal) => {
                tracing::warn!(error = %internal, "upload refused: storage full");
                (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    "the server has no room to store this file; nothing was kept. Try a smaller file or try again later".to_string(),
                )
            }
            ApiError::Gone(m) => (StatusCode::GONE, "expired", m.clone()),
            ApiError::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", self.to_string()),
            ApiError::Conflict { .. } | ApiError::Replay(_) => (StatusCode::CONFLICT, "conflict", self.to_string()),
        }
    }
}
