//! Where recall merges tiers. A recall fixes its snapshot point first, then
//! takes the fresh tier's episodes up to that point, scans them exactly, and
//! searches the HNSW index restricted to the same point; the two candidate
//! lists are merged into one top-k.
//!
//! Why nothing acked is missed (SPEC 3.3): an indexing worker inserts an
//! episode into the index *before* removing it from the fresh tier. The
//! fresh tier is read before the index is searched, so an episode is either
//! still in the fresh copy, or was already in the index when the search
//! began. An episode in both is kept once.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::index::distance::dot;
use crate::model::{RecallResult, RecalledMemory, StoredEpisode, ValidCue};
use crate::space::Space;

/// Below this many indexed vectors, the index is searched with a breadth
/// equal to its size, which makes the search exhaustive: on small spaces a
/// full scan costs microseconds, and recall equals exact search.
const EXHAUSTIVE_BELOW: usize = 1000;

/// Searches `space` as of now. `ef` is the index's search breadth.
///
/// # Errors
/// [`Error::DimensionMismatch`] when the cue does not fit the space.
pub fn recall(space: &Space, cue: &ValidCue, ef: usize) -> Result<RecallResult> {
    if cue.embedding.len() != space.dimension() {
        return Err(Error::DimensionMismatch {
            space: space.id().to_string(),
            expected: space.dimension(),
            got: cue.embedding.len(),
        });
    }
    let snapshot = space.visible_sequence();
    let k = cue.max_results;

    let fresh = space.read().fresh_up_to(snapshot);
    let mut candidates: Vec<RecalledMemory> = Vec::with_capacity(2 * k);
    exact_scan(&fresh, cue, &mut candidates);

    {
        let state = space.read();
        let window = cue.has_window();
        let filter = |seq: u64| {
            seq <= snapshot
                && state
                    .episode(seq)
                    .is_some_and(|e| !window || cue.in_window(e.when_unix_nanos))
        };
        let index = space.index();
        let ef = if index.len() <= EXHAUSTIVE_BELOW {
            index.len()
        } else {
            ef
        };
        for (seq, similarity) in index.search(&cue.embedding, k, ef.max(k), &filter) {
            if similarity < cue.similarity_threshold {
                continue;
            }
            if let Some(e) = state.episode(seq) {
                candidates.push(RecalledMemory {
                    confidence: e.encoding_confidence,
                    episode: e.clone(),
                    similarity,
                    indexed: true,
                });
            }
        }
    }

    Ok(RecallResult {
        memories: merge_top_k(candidates, k),
        snapshot_sequence: snapshot,
    })
}

/// Exact cosine over fresh episodes (all L2-normalised, so a dot product).
fn exact_scan(fresh: &[Arc<StoredEpisode>], cue: &ValidCue, out: &mut Vec<RecalledMemory>) {
    let window = cue.has_window();
    let mut scored: Vec<(f32, &Arc<StoredEpisode>)> = fresh
        .iter()
        .filter(|e| !window || cue.in_window(e.when_unix_nanos))
        .map(|e| (dot(&cue.embedding, &e.embedding), e))
        .filter(|(s, _)| *s >= cue.similarity_threshold)
        .collect();
    let k = cue.max_results;
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, |a, b| by_similarity(a.0, a.1, b.0, b.1));
        scored.truncate(k);
    }
    out.extend(scored.into_iter().map(|(similarity, e)| RecalledMemory {
        confidence: e.encoding_confidence,
        episode: e.clone(),
        similarity,
        indexed: false,
    }));
}

/// Best first: higher similarity, then the older (smaller) sequence.
fn by_similarity(sa: f32, a: &StoredEpisode, sb: f32, b: &StoredEpisode) -> Ordering {
    sb.total_cmp(&sa)
        .then(a.server_sequence.cmp(&b.server_sequence))
}

/// One entry per sequence (the index's copy wins: it was found second, and
/// both carry the same episode), best `k` first.
fn merge_top_k(mut candidates: Vec<RecalledMemory>, k: usize) -> Vec<RecalledMemory> {
    candidates.sort_by(|a, b| {
        by_similarity(a.similarity, &a.episode, b.similarity, &b.episode)
            .then(b.indexed.cmp(&a.indexed))
    });
    let mut seen = HashSet::with_capacity(candidates.len());
    candidates.retain(|m| seen.insert(m.episode.server_sequence));
    candidates.truncate(k);
    candidates
}
