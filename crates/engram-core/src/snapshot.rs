//! Snapshot files: every space's episodes and HNSW graph as of a WAL cut,
//! so the WAL below the cut can be deleted and recovery replays only the
//! tail. Written to a temporary file, fsynced, then renamed into place, so
//! a crash mid-write leaves the previous snapshot in charge.
//!
//! Layout (little-endian): magic `ENGRAMSN`, version u32, next_lsn u64,
//! space count u32; per space a bincode `SpaceHeader`, its episodes, then the
//! index's own serialisation; finally a CRC32 of everything before it.
//!
//! Versions: 4 (written now) adds each space's default time to live to its
//! header, and after each episode its expiry (a bincode `Option<i64>`,
//! Unix nanoseconds), and leaves out of each index the nodes of memories
//! no longer live (forgotten or expired), so their space is reclaimed. 3 adds each space's vector storage (`memory` or
//! `compact`) to its header; the index's serialisation holds every vector in
//! both, so a compact space's vectors are as durable as any. 2 stores an
//! indexed episode without its vector, which the index that follows holds
//! (one copy on disk as in memory); episodes still in the fresh tier keep
//! theirs; its spaces load with their vectors in memory. 1 stored every
//! episode's vector beside the index's copy; it is read, and the duplicate
//! dropped. Older files upgrade in place with the next snapshot. A build
//! that predates a version refuses its files by number instead of
//! misreading them.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::commit::Capture;
use crate::error::{Error, Result};
use crate::fs::{self, FileSystem};
use crate::index::{Hnsw, VectorFileError};
use crate::model::{SpaceId, StoredEpisode, VectorStorage};
use crate::space::{placement, Space};
use crate::wal::{Lsn, MAX_LSN};

const MAGIC: &[u8; 8] = b"ENGRAMSN";
const VERSION: u32 = 4;
/// The oldest version this build reads.
const OLDEST_READABLE: u32 = 1;
const DIR: &str = "snapshots";

/// A space's header in versions 1 and 2.
#[derive(Serialize, Deserialize)]
struct SpaceHeaderV2 {
    id: SpaceId,
    dimension: usize,
    last_seq: u64,
    episodes: u64,
}

/// A space's header in version 3.
#[derive(Serialize, Deserialize)]
struct SpaceHeaderV3 {
    id: SpaceId,
    dimension: usize,
    last_seq: u64,
    episodes: u64,
    vector_storage: VectorStorage,
}

/// A space's header since version 4.
#[derive(Serialize, Deserialize)]
struct SpaceHeader {
    id: SpaceId,
    dimension: usize,
    last_seq: u64,
    episodes: u64,
    vector_storage: VectorStorage,
    /// 0: none.
    default_ttl_nanos: u64,
}

/// A space as loaded from a snapshot, before WAL replay.
pub struct LoadedSpace {
    pub space: Arc<Space>,
    pub last_seq: u64,
    pub episodes: Vec<StoredEpisode>,
}

/// What recovery starts from.
pub struct Loaded {
    pub next_lsn: Lsn,
    pub spaces: Vec<LoadedSpace>,
    pub path: PathBuf,
}

fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

fn file_name(next_lsn: Lsn) -> String {
    format!("snapshot-{next_lsn:020}.snap")
}

/// Snapshot files in the directory, oldest first.
fn list(fs: &dyn FileSystem, data_dir: &Path) -> io::Result<Vec<(Lsn, PathBuf)>> {
    let dir = snapshot_dir(data_dir);
    let mut out = Vec::new();
    let entries = match fs.read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        if let Some(lsn) = entry
            .name
            .strip_prefix("snapshot-")
            .and_then(|r| r.strip_suffix(".snap"))
            .and_then(|n| n.parse::<Lsn>().ok())
        {
            out.push((lsn, dir.join(&entry.name)));
        }
    }
    out.sort();
    Ok(out)
}

/// Fewest bytes a bincode `StoredEpisode` takes (id, text, vector, tags
/// and metadata all empty): its eight length and integer fields of 8 bytes
/// and the 4-byte confidence, 68, rounded down. Bounds how many episodes a
/// file of a given size can hold, for the buffer reserved before reading.
const MIN_EPISODE_BYTES: u64 = 64;

/// bincode as [`write`] encodes (`bincode::serialize_into`: fixed-width
/// integers), reading at most `limit` bytes for one value. The limit is the
/// file's size: a damaged string or byte length then fails as corrupt
/// instead of reserving a buffer of the length read (bincode's unlimited
/// reader from a stream resizes its buffer to the length first).
fn decoding(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
}

/// A writer that checksums what passes through it.
struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn storage(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{context}: {e}"))
}

/// A snapshot written by [`write`].
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    /// The snapshot covers the WAL below this.
    pub next_lsn: Lsn,
    /// WAL below this may be removed: the *older* of the two snapshots kept
    /// covers it (1 while there is only one: then all of it is kept), so a
    /// newest snapshot that turns out unreadable can fall back to the
    /// previous one plus the WAL.
    pub truncate_before: Lsn,
}

/// Snapshots kept: the newest and the one before it.
pub const KEPT: usize = 2;

/// Writes `capture` durably (temporary file, fsync, rename, fsync of the
/// directory), reads it back to verify its checksum, then removes all but
/// the two newest snapshots.
///
/// # Errors
/// [`Error::Storage`]; a failed or unverifiable snapshot is removed and the
/// WAL is left alone.
pub fn write(fs: &dyn FileSystem, data_dir: &Path, capture: &Capture) -> Result<Written> {
    let dir = snapshot_dir(data_dir);
    // The directory's entry must survive a power loss before any WAL is
    // removed on the strength of what it holds; synced even when it exists,
    // since the run that created it may have died before syncing.
    fs::create_dir_durable(fs, &dir).map_err(|e| storage("creating the snapshot directory", e))?;
    let final_path = dir.join(file_name(capture.next_lsn));
    let tmp_path = dir.join(format!("{}.tmp", file_name(capture.next_lsn)));
    let file = fs
        .create(&tmp_path)
        .map_err(|e| storage("creating the snapshot file", e))?;
    let mut w = Crc {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
    };
    let res: io::Result<()> = (|| {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&capture.next_lsn.to_le_bytes())?;
        w.write_all(&(capture.spaces.len() as u32).to_le_bytes())?;
        for sc in &capture.spaces {
            let index = sc.space.index();
            // No index node is deleted while this space is written. One
            // deleted since the capture belongs to a memory forgotten or
            // expired since (the WAL after the cut says so): such a memory
            // is left out here if its episode relies on the node for its
            // vector, which replaying that record would remove anyway.
            let _no_deletes = index.hold_nodes();
            let episodes: Vec<&Arc<StoredEpisode>> = sc
                .episodes
                .iter()
                .filter(|e| e.holds_embedding() || index.contains(e.server_sequence))
                .collect();
            let header = SpaceHeader {
                id: sc.space.id().clone(),
                dimension: sc.space.dimension(),
                last_seq: sc.last_seq,
                episodes: episodes.len() as u64,
                vector_storage: sc.space.vector_storage(),
                default_ttl_nanos: sc.space.default_ttl().map_or(0, |t| {
                    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
                }),
            };
            bincode::serialize_into(&mut w, &header).map_err(io::Error::other)?;
            for e in &episodes {
                bincode::serialize_into(&mut w, e.as_ref()).map_err(io::Error::other)?;
                bincode::serialize_into(&mut w, &e.expires_at_unix_nanos)
                    .map_err(io::Error::other)?;
            }
            // The index keeps the captured episodes' nodes and those of
            // sequences after the capture (their episodes come from the
            // WAL); nodes of forgotten and expired memories, and retired
            // ones, are left out.
            let captured: Vec<u64> = episodes.iter().map(|e| e.server_sequence).collect();
            let last_seq = sc.last_seq;
            index.write_compacted(&mut w, &|label| {
                captured.binary_search(&label).is_ok()
                    || (label > last_seq && !Hnsw::is_retired_label(label))
            })?;
        }
        let crc = w.hasher.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())?;
        let file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = res {
        let _ = fs.remove_file(&tmp_path);
        return Err(storage("writing the snapshot", e));
    }
    if let Err(e) = verify(fs, &tmp_path) {
        let _ = fs.remove_file(&tmp_path);
        return Err(storage("verifying the snapshot just written", e));
    }
    fs.rename(&tmp_path, &final_path)
        .map_err(|e| storage("renaming the snapshot into place", e))?;
    fs.sync_dir(&dir)
        .map_err(|e| storage("syncing the snapshot directory", e))?;
    let all = list(fs, data_dir).map_err(|e| storage("listing snapshots", e))?;
    let kept: Vec<Lsn> = all.iter().rev().take(KEPT).map(|(lsn, _)| *lsn).collect();
    for (lsn, path) in &all {
        if !kept.contains(lsn) {
            let _ = fs.remove_file(path);
        }
    }
    let truncate_before = if kept.len() >= KEPT {
        kept[KEPT - 1]
    } else {
        1
    };
    Ok(Written {
        path: final_path,
        next_lsn: capture.next_lsn,
        truncate_before,
    })
}

/// Reads a snapshot file through and checks its trailing checksum.
fn verify(fs: &dyn FileSystem, path: &Path) -> io::Result<()> {
    let mut f = BufReader::with_capacity(1 << 20, fs.open_read(path)?);
    let len = f.get_ref().size()?;
    if len < 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "shorter than its checksum",
        ));
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut left = len - 4;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut stored = [0u8; 4];
    f.read_exact(&mut stored)?;
    if u32::from_le_bytes(stored) != hasher.finalize() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "checksum mismatch",
        ));
    }
    Ok(())
}

/// Loads the newest snapshot that reads back whole. One that does not
/// (corrupt, truncated) is renamed `*.corrupt`, kept for inspection, and
/// the one before it is used: the WAL is kept from the older of the two
/// snapshots on, so that one plus the WAL recovers everything. With none
/// readable, recovery replays the WAL from its start (and fails with a
/// clear gap error if that start was removed).
///
/// Compact spaces get their vector files in `vector_dir`.
///
/// # Errors
/// [`Error::Storage`] when the snapshot directory cannot be listed, or a
/// compact space's vector file cannot be created or written (the snapshot
/// is fine, the disk is not: recovery stops instead of falling back).
pub fn load_latest(
    fs: &dyn FileSystem,
    data_dir: &Path,
    vector_dir: &Path,
) -> Result<Option<Loaded>> {
    let dir = snapshot_dir(data_dir);
    if let Ok(entries) = fs.read_dir(&dir) {
        for entry in entries {
            if entry.name.ends_with(".tmp") {
                let _ = fs.remove_file(&dir.join(&entry.name));
            }
        }
    }
    let all = list(fs, data_dir).map_err(|e| storage("listing snapshots", e))?;
    for (_, path) in all.into_iter().rev() {
        match load(fs, &path, vector_dir) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(Failure::Disk(e)) => return Err(e),
            Err(Failure::Corrupt(e)) => {
                let aside = path.with_extension("snap.corrupt");
                tracing::error!(
                    snapshot = %path.display(),
                    error = %e,
                    moved_to = %aside.display(),
                    "snapshot unreadable; falling back to the previous one and the WAL"
                );
                let _ = fs.rename(&path, &aside);
            }
        }
    }
    Ok(None)
}

/// Why a snapshot did not load.
enum Failure {
    /// The file is unreadable or corrupt: set aside, try the previous one.
    Corrupt(Error),
    /// A compact space's vector file failed: nothing wrong with the file.
    Disk(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Corrupt(e)
    }
}

/// Reads one snapshot file whole.
fn load(
    fs: &dyn FileSystem,
    path: &Path,
    vector_dir: &Path,
) -> std::result::Result<Loaded, Failure> {
    let path = path.to_path_buf();
    let file = fs
        .open_read(&path)
        .map_err(|e| storage("opening the snapshot", e))?;
    let file_len = file
        .size()
        .map_err(|e| storage("reading the size of the snapshot", e))?;
    let mut r = Crc {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
    };
    let corrupt = |what: String| {
        Failure::Corrupt(Error::Storage(format!(
            "snapshot {} is corrupt: {what}",
            path.display()
        )))
    };
    let mut buf8 = [0u8; 8];
    let mut buf4 = [0u8; 4];
    let io = |e: io::Error| Error::Storage(format!("reading snapshot {}: {e}", path.display()));
    r.read_exact(&mut buf8).map_err(io)?;
    if &buf8 != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    r.read_exact(&mut buf4).map_err(io)?;
    let version = u32::from_le_bytes(buf4);
    if !(OLDEST_READABLE..=VERSION).contains(&version) {
        return Err(corrupt(format!(
            "version {version}, this build reads versions {OLDEST_READABLE} to {VERSION}"
        )));
    }
    r.read_exact(&mut buf8).map_err(io)?;
    let next_lsn = u64::from_le_bytes(buf8);
    if next_lsn >= MAX_LSN {
        return Err(corrupt(format!(
            "next lsn {next_lsn}, at or above the largest lsn ever written ({MAX_LSN})"
        )));
    }
    r.read_exact(&mut buf4).map_err(io)?;
    let n_spaces = u32::from_le_bytes(buf4);
    // Not reserved ahead: the count is read from the file, and each space
    // takes many bytes of it.
    let mut spaces = Vec::new();
    for _ in 0..n_spaces {
        let header: SpaceHeader = if version >= 4 {
            decoding(file_len).deserialize_from(&mut r)
        } else if version == 3 {
            decoding(file_len)
                .deserialize_from(&mut r)
                .map(|h: SpaceHeaderV3| SpaceHeader {
                    id: h.id,
                    dimension: h.dimension,
                    last_seq: h.last_seq,
                    episodes: h.episodes,
                    vector_storage: h.vector_storage,
                    default_ttl_nanos: 0,
                })
        } else {
            decoding(file_len)
                .deserialize_from(&mut r)
                .map(|h: SpaceHeaderV2| SpaceHeader {
                    id: h.id,
                    dimension: h.dimension,
                    last_seq: h.last_seq,
                    episodes: h.episodes,
                    vector_storage: VectorStorage::Memory,
                    default_ttl_nanos: 0,
                })
        }
        .map_err(|e| corrupt(format!("space header: {e}")))?;
        let mut episodes = Vec::with_capacity(
            header
                .episodes
                .min(1 << 24)
                .min(file_len / MIN_EPISODE_BYTES) as usize,
        );
        let mut previous_seq = 0;
        for _ in 0..header.episodes {
            let mut e: StoredEpisode = decoding(file_len)
                .deserialize_from(&mut r)
                .map_err(|e| corrupt(format!("episode: {e}")))?;
            if version >= 4 {
                e.expires_at_unix_nanos = decoding(file_len)
                    .deserialize_from(&mut r)
                    .map_err(|e| corrupt(format!("episode expiry: {e}")))?;
            }
            // The writer stores a space's live episodes in sequence order,
            // none above its last sequence, each vector (when held) of the
            // space's dimension: anything else would break the space's
            // invariants when applied.
            if e.server_sequence <= previous_seq || e.server_sequence > header.last_seq {
                return Err(corrupt(format!(
                    "episode '{}' of '{}' has sequence {}, expected above {previous_seq} and at most the space's last sequence {}",
                    e.id, header.id, e.server_sequence, header.last_seq
                )));
            }
            if e.holds_embedding() && e.embedding.len() != header.dimension {
                return Err(corrupt(format!(
                    "episode '{}' of '{}' has a vector of {} dimensions, the space has {}",
                    e.id,
                    header.id,
                    e.embedding.len(),
                    header.dimension
                )));
            }
            previous_seq = e.server_sequence;
            episodes.push(e);
        }
        let mut index = Hnsw::read_from_with(&mut r, &placement(header.vector_storage, vector_dir))
            .map_err(|e| {
                if VectorFileError::is(&e) {
                    Failure::Disk(Error::Storage(format!(
                        "loading compact space '{}' from snapshot {}: {e} (in {})",
                        header.id,
                        path.display(),
                        vector_dir.display()
                    )))
                } else {
                    corrupt(format!("index of '{}': {e}", header.id))
                }
            })?;
        // The index is written after the episodes were captured, so it can
        // hold later sequences; their WAL records may not have survived (a
        // power loss in `interval`/`none` mode). Those nodes are retired,
        // so the sequences can be used again by new episodes.
        let retired = index.retire_labels_above(header.last_seq);
        if retired > 0 {
            tracing::info!(
                space = %header.id,
                retired,
                last_sequence = header.last_seq,
                "index nodes above the snapshot's last sequence retired (their episodes come from the WAL, if it has them)"
            );
        }
        if index.dim() != header.dimension {
            return Err(corrupt(format!(
                "index of '{}' has dimension {}, space has {}",
                header.id,
                index.dim(),
                header.dimension
            )));
        }
        // An episode stored without its vector relies on the index for it.
        if let Some(e) = episodes
            .iter()
            .find(|e| !e.holds_embedding() && !index.contains(e.server_sequence))
        {
            return Err(corrupt(format!(
                "episode '{}' of '{}' (sequence {}) is stored without its vector, and the index does not hold it",
                e.id, header.id, e.server_sequence
            )));
        }
        let space = Space::with_index(header.id, index);
        space.set_default_ttl(
            (header.default_ttl_nanos > 0)
                .then(|| std::time::Duration::from_nanos(header.default_ttl_nanos)),
        );
        spaces.push(LoadedSpace {
            space: Arc::new(space),
            last_seq: header.last_seq,
            episodes,
        });
    }
    let expected = r.hasher.clone().finalize();
    r.inner.read_exact(&mut buf4).map_err(io)?;
    if u32::from_le_bytes(buf4) != expected {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(Loaded {
        next_lsn,
        spaces,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::SpaceCapture;
    use crate::index::HnswParams;

    fn unit(seq: u64) -> Vec<f32> {
        let v: Vec<f32> = (0..4)
            .map(|d| ((seq * 7 + d * 13) % 11) as f32 - 5.0 + 0.5)
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// A memory captured as live, then forgotten and its index node
    /// deleted before the snapshot thread writes the index: the snapshot
    /// still loads (the memory is left out; the WAL's forget record is
    /// what removes it at replay).
    #[test]
    fn a_node_deleted_after_the_capture_leaves_a_loadable_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let space = Arc::new(Space::new(
            SpaceId::parse("s").unwrap(),
            4,
            HnswParams::default(),
        ));
        for seq in 1..=300u64 {
            let e = StoredEpisode {
                id: format!("e{seq}"),
                when_unix_nanos: 0,
                what: String::new(),
                embedding: Arc::from(unit(seq)),
                encoding_confidence: 1.0,
                tags: Vec::new(),
                metadata: Default::default(),
                server_sequence: seq,
                committed_at_unix_nanos: 0,
                expires_at_unix_nanos: None,
            };
            space.apply_observe(Arc::new(e));
            assert!(space.index().insert(seq, &unit(seq)));
            space.mark_indexed(seq);
        }
        let capture = Capture {
            next_lsn: 7,
            spaces: vec![SpaceCapture {
                space: space.clone(),
                last_seq: 300,
                episodes: space.read().live_episodes().cloned().collect(),
            }],
        };
        for seq in 1..=100 {
            assert!(space.apply_forget(seq));
        }
        assert_eq!(space.reclaim_index(true), 100);
        let fs = crate::fs::os();
        write(&*fs, dir.path(), &capture).unwrap();
        let loaded = load_latest(&*fs, dir.path(), &dir.path().join("vectors"))
            .unwrap()
            .expect("the snapshot loads");
        let ls = &loaded.spaces[0];
        assert_eq!(ls.episodes.len(), 200);
        assert_eq!(ls.space.index().len(), 200);
        ls.space.index().check_integrity().unwrap();
    }
}
