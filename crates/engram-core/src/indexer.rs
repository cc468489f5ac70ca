//! Background indexing: worker threads that take committed episodes from
//! the indexing queue and insert them into their space's HNSW index, then
//! remove them from the fresh tier (in that order; see `recall`).
//!
//! The queue is an unbounded channel whose length is bounded by admission
//! control: a task exists only for an admitted observation, and admission
//! stops at the configured capacity. Workers run on named OS threads, never
//! on the async runtime. A panic while indexing is caught, logged, counted,
//! and the task is put back so nothing is lost.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex};

use crate::admission::Admission;
use crate::model::StoredEpisode;
use crate::space::Space;

/// How often an idle worker wakes to notice a stop request.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// One episode to index.
pub struct IndexTask {
    pub space: Arc<Space>,
    pub episode: Arc<StoredEpisode>,
}

/// The indexing queue and its workers.
pub struct Indexer {
    tx: Sender<IndexTask>,
    shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    rx: Receiver<IndexTask>,
    requeue: Sender<IndexTask>,
    admission: Arc<Admission>,
    stop: AtomicBool,
    /// Test and admin hook: while true, workers hold off (indexing "paused").
    paused: Mutex<bool>,
    resumed: Condvar,
    restarts: AtomicU64,
    indexed: AtomicU64,
}

impl Indexer {
    /// Starts `workers` indexing threads.
    pub fn start(workers: usize, admission: Arc<Admission>) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            rx,
            requeue: tx.clone(),
            admission,
            stop: AtomicBool::new(false),
            paused: Mutex::new(false),
            resumed: Condvar::new(),
            restarts: AtomicU64::new(0),
            indexed: AtomicU64::new(0),
        });
        let handles = (0..workers.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("engram-index-{i}"))
                    .spawn(move || worker_loop(&shared))
                    .expect("spawning an indexing thread")
            })
            .collect();
        Indexer {
            tx,
            shared,
            handles: Mutex::new(handles),
        }
    }

    pub fn enqueue(&self, task: IndexTask) {
        // The receiver lives in `shared`, owned by self: send cannot fail.
        let _ = self.tx.send(task);
    }

    /// Tasks waiting for a worker.
    pub fn pending(&self) -> usize {
        self.tx.len()
    }

    pub fn pause(&self) {
        *self.shared.paused.lock() = true;
    }

    pub fn resume(&self) {
        *self.shared.paused.lock() = false;
        self.shared.resumed.notify_all();
    }

    /// Panics caught in workers so far.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Episodes indexed since start.
    pub fn indexed(&self) -> u64 {
        self.shared.indexed.load(Ordering::Relaxed)
    }

    /// Asks the workers to stop after their current task and waits for
    /// them. Tasks still queued are not lost: their episodes are in the WAL
    /// and the snapshot's fresh tier, and are indexed again after restart.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.resume();
        for h in self.handles.lock().drain(..) {
            let _ = h.join();
        }
    }
}

fn worker_loop(shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        let task = match shared.rx.recv_timeout(IDLE_POLL) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Checked after taking a task, so no insert starts once pause()
        // has returned (a task taken just before waits here).
        {
            let mut paused = shared.paused.lock();
            while *paused && !shared.stop.load(Ordering::Acquire) {
                shared.resumed.wait_for(&mut paused, IDLE_POLL);
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            // Not lost: the episode is in the WAL and the snapshot's fresh
            // tier, and is queued again at the next start.
            return;
        }
        match catch_unwind(AssertUnwindSafe(|| index_one(&task))) {
            Ok(true) => {
                shared.indexed.fetch_add(1, Ordering::Relaxed);
                shared.admission.release(1, 0);
            }
            Ok(false) => shared.admission.release(0, 1),
            Err(panic) => {
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    space = %task.space.id(),
                    sequence = task.episode.server_sequence,
                    panic = panic_message(&panic),
                    "indexing worker panicked; the task is queued again"
                );
                let _ = shared.requeue.send(task);
            }
        }
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
