//! The fuzz targets: one per decoder of untrusted bytes, each a
//! `fn(&[u8])` that must return on every input — never panic, abort,
//! hang, or allocate without bound.
//!
//! A target runs the engine's own code on the bytes and throws the result
//! away: an error is the right answer to garbage. Where a result can be
//! checked cheaply it is (a decoded record re-encodes to what decodes to
//! it again; a log that recovery accepted reopens with the same records),
//! and a failed check panics like any other bug.
//!
//! Each target also knows its seed corpus ([`Target::seeds`], written by
//! `engram-fuzz --write-corpus`) and what makes a seed valid
//! ([`Target::check_seed`]): a seed the decoder refuses would only teach
//! the fuzzer what garbage looks like.

use std::path::PathBuf;
use std::sync::Arc;

use engram_core::fs::{FileSystem, SimFs};

use crate::mutate::Shape;

pub mod proto;
pub mod snapshot;
pub mod wal;
pub mod ws_json;

/// One fuzz target.
pub struct Target {
    /// The name on the command line and under `corpus/`, `regressions/`
    /// and `crashes/`.
    pub name: &'static str,
    /// What it reads, which decides the mutations made for it.
    pub shape: Shape,
    /// Runs the decoder on one input.
    pub run: fn(&[u8]),
    /// The seed corpus: file names and contents, made by the real writers.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
    /// Whether a seed (by file name and contents) decodes as valid input.
    pub check_seed: fn(&str, &[u8]) -> Result<(), String>,
    /// One line on what it covers.
    pub covers: &'static str,
}

/// Every target, in the order a run takes them.
pub const TARGETS: [Target; 4] = [
    Target {
        name: "wal_record",
        shape: Shape::Binary,
        run: wal::run,
        seeds: wal::seeds,
        check_seed: wal::check_seed,
        covers: "WAL record payloads, segment files (as they are and with checksums repaired), \
                 recovery of the log and replay of its records",
    },
    Target {
        name: "snapshot",
        shape: Shape::Binary,
        run: snapshot::run,
        seeds: snapshot::seeds,
        check_seed: snapshot::check_seed,
        covers: "snapshot files (as they are and with checksums repaired): headers, episodes, \
                 HNSW graphs, and recovery from them",
    },
    Target {
        name: "ws_json",
        shape: Shape::Json,
        run: ws_json::run,
        seeds: ws_json::seeds,
        check_seed: ws_json::check_seed,
        covers: "WebSocket text messages into the stream protocol, and the validation of \
                 what they carry",
    },
    Target {
        name: "proto_convert",
        shape: Shape::Binary,
        run: proto::run,
        seeds: proto::seeds,
        check_seed: proto::check_seed,
        covers: "protobuf messages decoded and converted to the engine's types, and the \
                 validation of what they carry",
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The data directory the file-reading targets recover: on a fresh
/// in-memory [`SimFs`] each time, but also a real, writable path, because
/// compact spaces create their vector files under `<data_dir>/vectors` on
/// the real file system (unnamed files, unlinked at once, so nothing is
/// left behind but the empty directory).
pub fn data_dir() -> PathBuf {
    std::env::temp_dir().join("engram-fuzz").join("data")
}

/// A fresh in-memory machine holding `files` (paths and contents).
///
/// # Panics
/// If the in-memory file system refuses a write (it never does while its
/// power is on).
pub fn machine(files: &[(PathBuf, &[u8])]) -> SimFs {
    use std::io::Write;
    let fs = SimFs::new();
    for (path, bytes) in files {
        let dir = path.parent().expect("a file path has a parent");
        fs.create_dir_all(dir).expect("SimFs creates directories");
        let mut f = fs.create(path).expect("SimFs creates files");
        f.write_all(bytes).expect("SimFs writes");
        f.sync_all().expect("SimFs syncs");
    }
    fs
}

/// Runs the engine's recovery on `data_dir()` of `fs` (see
/// [`engram_core::fuzzing::recover`]).
///
/// # Errors
/// Whatever recovery refuses, as its message.
pub fn recover(fs: &SimFs) -> Result<engram_core::recovery::RecoveryReport, String> {
    let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
    engram_core::fuzzing::recover(fs, &data_dir()).map_err(|e| e.to_string())
}

/// Episode `seq` of the seed corpora: a 4-dimensional unit vector (held or
/// not: an indexed episode is stored without it), text, tags, metadata.
pub fn seed_episode(seq: u64, with_vector: bool) -> engram_core::StoredEpisode {
    let v = [seq as f32, 1.0, 0.5, -0.25];
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    engram_core::StoredEpisode {
        id: format!("episode-{seq}"),
        when_unix_nanos: 1_767_225_600_000_000_000 + seq as i64,
        what: format!("what happened, take {seq}"),
        embedding: if with_vector {
            v.iter().map(|x| x / norm).collect()
        } else {
            engram_core::model::no_embedding()
        },
        encoding_confidence: 0.75,
        tags: vec!["seed".to_owned(), format!("t{seq}")],
        metadata: [("source".to_owned(), "engram-fuzz".to_owned())].into(),
        server_sequence: seq,
        committed_at_unix_nanos: 1_767_225_600_000_000_000 + 1000 * seq as i64,
        // Every other one expires (a snapshot stores it beside the episode).
        expires_at_unix_nanos: seq
            .is_multiple_of(2)
            .then_some(1_767_229_200_000_000_000 + seq as i64),
    }
}

/// Episode `seq`'s vector, as [`seed_episode`] holds it.
pub fn seed_vector(seq: u64) -> Vec<f32> {
    seed_episode(seq, true).embedding.to_vec()
}
