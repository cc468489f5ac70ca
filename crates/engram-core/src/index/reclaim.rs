//! Deleting nodes in place ([`Hnsw::reclaim`]): the nodes of memories that
//! are gone (forgotten, expired, retired at recovery) are unlinked from the
//! graph, which is repaired around them, and their slots are reused by
//! later inserts, so an index whose memories come and go (expiry) holds
//! memory for its live nodes, not for every node it ever had.
//!
//! Searches read the graph without locks, so a slot may be written again
//! only when no search can still be reading it. Readers register for their
//! duration ([`Readers::enter`]); after unlinking, the reclaimer waits for
//! a *grace period* ([`Readers::synchronize`]): every reader registered
//! before the unlink has finished, and a reader that starts later cannot
//! reach the unlinked nodes (nothing links to them). Only then are the
//! slots cleared and offered to inserts. This is read-copy-update with two
//! counters, as in the Linux kernel's SRCU; hnswlib reuses deleted slots
//! (`allow_replace_deleted`) without such a fence, leaving the race to the
//! caller.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::hnsw::{link_count, pack_entry, unpack_entry, Hnsw, NO_ENTRY};

/// Registration of lock-free readers, for grace periods.
#[derive(Default)]
pub(super) struct Readers {
    epoch: AtomicU64,
    active: [AtomicUsize; 2],
}

/// A registered reader; leaves when dropped.
pub(super) struct ReadGuard<'a> {
    readers: &'a Readers,
    slot: usize,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.readers.active[self.slot].fetch_sub(1, Ordering::SeqCst);
    }
}

impl Readers {
    /// Registers a reader until the guard drops. Call it before reading any
    /// node id (entry point, link list or label table).
    pub(super) fn enter(&self) -> ReadGuard<'_> {
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            let slot = (e & 1) as usize;
            self.active[slot].fetch_add(1, Ordering::SeqCst);
            // Registered under the epoch still current: a grace period that
            // started after this point waits for this reader, and one that
            // started before it ran against the graph this reader sees.
            if self.epoch.load(Ordering::SeqCst) == e {
                return ReadGuard {
                    readers: self,
                    slot,
                };
            }
            self.active[slot].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits until every reader registered before this call has left.
    /// Callers serialise (one grace period at a time).
    pub(super) fn synchronize(&self) {
        let e = self.epoch.fetch_add(1, Ordering::SeqCst);
        let slot = (e & 1) as usize;
        let mut spins = 0u32;
        while self.active[slot].load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::park_timeout(std::time::Duration::from_micros(200));
            }
        }
    }
}

/// Node ids out of the graph: unlinked (`out`), and of those the ones
/// cleared and free for an insert to reuse (`free`).
#[derive(Default)]
pub(super) struct Reclaimed {
    pub out: HashSet<u32>,
    pub free: Vec<u32>,
}

impl Hnsw {
    /// Deletes every complete node whose label `dead` accepts: unlinks it,
    /// repairs the graph around it (FreshDiskANN's delete consolidation: a
    /// node that linked to a deleted one re-selects its neighbours, with
    /// the insert's diversity heuristic, from its live ones and the deleted
    /// node's live ones, two hops through deleted nodes; a node left
    /// without a level-0 in-link gets one from its most similar
    /// neighbour; a deleted entry point is replaced by a live node of the
    /// highest level), forgets its label, and after a grace period offers
    /// its slot to new inserts. Returns how many nodes were deleted.
    ///
    /// Searches run on during it; inserts wait while the graph is repaired
    /// (a pass over every link list), not during the grace period.
    /// Abandoned nodes (see [`Hnsw::insert`]) are left alone. A label
    /// deleted here can be inserted again (as a new node).
    pub fn reclaim(&self, dead: &dyn Fn(u64) -> bool) -> usize {
        let _one = self.reclaim_lock.lock();
        if self
            .reclaim_panics
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected fault: panic at the start of a reclaim");
        }
        let doomed: Vec<u32> = {
            let _gate = self.gate.write();
            let n = self.allocated.load(Ordering::Acquire);
            let out = self.reclaimed.lock().out.clone();
            let is_dead: Vec<bool> = (0..n as u32)
                .map(|id| {
                    !out.contains(&id) && self.store.is_ready(id) && dead(self.store.label(id))
                })
                .collect();
            let doomed: Vec<u32> = (0..n as u32).filter(|&id| is_dead[id as usize]).collect();
            let live = |id: u32| -> bool { !is_dead[id as usize] && !out.contains(&id) };
            if !doomed.is_empty() {
                self.unlink(n, &is_dead, &live);
                let mut ids = self.label_ids.lock();
                for &id in &doomed {
                    ids.remove(self.store.label(id));
                    self.store.clear_ready(id);
                }
                self.len.fetch_sub(doomed.len(), Ordering::AcqRel);
            }
            self.reclaimed.lock().out.extend(&doomed);
            doomed
        };
        if doomed.is_empty() {
            return 0;
        }
        // Every search that could have reached a doomed node has finished
        // after this; later ones cannot reach it.
        self.readers.synchronize();
        for &id in &doomed {
            // SAFETY: unlinked from every list and the entry point under
            // the exclusive gate (no insert was linking), label removed (no
            // lookup finds it), and the grace period above outlived every
            // reader that could hold its id. Only this (serialised) call
            // frees slots, and only inserts reuse them, after this.
            unsafe { self.store.clear(id) };
        }
        self.reclaimed.lock().free.extend(&doomed);
        doomed.len()
    }

    /// The neighbours `id` keeps on a level whose list `cur` names nodes
    /// that are leaving (`gone`), into `out`: its staying neighbours and
    /// the staying neighbours of its leaving ones, two hops through
    /// leaving nodes (`neighbours` gives a node's list on that level),
    /// re-selected with the insert's heuristic up to `cap` (FreshDiskANN's
    /// delete consolidation). Shared by in-place deletion and snapshot
    /// compaction.
    pub(super) fn reselect_around(
        &self,
        id: u32,
        cur: &[u32],
        cap: usize,
        neighbours: &dyn Fn(u32) -> Vec<u32>,
        gone: &dyn Fn(u32) -> bool,
        out: &mut Vec<u32>,
    ) {
        let mut candidates = Vec::new();
        for &x in cur {
            if !gone(x) {
                candidates.push(x);
                continue;
            }
            for y in neighbours(x) {
                if !gone(y) {
                    candidates.push(y);
                } else {
                    candidates.extend(neighbours(y).into_iter().filter(|&z| !gone(z)));
                }
            }
        }
        candidates.retain(|&c| c != id);
        candidates.sort_unstable();
        candidates.dedup();
        let mut pairs: Vec<(f32, u32)> = candidates
            .iter()
            .map(|&c| (self.store.sim_nodes(id, c), c))
            .collect();
        pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        self.select_neighbours(&pairs, cap, out);
    }

    /// Repairs every live node's lists around the dead nodes, keeps every
    /// live node's level-0 in-link, and moves the entry point off a dead
    /// node. Under the exclusive gate.
    fn unlink(&self, n: usize, is_dead: &[bool], live: &dyn Fn(u32) -> bool) {
        let list_of = |id: u32, l: usize| -> Vec<u32> {
            let list = self.store.links(id, l);
            if list.is_empty() {
                return Vec::new();
            }
            list[1..=link_count(list)]
                .iter()
                .map(|w| w.load(Ordering::Acquire))
                .collect()
        };
        let mut chosen = Vec::new();
        let gone = |x: u32| !live(x);
        for id in (0..n as u32).filter(|&id| live(id) && self.store.is_ready(id)) {
            for l in 0..=self.store.level(id) {
                let cur = list_of(id, l);
                if cur.iter().all(|&x| !is_dead[x as usize]) {
                    continue;
                }
                let cap = self.store.links(id, l).len() - 1;
                self.reselect_around(id, &cur, cap, &|x| list_of(x, l), &gone, &mut chosen);
                let _g = self.store.lock(id);
                Hnsw::write_list(self.store.links(id, l), &chosen);
                if l == 0 {
                    for &x in cur.iter().filter(|&&x| !chosen.contains(&x)) {
                        self.store.in_links(x).fetch_sub(1, Ordering::AcqRel);
                    }
                    for &x in chosen.iter().filter(|&&x| !cur.contains(&x)) {
                        self.store.in_links(x).fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
        }
        // The dead nodes' own lists stay readable (a search in flight may
        // still walk them) but no longer count as in-links.
        for id in (0..n as u32).filter(|&id| is_dead[id as usize]) {
            for x in list_of(id, 0) {
                self.store.in_links(x).fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _top = self.top.lock();
        let entry = unpack_entry(self.entry.load(Ordering::Acquire));
        if let Some((e, _)) = entry.filter(|&(e, _)| is_dead[e as usize]) {
            let next = (0..n as u32)
                .filter(|&id| id != e && live(id) && self.store.is_ready(id))
                .max_by_key(|&id| (self.store.level(id), std::cmp::Reverse(id)));
            self.entry.store(
                next.map_or(NO_ENTRY, |id| pack_entry(id, self.store.level(id))),
                Ordering::Release,
            );
        }
        let entry = unpack_entry(self.entry.load(Ordering::Acquire)).map(|(e, _)| e);
        // A live node whose only in-links came from dead nodes gets one from
        // its most similar live out-neighbour, which makes room by dropping
        // its least similar neighbour that has another in-link.
        for u in (0..n as u32).filter(|&u| live(u) && self.store.is_ready(u)) {
            if Some(u) == entry || self.store.in_links(u).load(Ordering::Acquire) > 0 {
                continue;
            }
            let mut outs: Vec<(f32, u32)> = list_of(u, 0)
                .into_iter()
                .map(|r| (self.store.sim_nodes(u, r), r))
                .collect();
            outs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, r) in outs {
                let _g = self.store.lock(r);
                let list = self.store.links(r, 0);
                let mut ids = list_of(r, 0);
                if ids.contains(&u) {
                    break;
                }
                if ids.len() < list.len() - 1 {
                    ids.push(u);
                } else {
                    let victim = ids
                        .iter()
                        .enumerate()
                        .filter(|(_, &x)| self.store.in_links(x).load(Ordering::Acquire) > 1)
                        .map(|(j, &x)| (self.store.sim_nodes(r, x), j, x))
                        .min_by(|a, b| a.0.total_cmp(&b.0));
                    let Some((_, j, x)) = victim else { continue };
                    self.store.in_links(x).fetch_sub(1, Ordering::AcqRel);
                    ids[j] = u;
                }
                Hnsw::write_list(list, &ids);
                self.store.in_links(u).fetch_add(1, Ordering::AcqRel);
                break;
            }
        }
    }

    /// Fault injection: the next `n` reclaims panic before they change
    /// anything.
    pub fn inject_reclaim_panics(&self, n: u32) {
        self.reclaim_panics.fetch_add(n, Ordering::AcqRel);
    }

    /// Holds deletions off while the guard lives: no node is deleted by
    /// [`Hnsw::reclaim`] meanwhile (a snapshot holds it from before it
    /// writes a space's episodes until its index is written, so an episode
    /// stored without its vector finds its node).
    pub fn hold_nodes(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.reclaim_lock.lock()
    }

    /// Node ids out of the graph (reclaimed, cleared or not yet).
    pub(super) fn reclaimed_ids(&self) -> HashSet<u32> {
        self.reclaimed.lock().out.clone()
    }

    /// Slots free for inserts to reuse.
    pub fn free_slots(&self) -> usize {
        self.reclaimed.lock().free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hnsw::tests::{brute_force, build, random_unit_vectors};
    use crate::index::HnswParams;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn params(seed: u64) -> HnswParams {
        HnswParams {
            m: 8,
            ef_construction: 60,
            ef_search: 40,
            seed,
        }
    }

    fn dropped(label: u64, share: f64, seed: u64) -> bool {
        let x = (label ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
        (x as f64 / (1u64 << 53) as f64) < share
    }

    /// Recall@10 over `queries` against exact search among `live` labels.
    fn recall(
        h: &Hnsw,
        vectors: &[Vec<f32>],
        queries: &[Vec<f32>],
        live: &dyn Fn(u64) -> bool,
    ) -> f64 {
        let mut hits = 0;
        for q in queries {
            let truth = brute_force(vectors, q, 10, live);
            let got = h.search(q, 10, 40, &|_| true);
            for (l, _) in &got {
                assert!(live(*l), "a search returned deleted label {l}");
            }
            hits += got
                .iter()
                .filter(|(l, _)| truth.iter().any(|(t, _)| t == l))
                .count();
        }
        hits as f64 / (10 * queries.len()) as f64
    }

    #[test]
    fn reclaimed_nodes_leave_the_graph_sound_and_their_slots_are_reused() {
        for (share, seed) in [(0.1, 21), (0.5, 22), (0.9, 23)] {
            let mut vectors = random_unit_vectors(3000, 32, seed);
            let h = build(&vectors, params(seed));
            let queries = random_unit_vectors(150, 32, seed + 100);
            let is_dead = |l: u64| l < 3000 && dropped(l, share, seed);
            let before = recall(&h, &vectors, &queries, &|_| true);
            let filtered_before = {
                let mut hits = 0;
                for q in &queries {
                    let truth = brute_force(&vectors, q, 10, |l| !is_dead(l));
                    hits += h
                        .search(q, 10, 40, &|l| !is_dead(l))
                        .iter()
                        .filter(|(l, _)| truth.iter().any(|(t, _)| t == l))
                        .count();
                }
                hits as f64 / (10 * queries.len()) as f64
            };
            let n = h.reclaim(&is_dead);
            let dead = (0..3000).filter(|&l| is_dead(l)).count();
            assert_eq!(n, dead);
            assert_eq!(h.len(), 3000 - dead);
            assert_eq!(h.free_slots(), dead);
            h.check_integrity()
                .unwrap_or_else(|e| panic!("after deleting {share}: {e}"));
            assert!((0..3000).all(|l| h.contains(l) != is_dead(l)));
            let after = recall(&h, &vectors, &queries, &|l| !is_dead(l));
            assert!(
                after >= filtered_before - 0.03,
                "recall@10 after deleting {share}: {after}, filtered before {filtered_before} (all: {before})"
            );
            // Nothing to delete: nothing changes.
            assert_eq!(h.reclaim(&is_dead), 0);

            // New inserts take the freed slots: the index does not grow.
            let allocated = h.allocated.load(Ordering::Acquire);
            let fresh = random_unit_vectors(dead, 32, seed + 200);
            for (i, v) in fresh.iter().enumerate() {
                assert!(h.insert(10_000 + i as u64, v));
            }
            assert_eq!(h.allocated.load(Ordering::Acquire), allocated);
            assert_eq!(h.free_slots(), 0);
            assert_eq!(h.len(), 3000);
            h.check_integrity()
                .unwrap_or_else(|e| panic!("after reusing {share}: {e}"));
            vectors.extend(fresh);
            // Labels 10_000.. are vectors[3000..]: index them by position.
            let by_pos = |l: u64| if l >= 10_000 { l - 10_000 + 3000 } else { l };
            for (i, v) in vectors.iter().enumerate().skip(3000).step_by(37) {
                let top = h.search(v, 1, 40, &|_| true);
                assert_eq!(
                    by_pos(top[0].0) as usize,
                    i,
                    "a reused slot holds its new vector"
                );
            }
            // A snapshot leaves the free slots out and reads back whole.
            let mut buf = Vec::new();
            h.write_to(&mut buf).unwrap();
            let r = Hnsw::read_from(&mut buf.as_slice()).unwrap();
            r.check_integrity().unwrap();
            let mut a = h.labels();
            let mut b = r.labels();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn deleting_everything_and_inserting_again_works() {
        let vectors = random_unit_vectors(200, 16, 5);
        let h = build(&vectors, params(5));
        assert_eq!(h.reclaim(&|_| true), 200);
        assert!(h.is_empty());
        assert!(h.search(&vectors[0], 5, 40, &|_| true).is_empty());
        h.check_integrity().unwrap();
        for (i, v) in vectors.iter().enumerate() {
            assert!(h.insert(1000 + i as u64, v));
        }
        h.check_integrity().unwrap();
        assert_eq!(h.search(&vectors[7], 1, 40, &|_| true)[0].0, 1007);
    }

    /// A reader that hangs (here: a registration held by the test) holds
    /// back only the reclaim that waits for it: searches and inserts go
    /// on meanwhile, and the deleted slots are not reused until it leaves.
    #[test]
    fn a_hung_reader_holds_back_only_the_reclaim() {
        let vectors = random_unit_vectors(600, 16, 41);
        let h = Arc::new(build(&vectors[..500], params(41)));
        let hung = h.readers.enter();
        let (h2, done) = (h.clone(), Arc::new(AtomicBool::new(false)));
        let done2 = done.clone();
        let reclaimer = std::thread::spawn(move || {
            let n = h2.reclaim(&|l| l < 100);
            done2.store(true, Ordering::Release);
            n
        });
        // The deleted labels are unlinked at once; the reclaim then waits.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while (0..100).any(|l| h.contains(l)) {
            assert!(
                std::time::Instant::now() < until,
                "the reclaim never unlinked"
            );
            std::thread::yield_now();
        }
        for (i, v) in vectors.iter().enumerate().skip(500) {
            assert!(h.insert(i as u64, v), "an insert while the reclaim waits");
            assert_eq!(h.search(v, 1, 40, &|_| true)[0].0, i as u64);
        }
        assert!(
            !done.load(Ordering::Acquire),
            "the reclaim did not wait for the reader"
        );
        assert_eq!(
            h.free_slots(),
            0,
            "no slot freed while a reader may hold it"
        );
        drop(hung);
        assert_eq!(reclaimer.join().unwrap(), 100);
        assert_eq!(h.free_slots(), 100);
        h.check_integrity().unwrap();
    }

    #[test]
    fn an_injected_panic_leaves_the_index_unchanged_and_the_next_reclaim_works() {
        let vectors = random_unit_vectors(300, 16, 43);
        let h = build(&vectors, params(43));
        h.inject_reclaim_panics(1);
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.reclaim(&|l| l < 50)));
        assert!(panicked.is_err());
        assert_eq!(h.len(), 300);
        h.check_integrity().unwrap();
        assert_eq!(h.reclaim(&|l| l < 50), 50);
        h.check_integrity().unwrap();
    }

    /// Searches, scans, inserts, snapshots and reclaims all at once: every
    /// snapshot reads back whole, no search returns a label deleted before
    /// it started, and the graph checks out at the end.
    #[test]
    fn reclaims_run_safely_beside_searches_inserts_and_snapshots() {
        let dim = 16;
        let vectors = Arc::new(random_unit_vectors(6000, dim, 31));
        let h = Arc::new(Hnsw::new(dim, params(31)));
        for (i, v) in vectors.iter().enumerate().take(2000) {
            h.insert(i as u64, v);
        }
        // Labels below this are deleted (and never searched for again).
        let floor = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..2 {
            let (h, vectors, floor, stop) =
                (h.clone(), vectors.clone(), floor.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Acquire) {
                    let q = &vectors[i % vectors.len()];
                    let low = floor.load(Ordering::Acquire);
                    for (l, _) in h.search(q, 10, 40, &|l| l >= low) {
                        assert!(l >= low, "search returned {l}, deleted below {low}");
                    }
                    let labels: Vec<u64> = (low..low + 50).collect();
                    let _ = h.scan(q, &labels, 5);
                    let _ = h.vector(low + 3);
                    i += 7;
                }
            }));
        }
        {
            let (h, stop) = (h.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    let mut buf = Vec::new();
                    h.write_to(&mut buf).unwrap();
                    let r = Hnsw::read_from(&mut buf.as_slice()).unwrap();
                    r.check_integrity().unwrap();
                    n += 1;
                }
                assert!(n > 0);
            }));
        }
        for round in 0..8u64 {
            let base = 2000 + round * 500;
            for (i, v) in vectors.iter().enumerate().skip(base as usize).take(500) {
                h.insert(i as u64, v);
            }
            let low = (round + 1) * 400;
            floor.store(low, Ordering::Release);
            h.reclaim(&|l| l < low);
        }
        stop.store(true, Ordering::Release);
        for t in threads {
            t.join().unwrap();
        }
        h.check_integrity().unwrap();
        assert_eq!(h.len(), 6000 - 3200);
        assert!(
            h.allocated.load(Ordering::Acquire) < 6000,
            "deleted slots were reused"
        );
    }
}
