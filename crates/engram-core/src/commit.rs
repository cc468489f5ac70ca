//! The group-commit thread: where the WAL is synced.
//!
//! Every state change goes through this one thread, in arrival order:
//! 1. *prepare* each command of a batch: validate it against the space
//!    (dimension, duplicate id), assign the next server sequence, append the
//!    record to the WAL;
//! 2. *sync* once for the whole batch, as the sync policy says;
//! 3. *apply* each change to memory (visible to recall from here) and hand
//!    new episodes to the indexing queue;
//! 4. *answer* every command of the batch, in order.
//!
//! So an ack never leaves before its record is durable (per policy) and
//! visible, and sequence order, WAL order and visibility order are one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;

use crate::error::RejectReason;
use crate::error::{Error, Result};
use crate::fault::Faults;
use crate::index::HnswParams;
use crate::indexer::{IndexTask, Queue, QueueReservation};
use crate::metrics::Metrics;
use crate::model::{
    now_unix_nanos, Clock, Expiry, Remembered, SpaceId, StoredEpisode, ValidEpisode, VectorStorage,
    MAX_DIMENSION,
};
use crate::queue::Priority;
use crate::record::WalRecord;
use crate::space::Space;
use crate::wal::{Lsn, SyncPolicy, Wal};

/// Where an answer goes: usually a oneshot to the caller; a stream session
/// also records the answer (so a resumed session knows every outcome, even
/// one whose caller went away).
/// Called once with the answer to a submitted write.
pub type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A reply that sends to a oneshot channel.
pub(crate) fn to_channel<T: Send + 'static>(tx: oneshot::Sender<Result<T>>) -> Reply<T> {
    Box::new(move |r| {
        // The caller may have gone away; the change is committed anyway.
        let _ = tx.send(r);
    })
}

/// What the commit thread is asked to do.
pub(crate) enum Command {
    Observe {
        space: SpaceId,
        episode: ValidEpisode,
        /// Its place in the indexing queue (handed back if it is dropped).
        reservation: QueueReservation,
        /// Create the space (with the episode's dimension) if it is missing.
        auto_create: bool,
        /// When it was admitted; `Some` only when metrics are on. Its
        /// outcome is recorded here, where the answer is decided, so the
        /// submit path pays no extra allocation for metrics.
        admitted: Option<Instant>,
        reply: Reply<Remembered>,
    },
    CreateSpace {
        space: SpaceId,
        dimension: usize,
        /// `None`: the engine's default (`engine.vector_storage`); an
        /// existing space with any storage then matches.
        vector_storage: Option<VectorStorage>,
        /// `None`: not given (an existing space with any TTL matches; a new
        /// one has none); `Some(None)`: no TTL.
        default_ttl: Option<Option<Duration>>,
        reply: Reply<bool>,
    },
    /// Purge memories that expired (the background purge): logged, then
    /// removed like forgotten ones. Answers how many were removed.
    Expire {
        space: SpaceId,
        server_sequences: Vec<u64>,
        reply: Reply<usize>,
    },
    Forget {
        space: SpaceId,
        memory_id: String,
        reply: Reply<()>,
    },
    DeleteSpace {
        space: SpaceId,
        reply: Reply<()>,
    },
    /// Barrier: commit everything before it, rotate the WAL, and capture
    /// the state that a snapshot file will hold.
    CaptureSnapshot {
        reply: Reply<Option<Capture>>,
    },
    /// Delete WAL segments that a written snapshot covers.
    TruncateWal {
        before: Lsn,
        reply: Reply<usize>,
    },
    /// Commit what is queued, sync, and end the thread.
    Stop,
}

/// A consistent cut of the state: every record below `next_lsn`.
pub struct Capture {
    pub next_lsn: Lsn,
    pub spaces: Vec<SpaceCapture>,
}

pub struct SpaceCapture {
    pub space: Arc<Space>,
    pub last_seq: u64,
    pub episodes: Vec<Arc<StoredEpisode>>,
}

/// The registry of spaces, as both the commit thread and readers see it.
pub(crate) type SpaceMap = parking_lot::RwLock<HashMap<SpaceId, Arc<Space>>>;

/// State owned by the commit thread (and, before it starts, by recovery).
/// How the commit thread works (from [`crate::EngineConfig`]).
pub(crate) struct CommitSettings {
    pub policy: SyncPolicy,
    pub sync_interval: Duration,
    pub max_batch: usize,
    pub params: HnswParams,
    /// Vector storage of spaces created without one (explicitly or by
    /// auto-creation).
    pub vector_storage: VectorStorage,
    /// Where compact spaces create their vector files.
    pub vector_dir: std::path::PathBuf,
    /// See [`crate::EngineConfig::max_spaces`].
    pub max_spaces: usize,
    pub faults: Option<Arc<Faults>>,
    pub metrics: Option<Arc<Metrics>>,
    /// The clock expiry reads.
    pub clock: Clock,
}

/// State owned by the commit thread (and, before it starts, by recovery,
/// which is the only code that builds one: see `recovery.rs`).
pub(crate) struct Committer {
    wal: Wal,
    policy: SyncPolicy,
    sync_interval: Duration,
    max_batch: usize,
    params: HnswParams,
    vector_storage: VectorStorage,
    vector_dir: std::path::PathBuf,
    /// The commit thread's view of the spaces: includes changes prepared in
    /// the current batch that readers cannot see yet.
    spaces: HashMap<SpaceId, Arc<Space>>,
    published: Arc<SpaceMap>,
    queue: Arc<Queue>,
    faults: Option<Arc<Faults>>,
    metrics: Option<Arc<Metrics>>,
    max_spaces: usize,
    clock: Clock,
    /// LSN at which the last snapshot was cut (nothing new since → skip).
    last_capture_lsn: Lsn,
    /// Set after a failed WAL write or sync: no further writes are taken.
    failed: Option<String>,
    dirty_since_sync: bool,
    last_sync: Instant,
    /// Reused buffer of a batch's answers.
    answers: Vec<Answered>,
}

/// Answers sent per chunk of an applied batch: bounds how long the first
/// answer of a large batch waits for the rest to be applied (~1 µs each).
const ANSWER_CHUNK: usize = 64;

/// An applied change's answer, waiting for the end of its chunk.
enum Answered {
    Observe(Reply<Remembered>, Remembered),
    Created(Reply<bool>),
    Done(Reply<()>),
    Call(Box<dyn FnOnce() + Send>),
}

impl Answered {
    fn send(self) {
        match self {
            Answered::Observe(reply, done) => reply(Ok(done)),
            Answered::Created(reply) => reply(Ok(true)),
            Answered::Done(reply) => reply(Ok(())),
            Answered::Call(f) => f(),
        }
    }
}

/// A change prepared in this batch, waiting for sync before it applies.
enum Prepared {
    Observe {
        space: Arc<Space>,
        episode: Arc<StoredEpisode>,
        reservation: QueueReservation,
        admitted: Option<Instant>,
        reply: Reply<Remembered>,
    },
    /// An idempotent retry: the original's answer, nothing stored. It
    /// waits for the batch's sync like the rest, so it is never acked
    /// before its original (which may be in this batch) is durable.
    Duplicate {
        space: Arc<Space>,
        done: Remembered,
        admitted: Option<Instant>,
        reply: Reply<Remembered>,
    },
    Created(Arc<Space>, Reply<bool>),
    Forgotten(Arc<Space>, u64, Reply<()>),
    Expired(Arc<Space>, Vec<u64>, Reply<usize>),
    Deleted(Arc<Space>, Reply<()>),
    /// An answer that needs nothing applied (an error, a duplicate); it
    /// still waits for the batch's sync so answers keep their order and a
    /// duplicate is never acked before its original is durable.
    Answer(Box<dyn FnOnce() + Send>),
}

impl Committer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        wal: Wal,
        settings: CommitSettings,
        published: Arc<SpaceMap>,
        queue: Arc<Queue>,
    ) -> Self {
        let CommitSettings {
            policy,
            sync_interval,
            max_batch,
            params,
            vector_storage,
            vector_dir,
            max_spaces,
            faults,
            metrics,
            clock,
        } = settings;
        let last_capture_lsn = wal.next_lsn();
        Committer {
            wal,
            policy,
            sync_interval,
            max_batch: max_batch.max(1),
            params,
            vector_storage,
            vector_dir,
            spaces: HashMap::new(),
            published,
            queue,
            faults,
            metrics,
            max_spaces,
            clock,
            last_capture_lsn,
            failed: None,
            dirty_since_sync: false,
            last_sync: Instant::now(),
            answers: Vec::new(),
        }
    }

    /// Replays one WAL record at recovery (no answers, no admission).
    pub fn replay(&mut self, record: WalRecord) -> Result<()> {
        match record {
            WalRecord::CreateSpace { space, dimension } => {
                self.replay_create(space, dimension, VectorStorage::Memory)?;
            }
            WalRecord::CreateSpaceWith {
                space,
                dimension,
                vector_storage,
            } => {
                self.replay_create(space, dimension, vector_storage)?;
            }
            WalRecord::CreateSpaceWithTtl {
                space,
                dimension,
                vector_storage,
                default_ttl_nanos,
            } => {
                self.replay_create(space.clone(), dimension, vector_storage)?;
                if let Some(s) = self.spaces.get(&space) {
                    s.set_default_ttl(
                        (default_ttl_nanos > 0).then(|| Duration::from_nanos(default_ttl_nanos)),
                    );
                }
            }
            WalRecord::Expire {
                space,
                server_sequences,
            } => {
                if let Some(s) = self.spaces.get(&space) {
                    for seq in server_sequences {
                        let id = s.read().episode(seq).map(|e| e.id.clone());
                        if let Some(id) = id {
                            s.commit_meta().by_id.remove(&id);
                        }
                        s.apply_forget(seq);
                    }
                }
            }
            WalRecord::ObserveExpiring {
                space,
                mut episode,
                expires_at_unix_nanos,
            } => {
                episode.expires_at_unix_nanos = Some(expires_at_unix_nanos);
                self.replay(WalRecord::Observe { space, episode })?;
            }
            WalRecord::Observe { space, episode } => {
                let s = self.spaces.get(&space).cloned().ok_or_else(|| {
                    Error::Storage(format!(
                        "WAL observes into space '{space}' that was never created"
                    ))
                })?;
                {
                    let mut meta = s.commit_meta();
                    // The commit thread gives a space's sequences one by
                    // one, each in its own record, to vectors of the
                    // space's dimension: a record that breaks either is
                    // damage, and applying it would break the space (its
                    // table of episodes is indexed by sequence).
                    if meta.last_seq.checked_add(1) != Some(episode.server_sequence) {
                        return Err(Error::Storage(format!(
                            "WAL observes sequence {} into space '{space}', whose next sequence is {}",
                            episode.server_sequence,
                            meta.last_seq.wrapping_add(1)
                        )));
                    }
                    if episode.embedding.len() != s.dimension() {
                        return Err(Error::Storage(format!(
                            "WAL observes a vector of {} dimensions into space '{space}' of {}",
                            episode.embedding.len(),
                            s.dimension()
                        )));
                    }
                    meta.by_id.insert(&episode.id, episode.server_sequence);
                    meta.last_seq = episode.server_sequence;
                }
                self.apply_observe(&s, Arc::new(episode), None);
            }
            WalRecord::Forget {
                space,
                server_sequence,
            } => {
                if let Some(s) = self.spaces.get(&space) {
                    let id = s.read().episode(server_sequence).map(|e| e.id.clone());
                    if let Some(id) = id {
                        s.commit_meta().by_id.remove(&id);
                    }
                    s.apply_forget(server_sequence);
                }
            }
            WalRecord::DeleteSpace { space } => {
                if let Some(s) = self.spaces.remove(&space) {
                    s.mark_deleted();
                }
            }
        }
        Ok(())
    }

    /// Adds a space loaded from a snapshot.
    pub fn restore_space(&mut self, space: Arc<Space>) {
        self.attach_metrics(&space);
        self.spaces.insert(space.id().clone(), space);
    }

    fn attach_metrics(&self, space: &Space) {
        if let Some(m) = &self.metrics {
            space.attach_metrics(m.space(space.id()));
        }
    }

    /// Syncs the WAL, timing it for the metrics.
    fn timed_sync(&mut self) -> crate::wal::Result<()> {
        let started = Instant::now();
        if let Some(f) = &self.faults {
            if f.take_sync_failure() {
                return Err(crate::wal::WalError::Io {
                    action: "sync segment (injected fault)",
                    path: std::path::PathBuf::from("wal"),
                    source: std::io::Error::other("injected fsync failure"),
                });
            }
        }
        let r = self.wal.sync();
        if let Some(m) = &self.metrics {
            m.wal_sync().observe(started.elapsed().as_secs_f64());
        }
        r
    }

    /// The LSN the last snapshot was cut at (end of recovery: the loaded
    /// snapshot's, so replayed records make the next snapshot run).
    pub fn set_last_capture(&mut self, lsn: Lsn) {
        self.last_capture_lsn = lsn;
    }

    /// Makes the commit thread's view the readers' view (end of recovery).
    pub fn publish_all(&self) {
        *self.published.write() = self.spaces.clone();
    }

    /// Makes an episode visible and queues it for indexing in its reserved
    /// place. At recovery (`reservation` None) it enters the queue without
    /// one (nothing replayed is dropped, even above capacity).
    pub fn apply_observe(
        &self,
        space: &Arc<Space>,
        episode: Arc<StoredEpisode>,
        reservation: Option<QueueReservation>,
    ) {
        if !space.apply_observe(episode.clone()) {
            // Already indexed (a loaded snapshot holds it): the place, if
            // any, goes back as the reservation drops.
            return;
        }
        let task = IndexTask {
            space: space.clone(),
            episode,
            failures: 0,
        };
        match reservation {
            Some(r) => r.push(task),
            None => self
                .queue
                .push_unreserved(space.id(), Priority::Normal, task),
        }
    }

    /// The thread's main loop.
    pub fn run(mut self, rx: Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let wait = if self.dirty_since_sync && self.policy == SyncPolicy::Interval {
                self.sync_interval.saturating_sub(self.last_sync.elapsed())
            } else {
                Duration::from_secs(1)
            };
            match rx.recv_timeout(wait) {
                Ok(cmd) => batch.push(cmd),
                Err(RecvTimeoutError::Timeout) => {
                    self.interval_sync();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            if !self.process(&mut batch) {
                break;
            }
            // Under sustained load the receive above never times out, so
            // the interval sync must also run here: `interval` promises an
            // fsync at least every `sync_interval`, whatever the load.
            if self.last_sync.elapsed() >= self.sync_interval {
                self.interval_sync();
            }
        }
        if let Err(e) = self.wal.sync() {
            tracing::error!(error = %e, "final WAL sync failed");
        }
    }

    /// Handles one batch; false when a Stop was seen.
    fn process(&mut self, batch: &mut Vec<Command>) -> bool {
        let mut prepared = Vec::with_capacity(batch.len());
        let mut keep_running = true;
        for cmd in batch.drain(..) {
            match cmd {
                Command::CaptureSnapshot { reply } => {
                    self.commit(&mut prepared);
                    reply(self.capture());
                }
                Command::TruncateWal { before, reply } => {
                    self.commit(&mut prepared);
                    reply(self.wal.truncate_before(before).map_err(Error::from));
                }
                Command::Stop => keep_running = false,
                other => self.prepare(other, &mut prepared),
            }
        }
        self.commit(&mut prepared);
        keep_running
    }

    fn prepare(&mut self, cmd: Command, out: &mut Vec<Prepared>) {
        if let Some(why) = &self.failed {
            let err = Error::Storage(format!(
                "the write-ahead log failed earlier ({why}); no writes are accepted until the server is restarted"
            ));
            fail(cmd, err, self.metrics.as_deref());
            return;
        }
        match cmd {
            Command::Observe {
                space,
                episode,
                reservation,
                auto_create,
                admitted,
                reply,
            } => {
                let obs = Observation {
                    space,
                    reservation,
                    admitted,
                    reply,
                };
                self.prepare_observe(obs, episode, auto_create, out)
            }
            Command::CreateSpace {
                space,
                dimension,
                vector_storage,
                default_ttl,
                reply,
            } => match self.spaces.get(&space) {
                Some(s)
                    if s.dimension() == dimension
                        && vector_storage.is_none_or(|v| v == s.vector_storage())
                        && default_ttl.is_none_or(|t| t == s.default_ttl()) =>
                {
                    answer(out, reply, Ok(false))
                }
                Some(s) => {
                    let err = Error::SpaceExists {
                        space: space.to_string(),
                        dimension: s.dimension(),
                        vector_storage: s.vector_storage().as_str(),
                        default_ttl_seconds: s.default_ttl().map_or(0.0, |t| t.as_secs_f64()),
                    };
                    answer(out, reply, Err(err))
                }
                None => {
                    match self.create_space(space, dimension, vector_storage, default_ttl.flatten())
                    {
                        Ok(s) => out.push(Prepared::Created(s, reply)),
                        Err(e) => answer(out, reply, Err(e)),
                    }
                }
            },
            Command::Forget {
                space,
                memory_id,
                reply,
            } => {
                let Some(s) = self.spaces.get(&space).cloned() else {
                    return answer(out, reply, Err(Error::SpaceNotFound(space.to_string())));
                };
                let Some(seq) = s.commit_meta().by_id.get(&memory_id).copied() else {
                    return answer(
                        out,
                        reply,
                        Err(Error::MemoryNotFound {
                            space: space.to_string(),
                            memory_id,
                        }),
                    );
                };
                if self.append(&WalRecord::Forget {
                    space,
                    server_sequence: seq,
                }) {
                    s.commit_meta().by_id.remove(&memory_id);
                    out.push(Prepared::Forgotten(s, seq, reply));
                } else {
                    answer(out, reply, Err(self.storage_error()));
                }
            }
            Command::Expire {
                space,
                mut server_sequences,
                reply,
            } => {
                let Some(s) = self.spaces.get(&space).cloned() else {
                    return answer(out, reply, Ok(0));
                };
                // Only what is still live and expired by now: a memory
                // forgotten meanwhile is not logged again.
                let now = self.clock.now_unix_nanos();
                {
                    let st = s.read();
                    server_sequences
                        .retain(|&seq| st.episode(seq).is_some_and(|e| e.expired_at(now)));
                }
                if server_sequences.is_empty() {
                    return answer(out, reply, Ok(0));
                }
                if self.append(&WalRecord::Expire {
                    space,
                    server_sequences: server_sequences.clone(),
                }) {
                    let ids: Vec<(String, u64)> = {
                        let st = s.read();
                        server_sequences
                            .iter()
                            .filter_map(|&seq| st.episode(seq).map(|e| (e.id.clone(), seq)))
                            .collect()
                    };
                    let mut meta = s.commit_meta();
                    for (id, seq) in ids {
                        if meta.by_id.get(&id) == Some(&seq) {
                            meta.by_id.remove(&id);
                        }
                    }
                    drop(meta);
                    out.push(Prepared::Expired(s, server_sequences, reply));
                } else {
                    answer(out, reply, Err(self.storage_error()));
                }
            }
            Command::DeleteSpace { space, reply } => {
                if !self.spaces.contains_key(&space) {
                    return answer(out, reply, Err(Error::SpaceNotFound(space.to_string())));
                }
                if self.append(&WalRecord::DeleteSpace {
                    space: space.clone(),
                }) {
                    let s = self.spaces.remove(&space).expect("checked above");
                    out.push(Prepared::Deleted(s, reply));
                } else {
                    answer(out, reply, Err(self.storage_error()));
                }
            }
            Command::CaptureSnapshot { .. } | Command::TruncateWal { .. } | Command::Stop => {
                unreachable!("barriers are handled by process")
            }
        }
    }

    fn prepare_observe(
        &mut self,
        obs: Observation,
        ep: ValidEpisode,
        auto_create: bool,
        out: &mut Vec<Prepared>,
    ) {
        let Observation {
            space,
            reservation,
            admitted,
            reply,
        } = obs;
        // Rejected: the reservation drops here, and its place goes back.
        let reject = |this: &Self, out: &mut Vec<Prepared>, reply, err: Error| {
            count_rejected(this.metrics.as_deref(), &space, admitted, &err);
            answer(out, reply, Err(err));
        };
        let s = match self.spaces.get(&space) {
            Some(s) => s.clone(),
            None if auto_create => {
                match self.create_space(space.clone(), ep.embedding.len(), None, None) {
                    Ok(s) => {
                        // Readers see the new space once this batch is synced.
                        out.push(Prepared::Created(s.clone(), Box::new(|_| {})));
                        s
                    }
                    Err(e) => return reject(self, out, reply, e),
                }
            }
            None => {
                let err = Error::SpaceNotFound(space.to_string());
                return reject(self, out, reply, err);
            }
        };
        if ep.embedding.len() != s.dimension() {
            let err = Error::DimensionMismatch {
                space: space.to_string(),
                expected: s.dimension(),
                got: ep.embedding.len(),
            };
            return reject(self, out, reply, err);
        }
        let mut meta = s.commit_meta();
        if let Some(id) = &ep.id {
            if let Some(&seq) = meta.by_id.get(id) {
                drop(meta);
                // Idempotent retry: the original's answer, nothing stored.
                let original = s.read().episode(seq).map(|e| e.committed_at_unix_nanos);
                let done = Remembered {
                    memory_id: id.clone(),
                    server_sequence: seq,
                    committed_at_unix_nanos: original.unwrap_or_else(now_unix_nanos),
                    duplicate: true,
                    token: None,
                };
                drop(reservation);
                out.push(Prepared::Duplicate {
                    space: s,
                    done,
                    admitted,
                    reply,
                });
                return;
            }
        }
        let now = self.clock.now_unix_nanos();
        let expires_at = match ep.expiry {
            Some(Expiry::At(t)) if t <= now => {
                drop(meta);
                let err = Error::invalid(
                    "episode.expires_at",
                    format!(
                        "is {}, not after the server's time {}; an expiry must be in the future",
                        crate::model::format_unix_nanos(t),
                        crate::model::format_unix_nanos(now)
                    ),
                );
                return reject(self, out, reply, err);
            }
            Some(Expiry::At(t)) => Some(t),
            Some(Expiry::After(ttl)) => Some(expiry_after(now, ttl)),
            None => s.default_ttl().map(|ttl| expiry_after(now, ttl)),
        };
        let seq = meta.last_seq + 1;
        let episode = StoredEpisode {
            id: ep.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            when_unix_nanos: ep.when_unix_nanos,
            what: ep.what,
            embedding: ep.embedding,
            encoding_confidence: ep.encoding_confidence,
            tags: ep.tags,
            metadata: ep.metadata,
            server_sequence: seq,
            committed_at_unix_nanos: now_unix_nanos(),
            expires_at_unix_nanos: None,
        };
        let record = match expires_at {
            None => WalRecord::Observe {
                space: space.clone(),
                episode,
            },
            Some(t) => WalRecord::ObserveExpiring {
                space: space.clone(),
                episode,
                expires_at_unix_nanos: t,
            },
        };
        if !self.append(&record) {
            drop(meta);
            return reject(self, out, reply, self.storage_error());
        }
        let (WalRecord::Observe { mut episode, .. }
        | WalRecord::ObserveExpiring { mut episode, .. }) = record
        else {
            unreachable!()
        };
        episode.expires_at_unix_nanos = expires_at;
        meta.last_seq = seq;
        meta.by_id.insert(&episode.id, seq);
        drop(meta);
        out.push(Prepared::Observe {
            space: s,
            episode: Arc::new(episode),
            reservation,
            admitted,
            reply,
        });
    }

    /// Creates a space (WAL first), unless `max_spaces` are there already.
    /// Its vector file (compact storage) is created before anything is
    /// logged, so a failure there leaves no trace.
    fn create_space(
        &mut self,
        space: SpaceId,
        dimension: usize,
        vector_storage: Option<VectorStorage>,
        default_ttl: Option<Duration>,
    ) -> Result<Arc<Space>> {
        if self.spaces.len() >= self.max_spaces {
            return Err(Error::LimitReached {
                what: "memory spaces",
                limit: self.max_spaces,
                setting: "engine.max_spaces",
            });
        }
        let vector_storage = vector_storage.unwrap_or(self.vector_storage);
        let s = self.new_space(&space, dimension, vector_storage)?;
        s.set_default_ttl(default_ttl);
        // Spaces in RAM without a TTL keep the record every build reads.
        let record = match (vector_storage, default_ttl) {
            (_, Some(ttl)) => WalRecord::CreateSpaceWithTtl {
                space: space.clone(),
                dimension,
                vector_storage,
                default_ttl_nanos: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX).max(1),
            },
            (VectorStorage::Memory, None) => WalRecord::CreateSpace {
                space: space.clone(),
                dimension,
            },
            (VectorStorage::Compact, None) => WalRecord::CreateSpaceWith {
                space: space.clone(),
                dimension,
                vector_storage,
            },
        };
        if !self.append(&record) {
            return Err(self.storage_error());
        }
        self.register(space, s.clone());
        Ok(s)
    }

    /// A space created by a replayed WAL record.
    fn replay_create(
        &mut self,
        space: SpaceId,
        dimension: usize,
        vector_storage: VectorStorage,
    ) -> Result<()> {
        // Every build has created spaces of 1 to MAX_DIMENSION dimensions
        // only; anything else is damage (0 would fail the index's assert).
        if !(1..=MAX_DIMENSION).contains(&dimension) {
            return Err(Error::Storage(format!(
                "WAL creates space '{space}' with {dimension} dimensions, outside 1..={MAX_DIMENSION}"
            )));
        }
        let s = self.new_space(&space, dimension, vector_storage)?;
        self.register(space, s);
        Ok(())
    }

    /// A new, unregistered space with this engine's index parameters (a
    /// compact one creates its vector file here, before anything is logged).
    fn new_space(
        &self,
        space: &SpaceId,
        dimension: usize,
        vector_storage: VectorStorage,
    ) -> Result<Arc<Space>> {
        Ok(Arc::new(Space::create(
            space.clone(),
            dimension,
            self.params.clone(),
            vector_storage,
            &self.vector_dir,
        )?))
    }

    /// Makes a space known to the commit thread, with its metrics.
    fn register(&mut self, space: SpaceId, s: Arc<Space>) {
        self.attach_metrics(&s);
        self.spaces.insert(space, s);
    }

    /// Appends a record; false (and the engine marked failed) on error.
    fn append(&mut self, record: &WalRecord) -> bool {
        match self.wal.append(&record.encode()) {
            Ok(_) => {
                self.dirty_since_sync = true;
                true
            }
            Err(e) => {
                self.fail_wal(e.to_string());
                false
            }
        }
    }

    fn fail_wal(&mut self, why: String) {
        tracing::error!(error = %why, "write-ahead log failure; refusing further writes");
        self.failed = Some(why);
    }

    fn storage_error(&self) -> Error {
        Error::Storage(
            self.failed
                .clone()
                .unwrap_or_else(|| "write-ahead log failure".into()),
        )
    }

    /// Makes the prepared changes durable per policy, applies, answers.
    fn commit(&mut self, prepared: &mut Vec<Prepared>) {
        if prepared.is_empty() {
            return;
        }
        if let Some(f) = &self.faults {
            f.before_commit();
        }
        if self.dirty_since_sync && self.failed.is_none() {
            let res = match self.policy {
                SyncPolicy::Always => self.timed_sync().map(|_| {
                    self.dirty_since_sync = false;
                    self.last_sync = Instant::now();
                }),
                // The write reaches the OS before the ack, so a process crash
                // loses nothing; the timer (or none) decides about fsync.
                SyncPolicy::Interval | SyncPolicy::None => self.wal.flush(),
            };
            if let Err(e) = res {
                self.fail_wal(e.to_string());
            }
        }
        if self.failed.is_some() {
            // Nothing of this batch is known durable: apply nothing. But
            // every write prepared here had its record appended before the
            // WAL failed (in this batch's sync, or in a later append or
            // segment rotation, which syncs what came before it), so it may
            // be on disk and replayed at the next start: its outcome is
            // unknown, and the answer says so (resend it with the same id
            // after the restart; it is answered `duplicate` if it was
            // stored). Writes that came after the failure were refused in
            // `prepare` and never reach this point.
            for p in prepared.drain(..) {
                let err = Error::Storage(format!(
                    "the write-ahead log failed ({}); this write's outcome is unknown: it may be stored. \
                     No writes are accepted until the server is restarted; then resend it with the same id \
                     (answered duplicate if it was stored)",
                    self.failed.as_deref().unwrap_or("unknown error")
                ));
                match p {
                    Prepared::Observe {
                        space,
                        admitted,
                        reply,
                        ..
                    } => {
                        // Its reservation drops with it: the place goes back.
                        count_rejected(self.metrics.as_deref(), space.id(), admitted, &err);
                        reply(Err(err));
                    }
                    Prepared::Duplicate {
                        space,
                        admitted,
                        reply,
                        ..
                    } => {
                        count_rejected(self.metrics.as_deref(), space.id(), admitted, &err);
                        reply(Err(err));
                    }
                    Prepared::Created(_, r) => r(Err(err)),
                    Prepared::Forgotten(_, _, r) | Prepared::Deleted(_, r) => r(Err(err)),
                    Prepared::Expired(_, _, r) => r(Err(err)),
                    Prepared::Answer(f) => f(),
                }
            }
            return;
        }
        // Applied (visible to recall) and answered in chunks: the chunk's
        // metrics are published before its answers leave, so an ack is never
        // seen before what it counts.
        let mut meter = AcceptMeter::default();
        let mut answers = std::mem::take(&mut self.answers);
        for p in prepared.drain(..) {
            let answer = match p {
                Prepared::Observe {
                    space,
                    episode,
                    reservation,
                    admitted,
                    reply,
                } => {
                    let priority = reservation.priority();
                    let done = Remembered {
                        memory_id: episode.id.clone(),
                        server_sequence: episode.server_sequence,
                        committed_at_unix_nanos: episode.committed_at_unix_nanos,
                        duplicate: false,
                        token: None,
                    };
                    self.apply_observe(&space, episode, Some(reservation));
                    if let Some(admitted) = admitted {
                        meter.accepted(&space, priority, admitted);
                    }
                    Answered::Observe(reply, done)
                }
                Prepared::Duplicate {
                    space,
                    done,
                    admitted,
                    reply,
                    ..
                } => {
                    if let Some(admitted) = admitted {
                        meter.duplicate(&space, admitted);
                    }
                    Answered::Observe(reply, done)
                }
                Prepared::Created(space, reply) => {
                    self.published.write().insert(space.id().clone(), space);
                    Answered::Created(reply)
                }
                Prepared::Forgotten(space, seq, reply) => {
                    space.apply_forget(seq);
                    Answered::Done(reply)
                }
                Prepared::Expired(space, seqs, reply) => {
                    let removed = seqs.iter().filter(|&&seq| space.apply_forget(seq)).count();
                    space.count_expired(removed as u64);
                    if let Some(m) = space.metrics() {
                        m.expired.inc_by(removed as u64);
                    }
                    Answered::Call(Box::new(move || reply(Ok(removed))))
                }
                Prepared::Deleted(space, reply) => {
                    space.mark_deleted();
                    let mut published = self.published.write();
                    if published
                        .get(space.id())
                        .is_some_and(|s| Arc::ptr_eq(s, &space))
                    {
                        published.remove(space.id());
                    }
                    Answered::Done(reply)
                }
                Prepared::Answer(f) => Answered::Call(f),
            };
            answers.push(answer);
            if answers.len() == ANSWER_CHUNK {
                meter.flush();
                answers.drain(..).for_each(Answered::send);
            }
        }
        meter.flush();
        answers.drain(..).for_each(Answered::send);
        self.answers = answers;
    }

    fn interval_sync(&mut self) {
        if self.dirty_since_sync && self.policy == SyncPolicy::Interval && self.failed.is_none() {
            match self.timed_sync() {
                Ok(()) => {
                    self.dirty_since_sync = false;
                    self.last_sync = Instant::now();
                }
                Err(e) => self.fail_wal(e.to_string()),
            }
        }
    }

    fn capture(&mut self) -> Result<Option<Capture>> {
        if let Some(why) = &self.failed {
            return Err(Error::Storage(why.clone()));
        }
        if self.wal.next_lsn() == self.last_capture_lsn {
            return Ok(None);
        }
        self.wal.sync()?;
        self.dirty_since_sync = false;
        let next_lsn = self.wal.rotate()?;
        self.last_capture_lsn = next_lsn;
        let mut spaces: Vec<_> = self
            .spaces
            .values()
            .map(|s| SpaceCapture {
                space: s.clone(),
                last_seq: s.commit_meta().last_seq,
                episodes: s.read().live_episodes().cloned().collect(),
            })
            .collect();
        spaces.sort_by(|a, b| a.space.id().cmp(b.space.id()));
        Ok(Some(Capture { next_lsn, spaces }))
    }
}

/// `now + ttl` in Unix nanoseconds, saturating.
fn expiry_after(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX))
}

fn answer<T: Send + 'static>(out: &mut Vec<Prepared>, reply: Reply<T>, result: Result<T>) {
    out.push(Prepared::Answer(Box::new(move || {
        reply(result);
    })));
}

/// An observation on its way through prepare, with what its answer needs.
struct Observation {
    space: SpaceId,
    reservation: QueueReservation,
    admitted: Option<Instant>,
    reply: Reply<Remembered>,
}

/// Records the accepted observations of one answer chunk: one clock read
/// for the chunk (its WAL write and sync are done, and its answers leave
/// within tens of microseconds), latencies
/// gathered in a local histogram and counts summed, then published with a
/// few atomic operations per space instead of several per observation.
/// The metrics-overhead benchmark is what this is for.
#[derive(Default)]
struct AcceptMeter {
    now: Option<Instant>,
    run: Option<MeterRun>,
}

/// Consecutive accepted observations of one space.
struct MeterRun {
    space: Arc<Space>,
    latency: prometheus::local::LocalHistogram,
    accepted: [u64; 3],
    duplicates: u64,
}

impl AcceptMeter {
    /// An idempotent retry: its latency is an ack's, but nothing was stored.
    fn duplicate(&mut self, space: &Arc<Space>, admitted: Instant) {
        self.answered(space, admitted);
        if let Some(run) = &mut self.run {
            run.duplicates += 1;
        }
    }

    fn accepted(&mut self, space: &Arc<Space>, priority: Priority, admitted: Instant) {
        self.answered(space, admitted);
        if let Some(run) = &mut self.run {
            run.accepted[priority.index()] += 1;
        }
    }

    fn answered(&mut self, space: &Arc<Space>, admitted: Instant) {
        let now = *self.now.get_or_insert_with(Instant::now);
        if !self
            .run
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.space, space))
        {
            self.flush();
            let Some(m) = space.metrics() else { return };
            self.run = Some(MeterRun {
                space: space.clone(),
                latency: m.observation_latency.local(),
                accepted: [0; 3],
                duplicates: 0,
            });
        }
        if let Some(run) = &mut self.run {
            run.latency
                .observe(now.saturating_duration_since(admitted).as_secs_f64());
        }
    }

    /// Publishes what was gathered; the next chunk reads the clock anew.
    fn flush(&mut self) {
        self.now = None;
        let Some(run) = self.run.take() else { return };
        run.latency.flush();
        if let Some(m) = run.space.metrics() {
            for p in Priority::ALL {
                m.accepted_many(p, run.accepted[p.index()]);
            }
            m.duplicates_many(run.duplicates);
        }
    }
}

/// Counts a rejection decided on this thread (`admitted` is `Some` only
/// when metrics are on). Rare, so the labelled lookup is fine here.
fn count_rejected(
    metrics: Option<&Metrics>,
    space: &SpaceId,
    admitted: Option<Instant>,
    err: &Error,
) {
    if let (Some(m), Some(_)) = (metrics, admitted) {
        m.rejected(space, RejectReason::of(err).0);
    }
}

/// Answers a command with an error without preparing it.
fn fail(cmd: Command, err: Error, metrics: Option<&Metrics>) {
    match cmd {
        Command::Observe {
            reply,
            space,
            admitted,
            ..
        } => {
            // The reservation drops with the command: the place goes back.
            count_rejected(metrics, &space, admitted, &err);
            reply(Err(err));
        }
        Command::CreateSpace { reply, .. } => reply(Err(err)),
        Command::Forget { reply, .. } | Command::DeleteSpace { reply, .. } => reply(Err(err)),
        Command::Expire { reply, .. } => reply(Err(err)),
        Command::CaptureSnapshot { reply } => reply(Err(err)),
        Command::TruncateWal { reply, .. } => reply(Err(err)),
        Command::Stop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EpisodeInput;
    use crate::queue::QueueConfig;
    use crate::wal::WalOptions;

    fn committer(dir: &std::path::Path) -> Committer {
        let opts = WalOptions {
            segment_bytes: 1 << 20,
        };
        let (wal, _) = Wal::open(dir, opts, 1).unwrap();
        Committer::new(
            wal,
            CommitSettings {
                policy: SyncPolicy::None,
                sync_interval: Duration::from_secs(1),
                max_batch: 64,
                params: HnswParams::default(),
                vector_storage: VectorStorage::Memory,
                vector_dir: std::env::temp_dir(),
                max_spaces: usize::MAX,
                faults: None,
                metrics: None,
                clock: Clock::default(),
            },
            Arc::default(),
            Arc::new(Queue::new(QueueConfig::default(), 1)),
        )
    }

    /// Prepares an observation with client id `id`; its answer lands in
    /// the returned slot.
    fn observe(
        c: &mut Committer,
        id: &str,
        out: &mut Vec<Prepared>,
    ) -> Arc<parking_lot::Mutex<Option<Result<Remembered>>>> {
        observe_into(c, "s", id, vec![1.0, 0.0], true, out)
    }

    fn observe_into(
        c: &mut Committer,
        space: &str,
        id: &str,
        embedding: Vec<f32>,
        auto_create: bool,
        out: &mut Vec<Prepared>,
    ) -> Arc<parking_lot::Mutex<Option<Result<Remembered>>>> {
        let space = SpaceId::parse(space).unwrap();
        let reservation = c.queue.reserve(&space, Priority::Normal).unwrap();
        let slot = Arc::new(parking_lot::Mutex::new(None));
        let answer = slot.clone();
        let episode = EpisodeInput {
            id: Some(id.into()),
            what: id.into(),
            embedding,
            ..Default::default()
        };
        let cmd = Command::Observe {
            space,
            episode: episode.validate().unwrap(),
            reservation,
            auto_create,
            admitted: None,
            reply: Box::new(move |r| *answer.lock() = Some(r)),
        };
        c.prepare(cmd, out);
        slot
    }

    /// A retry of an id whose original is in the same batch is acked only
    /// if that batch becomes durable: when its sync fails, both fail.
    #[test]
    fn a_duplicate_is_never_acked_when_its_batch_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = committer(dir.path());
        let mut out = Vec::new();
        let original = observe(&mut c, "x", &mut out);
        let retry = observe(&mut c, "x", &mut out);
        c.failed = Some("disk gone".into());
        c.commit(&mut out);
        for slot in [original, retry] {
            let answer = slot.lock().take().expect("answered");
            assert!(matches!(answer, Err(Error::Storage(_))), "{answer:?}");
        }
        assert_eq!(c.queue.depth(), 0, "both queue places given back");
    }

    /// Issue 11, defect 10: queue places were handed back by hand on each
    /// error path. Now the reservation travels with the observation and
    /// gives its place back wherever it is dropped: every rejection below
    /// leaves exactly the accepted observations in the queue.
    #[test]
    fn every_rejection_path_gives_the_queue_place_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = committer(dir.path());
        let mut out = Vec::new();
        let accepted = observe(&mut c, "a", &mut out);
        let wrong_dim = observe_into(&mut c, "s", "b", vec![1.0, 0.0, 0.0], true, &mut out);
        let missing = observe_into(&mut c, "nope", "c", vec![1.0, 0.0], false, &mut out);
        let duplicate = observe(&mut c, "a", &mut out);
        c.commit(&mut out);
        assert!(accepted.lock().take().unwrap().is_ok());
        assert!(matches!(
            wrong_dim.lock().take().unwrap(),
            Err(Error::DimensionMismatch { .. })
        ));
        assert!(matches!(
            missing.lock().take().unwrap(),
            Err(Error::SpaceNotFound(_))
        ));
        assert!(duplicate.lock().take().unwrap().unwrap().duplicate);
        assert_eq!(c.queue.depth(), 1, "only the accepted one holds a place");
        // After a WAL failure, a command answered without being prepared.
        c.failed = Some("disk gone".into());
        let refused = observe(&mut c, "d", &mut out);
        assert!(matches!(
            refused.lock().take().unwrap(),
            Err(Error::Storage(_))
        ));
        assert_eq!(c.queue.depth(), 1);
        // A command dropped unanswered (e.g. a full commit channel).
        let space = SpaceId::parse("s").unwrap();
        drop(c.queue.reserve(&space, Priority::High).unwrap());
        assert_eq!(c.queue.depth(), 1);
    }

    #[test]
    fn a_duplicate_in_a_durable_batch_gets_the_originals_answer() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = committer(dir.path());
        let mut out = Vec::new();
        let original = observe(&mut c, "x", &mut out);
        let retry = observe(&mut c, "x", &mut out);
        c.commit(&mut out);
        let original = original.lock().take().unwrap().unwrap();
        let retry = retry.lock().take().unwrap().unwrap();
        assert!(!original.duplicate && retry.duplicate);
        assert_eq!(original.server_sequence, retry.server_sequence);
    }
}
