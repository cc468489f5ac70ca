//! The one place where engine errors become gRPC statuses.

use engram_core::session::RejectReason;
use engram_core::Error;

use crate::auth::AuthError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub fn status(e: Error) -> Status {
    let code = match &e {
        Error::InvalidArgument { .. } | Error::DimensionMismatch { .. } => Code::InvalidArgument,
        Error::SpaceNotFound(_) | Error::MemoryNotFound { .. } | Error::SessionNotFound(_) => {
            Code::NotFound
        }
        Error::SpaceExists { .. } => Code::AlreadyExists,
        Error::Overloaded { retry_after, .. } | Error::SessionLimit { retry_after, .. } => {
            // RetryInfo tells clients this is our admission control, not one
            // of gRPC's own resource limits.
            return Status::with_error_details(
                Code::ResourceExhausted,
                e.to_string(),
                ErrorDetails::with_retry_info(Some(*retry_after)),
            );
        }
        Error::LimitReached { .. } => Code::ResourceExhausted,
        Error::ShuttingDown => Code::Unavailable,
        Error::Refused {
            reason,
            retry_after,
            message,
        } => {
            let code = match reason {
                RejectReason::Overloaded => Code::ResourceExhausted,
                RejectReason::Invalid | RejectReason::OutOfOrder => Code::InvalidArgument,
                RejectReason::Unauthorized => Code::PermissionDenied,
                RejectReason::Closed => Code::Aborted,
                RejectReason::Unavailable => Code::Unavailable,
            };
            return match retry_after {
                Some(after) => Status::with_error_details(
                    code,
                    message.clone(),
                    ErrorDetails::with_retry_info(Some(*after)),
                ),
                None => Status::new(code, message.clone()),
            };
        }
        Error::Storage(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A call that reached the single-node path on a cluster node (every
/// gRPC call has a cluster path: a guard, not an answer).
pub fn not_in_cluster_mode() -> Status {
    Status::unimplemented(
        "this call took the single-node path on a cluster node (a bug: please report it); a cluster node serves every engram.v1.Memory and engram.v1.Streaming call and engram.v1.Cluster Status",
    )
}

/// Before recovery has finished.
pub fn not_ready() -> Status {
    Status::unavailable(
        "the server is recovering its data; retry when grpc.health.v1 reports SERVING",
    )
}

/// A refused key: UNAUTHENTICATED, PERMISSION_DENIED, or
/// RESOURCE_EXHAUSTED (with RetryInfo for a rate limit).
pub fn auth_status(e: AuthError) -> Status {
    match e {
        AuthError::Unauthenticated(m) => Status::unauthenticated(m),
        AuthError::PermissionDenied(m) => Status::permission_denied(m),
        AuthError::TooManySessions(m) => Status::resource_exhausted(m),
        AuthError::RateLimited {
            message,
            retry_after,
        } => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
    }
}
