//! The data model (memory spaces, episodes, cues) and its validation. Everything that
//! enters the engine passes through here first, so the limits live here.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::distance;

/// Longest client-chosen episode id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest episode text, in bytes (64 KiB).
pub const MAX_WHAT_BYTES: usize = 64 * 1024;
/// Largest embedding dimension a space may have. Far above today's text
/// embedding models (384–4096), low enough that one vector stays small.
pub const MAX_DIMENSION: usize = 8192;
/// Dimension of a space created without one.
pub const DEFAULT_DIMENSION: usize = 768;
/// Most tags on one episode, and the longest tag in bytes.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_BYTES: usize = 128;
/// Most metadata entries, the longest key and the longest value, in bytes:
/// metadata is a *small* string map, not a document store.
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY_BYTES: usize = 128;
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// Bounds of a cue's `max_results`, and its default.
pub const MAX_RESULTS_LIMIT: usize = 1000;
pub const DEFAULT_MAX_RESULTS: usize = 10;
/// Largest search breadth a cue may ask for: the cost of a recall grows
/// with it, and past a few thousand a search visits most of a space that
/// an exact scan would serve as well.
pub const MAX_EF_SEARCH: usize = 4096;

/// A memory space id: `^[a-z0-9][a-z0-9_-]{0,63}$`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpaceId(String);

impl SpaceId {
    /// Validates a space id.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the rule that the id breaks.
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(
                "memory_space_id",
                format!(
                    "'{}' {why}; ids match ^[a-z0-9][a-z0-9_-]{{0,63}}$",
                    raw.escape_debug()
                ),
            )
        };
        let bytes = raw.as_bytes();
        match bytes.first() {
            None => return Err(bad("is empty")),
            Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
                return Err(bad("must start with a lowercase letter or digit"))
            }
            _ => {}
        }
        if bytes.len() > 64 {
            return Err(bad("is longer than 64 characters"));
        }
        if !bytes
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
        {
            return Err(bad("may contain only a-z, 0-9, '_' and '-'"));
        }
        Ok(SpaceId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An observation as a client sends it, before validation.
#[derive(Clone, Debug, Default)]
pub struct EpisodeInput {
    /// Client id; `None` or empty means the server makes one.
    pub id: Option<String>,
    /// Unix time in nanoseconds; `None` means the receive time.
    pub when_unix_nanos: Option<i64>,
    pub what: String,
    pub embedding: Vec<f32>,
    /// In [0, 1]; `None` means 1.0.
    pub encoding_confidence: Option<f32>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// When the memory expires; `None`: the space's default TTL, if any.
    pub expiry: Option<Expiry>,
}

/// When an observed memory expires, as a client gives it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expiry {
    /// At this instant (Unix nanoseconds); must be in the future by the
    /// engine's clock when the observation is committed.
    At(i64),
    /// This long after the engine commits it.
    After(std::time::Duration),
}

impl Expiry {
    /// The expiry of an observation from its wire fields (both optional,
    /// at most one set).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when both are set or the TTL is out of
    /// range (an `expires_at` in the past is refused at commit, against
    /// the engine's clock).
    pub fn from_wire(expires_at: Option<i64>, ttl_seconds: Option<f64>) -> Result<Option<Expiry>> {
        match (expires_at, ttl_seconds) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "episode.ttl_seconds",
                "is set together with episode.expires_at; give at most one of the two",
            )),
            (Some(t), None) => Ok(Some(Expiry::At(t))),
            (None, Some(secs)) => Ok(Some(Expiry::After(ttl_from_secs(
                "episode.ttl_seconds",
                secs,
            )?))),
            (None, None) => Ok(None),
        }
    }
}

/// The longest time to live (100 years), for episodes and space defaults.
pub const MAX_TTL: std::time::Duration =
    std::time::Duration::from_secs(100 * 365 * 86_400 + 25 * 86_400);

/// A space's default TTL as a create request carries it: unset (`None`)
/// leaves it unspecified, 0 is none, else a checked TTL.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `default_ttl_seconds`.
pub fn default_ttl_from_secs(secs: Option<f64>) -> Result<Option<Option<std::time::Duration>>> {
    match secs {
        None => Ok(None),
        Some(0.0) => Ok(Some(None)),
        Some(s) => ttl_from_secs("default_ttl_seconds", s).map(|t| Some(Some(t))),
    }
}

/// A TTL in seconds as the wire carries it, checked: finite, > 0, at most
/// [`MAX_TTL`].
///
/// # Errors
/// [`Error::InvalidArgument`] naming `field`.
pub fn ttl_from_secs(field: &'static str, secs: f64) -> Result<std::time::Duration> {
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_TTL.as_secs_f64() {
        return Err(Error::invalid(
            field,
            format!(
                "is {secs}; expected seconds above 0 and at most {} (100 years)",
                MAX_TTL.as_secs()
            ),
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs).max(std::time::Duration::from_nanos(1)))
}

/// A validated, stored episode. The embedding is kept L2-normalised: the
/// metric is cosine, so the direction is all that recall uses, and the index
/// and the exact scan can both use a plain dot product.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEpisode {
    pub id: String,
    pub when_unix_nanos: i64,
    pub what: String,
    /// The L2-normalised vector while the episode waits to be indexed (the
    /// fresh tier scans it, the WAL record carries it). Once the index
    /// holds the vector, the space keeps the episode without it (empty
    /// here): one copy of each vector in memory. Read a stored episode's
    /// vector with `Space::embedding_of`; a recalled memory carries it in
    /// [`RecalledMemory::embedding`].
    pub embedding: Arc<[f32]>,
    pub encoding_confidence: f32,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// Commit order in the space, from 1.
    pub server_sequence: u64,
    /// When the commit thread accepted it (Unix nanoseconds).
    pub committed_at_unix_nanos: i64,
    /// When it expires (Unix nanoseconds on the engine's clock), if ever:
    /// from then on no recall or listing returns it, and the background
    /// purge removes it. Not part of the bincode layout of this struct
    /// (records and snapshots written before expiry existed keep reading):
    /// the WAL record and the snapshot carry it beside the episode.
    #[serde(skip)]
    pub expires_at_unix_nanos: Option<i64>,
}

impl StoredEpisode {
    /// Whether this copy holds its vector (see [`StoredEpisode::embedding`]).
    pub fn holds_embedding(&self) -> bool {
        !self.embedding.is_empty()
    }

    /// Bytes a stored episode takes besides its vector (an estimate, without
    /// allocator rounding): the struct behind its `Arc`, its strings, tags
    /// and metadata (the space's id table keeps a hash, counted there).
    pub fn bytes_without_embedding(&self) -> usize {
        use std::mem::size_of;
        size_of::<Self>()
            + 2 * size_of::<usize>()
            + self.id.len()
            + self.what.len()
            + self
                .tags
                .iter()
                .map(|t| size_of::<String>() + t.len())
                .sum::<usize>()
            + self
                .metadata
                .iter()
                .map(|(k, v)| 2 * size_of::<String>() + k.len() + v.len() + 4 * size_of::<usize>())
                .sum::<usize>()
    }

    /// This episode without its vector, for once the index holds it.
    pub fn without_embedding(&self) -> StoredEpisode {
        StoredEpisode {
            id: self.id.clone(),
            when_unix_nanos: self.when_unix_nanos,
            what: self.what.clone(),
            embedding: no_embedding(),
            encoding_confidence: self.encoding_confidence,
            tags: self.tags.clone(),
            metadata: self.metadata.clone(),
            server_sequence: self.server_sequence,
            committed_at_unix_nanos: self.committed_at_unix_nanos,
            expires_at_unix_nanos: self.expires_at_unix_nanos,
        }
    }

    /// True when the memory has expired as of `now` (Unix nanoseconds).
    pub fn expired_at(&self, now: i64) -> bool {
        self.expires_at_unix_nanos.is_some_and(|t| t <= now)
    }
}

/// The empty vector of an episode whose vector lives in the index (one
/// shared allocation).
pub fn no_embedding() -> Arc<[f32]> {
    static EMPTY: std::sync::OnceLock<Arc<[f32]>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from(Vec::new())).clone()
}

/// Current time as Unix nanoseconds.
/// The engine's clock for expiry: the system time plus an offset that
/// only tests and drills move ([`Clock::advance`], reached through the
/// server's fault-injection route). Every expiry decision (an episode's
/// expiry from its TTL, whether a recall or listing may return a memory,
/// the purge) reads this one clock. Clones share the offset.
#[derive(Clone, Default)]
pub struct Clock {
    offset_nanos: Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    /// Now, in Unix nanoseconds.
    pub fn now_unix_nanos(&self) -> i64 {
        now_unix_nanos()
            .saturating_add(self.offset_nanos.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Moves this clock (and its clones) forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        let _ = self.offset_nanos.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |o| Some(o.saturating_add(by)),
        );
    }

    /// How far the clock has been moved ahead of the system time.
    pub fn offset(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(
            self.offset_nanos
                .load(std::sync::atomic::Ordering::Acquire)
                .max(0) as u64,
        )
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(system + {:?})", self.offset())
    }
}

/// Clocks are equal when they read the same (the same offset): a
/// configuration read back from its text equals the one printed.
impl PartialEq for Clock {
    fn eq(&self, other: &Self) -> bool {
        self.offset() == other.offset()
    }
}

/// RFC 3339 text of a Unix-nanosecond instant (for messages).
pub fn format_unix_nanos(nanos: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_nanos(nanos.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

pub fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Checks an embedding's values and returns its L2-normalised copy.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty, oversized, non-finite or zero vector.
pub fn normalized_embedding(field: &'static str, values: &[f32]) -> Result<Vec<f32>> {
    if values.is_empty() {
        return Err(Error::invalid(
            field,
            "is empty; expected a vector of finite floats with a non-zero norm",
        ));
    }
    if values.len() > MAX_DIMENSION {
        return Err(Error::invalid(
            field,
            format!(
                "has {} values; the largest supported dimension is {MAX_DIMENSION}",
                values.len()
            ),
        ));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid(
            field,
            format!("value at index {i} is {v}; every value must be finite (no NaN or infinity)"),
        ));
    }
    let mut v = values.to_vec();
    let norm = distance::normalize(&mut v);
    if norm.is_nan() || norm <= 0.0 || !norm.is_finite() {
        return Err(Error::invalid(
            field,
            "has zero norm (all values are 0); cosine similarity needs a non-zero vector",
        ));
    }
    Ok(v)
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; the limit is {max} bytes", s.len()),
        ));
    }
    Ok(())
}

/// An episode that passed validation, waiting for its server sequence.
#[derive(Clone, Debug)]
pub struct ValidEpisode {
    /// Client id, or `None` when the server must make one.
    pub id: Option<String>,
    pub when_unix_nanos: i64,
    pub what: String,
    pub embedding: Arc<[f32]>,
    pub encoding_confidence: f32,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub expiry: Option<Expiry>,
}

impl EpisodeInput {
    /// Validates everything that does not depend on the space (its
    /// dimension is checked at commit, where it is authoritative).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field and the limit it breaks.
    pub fn validate(self) -> Result<ValidEpisode> {
        let id = match self.id {
            Some(id) if !id.is_empty() => {
                check_len("episode.id", &id, MAX_ID_BYTES)?;
                if id.chars().any(char::is_control) {
                    return Err(Error::invalid("episode.id", "contains control characters"));
                }
                Some(id)
            }
            _ => None,
        };
        check_len("episode.what", &self.what, MAX_WHAT_BYTES)?;
        let embedding = normalized_embedding("episode.embedding", &self.embedding)?;
        let encoding_confidence = match self.encoding_confidence {
            None => 1.0,
            Some(c) if (0.0..=1.0).contains(&c) => c,
            Some(c) => {
                return Err(Error::invalid(
                    "episode.encoding_confidence",
                    format!("is {c}; expected a value in [0, 1]"),
                ))
            }
        };
        if self.tags.len() > MAX_TAGS {
            return Err(Error::invalid(
                "episode.tags",
                format!("has {} tags; the limit is {MAX_TAGS}", self.tags.len()),
            ));
        }
        for t in &self.tags {
            check_len("episode.tags", t, MAX_TAG_BYTES)?;
        }
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(Error::invalid(
                "episode.metadata",
                format!(
                    "has {} entries; the limit is {MAX_METADATA_ENTRIES}",
                    self.metadata.len()
                ),
            ));
        }
        for (k, v) in &self.metadata {
            check_len("episode.metadata key", k, MAX_METADATA_KEY_BYTES)?;
            check_len("episode.metadata value", v, MAX_METADATA_VALUE_BYTES)?;
        }
        Ok(ValidEpisode {
            id,
            when_unix_nanos: self.when_unix_nanos.unwrap_or_else(now_unix_nanos),
            what: self.what,
            embedding: embedding.into(),
            encoding_confidence,
            tags: self.tags,
            metadata: self.metadata,
            expiry: self.expiry,
        })
    }
}

/// A recall request.
#[derive(Clone, Debug, Default)]
pub struct Cue {
    pub embedding: Vec<f32>,
    /// 1..=1000; `None` means 10.
    pub max_results: Option<usize>,
    /// Minimum cosine similarity of a result; default 0.
    pub similarity_threshold: Option<f32>,
    /// Inclusive time window on `when` (Unix nanoseconds).
    pub when_from: Option<i64>,
    pub when_to: Option<i64>,
    /// The index's search breadth for this recall, 1..=`MAX_EF_SEARCH`
    /// (at least `max_results` is used); `None`: the server's
    /// `engine.index.ef_search`. Higher: better recall, slower; large
    /// spaces need more than small ones for the same recall@10.
    pub ef_search: Option<usize>,
    /// Which memories are candidates at all (tags, metadata); empty: all.
    /// Applied inside the search, never after it: a recall returns
    /// min(k, matching memories).
    pub filter: MemoryFilter,
    /// Recency: rank by similarity x 0.5^(age / half-life), the age being
    /// now minus the memory's `when`, so that a newer fact outranks an
    /// older, similar one. `None`: by similarity alone.
    pub recency_half_life_secs: Option<f64>,
}

/// Longest recency half-life: 100 years.
pub const MAX_HALF_LIFE_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// A recall's recency weighting: the half-life, and "now" read once for
/// the whole recall from the engine's clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recency {
    pub half_life_secs: f64,
    pub now_unix_nanos: i64,
}

impl Recency {
    /// 0.5^(age / half-life), 1 for a memory from the future.
    pub fn weight(&self, when_unix_nanos: i64) -> f32 {
        let age = (self.now_unix_nanos.saturating_sub(when_unix_nanos)).max(0) as f64 / 1e9;
        (0.5f64).powf(age / self.half_life_secs) as f32
    }

    /// The ranking score: similarity x weight for a memory that matches
    /// at all (similarity > 0); a dissimilar one keeps its similarity, so
    /// age never makes a mismatch look closer.
    pub fn score(&self, similarity: f32, weight: f32) -> f32 {
        if similarity > 0.0 {
            similarity * weight
        } else {
            similarity
        }
    }
}

/// Conditions on a memory's tags and metadata; a memory matches when every
/// condition holds. The empty filter matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryFilter {
    /// The memory has every one of these tags.
    pub tags_all: Vec<String>,
    /// The memory has at least one of these tags (ignored when empty).
    pub tags_any: Vec<String>,
    /// The memory has none of these tags.
    pub tags_none: Vec<String>,
    /// Each holds: the memory's metadata value under `key` is one of
    /// `values` (one value: equals; several: in).
    pub metadata: Vec<MetadataCondition>,
}

/// `metadata[key]` is one of `values`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataCondition {
    pub key: String,
    pub values: Vec<String>,
}

/// Most conditions (tags listed plus metadata values) in one filter.
pub const MAX_FILTER_TERMS: usize = 256;

impl MemoryFilter {
    pub fn is_empty(&self) -> bool {
        self.tags_all.is_empty()
            && self.tags_any.is_empty()
            && self.tags_none.is_empty()
            && self.metadata.is_empty()
    }

    /// True when `e` meets every condition.
    pub fn matches(&self, e: &StoredEpisode) -> bool {
        let has = |t: &String| e.tags.iter().any(|x| x == t);
        self.tags_all.iter().all(has)
            && (self.tags_any.is_empty() || self.tags_any.iter().any(has))
            && !self.tags_none.iter().any(has)
            && self.metadata.iter().all(|c| {
                e.metadata
                    .get(&c.key)
                    .is_some_and(|v| c.values.iter().any(|x| x == v))
            })
    }

    /// # Errors
    /// [`Error::InvalidArgument`] for an empty or oversized tag, key or
    /// value, a metadata condition without values, or more than
    /// [`MAX_FILTER_TERMS`] terms.
    pub fn validate(&self) -> Result<()> {
        let terms = self.tags_all.len()
            + self.tags_any.len()
            + self.tags_none.len()
            + self.metadata.iter().map(|c| c.values.len()).sum::<usize>();
        if terms > MAX_FILTER_TERMS {
            return Err(Error::invalid(
                "cue.filter",
                format!("has {terms} terms; the limit is {MAX_FILTER_TERMS}"),
            ));
        }
        for (field, tags) in [
            ("cue.filter.tags_all", &self.tags_all),
            ("cue.filter.tags_any", &self.tags_any),
            ("cue.filter.tags_none", &self.tags_none),
        ] {
            for t in tags {
                if t.is_empty() {
                    return Err(Error::invalid(field, "has an empty tag"));
                }
                check_len(field, t, MAX_TAG_BYTES)?;
            }
        }
        for c in &self.metadata {
            if c.key.is_empty() {
                return Err(Error::invalid("cue.filter.metadata", "has an empty key"));
            }
            check_len("cue.filter.metadata key", &c.key, MAX_METADATA_KEY_BYTES)?;
            if c.values.is_empty() {
                return Err(Error::invalid(
                    "cue.filter.metadata",
                    format!(
                        "key '{}' has no values: give one (equals) or several (in)",
                        c.key
                    ),
                ));
            }
            for v in &c.values {
                check_len("cue.filter.metadata value", v, MAX_METADATA_VALUE_BYTES)?;
            }
        }
        Ok(())
    }
}

/// A cue that passed validation.
#[derive(Clone, Debug)]
pub struct ValidCue {
    pub embedding: Vec<f32>,
    pub max_results: usize,
    pub similarity_threshold: f32,
    pub when_from: i64,
    pub when_to: i64,
    pub ef_search: Option<usize>,
    pub filter: MemoryFilter,
    pub recency: Option<Recency>,
    /// The recall's instant on the engine's clock (Unix nanoseconds): a
    /// memory expired at it is not a candidate. Validation sets the system
    /// time; the engine sets its own clock's before it recalls.
    pub as_of_unix_nanos: i64,
}

impl ValidCue {
    pub fn has_window(&self) -> bool {
        self.when_from != i64::MIN || self.when_to != i64::MAX
    }

    pub fn in_window(&self, when: i64) -> bool {
        (self.when_from..=self.when_to).contains(&when)
    }

    /// True when `e` is a candidate for this cue: inside its window and
    /// matching its filter.
    pub fn admits(&self, e: &StoredEpisode) -> bool {
        (!self.has_window() || self.in_window(e.when_unix_nanos))
            && self.filter.matches(e)
            && !e.expired_at(self.as_of_unix_nanos)
    }

    /// True when some memories may not be candidates (a window or a filter).
    pub fn restricts(&self) -> bool {
        self.has_window() || !self.filter.is_empty()
    }
}

impl Cue {
    /// Validates the cue (the dimension is checked against the space by recall).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field.
    pub fn validate(self) -> Result<ValidCue> {
        let embedding = normalized_embedding("cue.embedding", &self.embedding)?;
        let max_results = self.max_results.unwrap_or(DEFAULT_MAX_RESULTS);
        if !(1..=MAX_RESULTS_LIMIT).contains(&max_results) {
            return Err(Error::invalid(
                "cue.max_results",
                format!("is {max_results}; expected 1 to {MAX_RESULTS_LIMIT}"),
            ));
        }
        let similarity_threshold = self.similarity_threshold.unwrap_or(0.0);
        if !similarity_threshold.is_finite() || !(-1.0..=1.0).contains(&similarity_threshold) {
            return Err(Error::invalid(
                "cue.similarity_threshold",
                format!("is {similarity_threshold}; expected a value in [-1, 1]"),
            ));
        }
        let when_from = self.when_from.unwrap_or(i64::MIN);
        let when_to = self.when_to.unwrap_or(i64::MAX);
        if when_from > when_to {
            return Err(Error::invalid("cue.when_from", "is after cue.when_to"));
        }
        if let Some(ef) = self.ef_search {
            if !(1..=MAX_EF_SEARCH).contains(&ef) {
                return Err(Error::invalid(
                    "cue.ef_search",
                    format!("is {ef}; expected 1 to {MAX_EF_SEARCH} (or unset for the server's default)"),
                ));
            }
        }
        self.filter.validate()?;
        let recency = match self.recency_half_life_secs {
            None => None,
            Some(h) if h.is_finite() && h > 0.0 && h <= MAX_HALF_LIFE_SECS => Some(Recency {
                half_life_secs: h,
                now_unix_nanos: now_unix_nanos(),
            }),
            Some(h) => {
                return Err(Error::invalid(
                    "cue.recency_half_life_seconds",
                    format!("is {h}; expected more than 0 and at most {MAX_HALF_LIFE_SECS} (100 years), or unset"),
                ))
            }
        };
        Ok(ValidCue {
            embedding,
            max_results,
            similarity_threshold,
            when_from,
            when_to,
            ef_search: self.ef_search,
            filter: self.filter,
            recency,
            as_of_unix_nanos: now_unix_nanos(),
        })
    }
}

/// One recalled memory.
#[derive(Clone, Debug)]
pub struct RecalledMemory {
    pub episode: Arc<StoredEpisode>,
    /// The memory's vector (from the fresh tier, or copied from the index:
    /// the stored episode of an indexed memory does not hold it).
    pub embedding: Arc<[f32]>,
    pub similarity: f32,
    /// What the recall ranked by: the similarity, or with recency
    /// weighting similarity x `recency_weight`.
    pub score: f32,
    /// 0.5^(age / half-life) with recency weighting, else 1.
    pub recency_weight: f32,
    /// The episode's encoding confidence (kept for the wire's `confidence`).
    pub confidence: f32,
    /// True when it came from the HNSW index, false from the fresh tier.
    pub indexed: bool,
}

/// The answer to a recall: the top-k and the snapshot point it saw.
#[derive(Clone, Debug)]
pub struct RecallResult {
    pub memories: Vec<RecalledMemory>,
    pub snapshot_sequence: u64,
}

/// Largest page of a listing, and the default.
pub const MAX_LIST_PAGE: usize = 1000;
pub const DEFAULT_LIST_PAGE: usize = 100;

/// A listed memory, with its vector when asked for (`include_embeddings`).
pub type ListedMemory = (Arc<StoredEpisode>, Option<Arc<[f32]>>);

/// One page of a listing: live memories in server-sequence order.
#[derive(Clone, Debug)]
pub struct MemoryPage {
    pub memories: Vec<ListedMemory>,
    /// Where the next page starts: the last sequence of this one. None:
    /// nothing more matched when this page was read.
    pub next_after: Option<u64>,
}

/// Where a space keeps the exact `f32` vectors of its indexed memories.
///
/// - `memory` (the default): in RAM beside the index's 8-bit code rows;
///   about 4 KB of RAM per 768-d memory. Fastest recall.
/// - `compact`: in a file on disk, read only to re-score a recall's best
///   candidates; RAM holds the code rows, the graph and the episodes (about
///   1.2 KB per 768-d memory). Graph building compares code rows instead of
///   exact vectors. Recall reads `2k` (at least `k + 10`) vectors from the
///   page cache, or from disk when they are not cached.
///
/// Memories not yet indexed keep their vector in RAM in both modes (the
/// fresh tier), and snapshots hold every vector in both, so the mode
/// changes nothing about durability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorStorage {
    #[default]
    Memory,
    Compact,
}

impl VectorStorage {
    pub fn as_str(self) -> &'static str {
        match self {
            VectorStorage::Memory => "memory",
            VectorStorage::Compact => "compact",
        }
    }
}

impl fmt::Display for VectorStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for VectorStorage {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "memory" => Ok(VectorStorage::Memory),
            "compact" => Ok(VectorStorage::Compact),
            other => Err(Error::InvalidArgument {
                field: "vector_storage",
                message: format!("is '{other}'; expected 'memory' or 'compact'"),
            }),
        }
    }
}

/// A space's memory by kind, in bytes (estimates of what the structures
/// hold, without allocator overhead; the process's resident memory is the
/// measured total).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpaceMemory {
    /// Exact `f32` vectors of indexed memories (in the index).
    pub vectors: u64,
    /// The index's quantized code rows (what searches traverse).
    pub codes: u64,
    /// The index's link lists, labels, locks and label table.
    pub graph: u64,
    /// Stored episodes besides their vectors: ids, texts, tags, metadata,
    /// the id table.
    pub episodes: u64,
    /// Vectors of memories not indexed yet (the fresh tier).
    pub fresh: u64,
    /// Exact vectors kept on disk instead (compact mode; not RAM, not in
    /// [`SpaceMemory::total`]).
    pub vectors_on_disk: u64,
}

impl SpaceMemory {
    /// Every kind held in RAM together.
    pub fn total(&self) -> u64 {
        self.vectors + self.codes + self.graph + self.episodes + self.fresh
    }

    /// The kinds with their metric label, in a fixed order.
    pub fn by_kind(&self) -> [(&'static str, u64); 5] {
        [
            ("vectors", self.vectors),
            ("codes", self.codes),
            ("graph", self.graph),
            ("episodes", self.episodes),
            ("fresh", self.fresh),
        ]
    }
}

/// What `describe` reports about a space.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpaceInfo {
    pub memory_space_id: String,
    /// 0 while unset (the first observation sets it).
    pub dimension: usize,
    /// Live (not forgotten) memories.
    pub count: u64,
    /// Memories in the HNSW index.
    pub indexed_count: u64,
    /// Accepted but not yet indexed.
    pub queue_depth: u64,
    /// Highest server sequence committed.
    pub last_sequence: u64,
    /// Age of the oldest not-yet-indexed observation, in seconds (0 when none).
    pub index_lag_seconds: f64,
    /// Observations whose indexing kept panicking: kept in the exact-scanned
    /// fresh tier (recalled, durable), not in the index, not in
    /// `queue_depth`; indexing is tried again at the next start.
    pub quarantined_count: u64,
    /// Memory held for the space, by kind.
    pub memory: SpaceMemory,
    /// Where the exact vectors of indexed memories are kept.
    pub vector_storage: VectorStorage,
    /// Time to live of memories observed without their own expiry.
    pub default_ttl: Option<std::time::Duration>,
    /// Memories purged because they expired, since the engine opened.
    pub expired_count: u64,
}

/// Where a write landed in cluster mode: its partition's stream and the
/// sequence JetStream stored it at. A recall that carries it (on any node)
/// waits until the partition's owner has applied the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub partition: u32,
    pub sequence: u64,
}

/// The result of remembering one observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remembered {
    pub memory_id: String,
    pub server_sequence: u64,
    pub committed_at_unix_nanos: i64,
    /// True when an episode with this id already existed: nothing new was
    /// stored, and this is the original's sequence (idempotent retry).
    pub duplicate: bool,
    /// In cluster mode: where the write is stored (None on a single node).
    pub token: Option<ConsistencyToken>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_ids_follow_the_pattern() {
        for ok in ["a", "0", "agent-7", "a_b-c", &"x".repeat(64)] {
            assert!(SpaceId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "_a", "a b", "a/b", "ä", &"x".repeat(65)] {
            let e = SpaceId::parse(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_argument", "{bad}");
        }
    }

    #[test]
    fn embeddings_are_checked_and_normalised() {
        let v = normalized_embedding("e", &[3.0, 4.0]).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        for bad in [
            vec![],
            vec![0.0, 0.0],
            vec![f32::NAN, 1.0],
            vec![1.0, f32::INFINITY],
        ] {
            assert!(normalized_embedding("e", &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn episode_limits() {
        let base = EpisodeInput {
            embedding: vec![1.0, 0.0],
            ..Default::default()
        };
        assert!(base.clone().validate().is_ok());
        let mut e = base.clone();
        e.what = "x".repeat(MAX_WHAT_BYTES + 1);
        assert!(e
            .validate()
            .unwrap_err()
            .to_string()
            .contains("65537 bytes"));
        let mut e = base.clone();
        e.id = Some("i".repeat(MAX_ID_BYTES + 1));
        assert!(e.validate().is_err());
        let mut e = base.clone();
        e.encoding_confidence = Some(1.5);
        assert!(e.validate().is_err());
        let mut e = base;
        e.id = Some(String::new());
        assert!(
            e.validate().unwrap().id.is_none(),
            "empty id means server-generated"
        );
    }

    #[test]
    fn cue_limits() {
        let cue = |n| Cue {
            embedding: vec![1.0],
            max_results: Some(n),
            similarity_threshold: None,
            when_from: None,
            when_to: None,
            ef_search: None,
            filter: MemoryFilter::default(),
            recency_half_life_secs: None,
        };
        assert!(cue(1).validate().is_ok());
        assert!(cue(1000).validate().is_ok());
        assert!(cue(0).validate().is_err());
        assert!(cue(1001).validate().is_err());
    }
}
