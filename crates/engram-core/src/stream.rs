//! One stream protocol for every transport.
//!
//! A stream carries one session: `init`, then observations (exactly one
//! answer each, in sequence order), flow control, recalls interleaved with
//! them, heartbeats and `close`. This module decides everything about a
//! stream that is not encoding:
//!
//! - which answers go out and in which order (acks strictly in sequence
//!   order, recall batches held while the client has paused the stream);
//! - what state the stream reports and when ([`StreamStatus`]: SLOW_DOWN
//!   with a per-writer suggested rate, OVERLOADED, PAUSED, CLOSING), worded
//!   from the configured thresholds;
//! - what ends a stream and why ([`StreamError`]: a bad init, an unknown
//!   space or session, the idle timeout, a take-over by a resume, a message
//!   over the size limit, the server shutting down).
//!
//! Transports (gRPC `ObserveStream`/`MemoryFlow`, WebSocket `/v1/stream`)
//! only decode their messages into [`Inbound`] values, hand them to
//! [`run`], and encode the [`Outbound`] values (and the final
//! [`StreamError`], if any) that come back. So both transports behave the
//! same by construction, and a parity test checks that they do.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::access::{AllowAll, Denial, Operation, StreamAccess};
use crate::engine::Engine;
use crate::error::{Error, RejectReason};
use crate::model::{Cue, EpisodeInput, DEFAULT_MAX_RESULTS};
use crate::queue::{Level, Priority};
use crate::recall::RecallBatch;
use crate::session::{Ack, Closed, PendingAck, Session, SessionEvent, SessionPhase};

/// Answers buffered towards one client. When full, the stream waits: a
/// slow reader slows its own stream, never the server.
pub const OUTBOUND_BUFFER: usize = 256;
/// Observations of one stream in flight at once; beyond this the stream
/// stops reading, and the transport's flow control pushes back on the
/// client.
pub const MAX_IN_FLIGHT: usize = 4096;

/// The first message of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInit {
    pub memory_space_id: String,
    /// None (or empty): a new session; else resume that one.
    pub resume_session_id: Option<String>,
    /// Send SLOW_DOWN / OVERLOADED / cleared statuses as they happen.
    pub enable_backpressure: bool,
}

/// Client flow control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowAction {
    /// Hold recall batches until `Resume` (observations are still taken).
    Pause,
    Resume,
    /// Just report the stream's status (also keeps the session alive).
    BufferStatus,
}

/// A recall on a stream.
#[derive(Clone, Debug)]
pub struct RecallRequest {
    /// Empty: the stream's own space.
    pub memory_space_id: String,
    pub cue: Cue,
    /// Memories per batch; 0: all in one batch.
    pub batch_size: usize,
    pub include_embeddings: bool,
    /// Cluster mode: an ack's token; the recall waits (bounded) until the
    /// partition's owner has applied that write. A single node has applied
    /// everything it acked, and ignores it.
    pub after: Option<crate::model::ConsistencyToken>,
}

/// One client message, decoded by the transport.
#[derive(Debug)]
pub enum Inbound {
    Init(StreamInit),
    /// `episode` is Err with a message when the transport could read the
    /// sequence number but not the episode: answered as invalid, and the
    /// number is used, as for any other invalid observation.
    Observation {
        sequence_number: u64,
        episode: Result<EpisodeInput, String>,
        priority: Priority,
    },
    Flow(FlowAction),
    Close {
        drain: bool,
    },
    /// `request` is Err when the transport could not decode it; answered
    /// with [`Outbound::RecallFailed`], and the stream goes on.
    Recall {
        request_id: String,
        request: Result<RecallRequest, StreamError>,
    },
    /// Keeps the session alive; answered with [`Outbound::Heartbeat`].
    Heartbeat,
    /// A message the transport could not decode at all (malformed JSON, an
    /// unknown type): answered with [`Outbound::Error`], the stream goes on.
    Unreadable(StreamError),
}

/// What `init` reports.
#[derive(Clone, Debug, PartialEq)]
pub struct InitAck {
    pub session_id: String,
    /// The last sequence number answered (0 for a new session): resend
    /// from here + 1.
    pub last_acked_sequence: u64,
    pub resumed: bool,
    pub capabilities: Capabilities,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub queue_capacity: u64,
    pub dimension: u32,
    pub max_message_size: u64,
    /// Recalls this stream may have running at once
    /// (`sessions.max_recalls_per_stream`); one more is refused.
    pub max_recalls_per_stream: u32,
}

/// The state a stream reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    Active,
    Paused,
    /// SLOW_DOWN: send no faster than the suggested rate.
    Backpressure,
    /// New observations are rejected with a retry-after.
    Overloaded,
    Closing,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Active => "active",
            StreamState::Paused => "paused",
            StreamState::Backpressure => "backpressure",
            StreamState::Overloaded => "overloaded",
            StreamState::Closing => "closing",
        }
    }

    /// The state a writing stream is in at a backpressure level.
    pub fn of_level(level: Level) -> Self {
        match level {
            Level::Overloaded => StreamState::Overloaded,
            Level::SlowDown => StreamState::Backpressure,
            Level::Normal | Level::Adaptive => StreamState::Active,
        }
    }
}

/// A stream's status, as the client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamStatus {
    pub state: StreamState,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    /// depth / capacity.
    pub pressure: f32,
    /// Observations/s this stream should send (with BACKPRESSURE and
    /// OVERLOADED; 0 otherwise, and 0 while no drain rate is known yet).
    pub suggested_rate: f32,
    pub message: String,
}

/// Something the stream tells its client.
#[derive(Clone, Debug)]
pub enum Outbound {
    InitAck(InitAck),
    Ack(Ack),
    Status(StreamStatus),
    Closed(Closed),
    Recall {
        request_id: String,
        batch: RecallBatch,
        include_embeddings: bool,
    },
    RecallFailed {
        request_id: String,
        error: StreamError,
    },
    Heartbeat,
    /// A message could not be read; the stream goes on.
    Error(StreamError),
}

/// Why a stream (or one recall on it) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamErrorKind {
    /// A field is missing, malformed or out of range; or the protocol's
    /// order was broken (a message before init, a second init).
    InvalidArgument,
    /// The message itself could not be decoded (e.g. not JSON).
    Malformed,
    /// Unknown space or session.
    NotFound,
    /// Over a limit; `retry_after` when waiting helps (admission control,
    /// the session limit).
    ResourceExhausted { retry_after: Option<Duration> },
    /// A message over the transport's size limit.
    MessageTooLarge { limit: usize },
    /// The server is shutting down or not ready: reconnect and resume.
    Unavailable,
    /// The session ended (idle timeout, resumed elsewhere): resume it.
    Aborted,
    /// The server failed.
    Internal,
    /// The stream's credentials are missing or no longer valid.
    Unauthenticated,
    /// The credentials do not grant this operation on this space.
    PermissionDenied,
}

impl StreamErrorKind {
    /// Stable machine-readable name.
    pub fn code(self) -> &'static str {
        match self {
            StreamErrorKind::InvalidArgument => "invalid_argument",
            StreamErrorKind::Malformed => "malformed_message",
            StreamErrorKind::NotFound => "not_found",
            StreamErrorKind::ResourceExhausted { .. } => "resource_exhausted",
            StreamErrorKind::MessageTooLarge { .. } => "message_too_large",
            StreamErrorKind::Unavailable => "unavailable",
            StreamErrorKind::Aborted => "aborted",
            StreamErrorKind::Internal => "internal",
            StreamErrorKind::Unauthenticated => "unauthenticated",
            StreamErrorKind::PermissionDenied => "permission_denied",
        }
    }
}

/// A stream-level error: what happened and what to do, in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StreamError {
    pub kind: StreamErrorKind,
    pub message: String,
}

impl StreamError {
    pub fn new(kind: StreamErrorKind, message: impl Into<String>) -> Self {
        StreamError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StreamErrorKind::InvalidArgument, message)
    }

    /// A message of `size` bytes (when known) over `limit`; `knob` names the
    /// setting that raises the limit.
    pub fn too_large(size: Option<usize>, limit: usize, knob: &str) -> Self {
        let size = size.map_or_else(String::new, |s| format!(" of {s} bytes"));
        Self::new(
            StreamErrorKind::MessageTooLarge { limit },
            format!("message too large: a message{size} is over the server's limit of {limit} bytes ({knob})"),
        )
    }
}

impl From<Error> for StreamError {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::InvalidArgument { .. }
            | Error::DimensionMismatch { .. }
            | Error::SpaceExists { .. } => StreamErrorKind::InvalidArgument,
            Error::SpaceNotFound(_) | Error::MemoryNotFound { .. } | Error::SessionNotFound(_) => {
                StreamErrorKind::NotFound
            }
            Error::Overloaded { retry_after, .. } | Error::SessionLimit { retry_after, .. } => {
                StreamErrorKind::ResourceExhausted {
                    retry_after: Some(*retry_after),
                }
            }
            Error::LimitReached { .. } => StreamErrorKind::ResourceExhausted { retry_after: None },
            Error::ShuttingDown => StreamErrorKind::Unavailable,
            Error::Refused {
                reason,
                retry_after,
                ..
            } => match reason {
                RejectReason::Overloaded => StreamErrorKind::ResourceExhausted {
                    retry_after: *retry_after,
                },
                RejectReason::Invalid | RejectReason::OutOfOrder => {
                    StreamErrorKind::InvalidArgument
                }
                RejectReason::Unauthorized => StreamErrorKind::PermissionDenied,
                RejectReason::Closed => StreamErrorKind::Aborted,
                RejectReason::Unavailable => StreamErrorKind::Unavailable,
            },
            Error::Storage(_) => StreamErrorKind::Internal,
        };
        StreamError::new(kind, e.to_string())
    }
}

/// What a transport tells [`run`] about itself.
#[derive(Clone)]
pub struct StreamLimits {
    /// The largest message the transport takes (reported in `init_ack`).
    pub max_message_bytes: usize,
    /// What this stream's credentials allow, asked for every observation
    /// and every recall (see [`crate::access`]).
    pub access: Arc<dyn StreamAccess>,
}

impl StreamLimits {
    /// A stream that may do everything (no authentication).
    pub fn new(max_message_bytes: usize) -> Self {
        StreamLimits {
            max_message_bytes,
            access: Arc::new(AllowAll),
        }
    }

    /// The same, with what the stream's credentials allow.
    pub fn with_access(mut self, access: Arc<dyn StreamAccess>) -> Self {
        self.access = access;
        self
    }
}

impl std::fmt::Debug for StreamLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLimits")
            .field("max_message_bytes", &self.max_message_bytes)
            .finish_non_exhaustive()
    }
}

impl From<Denial> for StreamError {
    fn from(d: Denial) -> Self {
        match d {
            Denial::Unauthenticated(m) => StreamError::new(StreamErrorKind::Unauthenticated, m),
            Denial::PermissionDenied(m) => StreamError::new(StreamErrorKind::PermissionDenied, m),
            Denial::RateLimited {
                message,
                retry_after,
            } => StreamError::new(
                StreamErrorKind::ResourceExhausted {
                    retry_after: Some(retry_after),
                },
                message,
            ),
        }
    }
}

/// What a stream runs on: the engine on a single node, the node's
/// publisher and router in cluster mode. The [`Driver`] asks it for
/// everything that is not the protocol itself, so both behave the same.
pub trait StreamHost: Send + Sync + 'static {
    /// Opens (or resumes) a session on `space`, with the space's dimension
    /// for `init_ack` (0 when unknown yet).
    fn open_session<'a>(
        &'a self,
        space: &'a str,
        resume_session_id: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<OpenedSession, StreamError>>;

    /// The queue capacity reported in `init_ack`.
    fn queue_capacity(&self) -> u64;

    /// Recalls one stream may have running at once.
    fn max_recalls_per_stream(&self) -> usize;

    /// The state of a writing, unpaused stream at the current pressure.
    fn pressure_state(&self) -> StreamState;

    /// What a stream tells its client when the pressure changes to `state`.
    fn pressure_message(&self, state: StreamState) -> String;

    /// The status a writing stream reports now, in `state`.
    fn stream_status(&self, state: StreamState, message: String) -> StreamStatus;

    /// Validates a recall and starts it.
    fn start_recall(&self, req: RecallRequest) -> RecallStart;
}

/// A session a [`StreamHost`] opened.
pub struct OpenedSession {
    pub session: Session,
    pub opened: crate::session::Opened,
    /// The space's dimension (0 when the space does not exist yet).
    pub dimension: u32,
}

/// A started recall: known at once (the engine validates and starts it
/// right away), or later (in cluster mode, when the owner is asked).
pub enum RecallStart {
    Ready(Result<RecallBatches, StreamError>),
    Later(futures::future::BoxFuture<'static, Result<RecallBatches, StreamError>>),
}

impl StreamHost for Engine {
    fn open_session<'a>(
        &'a self,
        space: &'a str,
        resume_session_id: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<OpenedSession, StreamError>> {
        Box::pin(async move {
            let (session, opened) = Engine::open_session(self, space, resume_session_id).await?;
            let dimension = self.describe_space(space).map_or(0, |i| i.dimension as u32);
            Ok(OpenedSession {
                session,
                opened,
                dimension,
            })
        })
    }

    fn queue_capacity(&self) -> u64 {
        Engine::queue_capacity(self) as u64
    }

    fn max_recalls_per_stream(&self) -> usize {
        self.config().sessions.max_recalls_per_stream.max(1)
    }

    fn pressure_state(&self) -> StreamState {
        Engine::pressure_state(self)
    }

    fn pressure_message(&self, state: StreamState) -> String {
        Engine::pressure_message(self, state)
    }

    fn stream_status(&self, state: StreamState, message: String) -> StreamStatus {
        Engine::stream_status(self, state, message)
    }

    fn start_recall(&self, req: RecallRequest) -> RecallStart {
        RecallStart::Ready(start_recall(self, req).map_err(StreamError::from))
    }
}

/// Runs one stream on `engine` (see [`run_on`]).
pub fn run<I>(
    engine: Engine,
    inbound: I,
    limits: StreamLimits,
    shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<Result<Outbound, StreamError>>
where
    I: Stream<Item = Result<Inbound, StreamError>> + Send + Unpin + 'static,
{
    run_on(Arc::new(engine), inbound, limits, shutdown)
}

/// Runs one stream on `host`: reads `inbound` until the client finishes,
/// the session closes, or the stream fails; returns the receiver of what to
/// send back. The receiver yields `Err` at most once, last: the reason the
/// stream ended (the transport ends its connection with it). It ends
/// without an error after `close`, or when the client finished sending and
/// every observation it sent was answered.
///
/// `shutdown` turning true makes the stream stop taking observations,
/// answer what it holds, report CLOSING and end with
/// [`StreamErrorKind::Unavailable`].
pub fn run_on<I>(
    host: Arc<dyn StreamHost>,
    inbound: I,
    limits: StreamLimits,
    shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<Result<Outbound, StreamError>>
where
    I: Stream<Item = Result<Inbound, StreamError>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    let recall_limit = host.max_recalls_per_stream().max(1);
    let driver = Driver {
        host,
        out: tx,
        limits,
        session: None,
        events: None,
        pending: FuturesOrdered::new(),
        backpressure: false,
        paused: watch::channel(false).0,
        recalls: Arc::new(Semaphore::new(recall_limit)),
        last_state: StreamState::Active,
        shutdown,
    };
    // A panic in the driver must not read as a clean end of the stream
    // (the receiver would just close): it ends the stream with INTERNAL,
    // and the session, released as the driver unwinds, stays resumable.
    let report = driver.out.clone();
    let task = tokio::spawn(driver.run(inbound));
    tokio::spawn(async move {
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!(error = %e, "a stream's driver panicked; the stream ends with an internal error");
                let _ = report
                    .send(Err(StreamError::new(
                        StreamErrorKind::Internal,
                        "the stream failed inside the server (see its log); reconnect and resume the session",
                    )))
                    .await;
            }
        }
    });
    rx
}

/// Validates a recall and starts producing its batches on a blocking
/// thread (search is CPU work). The first batch is searched for on its own,
/// so it can leave before the full top-k is ready.
///
/// # Errors
/// Bad cue, unknown space, dimension mismatch.
pub fn start_recall(engine: &Engine, req: RecallRequest) -> Result<RecallBatches, Error> {
    let max = req.cue.max_results.unwrap_or(DEFAULT_MAX_RESULTS);
    let batch = if req.batch_size == 0 {
        max
    } else {
        req.batch_size
    };
    let stream = engine.recall_stream(&req.memory_space_id, req.cue, batch)?;
    Ok(RecallBatches::new(Box::new(stream)))
}

/// Where a recall's batches come from (a [`crate::RecallStream`]; tests
/// use plain iterators).
pub type BatchSource = Box<dyn Iterator<Item = RecallBatch> + Send>;

/// The batches of one recall, as [`start_recall`] produces them. Ends after
/// the batch with `more = false`; if the source stops before that (or
/// panics in the search), the last item is an INTERNAL error instead of a
/// silent end that would leave the client waiting for its last batch.
///
/// Pulled one batch at a time: each `next` searches on a blocking thread
/// and gives it back, so a recall whose client is slow or has paused the
/// stream holds no thread while it waits (a producer thread blocked on a
/// full channel did, and enough paused recalls exhausted the blocking pool
/// and stalled every recall).
pub struct RecallBatches {
    source: Option<BatchSource>,
    done: bool,
}

impl RecallBatches {
    pub fn new(source: BatchSource) -> Self {
        RecallBatches {
            source: Some(source),
            done: false,
        }
    }

    pub async fn next(&mut self) -> Option<Result<RecallBatch, StreamError>> {
        if self.done {
            return None;
        }
        let mut source = self.source.take()?;
        let produced = tokio::task::spawn_blocking(move || {
            let b = source.next();
            (source, b)
        })
        .await;
        match produced {
            Ok((source, Some(b))) => {
                self.done = !b.more;
                self.source = (!self.done).then_some(source);
                Some(Ok(b))
            }
            Ok((_, None)) | Err(_) => {
                self.done = true;
                Some(Err(StreamError::new(
                    StreamErrorKind::Internal,
                    "the recall failed inside the server before its last batch (see its log)",
                )))
            }
        }
    }
}

impl Engine {
    /// The status a writing stream reports now, in `state` (usually from
    /// [`Engine::pressure_state`]): queue depth and pressure, and with
    /// BACKPRESSURE or OVERLOADED a suggested rate, the queue's suggested
    /// total rate shared by the streams attached now.
    pub fn stream_status(&self, state: StreamState, message: impl Into<String>) -> StreamStatus {
        let q = self.queue();
        let suggested_rate = match state {
            StreamState::Backpressure | StreamState::Overloaded => {
                let writers = self.active_sessions().max(1) as f64;
                (q.suggested_rate() / writers) as f32
            }
            _ => 0.0,
        };
        StreamStatus {
            state,
            queue_depth: q.depth() as u64,
            queue_capacity: q.capacity() as u64,
            pressure: q.pressure() as f32,
            suggested_rate,
            message: message.into(),
        }
    }

    /// The state of a writing, unpaused stream at the current level.
    pub fn pressure_state(&self) -> StreamState {
        StreamState::of_level(self.queue().level())
    }

    /// What a stream tells its client when the pressure changes to `state`,
    /// worded from the configured thresholds.
    pub fn pressure_message(&self, state: StreamState) -> String {
        let q = &self.config().queue;
        match state {
            StreamState::Backpressure => format!(
                "slow down: the indexing queue is over {}% full; send no faster than suggested_rate until the stream is active again",
                percent(q.slow_down_at)
            ),
            StreamState::Overloaded => format!(
                "overloaded: the indexing queue is over {}% full; new observations are rejected with a retry-after",
                percent(q.reject_at)
            ),
            _ => format!(
                "pressure cleared: the indexing queue is below {}% full",
                percent(q.slow_down_clear_at)
            ),
        }
    }
}

/// A fraction as the percentage a status message shows (`0.8` → `80`,
/// `0.825` → `82.5`).
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}", p.round() as i64)
    } else {
        format!("{p:.1}")
    }
}

impl Session {
    /// The status of this session's stream now: PAUSED when the client
    /// paused it, else the state of the current backpressure level.
    pub fn status(&self, host: &dyn StreamHost, message: impl Into<String>) -> StreamStatus {
        let state = match self.phase() {
            SessionPhase::Paused => StreamState::Paused,
            SessionPhase::Closing | SessionPhase::Closed => StreamState::Closing,
            SessionPhase::Active => host.pressure_state(),
        };
        host.stream_status(state, message.into())
    }
}

/// The task behind one stream.
struct Driver {
    host: Arc<dyn StreamHost>,
    out: mpsc::Sender<Result<Outbound, StreamError>>,
    limits: StreamLimits,
    session: Option<Session>,
    events: Option<mpsc::Receiver<SessionEvent>>,
    pending: FuturesOrdered<PendingAck>,
    backpressure: bool,
    /// Recall forwarders hold their batches while this is true.
    paused: watch::Sender<bool>,
    /// One permit per recall running on this stream
    /// (`sessions.max_recalls_per_stream`).
    recalls: Arc<Semaphore>,
    last_state: StreamState,
    shutdown: watch::Receiver<bool>,
}

/// Whether the stream goes on after handling a message.
type Go = bool;

impl Driver {
    async fn run<I>(mut self, mut inbound: I)
    where
        I: Stream<Item = Result<Inbound, StreamError>> + Unpin,
    {
        let mut shutdown = self.shutdown.clone();
        loop {
            let reading = self.pending.len() < MAX_IN_FLIGHT;
            tokio::select! {
                biased;
                Some(ack) = self.pending.next(), if !self.pending.is_empty() => {
                    if !self.send(Outbound::Ack(ack)).await {
                        return;
                    }
                }
                _ = async { drop(shutdown.wait_for(|s| *s).await) } => {
                    // Stop intake: answer what was taken, then tell the
                    // client to come back (it resumes its session if the
                    // server kept it, else opens a new one and resends;
                    // episode ids dedupe). A stream not yet past init gets
                    // only the error: its first message may be nothing but
                    // an init_ack.
                    if self.session.is_some() && self.flush_acks().await {
                        self.send_status(StreamState::Closing, "the server is shutting down").await;
                    }
                    self.fail(StreamError::new(
                        StreamErrorKind::Unavailable,
                        "the server is shutting down; reconnect and resume (unacknowledged observations must be resent)",
                    ))
                    .await;
                    return;
                }
                Some(ev) = next_event(&mut self.events) => {
                    if !self.on_event(ev).await {
                        return;
                    }
                }
                msg = inbound.next(), if reading => match msg {
                    Some(Ok(m)) => {
                        if !self.on_message(m).await {
                            return;
                        }
                    }
                    None => {
                        // The client finished sending: answer what it sent.
                        self.flush_acks().await;
                        return;
                    }
                    Some(Err(e)) => {
                        self.fail(e).await;
                        return;
                    }
                },
            }
        }
    }

    /// False once the client is gone.
    async fn send(&self, m: Outbound) -> bool {
        self.out.send(Ok(m)).await.is_ok()
    }

    /// Ends the stream with `e`.
    async fn fail(&self, e: StreamError) {
        let _ = self.out.send(Err(e)).await;
    }

    async fn flush_acks(&mut self) -> bool {
        while let Some(ack) = self.pending.next().await {
            if !self.send(Outbound::Ack(ack)).await {
                return false;
            }
        }
        true
    }

    async fn on_message(&mut self, m: Inbound) -> Go {
        match m {
            Inbound::Init(init) => self.on_init(init).await,
            Inbound::Observation {
                sequence_number,
                episode,
                priority,
            } => {
                let Some(session) = &self.session else {
                    self.fail(StreamError::invalid(
                        "the first message on a stream must be init (with memory_space_id); got an observation",
                    ))
                    .await;
                    return false;
                };
                let allowed = self
                    .limits
                    .access
                    .check(session.space().as_str(), Operation::Write);
                let pending = match (allowed, episode) {
                    (Err(denial), _) => session.observe_denied(sequence_number, denial),
                    (Ok(()), Ok(input)) => session.observe(sequence_number, input, priority),
                    (Ok(()), Err(message)) => session.observe_invalid(sequence_number, message),
                };
                self.pending.push_back(pending);
                true
            }
            Inbound::Flow(action) => self.on_flow(action).await,
            Inbound::Close { drain } => self.on_close(drain).await,
            Inbound::Recall {
                request_id,
                request,
            } => {
                self.on_recall(request_id, request).await;
                true
            }
            Inbound::Heartbeat => {
                if let Some(s) = &self.session {
                    s.heartbeat();
                }
                self.send(Outbound::Heartbeat).await
            }
            Inbound::Unreadable(e) => {
                if let Some(s) = &self.session {
                    s.heartbeat();
                }
                self.send(Outbound::Error(e)).await
            }
        }
    }

    async fn on_init(&mut self, init: StreamInit) -> Go {
        if self.session.is_some() {
            self.fail(StreamError::invalid(
                "init was already sent on this stream; one stream carries one session (open another stream)",
            ))
            .await;
            return false;
        }
        let resume = init.resume_session_id.as_deref().filter(|s| !s.is_empty());
        let OpenedSession {
            mut session,
            opened,
            dimension,
        } = match self.host.open_session(&init.memory_space_id, resume).await {
            Ok(s) => s,
            Err(e) => {
                self.fail(e).await;
                return false;
            }
        };
        self.events = session.take_events();
        self.backpressure = init.enable_backpressure;
        // A stream whose credentials do not cover its space learns nothing
        // of it (its observations will be rejected as unauthorized).
        let dimension = if self.limits.access.covers(&init.memory_space_id) {
            dimension
        } else {
            0
        };
        self.session = Some(session);
        let sent = self
            .send(Outbound::InitAck(InitAck {
                session_id: opened.session_id,
                last_acked_sequence: opened.last_acked_sequence,
                resumed: opened.resumed,
                capabilities: Capabilities {
                    queue_capacity: self.host.queue_capacity(),
                    dimension,
                    max_message_size: self.limits.max_message_bytes as u64,
                    max_recalls_per_stream: self.host.max_recalls_per_stream().max(1) as u32,
                },
            }))
            .await;
        // Statuses go out on level changes; a stream that opens (or
        // resumes) while the queue is already under pressure must hear of
        // it now, not at the next change.
        let state = self.host.pressure_state();
        if sent && self.backpressure && state != StreamState::Active {
            let message = self.host.pressure_message(state);
            return self.send_status(state, &message).await;
        }
        sent
    }

    async fn on_flow(&mut self, action: FlowAction) -> Go {
        let Some(session) = &self.session else {
            self.fail(StreamError::invalid(
                "flow control before init: send init first",
            ))
            .await;
            return false;
        };
        session.heartbeat();
        let message = match action {
            FlowAction::Pause => {
                session.pause();
                // send_replace: the value must change even while no recall
                // is subscribed, so that the next recall starts held.
                self.paused.send_replace(true);
                "paused by the client; recall batches are held"
            }
            FlowAction::Resume => {
                session.resume();
                self.paused.send_replace(false);
                "resumed by the client"
            }
            FlowAction::BufferStatus => "status",
        };
        let status = session.status(&*self.host, message);
        self.last_state = status.state;
        self.send(Outbound::Status(status)).await
    }

    async fn on_close(&mut self, drain: bool) -> Go {
        let Some(session) = self.session.take() else {
            self.fail(StreamError::invalid("close before init: send init first"))
                .await;
            return false;
        };
        if !self.flush_acks().await {
            return false;
        }
        self.send_status(StreamState::Closing, "closing").await;
        let closed = session.close(drain).await;
        let _ = self.send(Outbound::Closed(closed)).await;
        false
    }

    async fn on_recall(&mut self, request_id: String, request: Result<RecallRequest, StreamError>) {
        if let Some(s) = &self.session {
            s.heartbeat();
        }
        let started = request.and_then(|mut req| {
            if req.memory_space_id.is_empty() {
                match &self.session {
                    Some(s) => req.memory_space_id = s.space().to_string(),
                    None => {
                        return Err(StreamError::invalid(
                            "recall without memory_space_id before init: name the space, or send init first",
                        ))
                    }
                }
            }
            self.limits
                .access
                .check(&req.memory_space_id, Operation::Read)?;
            let include_embeddings = req.include_embeddings;
            match self.host.start_recall(req) {
                // A bad request is answered as such, before the limit.
                RecallStart::Ready(Err(e)) => Err(e),
                start => Ok((start, include_embeddings)),
            }
        });
        let started = started.and_then(|started| match self.recalls.clone().try_acquire_owned() {
            Ok(permit) => Ok((started, permit)),
            Err(_) => Err(StreamError::new(
                StreamErrorKind::ResourceExhausted { retry_after: None },
                format!(
                    "this stream already has {} recalls running (sessions.max_recalls_per_stream); wait for one to end",
                    self.host.max_recalls_per_stream()
                ),
            )),
        });
        let (start, include_embeddings, permit) = match started {
            Ok(((start, include_embeddings), permit)) => (start, include_embeddings, permit),
            Err(error) => {
                let _ = self
                    .send(Outbound::RecallFailed { request_id, error })
                    .await;
                return;
            }
        };
        let paused = self.paused.subscribe();
        let out = self.out.clone();
        match start {
            RecallStart::Ready(Ok(batches)) => {
                tokio::spawn(forward_recall(
                    batches,
                    out,
                    request_id,
                    include_embeddings,
                    paused,
                    permit,
                ));
            }
            RecallStart::Ready(Err(error)) => {
                drop(permit);
                let _ = self
                    .send(Outbound::RecallFailed { request_id, error })
                    .await;
            }
            RecallStart::Later(starting) => {
                tokio::spawn(async move {
                    // A start that panics (or a host that fails inside)
                    // still answers: the client never waits on a recall
                    // nothing will answer.
                    let started = std::panic::AssertUnwindSafe(starting)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            tracing::error!("starting a recall panicked; it fails with an internal error");
                            Err(StreamError::new(
                                StreamErrorKind::Internal,
                                "the recall failed inside the server before its first batch (see its log)",
                            ))
                        });
                    match started {
                        Ok(batches) => {
                            forward_recall(
                                batches,
                                out,
                                request_id,
                                include_embeddings,
                                paused,
                                permit,
                            )
                            .await
                        }
                        Err(error) => {
                            drop(permit);
                            let _ = out
                                .send(Ok(Outbound::RecallFailed { request_id, error }))
                                .await;
                        }
                    }
                });
            }
        }
    }

    async fn send_status(&mut self, state: StreamState, message: &str) -> Go {
        self.last_state = state;
        let status = self.host.stream_status(state, message.to_owned());
        self.send(Outbound::Status(status)).await
    }

    async fn on_event(&mut self, ev: SessionEvent) -> Go {
        match ev {
            SessionEvent::Pressure(_) => {
                // The level now, not the event's: events that found the
                // session's buffer full were dropped, and this one may be
                // older than the latest change.
                let state = self.host.pressure_state();
                if !self.backpressure || *self.paused.borrow() || state == self.last_state {
                    return true;
                }
                let message = self.host.pressure_message(state);
                self.send_status(state, &message).await
            }
            SessionEvent::IdleTimeout => {
                self.send_status(
                    StreamState::Closing,
                    "closed after the idle timeout; resume the session to continue",
                )
                .await;
                self.fail(StreamError::new(
                    StreamErrorKind::Aborted,
                    "session closed after the idle timeout (send heartbeats or flow control to keep it open); it can be resumed",
                ))
                .await;
                false
            }
            SessionEvent::TakenOver => {
                self.fail(StreamError::new(
                    StreamErrorKind::Aborted,
                    "this session was resumed by another stream",
                ))
                .await;
                false
            }
        }
    }
}

/// Sends recall batches, holding each while the stream is paused.
async fn forward_recall(
    mut batches: RecallBatches,
    out: mpsc::Sender<Result<Outbound, StreamError>>,
    request_id: String,
    include_embeddings: bool,
    mut paused: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    while let Some(batch) = batches.next().await {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let m = match batch {
            Ok(batch) => Outbound::Recall {
                request_id: request_id.clone(),
                batch,
                include_embeddings,
            },
            Err(error) => Outbound::RecallFailed {
                request_id: request_id.clone(),
                error,
            },
        };
        if out.send(Ok(m)).await.is_err() {
            return;
        }
    }
}

/// The next session event, or never when there is no session yet.
fn next_event(
    events: &mut Option<mpsc::Receiver<SessionEvent>>,
) -> impl std::future::Future<Output = Option<SessionEvent>> + '_ {
    std::future::poll_fn(move |cx| match events {
        Some(rx) => match Pin::new(rx).poll_recv(cx) {
            Poll::Ready(Some(ev)) => Poll::Ready(Some(ev)),
            // Closed: nothing more will come; stay pending.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        },
        None => Poll::Pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(more: bool) -> RecallBatch {
        RecallBatch {
            memories: Vec::new(),
            more,
            snapshot_sequence: 1,
        }
    }

    #[tokio::test]
    async fn a_recall_that_stops_before_its_last_batch_ends_with_an_error() {
        // A source that ends early, and one that panics in its search.
        let early: BatchSource = Box::new(vec![batch(true)].into_iter());
        let panics: BatchSource = Box::new(
            vec![batch(true)]
                .into_iter()
                .chain(std::iter::from_fn(|| panic!("search failed"))),
        );
        for source in [early, panics] {
            let mut batches = RecallBatches::new(source);
            assert!(matches!(batches.next().await, Some(Ok(b)) if b.more));
            match batches.next().await {
                Some(Err(e)) => assert_eq!(e.kind, StreamErrorKind::Internal),
                other => panic!("expected an error, got {other:?}"),
            }
            assert!(batches.next().await.is_none());
        }
    }

    #[tokio::test]
    async fn a_complete_recall_ends_after_its_last_batch() {
        let mut batches = RecallBatches::new(Box::new(vec![batch(true), batch(false)].into_iter()));
        assert!(matches!(batches.next().await, Some(Ok(b)) if b.more));
        assert!(matches!(batches.next().await, Some(Ok(b)) if !b.more));
        assert!(batches.next().await.is_none());
    }

    #[test]
    fn percents_read_naturally() {
        assert_eq!(percent(0.8), "80");
        assert_eq!(percent(0.9), "90");
        assert_eq!(percent(0.725), "72.5");
    }

    #[test]
    fn every_engine_error_has_a_stream_kind() {
        let cases = [
            (Error::SpaceNotFound("a".into()), StreamErrorKind::NotFound),
            (
                Error::SessionNotFound("s".into()),
                StreamErrorKind::NotFound,
            ),
            (Error::ShuttingDown, StreamErrorKind::Unavailable),
            (Error::Storage("disk".into()), StreamErrorKind::Internal),
            (
                Error::Overloaded {
                    depth: 1,
                    capacity: 1,
                    retry_after: Duration::from_millis(70),
                },
                StreamErrorKind::ResourceExhausted {
                    retry_after: Some(Duration::from_millis(70)),
                },
            ),
            (
                Error::SessionLimit {
                    limit: 5,
                    retry_after: Duration::from_secs(1),
                },
                StreamErrorKind::ResourceExhausted {
                    retry_after: Some(Duration::from_secs(1)),
                },
            ),
            (
                Error::LimitReached {
                    what: "memory spaces",
                    limit: 5,
                    setting: "engine.max_spaces",
                },
                StreamErrorKind::ResourceExhausted { retry_after: None },
            ),
        ];
        for (e, kind) in cases {
            let message = e.to_string();
            let s = StreamError::from(e);
            assert_eq!(s.kind, kind);
            assert_eq!(s.message, message);
        }
    }
}
