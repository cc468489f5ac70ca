//! engram's engine: everything that stores and recalls memories, with no
//! transport code. The server crate (REST, gRPC, WebSocket)
//! calls [`Engine`] and maps [`Error`] to its wire codes in one place.
//!
//! Map of the crate, following one observation through it:
//!
//! - [`model`] — memory spaces, episodes, cues, and their validation.
//! - [`engine`] — the cheap-to-clone [`Engine`] handle: open (recovery),
//!   remember / recall / forget / spaces, shutdown.
//! - [`queue`] — where observations are admitted (`reserve`, an owned place): the
//!   indexing queue with priority lanes, capacity, backpressure levels and
//!   retry-after; workers take batches from it.
//! - [`session`] — streaming sessions: sequence numbers, idle timeout,
//!   close with drain, resume.
//! - [`stream`] — the one stream protocol every transport (gRPC, WebSocket)
//!   drives: message order, acks, status and backpressure policy, recalls
//!   on a stream, and why a stream ends.
//! - [`commit`] — the group-commit thread: assigns server sequences, appends
//!   to the WAL and syncs it per policy, applies to memory, then acks.
//! - [`wal`] — the segmented write-ahead log (bytes, checksums, fsync).
//! - [`fs`] — the file system the WAL, snapshots and recovery write
//!   through: the real one, and `SimFs`, which loses what was not fsynced
//!   when the power-loss tests cut its power.
//! - [`record`] — the typed records carried in the WAL.
//! - [`space`] — one memory space: its episodes, the fresh (not yet indexed)
//!   tier and its HNSW index.
//! - [`indexer`] — the supervised worker pool that moves fresh episodes
//!   into HNSW (home worker per space, stealing, adaptive batches).
//! - [`fault`] — fault injection for tests (kill workers, slow indexing).
//! - [`metrics`] — Prometheus metrics, recorded on the real paths.
//! - [`recall`] — snapshot point, HNSW search ∪ exact scan of the fresh tier,
//!   merged top-k; incremental recall in batches.
//! - [`index`] — engram's own concurrent HNSW and the SIMD distance kernels.
//! - [`snapshot`] — snapshot files that let the WAL be truncated, and their
//!   loading (with fallback to the previous one).
//! - [`recovery`] — the one place a data directory becomes a ready
//!   committer: snapshot, WAL replay, what to index; no thread starts
//!   before it succeeds.
//! - [`config`] — engine configuration with documented defaults.
//!
//! Dependencies between these modules run one way (the test command checks
//! it with `scripts/check-core-layers.py`), lowest first: `error`, `fault`,
//! `fs`, `index`, `queue` → `model` → `record` → `wal` → `metrics` → `space` →
//! `recall`, `indexer` → `commit`, `snapshot` → `recovery`, `session` →
//! `config` → `engine` → `stream`. A session reaches the engine only through the small
//! `SessionHost` trait the engine implements.

pub mod access;
pub mod commit;
pub mod config;
pub mod engine;
pub mod error;
pub mod fault;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod indexer;
pub mod metrics;
pub mod model;
pub mod postings;
pub mod queue;
pub mod recall;
pub mod record;
pub mod recovery;
pub mod session;
pub mod snapshot;
pub mod space;
pub mod stream;
pub mod wal;

pub use config::EngineConfig;
pub use engine::Engine;
pub use error::{Error, Result};
pub use model::{
    Cue, EpisodeInput, RecallResult, RecalledMemory, SpaceId, SpaceInfo, StoredEpisode,
};
pub use queue::Priority;
