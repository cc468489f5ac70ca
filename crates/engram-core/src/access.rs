//! Who may do what on a stream. The engine itself has no notion of users:
//! the transport authenticates a stream when it opens and hands
//! [`crate::stream::run`] a [`StreamAccess`] that answers, for each
//! observation and each recall on that stream, whether its credentials
//! allow it *now* (a key can be revoked or rate limited while the stream
//! runs). A denied observation is answered with
//! [`RejectReason::Unauthorized`](crate::error::RejectReason::Unauthorized)
//! (or as overloaded, for a rate limit) and the stream goes on.

use std::time::Duration;

/// What a message on a stream wants to do to a space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Recall.
    Read,
    /// Observe.
    Write,
}

/// Why [`StreamAccess::check`] said no. The messages name the key and the
/// space, never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The stream's credentials are no longer valid (the key was removed).
    Unauthenticated(String),
    /// Valid credentials without the grant for this space and operation.
    PermissionDenied(String),
    /// Over the credentials' request rate: retry after the given time.
    RateLimited {
        message: String,
        retry_after: Duration,
    },
}

impl Denial {
    pub fn message(&self) -> &str {
        match self {
            Denial::Unauthenticated(m) | Denial::PermissionDenied(m) => m,
            Denial::RateLimited { message, .. } => message,
        }
    }
}

/// Decides, per message, what a stream may do.
pub trait StreamAccess: Send + Sync + 'static {
    /// Ok when the stream may do `op` on `space` now.
    ///
    /// # Errors
    /// The [`Denial`] to answer the message with.
    fn check(&self, space: &str, op: Operation) -> Result<(), Denial>;

    /// True when the credentials grant anything at all on `space`; a
    /// stream on a space they do not cover is told nothing about it (its
    /// dimension in `init_ack` is 0). Takes nothing from a rate limit.
    fn covers(&self, _space: &str) -> bool {
        true
    }
}

/// Everything is allowed: servers without authentication, and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl StreamAccess for AllowAll {
    fn check(&self, _space: &str, _op: Operation) -> Result<(), Denial> {
        Ok(())
    }
}
