//! engram's vector index: a concurrent HNSW graph over cosine similarity.
//!
//! - [`distance`]: SIMD inner product and normalisation.
//! - [`hnsw`]: the graph ([`Hnsw`]) — insert and search.
//! - `integrity`: `Hnsw::check_integrity`, the graph invariant checks.
//! - `storage`: growable per-node storage (vectors, links, locks).
//! - `visited`: pooled per-search scratch (visited tags, heaps).
//! - `persist`: the snapshot format (`Hnsw::write_to` / `Hnsw::read_from`).
//! - `reclaim`: deleting nodes in place (`Hnsw::reclaim`) and the grace
//!   periods that make reusing their slots safe.
//!
//! Why our own HNSW and how it compares with hnswlib: `docs/design/index.md`.

pub mod distance;
pub mod hnsw;
mod integrity;
mod labels;
mod persist;
mod reclaim;
mod storage;
mod visited;

pub use hnsw::{Hnsw, HnswParams};
pub use storage::{VectorFileError, VectorPlacement};
