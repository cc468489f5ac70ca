//! Per-search scratch space, pooled so searches allocate nothing.
//!
//! The visited set is an array of `u16` epoch tags indexed by node id (as in
//! hnswlib's `VisitedListPool`): starting a search bumps the epoch instead of
//! clearing the array, so marking and testing a node is one load or store,
//! and the array is only cleared when the epoch wraps (every 65,535
//! searches).

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;

use parking_lot::Mutex;

/// A heap entry ordered by `key` (then id, for determinism). Candidate heaps
/// use `key = similarity` (best on top); result heaps use
/// `key = -similarity` (worst on top, ready to be evicted).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Keyed {
    pub key: f32,
    pub id: u32,
}

impl Eq for Keyed {}

impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Keyed {
    #[inline]
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.key
            .total_cmp(&other.key)
            .then_with(|| other.id.cmp(&self.id))
    }
}

pub(super) struct Scratch {
    tags: Vec<u16>,
    epoch: u16,
    pub candidates: BinaryHeap<Keyed>,
    pub results: BinaryHeap<Keyed>,
    /// Neighbour ids of the node being expanded.
    pub neighbours: Vec<u32>,
    /// (similarity, id) lists for neighbour selection.
    pub pairs: Vec<(f32, u32)>,
    pub selected: Vec<u32>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            tags: Vec::new(),
            epoch: 0,
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            neighbours: Vec::new(),
            pairs: Vec::new(),
            selected: Vec::new(),
        }
    }

    /// Starts a new visited set covering at least ids `0..n`.
    pub fn begin(&mut self, n: usize) {
        if self.tags.len() < n {
            self.tags.resize(n.next_power_of_two(), 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.tags.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `id` visited; returns true if it was not visited before.
    #[inline(always)]
    pub fn visit(&mut self, id: u32) -> bool {
        let i = id as usize;
        if i >= self.tags.len() {
            // A node inserted after this search began.
            self.tags.resize((i + 1).next_power_of_two(), 0);
        }
        let t = &mut self.tags[i];
        if *t == self.epoch {
            false
        } else {
            *t = self.epoch;
            true
        }
    }

    fn bytes(&self) -> usize {
        self.tags.capacity() * 2
            + (self.candidates.capacity() + self.results.capacity()) * std::mem::size_of::<Keyed>()
            + (self.neighbours.capacity() + self.selected.capacity()) * 4
            + self.pairs.capacity() * 8
    }
}

/// Scratch spaces for concurrent searches; grows to the peak number of
/// concurrent searches and keeps them.
#[derive(Default)]
pub(super) struct ScratchPool {
    free: Mutex<Vec<Scratch>>,
}

impl ScratchPool {
    pub fn get(&self) -> PooledScratch<'_> {
        let s = self.free.lock().pop().unwrap_or_else(Scratch::new);
        PooledScratch {
            pool: self,
            scratch: Some(s),
        }
    }

    pub fn bytes(&self) -> usize {
        self.free.lock().iter().map(|s| s.bytes()).sum()
    }
}

pub(super) struct PooledScratch<'a> {
    pool: &'a ScratchPool,
    scratch: Option<Scratch>,
}

impl std::ops::Deref for PooledScratch<'_> {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        self.scratch.as_ref().expect("scratch present until drop")
    }
}

impl std::ops::DerefMut for PooledScratch<'_> {
    fn deref_mut(&mut self) -> &mut Scratch {
        self.scratch.as_mut().expect("scratch present until drop")
    }
}

impl Drop for PooledScratch<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.scratch.take() {
            self.pool.free.lock().push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_reset_visited_and_survive_wraparound() {
        let mut s = Scratch::new();
        for _ in 0..70_000 {
            s.begin(8);
            assert!(s.visit(3));
            assert!(!s.visit(3));
            assert!(s.visit(100));
        }
    }

    #[test]
    fn keyed_orders_by_key_then_smaller_id_first() {
        let mut h = BinaryHeap::new();
        h.push(Keyed { key: 0.5, id: 9 });
        h.push(Keyed { key: 0.9, id: 4 });
        h.push(Keyed { key: 0.9, id: 2 });
        assert_eq!(h.pop().map(|k| k.id), Some(2));
        assert_eq!(h.pop().map(|k| k.id), Some(4));
        assert_eq!(h.pop().map(|k| k.id), Some(9));
    }
}
