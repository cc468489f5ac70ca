//! The file system under the WAL and the snapshots: a small trait, so that
//! the code that promises durability can be run against a file system that
//! forgets, like a disk losing power, whatever was not fsynced.
//!
//! - [`FileSystem`] — the operations storage uses: create, open, read,
//!   write, `fsync` of a file ([`WriteFile::sync_data`]) and of a directory
//!   ([`FileSystem::sync_dir`]), rename, remove, list, lock.
//! - [`OsFs`] — the real one (`std::fs`), what the server runs on.
//! - [`SimFs`] — one in memory that records, per file and per directory
//!   entry, what was fsynced, and can cut the power at any operation: what
//!   survives is only what was synced, unsynced appends possibly torn at any
//!   byte, and directory changes (creates, renames, removes) only as far as
//!   a directory fsync covered them. The power-loss tests run the engine on
//!   it (`crates/engram-core/tests/power_loss.rs`).
//!
//! Why a trait of our own rather than a crate: the point is the model of
//! what a power cut keeps, which no file-system abstraction crate offers,
//! and the surface the storage code needs is a dozen calls.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;

mod sim;

pub use sim::{Cut, CutAt, OpKind, SimFs, Survival};

/// A file open for writing.
pub trait WriteFile: Write + Seek + Send + fmt::Debug {
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A file open for reading.
pub trait ReadFile: Read + Seek + Send + fmt::Debug {
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name (not its path).
    pub name: String,
    /// A regular file (not a directory or anything else).
    pub is_file: bool,
}

/// Held while a directory is locked; dropping it unlocks.
pub type LockGuard = Box<dyn Send + Sync>;

/// The operations the WAL, the snapshots and recovery perform on files.
/// Paths are what the engine was configured with (absolute or relative for
/// [`OsFs`], absolute for [`SimFs`]).
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates `path` and every missing directory above it. Not durable by
    /// itself: see [`create_dir_durable`].
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Whether `path` exists and is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The entries of a directory, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    /// Opens an existing file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    /// Opens an existing file for writing at offset 0, without truncating.
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Creates a file that must not exist yet, open for writing.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Creates a file, or truncates an existing one, open for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file within its directory, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creation, removal and renaming of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the file `path` (created if missing);
    /// `WouldBlock` when another holder has it.
    fn lock(&self, path: &Path) -> io::Result<LockGuard>;
}

/// The real file system.
pub fn os() -> Arc<dyn FileSystem> {
    Arc::new(OsFs)
}

/// Creates `dir` (and what is missing above it) so that it survives a power
/// loss: the parent of every level created is fsynced. When `dir` already
/// existed its parent is fsynced too, since the run that created it may
/// have died before doing so; that sync is best effort (a failure is
/// logged), as the parent may be a mount point's read-only directory.
///
/// # Errors
/// The first I/O error creating a level or syncing a new level's parent.
pub fn create_dir_durable(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    fn parent_of(p: &Path) -> &Path {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        }
    }
    // The levels that do not exist yet, deepest first.
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        if p.as_os_str().is_empty() || p.parent().is_none() || fs.is_dir(p) {
            break;
        }
        missing.push(p);
        at = p.parent();
    }
    fs.create_dir_all(dir)?;
    for p in missing.iter().rev() {
        fs.sync_dir(parent_of(p))?;
    }
    if missing.is_empty() {
        if let Err(e) = fs.sync_dir(parent_of(dir)) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not fsync the directory above");
        }
    }
    Ok(())
}

/// [`FileSystem`] on `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsFs;

#[derive(Debug)]
struct OsFile(File);

impl Write for OsFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Read for OsFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for OsFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl WriteFile for OsFile {
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl ReadFile for OsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl FileSystem for OsFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            // A name that is not UTF-8 is no file of ours.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            out.push(DirEntry {
                name,
                is_file: entry.file_type()?.is_file(),
            });
        }
        Ok(out)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(OsFile(File::open(path)?)))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        Ok(Box::new(OsFile(OpenOptions::new().write(true).open(path)?)))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        Ok(Box::new(OsFile(File::create(path)?)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        // Windows cannot open a directory as a file; NTFS journals directory
        // entries itself.
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }

    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "held by another process",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}
