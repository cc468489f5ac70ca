//! Fuzzing harness for every decoder in engram that reads untrusted bytes,
//! on the stable toolchain (issue #12). The README has how to run it.
//!
//! - [`targets`] — the fuzz targets, one `fn(&[u8])` per decoder: WAL
//!   records and segments, snapshots, WebSocket JSON, protobuf
//!   conversions; each with its seed corpus and a check that a seed is
//!   valid input.
//! - [`mutate`] — how inputs are made: mutations of the corpus (byte-level,
//!   and structural for JSON) and random bytes.
//! - [`rng`] — the seeded generator that makes input `i` of a run
//!   reproducible from (seed, target, `i`).
//! - [`guard`] — panics caught quietly, allocations over 256 MiB stopped
//!   with the input saved ([`guard::GuardedAlloc`]), time per input.
//! - [`runner`] — the loop, its findings and its report line.
//! - [`corpus`] — `corpus/`, `regressions/` and `crashes/`, and writing
//!   the seed corpus.
//!
//! The binary (`engram-fuzz`) and the tests (`tests/regressions.rs`) are
//! the two users: the binary fuzzes for a time, the tests run every corpus
//! and regression file and a short fixed-seed loop on every `cargo test`.

pub mod corpus;
pub mod guard;
pub mod mutate;
pub mod rng;
pub mod runner;
pub mod targets;

pub use targets::{find, Target, TARGETS};
