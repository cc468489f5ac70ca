//! Conversions between wire messages and engine types.

use engram_core::model::{MemoryFilter, MetadataCondition, Remembered, VectorStorage};
use engram_core::{Cue, EpisodeInput, Priority, RecalledMemory, SpaceInfo, StoredEpisode};
use engram_proto::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;

/// Unix nanoseconds from a protobuf Timestamp.
///
/// # Errors
/// INVALID_ARGUMENT for out-of-range nanos or a time before 1970 or after 2262.
pub fn nanos(field: &str, t: &Timestamp) -> Result<i64, Status> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Status::invalid_argument(format!(
            "invalid {field}: nanos {} is outside 0..999999999",
            t.nanos
        )));
    }
    t.seconds
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos)))
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            Status::invalid_argument(format!("invalid {field}: must be between 1970 and 2262"))
        })
}

pub fn timestamp(nanos: i64) -> Timestamp {
    Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

/// # Errors
/// INVALID_ARGUMENT for a bad timestamp.
pub fn episode_input(e: pb::Episode) -> Result<EpisodeInput, Status> {
    let expires_at = e
        .expires_at
        .as_ref()
        .map(|t| nanos("episode.expires_at", t))
        .transpose()?;
    let ttl = (e.ttl_seconds != 0.0).then_some(e.ttl_seconds);
    let expiry = engram_core::model::Expiry::from_wire(expires_at, ttl)
        .map_err(|err| Status::invalid_argument(err.to_string()))?;
    Ok(EpisodeInput {
        expiry,
        id: Some(e.id).filter(|s| !s.is_empty()),
        when_unix_nanos: e
            .when
            .as_ref()
            .map(|t| nanos("episode.when", t))
            .transpose()?,
        what: e.what,
        embedding: e.embedding,
        encoding_confidence: e.encoding_confidence,
        tags: e.tags,
        metadata: e.metadata.into_iter().collect(),
    })
}

/// A create request's default TTL: unset leaves it unspecified, 0 is none.
///
/// # Errors
/// INVALID_ARGUMENT when negative, not finite or above 100 years.
pub fn default_ttl_request(
    secs: Option<f64>,
) -> Result<Option<Option<std::time::Duration>>, Status> {
    engram_core::model::default_ttl_from_secs(secs)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// # Errors
/// INVALID_ARGUMENT for a missing cue or a bad timestamp.
pub fn cue(c: Option<pb::Cue>) -> Result<Cue, Status> {
    let c =
        c.ok_or_else(|| Status::invalid_argument("missing cue: expected a Cue with an embedding"))?;
    Ok(Cue {
        embedding: c.embedding,
        max_results: (c.max_results > 0).then_some(c.max_results as usize),
        similarity_threshold: Some(c.similarity_threshold),
        when_from: c
            .when_from
            .as_ref()
            .map(|t| nanos("cue.when_from", t))
            .transpose()?,
        when_to: c
            .when_to
            .as_ref()
            .map(|t| nanos("cue.when_to", t))
            .transpose()?,
        ef_search: (c.ef_search > 0).then_some(c.ef_search as usize),
        filter: c.filter.map(memory_filter).unwrap_or_default(),
        recency_half_life_secs: (c.recency_half_life_seconds != 0.0)
            .then_some(c.recency_half_life_seconds),
    })
}

/// The proto filter as the engine's (validated with the cue).
pub fn memory_filter(f: pb::MemoryFilter) -> MemoryFilter {
    MemoryFilter {
        tags_all: f.tags_all,
        tags_any: f.tags_any,
        tags_none: f.tags_none,
        metadata: f
            .metadata
            .into_iter()
            .map(|c| MetadataCondition {
                key: c.key,
                values: c.values,
            })
            .collect(),
    }
}

pub fn priority(p: i32) -> Priority {
    match pb::Priority::try_from(p) {
        Ok(pb::Priority::High) => Priority::High,
        Ok(pb::Priority::Low) => Priority::Low,
        _ => Priority::Normal,
    }
}

/// An episode on the wire; `embedding` is its vector when the caller asked
/// for it (a stored episode may not hold it: see `StoredEpisode::embedding`).
pub fn episode(e: &StoredEpisode, embedding: Option<&[f32]>) -> pb::Episode {
    pb::Episode {
        id: e.id.clone(),
        when: Some(timestamp(e.when_unix_nanos)),
        what: e.what.clone(),
        embedding: embedding.map(<[f32]>::to_vec).unwrap_or_default(),
        encoding_confidence: Some(e.encoding_confidence),
        tags: e.tags.clone(),
        metadata: e.metadata.clone().into_iter().collect(),
        expires_at: e.expires_at_unix_nanos.map(timestamp),
        ttl_seconds: 0.0,
    }
}

pub fn recalled(m: &RecalledMemory, include_embeddings: bool) -> pb::RecalledMemory {
    pb::RecalledMemory {
        episode: Some(episode(
            &m.episode,
            include_embeddings.then_some(&m.embedding[..]),
        )),
        similarity: m.similarity,
        confidence: m.confidence,
        server_sequence: m.episode.server_sequence,
        indexed: m.indexed,
        score: m.score,
        recency_weight: m.recency_weight,
    }
}

/// The storage a create-space request names: `None` for unspecified (the
/// engine's default).
///
/// # Errors
/// INVALID_ARGUMENT naming the field for a number that is not a
/// `VectorStorage` value.
pub fn vector_storage_request(v: i32) -> Result<Option<VectorStorage>, Status> {
    match pb::VectorStorage::try_from(v) {
        Ok(pb::VectorStorage::Unspecified) => Ok(None),
        Ok(pb::VectorStorage::Memory) => Ok(Some(VectorStorage::Memory)),
        Ok(pb::VectorStorage::Compact) => Ok(Some(VectorStorage::Compact)),
        Err(_) => Err(Status::invalid_argument(format!(
            "invalid vector_storage: {v} is not a VectorStorage; expected \
             VECTOR_STORAGE_UNSPECIFIED (0, the server's default), \
             VECTOR_STORAGE_MEMORY (1) or VECTOR_STORAGE_COMPACT (2)"
        ))),
    }
}

pub fn vector_storage(v: VectorStorage) -> pb::VectorStorage {
    match v {
        VectorStorage::Memory => pb::VectorStorage::Memory,
        VectorStorage::Compact => pb::VectorStorage::Compact,
    }
}

pub fn space_info(i: &SpaceInfo) -> pb::SpaceInfo {
    pb::SpaceInfo {
        memory_space_id: i.memory_space_id.clone(),
        dimension: i.dimension as u32,
        count: i.count,
        indexed_count: i.indexed_count,
        queue_depth: i.queue_depth,
        last_sequence: i.last_sequence,
        index_lag_seconds: i.index_lag_seconds,
        quarantined_count: i.quarantined_count,
        memory: Some(pb::SpaceMemory {
            vectors: i.memory.vectors,
            codes: i.memory.codes,
            graph: i.memory.graph,
            episodes: i.memory.episodes,
            fresh: i.memory.fresh,
            vectors_on_disk: i.memory.vectors_on_disk,
        }),
        vector_storage: vector_storage(i.vector_storage) as i32,
        default_ttl_seconds: i.default_ttl.map_or(0.0, |t| t.as_secs_f64()),
        expired_count: i.expired_count,
    }
}

pub fn remembered(r: &Remembered) -> pb::RememberResponse {
    pb::RememberResponse {
        memory_id: r.memory_id.clone(),
        server_sequence: r.server_sequence,
        committed_at: Some(timestamp(r.committed_at_unix_nanos)),
        duplicate: r.duplicate,
        token: None,
    }
}

/// A listing's page token for "after sequence `seq`": opaque to clients
/// (its form may change), so they cannot come to depend on it.
pub fn page_token(seq: u64) -> String {
    format!("v1.{seq:x}")
}

/// The sequence a page token stands for (empty: from the start).
///
/// # Errors
/// A token this server did not give.
pub fn page_after(token: &str) -> Result<u64, String> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix("v1.")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| {
            "page_token is not one this server gave: pass a next_page_token unchanged, or none to start".to_owned()
        })
}
