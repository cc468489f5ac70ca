//! `wal_record`: the write-ahead log as recovery reads it back.
//!
//! Each input is tried three ways:
//!
//! 1. as one record's payload: [`WalRecord::decode`] (bincode); a record
//!    that decodes must re-encode to bytes that decode to the same record;
//! 2. as segment files, as they are: the input is cut at every segment
//!    magic (`EGWL`), so one input can hold a whole log, and each piece is
//!    named for the first lsn its header claims; then the WAL is opened
//!    (`wal/format.rs` headers and frames, `wal/recovery.rs` scanning,
//!    torn-tail repair, continuity) and, when it opens, a record is
//!    appended and the log must reopen with exactly the records it gave
//!    plus that one; then the engine's whole recovery runs on it, which
//!    decodes every record and replays it into spaces;
//! 3. the same with every checksum repaired (header and record CRCs
//!    recomputed), so that mutated lengths, lsns and payloads get past
//!    the checksums to the code behind them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::fs::{FileSystem, SimFs};
use engram_core::model::{SpaceId, VectorStorage};
use engram_core::record::WalRecord;
use engram_core::wal::{Wal, WalOptions};

use super::{data_dir, machine, recover};

/// `wal/format.rs`: the segment magic and the sizes of the header and of
/// a record frame's header.
const MAGIC: &[u8; 4] = b"EGWL";
const HEADER_LEN: usize = 20;
const FRAME_HEADER_LEN: usize = 16;
/// At most this many segments are made from one input.
const MAX_SEGMENTS: usize = 16;
/// What is appended after a successful recovery.
const APPENDED: &[u8] = b"appended after recovery";

pub fn run(data: &[u8]) {
    record(data);
    log(data);
    let repaired = repair(data);
    if repaired != data {
        log(&repaired);
    }
}

/// The bytes as one record's payload.
fn record(payload: &[u8]) {
    if let Ok(r) = WalRecord::decode(payload) {
        let bytes = r.encode();
        let again = WalRecord::decode(&bytes).unwrap_or_else(|e| {
            panic!("a record's own encoding does not decode: {e}; record {r:?}")
        });
        assert!(
            again.encode() == bytes,
            "a decoded record re-encodes differently: {r:?} then {again:?}"
        );
    }
}

fn wal_dir() -> PathBuf {
    data_dir().join("wal")
}

/// The segment file name of `first_lsn` (`wal/format.rs`).
fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

/// Where the input's segments start: at 0 and at every magic after it.
fn segment_starts(data: &[u8]) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(
        (1..data.len().saturating_sub(MAGIC.len() - 1))
            .filter(|&i| &data[i..i + MAGIC.len()] == MAGIC)
            .take(MAX_SEGMENTS - 1),
    );
    starts
}

/// The input as segment files: cut at every magic after the first byte,
/// each piece named for the first lsn its header claims (the previous
/// piece's plus one when it has no header); a piece whose name is taken
/// is dropped.
pub fn segments(data: &[u8]) -> Vec<(PathBuf, &[u8])> {
    let starts = segment_starts(data);
    let mut out: Vec<(PathBuf, &[u8])> = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut previous = 0u64;
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(data.len());
        let piece = &data[start..end];
        let lsn = match piece.get(8..16) {
            Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
            None => previous.wrapping_add(1),
        };
        previous = lsn;
        if names.insert(lsn) {
            out.push((wal_dir().join(segment_name(lsn)), piece));
        }
    }
    out
}

/// The bytes as a log: opened by the WAL alone, then recovered by the
/// engine.
fn log(data: &[u8]) {
    let files = segments(data);
    reopen_after_append(&machine(&files));
    let _ = recover(&machine(&files));
}

/// Opens the WAL on `fs`; when it opens, appends a record, and checks that
/// the log reopens with the same records plus that one: recovery's repair
/// (a torn tail cut off, a torn segment removed) must leave a log that
/// later appends continue.
fn reopen_after_append(fs: &SimFs) {
    let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
    let dir = wal_dir();
    let Ok((mut wal, records)) = Wal::open_on(fs.clone(), &dir, WalOptions::default(), 1) else {
        return;
    };
    for (_, payload) in &records {
        record(payload);
    }
    let next = wal.next_lsn();
    let lsn = wal
        .append(APPENDED)
        .unwrap_or_else(|e| panic!("append after a successful recovery failed: {e}"));
    assert_eq!(lsn, next, "the appended record's lsn is not next_lsn");
    wal.sync()
        .unwrap_or_else(|e| panic!("sync after a successful recovery failed: {e}"));
    drop(wal);
    let (wal, again) = Wal::open_on(fs, &dir, WalOptions::default(), 1).unwrap_or_else(|e| {
        panic!("the log recovery accepted does not reopen after one append: {e}")
    });
    let mut expected = records;
    expected.push((next, APPENDED.to_vec()));
    assert!(
        again == expected,
        "the log reopened with other records: lsns {:?}, expected {:?}",
        again.iter().map(|r| r.0).collect::<Vec<_>>(),
        expected.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(wal.next_lsn(), next.wrapping_add(1));
}

/// The input with every checksum recomputed: each segment header's, and
/// each record frame's that fits in what follows it.
pub fn repair(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let starts = segment_starts(data);
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(out.len());
        repair_segment(&mut out[start..end]);
    }
    out
}

fn repair_segment(seg: &mut [u8]) {
    if seg.len() < HEADER_LEN {
        return;
    }
    let crc = crc32fast::hash(&seg[..16]);
    seg[16..20].copy_from_slice(&crc.to_le_bytes());
    let mut pos = HEADER_LEN;
    while pos + FRAME_HEADER_LEN <= seg.len() {
        let len = u32::from_le_bytes(seg[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let payload = pos + FRAME_HEADER_LEN;
        let Some(end) = payload.checked_add(len).filter(|&e| e <= seg.len()) else {
            return;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&seg[pos..pos + 4]);
        h.update(&seg[pos + 8..pos + 16]);
        h.update(&seg[payload..end]);
        seg[pos + 4..pos + 8].copy_from_slice(&h.finalize().to_le_bytes());
        pos = end;
    }
}

fn space(name: &str) -> SpaceId {
    SpaceId::parse(name).expect("a valid space id")
}

/// The records of the seed log: every kind, in an order recovery accepts.
fn seed_records() -> Vec<WalRecord> {
    let docs = space("docs");
    let compact = space("compact");
    let mut records = vec![WalRecord::CreateSpace {
        space: docs.clone(),
        dimension: 4,
    }];
    for seq in 1..=3 {
        records.push(WalRecord::Observe {
            space: docs.clone(),
            episode: super::seed_episode(seq, true),
        });
    }
    records.extend([
        WalRecord::Forget {
            space: docs.clone(),
            server_sequence: 2,
        },
        WalRecord::CreateSpaceWith {
            space: compact.clone(),
            dimension: 4,
            vector_storage: VectorStorage::Compact,
        },
        WalRecord::Observe {
            space: compact,
            episode: super::seed_episode(1, true),
        },
        WalRecord::DeleteSpace { space: docs },
        WalRecord::CreateSpaceWithTtl {
            space: space("ttl"),
            dimension: 4,
            vector_storage: VectorStorage::Memory,
            default_ttl_nanos: 3_600_000_000_000,
        },
        WalRecord::ObserveExpiring {
            space: space("ttl"),
            episode: super::seed_episode(1, true),
            expires_at_unix_nanos: 1_767_229_200_000_000_000,
        },
        WalRecord::Observe {
            space: space("ttl"),
            episode: super::seed_episode(2, true),
        },
        WalRecord::Expire {
            space: space("ttl"),
            server_sequences: vec![1],
        },
    ]);
    records
}

/// The segment files the real writer makes of `records`, concatenated in
/// log order.
fn written_log(records: &[WalRecord], segment_bytes: u64) -> Vec<u8> {
    let sim = SimFs::new();
    let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
    let dir = Path::new("/wal");
    let (mut wal, _) =
        Wal::open_on(fs.clone(), dir, WalOptions { segment_bytes }, 1).expect("a fresh WAL opens");
    for r in records {
        wal.append(&r.encode()).expect("SimFs takes appends");
    }
    wal.sync().expect("SimFs syncs");
    drop(wal);
    let mut names: Vec<String> = fs
        .read_dir(dir)
        .expect("the WAL directory lists")
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| sim.read(&dir.join(n)).expect("a listed segment reads"))
        .collect()
}

/// Seeds: logs written by the real WAL writer (one segment, rotated
/// segments, a torn tail, no records) and every kind of record payload.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let records = seed_records();
    let one = written_log(&records, u64::MAX);
    let mut torn = one.clone();
    let frame = written_log(&records[..1], u64::MAX);
    torn.extend_from_slice(&frame[HEADER_LEN..HEADER_LEN + 10]);
    let mut out = vec![
        ("log-one-segment.log".to_owned(), one),
        (
            "log-rotated-segments.log".to_owned(),
            written_log(&records, 200),
        ),
        ("log-torn-tail.log".to_owned(), torn),
        ("log-no-records.log".to_owned(), written_log(&[], u64::MAX)),
    ];
    let names = [
        "create-space",
        "observe",
        "observe",
        "observe",
        "forget",
        "create-space-with",
        "observe",
        "delete-space",
    ];
    for (i, (r, name)) in records.iter().zip(names).enumerate() {
        if name != "observe" || i == 1 {
            out.push((format!("record-{name}.bin"), r.encode()));
        }
    }
    out
}

/// A `.bin` seed is a record payload that decodes; a `.log` seed is a log
/// the engine recovers.
pub fn check_seed(name: &str, bytes: &[u8]) -> Result<(), String> {
    if name.ends_with(".bin") {
        return WalRecord::decode(bytes)
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let report = recover(&machine(&segments(bytes)))?;
    if bytes.len() > HEADER_LEN && report.wal_records == 0 {
        return Err("recovered no record".to_owned());
    }
    Ok(())
}
