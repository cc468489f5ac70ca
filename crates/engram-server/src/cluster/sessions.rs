//! Streaming sessions in cluster mode: `ObserveStream`, `MemoryFlow` and
//! the WebSocket `/v1/stream` run the same protocol driver as on a single
//! node ([`engram_core::stream`]), on this node's [`StreamHost`].
//!
//! - Sessions live on the node their stream is attached to, in a session
//!   registry of their own with the single node's rules: sequence numbers,
//!   one answer per number in order, replay of recorded answers after a
//!   resume on the same node, idle timeout, resume window. A resume on
//!   another node is answered `session_not_found`; the clients then open a
//!   new session and resend what was not acked, with the episode ids they
//!   gave it, so nothing is stored twice.
//! - An observation is admitted like a unary write (the partition's lag,
//!   this node's writes waiting for their PubAck), published with the
//!   message id of (space, episode id) and acked after the PubAck, with its
//!   consistency token. An episode sent without an id gets
//!   `<session id>:<sequence number>`: publishing it twice (a retry after a
//!   PubAck timeout) stores it once, at the stream's dedupe and, later, at
//!   the owner's apply (episode ids are unique per space).
//! - Backpressure: the node's publishes waiting for their PubAck fill its
//!   queue (`cluster.max_pending_publishes` is its capacity); the levels
//!   and their wording are the single node's (`engine.queue` thresholds),
//!   so streams see SLOW_DOWN with a suggested rate, then OVERLOADED (NORMAL
//!   and LOW observations rejected with a retry-after, HIGH admitted to the
//!   full capacity).
//! - Recalls on a stream are served by the partition's owner: on this
//!   node, or asked of the owner (its gRPC Recall) and sent on in batches.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_core::commit::Reply;
use engram_core::model::{Cue, MemoryFilter, RecalledMemory, Remembered, SpaceId, StoredEpisode};
use engram_core::queue::{Level, LevelChange, Priority, Thresholds};
use engram_core::recall::RecallBatch;
use engram_core::session::{Origin, Registry, RejectReason, SessionConfig, SessionHost};
use engram_core::stream::{
    OpenedSession, RecallBatches, RecallRequest, RecallStart, StreamError, StreamErrorKind,
    StreamHost, StreamState, StreamStatus,
};
use engram_core::{EpisodeInput, Error};
use engram_proto::v1 as pb;
use futures::future::BoxFuture;
use tonic::Status;

use super::{Cluster, Route};
use crate::grpc::convert;

/// How often the pressure level is looked at (and streams told of a
/// change), and sessions swept (idle timeout, resume window).
const PRESSURE_TICK: Duration = Duration::from_millis(100);
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The retry-after of an observation refused at OVERLOADED.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_millis(500);

/// This node's streaming sessions and the pressure they see.
pub(crate) struct Streams {
    sessions: Registry,
    sessions_cfg: SessionConfig,
    queue: engram_core::queue::QueueConfig,
    /// The levels' depths: `engine.queue`'s fractions of
    /// `cluster.max_pending_publishes`.
    thresholds: Thresholds,
    /// The current level (`Level as u8`).
    level: AtomicU8,
    /// Observations acked since the node started (for the rate).
    acked: AtomicU64,
    /// The drain rate, observations/s (f64 bits), measured each second.
    rate: AtomicU64,
    /// Observations rejected by reason (index of `RejectReason::ALL`).
    rejected: [AtomicU64; 6],
}

impl Streams {
    pub(crate) fn new(engine: &engram_core::EngineConfig, max_pending_publishes: usize) -> Self {
        let queue = engram_core::queue::QueueConfig {
            capacity: max_pending_publishes.max(1),
            ..engine.queue.clone()
        };
        Streams {
            sessions: Registry::new(engine.sessions.clone()),
            sessions_cfg: engine.sessions.clone(),
            thresholds: Thresholds::new(&queue),
            queue,
            level: AtomicU8::new(Level::Normal as u8),
            acked: AtomicU64::new(0),
            rate: AtomicU64::new(0f64.to_bits()),
            rejected: Default::default(),
        }
    }

    fn level(&self) -> Level {
        Level::ALL[usize::from(self.level.load(Ordering::Relaxed))]
    }

    fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// Attached streams (for the metrics).
    pub(crate) fn attached(&self) -> usize {
        self.sessions.active()
    }

    /// Rejected observations by reason (for the metrics).
    pub(crate) fn rejected(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
    }

    fn count_rejection(&self, reason: RejectReason) {
        if let Some(i) = RejectReason::ALL.iter().position(|r| *r == reason) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Cluster {
    /// Writes waiting for their PubAck on this node.
    pub(crate) fn pending_publishes(&self) -> usize {
        self.inner
            .cfg
            .max_pending_publishes
            .saturating_sub(self.inner.publish_permits.available_permits())
    }

    /// The host a stream opened on this node runs on; `metadata` is the
    /// stream's (its credentials go with recalls forwarded to an owner).
    pub fn stream_host(&self, metadata: tonic::metadata::MetadataMap) -> Arc<dyn StreamHost> {
        Arc::new(StreamOn {
            cluster: self.clone(),
            metadata,
        })
    }

    /// Looks at the pressure (telling attached streams of a level change)
    /// and sweeps sessions, until the node stops. Run supervised: a panic
    /// restarts it.
    pub(crate) async fn stream_loop(self) {
        let streams = &self.inner.streams;
        let mut tick = tokio::time::interval(PRESSURE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.inner.stop.clone();
        let mut last_sweep = Instant::now();
        let mut last_acked = streams.acked.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let capacity = self.inner.cfg.max_pending_publishes.max(1);
            let depth = self.pending_publishes();
            let pressure = depth as f64 / capacity as f64;
            let now = streams.level();
            let next = streams.thresholds.level(now, depth);
            if next != now {
                streams.level.store(next as u8, Ordering::Relaxed);
                tracing::info!(
                    from = ?now,
                    to = ?next,
                    depth,
                    capacity,
                    "cluster write pressure changed (writes waiting for their PubAck on this node)"
                );
                streams.sessions.broadcast(&LevelChange {
                    level: next,
                    depth,
                    capacity,
                    pressure,
                    suggested_rate: streams.rate(),
                });
            }
            let since = last_sweep.elapsed();
            if since >= SWEEP_EVERY {
                last_sweep = Instant::now();
                let acked = streams.acked.load(Ordering::Relaxed);
                let rate = (acked - last_acked) as f64 / since.as_secs_f64();
                last_acked = acked;
                // Smoothed: one quiet second does not zero the advice.
                let smoothed = if streams.rate() == 0.0 {
                    rate
                } else {
                    0.5 * streams.rate() + 0.5 * rate
                };
                streams.rate.store(smoothed.to_bits(), Ordering::Relaxed);
                streams.sessions.sweep();
            }
        }
    }
}

/// A stream's host: the node's cluster handle and the stream's metadata.
struct StreamOn {
    cluster: Cluster,
    metadata: tonic::metadata::MetadataMap,
}

/// Calls a submitted observation's reply exactly once: with the write's
/// answer, or (when the task publishing it panicked or was dropped) with
/// UNAVAILABLE, so that its session never waits for an answer that will
/// not come (a resume or a draining close would hang on it).
struct Answer(Option<Reply<Remembered>>);

impl Answer {
    fn send(mut self, r: Result<Remembered, Error>) {
        if let Some(reply) = self.0.take() {
            reply(r);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(reply) = self.0.take() {
            reply(Err(Error::Refused {
                reason: RejectReason::Unavailable,
                message: "the write failed inside the server before its PubAck (see its log); resend it with the same episode id".to_owned(),
                retry_after: None,
            }));
        }
    }
}

/// A refusal of the write path as an observation's answer.
pub(crate) fn refused(s: &Status) -> Error {
    use tonic::Code;
    use tonic_types::StatusExt;
    let retry_after = s
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .or_else(|| (s.code() == Code::ResourceExhausted).then_some(OVERLOADED_RETRY_AFTER));
    let reason = match s.code() {
        Code::ResourceExhausted => RejectReason::Overloaded,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::FailedPrecondition => RejectReason::Invalid,
        Code::PermissionDenied | Code::Unauthenticated => RejectReason::Unauthorized,
        _ => RejectReason::Unavailable,
    };
    Error::Refused {
        reason,
        message: s.message().to_owned(),
        retry_after,
    }
}

impl SessionHost for Cluster {
    fn submit(
        &self,
        space: &str,
        input: EpisodeInput,
        priority: Priority,
        _received: Instant,
        origin: Origin<'_>,
        reply: Reply<Remembered>,
    ) -> engram_core::Result<()> {
        let streams = &self.inner.streams;
        // Refusals here are answered by the session (it does not count
        // them): counted where they are decided.
        let refuse = |e: Error| {
            streams.count_rejection(RejectReason::of(&e).0);
            Err(e)
        };
        if *self.inner.stop.borrow() {
            return refuse(Error::ShuttingDown);
        }
        if streams.level() == Level::Overloaded && priority != Priority::High {
            let depth = self.pending_publishes();
            return refuse(Error::Refused {
                reason: RejectReason::Overloaded,
                message: format!(
                    "overloaded: this node has {depth} writes waiting for the cluster's log (capacity cluster.max_pending_publishes {}); retry after {} ms",
                    self.inner.cfg.max_pending_publishes,
                    OVERLOADED_RETRY_AFTER.as_millis()
                ),
                retry_after: Some(OVERLOADED_RETRY_AFTER),
            });
        }
        let permit = match self.admit(self.partition(space)) {
            Ok(permit) => permit,
            Err(s) => return refuse(refused(&s)),
        };
        let derived = input
            .id
            .is_none()
            .then(|| format!("{}:{}", origin.session_id, origin.sequence));
        let answer = Answer(Some(reply));
        let cluster = self.clone();
        let space = space.to_owned();
        tokio::spawn(async move {
            let r = cluster
                .write(&space, input, derived, Some(permit))
                .await
                .map_err(|s| refused(&s));
            if r.is_ok() {
                cluster.inner.streams.acked.fetch_add(1, Ordering::Relaxed);
            } else if let Err(e) = &r {
                cluster.inner.streams.count_rejection(RejectReason::of(e).0);
            }
            answer.send(r);
        });
        Ok(())
    }

    fn record_rejection(&self, _space: &SpaceId, reason: RejectReason) {
        self.inner.streams.count_rejection(reason);
    }
}

impl StreamOn {
    async fn open(&self, space: &str, resume: Option<&str>) -> Result<OpenedSession, StreamError> {
        let cluster = &self.cluster;
        let space_id = SpaceId::parse(space).map_err(StreamError::from)?;
        if *cluster.inner.stop.borrow() {
            return Err(StreamError::from(Error::ShuttingDown));
        }
        let dimension = match cluster.space_entry(space).await {
            Ok(Some(e)) => e.dimension as u32,
            Ok(None) if cluster.inner.engine.auto_create_spaces => 0,
            Ok(None) => return Err(StreamError::from(Error::SpaceNotFound(space.to_owned()))),
            Err(s) => return Err(StreamError::from(refused(&s))),
        };
        let host: Arc<dyn SessionHost> = Arc::new(cluster.clone());
        let (session, opened) = cluster
            .inner
            .streams
            .sessions
            .open(host, space_id, resume)
            .await
            .map_err(|e| match e {
                Error::SessionNotFound(id) => StreamError::new(
                    StreamErrorKind::NotFound,
                    format!(
                        "session '{id}' is not on this node (sessions live on the node their stream is attached to), or its resume window has passed; open a new session and resend what was not acked, with the same episode ids"
                    ),
                ),
                e => StreamError::from(e),
            })?;
        Ok(OpenedSession {
            session,
            opened,
            dimension,
        })
    }

    async fn recall(
        cluster: Cluster,
        metadata: tonic::metadata::MetadataMap,
        req: RecallRequest,
    ) -> Result<RecallBatches, StreamError> {
        let space = req.memory_space_id.clone();
        SpaceId::parse(&space).map_err(StreamError::from)?;
        let after = req.after.map(|t| pb::ConsistencyToken {
            partition: t.partition,
            sequence: t.sequence,
        });
        let route = cluster
            .route(&space, after.as_ref(), false)
            .await
            .map_err(|s| StreamError::from(refused(&s)))?;
        match route {
            Route::Local(engine) => {
                cluster
                    .ensure_local_space(&engine, &space)
                    .await
                    .map_err(|s| StreamError::from(refused(&s)))?;
                engram_core::stream::start_recall(&engine, req).map_err(StreamError::from)
            }
            Route::Forward { owner, mut client } => {
                let max = req
                    .cue
                    .max_results
                    .unwrap_or(engram_core::model::DEFAULT_MAX_RESULTS);
                let batch = if req.batch_size == 0 {
                    max
                } else {
                    req.batch_size
                };
                let message = pb::RecallRequest {
                    memory_space_id: space,
                    cue: Some(cue_message(&req.cue)),
                    batch_size: 0,
                    include_embeddings: req.include_embeddings,
                    after,
                };
                let answer = client
                    .recall(cluster.forward_request(message, &metadata))
                    .await
                    .map_err(|s| super::forward_failed(&owner, s))
                    .map_err(|s| status_error(&s))?
                    .into_inner();
                let memories = answer
                    .memories
                    .into_iter()
                    .map(recalled_memory)
                    .collect::<Vec<_>>();
                Ok(RecallBatches::new(Box::new(
                    batches(memories, batch, answer.snapshot_sequence).into_iter(),
                )))
            }
        }
    }
}

/// A failed call to the owner as the stream's recall error.
fn status_error(s: &Status) -> StreamError {
    use tonic::Code;
    let kind = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => StreamErrorKind::InvalidArgument,
        Code::NotFound => StreamErrorKind::NotFound,
        Code::ResourceExhausted => StreamErrorKind::ResourceExhausted { retry_after: None },
        Code::PermissionDenied => StreamErrorKind::PermissionDenied,
        Code::Unauthenticated => StreamErrorKind::Unauthenticated,
        Code::Internal => StreamErrorKind::Internal,
        _ => StreamErrorKind::Unavailable,
    };
    StreamError::new(kind, s.message().to_owned())
}

/// Memories in batches of `size` (one empty batch for none), the last
/// with `more = false`.
fn batches(memories: Vec<RecalledMemory>, size: usize, snapshot_sequence: u64) -> Vec<RecallBatch> {
    let size = size.max(1);
    let mut out: Vec<RecallBatch> = Vec::new();
    let mut rest = memories.into_iter().peekable();
    loop {
        let chunk: Vec<RecalledMemory> = rest.by_ref().take(size).collect();
        let more = rest.peek().is_some();
        out.push(RecallBatch {
            memories: chunk,
            more,
            snapshot_sequence,
        });
        if !more {
            return out;
        }
    }
}

/// The engine's cue as the wire's (for a recall forwarded to the owner).
fn cue_message(c: &Cue) -> pb::Cue {
    let MemoryFilter {
        tags_all,
        tags_any,
        tags_none,
        metadata,
    } = c.filter.clone();
    pb::Cue {
        embedding: c.embedding.clone(),
        max_results: c.max_results.map_or(0, |m| m as u32),
        similarity_threshold: c.similarity_threshold.unwrap_or(0.0),
        when_from: c.when_from.map(convert::timestamp),
        when_to: c.when_to.map(convert::timestamp),
        ef_search: c.ef_search.map_or(0, |e| e as u32),
        filter: Some(pb::MemoryFilter {
            tags_all,
            tags_any,
            tags_none,
            metadata: metadata
                .into_iter()
                .map(|m| pb::MetadataCondition {
                    key: m.key,
                    values: m.values,
                })
                .collect(),
        }),
        recency_half_life_seconds: c.recency_half_life_secs.unwrap_or(0.0),
    }
}

fn nanos(t: Option<prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}

/// A memory the owner recalled, as the engine's (to be encoded again by
/// the stream's transport).
fn recalled_memory(m: pb::RecalledMemory) -> RecalledMemory {
    let e = m.episode.unwrap_or_default();
    let embedding: Arc<[f32]> = e.embedding.into();
    RecalledMemory {
        episode: Arc::new(StoredEpisode {
            id: e.id,
            when_unix_nanos: nanos(e.when),
            what: e.what,
            embedding: embedding.clone(),
            encoding_confidence: e.encoding_confidence.unwrap_or(m.confidence),
            tags: e.tags,
            metadata: e.metadata.into_iter().collect(),
            server_sequence: m.server_sequence,
            committed_at_unix_nanos: 0,
            expires_at_unix_nanos: e.expires_at.map(|t| nanos(Some(t))),
        }),
        embedding,
        similarity: m.similarity,
        score: m.score,
        recency_weight: m.recency_weight,
        confidence: m.confidence,
        indexed: m.indexed,
    }
}

impl StreamHost for StreamOn {
    fn open_session<'a>(
        &'a self,
        space: &'a str,
        resume_session_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<OpenedSession, StreamError>> {
        Box::pin(self.open(space, resume_session_id))
    }

    fn queue_capacity(&self) -> u64 {
        self.cluster.inner.cfg.max_pending_publishes as u64
    }

    fn max_recalls_per_stream(&self) -> usize {
        self.cluster
            .inner
            .streams
            .sessions_cfg
            .max_recalls_per_stream
            .max(1)
    }

    fn pressure_state(&self) -> StreamState {
        StreamState::of_level(self.cluster.inner.streams.level())
    }

    fn pressure_message(&self, state: StreamState) -> String {
        let q = &self.cluster.inner.streams.queue;
        let pct = engram_core::stream::percent;
        match state {
            StreamState::Backpressure => format!(
                "slow down: this node's writes waiting for the cluster's log are over {}% of cluster.max_pending_publishes; send no faster than suggested_rate until the stream is active again",
                pct(q.slow_down_at)
            ),
            StreamState::Overloaded => format!(
                "overloaded: this node's writes waiting for the cluster's log are over {}% of cluster.max_pending_publishes; new observations are rejected with a retry-after",
                pct(q.reject_at)
            ),
            _ => format!(
                "pressure cleared: this node's writes waiting for the cluster's log are below {}% of cluster.max_pending_publishes",
                pct(q.slow_down_clear_at)
            ),
        }
    }

    fn stream_status(&self, state: StreamState, message: String) -> StreamStatus {
        let streams = &self.cluster.inner.streams;
        let capacity = self.cluster.inner.cfg.max_pending_publishes.max(1);
        let depth = self.cluster.pending_publishes();
        let suggested_rate = match state {
            StreamState::Backpressure | StreamState::Overloaded => {
                (streams.rate() / streams.attached().max(1) as f64) as f32
            }
            _ => 0.0,
        };
        StreamStatus {
            state,
            queue_depth: depth as u64,
            queue_capacity: capacity as u64,
            pressure: (depth as f64 / capacity as f64) as f32,
            suggested_rate,
            message,
        }
    }

    fn start_recall(&self, req: RecallRequest) -> RecallStart {
        RecallStart::Later(Box::pin(Self::recall(
            self.cluster.clone(),
            self.metadata.clone(),
            req,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_answer_still_answers_unavailable() {
        let (tx, rx) = std::sync::mpsc::channel();
        let answer = Answer(Some(Box::new(move |r: Result<Remembered, Error>| {
            tx.send(r).unwrap();
        })));
        drop(answer);
        let got = rx.try_recv().expect("a dropped answer replies");
        let e = got.expect_err("as a refusal");
        assert_eq!(RejectReason::of(&e).0, RejectReason::Unavailable);
    }

    #[test]
    fn refusals_keep_their_reason_and_retry_after() {
        use tonic_types::{ErrorDetails, StatusExt};
        let s = Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "lag",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        );
        let e = refused(&s);
        assert_eq!(
            RejectReason::of(&e),
            (RejectReason::Overloaded, Some(Duration::from_secs(1)))
        );
        assert_eq!(e.to_string(), "lag");
        let e = refused(&Status::invalid_argument("invalid episode.embedding: x"));
        assert_eq!(RejectReason::of(&e), (RejectReason::Invalid, None));
        assert_eq!(e.to_string(), "invalid episode.embedding: x");
        let e = refused(&Status::unavailable("log"));
        assert_eq!(RejectReason::of(&e).0, RejectReason::Unavailable);
    }

    #[test]
    fn forwarded_results_are_batched_in_order() {
        let m = |i: u64| {
            recalled_memory(pb::RecalledMemory {
                episode: Some(pb::Episode {
                    id: format!("m{i}"),
                    ..Default::default()
                }),
                server_sequence: i,
                ..Default::default()
            })
        };
        let b = batches((1..=5).map(m).collect(), 2, 9);
        let ids: Vec<Vec<String>> = b
            .iter()
            .map(|b| b.memories.iter().map(|m| m.episode.id.clone()).collect())
            .collect();
        assert_eq!(ids, [vec!["m1", "m2"], vec!["m3", "m4"], vec!["m5"]]);
        assert_eq!(
            b.iter().map(|b| b.more).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!(b.iter().all(|b| b.snapshot_sequence == 9));
        let empty = batches(Vec::new(), 3, 0);
        assert_eq!(empty.len(), 1);
        assert!(!empty[0].more && empty[0].memories.is_empty());
    }
}
