//! Making inputs: mutations of the seed corpus, and plain random bytes.
//!
//! There is no coverage feedback (see the README for why), so the input of
//! an iteration is a pure function of the corpus and its [`Rng`]: pick a
//! corpus entry and stack one to eight mutations on it, or (one time in
//! twenty) make something from nothing. The mutations are the classic
//! byte-level ones — flips, arithmetic, truncation, extension, ranges
//! inserted, deleted and duplicated, splices of two entries, integers that
//! break length checks — plus, for JSON targets, mutations of the parsed
//! document: a value swapped for another JSON type, huge numbers, deep
//! nesting, long strings, keys removed, renamed or unknown.

use serde_json::{Map, Value};

use crate::rng::Rng;

/// What a target reads, which decides the mutations worth making.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Binary formats: byte-level mutations only.
    Binary,
    /// JSON text: structural mutations as well.
    Json,
}

/// Longest input made: far above every seed, so length checks are
/// exercised, small enough that an input is cheap.
pub const MAX_INPUT: usize = 1 << 20;

/// Makes the input of one iteration.
pub fn generate(corpus: &[Vec<u8>], shape: Shape, rng: &mut Rng) -> Vec<u8> {
    if corpus.is_empty() || rng.chance(1, 20) {
        return from_nothing(shape, rng);
    }
    let mut data = rng.pick(corpus).clone();
    let stacked = rng.small(8);
    for _ in 0..stacked {
        match shape {
            Shape::Json if rng.chance(1, 2) => json(&mut data, corpus, rng),
            Shape::Json if rng.chance(1, 2) => json_text(&mut data, rng),
            _ => bytes(&mut data, corpus, rng),
        }
    }
    data.truncate(MAX_INPUT);
    data
}

fn from_nothing(shape: Shape, rng: &mut Rng) -> Vec<u8> {
    let len = if rng.chance(1, 8) {
        rng.below(4096)
    } else {
        rng.below(64)
    };
    if shape == Shape::Json && rng.chance(1, 2) {
        // A soup of JSON tokens: mostly not JSON, but close to it.
        let mut out = Vec::new();
        while out.len() < len {
            out.extend_from_slice(rng.pick(JSON_TOKENS).as_bytes());
        }
        return out;
    }
    rng.bytes(len)
}

/// Integers that break length and range checks: zero, one, the extremes
/// of each width, powers of two around them, and the engine's own limits.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000, // i64::MIN
    u64::MAX,              // -1 at every width once truncated
    u64::MAX - 1,
    16,                     // a WAL frame header
    20,                     // a WAL segment header
    64 << 20,               // a WAL record's largest payload
    (64 << 20) + 1,         // one over it
    8192,                   // the largest embedding dimension
    8193,                   // one over it
    65536,                  // the largest HNSW dimension
    4096,                   // the largest ef_search and HNSW m
    1 << 24,                // the largest HNSW ef
    u32::MAX as u64 - 1024, // the most HNSW nodes
];

fn interesting(data: &[u8], rng: &mut Rng) -> u64 {
    match rng.below(4) {
        // A length that matches this input: its size, one either side,
        // or what is left after a random offset.
        0 => {
            let len = data.len() as u64;
            *rng.pick(&[len, len.wrapping_sub(1), len + 1, len / 2])
        }
        1 => (data.len() - rng.below(data.len() + 1)) as u64,
        _ => *rng.pick(INTERESTING),
    }
}

/// Writes `v` as a `width`-byte integer (little- or big-endian) at `at`,
/// as far as the input goes.
fn put_int(data: &mut [u8], at: usize, width: usize, v: u64, big_endian: bool) {
    let le = v.to_le_bytes();
    for i in 0..width {
        let Some(slot) = data.get_mut(at + i) else {
            return;
        };
        *slot = if big_endian { le[width - 1 - i] } else { le[i] };
    }
}

fn get_int(data: &[u8], at: usize, width: usize) -> u64 {
    let mut le = [0u8; 8];
    for (i, b) in le.iter_mut().take(width).enumerate() {
        *b = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(le)
}

/// A random range `(start, len)` of `data`, `len` at least 1 (data not empty).
fn range(data: &[u8], rng: &mut Rng) -> (usize, usize) {
    let start = rng.below(data.len());
    let len = rng.small(data.len() - start);
    (start, len)
}

/// One byte-level mutation.
pub fn bytes(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    if data.is_empty() {
        let n = rng.small(64);
        data.extend(rng.bytes(n));
        return;
    }
    let len = data.len();
    match rng.below(16) {
        // Flip one bit.
        0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        // Set one byte.
        1 => {
            let at = rng.below(len);
            data[at] = rng.byte();
        }
        // Add to or subtract from a byte.
        2 => {
            let at = rng.below(len);
            let d = rng.range(1, 16) as u8;
            data[at] = if rng.chance(1, 2) {
                data[at].wrapping_add(d)
            } else {
                data[at].wrapping_sub(d)
            };
        }
        // Truncate.
        3 => data.truncate(rng.below(len)),
        // Extend: random bytes, one byte repeated, or a copy of a part.
        4 => match rng.below(3) {
            0 => {
                let n = rng.small(256);
                data.extend(rng.bytes(n));
            }
            1 => {
                let n = rng.small(4096);
                let any = rng.byte();
                let b = *rng.pick(&[0u8, 0xff, any]);
                data.resize(len + n, b);
            }
            _ => {
                let (s, n) = range(data, rng);
                data.extend_from_within(s..s + n);
            }
        },
        // Insert random bytes.
        5 => {
            let at = rng.below(len + 1);
            let n = rng.small(32);
            let new = rng.bytes(n);
            data.splice(at..at, new);
        }
        // Delete a range.
        6 => {
            let (s, n) = range(data, rng);
            data.drain(s..s + n);
        }
        // Duplicate a range somewhere else.
        7 => {
            let (s, n) = range(data, rng);
            let copy = data[s..s + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, copy);
        }
        // Overwrite a range with another part of the input.
        8 => {
            let (s, n) = range(data, rng);
            let to = rng.below(len);
            let n = n.min(len - to);
            data.copy_within(s..s + n, to);
        }
        // Splice: this input's head, another corpus entry's tail.
        9 if !corpus.is_empty() => {
            let other = rng.pick(corpus);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Overwrite with part of another corpus entry, at the same offset
        // (formats line up) or anywhere.
        10 if !corpus.is_empty() => {
            let other = rng.pick(corpus);
            if other.is_empty() {
                return;
            }
            let (s, n) = range(other, rng);
            let to = if rng.chance(1, 2) && s < len {
                s
            } else {
                rng.below(len)
            };
            let n = n.min(len - to);
            data[to..to + n].copy_from_slice(&other[s..s + n]);
        }
        // Overwrite with an interesting integer.
        11 | 12 => {
            let width = *rng.pick(&[1usize, 2, 4, 4, 8, 8]);
            let at = rng.below(len);
            let v = interesting(data, rng);
            put_int(data, at, width, v, rng.chance(1, 4));
        }
        // Insert an interesting integer.
        13 => {
            let width = *rng.pick(&[1usize, 2, 4, 8]);
            let at = rng.below(len + 1);
            let v = interesting(data, rng);
            data.splice(at..at, v.to_le_bytes()[..width].iter().copied());
        }
        // Add to or subtract from an integer field.
        14 => {
            let width = *rng.pick(&[2usize, 4, 8]);
            let at = rng.below(len);
            let d = rng.range(1, 32) as u64;
            let v = get_int(data, at, width);
            let v = if rng.chance(1, 2) {
                v.wrapping_add(d)
            } else {
                v.wrapping_sub(d)
            };
            put_int(data, at, width, v, false);
        }
        // Fill a range with zeros or ones.
        _ => {
            let (s, n) = range(data, rng);
            let b = if rng.chance(1, 2) { 0 } else { 0xff };
            data[s..s + n].fill(b);
        }
    }
}

/// Text that JSON decoders trip on: structure, extreme and invalid
/// numbers, escapes of surrogates and control characters, non-JSON literals.
const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1e999",
    "-1e999",
    "1e-999",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "0.1e",
    "01",
    "NaN",
    "Infinity",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\u0000\"",
    "\"\\uFFFF\"",
    "\"\\x41\"",
    "\u{feff}",
    "\u{0}",
    "\"type\"",
    "\"type\":\"observation\"",
    "{\"type\":\"init\",\"memory_space_id\":\"a\"}",
];

/// One mutation of JSON as text: a token inserted, deep nesting around a
/// part, a long string.
pub fn json_text(data: &mut Vec<u8>, rng: &mut Rng) {
    let at = rng.below(data.len() + 1);
    match rng.below(4) {
        0 | 1 => {
            let token = rng.pick(JSON_TOKENS).as_bytes();
            data.splice(at..at, token.iter().copied());
        }
        2 => {
            // Nesting past serde_json's recursion limit (128) and far
            // past it, balanced or not.
            let depth = *rng.pick(&[1usize, 127, 128, 129, 1000, 100_000]);
            let (open, close) = if rng.chance(1, 2) {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            let mut out = Vec::with_capacity(data.len() + depth * (open.len() + close.len()));
            out.extend_from_slice(&data[..at]);
            out.extend(open.as_bytes().iter().cycle().take(depth * open.len()));
            if rng.chance(3, 4) {
                out.extend_from_slice(b"0");
                out.extend(close.as_bytes().iter().cycle().take(depth * close.len()));
            }
            out.extend_from_slice(&data[at..]);
            *data = out;
        }
        _ => {
            let n = *rng.pick(&[129usize, 1025, 65_537, 400_000]);
            let fill = *rng.pick(&[b'a', b'\\', b'"', 0u8, 0xff]);
            let mut s = vec![b'"'];
            s.resize(n + 1, fill);
            s.push(b'"');
            data.splice(at..at, s);
        }
    }
}

/// Keys of engram's WebSocket messages (docs/api/websocket.md), for
/// renaming one key to another or adding one where it does not belong.
const KEYS: &[&str] = &[
    "type",
    "memory_space_id",
    "resume_session_id",
    "enable_backpressure",
    "sequence_number",
    "episode",
    "priority",
    "action",
    "buffer_remaining",
    "request_id",
    "cue",
    "batch_size",
    "include_embeddings",
    "drain",
    "id",
    "when",
    "what",
    "embedding",
    "encoding_confidence",
    "tags",
    "metadata",
    "max_results",
    "similarity_threshold",
    "when_from",
    "when_to",
    "ef_search",
];

/// String values that mean something somewhere: message types, enum
/// values, timestamps at and past the edges of what is accepted.
const STRINGS: &[&str] = &[
    "init",
    "observation",
    "flow_control",
    "recall",
    "heartbeat",
    "close",
    "observe",
    "high",
    "low",
    "normal",
    "urgent",
    "pause",
    "resume",
    "buffer_status",
    "",
    "a",
    "A",
    "-a",
    "a/../b",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999999Z",
    "2262-04-11T23:47:16.854775807Z",
    "2262-04-11T23:47:16.854775808Z",
    "9999-12-31T23:59:59.999999999Z",
    "0000-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00+25:00",
    "2026-01-01T00:00:60Z",
    "2026-01-01 00:00:00",
    "yesterday",
    "\u{0}",
    "\u{7f}",
    "\u{1b}[31m",
    "\u{202e}",
];

/// A JSON value of some other kind, or an extreme one of the same kind.
fn replacement(rng: &mut Rng, original: &Value, corpus_value: Option<&Value>) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => Value::from(*rng.pick(&[0i64, -1, 1, i64::MIN, i64::MAX])),
        3 => Value::from(*rng.pick(&[u64::MAX, 1 << 53, (1 << 53) + 1, 8193, 4097, 1001])),
        4 => Value::from(*rng.pick(&[
            0.5f64,
            -0.0,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            3.5e38, // over f32::MAX
            1e-46,  // under f32's smallest subnormal
        ])),
        5 => Value::from(*rng.pick(STRINGS)),
        6 => {
            let n = *rng.pick(&[129usize, 1025, 65_537, 300_000]);
            Value::from("x".repeat(n))
        }
        7 => Value::Array(Vec::new()),
        8 => Value::Object(Map::new()),
        // A list of numbers: a wide embedding, or one of bad values.
        9 => {
            let n = *rng.pick(&[1usize, 3, 8192, 8193, 20_000]);
            let v = *rng.pick(&[0.0f64, 1.0, 1e39, -1e39, 0.1]);
            Value::Array(vec![Value::from(v); n])
        }
        // The same value nested deeply in arrays.
        10 => {
            let mut v = original.clone();
            for _ in 0..*rng.pick(&[2usize, 127, 200]) {
                v = Value::Array(vec![v]);
            }
            v
        }
        // The same value, twice, in an array.
        11 => Value::Array(vec![original.clone(), original.clone()]),
        // Many keys.
        12 => Value::Object(
            (0..*rng.pick(&[65usize, 1000]))
                .map(|i| (format!("k{i}"), Value::from("v")))
                .collect(),
        ),
        // A value from another corpus entry.
        _ => corpus_value.cloned().unwrap_or(Value::Null),
    }
}

/// Counts the values in a document (itself included).
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// The `k`-th value of a document in pre-order.
fn nth(v: &mut Value, k: usize) -> &mut Value {
    let mut k = k;
    nth_inner(v, &mut k).expect("k < count(v)")
}

fn nth_inner<'a>(v: &'a mut Value, k: &mut usize) -> Option<&'a mut Value> {
    if *k == 0 {
        return Some(v);
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|c| nth_inner(c, k)),
        Value::Object(o) => o.values_mut().find_map(|c| nth_inner(c, k)),
        _ => None,
    }
}

/// Some value of some corpus entry that is JSON, for structural splices.
fn corpus_value(corpus: &[Vec<u8>], rng: &mut Rng) -> Option<Value> {
    if corpus.is_empty() {
        return None;
    }
    let mut doc: Value = serde_json::from_slice(rng.pick(corpus).as_slice()).ok()?;
    let k = rng.below(count(&doc));
    Some(nth(&mut doc, k).take())
}

/// One structural mutation of a JSON document; text that is not JSON gets
/// a text mutation instead.
pub fn json(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    let Ok(mut doc) = serde_json::from_slice::<Value>(data) else {
        json_text(data, rng);
        return;
    };
    let k = rng.below(count(&doc));
    let other = corpus_value(corpus, rng);
    let node = nth(&mut doc, k);
    match node {
        Value::Object(o) if rng.chance(1, 2) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            match rng.below(4) {
                // Remove a key.
                0 if !keys.is_empty() => {
                    o.remove(rng.pick(&keys));
                }
                // Rename a key to another of the protocol's.
                1 if !keys.is_empty() => {
                    if let Some(v) = o.remove(rng.pick(&keys)) {
                        o.insert((*rng.pick(KEYS)).to_owned(), v);
                    }
                }
                // Add a key of the protocol's, or an unknown one.
                2 => {
                    let key = if rng.chance(3, 4) {
                        (*rng.pick(KEYS)).to_owned()
                    } else {
                        "unknown_field".to_owned()
                    };
                    let v = replacement(rng, &Value::Null, other.as_ref());
                    o.insert(key, v);
                }
                // Change the message type.
                _ => {
                    o.insert("type".to_owned(), Value::from(*rng.pick(&STRINGS[..7])));
                }
            }
        }
        _ => {
            let v = replacement(rng, node, other.as_ref());
            *node = v;
        }
    }
    *data = serde_json::to_vec(&doc).expect("a JSON value serialises");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<Vec<u8>> {
        vec![
            br#"{"type":"observation","sequence_number":1,"episode":{"embedding":[1,2]}}"#.to_vec(),
            b"\x00\x01\x02\x03binary".to_vec(),
        ]
    }

    #[test]
    fn the_same_rng_makes_the_same_input() {
        let corpus = corpus();
        for i in 0..200 {
            for shape in [Shape::Binary, Shape::Json] {
                let a = generate(&corpus, shape, &mut Rng::for_input(1, "t", i));
                let b = generate(&corpus, shape, &mut Rng::for_input(1, "t", i));
                assert_eq!(a, b, "iteration {i}");
            }
        }
    }

    #[test]
    fn inputs_stay_within_the_size_limit_and_vary() {
        let corpus = corpus();
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let input = generate(&corpus, Shape::Json, &mut Rng::for_input(2, "t", i));
            assert!(input.len() <= MAX_INPUT);
            seen.insert(input);
        }
        assert!(seen.len() > 1500, "only {} distinct inputs", seen.len());
    }

    #[test]
    fn every_byte_mutation_handles_tiny_inputs() {
        let corpus = vec![Vec::new(), vec![1]];
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            let n = rng.below(3);
            let mut data = rng.bytes(n);
            bytes(&mut data, &corpus, &mut rng);
            json(&mut data, &corpus, &mut rng);
            json_text(&mut data, &mut rng);
        }
    }

    #[test]
    fn pre_order_indexing_reaches_every_value() {
        let mut doc: Value = serde_json::from_str(r#"{"a":[1,{"b":2}],"c":3}"#).unwrap();
        let n = count(&doc);
        assert_eq!(n, 6);
        let seen: Vec<String> = (0..n).map(|k| nth(&mut doc, k).to_string()).collect();
        assert_eq!(seen[1], r#"[1,{"b":2}]"#);
        assert_eq!(seen[5], "3");
    }
}
