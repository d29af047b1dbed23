//! The one place engine errors become HTTP statuses, and the JSON error body every endpoint
//! uses: `{"error": "<code>", "message": "<human text>"}`.
//!
//! What a client reads never carries the server's insides: no paths, no scanner or object-store
//! addresses, no OS error text. Server-side failures (5xx) answer a fixed message per code plus
//! the request's id (`request_id`, also the `x-request-id` header); the full error goes to the
//! log under that id. Responses that other layers produce as plain text (axum's rejections,
//! body limits, 405s) are rewritten to the same JSON shape by [`json_errors`].

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// An error answer: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra headers some protocols require on errors (tus's `Tus-Resumable`, 416's
    /// `Content-Range`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The virus signature, for `infected` answers.
    pub signature: Option<String>,
    /// The figures of a `quota_exceeded` answer (boxed: errors stay small).
    pub quota: Option<Box<QuotaFigures>>,
    /// The request's id, on server-side failures: what an operator looks up in the log.
    pub request_id: Option<Box<str>>,
}

/// What a `quota_exceeded` (413) answer carries besides the code and message.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaFigures {
    /// `user` or `organisation`: whose limit refused the upload.
    pub scope: crate::quota::Scope,
    pub used: u64,
    pub limit: u64,
    /// used / limit, in percent.
    pub percentage: f64,
    /// Bytes held by other uploads in flight.
    pub reserved: u64,
    /// Bytes the refused upload needed in all.
    pub requested: u64,
}

impl From<&crate::quota::Exceeded> for QuotaFigures {
    fn from(x: &crate::quota::Exceeded) -> Self {
        QuotaFigures {
            scope: x.scope,
            used: x.used,
            limit: x.limit,
            percentage: x.percentage,
            reserved: x.reserved,
            requested: x.requested,
        }
    }
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub quota: Option<&'a QuotaFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
}

tokio::task_local! {
    /// The id of the request being handled (see [`with_request_id`]).
    static REQUEST_ID: String;
}

/// The current request's id, inside a handler.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// Middleware: makes the request's `x-request-id` (set by the outer `SetRequestIdLayer`)
/// available to error conversions in the handler's task.
pub async fn with_request_id(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    REQUEST_ID.scope(id, next.run(req)).await
}

/// Middleware: every error answer is JSON. Handlers answer with [`ApiError`] already; this
/// catches what the framework produces itself (a body over the limit, a method a route does
/// not take, a malformed path or query) as plain text, keeping the status and the text (it
/// describes the client's request, never the server).
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let head = req.method() == axum::http::Method::HEAD;
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json || head {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Framework rejections are a sentence or two; anything longer is cut, not buffered.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_input",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if status.is_server_error() || text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut api = ApiError::new(status, code, message);
    if status.is_server_error() {
        api.request_id = request_id().map(String::into_boxed_str);
    }
    let mut out = api.into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            signature: None,
            quota: None,
            request_id: None,
        }
    }

    /// A server-side failure: a fixed message for the client, the detail in the log under the
    /// request's id.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let id = request_id();
        tracing::error!(request_id = id.as_deref().unwrap_or("-"), error = %detail, "request failed");
        let mut api = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to complete the request",
        );
        api.request_id = id.map(String::into_boxed_str);
        api
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tessera\""),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// Also what another user's private file looks like: 404, not 403, so a guess at an id
    /// does not learn that the file exists.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// tus's "checksum mismatch" status, not in the IANA registry.
pub fn checksum_mismatch_status() -> StatusCode {
    StatusCode::from_u16(460).expect("460 is a valid status code")
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            Error::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::Rejected { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *code),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::ChecksumMismatch(_) => (checksum_mismatch_status(), "checksum_mismatch"),
            Error::Busy(_) => (StatusCode::LOCKED, "busy"),
            Error::Expired { .. } => (StatusCode::GONE, "expired"),
            Error::Infected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "infected"),
            Error::ScanUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "scanner_unavailable"),
            Error::QuotaExceeded(_) => (StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded"),
            Error::Locked { .. } => (StatusCode::SERVICE_UNAVAILABLE, "store_locked"),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::TooMany { code, .. } => (StatusCode::TOO_MANY_REQUESTS, *code),
            Error::Io { .. } if e.is_disk_full() => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            Error::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut api = if status.is_server_error() {
            // The engine's text names paths, addresses and OS errors: for the log only.
            let id = request_id();
            tracing::error!(request_id = id.as_deref().unwrap_or("-"), error = %e, "request failed");
            let mut api = ApiError::new(status, code, server_message(code));
            api.request_id = id.map(String::into_boxed_str);
            api
        } else {
            ApiError::new(status, code, e.to_string())
        };
        if e.is_temporary() {
            // The cold tier retried already; a client should come back later, not at once.
            api = api.with_header(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        if let Error::TooMany { retry_after_s, .. } = &e {
            api = api.with_header(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        match e {
            Error::Infected { signature, .. } => api.signature = Some(signature),
            Error::QuotaExceeded(x) => api.quota = Some(Box::new(QuotaFigures::from(&*x))),
            _ => {}
        }
        api
    }
}

/// What a client reads for a server-side failure, by code.
fn server_message(code: &str) -> &'static str {
    match code {
        "insufficient_storage" => "the server has no space left to store this; nothing was stored",
        "scanner_unavailable" => {
            "the virus scanner is unavailable, so the upload was refused and nothing was stored; try again later"
        }
        "unavailable" => {
            "the storage behind the service is temporarily unavailable; try again later"
        }
        "store_locked" => "the store is in use by another process; try again later",
        "corrupt" => "stored data failed its integrity check; an operator has been told",
        _ => "the server failed to complete the request",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
            signature: self.signature.as_deref(),
            quota: self.quota.as_deref(),
            request_id: self.request_id.as_deref(),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            resp.headers_mut().insert("x-request-id", id);
        }
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_unavailable_is_503_with_retry_after() {
        let api = ApiError::from(Error::Unavailable {
            context: "reading a cold pack".into(),
            message: "the object store does not answer".into(),
        });
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(api.code, "unavailable");
        assert!(
            api.headers
                .iter()
                .any(|(k, v)| *k == header::RETRY_AFTER && v == "30")
        );
        let flood = ApiError::from(Error::TooMany {
            code: "too_many_sessions",
            detail: "20 open upload sessions".into(),
            retry_after_s: 7,
        });
        assert_eq!(flood.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(flood.code, "too_many_sessions");
        assert!(
            flood
                .headers
                .iter()
                .any(|(k, v)| *k == header::RETRY_AFTER && v == "7")
        );
        let other = ApiError::from(Error::Corrupt {
            location: "x".into(),
            detail: "y".into(),
            chunk: None,
        });
        assert!(other.headers.is_empty());
    }
}
