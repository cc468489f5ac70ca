//! Rust client for engram's gRPC API (`proto/engram/v1`).
//!
//! [`StreamingClient::connect`] gives a cheap-to-clone client.
//! [`StreamingClient::observe_stream`] opens an observe session: an
//! [`ObserveSender`] to send episodes and an [`AckStream`] yielding exactly
//! one [`Answer`] per send, in send order. The session honours the
//! server's flow control (paces sends after SLOW_DOWN, retries overloaded
//! observations), and survives broken streams by reconnecting with backoff
//! and resuming. [`StreamingClient::recall_stream`] recalls while streams
//! flow; the unary `Memory` calls are methods too.
//!
//! ```no_run
//! use engram_client::{cue, episode, StreamingClient};
//!
//! # async fn run() -> Result<(), engram_client::ClientError> {
//! let client = StreamingClient::connect("http://127.0.0.1:50051").await?;
//! let (sender, mut acks) = client.observe_stream("demo").await?;
//! for i in 0..3 {
//!     sender.send(episode(format!("observation {i}"), vec![1.0, i as f32, 0.5])).await?;
//! }
//! for _ in 0..3 {
//!     let answer = acks.recv().await.expect("an answer per send")?;
//!     assert!(answer.is_accepted(), "{answer:?}");
//! }
//! let recalled = client.recall("demo", cue(vec![1.0, 1.0, 0.5], 2)).await?;
//! assert!(recalled.memories.len() <= 2);
//! let closed = sender.close(true).await?;
//! assert_eq!(closed.final_sequence, 3);
//! # Ok(()) }
//! ```
//!
//! Modules, by job:
//! - `client`: [`StreamingClient`], the connection and the unary calls.
//! - `observe`: the caller's handles on a session ([`ObserveSender`],
//!   [`AckStream`], [`SessionEvent`], [`SessionState`]).
//! - `session`: the task behind a session (the wire protocol, reconnect
//!   and resume).
//! - `outstanding`: numbering and bookkeeping of unanswered observations.
//! - `pacer`, `backoff`: send pacing and reconnect delays.
//! - `recall`: [`RecallStream`].
//! - `answer`, `error`, `options`: the types in the API.

mod answer;
mod backoff;
mod client;
mod error;
mod observe;
mod options;
mod outstanding;
mod pacer;
mod recall;
mod session;

/// The generated wire types (`engram.v1`).
pub use engram_proto::v1 as proto;
pub use engram_proto::v1::{
    Cue, Episode, Priority, RecallResponse, RecalledMemory, SpaceInfo, SpaceMemory,
    StreamCapabilities, StreamClosed, StreamStatus, VectorStorage,
};

pub use answer::{Ack, Answer, RejectReason, Rejection};
pub use client::{AuthChannel, BearerKey, StreamingClient};
pub use error::{ClientError, Result};
pub use observe::{AckStream, ObserveSender, SessionEvent, SessionState};
pub use options::{
    ApiKey, BackoffPolicy, ClientOptions, RetryPolicy, TlsOptions, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
};
pub use recall::{RecallStream, Recalled};

/// An episode with the given text and embedding; everything else default
/// (no id: one is assigned on streaming, see
/// [`ClientOptions::assign_episode_ids`]; `when`: the receive time).
pub fn episode(what: impl Into<String>, embedding: Vec<f32>) -> Episode {
    Episode {
        what: what.into(),
        embedding,
        ..Episode::default()
    }
}

/// A cue for the `max_results` memories most similar to `embedding`.
pub fn cue(embedding: Vec<f32>, max_results: u32) -> Cue {
    Cue {
        embedding,
        max_results,
        ..Cue::default()
    }
}
