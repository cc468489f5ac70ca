//! Reading the log back at open: which records are intact, where the torn
//! tail of an unfinished write starts, and what is real corruption.
//!
//! The rule rests on one invariant of the writer: a segment is synced before
//! the next one is created, so only the last segment can hold bytes that
//! were never synced. Damage there is the torn tail of an unfinished write —
//! never acknowledged — provided nothing intact follows it: a crash cuts a
//! write short, it does not damage a record and then write good ones after.
//! Damage anywhere else, or with intact records after it, is
//! [`WalError::Corrupt`]: the WAL refuses to open rather than drop records
//! that may have been acknowledged.
//!
//! Two cases the rule cannot tell apart, and which way they fall: damage to
//! the very last record of the log looks exactly like a torn write, so it is
//! dropped even if that record was acknowledged (its checksum is all there
//! is to go on); and a file system that, in a power loss, wrote unsynced
//! pages out of order could leave a hole with intact records after it,
//! which is reported as corruption — a false alarm that stops the server
//! rather than one that loses data.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::fs::{FileSystem, ReadFile};

use super::format::{self, FrameHeader, HeaderProblem, FRAME_HEADER_LEN, HEADER_LEN};
use super::{Lsn, RawRecord, Result, WalError, MAX_LSN, MAX_RECORD_BYTES};

/// Read buffer for scanning segments: large sequential reads, few syscalls.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// A segment file that exists after recovery.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    /// Lsn of its first record (or of the record it would hold first).
    pub(super) first_lsn: Lsn,
    pub(super) path: PathBuf,
}

/// Where the last segment ends, for appends to continue there.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tail {
    /// Byte length of the last segment (after any repair).
    pub(super) len: u64,
    /// Lsn the next record appended to it gets.
    pub(super) next_lsn: Lsn,
}

/// The outcome of reading a WAL directory.
#[derive(Debug)]
pub(super) struct Recovered {
    /// Segments that exist, oldest first.
    pub(super) segments: Vec<Segment>,
    /// End of the last of `segments`. `None` when there are none, or when
    /// the last was removed as torn and the one before it was skipped (all
    /// below `from_lsn`): either way the writer starts a new segment.
    pub(super) tail: Option<Tail>,
    /// Every intact record with lsn >= `from_lsn`, in order.
    pub(super) records: Vec<RawRecord>,
    /// No new record may get a lower lsn: covers a segment that was removed
    /// as torn, whose name says which lsn it was created for.
    pub(super) min_next_lsn: Lsn,
}

/// Reads every segment in `dir`, repairs a torn tail of the last one, and
/// collects the records with lsn >= `from_lsn`. Segments that only hold
/// records below `from_lsn` (a snapshot covers them) are not read at all.
pub(super) fn recover(fs: &dyn FileSystem, dir: &Path, from_lsn: Lsn) -> Result<Recovered> {
    let candidates = list_segments(fs, dir)?;
    let mut out = Recovered {
        segments: Vec::with_capacity(candidates.len()),
        tail: None,
        records: Vec::new(),
        min_next_lsn: from_lsn.max(1),
    };
    // The lsn the previous segment ended at, when it was read.
    let mut expected: Option<Lsn> = None;

    for (i, seg) in candidates.iter().enumerate() {
        let next_first = candidates.get(i + 1).map(|s| s.first_lsn);
        let is_last = next_first.is_none();
        if next_first.is_some_and(|next| next <= from_lsn) {
            // Every record in it is below from_lsn; its end is unknown.
            out.segments.push(seg.clone());
            expected = None;
            continue;
        }

        let mut file = fs
            .open_read(&seg.path)
            .map_err(io_err("open segment", &seg.path))?;
        let file_len = file
            .size()
            .map_err(io_err("read the size of segment", &seg.path))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, &mut file);

        let mut header = vec![0u8; HEADER_LEN.min(file_len as usize)];
        reader
            .read_exact(&mut header)
            .map_err(io_err("read the header of segment", &seg.path))?;
        let header_lsn = match format::decode_header(&header) {
            Ok(lsn) => lsn,
            Err(HeaderProblem::UnsupportedVersion(v)) => {
                return Err(corrupt(
                    &seg.path,
                    0,
                    format!(
                        "segment format version {v}, but this build reads version {}",
                        format::VERSION
                    ),
                ));
            }
            Err(HeaderProblem::Unreadable(reason)) => {
                drop(reader);
                if is_last && holds_no_records(&mut *file, &seg.path, file_len)? {
                    // Created where the log continued (its name says at
                    // which lsn), or the records between are lost: the
                    // same gap the next open would report once a record
                    // is appended at that lsn.
                    check_continuity(expected, seg, from_lsn)?;
                    tracing::warn!(
                        segment = %seg.path.display(),
                        bytes = file_len,
                        %reason,
                        "removing a WAL segment whose creation was cut short by a crash (it holds no records)"
                    );
                    drop(file);
                    fs.remove_file(&seg.path)
                        .map_err(io_err("remove torn segment", &seg.path))?;
                    out.min_next_lsn = out.min_next_lsn.max(seg.first_lsn);
                    break;
                }
                return Err(corrupt(&seg.path, 0, reason));
            }
        };
        if header_lsn >= MAX_LSN {
            return Err(corrupt(
                &seg.path,
                0,
                format!("the header says the first lsn is {header_lsn}, at or above the largest lsn ever written ({MAX_LSN})"),
            ));
        }
        if header_lsn != seg.first_lsn {
            return Err(corrupt(
                &seg.path,
                0,
                format!(
                    "the header says the first lsn is {header_lsn}, the file name says {}",
                    seg.first_lsn
                ),
            ));
        }
        check_continuity(expected, seg, from_lsn)?;

        let scan = scan_records(
            &mut reader,
            &seg.path,
            file_len,
            seg.first_lsn,
            from_lsn,
            &mut out.records,
        )?;
        drop(reader);
        if let Some(damage) = scan.damage {
            if !is_last {
                return Err(corrupt(&seg.path, damage.offset, damage.reason));
            }
            // Searching from the damaged record itself also catches an
            // intact record whose lsn skips ahead, which no crash produces.
            if let Some((offset, lsn)) = find_intact_record(
                &mut *file,
                &seg.path,
                damage.offset,
                file_len,
                scan.next_lsn,
            )? {
                return Err(corrupt(
                    &seg.path,
                    damage.offset,
                    format!(
                        "{}, and an intact record (lsn {lsn}) starts at byte {offset}",
                        damage.reason
                    ),
                ));
            }
            tracing::warn!(
                segment = %seg.path.display(),
                offset = damage.offset,
                dropped_bytes = file_len - damage.offset,
                reason = %damage.reason,
                "dropping the torn tail of the WAL: a write that was cut short by a crash and never acknowledged"
            );
            drop(file);
            truncate_file(fs, &seg.path, damage.offset)?;
        }
        out.segments.push(seg.clone());
        out.tail = Some(Tail {
            len: scan.end,
            next_lsn: scan.next_lsn,
        });
        expected = Some(scan.next_lsn);
    }

    Ok(out)
}

/// Segment files in `dir`, sorted by first lsn; other files are ignored.
fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in fs
        .read_dir(dir)
        .map_err(io_err("list the WAL directory", dir))?
    {
        let Some(first_lsn) = format::parse_segment_file_name(&entry.name) else {
            continue;
        };
        if entry.is_file {
            segments.push(Segment {
                first_lsn,
                path: dir.join(&entry.name),
            });
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// Checks that `seg` continues the log where the previous segment ended.
///
/// Records below `from_lsn` may be missing (a snapshot covers them, and
/// truncation after it may have left a gap); any other missing lsn is lost
/// data.
fn check_continuity(expected: Option<Lsn>, seg: &Segment, from_lsn: Lsn) -> Result<()> {
    if let Some(expected) = expected {
        if seg.first_lsn < expected {
            return Err(corrupt(
                &seg.path,
                0,
                format!(
                    "the segment starts at lsn {}, but the previous segment already holds records up to lsn {}",
                    seg.first_lsn,
                    expected - 1
                ),
            ));
        }
    }
    // First lsn that recovery needs and that the segments so far do not hold.
    let needed = expected.unwrap_or(1).max(from_lsn);
    if seg.first_lsn > needed {
        return Err(WalError::Gap {
            expected: needed,
            found: seg.first_lsn,
            segment: seg.path.clone(),
        });
    }
    Ok(())
}

/// A record that failed to read back.
struct Damage {
    offset: u64,
    reason: String,
}

struct Scan {
    /// Offset just past the last intact record.
    end: u64,
    /// Lsn after the last intact record.
    next_lsn: Lsn,
    /// The first record that is not intact, if any.
    damage: Option<Damage>,
}

/// Reads records from just after the header until the end of the file or
/// the first record that is not intact.
fn scan_records(
    reader: &mut impl Read,
    path: &Path,
    file_len: u64,
    first_lsn: Lsn,
    from_lsn: Lsn,
    records: &mut Vec<RawRecord>,
) -> Result<Scan> {
    let mut pos = HEADER_LEN as u64;
    let mut next_lsn = first_lsn;
    // Payloads below from_lsn are only checksummed, into this reused buffer.
    let mut skipped = Vec::new();
    let damage = loop {
        let remaining = file_len - pos;
        if remaining == 0 {
            break None;
        }
        if remaining < FRAME_HEADER_LEN as u64 {
            break Some(format!(
                "only {remaining} of the {FRAME_HEADER_LEN} bytes of a record header"
            ));
        }
        let mut raw = [0u8; FRAME_HEADER_LEN];
        reader
            .read_exact(&mut raw)
            .map_err(io_err("read segment", path))?;
        let frame = FrameHeader::decode(&raw);
        let len = frame.len as usize;
        if len > MAX_RECORD_BYTES {
            break Some(format!(
                "a record length of {len} bytes, over the maximum of {MAX_RECORD_BYTES}"
            ));
        }
        let available = remaining - FRAME_HEADER_LEN as u64;
        if len as u64 > available {
            break Some(format!(
                "a record of {len} bytes, but only {available} bytes follow"
            ));
        }
        let keep = frame.lsn >= from_lsn;
        let mut payload = if keep {
            vec![0u8; len]
        } else {
            std::mem::take(&mut skipped)
        };
        payload.resize(len, 0);
        reader
            .read_exact(&mut payload)
            .map_err(io_err("read segment", path))?;
        if !frame.matches(&payload) {
            break Some(format!(
                "a checksum mismatch in the record expected to have lsn {next_lsn}"
            ));
        }
        if frame.lsn != next_lsn {
            break Some(format!(
                "an intact record with lsn {} where lsn {next_lsn} was expected",
                frame.lsn
            ));
        }
        if keep {
            records.push((frame.lsn, payload));
        } else {
            skipped = payload;
        }
        pos += (FRAME_HEADER_LEN + len) as u64;
        next_lsn += 1;
    };
    Ok(Scan {
        end: pos,
        next_lsn,
        damage: damage.map(|reason| Damage {
            offset: pos,
            reason,
        }),
    })
}

/// Looks for an intact record with lsn >= `min_lsn` starting anywhere in
/// `[from, file_len)`: one there means the damage before it is not a torn
/// tail. Returns its offset and lsn.
fn find_intact_record(
    file: &mut dyn ReadFile,
    path: &Path,
    from: u64,
    file_len: u64,
    min_lsn: Lsn,
) -> Result<Option<(u64, Lsn)>> {
    if from >= file_len {
        return Ok(None);
    }
    let mut rest = Vec::with_capacity((file_len - from) as usize);
    file.seek(SeekFrom::Start(from))
        .map_err(io_err("read segment", path))?;
    file.take(file_len - from)
        .read_to_end(&mut rest)
        .map_err(io_err("read segment", path))?;
    // Records later in this file cannot have lsns beyond this, which rules
    // out almost every offset before any checksum is computed.
    let max_lsn = min_lsn.saturating_add((rest.len() / FRAME_HEADER_LEN) as u64);
    for start in 0..rest.len().saturating_sub(FRAME_HEADER_LEN - 1) {
        let raw: &[u8; FRAME_HEADER_LEN] = rest[start..start + FRAME_HEADER_LEN]
            .try_into()
            .expect("16 bytes");
        let frame = FrameHeader::decode(raw);
        if frame.lsn < min_lsn || frame.lsn > max_lsn {
            continue;
        }
        let payload_start = start + FRAME_HEADER_LEN;
        let Some(payload) = rest.get(payload_start..payload_start + frame.len as usize) else {
            continue;
        };
        if frame.matches(payload) {
            return Ok(Some((from + start as u64, frame.lsn)));
        }
    }
    Ok(None)
}

/// Whether a segment with an unreadable header is what a crash while
/// creating it leaves: no room for a record, or nothing but zeros (space
/// the file system allocated but never wrote).
fn holds_no_records(file: &mut dyn ReadFile, path: &Path, file_len: u64) -> Result<bool> {
    if file_len <= HEADER_LEN as u64 {
        return Ok(true);
    }
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(io_err("read segment", path))?;
    let mut chunk = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let n = reader
            .read(&mut chunk)
            .map_err(io_err("read segment", path))?;
        if n == 0 {
            return Ok(true);
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// Cuts the torn tail off, durably, so that later appends follow the last
/// intact record and a crash cannot bring the torn bytes back behind them.
fn truncate_file(fs: &dyn FileSystem, path: &Path, len: u64) -> Result<()> {
    let file = fs
        .open_write(path)
        .map_err(io_err("open segment for repair", path))?;
    file.set_len(len)
        .map_err(io_err("truncate the torn tail of segment", path))?;
    file.sync_all()
        .map_err(io_err("sync repaired segment", path))
}

pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(segment: &Path, offset: u64, reason: String) -> WalError {
    WalError::Corrupt {
        segment: segment.to_path_buf(),
        offset,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::ops::RangeInclusive;
    use std::path::{Path, PathBuf};

    use super::super::format::{
        encode_header, segment_file_name, FrameHeader, FRAME_HEADER_LEN, HEADER_LEN, VERSION,
    };
    use super::super::{Lsn, RawRecord, Result, Wal, WalError, WalOptions};

    const PAYLOAD_LEN: usize = 24;
    const RECORD_LEN: usize = FRAME_HEADER_LEN + PAYLOAD_LEN;
    /// Two records per segment.
    const TWO_PER_SEGMENT: u64 = (HEADER_LEN + 2 * RECORD_LEN) as u64;

    fn payload(lsn: Lsn) -> Vec<u8> {
        (0..PAYLOAD_LEN as u8)
            .map(|i| (lsn as u8).wrapping_mul(31).wrapping_add(i))
            .collect()
    }

    /// Offset of the `k`-th record (from 0) of a segment of fixed-size records.
    fn record_offset(k: usize) -> u64 {
        (HEADER_LEN + k * RECORD_LEN) as u64
    }

    /// Writes and syncs records 1..=`count`; returns the segment files.
    fn write_log(dir: &Path, count: Lsn, segment_bytes: u64) -> Vec<PathBuf> {
        let (mut wal, got) = Wal::open(dir, WalOptions { segment_bytes }, 0).unwrap();
        assert!(got.is_empty());
        for lsn in 1..=count {
            assert_eq!(wal.append(&payload(lsn)).unwrap(), lsn);
        }
        wal.sync().unwrap();
        segment_files(dir)
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    fn open(dir: &Path) -> Result<(Wal, Vec<RawRecord>)> {
        Wal::open(
            dir,
            WalOptions {
                segment_bytes: TWO_PER_SEGMENT,
            },
            0,
        )
    }

    fn assert_records(got: &[(Lsn, Vec<u8>)], lsns: RangeInclusive<Lsn>) {
        let want: Vec<RawRecord> = lsns.map(|l| (l, payload(l))).collect();
        assert_eq!(got, want.as_slice());
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn flip_byte(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x5a;
        fs::write(path, bytes).unwrap();
    }

    #[track_caller]
    fn assert_corrupt(result: Result<(Wal, Vec<RawRecord>)>, segment: &Path, offset: u64) {
        match result {
            Err(WalError::Corrupt {
                segment: s,
                offset: o,
                reason,
            }) => {
                assert_eq!((s.as_path(), o), (segment, offset), "reason: {reason}");
            }
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok((_, got)) => panic!("expected Corrupt, opened with {} records", got.len()),
        }
    }

    /// Cheap deterministic noise (xorshift), so failures reproduce.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn torn_last_record_is_dropped_at_every_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let original = write_log(&tmp.path().join("original"), 4, u64::MAX).remove(0);
        let last_start = record_offset(3);
        let full_len = file_len(&original);
        assert_eq!(full_len, record_offset(4));

        for cut in last_start + 1..full_len {
            let dir = tmp.path().join(format!("cut-{cut}"));
            fs::create_dir(&dir).unwrap();
            let segment = dir.join(original.file_name().unwrap());
            fs::copy(&original, &segment).unwrap();
            OpenOptions::new()
                .write(true)
                .open(&segment)
                .unwrap()
                .set_len(cut)
                .unwrap();

            let (mut wal, got) = open(&dir).unwrap();
            assert_records(&got, 1..=3);
            assert_eq!(wal.next_lsn(), 4, "cut at {cut}");
            assert_eq!(
                file_len(&segment),
                last_start,
                "the torn bytes are cut off the file"
            );
            assert_eq!(wal.append(b"after the tear").unwrap(), 4);
            wal.sync().unwrap();
            drop(wal);

            let (wal, got) = open(&dir).unwrap();
            assert_records(&got[..3], 1..=3);
            assert_eq!(got[3], (4, b"after the tear".to_vec()), "cut at {cut}");
            assert_eq!(wal.next_lsn(), 5);
        }
    }

    #[test]
    fn garbage_or_zeros_after_the_last_record_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let tails: Vec<Vec<u8>> = [1, 15, 16, 17, 40, 5000]
            .iter()
            .flat_map(|&len| [noise(len, len as u64 + 1), vec![0u8; len]])
            .chain([vec![0u8; 1 << 20]])
            .collect();
        for (i, tail) in tails.iter().enumerate() {
            let dir = tmp.path().join(format!("tail-{i}"));
            let segment = write_log(&dir, 3, u64::MAX).remove(0);
            let clean_len = file_len(&segment);
            append_bytes(&segment, tail);

            let (mut wal, got) = open(&dir).unwrap();
            assert_records(&got, 1..=3);
            assert_eq!(
                file_len(&segment),
                clean_len,
                "tail {i} of {} bytes",
                tail.len()
            );
            assert_eq!(wal.append(&payload(4)).unwrap(), 4);
            wal.sync().unwrap();
            drop(wal);
            assert_records(&open(&dir).unwrap().1, 1..=4);
        }
    }

    #[test]
    fn any_flipped_byte_in_a_middle_record_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let original = write_log(&tmp.path().join("original"), 5, u64::MAX).remove(0);
        let start = record_offset(2);
        for offset in start..record_offset(3) {
            let dir = tmp.path().join(format!("flip-{offset}"));
            fs::create_dir(&dir).unwrap();
            let segment = dir.join(original.file_name().unwrap());
            fs::copy(&original, &segment).unwrap();
            flip_byte(&segment, offset);
            assert_corrupt(open(&dir), &segment, start);
            assert_eq!(
                file_len(&segment),
                file_len(&original),
                "a corrupt segment is left as it is"
            );
        }
    }

    #[test]
    fn damage_in_a_segment_before_the_last_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        // A flipped byte in the last record of the first segment, which
        // looks like a torn tail there, and in the middle segment.
        for (segment_index, record, byte) in [(0, 1, 3), (0, 1, RECORD_LEN - 1), (1, 0, 20)] {
            let dir = tmp
                .path()
                .join(format!("flip-{segment_index}-{record}-{byte}"));
            let segments = write_log(&dir, 6, TWO_PER_SEGMENT);
            assert_eq!(segments.len(), 3);
            let offset = record_offset(record);
            flip_byte(&segments[segment_index], offset + byte as u64);
            assert_corrupt(open(&dir), &segments[segment_index], offset);
        }
        // A segment before the last cut short, and one with bytes after its
        // last record.
        let dir = tmp.path().join("short");
        let segments = write_log(&dir, 6, TWO_PER_SEGMENT);
        OpenOptions::new()
            .write(true)
            .open(&segments[0])
            .unwrap()
            .set_len(record_offset(2) - 1)
            .unwrap();
        assert_corrupt(open(&dir), &segments[0], record_offset(1));
        let dir = tmp.path().join("long");
        let segments = write_log(&dir, 6, TWO_PER_SEGMENT);
        append_bytes(&segments[1], &[0u8; 8]);
        assert_corrupt(open(&dir), &segments[1], record_offset(2));
    }

    #[test]
    fn a_segment_whose_creation_was_cut_short_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let header = encode_header(5);
        let leftovers: [(&str, Vec<u8>); 5] = [
            ("empty", vec![]),
            ("partial header", header[..7].to_vec()),
            ("zeroed header", vec![0u8; HEADER_LEN]),
            ("damaged header only", noise(HEADER_LEN, 9)),
            ("preallocated zeros", vec![0u8; 4096]),
        ];
        for (name, bytes) in leftovers {
            let dir = tmp.path().join(name.replace(' ', "-"));
            write_log(&dir, 4, TWO_PER_SEGMENT);
            let torn = dir.join(segment_file_name(5));
            fs::write(&torn, bytes).unwrap();

            let (mut wal, got) = open(&dir).unwrap();
            assert_records(&got, 1..=4);
            assert!(!torn.exists(), "{name}: the torn segment is removed");
            assert_eq!(wal.segment_count(), 2, "{name}");
            assert_eq!(wal.append(&payload(5)).unwrap(), 5, "{name}");
            assert!(
                torn.exists(),
                "{name}: lsn 5 starts a segment of its own again"
            );
            wal.sync().unwrap();
            drop(wal);
            assert_records(&open(&dir).unwrap().1, 1..=5);
        }
    }

    #[test]
    fn an_unreadable_header_in_front_of_data_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let segments = write_log(&dir, 6, TWO_PER_SEGMENT);
        flip_byte(&segments[2], 2);
        assert_corrupt(open(&dir), &segments[2], 0);
        assert!(segments[2].exists());
    }

    #[test]
    fn a_segment_of_another_format_version_is_refused_not_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        write_log(&dir, 2, u64::MAX);
        let mut header = encode_header(3);
        header[4..8].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let crc = crc32fast::hash(&header[..16]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        let newer = dir.join(segment_file_name(3));
        fs::write(&newer, header).unwrap();
        assert_corrupt(open(&dir), &newer, 0);
        assert!(newer.exists());
    }

    #[test]
    fn a_header_that_disagrees_with_the_file_name_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let segment = write_log(&dir, 2, u64::MAX).remove(0);
        let renamed = dir.join(segment_file_name(2));
        fs::rename(&segment, &renamed).unwrap();
        assert_corrupt(open(&dir), &renamed, 0);
        assert_corrupt(Wal::open(&dir, WalOptions::default(), 2), &renamed, 0);
    }

    #[test]
    fn a_missing_segment_is_a_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let segments = write_log(&dir, 6, TWO_PER_SEGMENT);
        fs::remove_file(&segments[1]).unwrap();
        match open(&dir) {
            Err(WalError::Gap {
                expected: 3,
                found: 5,
                segment,
            }) => assert_eq!(segment, segments[2]),
            other => panic!(
                "expected a gap at lsn 3..5, got {:?}",
                other.map(|(_, r)| r.len())
            ),
        }
        // A snapshot that covers the missing records makes it no gap.
        let (wal, got) = Wal::open(&dir, WalOptions::default(), 5).unwrap();
        assert_records(&got, 5..=6);
        assert_eq!(wal.next_lsn(), 7);
    }

    #[test]
    fn an_intact_record_out_of_sequence_is_corruption_unless_stale() {
        let tmp = tempfile::tempdir().unwrap();
        // Lsn 4 missing, lsn 5 intact: no crash writes that.
        let dir = tmp.path().join("ahead");
        let segment = write_log(&dir, 3, u64::MAX).remove(0);
        let ahead = payload(5);
        append_bytes(&segment, &FrameHeader::new(5, &ahead).encode());
        append_bytes(&segment, &ahead);
        assert_corrupt(open(&dir), &segment, record_offset(3));

        // An old record (lsn 2 again) behind the last one: what a file
        // system can expose from freed blocks after a crash; not acked data.
        let dir = tmp.path().join("stale");
        let segment = write_log(&dir, 3, u64::MAX).remove(0);
        let stale = payload(2);
        append_bytes(&segment, &FrameHeader::new(2, &stale).encode());
        append_bytes(&segment, &stale);
        let (wal, got) = open(&dir).unwrap();
        assert_records(&got, 1..=3);
        assert_eq!(wal.next_lsn(), 4);
    }

    #[test]
    fn segments_below_from_lsn_are_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let segments = write_log(&dir, 6, TWO_PER_SEGMENT);
        // Damage in a segment the snapshot covers does not stop recovery...
        flip_byte(&segments[0], record_offset(1) + 20);
        let (_, got) = Wal::open(&dir, WalOptions::default(), 3).unwrap();
        assert_records(&got, 3..=6);
        // ...but it does when its records are needed.
        assert_corrupt(
            Wal::open(&dir, WalOptions::default(), 2),
            &segments[0],
            record_offset(1),
        );
    }
}
