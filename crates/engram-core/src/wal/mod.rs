//! The segmented write-ahead log: bytes, checksums and fsync.
//!
//! This layer knows nothing of episodes. The engine encodes its typed records
//! (see [`crate::record`]) into payload bytes, and this module makes them
//! durable and gives them back at recovery. One commit thread owns the
//! [`Wal`] and does group commit: [`Wal::append`] a batch, [`Wal::sync`] once,
//! then ack the batch.
//!
//! - `format` — the bytes on disk: segment names, header, record frame.
//! - `recovery` — reading the log back at open: intact records, the torn
//!   tail of an unfinished write (dropped), and real corruption (refused).
//! - `writer` — [`Wal`]: appending, flushing, syncing, rotating segments
//!   and deleting the ones a snapshot covers.

mod format;
mod recovery;
mod writer;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use writer::Wal;

/// Log sequence number: 1, 2, 3, ... one per record, increasing across
/// segments and restarts. An acknowledged record's lsn is never reused.
pub type Lsn = u64;

/// Lsns at or above this are never written: at a billion records a second
/// the log would take 292 years to get there. Recovery refuses a segment
/// (and the snapshot loader a snapshot) that claims one, so that a damaged
/// or hostile lsn cannot run the log into the end of the `u64` range,
/// where the next lsn would overflow.
pub const MAX_LSN: Lsn = 1 << 63;

/// A record as recovery returns it: its lsn and its payload bytes, which the
/// engine decodes into its typed [`crate::record::WalRecord`].
pub type RawRecord = (Lsn, Vec<u8>);

/// Largest payload one record may carry.
///
/// The largest observation the spec allows (64 KiB of text, an embedding of a
/// few thousand floats, tags and metadata) is far below this, so a length
/// above it read back at recovery can only be damage and is rejected before
/// any buffer is allocated for it.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// Default size at which a new segment is started.
///
/// Small enough that truncation after a snapshot frees disk in fine steps,
/// large enough that rotation (a file create plus an fsync) happens at most a
/// few times a second even at the spec's peak of 100K observations/s of a
/// few KiB each.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// When the engine makes appended records durable. The WAL only carries this
/// as data; the commit thread decides when to call [`Wal::sync`] and
/// [`Wal::flush`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Sync before every ack (one fsync per group-commit batch): an ack
    /// survives power loss. The default, because the spec promises durable
    /// acks.
    #[default]
    Always,
    /// Flush to the OS before every ack and sync on a timer: an ack survives
    /// `kill -9`, and a power loss can lose the last interval.
    Interval,
    /// Flush to the OS before every ack and sync only when a segment is
    /// finished (rotation), at snapshots and at shutdown: an ack survives
    /// `kill -9`; a power loss can lose what was acked since the last of
    /// those.
    None,
}

impl SyncPolicy {
    /// Every policy, in the order the error message and docs list them.
    pub const ALL: [SyncPolicy; 3] = [SyncPolicy::Always, SyncPolicy::Interval, SyncPolicy::None];

    /// The name used in configuration files, flags and environment variables.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::Always => "always",
            SyncPolicy::Interval => "interval",
            SyncPolicy::None => "none",
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WAL sync policy name that is not one of `always`, `interval`, `none`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown WAL sync policy {got:?}: expected one of always, interval, none")]
pub struct ParseSyncPolicyError {
    /// The text that was given.
    pub got: String,
}

impl FromStr for SyncPolicy {
    type Err = ParseSyncPolicyError;

    /// Parses `always`, `interval` or `none`, ignoring ASCII case so that
    /// `ENGRAM_WAL_SYNC=Always` is not a startup failure.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        SyncPolicy::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseSyncPolicyError { got: s.to_owned() })
    }
}

/// How the WAL lays out its files.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A new segment is started before a record that would take the current
    /// one past this many bytes (a segment always holds at least one record,
    /// so a single larger record gets a segment of its own).
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Errors of the WAL layer.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The operating system refused a file operation.
    // The OS error is in the message as well as the source: callers turn
    // this into a string for logs and replies, and "could not sync" without
    // "no space left on device" tells an operator nothing.
    #[error("WAL I/O error: could not {action} {}: {source}", path.display())]
    Io {
        /// What the WAL was doing, e.g. "sync segment".
        action: &'static str,
        /// The file or directory it was doing it to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A damaged record or header that is not the torn tail of an unfinished
    /// write, so it may hold acknowledged data: the WAL refuses to open
    /// rather than silently drop it.
    #[error(
        "WAL segment {} is corrupt at byte {offset}: {reason}. This is not the torn tail of an \
         unfinished write, so acknowledged records may be damaged and the WAL will not open; \
         check the disk and restore the segment from a backup",
        segment.display()
    )]
    Corrupt {
        /// The segment file holding the damage.
        segment: PathBuf,
        /// Byte offset of the damaged header or record in that file.
        offset: u64,
        /// What was expected and what was found.
        reason: String,
    },

    /// Records that recovery needs (lsn >= `from_lsn`) are in no segment.
    #[error(
        "WAL records from lsn {expected} to {} are missing: segment {} starts at lsn {found}, \
         but recovery needs every record from lsn {expected} on. A segment was deleted, or the \
         snapshot given to recovery is older than the one the WAL was truncated for",
        found - 1,
        segment.display()
    )]
    Gap {
        /// The first missing lsn.
        expected: Lsn,
        /// The lsn the log continues at.
        found: Lsn,
        /// The segment that starts at `found`.
        segment: PathBuf,
    },

    /// A payload over [`MAX_RECORD_BYTES`]; nothing was written.
    #[error("WAL record of {len} bytes is over the maximum of {max} bytes; nothing was written")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// [`MAX_RECORD_BYTES`].
        max: usize,
    },

    /// An earlier write, flush or sync failed, so what reached the disk is
    /// unknown (after a failed fsync the kernel may already have dropped the
    /// dirty pages): appending more could bury a hole in the middle of the
    /// log. Reopen the WAL, which keeps every intact record.
    #[error(
        "the WAL refuses writes after an earlier failure ({first_failure}); records appended \
         since the last successful sync may or may not be on disk. Reopen the WAL to recover"
    )]
    Poisoned {
        /// The error that poisoned it.
        first_failure: String,
    },
}

/// Result of WAL operations.
pub type Result<T> = std::result::Result<T, WalError>;

impl From<WalError> for crate::error::Error {
    fn from(e: WalError) -> Self {
        crate::error::Error::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policy_parses_its_own_display() {
        for policy in SyncPolicy::ALL {
            assert_eq!(policy.to_string().parse::<SyncPolicy>(), Ok(policy));
        }
        assert_eq!(" Always".parse::<SyncPolicy>(), Ok(SyncPolicy::Always));
        assert_eq!(SyncPolicy::default(), SyncPolicy::Always);
    }

    #[test]
    fn unknown_sync_policy_lists_the_valid_ones() {
        let err = "sometimes".parse::<SyncPolicy>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"sometimes\""), "{msg}");
        assert!(msg.contains("always, interval, none"), "{msg}");
    }
}
