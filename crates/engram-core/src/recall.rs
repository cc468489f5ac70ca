//! Where recall merges tiers. A recall fixes its snapshot point first, then
//! takes the fresh tier's episodes up to that point, scans them exactly, and
//! searches the HNSW index restricted to the same point; the two candidate
//! lists are merged into one top-k.
//!
//! Why nothing acked is missed (read-after-ack): an indexing worker inserts an
//! episode into the index *before* removing it from the fresh tier. The
//! fresh tier is read before the index is searched, so an episode is either
//! still in the fresh copy, or was already in the index when the search
//! began. An episode in both is kept once.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::index::distance::dot;
use crate::model::{RecallResult, RecalledMemory, Recency, StoredEpisode, ValidCue};
use crate::postings::Admitted;
use crate::space::Space;

/// Below this many indexed vectors, the index is searched with a breadth
/// equal to its size, which makes the search exhaustive: on small spaces a
/// full scan costs microseconds, and recall equals exact search.
const EXHAUSTIVE_BELOW: usize = 1000;

/// Searches `space` as of now. `ef` is the index's search breadth.
///
/// # Errors
/// [`Error::DimensionMismatch`] when the cue does not fit the space.
pub fn recall(
    space: &Space,
    cue: &ValidCue,
    ef: usize,
    exact_below: Option<usize>,
) -> Result<RecallResult> {
    check_dimension(space, cue)?;
    Ok(recall_at(
        space,
        cue,
        ef,
        exact_below,
        space.visible_sequence(),
    ))
}

fn check_dimension(space: &Space, cue: &ValidCue) -> Result<()> {
    if cue.embedding.len() != space.dimension() {
        return Err(Error::DimensionMismatch {
            space: space.id().to_string(),
            expected: space.dimension(),
            got: cue.embedding.len(),
        });
    }
    Ok(())
}

/// Recall as of a fixed snapshot point: only episodes with a server
/// sequence at or below `snapshot` are candidates.
///
/// `exact_below`: up to how many admitted memories a filtered recall scores
/// exactly (`engine.filter_exact_scan_max`); None: [`exact_scan_below`].
fn recall_at(
    space: &Space,
    cue: &ValidCue,
    ef: usize,
    exact_below: Option<usize>,
    snapshot: u64,
) -> RecallResult {
    match cue.recency {
        None => by_similarity_at(space, cue, ef, exact_below, snapshot),
        Some(r) => by_recency_at(space, cue, r, ef, exact_below, snapshot),
    }
}

/// Most recalls fetched for re-ranking by recency.
const MAX_RECENCY_FETCH: usize = 4096;

/// Recency-weighted recall: the best memories by similarity are fetched,
/// more than `k`, and re-ranked by score = similarity x 0.5^(age /
/// half-life). A memory not fetched is no more similar than the last one
/// fetched, `s`, so its score is at most `max(s, 0)`; once the `k`-th best
/// score reaches that, nothing left out can enter the top `k`. Until then
/// the fetch grows fourfold, up to [`MAX_RECENCY_FETCH`]. So a recent,
/// slightly less similar memory is never cut before the re-ranking.
fn by_recency_at(
    space: &Space,
    cue: &ValidCue,
    recency: Recency,
    ef: usize,
    exact_below: Option<usize>,
    snapshot: u64,
) -> RecallResult {
    let k = cue.max_results;
    let mut fetch = (4 * k).max(k + 32).min(MAX_RECENCY_FETCH);
    loop {
        let wide = ValidCue {
            max_results: fetch,
            recency: None,
            ..cue.clone()
        };
        let mut found = by_similarity_at(space, &wide, ef.max(fetch), exact_below, snapshot);
        let exhausted = found.memories.len() < fetch;
        let last = found.memories.last().map_or(0.0, |m| m.similarity);
        for m in &mut found.memories {
            m.recency_weight = recency.weight(m.episode.when_unix_nanos);
            m.score = recency.score(m.similarity, m.recency_weight);
        }
        found.memories.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.episode.server_sequence.cmp(&b.episode.server_sequence))
        });
        let kth = found
            .memories
            .get(k - 1)
            .map_or(f32::NEG_INFINITY, |m| m.score);
        if exhausted || kth >= last.max(0.0) || fetch == MAX_RECENCY_FETCH {
            found.memories.truncate(k);
            return found;
        }
        fetch = (fetch * 4).min(MAX_RECENCY_FETCH);
    }
}

fn by_similarity_at(
    space: &Space,
    cue: &ValidCue,
    ef: usize,
    exact_below: Option<usize>,
    snapshot: u64,
) -> RecallResult {
    let k = cue.max_results;

    let fresh = space.read().fresh_up_to(snapshot);
    let mut candidates: Vec<RecalledMemory> = Vec::with_capacity(2 * k);
    exact_scan(&fresh, cue, &mut candidates);

    index_candidates(space, cue, ef, exact_below, snapshot, &mut candidates);

    let mut memories = merge_top_k(candidates, k);
    fill_embeddings(space, &mut memories);
    RecallResult {
        memories,
        snapshot_sequence: snapshot,
    }
}

/// The index's candidates, searched *without* the space's lock held: a
/// search takes up to milliseconds, and holding the read lock that long
/// made the commit thread (which applies every acked observation under the
/// write lock) and `mark_indexed` wait behind recalls, so ack latency
/// followed recall load. The lock is taken once, briefly, to resolve the
/// hits to episodes. A hit that turns out forgotten (or outside the cue's
/// window) is dropped there; when that leaves fewer than `k`, the search
/// runs again with the liveness check inside it, each check under its own
/// brief lock. Cues with a time window take that path at once, since a
/// window may exclude most of the space.
///
/// A filter (tags, metadata) is applied inside the search, never after it:
/// the postings say which memories it can admit, and the graph search
/// only accepts those. When they are few ([`exact_scan_below`]), they are
/// scored exactly instead: a graph search would visit about
/// `2·M·ef·N / admitted` nodes to collect `ef` of them, more than scoring
/// them all (docs/design/filters.md).
fn index_candidates(
    space: &Space,
    cue: &ValidCue,
    ef: usize,
    exact_below: Option<usize>,
    snapshot: u64,
    out: &mut Vec<RecalledMemory>,
) {
    let k = cue.max_results;
    let index = space.index();
    let ef = if index.len() <= EXHAUSTIVE_BELOW {
        index.len()
    } else {
        ef
    }
    .max(k);
    let keep = |e: &StoredEpisode| cue.admits(e);
    let resolve = |hits: &[(u64, f32)], out: &mut Vec<RecalledMemory>| -> usize {
        let state = space.read();
        let mut dropped = 0;
        for &(seq, similarity) in hits {
            match state.episode(seq).filter(|e| keep(e)) {
                Some(e) if similarity >= cue.similarity_threshold => out.push(RecalledMemory {
                    confidence: e.encoding_confidence,
                    score: similarity,
                    recency_weight: 1.0,
                    // Filled from the index once the top-k is known.
                    embedding: e.embedding.clone(),
                    episode: e.clone(),
                    similarity,
                    indexed: true,
                }),
                Some(_) => {}
                None => dropped += 1,
            }
        }
        dropped
    };
    let admitted = {
        let state = space.read();
        let admitted = (!cue.filter.is_empty()).then(|| state.admitted(&cue.filter));
        // Memories expired as of the recall's instant and not purged yet
        // (normally few: the purge runs every second) are excluded inside
        // the search like a filter's, never dropped after it.
        without(admitted, state.expired_as_of(cue.as_of_unix_nanos))
    };
    if let Some(Admitted::Only(seqs)) = &admitted {
        let switch =
            exact_below.unwrap_or_else(|| exact_scan_below(index.len(), ef, index.params().m));
        if seqs.len() <= switch {
            let upto = seqs.partition_point(|&s| s <= snapshot);
            let mut seqs = &seqs[..upto];
            // The postings answer tags and metadata (and liveness, as of
            // now); a time window still has to be checked per memory.
            let in_window: Vec<u64>;
            if cue.has_window() {
                let state = space.read();
                in_window = seqs
                    .iter()
                    .copied()
                    .filter(|&s| state.episode(s).is_some_and(|e| keep(e)))
                    .collect();
                seqs = &in_window;
            }
            let mut scored = index.scan(&cue.embedding, seqs, k);
            // Only a memory forgotten since the postings were read can
            // still drop out: a margin over `k` is enough.
            scored.truncate(2 * k + 10);
            resolve(&scored, out);
            return;
        }
    }
    // A filter that admits a small share of the index: the two-hop
    // traversal (see `Hnsw::search_with`).
    let sparse = match &admitted {
        Some(Admitted::Only(seqs)) => seqs.len() * SPARSE_BELOW_SHARE_INV < index.len(),
        _ => false,
    };
    let allowed = Allowed::new(admitted, snapshot);
    if !cue.has_window() {
        let hits = index.search_with(
            &cue.embedding,
            k,
            ef,
            &|seq: u64| allowed.admits(seq),
            sparse,
        );
        let before = out.len();
        let dropped = resolve(&hits, out);
        if dropped == 0 || hits.len() < k {
            return;
        }
        out.truncate(before);
    }
    let live = |seq: u64| allowed.admits(seq) && space.read().episode(seq).is_some_and(|e| keep(e));
    let hits = index.search_with(&cue.embedding, k, ef, &live, sparse);
    resolve(&hits, out);
}

/// `admitted` less the ascending sequences `expired`.
fn without(admitted: Option<Admitted>, expired: Vec<u64>) -> Option<Admitted> {
    if expired.is_empty() {
        return admitted;
    }
    Some(match admitted {
        None => Admitted::AllBut(expired),
        Some(Admitted::Only(mut seqs)) => {
            seqs.retain(|s| expired.binary_search(s).is_err());
            Admitted::Only(seqs)
        }
        Some(Admitted::AllBut(mut seqs)) => {
            seqs.extend(expired);
            seqs.sort_unstable();
            seqs.dedup();
            Admitted::AllBut(seqs)
        }
    })
}

/// A filter admitting less than 1 / this of the index's memories uses the
/// two-hop graph traversal.
const SPARSE_BELOW_SHARE_INV: usize = 5;

/// Up to how many admitted memories a filtered recall scores exactly
/// rather than searching the graph: `sqrt(2·M·ef·N)`, where the exact
/// scan's cost (one similarity per admitted memory, `A`) meets the
/// filtered graph search's (about `2·M` similarities per visited node,
/// `ef·N/A` nodes visited to collect `ef` admitted ones).
pub fn exact_scan_below(indexed: usize, ef: usize, m: usize) -> usize {
    ((2 * m.max(1) * ef.max(1) * indexed) as f64).sqrt() as usize
}

/// The search's acceptance test for a label: at or below the recall's
/// snapshot, and admitted by the filter's postings: a bitmap over
/// sequences when that is small next to the list (each test a lookup),
/// else a binary search of the sorted list.
struct Allowed {
    snapshot: u64,
    set: Option<(SeqSet, bool)>,
}

enum SeqSet {
    Bitmap(Vec<u64>),
    Sorted(Vec<u64>),
}

impl SeqSet {
    fn contains(&self, seq: u64) -> bool {
        match self {
            SeqSet::Bitmap(bits) => bits
                .get((seq / 64) as usize)
                .is_some_and(|w| w & (1 << (seq % 64)) != 0),
            SeqSet::Sorted(seqs) => seqs.binary_search(&seq).is_ok(),
        }
    }
}

impl Allowed {
    fn new(admitted: Option<Admitted>, snapshot: u64) -> Self {
        let set = |mut seqs: Vec<u64>| {
            seqs.truncate(seqs.partition_point(|&s| s <= snapshot));
            let words = (snapshot / 64 + 1) as usize;
            // 8 bytes a word against 8 bytes a listed sequence.
            if words <= 4 * seqs.len() + 1024 {
                let mut bits = vec![0u64; words];
                for s in seqs {
                    bits[(s / 64) as usize] |= 1 << (s % 64);
                }
                SeqSet::Bitmap(bits)
            } else {
                SeqSet::Sorted(seqs)
            }
        };
        let set = match admitted {
            None => None,
            Some(Admitted::Only(seqs)) => Some((set(seqs), true)),
            Some(Admitted::AllBut(seqs)) => Some((set(seqs), false)),
        };
        Allowed { snapshot, set }
    }

    fn admits(&self, seq: u64) -> bool {
        seq <= self.snapshot
            && match &self.set {
                None => true,
                Some((set, only)) => set.contains(seq) == *only,
            }
    }
}

/// One batch of an incremental recall.
#[derive(Clone, Debug)]
pub struct RecallBatch {
    pub memories: Vec<RecalledMemory>,
    /// False on the last batch. An empty result is one empty batch.
    pub more: bool,
    /// The same in every batch of one recall.
    pub snapshot_sequence: u64,
}

/// An incremental, snapshot-isolated recall. The snapshot point
/// is fixed when it is created. The first `next()` searches for just
/// `batch_size` results, so the first batch is ready (and can be sent)
/// before the full top-k is searched for; the second `next()` runs the
/// full search at the same snapshot and the rest follow best first,
/// without repeating what was sent (a batch after the first may therefore
/// hold a result more similar than one sent earlier, when the small search
/// missed it). When the first batch is full but the full search finds
/// nothing new, the last batch is empty. Nothing committed after the snapshot
/// appears in any batch.
pub struct RecallStream {
    space: Arc<Space>,
    cue: ValidCue,
    ef: usize,
    exact_below: Option<usize>,
    batch_size: usize,
    snapshot: u64,
    sent: HashSet<u64>,
    /// The full search's results not yet sent; None until it ran.
    rest: Option<std::vec::IntoIter<RecalledMemory>>,
    /// The first (small) batch went out; the full search comes next.
    first_sent: bool,
    sent_count: usize,
    done: bool,
    /// Time spent producing batches so far: the recall-latency metric is
    /// the server's work, not the time a slow or paused client took to
    /// ask for the next batch.
    busy: std::time::Duration,
}

impl RecallStream {
    /// # Errors
    /// [`Error::DimensionMismatch`].
    pub fn new(
        space: Arc<Space>,
        cue: ValidCue,
        ef: usize,
        exact_below: Option<usize>,
        batch_size: usize,
    ) -> Result<Self> {
        check_dimension(&space, &cue)?;
        let snapshot = space.visible_sequence();
        Ok(RecallStream {
            space,
            batch_size: batch_size.clamp(1, cue.max_results),
            cue,
            ef,
            exact_below,
            snapshot,
            sent: HashSet::new(),
            rest: None,
            first_sent: false,
            sent_count: 0,
            done: false,
            busy: std::time::Duration::ZERO,
        })
    }

    pub fn snapshot_sequence(&self) -> u64 {
        self.snapshot
    }
}

impl Iterator for RecallStream {
    type Item = RecallBatch;

    fn next(&mut self) -> Option<RecallBatch> {
        if self.done {
            return None;
        }
        let started = std::time::Instant::now();
        let k = self.cue.max_results;
        let memories = match &mut self.rest {
            // First batch: a search for just `batch_size` results, sent
            // before the full top-k is searched for.
            None if !self.first_sent && self.batch_size < k => {
                let first_cue = ValidCue {
                    max_results: self.batch_size,
                    ..self.cue.clone()
                };
                let first = recall_at(
                    &self.space,
                    &first_cue,
                    self.ef,
                    self.exact_below,
                    self.snapshot,
                )
                .memories;
                self.first_sent = true;
                self.sent
                    .extend(first.iter().map(|m| m.episode.server_sequence));
                if first.len() < self.batch_size {
                    // Fewer matches than one batch: there is nothing more.
                    self.rest = Some(Vec::new().into_iter());
                }
                first
            }
            // Second call: the full search at the same snapshot, without
            // what the first batch already sent.
            None if self.first_sent => {
                let full = recall_at(
                    &self.space,
                    &self.cue,
                    self.ef,
                    self.exact_below,
                    self.snapshot,
                )
                .memories;
                let remaining: Vec<_> = full
                    .into_iter()
                    .filter(|m| !self.sent.contains(&m.episode.server_sequence))
                    .take(k - self.sent_count)
                    .collect();
                let mut rest = remaining.into_iter();
                let batch: Vec<_> = rest.by_ref().take(self.batch_size).collect();
                self.rest = Some(rest);
                batch
            }
            None => {
                let all = recall_at(
                    &self.space,
                    &self.cue,
                    self.ef,
                    self.exact_below,
                    self.snapshot,
                )
                .memories;
                self.rest = Some(Vec::new().into_iter());
                all
            }
            Some(rest) => rest.by_ref().take(self.batch_size).collect(),
        };
        self.sent_count += memories.len();
        let more = match &self.rest {
            // After the first batch: more unless the space had fewer matches.
            None => self.sent_count < k,
            Some(r) => r.len() > 0 && self.sent_count < k,
        };
        self.done = !more;
        self.busy += started.elapsed();
        if self.done {
            if let Some(m) = self.space.metrics() {
                m.recall_latency.observe(self.busy.as_secs_f64());
            }
        }
        Some(RecallBatch {
            memories,
            more,
            snapshot_sequence: self.snapshot,
        })
    }
}

/// Exact cosine over fresh episodes (all L2-normalised, so a dot product).
fn exact_scan(fresh: &[Arc<StoredEpisode>], cue: &ValidCue, out: &mut Vec<RecalledMemory>) {
    let restricts = cue.restricts();
    let mut scored: Vec<(f32, &Arc<StoredEpisode>)> = fresh
        .iter()
        .filter(|e| {
            if restricts {
                cue.admits(e)
            } else {
                !e.expired_at(cue.as_of_unix_nanos)
            }
        })
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
        score: similarity,
        recency_weight: 1.0,
        embedding: e.embedding.clone(),
        episode: e.clone(),
        similarity,
        indexed: false,
    }));
}

/// Gives each result its vector: an indexed memory's stored episode does
/// not hold it (one copy, in the index), so it is copied from there, for
/// the `k` results only.
fn fill_embeddings(space: &Space, memories: &mut [RecalledMemory]) {
    for m in memories.iter_mut().filter(|m| m.embedding.is_empty()) {
        if let Some(v) = space.embedding_of(&m.episode) {
            m.embedding = v;
        }
    }
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
