//! One memory space: its episodes, the fresh tier (accepted, not yet in the
//! HNSW index, searched exactly by recall) and its HNSW index.
//!
//! Writers: only the commit thread adds or forgets episodes (so commit order
//! is visibility order), and only indexing workers move episodes from the
//! fresh tier into the index. Readers: recalls and describe.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use std::sync::OnceLock;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::Error;
use crate::index::{Hnsw, HnswParams, VectorPlacement};
use crate::metrics::SpaceMetrics;
use crate::model::{
    no_embedding, now_unix_nanos, MemoryFilter, SpaceId, SpaceInfo, SpaceMemory, StoredEpisode,
    VectorStorage,
};
use crate::postings::{Admitted, Postings};

/// Where an index with `storage` keeps its vectors, given the directory for
/// compact spaces' vector files.
pub(crate) fn placement(storage: VectorStorage, vector_dir: &std::path::Path) -> VectorPlacement {
    match storage {
        VectorStorage::Memory => VectorPlacement::Memory,
        VectorStorage::Compact => VectorPlacement::Disk(vector_dir.to_path_buf()),
    }
}

/// Fewest index nodes of gone memories worth a reclaim.
pub const RECLAIM_MIN: u64 = 256;
/// Smallest share of the index's nodes whose memories are gone that is
/// worth a reclaim (it walks every link list).
pub const RECLAIM_SHARE: f64 = 0.05;

/// A memory space. Shared as `Arc<Space>` between the engine's map, the
/// commit thread, indexing tasks and recalls.
pub struct Space {
    id: SpaceId,
    dimension: usize,
    index: Hnsw,
    /// Episodes and the fresh tier. A RwLock because recalls (many, short)
    /// read while the commit thread (one) appends; parking_lot's lock does
    /// not starve that writer. Never held across a long scan: recall copies
    /// the fresh tier's handles out and scans them unlocked.
    state: RwLock<SpaceState>,
    /// Commit-thread bookkeeping (ids → sequence, last sequence). A Mutex
    /// only the commit thread and recovery take, so it is never contended.
    commit: Mutex<CommitMeta>,
    /// Highest server sequence whose episode is visible to recall. Written
    /// by the commit thread after the episode is in `state`.
    visible_seq: AtomicU64,
    deleted: AtomicBool,
    /// Time to live (nanoseconds) of episodes observed without their own
    /// expiry; 0: none. Set at creation (or load), before the space is
    /// shared.
    default_ttl_nanos: AtomicU64,
    /// Memories purged because they expired, since the engine opened.
    expired: AtomicU64,
    /// Index nodes of memories forgotten or purged since the last reclaim
    /// (an estimate that decides when to run one: [`Space::reclaim_index`]).
    dead_in_index: AtomicU64,
    /// Metric handles, resolved once when the space is registered.
    metrics: OnceLock<SpaceMetrics>,
}

/// The readable state of a space.
pub struct SpaceState {
    /// `episodes[seq - 1]`; `None` once forgotten. Sequences are dense from 1,
    /// so lookup by sequence (the index's label) is a plain offset.
    episodes: Vec<Option<Arc<StoredEpisode>>>,
    live: u64,
    /// Accepted, not yet in the index, by sequence.
    fresh: BTreeMap<u64, Arc<StoredEpisode>>,
    /// Fresh episodes whose indexing kept panicking (see the indexer's
    /// quarantine): recalled exactly from the fresh tier, not waited for.
    quarantined: std::collections::BTreeSet<u64>,
    /// Live episodes' bytes besides their vectors
    /// (`StoredEpisode::bytes_without_embedding`), kept as they come and go.
    episode_bytes: usize,
    /// Tags and metadata -> live sequences (filtered recall).
    postings: Postings,
    /// Live episodes that expire, by (expiry, sequence): what has expired
    /// as of an instant is a prefix, for recall to exclude and the purge
    /// to remove.
    expiring: std::collections::BTreeSet<(i64, u64)>,
}

/// What only the commit thread reads and writes.
#[derive(Default)]
pub struct CommitMeta {
    pub by_id: IdTable,
    pub last_seq: u64,
}

/// Memory id -> server sequence (idempotent retries, forget by id).
///
/// Keyed by a 128-bit hash of the id (two SipHash-1-3 with independent
/// random keys, drawn per process) instead of a copy of the id: 24 bytes a
/// slot instead of a `String` slot plus the id's own allocation, which at a
/// million memories is about 40 bytes per memory (docs/design/memory.md).
/// Two distinct ids would have to agree on 128 keyed bits to be confused;
/// at 10^9 ids in a space the odds of any such pair are below 10^-20, far
/// below those of undetected disk or memory corruption, which is the bar
/// content-addressed stores use for the same trade.
#[derive(Default)]
pub struct IdTable {
    keys: (std::hash::RandomState, std::hash::RandomState),
    map: HashMap<(u64, u64), u64>,
}

impl IdTable {
    fn key(&self, id: &str) -> (u64, u64) {
        use std::hash::BuildHasher;
        (self.keys.0.hash_one(id), self.keys.1.hash_one(id))
    }

    pub fn get(&self, id: &str) -> Option<&u64> {
        self.map.get(&self.key(id))
    }

    pub fn insert(&mut self, id: &str, seq: u64) {
        let k = self.key(id);
        self.map.insert(k, seq);
    }

    pub fn remove(&mut self, id: &str) -> Option<u64> {
        let k = self.key(id);
        self.map.remove(&k)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of the table's slots (allocated, used or not).
    pub fn bytes(&self) -> usize {
        self.map.capacity() * (std::mem::size_of::<((u64, u64), u64)>() + 1)
    }
}

impl SpaceState {
    /// The live episode with this sequence, if any.
    pub fn episode(&self, seq: u64) -> Option<&Arc<StoredEpisode>> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.episodes.get(i)?.as_ref()
    }

    /// Handles to the fresh episodes with sequence <= `snapshot`.
    pub fn fresh_up_to(&self, snapshot: u64) -> Vec<Arc<StoredEpisode>> {
        self.fresh
            .range(..=snapshot)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Every live episode, in sequence order.
    pub fn live_episodes(&self) -> impl Iterator<Item = &Arc<StoredEpisode>> {
        self.episodes.iter().flatten()
    }

    pub fn fresh_len(&self) -> usize {
        self.fresh.len()
    }

    /// The memories `filter` can admit, from the tag and metadata postings.
    pub fn admitted(&self, filter: &MemoryFilter) -> Admitted {
        self.postings.admitted(filter)
    }

    /// Sequences of live episodes expired as of `now` (not purged yet),
    /// ascending.
    pub fn expired_as_of(&self, now: i64) -> Vec<u64> {
        let mut seqs = self.due_for_purge(now, usize::MAX);
        seqs.sort_unstable();
        seqs
    }

    /// Up to `limit` sequences of live episodes expired as of `now`,
    /// soonest expired first (for the purge).
    pub fn due_for_purge(&self, now: i64, limit: usize) -> Vec<u64> {
        self.expiring
            .range(..=(now, u64::MAX))
            .take(limit)
            .map(|&(_, seq)| seq)
            .collect()
    }

    /// Up to `limit` live episodes matching `filter` and not expired as of
    /// `now` with a sequence above `after`, ascending, and whether more may
    /// follow. Uses the postings when the filter has positive conditions,
    /// else walks the table.
    pub fn list_after(
        &self,
        filter: &MemoryFilter,
        now: i64,
        after: u64,
        limit: usize,
    ) -> (Vec<Arc<StoredEpisode>>, bool) {
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        let mut take = |e: &Arc<StoredEpisode>| -> bool {
            if !filter.matches(e) || e.expired_at(now) {
                return true;
            }
            if out.len() == limit {
                more = true;
                return false;
            }
            out.push(e.clone());
            true
        };
        match (!filter.is_empty()).then(|| self.postings.admitted(filter)) {
            Some(Admitted::Only(seqs)) => {
                let from = seqs.partition_point(|&s| s <= after);
                for &seq in &seqs[from..] {
                    if let Some(e) = self.episode(seq) {
                        if !take(e) {
                            break;
                        }
                    }
                }
            }
            _ => {
                let from = usize::try_from(after)
                    .unwrap_or(usize::MAX)
                    .min(self.episodes.len());
                for e in self.episodes[from..].iter().flatten() {
                    if !take(e) {
                        break;
                    }
                }
            }
        }
        (out, more)
    }
}

impl Space {
    /// A space with its vectors in RAM.
    pub fn new(id: SpaceId, dimension: usize, params: HnswParams) -> Self {
        Self::with_index(id, Hnsw::new(dimension, params))
    }

    /// A space keeping its vectors as `storage` says (compact: in an
    /// unnamed file in `vector_dir`).
    ///
    /// # Errors
    /// [`Error::Storage`] when the vector file cannot be created.
    pub fn create(
        id: SpaceId,
        dimension: usize,
        params: HnswParams,
        storage: VectorStorage,
        vector_dir: &std::path::Path,
    ) -> crate::error::Result<Self> {
        let index = Hnsw::with_placement(dimension, params, &placement(storage, vector_dir))
            .map_err(|e| {
                Error::Storage(format!(
                    "creating the vector file of compact space '{id}' in {}: {e}",
                    vector_dir.display()
                ))
            })?;
        Ok(Self::with_index(id, index))
    }

    /// Where the space keeps the exact vectors of indexed memories.
    pub fn vector_storage(&self) -> VectorStorage {
        match self.index.placement() {
            VectorPlacement::Memory => VectorStorage::Memory,
            VectorPlacement::Disk(_) => VectorStorage::Compact,
        }
    }

    /// A space around an index loaded from a snapshot.
    pub fn with_index(id: SpaceId, index: Hnsw) -> Self {
        Space {
            id,
            dimension: index.dim(),
            index,
            state: RwLock::new(SpaceState {
                episodes: Vec::new(),
                live: 0,
                fresh: BTreeMap::new(),
                quarantined: Default::default(),
                episode_bytes: 0,
                postings: Postings::default(),
                expiring: Default::default(),
            }),
            commit: Mutex::new(CommitMeta::default()),
            visible_seq: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            default_ttl_nanos: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            dead_in_index: AtomicU64::new(0),
            metrics: OnceLock::new(),
        }
    }

    pub fn id(&self) -> &SpaceId {
        &self.id
    }

    /// Time to live of episodes observed without their own expiry.
    pub fn default_ttl(&self) -> Option<std::time::Duration> {
        match self.default_ttl_nanos.load(Ordering::Acquire) {
            0 => None,
            n => Some(std::time::Duration::from_nanos(n)),
        }
    }

    /// Sets the default TTL: at creation, recovery or load only.
    pub(crate) fn set_default_ttl(&self, ttl: Option<std::time::Duration>) {
        let nanos = ttl.map_or(0, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        self.default_ttl_nanos.store(nanos, Ordering::Release);
    }

    /// Counts memories purged because they expired.
    pub(crate) fn count_expired(&self, n: u64) {
        self.expired.fetch_add(n, Ordering::AcqRel);
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Metric handles, when metrics are on.
    pub fn metrics(&self) -> Option<&SpaceMetrics> {
        self.metrics.get()
    }

    pub(crate) fn attach_metrics(&self, m: SpaceMetrics) {
        let _ = self.metrics.set(m);
    }

    pub fn index(&self) -> &Hnsw {
        &self.index
    }

    pub fn read(&self) -> RwLockReadGuard<'_, SpaceState> {
        self.state.read()
    }

    /// The commit thread's bookkeeping.
    pub fn commit_meta(&self) -> parking_lot::MutexGuard<'_, CommitMeta> {
        self.commit.lock()
    }

    /// Highest sequence a recall starting now can see.
    pub fn visible_sequence(&self) -> u64 {
        self.visible_seq.load(Ordering::Acquire)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    /// Makes a committed episode visible. Returns whether it still has to be
    /// indexed (false when a loaded index already holds it; the episode is
    /// then kept without its vector, which the index has).
    ///
    /// Sequences must arrive dense and in order; the commit thread and
    /// recovery guarantee it.
    pub(crate) fn apply_observe(&self, episode: Arc<StoredEpisode>) -> bool {
        let seq = episode.server_sequence;
        let needs_index = !self.index.contains(seq);
        let episode = if !needs_index && episode.holds_embedding() {
            Arc::new(episode.without_embedding())
        } else {
            episode
        };
        {
            let mut st = self.state.write();
            let expected = st.episodes.len() as u64 + 1;
            assert!(
                seq >= expected,
                "space {}: sequence {seq} applied after {}",
                self.id,
                expected - 1
            );
            // A snapshot omits forgotten episodes, so a loaded space can
            // have holes below its first replayed sequence.
            st.episodes.resize(seq as usize - 1, None);
            st.episode_bytes += episode.bytes_without_embedding();
            st.postings.add(&episode);
            if let Some(t) = episode.expires_at_unix_nanos {
                st.expiring.insert((t, seq));
            }
            st.episodes.push(Some(episode.clone()));
            st.live += 1;
            if needs_index {
                st.fresh.insert(seq, episode);
            }
        }
        self.visible_seq.store(seq, Ordering::Release);
        needs_index
    }

    /// Raises the visible sequence to a snapshot's last sequence, which may
    /// be above the last live episode when the newest ones were forgotten.
    pub(crate) fn restore_last_sequence(&self, last_seq: u64) {
        let mut st = self.state.write();
        if (st.episodes.len() as u64) < last_seq {
            st.episodes.resize(last_seq as usize, None);
        }
        self.visible_seq.fetch_max(last_seq, Ordering::AcqRel);
    }

    /// Forgets an episode. Returns false when it was already gone.
    pub(crate) fn apply_forget(&self, seq: u64) -> bool {
        let mut st = self.state.write();
        let Some(slot) = usize::try_from(seq.wrapping_sub(1))
            .ok()
            .and_then(|i| st.episodes.get_mut(i))
        else {
            return false;
        };
        let Some(gone) = slot.take() else {
            return false;
        };
        st.episode_bytes -= gone.bytes_without_embedding();
        st.postings.remove(&gone);
        if let Some(t) = gone.expires_at_unix_nanos {
            st.expiring.remove(&(t, seq));
        }
        st.live -= 1;
        let was_fresh = st.fresh.remove(&seq).is_some();
        st.quarantined.remove(&seq);
        drop(st);
        if !was_fresh {
            self.dead_in_index.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    /// Deletes the index nodes of memories that are gone (forgotten,
    /// expired, or retired at recovery) in place, so that their slots are
    /// reused by the next inserts (see `Hnsw::reclaim`). Without `force`,
    /// only once they are at least [`RECLAIM_MIN`] and [`RECLAIM_SHARE`] of
    /// the index: a reclaim walks every link list. Returns how many nodes
    /// were deleted.
    pub fn reclaim_index(&self, force: bool) -> usize {
        let estimate = self.dead_in_index.load(Ordering::Acquire);
        let len = self.index.len() as u64;
        if !force && (estimate < RECLAIM_MIN || (estimate as f64) < RECLAIM_SHARE * len as f64) {
            return 0;
        }
        let labels = self.index.labels();
        let dead: std::collections::HashSet<u64> = {
            let st = self.state.read();
            let visible = self.visible_sequence();
            labels
                .into_iter()
                .filter(|&l| Hnsw::is_retired_label(l) || (l <= visible && st.episode(l).is_none()))
                .collect()
        };
        let deleted = if dead.is_empty() {
            0
        } else {
            self.index.reclaim(&|l| dead.contains(&l))
        };
        // Only once done: a reclaim that panics leaves the estimate, and
        // the next pass tries again. Saturating: a forced reclaim may run
        // beside the background one.
        let _ = self
            .dead_in_index
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(estimate))
            });
        deleted
    }

    /// Whether the episode is still live (indexing skips forgotten ones).
    pub fn is_live(&self, seq: u64) -> bool {
        self.state.read().episode(seq).is_some()
    }

    /// Called by an indexing worker once the episode is in the index (or
    /// no longer needs to be): it leaves the fresh tier, and the stored
    /// episode drops its vector, which only the index keeps from now on.
    pub(crate) fn mark_indexed(&self, seq: u64) {
        let slim = {
            let st = self.state.read();
            st.episode(seq)
                .filter(|e| e.holds_embedding() && self.index.contains(seq))
                .map(|e| Arc::new(e.without_embedding()))
        };
        let mut st = self.state.write();
        st.fresh.remove(&seq);
        st.quarantined.remove(&seq);
        if let Some(slim) = slim {
            if let Some(slot) = usize::try_from(seq.wrapping_sub(1))
                .ok()
                .and_then(|i| st.episodes.get_mut(i))
                .filter(|slot| slot.is_some())
            {
                *slot = Some(slim);
            }
        }
    }

    /// An episode's vector: its own while it is fresh, the index's copy once
    /// indexed. None when neither has it (a forgotten episode whose index
    /// node was never completed).
    pub fn embedding_of(&self, e: &StoredEpisode) -> Option<Arc<[f32]>> {
        if e.holds_embedding() {
            return Some(e.embedding.clone());
        }
        self.index
            .vector(e.server_sequence)
            .map(Arc::from)
            .filter(|v: &Arc<[f32]>| !v.is_empty())
    }

    /// Every live episode with its vector (see [`Space::embedding_of`]), in
    /// sequence order: a copy, for checks and tools.
    pub fn live_episodes_with_embeddings(&self) -> Vec<StoredEpisode> {
        let episodes: Vec<_> = self.state.read().live_episodes().cloned().collect();
        episodes
            .iter()
            .map(|e| StoredEpisode {
                embedding: self.embedding_of(e).unwrap_or_else(no_embedding),
                ..(**e).clone()
            })
            .collect()
    }

    /// Called by an indexing worker that gives up on a fresh episode: it
    /// stays in the fresh tier (recall scans it exactly) and is counted.
    pub(crate) fn quarantine(&self, seq: u64) {
        let mut st = self.state.write();
        if st.fresh.contains_key(&seq) {
            st.quarantined.insert(seq);
        }
    }

    /// Memory held for the space, by kind (see [`SpaceMemory`]).
    pub fn memory(&self) -> SpaceMemory {
        let (vectors, codes, graph) = self.index.memory_by_kind();
        // The id table's slots (hashes of the ids, not copies).
        let id_table = self.commit.lock().by_id.bytes();
        let st = self.state.read();
        SpaceMemory {
            vectors: vectors as u64,
            codes: codes as u64,
            graph: graph as u64,
            episodes: (st.episode_bytes
                + st.postings.bytes()
                // A B-tree entry of 16 bytes, with its share of the node.
                + st.expiring.len() * 24
                + id_table
                + st.episodes.capacity() * std::mem::size_of::<Option<Arc<StoredEpisode>>>())
                as u64,
            fresh: (st.fresh.len() * self.dimension * std::mem::size_of::<f32>()) as u64,
            vectors_on_disk: self.index.disk_bytes() as u64,
        }
    }

    /// Counts, lag and memory for `describe`.
    pub fn info(&self) -> SpaceInfo {
        let memory = self.memory();
        let st = self.state.read();
        // The oldest episode still waiting (a quarantined one waits for
        // nothing, and must not make the lag grow for ever).
        let lag = st
            .fresh
            .values()
            .find(|e| !st.quarantined.contains(&e.server_sequence))
            .map(|e| (now_unix_nanos() - e.committed_at_unix_nanos).max(0) as f64 / 1e9)
            .unwrap_or(0.0);
        let quarantined = st.quarantined.len() as u64;
        SpaceInfo {
            memory_space_id: self.id.to_string(),
            dimension: self.dimension,
            count: st.live,
            indexed_count: st.live - st.fresh.len() as u64,
            queue_depth: st.fresh.len() as u64 - quarantined,
            last_sequence: self.visible_sequence(),
            index_lag_seconds: lag,
            quarantined_count: quarantined,
            memory,
            vector_storage: self.vector_storage(),
            default_ttl: self.default_ttl(),
            expired_count: self.expired.load(Ordering::Acquire),
        }
    }

    /// Every live episode is in exactly one tier, and the index passes its
    /// own graph checks (which include finding every stored vector).
    ///
    /// # Errors
    /// A description of the first violation.
    pub fn check_integrity(&self) -> Result<(), String> {
        self.index.check_integrity()?;
        let st = self.state.read();
        for e in st.live_episodes() {
            let seq = e.server_sequence;
            let in_index = self.index.contains(seq);
            let in_fresh = st.fresh.contains_key(&seq);
            if in_index == in_fresh {
                return Err(format!(
                    "space {}: episode '{}' (sequence {seq}) is in the index: {in_index}, in the fresh tier: {in_fresh}; expected exactly one",
                    self.id, e.id
                ));
            }
            // One copy of each vector: the fresh tier's episodes hold
            // theirs, indexed ones leave it to the index.
            if in_fresh != e.holds_embedding() {
                return Err(format!(
                    "space {}: episode '{}' (sequence {seq}) holds its vector: {}, in the fresh tier: {in_fresh}; \
                     the stored episode holds its vector exactly while it is fresh",
                    self.id,
                    e.id,
                    e.holds_embedding()
                ));
            }
        }
        for seq in st.fresh.keys() {
            if st.episode(*seq).is_none() {
                return Err(format!(
                    "space {}: fresh tier holds forgotten sequence {seq}",
                    self.id
                ));
            }
        }
        Ok(())
    }
}
