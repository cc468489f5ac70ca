//! Snapshot files: every space's episodes and HNSW graph as of a WAL cut,
//! so the WAL below the cut can be deleted and recovery replays only the
//! tail. Written to a temporary file, fsynced, then renamed into place, so
//! a crash mid-write leaves the previous snapshot in charge.
//!
//! Layout (little-endian): magic `ENGRAMSN`, version u32, next_lsn u64,
//! space count u32; per space a bincode `SpaceHeader`, its episodes, then the
//! index's own serialisation; finally a CRC32 of everything before it.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::commit::Capture;
use crate::error::{Error, Result};
use crate::index::Hnsw;
use crate::model::{SpaceId, StoredEpisode};
use crate::space::Space;
use crate::wal::Lsn;

const MAGIC: &[u8; 8] = b"ENGRAMSN";
const VERSION: u32 = 1;
const DIR: &str = "snapshots";

#[derive(Serialize, Deserialize)]
struct SpaceHeader {
    id: SpaceId,
    dimension: usize,
    last_seq: u64,
    episodes: u64,
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
fn list(data_dir: &Path) -> io::Result<Vec<(Lsn, PathBuf)>> {
    let dir = snapshot_dir(data_dir);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(lsn) = name
            .strip_prefix("snapshot-")
            .and_then(|r| r.strip_suffix(".snap"))
            .and_then(|n| n.parse::<Lsn>().ok())
        {
            out.push((lsn, path));
        }
    }
    out.sort();
    Ok(out)
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

/// Writes a snapshot of `capture` and returns its path. Older snapshot
/// files are removed once the new one is in place.
///
/// # Errors
/// [`Error::Storage`] on any I/O failure; the previous snapshot stays valid.
pub fn write(data_dir: &Path, capture: &Capture) -> Result<PathBuf> {
    let dir = snapshot_dir(data_dir);
    fs::create_dir_all(&dir).map_err(|e| storage("creating the snapshot directory", e))?;
    let final_path = dir.join(file_name(capture.next_lsn));
    let tmp_path = dir.join(format!("{}.tmp", file_name(capture.next_lsn)));
    let file = File::create(&tmp_path).map_err(|e| storage("creating the snapshot file", e))?;
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
            let header = SpaceHeader {
                id: sc.space.id().clone(),
                dimension: sc.space.dimension(),
                last_seq: sc.last_seq,
                episodes: sc.episodes.len() as u64,
            };
            bincode::serialize_into(&mut w, &header).map_err(io::Error::other)?;
            for e in &sc.episodes {
                bincode::serialize_into(&mut w, e.as_ref()).map_err(io::Error::other)?;
            }
            sc.space.index().write_to(&mut w)?;
        }
        let crc = w.hasher.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())?;
        let file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp_path);
        return Err(storage("writing the snapshot", e));
    }
    fs::rename(&tmp_path, &final_path)
        .map_err(|e| storage("renaming the snapshot into place", e))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage("syncing the snapshot directory", e))?;
    for (lsn, path) in list(data_dir).map_err(|e| storage("listing snapshots", e))? {
        if lsn < capture.next_lsn {
            let _ = fs::remove_file(path);
        }
    }
    Ok(final_path)
}

/// Loads the newest snapshot, if any. Leftover temporary files from a crash
/// mid-write are removed.
///
/// # Errors
/// [`Error::Storage`] when the newest snapshot is unreadable or corrupt:
/// starting without it would silently lose acked data.
pub fn load_latest(data_dir: &Path) -> Result<Option<Loaded>> {
    let dir = snapshot_dir(data_dir);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|x| x == "tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let Some((_, path)) = list(data_dir)
        .map_err(|e| storage("listing snapshots", e))?
        .pop()
    else {
        return Ok(None);
    };
    let file = File::open(&path).map_err(|e| storage("opening the snapshot", e))?;
    let mut r = Crc {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
    };
    let corrupt =
        |what: String| Error::Storage(format!("snapshot {} is corrupt: {what}", path.display()));
    let mut buf8 = [0u8; 8];
    let mut buf4 = [0u8; 4];
    let io = |e: io::Error| Error::Storage(format!("reading snapshot {}: {e}", path.display()));
    r.read_exact(&mut buf8).map_err(io)?;
    if &buf8 != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    r.read_exact(&mut buf4).map_err(io)?;
    let version = u32::from_le_bytes(buf4);
    if version != VERSION {
        return Err(corrupt(format!(
            "version {version}, this build reads {VERSION}"
        )));
    }
    r.read_exact(&mut buf8).map_err(io)?;
    let next_lsn = u64::from_le_bytes(buf8);
    r.read_exact(&mut buf4).map_err(io)?;
    let n_spaces = u32::from_le_bytes(buf4);
    let mut spaces = Vec::with_capacity(n_spaces as usize);
    for _ in 0..n_spaces {
        let header: SpaceHeader =
            bincode::deserialize_from(&mut r).map_err(|e| corrupt(format!("space header: {e}")))?;
        let mut episodes = Vec::with_capacity(header.episodes.min(1 << 24) as usize);
        for _ in 0..header.episodes {
            let e: StoredEpisode =
                bincode::deserialize_from(&mut r).map_err(|e| corrupt(format!("episode: {e}")))?;
            episodes.push(e);
        }
        let mut index = Hnsw::read_from(&mut r)
            .map_err(|e| corrupt(format!("index of '{}': {e}", header.id)))?;
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
        spaces.push(LoadedSpace {
            space: Arc::new(Space::with_index(header.id, index)),
            last_seq: header.last_seq,
            episodes,
        });
    }
    let expected = r.hasher.clone().finalize();
    r.inner.read_exact(&mut buf4).map_err(io)?;
    if u32::from_le_bytes(buf4) != expected {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(Some(Loaded {
        next_lsn,
        spaces,
        path,
    }))
}
