//! The [`Engine`] handle: recovery at open, the operations every transport
//! calls, snapshots, and ordered shutdown.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::commit::{Command, SpaceMap};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::fault::Faults;
use crate::fs::{FileSystem, LockGuard};
use crate::indexer::{Indexer, Queue};
use crate::metrics::{Metrics, ScrapeState};
use crate::model::{
    Clock, Cue, EpisodeInput, MemoryFilter, MemoryPage, RecallResult, Remembered, SpaceId,
    SpaceInfo, StoredEpisode, ValidCue, VectorStorage, DEFAULT_DIMENSION, MAX_DIMENSION,
    MAX_LIST_PAGE,
};
use crate::queue::{IndexQueue, Priority, Rejected};
use crate::recall::RecallStream;
use crate::recovery::{self, Recovered};
use crate::session::RejectReason;
use crate::session::{Opened, Registry, Session, SessionHost};
use crate::space::Space;
use crate::{recall, snapshot};

/// How long a writer is told to wait when the commit queue itself is full.
const COMMIT_QUEUE_RETRY: Duration = Duration::from_millis(50);

pub use crate::recovery::RecoveryReport;

/// An observation on its way through the commit thread; resolves to its answer.
pub struct PendingRemember(oneshot::Receiver<Result<Remembered>>);

impl std::future::Future for PendingRemember {
    type Output = Result<Remembered>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::ShuttingDown)))
    }
}

/// The engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    spaces: Arc<SpaceMap>,
    commit_tx: Sender<Command>,
    commit_thread: Mutex<Option<JoinHandle<()>>>,
    queue: Arc<Queue>,
    indexer: Arc<Indexer>,
    faults: Option<Arc<Faults>>,
    metrics: Option<Arc<Metrics>>,
    sessions: Registry,
    /// The file system the WAL and snapshots live on.
    fs: Arc<dyn FileSystem>,
    /// Held while the engine lives: one process per data directory.
    _lock: LockGuard,
    /// See [`Engine::wal_durable_points`].
    wal_durable_points: Arc<std::sync::atomic::AtomicU64>,
    shutting_down: AtomicBool,
    /// One snapshot at a time (periodic, on demand, at shutdown).
    snapshot_lock: Mutex<()>,
    snapshotter: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    recovery: RecoveryReport,
    /// Set once, with the cause, when the engine can no longer work (the
    /// commit thread died): it fails stop (see [`Engine::fatal`]).
    fatal: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// `config.filter_exact_scan_max`, changeable while running (see
    /// [`Engine::set_filter_exact_scan_max`]).
    filter_exact_scan_max: Mutex<Option<usize>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The commit thread ends when `commit_tx` drops with us; the
        // indexing workers need to be told.
        self.indexer.stop();
    }
}

impl Engine {
    /// Opens the data directory and recovers: loads the newest snapshot,
    /// replays the WAL after it, and queues every episode that is not in an
    /// index yet. Returns once the engine is ready for requests.
    ///
    /// # Errors
    /// [`Error::Storage`] when the data directory, a snapshot or the WAL
    /// cannot be read; the engine refuses to start rather than lose data.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        Engine::open_on(config, crate::fs::os())
    }

    /// [`Engine::open`] with the data directory on `fs` (the power-loss
    /// tests pass a [`crate::fs::SimFs`]).
    ///
    /// # Errors
    /// As [`Engine::open`].
    pub fn open_on(config: EngineConfig, fs: Arc<dyn FileSystem>) -> Result<Engine> {
        let started = Instant::now();
        // Durable: a power loss right after the first start must not take
        // the directory, and the WAL in it, away.
        crate::fs::create_dir_durable(&*fs, &config.data_dir).map_err(|e| {
            Error::Storage(format!(
                "creating data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let lock = lock_data_dir(&*fs, &config.data_dir)?;
        let workers = config.effective_workers();
        let queue: Arc<Queue> = Arc::new(IndexQueue::new(config.queue.clone(), workers));
        let faults = config.fault_injection.then(|| Arc::new(Faults::default()));
        let metrics = config
            .metrics
            .then(|| Arc::new(Metrics::new(config.metrics_max_spaces)));
        let Recovered {
            committer,
            spaces,
            mut report,
            wal_durable_points,
        } = recovery::recover(&fs, &config, queue.clone(), faults.clone(), metrics.clone())?;

        // Threads start only after a successful load: a failed recovery
        // returns above and leaves nothing running (workers started first
        // kept polling for ever after a failed open).
        let indexer = Arc::new(Indexer::start(
            crate::indexer::PoolConfig {
                workers,
                min_batch: config.min_batch,
                max_batch: config.max_batch,
                max_task_failures: config.max_task_failures,
                stuck_after: Duration::from_secs(config.worker_stuck_after_secs),
            },
            queue.clone(),
            faults.clone(),
            metrics.clone(),
        ));
        let (commit_tx, commit_rx) = crossbeam_channel::bounded(config.commit_queue.max(1));
        let fatal = Arc::new(tokio::sync::watch::channel(None).0);
        let commit_fatal = fatal.clone();
        let commit_thread = std::thread::Builder::new()
            .name("engram-commit".into())
            .spawn(move || {
                // The one thread every write goes through: if it dies, no
                // write can be answered again. It is not restarted (its
                // state, mid-batch, is unknown); the engine fails stop and
                // the server exits naming the cause, so a supervisor
                // restarts it and recovery replays the WAL.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    committer.run(commit_rx)
                }));
                if let Err(panic) = run {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    let cause = format!("the commit thread panicked: {what}");
                    tracing::error!(%cause, "fatal: the engine can no longer accept writes");
                    commit_fatal.send_replace(Some(cause));
                }
            })
            .map_err(|e| Error::Storage(format!("starting the commit thread: {e}")))?;
        report.took = started.elapsed();

        let engine = Engine {
            inner: Arc::new(Inner {
                sessions: Registry::new(config.sessions.clone()),
                filter_exact_scan_max: Mutex::new(config.filter_exact_scan_max),
                fs,
                _lock: lock,
                wal_durable_points,
                config,
                spaces,
                commit_tx,
                commit_thread: Mutex::new(Some(commit_thread)),
                queue,
                indexer,
                faults,
                metrics,
                shutting_down: AtomicBool::new(false),
                snapshot_lock: Mutex::new(()),
                snapshotter: Mutex::new(None),
                recovery: report,
                fatal,
            }),
        };
        engine.start_snapshotter();
        engine.start_session_keeper();
        engine.start_reclaimer();
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// How many times the WAL has made everything appended so far durable
    /// (a sync, or a segment rotation, which syncs). A write acknowledged
    /// before this count moved on survives a power loss in every sync
    /// mode; in `always` mode every acknowledged write already has. The
    /// power-loss tests state each mode's loss bound with it.
    pub fn wal_durable_points(&self) -> u64 {
        self.inner
            .wal_durable_points
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn start_snapshotter(&self) {
        let every = self.inner.config.snapshot_interval_secs;
        if every == 0 {
            return;
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let handle = std::thread::Builder::new()
            .name("engram-snapshot".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(Duration::from_secs(every))
                {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = (Engine { inner }).snapshot() {
                        tracing::error!(error = %e, "periodic snapshot failed; the WAL is kept");
                    }
                }
            })
            .expect("spawning the snapshot thread");
        *self.inner.snapshotter.lock() = Some((stop_tx, handle));
    }

    /// One thread deletes, once a second, the index nodes of memories that
    /// are gone (forgotten, expired) in the spaces where they are many
    /// enough (see [`Space::reclaim_index`]), so their slots are reused and
    /// an index whose memories expire does not grow without bound. Its own
    /// thread because a reclaim waits for searches and snapshot writers to
    /// finish with the deleted nodes (up to the length of a snapshot). A
    /// panic in a reclaim is caught and logged; the loop goes on.
    fn start_reclaimer(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("engram-reclaim".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(inner) = weak.upgrade() else { return };
                if inner.shutting_down.load(Ordering::Acquire) {
                    return;
                }
                let spaces: Vec<Arc<Space>> = inner.spaces.read().values().cloned().collect();
                for space in spaces {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        space.reclaim_index(false)
                    }));
                    match run {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(space = %space.id(), deleted = n, "index nodes of gone memories reclaimed"),
                        Err(_) => tracing::error!(space = %space.id(), "reclaiming index nodes panicked; tried again in a second"),
                    }
                }
            })
            .expect("spawning the reclaim thread");
    }

    /// Deletes the index nodes of the space's gone (forgotten, expired)
    /// memories now, whatever their number (the background reclaim waits
    /// until they are many). Returns how many were deleted.
    ///
    /// # Errors
    /// [`Error::SpaceNotFound`], or an invalid id.
    pub fn reclaim_index(&self, space: &str) -> Result<usize> {
        Ok(self.space(&SpaceId::parse(space)?)?.reclaim_index(true))
    }

    /// One thread forwards backpressure changes to every attached session
    /// and, once a second, closes idle sessions and forgets expired ones.
    ///
    /// It follows the queue's *latest* level through a doorbell (never a
    /// backlog it could fall behind on and be dropped from), and a panic in
    /// it is caught, logged and the loop restarted: without this thread no
    /// session would ever expire and no stream would hear of SLOW_DOWN.
    fn start_session_keeper(&self) {
        let bell = self.inner.queue.level_bell();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("engram-sessions".into())
            .spawn(move || {
                let mut last = crate::queue::Level::Normal;
                loop {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        keep_sessions(&bell, &weak, &mut last)
                    }));
                    match run {
                        Ok(()) => return,
                        Err(panic) => {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!(panic = %what, "the session keeper panicked; restarting it");
                        }
                    }
                }
            })
            .expect("spawning the session keeper thread");
    }

    fn send(&self, cmd: Command) -> Result<()> {
        match self.inner.commit_tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(cmd)) => {
                // An observation's queue place goes back with it.
                drop(cmd);
                Err(Error::Overloaded {
                    depth: self.inner.queue.depth(),
                    capacity: self.inner.queue.capacity(),
                    retry_after: COMMIT_QUEUE_RETRY,
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(match self.fatal() {
                Some(cause) => Error::Storage(format!(
                    "{cause}; the engine stopped, restart the server (acknowledged writes are in the WAL)"
                )),
                None => Error::ShuttingDown,
            }),
        }
    }

    async fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(crate::commit::Reply<T>) -> Command,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(crate::commit::to_channel(tx)))?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    fn check_writable(&self) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    fn space(&self, id: &SpaceId) -> Result<Arc<Space>> {
        self.inner
            .spaces
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::SpaceNotFound(id.to_string()))
    }

    /// Stores one observation durably and makes it visible to recall before
    /// answering: an ack means durable (per the WAL sync policy) and
    /// visible to every later recall.
    ///
    /// # Errors
    /// Validation errors, [`Error::SpaceNotFound`] (auto-creation off),
    /// [`Error::DimensionMismatch`], [`Error::Overloaded`] with a
    /// retry-after, [`Error::ShuttingDown`], [`Error::Storage`].
    pub async fn remember(&self, space: &str, input: EpisodeInput) -> Result<Remembered> {
        self.submit_remember(space, input, Priority::Normal)?.await
    }

    /// The first half of [`Engine::remember`]: validates, admits and hands
    /// the observation to the commit thread, without waiting. Answers come
    /// back in submission order, so a stream can keep many in flight and
    /// still ack in sequence order.
    ///
    /// # Errors
    /// As [`Engine::remember`], for everything decided before commit.
    pub fn submit_remember(
        &self,
        space: &str,
        input: EpisodeInput,
        priority: Priority,
    ) -> Result<PendingRemember> {
        let (tx, rx) = oneshot::channel();
        let reply = crate::commit::to_channel(tx);
        self.submit_remember_with(space, input, priority, Instant::now(), reply)?;
        Ok(PendingRemember(rx))
    }

    /// Submits with a custom answer hook, run by the commit thread with the
    /// answer (sessions record outcomes there). `received` is when the
    /// observation arrived (the start of its latency; sessions pass the
    /// clock reading they already took). On `Err`, the hook was not called
    /// and will not be.
    pub(crate) fn submit_remember_with(
        &self,
        space: &str,
        input: EpisodeInput,
        priority: Priority,
        received: Instant,
        reply: crate::commit::Reply<Remembered>,
    ) -> Result<()> {
        let result = self.submit_inner(space, input, priority, received, reply);
        if let (Err(e), Some(m)) = (&result, &self.inner.metrics) {
            if let Ok(id) = SpaceId::parse(space) {
                m.rejected(&id, RejectReason::of(e).0);
            }
        }
        result
    }

    fn submit_inner(
        &self,
        space: &str,
        input: EpisodeInput,
        priority: Priority,
        received: Instant,
        reply: crate::commit::Reply<Remembered>,
    ) -> Result<()> {
        let space = SpaceId::parse(space)?;
        let episode = input.validate()?;
        self.check_dimension("embedding", episode.embedding.len())?;
        self.check_writable()?;
        match self.space(&space) {
            Ok(s) if s.dimension() != episode.embedding.len() => {
                return Err(Error::DimensionMismatch {
                    space: space.to_string(),
                    expected: s.dimension(),
                    got: episode.embedding.len(),
                })
            }
            Err(e) if !self.inner.config.auto_create_spaces => return Err(e),
            // A missing space is created by the commit thread.
            Ok(_) | Err(_) => {}
        }
        let reservation = self
            .inner
            .queue
            .reserve(&space, priority)
            .map_err(|r: Rejected| Error::Overloaded {
                depth: r.depth,
                capacity: r.capacity,
                retry_after: r.retry_after,
            })?;
        let auto_create = self.inner.config.auto_create_spaces;
        self.send(Command::Observe {
            space,
            episode,
            reservation,
            auto_create,
            admitted: self.inner.metrics.is_some().then_some(received),
            reply,
        })
    }

    /// Refuses a dimension over `engine.max_dimension` (at most
    /// [`MAX_DIMENSION`]): a new space's, or an embedding's, so that no
    /// client can make the server hold vectors wider than the operator
    /// allows. Existing wider spaces (from before the limit was lowered)
    /// still answer recalls, but take no new memories.
    fn check_dimension(&self, field: &'static str, dimension: usize) -> Result<()> {
        let max = self.inner.config.max_dimension.clamp(1, MAX_DIMENSION);
        if !(1..=max).contains(&dimension) {
            let what = if field == "embedding" {
                format!("has {dimension} values")
            } else {
                format!("is {dimension}")
            };
            return Err(Error::InvalidArgument {
                field,
                message: format!(
                    "{what}; this server takes 1 to {max} dimensions (engine.max_dimension)"
                ),
            });
        }
        Ok(())
    }

    /// Counts a rejection decided outside the engine's submit path (the
    /// session's sequence rules).
    pub(crate) fn record_rejection(&self, space: &SpaceId, reason: RejectReason) {
        if let Some(m) = &self.inner.metrics {
            m.rejected(space, reason);
        }
    }

    /// The Prometheus text exposition of every metric, or None when
    /// metrics are off.
    pub fn render_metrics(&self) -> Option<String> {
        let m = self.inner.metrics.as_ref()?;
        let spaces: Vec<_> = self.inner.spaces.read().values().cloned().collect();
        let state = ScrapeState {
            queue_capacity: self.inner.queue.capacity(),
            backpressure_active: self.inner.queue.level() >= crate::queue::Level::SlowDown,
            active_sessions: self.inner.sessions.active(),
            kept_sessions: self.inner.sessions.known(),
            queue_depths: self.inner.queue.depths(),
            spaces: spaces
                .iter()
                .map(|s| {
                    let info = s.info();
                    (
                        s.id().clone(),
                        s.index().len(),
                        info.index_lag_seconds,
                        info.memory,
                    )
                })
                .collect(),
            worker_busy_nanos: self
                .inner
                .indexer
                .stats()
                .iter()
                .map(|w| w.busy_nanos.load(Ordering::Relaxed))
                .collect(),
            stuck_workers: self
                .inner
                .indexer
                .stuck_workers()
                .iter()
                .map(|s| s.worker)
                .collect(),
        };
        Some(m.render(state))
    }

    /// Sets up to how many admitted memories a filtered recall scores
    /// exactly (None: derived from the space; see
    /// [`EngineConfig::filter_exact_scan_max`]). For benchmarks that
    /// place the switch, and for tuning without a restart.
    pub fn set_filter_exact_scan_max(&self, max: Option<usize>) {
        *self.inner.filter_exact_scan_max.lock() = max;
    }

    /// The most similar memories to the cue, as of now (CPU work: call it
    /// from a blocking-capable thread, not an async worker).
    ///
    /// # Errors
    /// Validation errors, [`Error::SpaceNotFound`], [`Error::DimensionMismatch`].
    pub fn recall(&self, space: &str, cue: Cue) -> Result<RecallResult> {
        let started = Instant::now();
        let space = self.space(&SpaceId::parse(space)?)?;
        let cue = self.as_of_now(cue.validate()?);
        let ef = cue.ef_search.unwrap_or(self.inner.config.index.ef_search);
        let result = recall::recall(&space, &cue, ef, *self.inner.filter_exact_scan_max.lock());
        if let Some(m) = space.metrics() {
            m.recall_latency.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// The cue as of now on the engine's clock: what has expired by now is
    /// not a candidate.
    fn as_of_now(&self, mut cue: ValidCue) -> ValidCue {
        cue.as_of_unix_nanos = self.inner.config.clock.now_unix_nanos();
        cue
    }

    /// The clock expiry reads (tests and drills move it forward).
    pub fn clock(&self) -> &Clock {
        &self.inner.config.clock
    }

    /// Purges every memory expired by now, in every space, and waits for
    /// it: what the background purge does once a second. Returns how many
    /// were removed.
    ///
    /// # Errors
    /// [`Error::Storage`] when the WAL fails, [`Error::ShuttingDown`].
    pub async fn purge_expired(&self) -> Result<usize> {
        let mut removed = 0;
        loop {
            let due = due_for_purge(&self.inner);
            if due.is_empty() {
                return Ok(removed);
            }
            let mut n = 0;
            for (space, server_sequences) in due {
                n += self
                    .call(|reply| Command::Expire {
                        space,
                        server_sequences,
                        reply,
                    })
                    .await?;
            }
            if n == 0 {
                // Due but not removed: they were forgotten meanwhile, or
                // the clock reads differently; the next pass sees.
                return Ok(removed);
            }
            removed += n;
        }
    }

    /// Forgets a memory by id.
    ///
    /// # Errors
    /// [`Error::SpaceNotFound`], [`Error::MemoryNotFound`], [`Error::ShuttingDown`].
    pub async fn forget(&self, space: &str, memory_id: &str) -> Result<()> {
        let space = SpaceId::parse(space)?;
        self.check_writable()?;
        let memory_id = memory_id.to_owned();
        self.call(|reply| Command::Forget {
            space,
            memory_id,
            reply,
        })
        .await
    }

    /// Creates a space with the default vector storage
    /// ([`EngineConfig::vector_storage`]); see [`Engine::create_space_with`].
    ///
    /// # Errors
    /// As [`Engine::create_space_with`].
    pub async fn create_space(
        &self,
        space: &str,
        dimension: Option<usize>,
    ) -> Result<(SpaceInfo, bool)> {
        self.create_space_with(space, dimension, None).await
    }

    /// [`Engine::create_space_with`] that also sets the space's default
    /// time to live: `None` leaves it unspecified (a new space gets none,
    /// an existing one matches whatever it has); `Some(None)`: no TTL.
    ///
    /// # Errors
    /// As [`Engine::create_space_with`]; [`Error::SpaceExists`] also when
    /// the space exists with another default TTL.
    pub async fn create_space_with_ttl(
        &self,
        space: &str,
        dimension: Option<usize>,
        vector_storage: Option<VectorStorage>,
        default_ttl: Option<Option<Duration>>,
    ) -> Result<(SpaceInfo, bool)> {
        let space = SpaceId::parse(space)?;
        let dimension = dimension.unwrap_or(DEFAULT_DIMENSION);
        self.check_dimension("dimension", dimension)?;
        if let Some(Some(ttl)) = default_ttl {
            if ttl.is_zero() || ttl > crate::model::MAX_TTL {
                return Err(Error::InvalidArgument {
                    field: "default_ttl_seconds",
                    message: format!(
                        "is {}; expected seconds above 0 and at most {} (100 years)",
                        ttl.as_secs_f64(),
                        crate::model::MAX_TTL.as_secs()
                    ),
                });
            }
        }
        self.check_writable()?;
        let id = space.clone();
        let created = self
            .call(|reply| Command::CreateSpace {
                space,
                dimension,
                vector_storage,
                default_ttl,
                reply,
            })
            .await?;
        Ok((self.space(&id)?.info(), created))
    }

    /// Creates a space; returns its description and whether it was new
    /// (creating an existing space with the same dimension, and the same
    /// vector storage when one is named, is a no-op). `vector_storage`:
    /// `None` for the engine's default.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad id or dimension,
    /// [`Error::SpaceExists`] when it exists with another dimension or
    /// vector storage, [`Error::Storage`] when a compact space's vector
    /// file cannot be created.
    pub async fn create_space_with(
        &self,
        space: &str,
        dimension: Option<usize>,
        vector_storage: Option<VectorStorage>,
    ) -> Result<(SpaceInfo, bool)> {
        self.create_space_with_ttl(space, dimension, vector_storage, None)
            .await
    }

    /// Deletes a space and everything in it.
    ///
    /// # Errors
    /// [`Error::SpaceNotFound`], [`Error::ShuttingDown`].
    pub async fn delete_space(&self, space: &str) -> Result<()> {
        let space = SpaceId::parse(space)?;
        self.check_writable()?;
        self.call(|reply| Command::DeleteSpace { space, reply })
            .await
    }

    /// Every space, sorted by id.
    pub fn list_spaces(&self) -> Vec<SpaceInfo> {
        let spaces: Vec<_> = self.inner.spaces.read().values().cloned().collect();
        let mut out: Vec<_> = spaces.iter().map(|s| s.info()).collect();
        out.sort_by(|a, b| a.memory_space_id.cmp(&b.memory_space_id));
        out
    }

    /// Lists a space's live memories matching `filter`, in server-sequence
    /// order, `limit` (1..=[`MAX_LIST_PAGE`]) at a time, starting after
    /// sequence `after` (0: from the start; else the previous page's
    /// `next_after`). Paging by sequence stays correct while memories
    /// arrive: a memory acked before the listing started is on exactly one
    /// page (unless forgotten meanwhile), and newer ones come after it.
    ///
    /// # Errors
    /// [`Error::SpaceNotFound`], an invalid id, filter or limit.
    pub fn list_memories(
        &self,
        space: &str,
        filter: &MemoryFilter,
        after: u64,
        limit: usize,
        include_embeddings: bool,
    ) -> Result<MemoryPage> {
        if !(1..=MAX_LIST_PAGE).contains(&limit) {
            return Err(Error::InvalidArgument {
                field: "page_size",
                message: format!("is {limit}; expected 1 to {MAX_LIST_PAGE}"),
            });
        }
        filter.validate()?;
        let space = self.space(&SpaceId::parse(space)?)?;
        let now = self.inner.config.clock.now_unix_nanos();
        let (episodes, more) = space.read().list_after(filter, now, after, limit);
        let next_after = if more {
            episodes.last().map(|e| e.server_sequence)
        } else {
            None
        };
        let memories = episodes
            .into_iter()
            .map(|e| {
                let v = include_embeddings.then(|| space.embedding_of(&e)).flatten();
                (e, v)
            })
            .collect();
        Ok(MemoryPage {
            memories,
            next_after,
        })
    }

    /// Whether the space exists (cheap: no statistics gathered).
    pub fn has_space(&self, space: &str) -> bool {
        SpaceId::parse(space).is_ok_and(|id| self.space(&id).is_ok())
    }

    /// # Errors
    /// [`Error::SpaceNotFound`], or an invalid id.
    pub fn describe_space(&self, space: &str) -> Result<SpaceInfo> {
        Ok(self.space(&SpaceId::parse(space)?)?.info())
    }

    /// Every live episode of a space with its vector, in sequence order: a
    /// full copy, for checks and tools (not a paged listing).
    ///
    /// # Errors
    /// [`Error::SpaceNotFound`], or an invalid id.
    pub fn live_episodes(&self, space: &str) -> Result<Vec<StoredEpisode>> {
        Ok(self
            .space(&SpaceId::parse(space)?)?
            .live_episodes_with_embeddings())
    }

    /// Index integrity of one space: the graph's invariants, every stored
    /// vector findable, every live episode in exactly one tier.
    ///
    /// # Errors
    /// A description of the first violation (or the space is unknown).
    pub fn check_integrity(&self, space: &str) -> std::result::Result<(), String> {
        let space = SpaceId::parse(space)
            .and_then(|id| self.space(&id))
            .map_err(|e| e.to_string())?;
        space.check_integrity()
    }

    /// Accepted observations not yet indexed, over all spaces.
    pub fn queue_depth(&self) -> usize {
        self.inner.queue.depth()
    }

    pub fn queue_capacity(&self) -> usize {
        self.inner.queue.capacity()
    }

    /// Indexing-worker panics caught (and their tasks requeued) since start.
    pub fn worker_restarts(&self) -> u64 {
        self.inner.indexer.restarts()
    }

    /// The indexing queue (depths, level, drain rate, subscriptions).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.inner.queue
    }

    /// The indexing worker pool (per-worker counters).
    pub fn indexer(&self) -> &Indexer {
        &self.inner.indexer
    }

    /// Fault injection, when `fault_injection` is configured.
    pub fn faults(&self) -> Option<&Faults> {
        self.inner.faults.as_deref()
    }

    /// Fault injection: the next `count` HNSW inserts into `space` panic
    /// halfway through linking (inside the insert, not between tasks).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] without `fault_injection`;
    /// [`Error::SpaceNotFound`].
    pub fn inject_insert_panics(&self, space: &str, count: u32) -> Result<()> {
        let space = self.fault_space(space)?;
        space.index().inject_insert_panics(count);
        Ok(())
    }

    /// Fault injection: the next `count` reclaims of `space`'s index panic
    /// before they change anything (the background reclaim catches the
    /// panic and tries again a second later).
    ///
    /// # Errors
    /// As [`Engine::inject_insert_panics`].
    pub fn inject_reclaim_panics(&self, space: &str, count: u32) -> Result<()> {
        let space = self.fault_space(space)?;
        space.index().inject_reclaim_panics(count);
        Ok(())
    }

    /// Fault injection: every HNSW insert of memory `memory_id` of `space`
    /// panics, like a task that can never be indexed (until a restart).
    ///
    /// # Errors
    /// As [`Engine::inject_insert_panics`], and [`Error::MemoryNotFound`].
    pub fn inject_poison(&self, space: &str, memory_id: &str) -> Result<()> {
        let space = self.fault_space(space)?;
        let seq = space.commit_meta().by_id.get(memory_id).copied();
        let Some(seq) = seq else {
            return Err(Error::MemoryNotFound {
                space: space.id().to_string(),
                memory_id: memory_id.to_string(),
            });
        };
        space.index().inject_poison_label(seq);
        Ok(())
    }

    /// Fault injection: every index search in `space` sleeps `delay` before
    /// it starts (zero turns it off); returns the space's count of searches
    /// that entered the delay so far, through the closure it hands back.
    ///
    /// # Errors
    /// As [`Engine::inject_insert_panics`].
    pub fn inject_search_delay(
        &self,
        space: &str,
        delay: Duration,
    ) -> Result<impl Fn() -> u64 + Send + Sync + 'static> {
        let space = self.fault_space(space)?;
        space.index().inject_search_delay(delay);
        Ok(move || space.index().searches_delayed())
    }

    fn fault_space(&self, space: &str) -> Result<Arc<Space>> {
        if self.inner.faults.is_none() {
            return Err(Error::InvalidArgument {
                field: "fault_injection",
                message: "fault injection is disabled; start with fault_injection = true".into(),
            });
        }
        self.space(&SpaceId::parse(space)?)
    }

    pub(crate) fn sessions(&self) -> &Registry {
        &self.inner.sessions
    }

    /// Opens a new streaming session on `space`, or resumes
    /// `resume_session_id` (waiting until everything it was sent is
    /// answered, so the reported last sequence is exact). A resumed session
    /// taken from another stream ends that stream
    /// ([`SessionEvent::TakenOver`](crate::session::SessionEvent::TakenOver)).
    ///
    /// # Errors
    /// Invalid space id; [`Error::SpaceNotFound`] when auto-creation is off;
    /// [`Error::SessionNotFound`] for an unknown or expired session id;
    /// [`Error::InvalidArgument`] when resuming with another space;
    /// [`Error::SessionLimit`] at the session limit; [`Error::ShuttingDown`].
    pub async fn open_session(
        &self,
        space: &str,
        resume_session_id: Option<&str>,
    ) -> Result<(Session, Opened)> {
        let space = SpaceId::parse(space)?;
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        if !self.config().auto_create_spaces && self.describe_space(space.as_str()).is_err() {
            return Err(Error::SpaceNotFound(space.to_string()));
        }
        let host: Arc<dyn SessionHost> = Arc::new(self.clone());
        self.sessions().open(host, space, resume_session_id).await
    }

    /// Streams with a session attached right now.
    pub fn active_sessions(&self) -> usize {
        self.inner.sessions.active()
    }

    /// Indexing workers on one observation for longer than
    /// `worker_stuck_after_secs` (hung?), as the watchdog sees them now.
    pub fn stuck_workers(&self) -> Vec<crate::indexer::StuckWorker> {
        self.inner.indexer.stuck_workers()
    }

    /// Sessions the server keeps: attached ones and released ones that can
    /// still be resumed.
    pub fn known_sessions(&self) -> usize {
        self.inner.sessions.known()
    }

    /// An incremental, snapshot-isolated recall: the snapshot point is
    /// fixed now; iterate for batches of at most `batch_size` (CPU work
    /// happens in `next`).
    ///
    /// # Errors
    /// Validation errors, [`Error::SpaceNotFound`], [`Error::DimensionMismatch`].
    pub fn recall_stream(&self, space: &str, cue: Cue, batch_size: usize) -> Result<RecallStream> {
        let space = self.space(&SpaceId::parse(space)?)?;
        let cue = self.as_of_now(cue.validate()?);
        let ef = cue.ef_search.unwrap_or(self.inner.config.index.ef_search);
        RecallStream::new(
            space,
            cue,
            ef,
            *self.inner.filter_exact_scan_max.lock(),
            batch_size,
        )
    }

    /// Holds indexing back: observations stay in the fresh tier. For tests
    /// and for operators draining a node; recall keeps seeing everything.
    pub fn pause_indexing(&self) {
        self.inner.indexer.pause();
    }

    pub fn resume_indexing(&self) {
        self.inner.indexer.resume();
    }

    /// Writes a snapshot now (if anything changed since the last one) and
    /// truncates the WAL it covers. Blocking.
    ///
    /// # Errors
    /// [`Error::Storage`]; the WAL is kept when the snapshot fails.
    pub fn snapshot(&self) -> Result<Option<PathBuf>> {
        let _one = self.inner.snapshot_lock.lock();
        let (tx, rx) = oneshot::channel();
        self.send(Command::CaptureSnapshot {
            reply: crate::commit::to_channel(tx),
        })?;
        let Some(capture) = wait(rx)? else {
            return Ok(None);
        };
        let started = Instant::now();
        let written = snapshot::write(&*self.inner.fs, &self.inner.config.data_dir, &capture)?;
        drop(capture);
        let (tx, rx) = oneshot::channel();
        // Only WAL that the older kept snapshot covers goes: if the newest
        // turns out unreadable, the previous one plus the WAL recover all.
        let before = written.truncate_before;
        let path = written.path;
        self.send(Command::TruncateWal {
            before,
            reply: crate::commit::to_channel(tx),
        })?;
        let removed = wait(rx)?;
        tracing::info!(path = %path.display(), took_ms = started.elapsed().as_millis() as u64, wal_segments_removed = removed, "snapshot written");
        Ok(Some(path))
    }

    /// The cause, once the engine can no longer work (its commit thread
    /// died): every write fails with it, and the server stops.
    pub fn fatal(&self) -> Option<String> {
        self.inner.fatal.borrow().clone()
    }

    /// Changes when the engine turns fatal (see [`Engine::fatal`]).
    pub fn fatal_watch(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.fatal.subscribe()
    }

    /// Whether [`Engine::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Ordered shutdown: refuse new writes, commit what is queued, write a
    /// snapshot, stop the indexing workers, sync the WAL and stop the
    /// commit thread. Blocking; calling it again does nothing.
    pub fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some((stop, handle)) = self.inner.snapshotter.lock().take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
        if let Err(e) = self.snapshot() {
            tracing::error!(error = %e, "snapshot at shutdown failed; recovery will replay the WAL");
        }
        self.inner.indexer.stop();
        // Stop is queued behind every command already sent, so they commit.
        let _ = self.inner.commit_tx.send(Command::Stop);
        if let Some(h) = self.inner.commit_thread.lock().take() {
            let _ = h.join();
        }
    }
}

/// Takes an exclusive lock on `<data_dir>/LOCK`, so two servers never share
/// a WAL. The OS releases it when the process exits, however it exits.
fn lock_data_dir(fs: &dyn FileSystem, dir: &std::path::Path) -> Result<LockGuard> {
    let path = dir.join("LOCK");
    fs.lock(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => Error::Storage(format!(
            "data directory {} is in use by another engram process (its LOCK file is held); stop it or use another --data-dir",
            dir.display()
        )),
        _ => Error::Storage(format!("locking {}: {e}", path.display())),
    })
}

/// Blocks the calling thread until the commit thread answers. Unlike
/// `blocking_recv`, this is allowed on any thread (the blocking calls of the
/// engine, snapshot and shutdown, may be made from inside a runtime).
fn wait<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    // Unconstrained: called from inside a tokio task whose cooperative
    // budget is spent, the receiver would answer Pending at once and wake
    // itself, for ever, since this loop never yields to the runtime to
    // refill the budget (a shutdown after a burst of awaits spun here).
    let mut rx = std::pin::pin!(tokio::task::unconstrained(rx));
    loop {
        match rx.as_mut().poll(&mut cx) {
            Poll::Ready(r) => return r.map_err(|_| Error::ShuttingDown)?,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// The session keeper's loop (see [`Engine::start_session_keeper`]): returns
/// when the engine is gone or shutting down.
fn keep_sessions(
    bell: &crossbeam_channel::Receiver<()>,
    weak: &Weak<Inner>,
    last: &mut crate::queue::Level,
) {
    use crate::queue::Level;
    let tick = crossbeam_channel::tick(Duration::from_secs(1));
    loop {
        crossbeam_channel::select! {
            recv(bell) -> ring => {
                if ring.is_err() {
                    return;
                }
                let Some(inner) = weak.upgrade() else { return };
                let change = inner.queue.current_level();
                if change.level == *last {
                    continue;
                }
                if change.level >= Level::SlowDown && *last < Level::SlowDown {
                    if let Some(m) = &inner.metrics {
                        for (space, _) in inner.queue.depths() {
                            m.backpressure_activation(&space);
                        }
                    }
                }
                *last = change.level;
                inner.sessions.broadcast(&change);
            }
            recv(tick) -> _ => {
                let Some(inner) = weak.upgrade() else { return };
                if inner.shutting_down.load(Ordering::Acquire) {
                    return;
                }
                if let Some(f) = &inner.faults {
                    f.before_sweep();
                }
                inner.sessions.sweep();
                purge_in_background(&inner);
            }
        }
    }
}

/// Most memories one purge command removes (one WAL record).
const PURGE_BATCH: usize = 4096;

/// Per space, the memories expired by now on the engine's clock (up to
/// [`PURGE_BATCH`] each).
fn due_for_purge(inner: &Inner) -> Vec<(SpaceId, Vec<u64>)> {
    let now = inner.config.clock.now_unix_nanos();
    let spaces: Vec<Arc<Space>> = inner.spaces.read().values().cloned().collect();
    spaces
        .iter()
        .filter_map(|s| {
            let due = s.read().due_for_purge(now, PURGE_BATCH);
            (!due.is_empty()).then(|| (s.id().clone(), due))
        })
        .collect()
}

/// The background purge, once a second from the session keeper: hands
/// each space's expired memories to the commit thread without waiting
/// (it logs and removes them; recall already excludes them by the clock).
/// A full commit queue leaves them to the next tick.
fn purge_in_background(inner: &Arc<Inner>) {
    for (space, server_sequences) in due_for_purge(inner) {
        let reply: crate::commit::Reply<usize> = Box::new(|r| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "purging expired memories failed; retried in a second");
            }
        });
        let cmd = Command::Expire {
            space,
            server_sequences,
            reply,
        };
        if inner.commit_tx.try_send(cmd).is_err() {
            return;
        }
    }
}

impl SessionHost for Engine {
    fn submit(
        &self,
        space: &str,
        input: EpisodeInput,
        priority: Priority,
        received: Instant,
        _origin: crate::session::Origin<'_>,
        reply: crate::commit::Reply<Remembered>,
    ) -> Result<()> {
        self.submit_remember_with(space, input, priority, received, reply)
    }

    fn record_rejection(&self, space: &SpaceId, reason: RejectReason) {
        Engine::record_rejection(self, space, reason);
    }
}
