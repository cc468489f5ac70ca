//! Concurrent HNSW graph over cosine similarity (Malkov & Yashunin), modelled
//! on nmslib/hnswlib `hnswalg.h`.
//!
//! - Insert: draw a level, descend greedily through the levels above it,
//!   then on each of its levels run a beam search (`ef_construction`), pick
//!   up to `M` neighbours with the diversity heuristic, link to them, and add
//!   a back link in each neighbour (re-running the heuristic when the
//!   neighbour's list is full). The beam search runs on the `i8` codes (see
//!   below) and its `ef_construction` results are re-scored exactly; the
//!   heuristic and pruning use exact `f32` vectors. Two additions to
//!   hnswlib: all of a node's lists are written before any back link makes
//!   it reachable, and pruning never removes a node's last level-0 in-link
//!   (hnswlib can orphan nodes that way).
//! - Search: greedy descent to level 0, then a beam search of width
//!   `max(ef, k)` on the `i8` codes (a quarter of the memory traffic of
//!   `f32`), then the best `2k` (at least `k + 10`) are re-scored exactly,
//!   so returned similarities are exact. Filtered-out nodes are traversed
//!   but not returned.
//!
//! Concurrency (see also `storage.rs`): searches take no lock at all. An
//! insert takes the label-table mutex once (to reserve its id), the
//! `top` mutex briefly (or for its whole duration when it raises the top
//! level, as hnswlib does), and one node lock at a time while it writes a
//! link list, so inserts cannot deadlock. A read-write gate is held shared by
//! every insert and exclusively by `write_to` while it copies the links.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::distance::dot_i8;
use super::labels::LabelTable;
use super::storage::{NodeStore, VectorPlacement, MAX_NODES};
use super::visited::{Keyed, Scratch, ScratchPool};

/// Links per node on upper levels; level 0 allows twice as many. hnswlib's
/// default and the setting of the side-by-side benchmark.
pub const DEFAULT_M: usize = 16;
/// Beam width while inserting; the setting of the side-by-side benchmark.
pub const DEFAULT_EF_CONSTRUCTION: usize = 100;
/// Beam width for searches: the smallest value that gives recall@10 >= 0.95
/// on both minilm-dev and the 100K x 768-d clustered set. 32 is enough on
/// minilm-dev (0.96) but gives 0.94-0.97 on the clustered set depending on
/// the level draw (0.94 with the default seed); 40 gives 0.96-0.98 there
/// (see `docs/design/index.md`).
pub const DEFAULT_EF_SEARCH: usize = 40;
/// Seed for level assignment; fixed so that the same inserts build the same
/// level structure on every run.
pub const DEFAULT_SEED: u64 = 0x656e_6772_616d_0001;

/// Levels are stored in a byte; 2^-31 odds per node of reaching it at M=2.
pub(super) const MAX_LEVEL: usize = 31;
pub(super) const NO_ENTRY: u64 = u64::MAX;

/// Cache lines of each `f32` vector requested before a batch of exact
/// re-scoring (the hardware prefetcher streams the rest of the row).
const EXACT_PREFETCH_LINES: usize = 8;

/// A search re-scores its approximate best `k + max(k, RERANK_MIN_EXTRA)`
/// exactly; recall@10 on both benchmark sets is the same as re-scoring all
/// `ef` (measured), at a fraction of the cost.
const RERANK_MIN_EXTRA: usize = 10;

/// Approximate similarity on the `i8` code rows: searches and inserts
/// traverse with it (a quarter of the memory traffic of `f32`) and re-score
/// what they keep exactly.
pub(super) struct Quantized<'a> {
    pub store: &'a NodeStore,
    pub q: &'a [f32],
}

impl Quantized<'_> {
    #[inline(always)]
    fn sim(&self, id: u32) -> f32 {
        let c = self.store.code(id);
        dot_i8(self.q, c.codes) * c.scale
    }
    /// Starts loading what `sim(id)` will read.
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        self.store.prefetch_code(id);
    }
}

/// Up to this many labels, [`Hnsw::scan`] scores every one exactly
/// (microseconds); beyond, it preselects on the 8-bit codes.
const EXACT_SCAN_ALL: usize = 1000;
/// How far ahead [`Hnsw::scan`] asks for the codes it will read.
const SCAN_PREFETCH_AHEAD: usize = 8;

/// Build and search parameters of an [`Hnsw`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node on upper levels (level 0: `2 * m`). At least 2.
    pub m: usize,
    /// Beam width while inserting.
    pub ef_construction: usize,
    /// Default beam width for searches (callers pass it to [`Hnsw::search`]).
    pub ef_search: usize,
    /// Seed of the level assignment.
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: DEFAULT_M,
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            ef_search: DEFAULT_EF_SEARCH,
            seed: DEFAULT_SEED,
        }
    }
}

/// Concurrent HNSW over cosine similarity. Vectors are expected to be
/// L2-normalised by the caller, so similarity is the inner product.
///
/// `Send + Sync`; every method takes `&self`, and inserts and searches run
/// concurrently from any number of threads. The index grows without a
/// preset capacity. Deleted memories are hidden with the search filter at
/// once and their nodes deleted in batches by [`Hnsw::reclaim`], whose
/// slots later inserts reuse.
pub struct Hnsw {
    pub(super) dim: usize,
    pub(super) params: HnswParams,
    level_mult: f64,
    pub(super) store: NodeStore,
    /// label -> node id. A mutex (not a concurrent map) because it is taken
    /// once per insert, for a check-and-reserve that must be atomic, and
    /// never on the search path.
    pub(super) label_ids: Mutex<LabelTable>,
    /// Node ids handed out (`0..allocated`); their segments exist.
    pub(super) allocated: AtomicUsize,
    /// Inserts completed.
    pub(super) len: AtomicUsize,
    /// Entry point packed as `level << 32 | id`, or `NO_ENTRY`.
    pub(super) entry: AtomicU64,
    /// Serialises changes of the entry point / top level.
    pub(super) top: Mutex<()>,
    pub(super) pool: ScratchPool,
    /// Shared by inserts, exclusive while `write_to` takes its snapshot.
    pub(super) gate: RwLock<()>,
    /// Inserts that panicked after their node was reserved: label -> node.
    /// The node's vector is written, its links possibly only in part; it is
    /// not ready (not counted, not in `labels`). Inserting the label again
    /// finishes it, so a panic strands nothing (see [`Hnsw::insert`]).
    pub(super) abandoned: Mutex<HashMap<u64, u32>>,
    /// Fault injection (tests and `--fault-injection`): see
    /// [`Hnsw::inject_insert_panics`].
    insert_faults: Mutex<InsertFaults>,
    insert_faults_armed: std::sync::atomic::AtomicBool,
    /// Fault injection: every search sleeps this long (ms) before it
    /// starts, and counts itself in `searches_delayed`.
    search_delay_ms: AtomicU64,
    searches_delayed: AtomicU64,
    /// Lock-free readers (searches, scans, snapshot writers), registered
    /// so that [`Hnsw::reclaim`] knows when no one reads a deleted node.
    pub(super) readers: super::reclaim::Readers,
    /// Deleted nodes' ids, and those free for reuse.
    pub(super) reclaimed: Mutex<super::reclaim::Reclaimed>,
    /// One reclaim at a time.
    pub(super) reclaim_lock: Mutex<()>,
    /// Fault injection: reclaims still to panic ([`Hnsw::inject_reclaim_panics`]).
    pub(super) reclaim_panics: AtomicU32,
}

/// Panics to raise halfway through inserts (after the node's own links are
/// written, before its back links are): the worst place, where the node is
/// reachable from nowhere yet but already points into the graph.
#[derive(Debug, Default)]
struct InsertFaults {
    /// The next this many inserts panic.
    next: u32,
    /// Every insert of these labels panics (a poison task).
    poison: std::collections::HashSet<u64>,
}

/// Records the node as abandoned if the insert unwinds before `done`.
struct AbandonOnPanic<'a> {
    h: &'a Hnsw,
    label: u64,
    id: u32,
    done: bool,
}

impl Drop for AbandonOnPanic<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.h.abandoned.lock().insert(self.label, self.id);
        }
    }
}

impl fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hnsw")
            .field("dim", &self.dim)
            .field("len", &self.len())
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

#[inline]
pub(super) fn pack_entry(id: u32, level: usize) -> u64 {
    ((level as u64) << 32) | u64::from(id)
}

#[inline]
pub(super) fn unpack_entry(e: u64) -> Option<(u32, usize)> {
    (e != NO_ENTRY).then_some((e as u32, (e >> 32) as usize))
}

/// Number of ids in a link list (word 0), clamped to the list's capacity so
/// a torn or corrupt count can never index out of bounds.
#[inline(always)]
pub(super) fn link_count(list: &[AtomicU32]) -> usize {
    match list.first() {
        Some(c) => (c.load(Ordering::Acquire) as usize).min(list.len() - 1),
        None => 0,
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn by_similarity_desc(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Hnsw {
    /// An empty index for vectors of `dim` dimensions.
    ///
    /// # Panics
    /// If `dim == 0` or `params.m < 2`.
    pub fn new(dim: usize, params: HnswParams) -> Self {
        Self::with_placement(dim, params, &VectorPlacement::Memory)
            .expect("an index with vectors in RAM creates no file")
    }

    /// An empty index keeping its exact vectors where `placement` says.
    ///
    /// # Errors
    /// Creating the vector file of [`VectorPlacement::Disk`].
    ///
    /// # Panics
    /// If `dim == 0` or `params.m < 2`.
    pub fn with_placement(
        dim: usize,
        params: HnswParams,
        placement: &VectorPlacement,
    ) -> std::io::Result<Self> {
        assert!(dim > 0, "HNSW dimension must be positive");
        assert!(params.m >= 2, "HNSW m must be at least 2, got {}", params.m);
        Ok(Hnsw {
            dim,
            level_mult: 1.0 / (params.m as f64).ln(),
            store: NodeStore::new(dim, 2 * params.m, params.m, placement)?,
            params,
            label_ids: Mutex::new(LabelTable::default()),
            allocated: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            entry: AtomicU64::new(NO_ENTRY),
            top: Mutex::new(()),
            pool: ScratchPool::default(),
            gate: RwLock::new(()),
            abandoned: Mutex::new(HashMap::new()),
            insert_faults: Mutex::new(InsertFaults::default()),
            insert_faults_armed: std::sync::atomic::AtomicBool::new(false),
            search_delay_ms: AtomicU64::new(0),
            searches_delayed: AtomicU64::new(0),
            readers: Default::default(),
            reclaimed: Default::default(),
            reclaim_lock: Mutex::new(()),
            reclaim_panics: AtomicU32::new(0),
        })
    }

    /// Where the exact vectors are kept.
    pub fn placement(&self) -> VectorPlacement {
        self.store.placement()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn params(&self) -> &HnswParams {
        &self.params
    }

    /// Number of completed inserts.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts `vector` under `label`. Returns false, and changes nothing, if
    /// the label is already in the graph (or being inserted by another
    /// thread).
    ///
    /// Panic-safe: a panic while the node is being linked leaves it
    /// *abandoned* (reserved, vector written, links possibly in part; a
    /// search that reaches it sees a valid vector, and nothing is counted
    /// or snapshotted as complete). Inserting the same label again finishes
    /// the node and returns true, so a retried task ends with
    /// its label in the graph, never half in it.
    ///
    /// # Panics
    /// If `vector.len() != self.dim()`, or past 4 billion nodes.
    pub fn insert(&self, label: u64, vector: &[f32]) -> bool {
        assert_eq!(
            vector.len(),
            self.dim,
            "vector has {} dimensions, index has {}",
            vector.len(),
            self.dim
        );
        let _gate = self.gate.read();
        let id = {
            let mut ids = self.label_ids.lock();
            if ids.contains(label) {
                drop(ids);
                // Claimed by one thread only: removed under the lock.
                let Some(id) = self.abandoned.lock().remove(&label) else {
                    return false;
                };
                self.finish(label, id, Some(vector));
                return true;
            }
            // A slot a reclaim freed, else a new one.
            let reused = {
                let mut r = self.reclaimed.lock();
                let id = r.free.pop();
                if let Some(id) = id {
                    r.out.remove(&id);
                }
                id
            };
            let id = match reused {
                Some(id) => id,
                None => {
                    let id = self.allocated.load(Ordering::Relaxed);
                    assert!((id as u64) < MAX_NODES, "HNSW index is full ({id} nodes)");
                    let id = id as u32;
                    self.store.ensure(id);
                    self.allocated.store(id as usize + 1, Ordering::Release);
                    id
                }
            };
            ids.insert(label, id);
            id
        };
        let level = self.random_level(label);
        // SAFETY: `id` was reserved just above, once, and is not yet linked
        // from anywhere. `init` only quantizes and copies (its one failure,
        // an allocation, aborts the process), so the node is abandoned only
        // after its vector is complete.
        unsafe { self.store.init(id, label, level, vector) };
        let mut guard = AbandonOnPanic {
            h: self,
            label,
            id,
            done: false,
        };
        self.write_vector(id, vector);
        self.connect(id, level, vector);
        guard.done = true;
        self.store.set_ready(id);
        self.len.fetch_add(1, Ordering::Release);
        true
    }

    /// Writes the node's vector to the vector file (compact placement), or
    /// panics, before the node is linked: a failed write abandons the
    /// insert with the node unreachable, and a retry writes it again.
    fn write_vector(&self, id: u32, vector: &[f32]) {
        if let Err(e) = self.store.write_vector(id, vector) {
            panic!(
                "writing the vector of label {} to the index's vector file failed: {e}",
                self.store.label(id)
            );
        }
    }

    /// Links an abandoned node again (its own lists are merged with what is
    /// there, back links already added are skipped) and makes it ready. A
    /// panic abandons it again. `vector`: the node's vector, from a retried
    /// insert (written again to the vector file, whose write may be what
    /// failed); `None` reads the stored one.
    fn finish(&self, label: u64, id: u32, vector: Option<&[f32]>) {
        let mut guard = AbandonOnPanic {
            h: self,
            label,
            id,
            done: false,
        };
        let stored;
        let q = match vector {
            Some(v) => {
                self.write_vector(id, v);
                v
            }
            None => {
                stored = self.store.vector_owned(id);
                &stored[..]
            }
        };
        self.connect(id, self.store.level(id), q);
        guard.done = true;
        self.store.set_ready(id);
        self.len.fetch_add(1, Ordering::Release);
    }

    /// Finishes every abandoned node it can (a node whose insert panics
    /// again stays abandoned); returns how many stay abandoned. Run before
    /// a snapshot, so that one normally holds no incomplete node.
    pub fn finish_abandoned(&self) -> usize {
        let pending: Vec<u64> = self.abandoned.lock().keys().copied().collect();
        for label in pending {
            let _gate = self.gate.read();
            let id = {
                let mut abandoned = self.abandoned.lock();
                match abandoned.get(&label) {
                    // Its vector write failed: only a retried insert, which
                    // brings the vector, can finish it.
                    Some(&id) if self.store.vector_missing(id) => continue,
                    Some(&id) => {
                        abandoned.remove(&label);
                        id
                    }
                    None => continue,
                }
            };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.finish(label, id, None);
            }));
        }
        self.abandoned.lock().len()
    }

    /// Retires every node whose label is above `max_label`: it keeps its
    /// place in the graph (other nodes route through it) under a label no
    /// episode can have (`u64::MAX - id`, above any sequence, so a search
    /// filtered to sequences never returns it), and its old label is free.
    /// Returns how many. For recovery only, before the index is shared: a
    /// snapshot's index is written after its episodes were captured, so it
    /// can hold sequences whose WAL records a power loss then took; a new
    /// episode reusing such a sequence must not find it "already indexed"
    /// (with the old vector under the new id).
    pub fn retire_labels_above(&mut self, max_label: u64) -> usize {
        let n = self.allocated.load(Ordering::Acquire) as u32;
        let ids = self.label_ids.get_mut();
        let abandoned = self.abandoned.get_mut();
        let mut retired = 0;
        for id in 0..n {
            let label = self.store.label(id);
            if label <= max_label || label == u64::MAX - u64::from(id) {
                continue;
            }
            let dead = u64::MAX - u64::from(id);
            // SAFETY: `&mut self`: the index is not shared.
            unsafe { self.store.set_label(id, dead) };
            ids.remove(label);
            ids.insert(dead, id);
            if abandoned.remove(&label).is_some() {
                abandoned.insert(dead, id);
            }
            retired += 1;
        }
        retired
    }

    /// Labels whose insert panicked and has not been finished.
    pub fn abandoned_labels(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.abandoned.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Fault injection: the next `n` inserts panic halfway through linking
    /// (own links written, back links not yet).
    pub fn inject_insert_panics(&self, n: u32) {
        self.insert_faults.lock().next += n;
        self.insert_faults_armed.store(true, Ordering::Release);
    }

    /// Fault injection: every insert of `label` panics halfway through
    /// linking, like a task that always fails.
    pub fn inject_poison_label(&self, label: u64) {
        self.insert_faults.lock().poison.insert(label);
        self.insert_faults_armed.store(true, Ordering::Release);
    }

    /// Fault injection: the next `n` writes to the vector file (compact
    /// placement) fail, as on a full disk.
    pub fn inject_vector_write_failures(&self, n: u32) {
        self.store.inject_vector_write_failures(n);
    }

    /// Fault injection: the next `n` reads from the vector file (compact
    /// placement) fail, as on a disk error.
    pub fn inject_vector_read_failures(&self, n: u32) {
        self.store.inject_vector_read_failures(n);
    }

    /// Reads from the vector file that failed so far; each search that met
    /// one re-scored that node on its code row instead.
    pub fn vector_read_errors(&self) -> u64 {
        self.store.vector_read_errors()
    }

    /// Fault injection: every search sleeps `delay` first (zero turns it
    /// off), to hold a recall inside its index search.
    pub fn inject_search_delay(&self, delay: std::time::Duration) {
        self.search_delay_ms
            .store(delay.as_millis() as u64, Ordering::Release);
    }

    /// Searches that have entered the injected delay so far.
    pub fn searches_delayed(&self) -> u64 {
        self.searches_delayed.load(Ordering::Acquire)
    }

    /// The injected panic inside an insert, if one is due.
    fn insert_fault_point(&self, id: u32) {
        if !self.insert_faults_armed.load(Ordering::Acquire) {
            return;
        }
        let label = self.store.label(id);
        let mut f = self.insert_faults.lock();
        let poisoned = f.poison.contains(&label);
        if poisoned || f.next > 0 {
            if !poisoned {
                f.next -= 1;
            }
            drop(f);
            panic!("injected fault: panic inside the insert of label {label}");
        }
    }

    /// True if `label` is in the graph: its insert completed (not one in
    /// progress, nor one abandoned by a panic, which still has to be
    /// finished by inserting the label again).
    pub fn contains(&self, label: u64) -> bool {
        let id = self.label_ids.lock().get(label);
        id.is_some_and(|id| self.store.is_ready(id))
    }

    /// A copy of the exact vector stored under `label`, if its insert
    /// completed.
    pub fn vector(&self, label: u64) -> Option<Vec<f32>> {
        let _reading = self.readers.enter();
        let id = self.label_ids.lock().get(label)?;
        self.store
            .is_ready(id)
            .then(|| self.store.vector_owned(id).into_owned())
    }

    /// The best of `labels` for `query`, scanned without the graph (the
    /// exact scan of a selective filter's memories): every label's
    /// similarity on the 8-bit codes (a quarter of the memory an `f32`
    /// vector reads), then the best `k` plus a margin re-scored exactly;
    /// with few labels, all of them exactly. Returns at least the best
    /// `k` (when there are that many) as (label, exact similarity), best
    /// first, ties by smaller label. Labels not (or not yet) in the graph
    /// are skipped.
    ///
    /// # Panics
    /// If `query.len() != self.dim()`.
    pub fn scan(&self, query: &[f32], labels: &[u64], k: usize) -> Vec<(u64, f32)> {
        assert_eq!(query.len(), self.dim, "query dimension");
        let _reading = self.readers.enter();
        let ids: Vec<u32> = {
            let table = self.label_ids.lock();
            labels.iter().filter_map(|&l| table.get(l)).collect()
        };
        let keep = k + k.max(RERANK_MIN_EXTRA);
        let mut ids: Vec<u32> = ids
            .into_iter()
            .filter(|&id| self.store.is_ready(id))
            .collect();
        if ids.len() > EXACT_SCAN_ALL.max(keep) {
            // The codes are read ahead of use: the ids are scattered, so
            // the hardware cannot guess them.
            let metric = Quantized {
                store: &self.store,
                q: query,
            };
            let mut approx: Vec<(f32, u32)> = Vec::with_capacity(ids.len());
            for (i, &id) in ids.iter().enumerate() {
                if let Some(&ahead) = ids.get(i + SCAN_PREFETCH_AHEAD) {
                    metric.prefetch(ahead);
                }
                approx.push((metric.sim(id), id));
            }
            approx.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
            approx.truncate(keep);
            ids = approx.into_iter().map(|(_, id)| id).collect();
        }
        for &id in &ids {
            self.store.prefetch_vector(id, EXACT_PREFETCH_LINES);
        }
        let mut out: Vec<(u64, f32)> = ids
            .iter()
            .map(|&id| (self.store.label(id), self.store.sim_exact(query, id)))
            .collect();
        out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Top-`k` labels by cosine similarity among those for which
    /// `filter(label)` is true, as (label, similarity) sorted by similarity
    /// descending, ties by smaller label. The beam width is `max(ef, k)`;
    /// pass `self.params().ef_search` for the default. Similarities are
    /// exact (the traversal is on quantized codes, the result re-scored).
    ///
    /// Filtered-out nodes are still traversed (hnswlib-style), so a filter
    /// that excludes few labels costs little; one that excludes most makes
    /// the search explore until it has `ef` accepted nodes or runs out.
    ///
    /// # Panics
    /// If `query.len() != self.dim()`.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &dyn Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        self.search_with(query, k, ef, filter, false)
    }

    /// [`Hnsw::search`] for a filter that admits few labels (`sparse`):
    /// at level 0, a neighbour the filter refuses is not scored but used
    /// as a bridge to its own neighbours, and those the filter admits are
    /// scored (two hops, as in ACORN-1). The search then moves through
    /// admitted nodes only, scoring a fraction of what the one-hop
    /// traversal scores, while the bridges keep the admitted subgraph
    /// connected. Without `sparse`, the same as [`Hnsw::search`].
    ///
    /// # Panics
    /// If `query.len() != self.dim()`.
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &dyn Fn(u64) -> bool,
        sparse: bool,
    ) -> Vec<(u64, f32)> {
        assert_eq!(
            query.len(),
            self.dim,
            "query has {} dimensions, index has {}",
            query.len(),
            self.dim
        );
        if k == 0 {
            return Vec::new();
        }
        let delay = self.search_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            self.searches_delayed.fetch_add(1, Ordering::AcqRel);
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        let _reading = self.readers.enter();
        let metric = Quantized {
            store: &self.store,
            q: query,
        };
        let Some(start) = self.descend(&metric, 0) else {
            return Vec::new();
        };
        let mut s = self.pool.get();
        let accept = |id| filter(self.store.label(id));
        if sparse {
            self.search_layer::<true, _>(&metric, start, ef.max(k), 0, accept, &mut s);
        } else {
            self.search_layer::<false, _>(&metric, start, ef.max(k), 0, accept, &mut s);
        }
        // Re-rank the approximate best with exact similarities.
        let Scratch { results, pairs, .. } = &mut *s;
        pairs.clear();
        pairs.extend(results.drain().map(|r| (-r.key, r.id)));
        pairs.sort_unstable_by(by_similarity_desc);
        pairs.truncate(k + k.max(RERANK_MIN_EXTRA));
        for &(_, id) in pairs.iter() {
            self.store.prefetch_vector(id, EXACT_PREFETCH_LINES);
        }
        let mut out: Vec<(u64, f32)> = pairs
            .iter()
            .map(|&(_, id)| (self.store.label(id), self.store.sim_exact(query, id)))
            .collect();
        out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        out
    }

    /// Labels of all completed inserts, in insertion order.
    pub fn labels(&self) -> Vec<u64> {
        let _reading = self.readers.enter();
        let n = self.allocated.load(Ordering::Acquire);
        (0..n as u32)
            .filter(|&id| self.store.is_ready(id))
            .map(|id| self.store.label(id))
            .collect()
    }

    /// Approximate heap bytes by kind: (exact vectors, code rows, the rest:
    /// links, labels, locks, the label table and pooled search scratch).
    pub fn memory_by_kind(&self) -> (usize, usize, usize) {
        let n = self.allocated.load(Ordering::Acquire);
        let (vectors, codes, links) = self.store.memory_by_kind(n);
        let table = self.label_ids.lock().bytes();
        (
            vectors,
            codes,
            links + std::mem::size_of::<Self>() + table + self.pool.bytes(),
        )
    }

    /// Bytes of exact vectors kept on disk (the compact placement's vector
    /// file; 0 with vectors in RAM).
    pub fn disk_bytes(&self) -> usize {
        self.store
            .disk_bytes(self.allocated.load(Ordering::Acquire))
    }

    /// Approximate heap bytes used: vectors, links, labels, locks, the label
    /// table and pooled search scratch.
    pub fn memory_bytes(&self) -> usize {
        let n = self.allocated.load(Ordering::Acquire);
        let table = self.label_ids.lock().bytes();
        std::mem::size_of::<Self>() + self.store.memory_bytes(n) + table + self.pool.bytes()
    }

    /// Level of a new node: floor(-ln(U) / ln(M)), with U derived from the
    /// label and the seed, so levels do not depend on thread interleaving.
    fn random_level(&self, label: u64) -> usize {
        let x = splitmix64(self.params.seed ^ splitmix64(label));
        let u = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.level_mult) as usize).min(MAX_LEVEL)
    }

    /// Greedy descent from the entry point down to `level + 1`; returns the
    /// node to start a beam search on `level` from.
    pub(super) fn descend(&self, m: &Quantized, level: usize) -> Option<u32> {
        let (mut cur, top) = unpack_entry(self.entry.load(Ordering::Acquire))?;
        let mut cur_sim = m.sim(cur);
        for l in (level + 1..=top).rev() {
            loop {
                let list = self.store.links(cur, l);
                let mut changed = false;
                for w in &list[1..=link_count(list)] {
                    let n = w.load(Ordering::Acquire);
                    let sim = m.sim(n);
                    if sim > cur_sim {
                        cur_sim = sim;
                        cur = n;
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        Some(cur)
    }

    /// Beam search of width `ef` on `level` from `entry`. Leaves the accepted
    /// nodes found (at most `ef`) in `s.results` with `key = -similarity`.
    ///
    /// Memory latency dominates (every scored node is a random access), so
    /// all unvisited neighbours of a node are prefetched before the first is
    /// scored, and the next candidate's level-0 list while the current one's
    /// neighbours are scored.
    ///
    /// `TWO_HOP` (for filters that admit few nodes, see
    /// [`Hnsw::search_with`]): a neighbour `accept` refuses is not scored
    /// but used as a bridge to its own neighbours, of which the admitted
    /// ones are scored. The entry is expanded either way: it is where the
    /// upper levels led.
    fn search_layer<const TWO_HOP: bool, F: Fn(u32) -> bool>(
        &self,
        m: &Quantized,
        entry: u32,
        ef: usize,
        level: usize,
        accept: F,
        s: &mut Scratch,
    ) {
        s.begin(self.allocated.load(Ordering::Acquire));
        s.candidates.clear();
        s.results.clear();
        let esim = m.sim(entry);
        s.visit(entry);
        // Similarity of the worst result; anything below it cannot enter a
        // full result set.
        let mut lower = f32::NEG_INFINITY;
        if accept(entry) {
            s.results.push(Keyed {
                key: -esim,
                id: entry,
            });
            lower = esim;
        }
        s.candidates.push(Keyed {
            key: esim,
            id: entry,
        });
        while let Some(&c) = s.candidates.peek() {
            if c.key < lower && s.results.len() >= ef {
                break;
            }
            s.candidates.pop();
            let list = self.store.links(c.id, level);
            s.neighbours.clear();
            for w in &list[1..=link_count(list)] {
                let n = w.load(Ordering::Acquire);
                if !s.visit(n) {
                    continue;
                }
                if !TWO_HOP || accept(n) {
                    s.neighbours.push(n);
                    m.prefetch(n);
                    continue;
                }
                let bridge = self.store.links(n, level);
                for w2 in &bridge[1..=link_count(bridge)] {
                    let n2 = w2.load(Ordering::Acquire);
                    if accept(n2) && s.visit(n2) {
                        s.neighbours.push(n2);
                        m.prefetch(n2);
                    }
                }
            }
            for j in 0..s.neighbours.len() {
                let n = s.neighbours[j];
                let sim = m.sim(n);
                if s.results.len() < ef || sim > lower {
                    s.candidates.push(Keyed { key: sim, id: n });
                    if accept(n) {
                        s.results.push(Keyed { key: -sim, id: n });
                        if s.results.len() > ef {
                            s.results.pop();
                        }
                    }
                    if let Some(w) = s.results.peek() {
                        lower = -w.key;
                    }
                }
            }
            if level == 0 {
                if let Some(next) = s.candidates.peek() {
                    self.store.prefetch_links0(next.id);
                }
            }
        }
    }

    /// hnswlib's `getNeighborsByHeuristic2`: walk `pairs` (sorted by
    /// similarity to the base, best first) and keep a candidate only if it
    /// is closer to the base than to every candidate already kept, up to
    /// `m`. Fewer than `m` candidates are all kept.
    pub(super) fn select_neighbours(&self, pairs: &[(f32, u32)], m: usize, out: &mut Vec<u32>) {
        out.clear();
        if pairs.len() < m {
            out.extend(pairs.iter().map(|p| p.1));
            return;
        }
        for &(sim, c) in pairs {
            if out.len() >= m {
                break;
            }
            if out.iter().all(|&kept| self.store.sim_nodes(kept, c) <= sim) {
                out.push(c);
            }
        }
    }

    /// Links the initialised node `id` into the graph on levels
    /// `0..=level`, and makes it the entry point if it is the first node or
    /// raises the top level. `q` is the node's vector.
    fn connect(&self, id: u32, level: usize, q: &[f32]) {
        let top_guard = self.top.lock();
        let Some((entry, top)) = unpack_entry(self.entry.load(Ordering::Acquire)) else {
            self.entry.store(pack_entry(id, level), Ordering::Release);
            return;
        };
        // Raising the top level: keep other inserts from reading the entry
        // point until this node is linked (hnswlib does the same).
        let top_guard = (level > top).then_some(top_guard);
        let metric = Quantized {
            store: &self.store,
            q,
        };
        let mut cur = self.descend(&metric, level).unwrap_or(entry);
        let mut s = self.pool.get();
        // Choose the neighbours on every level first, then publish: the node
        // becomes reachable (through a back link) only once all its own
        // lists are written, so no search ever reaches it and finds it
        // without links below (hnswlib gets the same effect by holding the
        // new node's lock, which makes those searches wait).
        let levels = level.min(top);
        let mut chosen: Vec<Vec<u32>> = vec![Vec::new(); levels + 1];
        for l in (0..=levels).rev() {
            self.search_layer::<false, _>(
                &metric,
                cur,
                self.params.ef_construction,
                l,
                |n| n != id,
                &mut s,
            );
            let Scratch {
                results,
                pairs,
                selected,
                ..
            } = &mut *s;
            // Traversal was on codes; neighbour selection is exact (on
            // codes again in the compact placement: see `sim_build`).
            pairs.clear();
            pairs.extend(results.drain().map(|r| (0.0, r.id)));
            for &(_, n) in pairs.iter() {
                self.store.prefetch_vector(n, EXACT_PREFETCH_LINES);
            }
            for p in pairs.iter_mut() {
                p.0 = self.store.sim_build(q, p.1);
            }
            pairs.sort_unstable_by(by_similarity_desc);
            self.select_neighbours(pairs, self.params.m, selected);
            chosen[l].extend_from_slice(selected);
            if let Some(&closest) = chosen[l].first() {
                cur = closest;
            }
        }
        for (l, ids) in chosen.iter().enumerate() {
            self.set_own_links(id, l, ids);
        }
        self.insert_fault_point(id);
        for (l, ids) in chosen.iter().enumerate().rev() {
            for &n in ids {
                self.add_link(n, id, l, &mut s);
            }
        }
        if let Some(&closest) = chosen[0].first() {
            if self.store.in_links(id).load(Ordering::Acquire) == 0 {
                // Every neighbour pruned the new node away; without an
                // in-link it could never be found.
                self.force_link(closest, id);
            }
        }
        if let Some(_g) = top_guard {
            self.entry.store(pack_entry(id, level), Ordering::Release);
        }
    }

    /// Writes `id`'s own list on `level`: `chosen`, after any links already
    /// there (kept because they are counted as in-links; `connect` publishes
    /// the node only after this, so normally there are none).
    fn set_own_links(&self, id: u32, level: usize, chosen: &[u32]) {
        let _g = self.store.lock(id);
        let list = self.store.links(id, level);
        let cap = list.len() - 1;
        let mut merged: Vec<u32> = list[1..=link_count(list)]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        for &n in chosen {
            if merged.len() >= cap {
                break;
            }
            if !merged.contains(&n) {
                merged.push(n);
                if level == 0 {
                    self.store.in_links(n).fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        Self::write_list(list, &merged);
    }

    pub(super) fn write_list(list: &[AtomicU32], ids: &[u32]) {
        for (w, &n) in list[1..].iter().zip(ids) {
            w.store(n, Ordering::Release);
        }
        list[0].store(ids.len() as u32, Ordering::Release);
    }

    /// Takes one level-0 in-link away from `x` unless it is its last one.
    fn release_in_link(&self, x: u32) -> bool {
        self.store
            .in_links(x)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d > 1).then(|| d - 1)
            })
            .is_ok()
    }

    /// Adds the back link `n -> id` on `level`; when `n`'s list is full,
    /// re-selects its neighbours from the old list plus `id` with the
    /// heuristic. On level 0 a pruned neighbour whose only in-link this was
    /// is kept, so pruning never makes a node unreachable.
    fn add_link(&self, n: u32, id: u32, level: usize, s: &mut Scratch) {
        let _g = self.store.lock(n);
        let list = self.store.links(n, level);
        if list.is_empty() {
            return;
        }
        let cap = list.len() - 1;
        let count = link_count(list);
        if list[1..=count]
            .iter()
            .any(|w| w.load(Ordering::Relaxed) == id)
        {
            return;
        }
        if count < cap {
            list[count + 1].store(id, Ordering::Release);
            list[0].store(count as u32 + 1, Ordering::Release);
            if level == 0 {
                self.store.in_links(id).fetch_add(1, Ordering::AcqRel);
            }
            return;
        }
        let Scratch {
            pairs, selected, ..
        } = s;
        pairs.clear();
        pairs.push((self.store.sim_nodes(n, id), id));
        for w in &list[1..=count] {
            let x = w.load(Ordering::Relaxed);
            pairs.push((self.store.sim_nodes(n, x), x));
        }
        pairs.sort_unstable_by(by_similarity_desc);
        self.select_neighbours(pairs, cap, selected);
        if level == 0 {
            // Old links the heuristic dropped (collected first: the loop
            // below edits `selected`).
            pairs.clear();
            pairs.extend(
                list[1..=count]
                    .iter()
                    .map(|w| w.load(Ordering::Relaxed))
                    .filter(|x| !selected.contains(x))
                    .map(|x| (0.0, x)),
            );
            for &(_, x) in pairs.iter() {
                if self.release_in_link(x) {
                    continue;
                }
                // `x` would lose its last in-link: keep it, in a free slot or
                // instead of the weakest kept link that can be given up.
                if selected.len() < cap {
                    selected.push(x);
                } else if let Some(pos) = selected
                    .iter()
                    .rposition(|&y| y == id || (y != x && self.release_in_link(y)))
                {
                    selected[pos] = x;
                } else {
                    self.store.in_links(x).fetch_sub(1, Ordering::AcqRel);
                }
            }
            if selected.contains(&id) {
                self.store.in_links(id).fetch_add(1, Ordering::AcqRel);
            }
        }
        Self::write_list(list, selected);
    }

    /// Puts `id` into `n`'s level-0 list even if the heuristic would not,
    /// replacing the least similar link that is not its target's last.
    fn force_link(&self, n: u32, id: u32) {
        let _g = self.store.lock(n);
        let list = self.store.links(n, 0);
        let cap = list.len() - 1;
        let mut ids: Vec<u32> = list[1..=link_count(list)]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        if ids.contains(&id) {
            return;
        }
        if ids.len() < cap {
            ids.push(id);
        } else {
            let mut order: Vec<(f32, usize)> = ids
                .iter()
                .enumerate()
                .map(|(i, &x)| (self.store.sim_nodes(n, x), i))
                .collect();
            order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            let Some(&(_, pos)) = order.iter().find(|&&(_, i)| self.release_in_link(ids[i])) else {
                return;
            };
            ids[pos] = id;
        }
        self.store.in_links(id).fetch_add(1, Ordering::AcqRel);
        Self::write_list(list, &ids);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::index::distance::{dot, normalize};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::panic::AssertUnwindSafe;

    pub(crate) fn random_unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                normalize(&mut v);
                v
            })
            .collect()
    }

    pub(crate) fn build(vectors: &[Vec<f32>], params: HnswParams) -> Hnsw {
        fill(Hnsw::new(vectors[0].len(), params), vectors)
    }

    /// Inserts `vectors[i]` under label `i`.
    fn fill(h: Hnsw, vectors: &[Vec<f32>]) -> Hnsw {
        for (i, v) in vectors.iter().enumerate() {
            assert!(h.insert(i as u64, v));
        }
        h
    }

    /// Exact top-k with the same ordering rule as `search`.
    pub(crate) fn brute_force(
        vectors: &[Vec<f32>],
        q: &[f32],
        k: usize,
        filter: impl Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        let mut all: Vec<(u64, f32)> = vectors
            .iter()
            .enumerate()
            .filter(|(i, _)| filter(*i as u64))
            .map(|(i, v)| (i as u64, dot(q, v)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    #[test]
    fn search_with_ef_at_least_n_equals_brute_force() {
        let vectors = random_unit_vectors(500, 16, 1);
        let h = build(&vectors, HnswParams::default());
        h.check_integrity().unwrap();
        for q in random_unit_vectors(50, 16, 2) {
            let got = h.search(&q, 10, 500, &|_| true);
            assert_eq!(got, brute_force(&vectors, &q, 10, |_| true));
        }
    }

    #[test]
    fn recall_on_random_5k_with_default_params() {
        let vectors = random_unit_vectors(5000, 24, 3);
        let h = build(&vectors, HnswParams::default());
        let queries = random_unit_vectors(200, 24, 4);
        let mut hits = 0;
        for q in &queries {
            let want: Vec<u64> = brute_force(&vectors, q, 10, |_| true)
                .into_iter()
                .map(|p| p.0)
                .collect();
            let got = h.search(q, 10, h.params().ef_search, &|_| true);
            hits += got.iter().filter(|(l, _)| want.contains(l)).count();
        }
        let recall = hits as f64 / (10 * queries.len()) as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn concurrent_inserts_and_searches_keep_the_graph_sound() {
        const THREADS: usize = 3;
        const PER_THREAD: usize = 1200; // 3600 nodes: crosses two segment boundaries
        let vectors = random_unit_vectors(THREADS * PER_THREAD, 20, 5);
        let queries = random_unit_vectors(20, 20, 6);
        let h = Hnsw::new(20, HnswParams::default());
        let done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (h, vectors, done) = (&h, &vectors, &done);
                s.spawn(move || {
                    for i in (t..vectors.len()).step_by(THREADS) {
                        assert!(h.insert(i as u64, &vectors[i]));
                    }
                    done.fetch_add(1, Ordering::Release);
                });
            }
            s.spawn(|| {
                let mut rounds = 0;
                while done.load(Ordering::Acquire) < THREADS || rounds == 0 {
                    for q in &queries {
                        let r = h.search(q, 5, 32, &|_| true);
                        assert!(r.windows(2).all(|w| w[0].1 >= w[1].1));
                    }
                    rounds += 1;
                }
            });
        });
        assert_eq!(h.len(), vectors.len());
        h.check_integrity().unwrap();
        let mut labels = h.labels();
        labels.sort_unstable();
        assert_eq!(labels, (0..vectors.len() as u64).collect::<Vec<_>>());
        for (i, v) in vectors.iter().enumerate() {
            assert!(h.contains(i as u64));
            assert_eq!(h.search(v, 1, 64, &|_| true)[0].0, i as u64);
        }
    }

    #[test]
    fn duplicate_label_is_refused_and_changes_nothing() {
        let vectors = random_unit_vectors(3, 8, 7);
        let h = Hnsw::new(8, HnswParams::default());
        assert!(h.is_empty());
        assert!(h.insert(42, &vectors[0]));
        assert!(!h.insert(42, &vectors[1]));
        assert_eq!(h.len(), 1);
        assert_eq!(h.labels(), vec![42]);
        let r = h.search(&vectors[0], 3, 10, &|_| true);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 42);
        assert!((r[0].1 - 1.0).abs() < 1e-5);
    }

    #[test]
    fn filter_excludes_labels_and_matches_filtered_brute_force() {
        let vectors = random_unit_vectors(800, 16, 8);
        let h = build(&vectors, HnswParams::default());
        for q in random_unit_vectors(30, 16, 9) {
            let keep = |l: u64| l <= 99;
            let got = h.search(&q, 10, 800, &keep);
            assert!(got.iter().all(|(l, _)| *l <= 99));
            assert_eq!(got, brute_force(&vectors, &q, 10, keep));
            let few = h.search(&q, 10, 32, &|l| l % 2 == 0);
            assert_eq!(few.len(), 10);
            assert!(few.iter().all(|(l, _)| l % 2 == 0));
            assert!(h.search(&q, 10, 32, &|_| false).is_empty());
        }
    }

    /// The two-hop traversal for sparse filters returns only admitted
    /// labels and finds the filtered nearest neighbours where the one-hop
    /// traversal, at the same breadth, falls short; the scan of a label
    /// list is exact up to its size and re-ranks the rest.
    #[test]
    fn sparse_filters_search_two_hops_and_scans_are_exact() {
        let vectors = random_unit_vectors(5000, 16, 21);
        let h = build(&vectors, HnswParams::default());
        let keep = |l: u64| l % 20 == 3; // 5% admitted
        let (mut two_hop_hits, mut one_hop_hits, mut total) = (0, 0, 0);
        for q in random_unit_vectors(40, 16, 22) {
            let want = brute_force(&vectors, &q, 10, keep);
            let two = h.search_with(&q, 10, 40, &keep, true);
            assert!(two.iter().all(|(l, _)| keep(*l)));
            let one = h.search_with(&q, 10, 40, &keep, false);
            let hits = |got: &[(u64, f32)]| got.iter().filter(|g| want.contains(g)).count();
            two_hop_hits += hits(&two);
            one_hop_hits += hits(&one);
            total += want.len();
            // The scan: exact for a list up to EXACT_SCAN_ALL labels, and
            // over it the codes preselect, then the best are exact.
            let small: Vec<u64> = (0..5000u64).filter(|l| keep(*l)).collect();
            let scanned = h.scan(&q, &small, 10);
            assert_eq!(&scanned[..10], &want[..]);
            let big: Vec<u64> = (0..5000u64).filter(|l| l % 2 == 1).collect();
            let scanned = h.scan(&q, &big, 10);
            let want_big = brute_force(&vectors, &q, 10, |l| l % 2 == 1);
            let overlap = scanned[..10]
                .iter()
                .filter(|g| want_big.contains(g))
                .count();
            assert!(overlap >= 9, "{overlap} of 10 from the scan of 2,500");
        }
        let two = two_hop_hits as f64 / total as f64;
        let one = one_hop_hits as f64 / total as f64;
        assert!(two >= 0.9, "two-hop recall@10 {two}");
        assert!(two >= one, "two-hop {two} against one-hop {one}");
    }

    #[test]
    fn empty_index_and_k_zero() {
        let h = Hnsw::new(4, HnswParams::default());
        assert!(h.search(&[1.0, 0.0, 0.0, 0.0], 5, 10, &|_| true).is_empty());
        h.check_integrity().unwrap();
        h.insert(1, &[1.0, 0.0, 0.0, 0.0]);
        assert!(h.search(&[1.0, 0.0, 0.0, 0.0], 0, 10, &|_| true).is_empty());
        assert!(h.memory_bytes() > 0);
    }

    #[test]
    fn an_insert_that_panics_is_finished_by_the_next_insert_and_survives_a_snapshot() {
        let vectors = random_unit_vectors(400, 12, 31);
        let h = Hnsw::new(12, HnswParams::default());
        for (i, v) in vectors.iter().enumerate().take(300) {
            assert!(h.insert(i as u64, v));
        }
        h.inject_poison_label(300);
        h.inject_insert_panics(2);
        for i in 300..303u64 {
            let r =
                std::panic::catch_unwind(AssertUnwindSafe(|| h.insert(i, &vectors[i as usize])));
            assert!(r.is_err(), "insert {i} did not panic");
        }
        assert_eq!(h.abandoned_labels(), vec![300, 301, 302]);
        assert_eq!(h.len(), 300);
        assert!(!h.contains(301), "an abandoned node counts as in the graph");
        h.check_integrity().unwrap();
        // The retry finishes 301; 300 is poisoned and stays abandoned.
        assert!(h.insert(301, &vectors[301]));
        assert!(!h.insert(301, &vectors[301]));
        assert!(h.contains(301));
        // A snapshot finishes what it can (302) and keeps 300 abandoned.
        let mut buf = Vec::new();
        h.write_to(&mut buf).unwrap();
        assert_eq!(h.abandoned_labels(), vec![300]);
        let r = Hnsw::read_from(&mut buf.as_slice()).unwrap();
        assert_eq!(r.abandoned_labels(), vec![300]);
        assert_eq!(r.len(), 302);
        assert!(!r.contains(300) && r.contains(302));
        r.check_integrity().unwrap();
        // Without the fault (a restart), inserting it again finishes it.
        assert!(r.insert(300, &vectors[300]));
        for (i, v) in vectors.iter().enumerate().skip(303) {
            assert!(r.insert(i as u64, v));
        }
        assert!(r.abandoned_labels().is_empty());
        assert_eq!(r.len(), 400);
        r.check_integrity().unwrap();
        for (i, v) in vectors.iter().enumerate() {
            assert_eq!(r.search(v, 1, 64, &|_| true)[0].0, i as u64);
        }
    }

    #[test]
    fn ties_are_ordered_by_smaller_label() {
        let h = Hnsw::new(2, HnswParams::default());
        for label in [9u64, 3, 7, 5] {
            assert!(h.insert(label, &[0.6, 0.8]));
        }
        let r = h.search(&[0.6, 0.8], 4, 10, &|_| true);
        assert_eq!(r.iter().map(|p| p.0).collect::<Vec<_>>(), vec![3, 5, 7, 9]);
        h.check_integrity().unwrap();
    }

    #[test]
    fn levels_follow_the_geometric_distribution() {
        let h = Hnsw::new(4, HnswParams::default());
        let upper = (0..100_000u64).filter(|&l| h.random_level(l) > 0).count();
        // P(level > 0) = 1/M = 1/16.
        assert!((5_500..7_000).contains(&upper), "{upper}");
    }

    fn compact(dim: usize, dir: &std::path::Path) -> Hnsw {
        Hnsw::with_placement(
            dim,
            HnswParams::default(),
            &VectorPlacement::Disk(dir.to_path_buf()),
        )
        .unwrap()
    }

    #[test]
    fn a_compact_index_keeps_vectors_on_disk_and_searches_as_well() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = random_unit_vectors(5000, 24, 3);
        let h = fill(compact(24, dir.path()), &vectors);
        h.check_integrity().unwrap();
        let (ram_vectors, codes, _) = h.memory_by_kind();
        assert_eq!(ram_vectors, 0, "no vector in RAM");
        assert!(codes > 0);
        assert_eq!(h.disk_bytes(), 5000 * 24 * 4);
        // The vector file is unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Vectors read back bit for bit, and similarities are exact.
        for (i, v) in vectors.iter().enumerate().step_by(97) {
            assert_eq!(h.vector(i as u64).unwrap(), *v);
        }
        let queries = random_unit_vectors(200, 24, 4);
        let mut hits = 0;
        for q in &queries {
            let want: Vec<u64> = brute_force(&vectors, q, 10, |_| true)
                .into_iter()
                .map(|p| p.0)
                .collect();
            let got = h.search(q, 10, h.params().ef_search, &|_| true);
            for (l, sim) in &got {
                assert_eq!(*sim, dot(q, &vectors[*l as usize]), "exact score");
            }
            hits += got.iter().filter(|(l, _)| want.contains(l)).count();
        }
        let recall = hits as f64 / (10 * queries.len()) as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
        assert_eq!(h.vector_read_errors(), 0);
    }

    #[test]
    fn a_compact_index_round_trips_through_a_snapshot_in_either_placement() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = random_unit_vectors(600, 16, 21);
        let h = fill(compact(16, dir.path()), &vectors);
        let mut buf = Vec::new();
        h.write_to(&mut buf).unwrap();
        let on_disk = Hnsw::read_from_with(
            &mut buf.as_slice(),
            &VectorPlacement::Disk(dir.path().into()),
        )
        .unwrap();
        let in_ram = Hnsw::read_from(&mut buf.as_slice()).unwrap();
        for r in [&on_disk, &in_ram] {
            assert_eq!(r.len(), 600);
            r.check_integrity().unwrap();
            for (i, v) in vectors.iter().enumerate() {
                assert_eq!(r.vector(i as u64).unwrap(), *v);
                assert_eq!(r.search(v, 1, 64, &|_| true)[0].0, i as u64);
            }
        }
        assert_eq!(
            on_disk.placement(),
            VectorPlacement::Disk(dir.path().into())
        );
        assert_eq!(in_ram.placement(), VectorPlacement::Memory);
    }

    #[test]
    fn a_failed_vector_write_abandons_the_insert_and_a_retry_finishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = random_unit_vectors(300, 16, 22);
        let h = compact(16, dir.path());
        for (i, v) in vectors.iter().enumerate().take(200) {
            assert!(h.insert(i as u64, v));
        }
        h.inject_vector_write_failures(1);
        let err = std::panic::catch_unwind(AssertUnwindSafe(|| h.insert(200, &vectors[200])))
            .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("vector file failed"), "{msg}");
        assert_eq!(h.abandoned_labels(), vec![200]);
        assert!(!h.contains(200));
        // Without the vector, it cannot be finished (a snapshot keeps it
        // abandoned); the graph stays sound and never returns it.
        assert_eq!(h.finish_abandoned(), 1);
        h.check_integrity().unwrap();
        assert!(h
            .search(&vectors[200], 10, 300, &|_| true)
            .iter()
            .all(|(l, _)| *l != 200));
        // The retried insert brings the vector and finishes the node.
        assert!(h.insert(200, &vectors[200]));
        assert!(h.abandoned_labels().is_empty());
        for (i, v) in vectors.iter().enumerate().skip(201) {
            assert!(h.insert(i as u64, v));
        }
        h.check_integrity().unwrap();
        assert_eq!(h.vector(200).unwrap(), vectors[200]);
        assert_eq!(h.search(&vectors[200], 1, 64, &|_| true)[0].0, 200);
    }

    #[test]
    fn failed_vector_reads_fall_back_to_code_rows_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = random_unit_vectors(500, 16, 23);
        let h = fill(compact(16, dir.path()), &vectors);
        // A search re-scores 20 candidates at k = 10: every one of its
        // reads fails. It still answers, its own vector first, with the
        // code rows' similarities (close to exact), and counts them.
        h.inject_vector_read_failures(20);
        let got = h.search(&vectors[7], 10, 64, &|_| true);
        assert_eq!(got.len(), 10);
        assert_eq!(got[0].0, 7);
        for (l, sim) in &got {
            assert!((sim - dot(&vectors[7], &vectors[*l as usize])).abs() < 1e-2);
        }
        assert_eq!(h.vector_read_errors(), 20);
        // Once the disk answers again, scores are exact again.
        let got = h.search(&vectors[7], 10, 64, &|_| true);
        assert_eq!(got[0], (7, dot(&vectors[7], &vectors[7])));
        for (l, sim) in &got {
            assert_eq!(*sim, dot(&vectors[7], &vectors[*l as usize]));
        }
        assert_eq!(h.vector_read_errors(), 20);
    }
}
