//! The indexing worker pool: named threads that take batches from the
//! indexing queue, insert them into their space's HNSW index, then remove
//! them from the fresh tier (in that order; see `recall`).
//!
//! - Each space has a home worker (by hash); a worker with nothing of its
//!   own steals from the fullest space, so one hot space keeps every worker
//!   busy (the index takes concurrent inserts).
//! - Batch size adapts to pressure (`IndexQueue::batch_size`): small when
//!   the queue is short, for latency; larger under pressure, for throughput.
//! - Supervision: a panic while indexing is caught, logged and counted; the
//!   worker restarts, and the part of the batch it had not finished is put
//!   back at the front of its lanes, so nothing is lost. The index insert is
//!   panic-safe (a retry finishes a half-linked node).
//! - Watchdog: a worker that hangs (rather than panics) cannot be caught;
//!   a watchdog thread notices one that has been on one observation longer
//!   than `worker_stuck_after_secs`, logs it (and its recovery), and
//!   [`Indexer::stuck_workers`] feeds a metric and the readiness detail.
//! - Quarantine: a task that has panicked `max_task_failures` times is not
//!   put back (it would block its space's lane and, in the end, fill the
//!   queue): its episode stays in the fresh tier, durable and recalled by
//!   the exact scan, and is counted in a metric, in `describe`
//!   (`quarantined_count`) and in the log. A restart tries it again.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::fault::Faults;
use crate::metrics::Metrics;
use crate::model::{SpaceId, StoredEpisode};
use crate::queue::{IndexQueue, Priority};
use crate::space::Space;

/// How long an idle worker waits for work before checking for stop.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// One episode to index.
pub struct IndexTask {
    pub space: Arc<Space>,
    pub episode: Arc<StoredEpisode>,
    /// Panics while indexing it so far.
    pub failures: u32,
}

/// Default for [`crate::EngineConfig::max_task_failures`]: a task that
/// panics this many times is quarantined. More than one, so that a panic
/// caused by something passing (another thread's bug, a fault injected
/// once) does not quarantine a healthy episode.
pub const DEFAULT_MAX_TASK_FAILURES: u32 = 3;

pub type Queue = IndexQueue<SpaceId, IndexTask>;
/// A place in the indexing queue held by one observation on its way to the
/// WAL; handed back when dropped unpushed.
pub type QueueReservation = crate::queue::Reservation<SpaceId, IndexTask>;

/// Per-worker counters, read by metrics and tests.
#[derive(Default)]
pub struct WorkerStats {
    pub processed: AtomicU64,
    pub batches: AtomicU64,
    pub stolen_batches: AtomicU64,
    pub busy_nanos: AtomicU64,
    pub restarts: AtomicU64,
    /// Size of the last batch taken.
    pub last_batch: AtomicUsize,
    /// When the observation being indexed now was started, in nanoseconds
    /// since the pool's start, plus one; 0 while the worker holds none.
    pub task_started: AtomicU64,
}

/// Default for [`crate::EngineConfig::worker_stuck_after_secs`]: far above
/// one insert (milliseconds even at 4,096 dimensions), short enough that an
/// operator hears of a hang before the queue fills.
pub const DEFAULT_WORKER_STUCK_AFTER: Duration = Duration::from_secs(30);
/// How often the watchdog looks.
const WATCHDOG_EVERY: Duration = Duration::from_millis(250);

/// A worker that has been on one observation longer than the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckWorker {
    pub worker: usize,
    pub stuck_for: Duration,
}

/// The pool.
pub struct Indexer {
    shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    queue: Arc<Queue>,
    faults: Option<Arc<Faults>>,
    metrics: Option<Arc<Metrics>>,
    stats: Vec<WorkerStats>,
    min_batch: usize,
    max_batch: usize,
    max_task_failures: u32,
    stuck_after: Duration,
    /// The zero of `WorkerStats::task_started`.
    epoch: Instant,
    stop: AtomicBool,
    /// While true, workers hold off (indexing "paused"; admin and tests).
    paused: Mutex<bool>,
    resumed: Condvar,
}

/// How the pool works (from [`crate::EngineConfig`]).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub workers: usize,
    /// Adaptive batch bounds.
    pub min_batch: usize,
    pub max_batch: usize,
    /// Panics of one task before it is quarantined.
    pub max_task_failures: u32,
    /// When the watchdog reports a worker stuck on one observation.
    pub stuck_after: Duration,
}

impl Indexer {
    /// Starts `config.workers` threads on `queue`, and the watchdog.
    pub fn start(
        config: PoolConfig,
        queue: Arc<Queue>,
        faults: Option<Arc<Faults>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let PoolConfig {
            workers,
            min_batch,
            max_batch,
            max_task_failures,
            stuck_after,
        } = config;
        let workers = workers.max(1);
        if let Some(m) = &metrics {
            (0..workers).for_each(|w| m.init_worker(w));
        }
        let shared = Arc::new(Shared {
            queue,
            faults,
            metrics,
            stats: (0..workers).map(|_| WorkerStats::default()).collect(),
            min_batch: min_batch.max(1),
            max_batch: max_batch.max(min_batch.max(1)),
            max_task_failures: max_task_failures.max(1),
            stuck_after,
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            paused: Mutex::new(false),
            resumed: Condvar::new(),
        });
        let mut handles: Vec<JoinHandle<()>> = (0..workers)
            .map(|id| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("engram-index-{id}"))
                    .spawn(move || supervise(&shared, id))
                    .expect("spawning an indexing thread")
            })
            .collect();
        let watched = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name("engram-watchdog".into())
                .spawn(move || watch_workers(&watched))
                .expect("spawning the indexing watchdog"),
        );
        Indexer {
            shared,
            handles: Mutex::new(handles),
        }
    }

    pub fn workers(&self) -> usize {
        self.shared.stats.len()
    }

    pub fn stats(&self) -> &[WorkerStats] {
        &self.shared.stats
    }

    pub fn pause(&self) {
        *self.shared.paused.lock() = true;
    }

    pub fn resume(&self) {
        *self.shared.paused.lock() = false;
        self.shared.resumed.notify_all();
    }

    /// Worker restarts after a panic, all workers.
    pub fn restarts(&self) -> u64 {
        self.shared
            .stats
            .iter()
            .map(|s| s.restarts.load(Ordering::Relaxed))
            .sum()
    }

    /// Episodes indexed since start, all workers.
    pub fn indexed(&self) -> u64 {
        self.shared
            .stats
            .iter()
            .map(|s| s.processed.load(Ordering::Relaxed))
            .sum()
    }

    /// Asks the workers to stop after their current batch and waits. Queued
    /// tasks are not lost: their episodes are in the WAL and in the
    /// snapshot's fresh tier, and are queued again at the next start.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.queue.close();
        self.resume();
        for h in self.handles.lock().drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }

    /// Workers on one observation for longer than `worker_stuck_after_secs`
    /// right now.
    pub fn stuck_workers(&self) -> Vec<StuckWorker> {
        self.shared.stuck_workers()
    }
}

impl Shared {
    fn stuck_workers(&self) -> Vec<StuckWorker> {
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        self.stats
            .iter()
            .enumerate()
            .filter_map(|(worker, s)| {
                let started = s.task_started.load(Ordering::Acquire);
                let stuck_for = Duration::from_nanos(now.saturating_sub(started));
                (started != 0 && stuck_for > self.stuck_after)
                    .then_some(StuckWorker { worker, stuck_for })
            })
            .collect()
    }
}

/// The watchdog: logs a worker that gets stuck, and when it moves again.
/// It only reads counters, so it cannot fail; a panic would end only the
/// logging, and the metric and readiness detail read the same counters.
fn watch_workers(shared: &Shared) {
    let mut reported = vec![false; shared.stats.len()];
    while !shared.stop.load(Ordering::Acquire) {
        let stuck = shared.stuck_workers();
        for (worker, was) in reported.iter_mut().enumerate() {
            let now = stuck.iter().find(|s| s.worker == worker);
            match (now, *was) {
                (Some(s), false) => tracing::error!(
                    worker,
                    stuck_for_secs = s.stuck_for.as_secs_f64(),
                    threshold_secs = shared.stuck_after.as_secs_f64(),
                    "indexing worker stuck on one observation (hung?); its space's queue is not draining through it"
                ),
                (None, true) => tracing::warn!(worker, "indexing worker moving again"),
                _ => {}
            }
            *was = now.is_some();
        }
        std::thread::park_timeout(WATCHDOG_EVERY);
    }
}

/// The supervisor: runs the worker loop, and restarts it after a panic.
fn supervise(shared: &Shared, id: usize) {
    loop {
        match catch_unwind(AssertUnwindSafe(|| worker_loop(shared, id))) {
            Ok(()) => return,
            Err(panic) => {
                shared.stats[id].task_started.store(0, Ordering::Release);
                shared.stats[id].restarts.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &shared.metrics {
                    m.worker_restart(id);
                }
                tracing::error!(
                    worker = id,
                    panic = panic_message(&panic),
                    "indexing worker panicked; restarting it"
                );
            }
        }
    }
}

/// Puts back the unfinished part of a batch if the worker dies holding it.
struct BatchGuard<'a> {
    queue: &'a Queue,
    space: SpaceId,
    tasks: std::vec::IntoIter<(Priority, IndexTask)>,
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        let rest: Vec<_> = self.tasks.by_ref().collect();
        if !rest.is_empty() {
            self.queue.requeue_front(&self.space, rest);
        }
    }
}

fn worker_loop(shared: &Shared, id: usize) {
    let stats = &shared.stats[id];
    let batch_sizes = shared.metrics.as_ref().map(|m| m.batch_size(id));
    while !shared.stop.load(Ordering::Acquire) {
        let max = shared.queue.batch_size(shared.min_batch, shared.max_batch);
        let Some(batch) = shared.queue.pop_batch(id, max, IDLE_POLL) else {
            continue;
        };
        // Checked after taking work, so no insert starts once pause() has
        // returned; the batch waits here, still counted in the queue.
        let mut guard = BatchGuard {
            queue: &shared.queue,
            space: batch.space,
            tasks: batch.tasks.into_iter(),
        };
        {
            let mut paused = shared.paused.lock();
            while *paused && !shared.stop.load(Ordering::Acquire) {
                shared.resumed.wait_for(&mut paused, IDLE_POLL);
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let started = Instant::now();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        if batch.stolen {
            stats.stolen_batches.fetch_add(1, Ordering::Relaxed);
        }
        stats.last_batch.store(guard.tasks.len(), Ordering::Relaxed);
        if let Some(h) = &batch_sizes {
            h.observe(guard.tasks.len() as f64);
        }
        if let Some(f) = &shared.faults {
            f.before_batch(id);
        }
        while let Some((priority, task)) = guard.tasks.next() {
            stats.task_started.store(
                shared.epoch.elapsed().as_nanos() as u64 + 1,
                Ordering::Release,
            );
            if let Some(f) = &shared.faults {
                f.before_index();
            }
            let indexed = match catch_unwind(AssertUnwindSafe(|| index_one(&task))) {
                Ok(indexed) => indexed,
                Err(panic) => {
                    let mut task = task;
                    task.failures += 1;
                    let e = &task.episode;
                    if task.failures >= shared.max_task_failures {
                        tracing::error!(
                            space = %guard.space,
                            episode = %e.id,
                            sequence = e.server_sequence,
                            failures = task.failures,
                            panic = panic_message(&panic),
                            "indexing this observation keeps panicking; quarantined: it stays \
                             durable and recallable (exact scan of the fresh tier), and indexing \
                             is tried again at the next start"
                        );
                        task.space.quarantine(e.server_sequence);
                        if let Some(m) = &shared.metrics {
                            m.task_quarantined(&guard.space);
                        }
                        // Its place is handed back; the queue moves on.
                        shared.queue.complete(&guard.space, &[priority], 0);
                    } else {
                        tracing::warn!(
                            space = %guard.space,
                            episode = %e.id,
                            sequence = e.server_sequence,
                            failures = task.failures,
                            "indexing an observation panicked; it is retried first"
                        );
                        // The failed task goes back first, then the rest.
                        let rest: Vec<_> = std::iter::once((priority, task))
                            .chain(guard.tasks.by_ref())
                            .collect();
                        guard.tasks = rest.into_iter();
                    }
                    std::panic::resume_unwind(panic);
                }
            };
            // Completed one by one, so the depth (and with it backpressure
            // and the drain rate) moves smoothly, not in batch-sized steps.
            shared
                .queue
                .complete(&guard.space, &[priority], usize::from(indexed));
            if indexed {
                stats.processed.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.task_started.store(0, Ordering::Release);
        stats
            .busy_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Indexes one episode; false when it no longer needs indexing (forgotten,
/// or its space deleted).
fn index_one(task: &IndexTask) -> bool {
    let seq = task.episode.server_sequence;
    if task.space.is_deleted() || !task.space.is_live(seq) {
        task.space.mark_indexed(seq);
        return false;
    }
    task.space.index().insert(seq, &task.episode.embedding);
    task.space.mark_indexed(seq);
    true
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}
