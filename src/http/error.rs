//! The one place engine errors become HTTP statuses, and the JSON error body every endpoint
//! uses: `{"error": "<code>", "message": "<human text>"}`.

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
        }
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
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        let mut api = ApiError::new(status, code, e.to_string());
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
            signature: self.signature.as_deref(),
            quota: self.quota.as_deref(),
        };
        let mut resp = (self.status, Json(body)).into_response();
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
