//! [`Wal`]: where records are appended, where the WAL is synced, where
//! segments are rotated and where old ones are deleted.

use std::collections::VecDeque;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::fs::{self, FileSystem, WriteFile};

use super::format::{self, FrameHeader, FRAME_HEADER_LEN, HEADER_LEN};
use super::recovery::{self, io_err, Segment};
use super::{Lsn, RawRecord, Result, WalError, WalOptions, MAX_RECORD_BYTES};

/// Write buffer in front of the active segment: a group-commit batch of a
/// few hundred observations reaches the OS in a handful of writes.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The segmented write-ahead log of one engine.
///
/// Owned by the single commit thread (hence `&mut self` everywhere, and no
/// lock). Records are buffered by [`append`](Wal::append), handed to the OS
/// by [`flush`](Wal::flush) and made durable by [`sync`](Wal::sync).
///
/// After any failed write, flush or sync the `Wal` is poisoned: every later
/// write returns [`WalError::Poisoned`], because what reached the disk is
/// unknown. Reopening recovers every intact record.
#[derive(Debug)]
pub struct Wal {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    opts: WalOptions,
    /// Segments before the active one, oldest first; kept so that
    /// truncation needs no directory listing.
    closed: VecDeque<Segment>,
    active: Active,
    next_lsn: Lsn,
    /// A segment file was created or removed since the directory was last
    /// synced; until it is, a crash can lose the file itself.
    dir_dirty: bool,
    poisoned: Option<String>,
    /// Durability points passed: see [`Wal::durable_points`].
    durable_points: Arc<AtomicU64>,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    first_lsn: Lsn,
    path: PathBuf,
    out: BufWriter<Box<dyn WriteFile>>,
    /// Bytes written to it, buffered ones included.
    len: u64,
}

impl Wal {
    /// Opens the WAL in `dir` (creating the directory if needed), reads all
    /// segments, and returns the WAL positioned for appending plus every
    /// intact record with lsn >= `from_lsn`, in lsn order.
    ///
    /// `from_lsn` is the first lsn the caller's snapshot does not cover (0 or
    /// 1 without a snapshot). Records below it are skipped, and segments
    /// holding only such records are not read. The next lsn is one past the
    /// last record, and never below `from_lsn`: with no segments (a fresh
    /// directory, or everything truncated after a snapshot) the log starts
    /// at `max(1, from_lsn)`.
    ///
    /// A torn record at the end of the last segment — an unfinished write,
    /// never acknowledged — is dropped with a warning and cut off the file;
    /// so is a last segment whose creation a crash cut short. Everything
    /// returned is synced before this returns: after a process crash it may
    /// have been only in the OS's cache.
    ///
    /// # Errors
    /// [`WalError::Corrupt`] for damage anywhere else (the WAL will not
    /// silently drop records that may have been acknowledged),
    /// [`WalError::Gap`] when records at or above `from_lsn` are missing, and
    /// [`WalError::Io`] when the file system fails.
    pub fn open(dir: &Path, opts: WalOptions, from_lsn: Lsn) -> Result<(Wal, Vec<RawRecord>)> {
        Wal::open_on(fs::os(), dir, opts, from_lsn)
    }

    /// [`Wal::open`] on the file system `fs`.
    ///
    /// # Errors
    /// As [`Wal::open`].
    pub fn open_on(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        opts: WalOptions,
        from_lsn: Lsn,
    ) -> Result<(Wal, Vec<RawRecord>)> {
        // The directory's own entry (and its parents') must survive a power
        // loss too; synced even when it exists, since the run that created
        // it may have died before syncing.
        fs::create_dir_durable(&*fs, dir).map_err(io_err("create the WAL directory", dir))?;
        let recovered = recovery::recover(&*fs, dir, from_lsn)?;
        let mut closed: VecDeque<Segment> = recovered.segments.into();
        let floor = recovered.min_next_lsn.max(from_lsn).max(1);

        let (active, next_lsn) = match recovered.tail {
            Some(tail) if tail.next_lsn >= floor => {
                let last = closed.pop_back().expect("a tail belongs to a segment");
                let mut file = fs
                    .open_write(&last.path)
                    .map_err(io_err("open segment", &last.path))?;
                file.seek(SeekFrom::Start(tail.len))
                    .map_err(io_err("seek in segment", &last.path))?;
                let active = Active {
                    first_lsn: last.first_lsn,
                    path: last.path,
                    out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
                    len: tail.len,
                };
                (active, tail.next_lsn)
            }
            tail => {
                if let Some(tail) = tail {
                    // The snapshot covers records this log lost (it was taken
                    // of data that never became durable here). Those lsns
                    // must not be handed out again, so the log jumps ahead,
                    // in a new segment because a segment's lsns are
                    // contiguous.
                    tracing::warn!(
                        wal_next_lsn = tail.next_lsn,
                        from_lsn = floor,
                        "the WAL ends below the snapshot's next lsn; continuing at the snapshot's"
                    );
                }
                (create_segment(&*fs, dir, floor)?, floor)
            }
        };
        let mut wal = Wal {
            fs,
            dir: dir.to_path_buf(),
            opts,
            closed,
            active,
            next_lsn,
            // Also when open created or removed nothing: the last run may
            // have crashed before syncing the directory after creating the
            // segment that is now active.
            dir_dirty: true,
            poisoned: None,
            durable_points: Arc::default(),
        };
        // What recovery read may be only in the OS's cache (the last run
        // was killed before its sync): make it durable before anything is
        // served or answered `duplicate` on the strength of it.
        wal.sync()?;
        Ok((wal, recovered.records))
    }

    /// Buffers one record and returns its lsn. It is not durable until
    /// [`sync`](Wal::sync), and not even handed to the OS until
    /// [`flush`](Wal::flush) or until the buffer fills.
    ///
    /// Starts a new segment first when this record would take the current
    /// one past [`WalOptions::segment_bytes`]; the finished segment is synced
    /// then, so that only the last segment ever holds unsynced bytes (which
    /// is what lets recovery tell a torn tail from corruption).
    ///
    /// # Errors
    /// [`WalError::RecordTooLarge`] (nothing written, the WAL stays usable),
    /// [`WalError::Io`] (the WAL is poisoned), [`WalError::Poisoned`].
    pub fn append(&mut self, payload: &[u8]) -> Result<Lsn> {
        self.check_usable()?;
        if payload.len() > MAX_RECORD_BYTES {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let frame_len = (FRAME_HEADER_LEN + payload.len()) as u64;
        if self.active_has_records() && self.active.len + frame_len > self.opts.segment_bytes {
            self.start_segment()?;
        }
        let lsn = self.next_lsn;
        let frame = FrameHeader::new(lsn, payload);
        let out = &mut self.active.out;
        let written = out
            .write_all(&frame.encode())
            .and_then(|()| out.write_all(payload));
        self.poison_on(written, "append a record to")?;
        self.active.len += frame_len;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Hands every buffered record to the file and fdatasyncs it; after `Ok`
    /// every appended record is durable. Also syncs the directory when a
    /// segment file was created or removed since the last sync, so that the
    /// file itself survives a crash.
    ///
    /// # Errors
    /// [`WalError::Io`] (the WAL is poisoned: a failed fsync cannot be
    /// retried, the kernel may have dropped the data), [`WalError::Poisoned`].
    pub fn sync(&mut self) -> Result<()> {
        self.check_usable()?;
        let out = &mut self.active.out;
        let synced = out.flush().and_then(|()| out.get_ref().sync_data());
        self.poison_on(synced, "sync segment")?;
        self.sync_dir_if_dirty()?;
        self.durable_points.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn sync_dir_if_dirty(&mut self) -> Result<()> {
        if self.dir_dirty {
            if let Err(source) = self.fs.sync_dir(&self.dir) {
                let dir = self.dir.clone();
                return Err(self.poison(source, "sync the WAL directory", dir));
            }
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// How many times everything appended so far was made durable: a
    /// successful [`sync`](Wal::sync), or a rotation (which syncs the
    /// finished segment and the directory). A record appended before this
    /// count moved on survives a power loss, whatever the sync policy. The
    /// handle stays valid after the WAL moves to the commit thread.
    pub fn durable_points(&self) -> Arc<AtomicU64> {
        self.durable_points.clone()
    }

    /// Hands every buffered record to the OS without fsync, so that a
    /// process crash (`kill -9`) loses none of them; a power loss still can.
    ///
    /// # Errors
    /// [`WalError::Io`] (the WAL is poisoned), [`WalError::Poisoned`].
    pub fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        let flushed = self.active.out.flush();
        self.poison_on(flushed, "write to segment")
    }

    /// Closes the current segment and starts a new one, and syncs both:
    /// everything appended so far is durable when this returns. Returns the
    /// first lsn the new segment will hold, so a snapshot of everything
    /// below it lets [`truncate_before`](Wal::truncate_before) delete every
    /// older segment.
    ///
    /// When the current segment holds no record yet it already is the
    /// segment that starts at [`next_lsn`](Wal::next_lsn), and is kept.
    ///
    /// # Errors
    /// As [`sync`](Wal::sync); creating the file may also fail.
    pub fn rotate(&mut self) -> Result<Lsn> {
        self.check_usable()?;
        if self.active_has_records() {
            self.start_segment()?;
        }
        self.sync()?;
        Ok(self.next_lsn)
    }

    /// Deletes the segments all of whose records have lsn < `lsn`, oldest
    /// first; never the current segment. Returns how many files were
    /// removed. The next [`sync`](Wal::sync) makes the removal durable
    /// (until then a crash may bring files back, which is harmless: their
    /// records are below the snapshot and skipped).
    ///
    /// # Errors
    /// [`WalError::Io`] when a file cannot be removed; the ones removed
    /// before it stay removed.
    pub fn truncate_before(&mut self, lsn: Lsn) -> Result<usize> {
        let mut removed = 0;
        while let Some(oldest) = self.closed.front() {
            // A segment holds every lsn up to the next segment's first.
            let end = self
                .closed
                .get(1)
                .map_or(self.active.first_lsn, |s| s.first_lsn);
            if end > lsn {
                break;
            }
            match self.fs.remove_file(&oldest.path) {
                Ok(()) => {}
                // Already gone (an operator cleaned up): the goal is met.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(WalError::Io {
                        action: "remove old segment",
                        path: oldest.path.clone(),
                        source,
                    });
                }
            }
            self.closed.pop_front();
            self.dir_dirty = true;
            removed += 1;
        }
        Ok(removed)
    }

    /// The lsn the next [`append`](Wal::append) returns.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many segment files exist, the current one included.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    /// Drops the buffered bytes without writing them, as `kill -9` would.
    #[cfg(test)]
    pub(crate) fn simulate_crash(self) {
        let (_file, _unwritten) = self.active.out.into_parts();
    }

    fn active_has_records(&self) -> bool {
        self.next_lsn > self.active.first_lsn
    }

    /// Syncs the current segment and continues in a new one at `next_lsn`,
    /// then syncs the directory: every finished segment's entry is durable
    /// (also in `none` mode, where no other sync may come), and the new one
    /// is. Everything appended so far is durable when this returns.
    fn start_segment(&mut self) -> Result<()> {
        let out = &mut self.active.out;
        let synced = out.flush().and_then(|()| out.get_ref().sync_data());
        self.poison_on(synced, "sync segment")?;
        // Nothing was written if this fails, so the WAL stays usable.
        let next = create_segment(&*self.fs, &self.dir, self.next_lsn)?;
        let done = std::mem::replace(&mut self.active, next);
        self.closed.push_back(Segment {
            first_lsn: done.first_lsn,
            path: done.path,
        });
        self.dir_dirty = true;
        self.sync_dir_if_dirty()?;
        self.durable_points.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(first_failure) => Err(WalError::Poisoned {
                first_failure: first_failure.clone(),
            }),
        }
    }

    /// Passes `result` through, poisoning the WAL on an error from the
    /// active segment.
    fn poison_on<T>(&mut self, result: io::Result<T>, action: &'static str) -> Result<T> {
        result.map_err(|source| {
            let path = self.active.path.clone();
            self.poison(source, action, path)
        })
    }

    fn poison(&mut self, source: io::Error, action: &'static str, path: PathBuf) -> WalError {
        self.poisoned = Some(format!("could not {action} {}: {source}", path.display()));
        WalError::Io {
            action,
            path,
            source,
        }
    }
}

/// Creates the segment whose first record will have `first_lsn`, with its
/// header buffered.
fn create_segment(fs: &dyn FileSystem, dir: &Path, first_lsn: Lsn) -> Result<Active> {
    let path = dir.join(format::segment_file_name(first_lsn));
    let file = fs
        .create_new(&path)
        .map_err(io_err("create segment", &path))?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    out.write_all(&format::encode_header(first_lsn))
        .map_err(io_err("write the header of segment", &path))?;
    Ok(Active {
        first_lsn,
        path,
        out,
        len: HEADER_LEN as u64,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    use super::*;

    fn payload(lsn: Lsn) -> Vec<u8> {
        format!("observation number {lsn}").into_bytes()
    }

    fn opts(segment_bytes: u64) -> WalOptions {
        WalOptions { segment_bytes }
    }

    fn open(dir: &Path, segment_bytes: u64, from_lsn: Lsn) -> (Wal, Vec<RawRecord>) {
        Wal::open(dir, opts(segment_bytes), from_lsn).unwrap()
    }

    fn lsns(records: &[(Lsn, Vec<u8>)]) -> Vec<Lsn> {
        records.iter().map(|(lsn, _)| *lsn).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn records_round_trip_across_segments_and_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("wal");
        let (mut wal, got) = open(&dir, 100, 0);
        assert!(got.is_empty());
        for lsn in 1..=20 {
            assert_eq!(wal.append(&payload(lsn)).unwrap(), lsn);
        }
        wal.sync().unwrap();
        assert!(
            wal.segment_count() >= 5,
            "100-byte segments hold two records each"
        );
        assert_eq!(wal.segment_count(), segment_files(&dir).len());
        drop(wal);

        let (mut wal, got) = open(&dir, 100, 0);
        assert_eq!(got, (1..=20).map(|l| (l, payload(l))).collect::<Vec<_>>());
        assert_eq!(wal.next_lsn(), 21);
        for lsn in 21..=25 {
            assert_eq!(wal.append(&payload(lsn)).unwrap(), lsn);
        }
        wal.sync().unwrap();
        drop(wal);

        let (wal, got) = open(&dir, 100, 0);
        assert_eq!(got, (1..=25).map(|l| (l, payload(l))).collect::<Vec<_>>());
        assert_eq!(wal.next_lsn(), 26);
        assert_eq!(wal.dir(), dir.as_path());
        assert_eq!(wal.segment_count(), segment_files(&dir).len());
    }

    #[test]
    fn segments_are_cut_before_the_record_that_would_overfill_them() {
        const SEGMENT_BYTES: u64 = 200;
        let size = |lsn: Lsn| (lsn as usize * 7) % 250;
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), SEGMENT_BYTES, 0);
        for lsn in 1..=30 {
            wal.append(&vec![lsn as u8; size(lsn)]).unwrap();
        }
        wal.sync().unwrap();

        let files = segment_files(tmp.path());
        let firsts: Vec<Lsn> = files
            .iter()
            .map(|f| {
                format::parse_segment_file_name(f.file_name().unwrap().to_str().unwrap()).unwrap()
            })
            .collect();
        for (i, file) in files.iter().enumerate() {
            let end = firsts.get(i + 1).copied().unwrap_or(31);
            let records = end - firsts[i];
            let len = fs::metadata(file).unwrap().len();
            assert!(records >= 1, "{} is empty", file.display());
            assert!(
                records == 1 || len <= SEGMENT_BYTES,
                "{} holds {records} records in {len} bytes",
                file.display()
            );
            if end <= 30 {
                let next = (FRAME_HEADER_LEN + size(end)) as u64;
                assert!(
                    len + next > SEGMENT_BYTES,
                    "lsn {end} would have fit in {}",
                    file.display()
                );
            }
        }
        assert_eq!(
            lsns(&open(tmp.path(), SEGMENT_BYTES, 0).1),
            (1..=30).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_empty_dir_starts_at_from_lsn() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, got) = open(tmp.path(), u64::MAX, 5000);
        assert!(got.is_empty());
        assert_eq!(wal.next_lsn(), 5000);
        assert_eq!(wal.append(b"first after the snapshot").unwrap(), 5000);
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(
            segment_files(tmp.path()),
            vec![tmp.path().join(format::segment_file_name(5000))]
        );
        let (wal, got) = open(tmp.path(), u64::MAX, 5000);
        assert_eq!(got, vec![(5000, b"first after the snapshot".to_vec())]);
        assert_eq!(wal.next_lsn(), 5001);

        let fresh = tmp.path().join("fresh");
        assert_eq!(open(&fresh, u64::MAX, 0).0.next_lsn(), 1);
    }

    #[test]
    fn from_lsn_skips_lower_records() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), 100, 0);
        for lsn in 1..=30 {
            wal.append(&payload(lsn)).unwrap();
        }
        drop(wal);
        for from in [0, 1, 2, 17, 30, 31] {
            let (wal, got) = open(tmp.path(), 100, from);
            assert_eq!(
                got,
                (from.max(1)..=30)
                    .map(|l| (l, payload(l)))
                    .collect::<Vec<_>>(),
                "from {from}"
            );
            assert_eq!(wal.next_lsn(), 31);
        }
    }

    #[test]
    fn a_snapshot_ahead_of_the_log_moves_the_log_ahead() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), u64::MAX, 0);
        for lsn in 1..=3 {
            wal.append(&payload(lsn)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);

        let (mut wal, got) = open(tmp.path(), u64::MAX, 10);
        assert!(got.is_empty());
        assert_eq!(
            wal.next_lsn(),
            10,
            "lsns the snapshot covers are never handed out again"
        );
        assert_eq!(wal.append(&payload(10)).unwrap(), 10);
        wal.sync().unwrap();
        drop(wal);

        let (_, got) = open(tmp.path(), u64::MAX, 10);
        assert_eq!(got, vec![(10, payload(10))]);
        // Recovery from an older snapshot would need lsns 4..9, which are gone.
        let err = Wal::open(tmp.path(), opts(u64::MAX), 2).unwrap_err();
        assert!(
            matches!(
                err,
                WalError::Gap {
                    expected: 4,
                    found: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncate_before_removes_only_fully_covered_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), u64::MAX, 0);
        // Segments [1, 4), [4, 7) and the current one from 7.
        for lsn in 1..=3 {
            wal.append(&payload(lsn)).unwrap();
        }
        assert_eq!(wal.rotate().unwrap(), 4);
        for lsn in 4..=6 {
            wal.append(&payload(lsn)).unwrap();
        }
        assert_eq!(wal.rotate().unwrap(), 7);
        for lsn in 7..=8 {
            wal.append(&payload(lsn)).unwrap();
        }
        assert_eq!(wal.segment_count(), 3);

        assert_eq!(wal.truncate_before(3).unwrap(), 0, "lsn 3 is still needed");
        assert_eq!(wal.truncate_before(5).unwrap(), 1);
        assert_eq!(segment_files(tmp.path()).len(), 2);
        assert_eq!(wal.truncate_before(7).unwrap(), 1);
        assert_eq!(
            wal.truncate_before(100).unwrap(),
            0,
            "the current segment stays"
        );
        assert_eq!(wal.segment_count(), 1);
        assert_eq!(
            segment_files(tmp.path()),
            vec![tmp.path().join(format::segment_file_name(7))]
        );
        wal.sync().unwrap();
        drop(wal);

        let (wal, got) = open(tmp.path(), u64::MAX, 7);
        assert_eq!(lsns(&got), vec![7, 8]);
        assert_eq!(wal.next_lsn(), 9);
    }

    #[test]
    fn rotate_returns_the_new_segments_first_lsn_and_keeps_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), u64::MAX, 0);
        assert_eq!(wal.rotate().unwrap(), 1);
        assert_eq!(wal.segment_count(), 1);
        wal.append(b"one").unwrap();
        assert_eq!(wal.rotate().unwrap(), 2);
        let second = tmp.path().join(format::segment_file_name(2));
        let on_disk = fs::metadata(&second).unwrap().len();
        assert_eq!(on_disk, HEADER_LEN as u64, "the new segment is on disk");
        assert_eq!(wal.rotate().unwrap(), 2);
        assert_eq!(wal.segment_count(), 2);
        assert_eq!(segment_files(tmp.path()).len(), 2);
        // rotate() left everything durable: a crash loses nothing.
        wal.simulate_crash();
        let (wal, got) = open(tmp.path(), u64::MAX, 0);
        assert_eq!(got, vec![(1, b"one".to_vec())]);
        assert_eq!(wal.next_lsn(), 2);
    }

    #[test]
    fn a_record_over_the_maximum_is_refused_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), u64::MAX, 0);
        let err = wal.append(&vec![0u8; MAX_RECORD_BYTES + 1]).unwrap_err();
        assert!(
            matches!(err, WalError::RecordTooLarge { len, max } if len == MAX_RECORD_BYTES + 1 && max == MAX_RECORD_BYTES)
        );
        assert_eq!(wal.append(b"still usable").unwrap(), 1);
    }

    #[test]
    fn a_crash_keeps_flushed_records_and_loses_buffered_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), u64::MAX, 0);
        for lsn in 1..=3 {
            wal.append(&payload(lsn)).unwrap();
        }
        wal.flush().unwrap();
        for lsn in 4..=5 {
            wal.append(&payload(lsn)).unwrap();
        }
        wal.simulate_crash();
        let (wal, got) = open(tmp.path(), u64::MAX, 0);
        assert_eq!(lsns(&got), vec![1, 2, 3]);
        assert_eq!(wal.next_lsn(), 4);
    }

    /// One step of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<u8>),
        Sync,
        Flush,
        Rotate,
        /// Rotate, then delete every segment below the returned lsn, which
        /// later opens pass as `from_lsn`: what the engine does after
        /// writing a snapshot.
        Snapshot,
        /// Close and reopen. A crash loses the write buffer and keeps a part
        /// (`keep_per_mille`) of the bytes written to the last segment since
        /// the last flush or sync.
        Reopen {
            crash: bool,
            keep_per_mille: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Op::Append),
            2 => Just(Op::Sync),
            1 => Just(Op::Flush),
            1 => Just(Op::Rotate),
            1 => Just(Op::Snapshot),
            2 => (any::<bool>(), 0u64..=1000).prop_map(|(crash, keep_per_mille)| Op::Reopen { crash, keep_per_mille }),
        ]
    }

    /// What the WAL must give back.
    struct Model {
        dir: PathBuf,
        opts: WalOptions,
        /// Appended records with lsn >= `from_lsn`, in order.
        records: Vec<RawRecord>,
        /// The first `durable` of them were appended before the last sync or
        /// flush and must survive any crash; later ones may be lost, from
        /// the first lost one on.
        durable: usize,
        from_lsn: Lsn,
        /// The last segment and its length on disk at the last flush, sync
        /// or open: a crash keeps those bytes.
        flushed: (PathBuf, u64),
    }

    impl Model {
        fn next_lsn(&self) -> Lsn {
            self.records
                .last()
                .map_or(self.from_lsn.max(1), |(lsn, _)| lsn + 1)
        }

        fn everything_flushed(&mut self) {
            self.durable = self.records.len();
            self.flushed = last_segment(&self.dir);
        }

        fn reopen(
            &mut self,
            wal: Wal,
            crash: bool,
            keep_per_mille: u64,
        ) -> std::result::Result<Wal, TestCaseError> {
            if crash {
                wal.simulate_crash();
                let (last, len) = last_segment(&self.dir);
                let kept = if last == self.flushed.0 {
                    self.flushed.1
                } else {
                    0
                };
                prop_assert!(len >= kept, "flushed bytes of {} vanished", last.display());
                let cut = kept + (len - kept) * keep_per_mille / 1000;
                fs::OpenOptions::new()
                    .write(true)
                    .open(&last)
                    .unwrap()
                    .set_len(cut)
                    .unwrap();
            } else {
                drop(wal);
            }
            let (wal, got) = Wal::open(&self.dir, self.opts.clone(), self.from_lsn).unwrap();
            prop_assert!(
                got.len() >= self.durable && got.len() <= self.records.len(),
                "{} records back; {} were flushed, {} appended",
                got.len(),
                self.durable,
                self.records.len()
            );
            if !crash {
                prop_assert_eq!(got.len(), self.records.len(), "a clean close loses nothing");
            }
            prop_assert_eq!(&got[..], &self.records[..got.len()]);
            self.records.truncate(got.len());
            self.everything_flushed();
            prop_assert_eq!(wal.next_lsn(), self.next_lsn());
            Ok(wal)
        }
    }

    /// The segment with the highest first lsn, and its length.
    fn last_segment(dir: &Path) -> (PathBuf, u64) {
        let last = segment_files(dir)
            .pop()
            .expect("a WAL always has a segment");
        let len = fs::metadata(&last).unwrap().len();
        (last, len)
    }

    proptest! {
        // Each case syncs for real; this many cases keep the run to seconds.
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn every_record_before_the_last_sync_or_flush_is_recovered_once_in_order(
            ops in prop::collection::vec(op(), 1..60),
            segment_bytes in 40u64..400,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            let opts = WalOptions { segment_bytes };
            let (mut wal, got) = Wal::open(&dir, opts.clone(), 0).unwrap();
            prop_assert!(got.is_empty());
            let mut model = Model {
                flushed: last_segment(&dir),
                dir,
                opts,
                records: Vec::new(),
                durable: 0,
                from_lsn: 0,
            };
            for op in ops {
                match op {
                    Op::Append(payload) => {
                        prop_assert_eq!(wal.append(&payload).unwrap(), model.next_lsn());
                        model.records.push((model.next_lsn(), payload));
                    }
                    Op::Sync => {
                        wal.sync().unwrap();
                        model.everything_flushed();
                    }
                    Op::Flush => {
                        wal.flush().unwrap();
                        model.everything_flushed();
                    }
                    Op::Rotate => {
                        prop_assert_eq!(wal.rotate().unwrap(), model.next_lsn());
                        model.everything_flushed();
                    }
                    Op::Snapshot => {
                        let covered = wal.rotate().unwrap();
                        prop_assert_eq!(covered, model.next_lsn());
                        wal.truncate_before(covered).unwrap();
                        prop_assert_eq!(wal.segment_count(), 1);
                        model.records.clear();
                        model.from_lsn = covered;
                        model.everything_flushed();
                    }
                    Op::Reopen { crash, keep_per_mille } => {
                        wal = model.reopen(wal, crash, keep_per_mille)?;
                    }
                }
                prop_assert_eq!(wal.next_lsn(), model.next_lsn());
                prop_assert_eq!(wal.segment_count(), segment_files(&model.dir).len());
            }
            model.reopen(wal, false, 0)?;
        }
    }
}
