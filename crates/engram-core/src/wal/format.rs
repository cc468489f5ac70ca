//! The bytes on disk. Nothing here touches the file system.
//!
//! A segment is a file named `wal-<first lsn, 20 digits>.log`, so that names
//! sort in log order, holding a header and then records back to back:
//!
//! ```text
//! header: magic "EGWL" | version u32 LE | first lsn u64 LE | crc32 u32 LE (of the 16 bytes before)
//! record: length u32 LE | crc32 u32 LE (of length bytes + lsn bytes + payload) | lsn u64 LE | payload
//! ```
//!
//! Every integer is little-endian. The record checksum covers the length and
//! the lsn as well as the payload, so a damaged length or lsn is caught.

use super::{Lsn, MAX_RECORD_BYTES};

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";
/// Digits in a segment name: enough for any u64, zero-padded so that names
/// sort as numbers.
const SEGMENT_DIGITS: usize = 20;

const MAGIC: [u8; 4] = *b"EGWL";
/// Bumped on any incompatible change of the layout above.
pub(super) const VERSION: u32 = 1;
/// magic + version + first lsn + crc.
pub(super) const HEADER_LEN: usize = 4 + 4 + 8 + 4;
/// length + crc + lsn.
pub(super) const FRAME_HEADER_LEN: usize = 4 + 4 + 8;

/// The file name of the segment whose first record has `first_lsn`.
pub(super) fn segment_file_name(first_lsn: Lsn) -> String {
    format!(
        "{SEGMENT_PREFIX}{first_lsn:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

/// The first lsn named by a segment file name, or `None` for any other file.
pub(super) fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header every segment starts with.
pub(super) fn encode_header(first_lsn: Lsn) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&VERSION.to_le_bytes());
    out[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&out[0..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Why a segment header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HeaderProblem {
    /// Missing, partial or garbled: what a crash while creating the file
    /// leaves behind (and also what damage looks like).
    Unreadable(String),
    /// Intact, but written by a format this build does not read: never a
    /// crash artefact, so never repaired.
    UnsupportedVersion(u32),
}

/// Reads a segment header from the first bytes of a file (`bytes` may be
/// shorter than a header when the file is).
pub(super) fn decode_header(bytes: &[u8]) -> Result<Lsn, HeaderProblem> {
    let Some(bytes) = bytes.get(..HEADER_LEN) else {
        return Err(HeaderProblem::Unreadable(format!(
            "the file has {} bytes, shorter than the {HEADER_LEN}-byte segment header",
            bytes.len()
        )));
    };
    if bytes[0..4] != MAGIC {
        return Err(HeaderProblem::Unreadable(format!(
            "expected the segment magic {MAGIC:?}, found {:?}",
            &bytes[0..4]
        )));
    }
    let stored_crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[0..16]) != stored_crc {
        return Err(HeaderProblem::Unreadable(
            "segment header checksum mismatch".to_owned(),
        ));
    }
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(HeaderProblem::UnsupportedVersion(version));
    }
    Ok(u64::from_le_bytes(
        bytes[8..16].try_into().expect("8 bytes"),
    ))
}

/// The fixed-size part of a record, in front of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameHeader {
    /// Payload length in bytes.
    pub(super) len: u32,
    /// Checksum stored in the frame.
    pub(super) crc: u32,
    /// The record's lsn.
    pub(super) lsn: Lsn,
}

impl FrameHeader {
    /// The frame header for `payload` at `lsn`.
    ///
    /// # Panics
    /// If the payload is over [`MAX_RECORD_BYTES`]; callers check first.
    pub(super) fn new(lsn: Lsn, payload: &[u8]) -> FrameHeader {
        assert!(
            payload.len() <= MAX_RECORD_BYTES,
            "record over MAX_RECORD_BYTES"
        );
        let len = payload.len() as u32;
        FrameHeader {
            len,
            crc: record_crc(len, lsn, payload),
            lsn,
        }
    }

    /// Reads the 16 bytes in front of a payload.
    pub(super) fn decode(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")),
            crc: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
            lsn: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        }
    }

    pub(super) fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..8].copy_from_slice(&self.crc.to_le_bytes());
        out[8..16].copy_from_slice(&self.lsn.to_le_bytes());
        out
    }

    /// Whether `payload` (of `self.len` bytes) is the one this header was
    /// written for.
    pub(super) fn matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && record_crc(self.len, self.lsn, payload) == self.crc
    }
}

fn record_crc(len: u32, lsn: Lsn, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_by_lsn() {
        let lsns = [1, 9, 10, 4999, 5000, u64::MAX];
        let mut names: Vec<String> = lsns.iter().map(|&l| segment_file_name(l)).collect();
        assert_eq!(names[0], "wal-00000000000000000001.log");
        names.sort();
        let parsed: Vec<Lsn> = names
            .iter()
            .map(|n| parse_segment_file_name(n).unwrap())
            .collect();
        assert_eq!(parsed, lsns);
        for other in [
            "wal-1.log",
            "wal-00000000000000000001.tmp",
            "x-00000000000000000001.log",
            "wal-0000000000000000000x.log",
        ] {
            assert_eq!(parse_segment_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = encode_header(42);
        assert_eq!(decode_header(&header), Ok(42));
        assert!(matches!(
            decode_header(&header[..HEADER_LEN - 1]),
            Err(HeaderProblem::Unreadable(_))
        ));
        assert!(matches!(
            decode_header(&[0u8; HEADER_LEN]),
            Err(HeaderProblem::Unreadable(_))
        ));
        for i in 0..HEADER_LEN {
            let mut damaged = header;
            damaged[i] ^= 0x01;
            assert!(
                decode_header(&damaged).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn header_of_another_version_is_not_mistaken_for_damage() {
        let mut header = encode_header(7);
        header[4..8].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let crc = crc32fast::hash(&header[0..16]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&header),
            Err(HeaderProblem::UnsupportedVersion(VERSION + 1))
        );
    }

    #[test]
    fn frame_checksum_covers_length_lsn_and_payload() {
        let payload = b"an observation";
        let frame = FrameHeader::new(3, payload);
        let decoded = FrameHeader::decode(&frame.encode());
        assert_eq!(decoded, frame);
        assert!(decoded.matches(payload));
        assert!(!decoded.matches(b"an observatioN"));
        assert!(!FrameHeader { lsn: 4, ..decoded }.matches(payload));
        assert!(!FrameHeader {
            len: decoded.len - 1,
            ..decoded
        }
        .matches(&payload[1..]));
        // A zero-filled tail must never read as a record.
        assert!(!FrameHeader::decode(&[0u8; FRAME_HEADER_LEN]).matches(&[]));
    }
}
