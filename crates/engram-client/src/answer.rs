//! What the caller gets back for each observation it sent.

use std::time::Duration;

use engram_proto::v1::observation_ack::Reason;
use engram_proto::v1::Episode;

/// The answer to one observation: the [`AckStream`](crate::AckStream)
/// yields exactly one per [`ObserveSender::send`](crate::ObserveSender::send),
/// in the order of the sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Durable and visible to every recall that starts from now on.
    Accepted(Ack),
    /// Not stored, for the reason given.
    Rejected(Rejection),
}

impl Answer {
    /// The number `send` returned for this observation.
    pub fn sequence_number(&self) -> u64 {
        match self {
            Answer::Accepted(a) => a.sequence_number,
            Answer::Rejected(r) => r.sequence_number,
        }
    }

    pub fn is_accepted(&self) -> bool {
        matches!(self, Answer::Accepted(_))
    }

    /// The ack, if accepted.
    pub fn accepted(&self) -> Option<&Ack> {
        match self {
            Answer::Accepted(a) => Some(a),
            Answer::Rejected(_) => None,
        }
    }

    /// The rejection, if rejected.
    pub fn rejected(&self) -> Option<&Rejection> {
        match self {
            Answer::Accepted(_) => None,
            Answer::Rejected(r) => Some(r),
        }
    }
}

/// An accepted observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The number `send` returned: 1 for the session's first send, +1 each.
    pub sequence_number: u64,
    /// The episode's id (the caller's, or the client-made UUID, or one the
    /// server made).
    pub memory_id: String,
    /// Commit order in the space (from 1).
    pub server_sequence: u64,
    pub committed_at: Option<prost_types::Timestamp>,
    /// The server already had an episode with this id and stored nothing
    /// new (for example, a resend after the session was lost).
    pub duplicate: bool,
    /// The server answered a resend after a resume with its original answer.
    pub replayed: bool,
    /// The sequence number the accepted attempt carried on the wire, in the
    /// session that accepted it. Equal to `sequence_number` unless the
    /// client resent the observation after an overload rejection or a lost
    /// session.
    pub wire_sequence: u64,
    /// How many times the client resent it after overload rejections.
    pub retries: u32,
}

/// A rejected observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The number `send` returned.
    pub sequence_number: u64,
    pub reason: RejectReason,
    /// The server's explanation (what was expected, what arrived).
    pub message: String,
    /// For [`RejectReason::Overloaded`]: when the server would take it.
    pub retry_after: Option<Duration>,
    /// Resends after overload rejections before giving up.
    pub retries: u32,
    /// The episode, handed back so the caller can fix or resend it.
    pub episode: Episode,
}

/// Why an observation was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// Over capacity, and the client's [`RetryPolicy`](crate::RetryPolicy)
    /// ran out of retries.
    Overloaded,
    /// Bad episode: wrong dimension, NaN, too large, ... (see the message).
    Invalid,
    /// Sequence number not the expected one (a client bug; the session
    /// ends with [`ClientError::Protocol`](crate::ClientError::Protocol)).
    OutOfOrder,
    /// The key may not write to this space.
    Unauthorized,
    /// The session closed before the observation was answered (for
    /// example `close(false)` with observations still queued).
    Closed,
    /// The server could not take it right now (shutting down) and the
    /// client's retries ran out.
    Unavailable,
    /// A reason this client version does not know (the raw enum value).
    Other(i32),
}

impl RejectReason {
    pub(crate) fn from_wire(reason: i32) -> Self {
        match Reason::try_from(reason) {
            Ok(Reason::RejectOverloaded) => RejectReason::Overloaded,
            Ok(Reason::RejectInvalid) => RejectReason::Invalid,
            Ok(Reason::RejectOutOfOrder) => RejectReason::OutOfOrder,
            Ok(Reason::RejectUnauthorized) => RejectReason::Unauthorized,
            Ok(Reason::RejectClosed) => RejectReason::Closed,
            Ok(Reason::RejectUnavailable) => RejectReason::Unavailable,
            Ok(Reason::RejectUnspecified) | Err(_) => RejectReason::Other(reason),
        }
    }

    /// Reasons the client retries by itself (within its retry policy).
    pub(crate) fn is_retryable(self) -> bool {
        matches!(self, RejectReason::Overloaded | RejectReason::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_reasons_map_and_unknown_ones_are_kept() {
        assert_eq!(
            RejectReason::from_wire(Reason::RejectOverloaded as i32),
            RejectReason::Overloaded
        );
        assert_eq!(
            RejectReason::from_wire(Reason::RejectInvalid as i32),
            RejectReason::Invalid
        );
        assert_eq!(RejectReason::from_wire(0), RejectReason::Other(0));
        assert_eq!(RejectReason::from_wire(99), RejectReason::Other(99));
        assert!(RejectReason::Overloaded.is_retryable());
        assert!(RejectReason::Unavailable.is_retryable());
        assert!(!RejectReason::Invalid.is_retryable());
    }
}
