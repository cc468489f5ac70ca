//! Client configuration: one struct for the client, one per policy.

use std::time::Duration;

/// Observations a session keeps unanswered (or answered but not yet read
/// from the [`AckStream`](crate::AckStream)) before `send` waits. Large
/// enough to keep a pipe to a nearby server full at ~100K obs/s with
/// millisecond acks; small enough that a resend after a reconnect is quick.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// How often an otherwise silent session tells the server it is alive.
/// A third of the server's default idle timeout (60 s), so two heartbeats
/// can be lost before the session idles out.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// How long to wait for the TCP/HTTP2 connection, and separately for the
/// server's `init_ack`, before the attempt counts as failed.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive: notices a dead peer (cable pulled, VM frozen) within
/// interval + timeout, even when the stream is idle.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a [`StreamingClient`](crate::StreamingClient).
///
/// Build with struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use engram_client::{BackoffPolicy, ClientOptions};
///
/// let options = ClientOptions {
///     max_in_flight: 256,
///     reconnect: BackoffPolicy { max_attempts: 3, ..BackoffPolicy::default() },
///     ..ClientOptions::default()
/// };
/// assert_eq!(options.heartbeat_interval, Duration::from_secs(20));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Per observe session: observations sent but not yet answered, plus
    /// answers not yet read from the `AckStream`. `send` waits while this
    /// many are outstanding (backpressure to the caller). At least 1.
    pub max_in_flight: usize,
    /// Reconnecting a broken observe stream.
    pub reconnect: BackoffPolicy,
    /// Resending observations the server rejected as overloaded.
    pub overload_retry: RetryPolicy,
    /// Heartbeat of an otherwise silent observe stream.
    pub heartbeat_interval: Duration,
    /// Limit on establishing a connection, and on the server's `init_ack`.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval; `None` turns pings off.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered before the connection
    /// is considered dead.
    pub keepalive_timeout: Duration,
    /// Give every streamed episode without an id a client-made UUID before
    /// it is first sent. With it, resending after a lost session can never
    /// store an episode twice (the server dedupes by episode id); without
    /// it, only resume within one session is deduplicated.
    pub assign_episode_ids: bool,
    /// Ask the server for flow-control statuses (SLOW_DOWN etc.).
    pub enable_backpressure: bool,
    /// Memories per batch of [`StreamingClient::recall_stream`](crate::StreamingClient::recall_stream);
    /// 0 lets the server put all results in one batch.
    pub recall_batch_size: u32,
    /// The API key, sent as `authorization: Bearer <key>` on every call
    /// (servers started with an API keys file need one).
    pub api_key: Option<ApiKey>,
    /// TLS: `Some` for a server started with `--tls-cert`. An `https://`
    /// address turns TLS on by itself, trusting the system's roots.
    pub tls: Option<TlsOptions>,
}

/// An API key. Its `Debug` does not show it, so options can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl<S: Into<String>> From<S> for ApiKey {
    fn from(key: S) -> Self {
        ApiKey(key.into())
    }
}

/// How to check the server's certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM of the CA that signed the server's certificate (a private CA);
    /// `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The name to check the certificate against, when it is not the
    /// host of the address (e.g. connecting by IP to a certificate for a
    /// name).
    pub domain: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            reconnect: BackoffPolicy::default(),
            overload_retry: RetryPolicy::default(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            assign_episode_ids: true,
            enable_backpressure: true,
            recall_batch_size: 0,
            api_key: None,
            tls: None,
        }
    }
}

/// Exponential backoff between reconnect attempts, with jitter so that many
/// clients cut off by one server restart do not come back in lockstep.
///
/// Attempt `n` (from 0) waits `min(max, initial * multiplier^n)` scaled by a
/// random factor in [0.5, 1]. After `max_attempts` failed attempts in a row
/// the session ends with [`ClientError::ReconnectFailed`](crate::ClientError::ReconnectFailed);
/// a successful reconnect starts the count again.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub max_attempts: u32,
}

impl Default for BackoffPolicy {
    /// 100 ms doubling to 5 s, 15 attempts: rides out a server restart of
    /// about a minute.
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            max_attempts: 15,
        }
    }
}

/// Resending observations rejected with `REJECT_OVERLOADED` (or
/// `REJECT_UNAVAILABLE`).
///
/// The client waits the server's `retry_after_ms` (or `default_delay` when
/// it gave none), clamped to `max_delay`, then resends the observation under
/// a new sequence number; meanwhile it sends nothing else, since the server
/// would reject that too. After `max_retries` resends of one observation,
/// its last rejection is handed to the caller. `max_retries: 0` hands every
/// overload rejection to the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub default_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 20,
            default_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before resending, given the server's hint (0 = none).
    pub(crate) fn delay(&self, retry_after_ms: u64) -> Duration {
        let hinted = if retry_after_ms == 0 {
            self.default_delay
        } else {
            Duration::from_millis(retry_after_ms)
        };
        hinted.min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_uses_the_hint_then_the_default_and_is_clamped() {
        let p = RetryPolicy {
            max_retries: 3,
            default_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.delay(200), Duration::from_millis(200));
        assert_eq!(p.delay(0), Duration::from_millis(50));
        assert_eq!(p.delay(60_000), Duration::from_secs(1));
    }
}
