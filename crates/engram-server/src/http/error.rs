//! The one place where engine errors and request rejections become HTTP
//! statuses and JSON bodies `{"code": ..., "message": ...}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_core::session::RejectReason;
use engram_core::Error;

use crate::auth::AuthError;
use serde::Serialize;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 429: how long to wait, in milliseconds (also `Retry-After`).
    pub retry_after_ms: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn not_ready(phase: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the server is {phase}; retry when GET /health/ready answers 200"),
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument { .. } | Error::DimensionMismatch { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::SpaceNotFound(_) | Error::MemoryNotFound { .. } | Error::SessionNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Error::SpaceExists { .. } => StatusCode::CONFLICT,
            Error::Overloaded { .. } | Error::SessionLimit { .. } | Error::LimitReached { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::Refused { reason, .. } => match reason {
                RejectReason::Overloaded => StatusCode::TOO_MANY_REQUESTS,
                RejectReason::Invalid | RejectReason::OutOfOrder => StatusCode::BAD_REQUEST,
                RejectReason::Unauthorized => StatusCode::FORBIDDEN,
                RejectReason::Closed => StatusCode::CONFLICT,
                RejectReason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
            Error::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let retry_after_ms = match &e {
            Error::Overloaded { retry_after, .. } | Error::SessionLimit { retry_after, .. } => {
                Some(retry_after.as_millis().max(1) as u64)
            }
            Error::Refused {
                retry_after: Some(after),
                ..
            } => Some(after.as_millis().max(1) as u64),
            _ => None,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            retry_after_ms,
        }
    }
}

impl From<tonic::Status> for ApiError {
    /// A cluster-mode answer (the cluster layer speaks gRPC statuses).
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let (status, code) = match s.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Code::Unavailable | Code::DeadlineExceeded => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "not_in_cluster_mode"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, s.message().to_owned())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", m)
            }
            AuthError::PermissionDenied(m) => {
                Self::new(StatusCode::FORBIDDEN, "permission_denied", m)
            }
            AuthError::TooManySessions(m) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", m)
            }
            AuthError::RateLimited {
                message,
                retry_after,
            } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "rate_limited",
                message,
                retry_after_ms: Some(retry_after.as_millis().max(1) as u64),
            },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a JSON body with the header 'Content-Type: application/json'",
            ),
            JsonRejection::JsonSyntaxError(e) => Self::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {}", inner(&e)),
            ),
            JsonRejection::JsonDataError(e) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("the JSON does not match the expected shape: {}", inner(&e)),
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than http.max_body_bytes",
                )
            }
            other => Self::new(other.status(), "bad_request", other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", r.body_text())
    }
}

/// The innermost cause: serde's own words, with line and column.
fn inner(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(Body {
            code: self.code,
            message: &self.message,
            retry_after_ms: self.retry_after_ms,
        });
        let mut resp = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"engram\""),
            );
        }
        if let Some(ms) = self.retry_after_ms {
            // Retry-After is whole seconds; round up so clients never come back early.
            let secs = ms.div_ceil(1000).max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
