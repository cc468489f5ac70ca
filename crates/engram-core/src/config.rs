//! Engine configuration: one struct per subsystem, each default a named
//! constant that says why it is that number. The server crate fills these
//! from its TOML file, the environment and flags.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::index::HnswParams;
use crate::model::{Clock, VectorStorage};
use crate::queue::QueueConfig;
use crate::session::SessionConfig;
use crate::wal::SyncPolicy;

/// Smallest and largest batch an indexing worker takes: one at a time
/// keeps latency lowest under light load; 256 amortises queue locking under
/// pressure while a batch still takes only tens of milliseconds at 768-d.
pub const DEFAULT_MIN_BATCH: usize = 1;
pub const DEFAULT_MAX_BATCH: usize = 256;
/// With the `interval` policy, how often the WAL is fsynced.
pub const DEFAULT_WAL_SYNC_INTERVAL: Duration = Duration::from_millis(10);
/// WAL segment size: large enough that rotation is rare, small enough that
/// truncation after a snapshot frees space promptly.
pub const DEFAULT_WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How often a snapshot is written when anything changed, so that recovery
/// replays at most this much WAL.
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(300);
/// Largest group commit: bounds the latency one batch adds to the acks in it.
pub const DEFAULT_MAX_COMMIT_BATCH: usize = 4096;
/// Requests waiting for the commit thread. When full, writers get
/// `overloaded` rather than queueing without bound.
pub const DEFAULT_COMMIT_QUEUE: usize = 65_536;
/// Spaces one server holds: each costs a few KiB empty, plus a metric label
/// set up to `metrics_max_spaces`; auto-creation must not let a client
/// create them without bound.
pub const DEFAULT_MAX_SPACES: usize = 10_000;

/// Write-ahead log settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// `always` (default): fsync before the ack leaves; `interval`: fsync
    /// every `sync_interval_ms`, acks after the write reaches the OS;
    /// `none`: fsync only at segment rotation, snapshots and shutdown
    /// (tests and throwaway data).
    pub sync: SyncPolicy,
    pub sync_interval_ms: u64,
    pub segment_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            sync: SyncPolicy::Always,
            sync_interval_ms: DEFAULT_WAL_SYNC_INTERVAL.as_millis() as u64,
            segment_bytes: DEFAULT_WAL_SEGMENT_BYTES,
        }
    }
}

/// Everything the engine needs to open.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Where the WAL and snapshots live.
    pub data_dir: PathBuf,
    /// Indexing worker threads; 0 means one per core.
    pub workers: usize,
    /// Adaptive batch bounds of the indexing workers.
    pub min_batch: usize,
    pub max_batch: usize,
    /// An observation whose indexing panics this many times is quarantined
    /// (kept in the exact-scanned fresh tier) instead of retried forever.
    pub max_task_failures: u32,
    /// A worker on one observation longer than this is reported stuck (log,
    /// `engram_streaming_worker_stuck`, readiness detail).
    pub worker_stuck_after_secs: u64,
    /// Enables `Engine::faults` (kill workers, slow indexing, delay
    /// acceptance) for tests and drills. Never on in production.
    pub fault_injection: bool,
    /// Record Prometheus metrics (served on `/metrics`). Off only to
    /// measure what recording costs.
    pub metrics: bool,
    /// Distinct `space_id` label values before the `_overflow` label.
    pub metrics_max_spaces: usize,
    /// Create a space on its first observation instead of answering
    /// `space_not_found`.
    pub auto_create_spaces: bool,
    /// Most memory spaces the server holds; creating one more (explicitly
    /// or by auto-creation) is refused with `limit_reached`.
    pub max_spaces: usize,
    /// Widest embedding the server takes, 1 to 8192: a space of more
    /// dimensions cannot be created, and a wider embedding is refused as
    /// invalid (a limit on what one client can make the server hold).
    pub max_dimension: usize,
    /// Up to how many memories a recall filter (tags, metadata) may admit
    /// for the recall to score them all exactly instead of searching the
    /// index graph with the filter; unset: derived from the index's size
    /// and search breadth (docs/design/filters.md).
    pub filter_exact_scan_max: Option<usize>,
    /// Seconds between snapshots (0 disables periodic snapshots; one is
    /// still written at shutdown).
    pub snapshot_interval_secs: u64,
    pub max_commit_batch: usize,
    pub commit_queue: usize,
    /// The indexing queue: capacity, per-space share, backpressure levels.
    pub queue: QueueConfig,
    pub sessions: SessionConfig,
    pub wal: WalConfig,
    pub index: HnswParams,
    /// Vector storage of spaces created without one (by a create-space
    /// call that names none, or on their first observation): `memory` (the
    /// exact vectors in RAM) or `compact` (in a file under
    /// `<data_dir>/vectors`, RAM holding 8-bit codes; see
    /// `docs/design/memory.md`). Existing spaces keep theirs.
    pub vector_storage: VectorStorage,
    /// The clock expiry reads (see [`Clock`]); not a setting.
    #[serde(skip)]
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("./engram-data"),
            workers: 0,
            min_batch: DEFAULT_MIN_BATCH,
            max_batch: DEFAULT_MAX_BATCH,
            max_task_failures: crate::indexer::DEFAULT_MAX_TASK_FAILURES,
            worker_stuck_after_secs: crate::indexer::DEFAULT_WORKER_STUCK_AFTER.as_secs(),
            fault_injection: false,
            metrics: true,
            metrics_max_spaces: crate::metrics::DEFAULT_MAX_SPACE_LABELS,
            auto_create_spaces: true,
            max_spaces: DEFAULT_MAX_SPACES,
            max_dimension: crate::model::MAX_DIMENSION,
            filter_exact_scan_max: None,
            snapshot_interval_secs: DEFAULT_SNAPSHOT_INTERVAL.as_secs(),
            max_commit_batch: DEFAULT_MAX_COMMIT_BATCH,
            commit_queue: DEFAULT_COMMIT_QUEUE,
            queue: QueueConfig::default(),
            sessions: SessionConfig::default(),
            wal: WalConfig::default(),
            index: HnswParams::default(),
            vector_storage: VectorStorage::Memory,
            clock: Clock::default(),
        }
    }
}

impl EngineConfig {
    /// Where compact spaces create their (unnamed) vector files.
    pub fn vector_dir(&self) -> PathBuf {
        self.data_dir.join("vectors")
    }

    /// Worker count with 0 resolved to the number of cores.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
