//! The client's error type and the one mapping from gRPC statuses to it.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// `Result` with [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Everything that can go wrong talking to an engram server.
///
/// Per-observation rejections on a stream are not errors: they arrive as
/// [`Answer::Rejected`](crate::Answer::Rejected) on the
/// [`AckStream`](crate::AckStream). A `ClientError` means a call failed, or
/// a whole observe session ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address given to `connect` is not a valid URI.
    #[error("invalid server address {url:?}: {source}; expected e.g. \"http://127.0.0.1:50051\"")]
    InvalidUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The connection could not be made or broke.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server refused the request as malformed (`INVALID_ARGUMENT`):
    /// wrong dimension, bad space id, a bad init, ...
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The space, memory or session does not exist (`NOT_FOUND`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The server is over capacity (`RESOURCE_EXHAUSTED` carrying a
    /// `google.rpc.RetryInfo`): try again after `retry_after`.
    #[error("server over capacity: {message} (retry after {retry_after:?})")]
    Overloaded {
        retry_after: Option<Duration>,
        message: String,
    },
    /// No API key, or one the server does not know (`UNAUTHENTICATED`).
    /// Not retried: the key will not become valid by waiting.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The key does not grant this operation on this space
    /// (`PERMISSION_DENIED`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Any other status the server (or tonic) answered with.
    #[error("gRPC status {code:?}: {message}")]
    Status { code: Code, message: String },
    /// The observe session is closed (by [`ObserveSender::close`](crate::ObserveSender::close)
    /// or because it failed); the reason says which.
    #[error("observe session closed: {0}")]
    Closed(String),
    /// The stream broke and every reconnect attempt allowed by
    /// [`BackoffPolicy`](crate::BackoffPolicy) failed.
    #[error("gave up reconnecting after {attempts} attempts; last error: {last}")]
    ReconnectFailed {
        attempts: u32,
        last: Box<ClientError>,
    },
    /// The server said something the protocol does not allow (an ack out of
    /// order, a missing init_ack, ...). A bug on one side; not retried.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC code behind this error, when it came from a status.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::InvalidArgument(_) => Some(Code::InvalidArgument),
            ClientError::NotFound(_) => Some(Code::NotFound),
            ClientError::Unauthenticated(_) => Some(Code::Unauthenticated),
            ClientError::PermissionDenied(_) => Some(Code::PermissionDenied),
            ClientError::Overloaded { .. } => Some(Code::ResourceExhausted),
            ClientError::Status { code, .. } => Some(*code),
            ClientError::ReconnectFailed { last, .. } => last.code(),
            _ => None,
        }
    }

    /// How long the server asked us to wait, for [`ClientError::Overloaded`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Overloaded { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True when an observe stream that ended with this error should be
    /// reconnected (and its session resumed) rather than given up.
    ///
    /// Transport failures surface from tonic as `UNAVAILABLE`, `UNKNOWN`
    /// (a body read error), `INTERNAL` (an h2 protocol error) or `CANCELLED`
    /// (the connection went away under the stream); the server itself uses
    /// `UNAVAILABLE` while it shuts down or recovers. `ABORTED` is not
    /// retried: it means another stream took this session over (or the
    /// session idled out despite the client's heartbeats), and fighting
    /// over a session would loop.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Status { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
                    | Code::DeadlineExceeded
            ),
            _ => false,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::NotFound => ClientError::NotFound(message),
            Code::Unauthenticated => ClientError::Unauthenticated(message),
            Code::PermissionDenied => ClientError::PermissionDenied(message),
            // Only RESOURCE_EXHAUSTED with RetryInfo is the server's admission
            // control; without it, it is one of gRPC's own limits (message
            // size, ...), which waiting will not fix.
            Code::ResourceExhausted => match status.get_details_retry_info() {
                Some(info) => ClientError::Overloaded {
                    retry_after: info.retry_delay,
                    message,
                },
                None => ClientError::Status {
                    code: Code::ResourceExhausted,
                    message,
                },
            },
            code => ClientError::Status { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn resource_exhausted_with_retry_info_is_overloaded() {
        let st = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "queue full",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(250))),
        );
        let e = ClientError::from(st);
        assert!(matches!(e, ClientError::Overloaded { .. }), "{e:?}");
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(e.code(), Some(Code::ResourceExhausted));
    }

    #[test]
    fn resource_exhausted_without_retry_info_is_a_plain_status() {
        let e = ClientError::from(tonic::Status::resource_exhausted("message too large"));
        assert!(
            matches!(
                e,
                ClientError::Status {
                    code: Code::ResourceExhausted,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn codes_map_to_variants() {
        assert!(matches!(
            ClientError::from(tonic::Status::invalid_argument("bad")),
            ClientError::InvalidArgument(m) if m == "bad"
        ));
        assert!(matches!(
            ClientError::from(tonic::Status::not_found("x")),
            ClientError::NotFound(_)
        ));
        assert_eq!(
            ClientError::from(tonic::Status::aborted("x")).code(),
            Some(Code::Aborted)
        );
    }

    #[test]
    fn transient_errors_are_the_transport_ones() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
        ] {
            assert!(
                ClientError::from(tonic::Status::new(code, "")).is_transient(),
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::Aborted,
            Code::PermissionDenied,
        ] {
            assert!(
                !ClientError::from(tonic::Status::new(code, "")).is_transient(),
                "{code:?}"
            );
        }
        assert!(!ClientError::Protocol("x".into()).is_transient());
    }
}
