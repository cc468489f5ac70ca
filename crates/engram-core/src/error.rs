//! The engine's error type. Transports map it to their own codes in exactly
//! one place each (see the server crate); [`Error::code`] is the stable,
//! machine-readable name they all expose.

use std::time::Duration;

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything the engine can answer with instead of a result. Messages say
/// what was expected, what arrived and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of range.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },

    /// The embedding has the wrong number of values for its space.
    #[error("embedding has {got} dimensions but memory space '{space}' expects {expected}")]
    DimensionMismatch {
        space: String,
        expected: usize,
        got: usize,
    },

    /// No memory space with this id exists.
    #[error(
        "memory space '{0}' does not exist; create it first (PUT /v1/spaces/{0}) or enable auto-creation"
    )]
    SpaceNotFound(String),

    /// Creating a space that already exists with a different dimension,
    /// vector storage or default TTL.
    #[error("memory space '{space}' already exists with dimension {dimension}, vector storage '{vector_storage}' and default TTL {default_ttl_seconds} s (0: none)")]
    SpaceExists {
        space: String,
        dimension: usize,
        /// `memory` or `compact` (`VectorStorage::as_str`).
        vector_storage: &'static str,
        default_ttl_seconds: f64,
    },

    /// No memory with this id in the space.
    #[error("memory '{memory_id}' not found in memory space '{space}'")]
    MemoryNotFound { space: String, memory_id: String },

    /// No open or resumable session with this id.
    #[error("session '{0}' does not exist or its resume window has passed; open a new session")]
    SessionNotFound(String),

    /// Admission control: too many observations are waiting to be indexed.
    #[error("overloaded: {depth} observations are waiting to be indexed (capacity {capacity}); retry after {} ms", retry_after.as_millis())]
    Overloaded {
        depth: usize,
        capacity: usize,
        retry_after: Duration,
    },

    /// The engine is shutting down and takes no new writes.
    #[error("the server is shutting down and accepts no new writes")]
    ShuttingDown,

    /// `max_sessions` sessions are kept (attached or resumable): a new one
    /// can open once released ones expire.
    #[error("the server already keeps its maximum of {limit} streaming sessions (engine.sessions.max_sessions, attached or resumable); retry after {} ms, as released sessions expire", retry_after.as_millis())]
    SessionLimit { limit: usize, retry_after: Duration },

    /// A configured bound on a resource is reached (not transient: free
    /// some, or raise the setting).
    #[error("the server already holds its maximum of {limit} {what} ({setting}); remove some or raise the limit")]
    LimitReached {
        what: &'static str,
        limit: usize,
        setting: &'static str,
    },

    /// The write-ahead log or a snapshot could not be written or read. After
    /// a failed WAL write the engine refuses further writes (an fsync error
    /// cannot be retried safely).
    #[error("storage failure: {0}")]
    Storage(String),

    /// An observation refused outside the engine, with the reason and the
    /// words of what refused it: in cluster mode, the node's write path
    /// (bad input; this node's publishes waiting for the log, or the
    /// partition's owner behind it; the log not storing the write in
    /// time, where retrying with the same episode id is safe).
    #[error("{message}")]
    Refused {
        reason: RejectReason,
        message: String,
        retry_after: Option<Duration>,
    },
}

impl Error {
    /// Stable machine-readable code, shared by every transport.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::DimensionMismatch { .. } => "dimension_mismatch",
            Error::SpaceNotFound(_) => "space_not_found",
            Error::SpaceExists { .. } => "space_exists",
            Error::MemoryNotFound { .. } => "memory_not_found",
            Error::SessionNotFound(_) => "session_not_found",
            Error::Overloaded { .. } => "overloaded",
            Error::SessionLimit { .. } => "session_limit",
            Error::ShuttingDown => "shutting_down",
            Error::Storage(_) => "storage_failure",
            Error::LimitReached { .. } => "limit_reached",
            Error::Refused { reason, .. } => reason.as_str(),
        }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

/// Why an observation was rejected (a small fixed set: it is a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Admission control: retry after `retry_after`.
    Overloaded,
    /// The observation itself is bad (dimension, NaN, size, ...).
    Invalid,
    /// Not the expected sequence number (gap or duplicate).
    OutOfOrder,
    /// The session is closing, closed, or was taken over by a resume.
    Closed,
    /// The server is shutting down or cannot write.
    Unavailable,
    /// The stream's credentials do not allow writing to its space (or no
    /// longer exist: a key removed while the stream runs).
    Unauthorized,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::Overloaded,
        RejectReason::Invalid,
        RejectReason::OutOfOrder,
        RejectReason::Closed,
        RejectReason::Unavailable,
        RejectReason::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Overloaded => "overloaded",
            RejectReason::Invalid => "invalid",
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::Closed => "closed",
            RejectReason::Unavailable => "unavailable",
            RejectReason::Unauthorized => "unauthorized",
        }
    }

    pub fn of(e: &Error) -> (Self, Option<Duration>) {
        match e {
            Error::Overloaded { retry_after, .. } | Error::SessionLimit { retry_after, .. } => {
                (RejectReason::Overloaded, Some(*retry_after))
            }
            Error::ShuttingDown | Error::Storage(_) => (RejectReason::Unavailable, None),
            Error::Refused {
                reason,
                retry_after,
                ..
            } => (*reason, *retry_after),
            _ => (RejectReason::Invalid, None),
        }
    }
}
