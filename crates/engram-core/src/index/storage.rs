//! Growable node storage for the HNSW graph: vectors, link lists, labels,
//! levels and one lock per node.
//!
//! Nodes live in *segments* whose sizes double (1024, 2048, 4096, ... nodes),
//! found through a fixed directory of 23 pointers. A node id maps to
//! (segment, offset) with one `leading_zeros`, segments never move once
//! allocated, and adding a segment never blocks readers: there is no global
//! lock on the read path and no pause when the index grows. The price is
//! that the last segment is up to half empty; its vector and link arrays are
//! allocated without being touched, so the operating system only commits the
//! pages that nodes actually use.
//!
//! Within a segment the data is stored by kind (all vectors contiguously,
//! 64-byte aligned, then all level-0 link lists), so a search that scans a
//! neighbour's vector reads whole cache lines of vector data.
//!
//! # Concurrency contract
//! - A node's vector, label and level are written once by the inserting
//!   thread ([`NodeStore::init`]) *before* its id is published in any link
//!   list; they are immutable afterwards.
//! - Link lists are arrays of `AtomicU32`: slot 0 holds the count, then the
//!   neighbour ids. Writers hold the node's lock, store the ids and then the
//!   count with `Release`; readers take no lock and load with `Acquire`, so
//!   a reader that sees an id also sees the node it names fully written. A
//!   reader racing a rewrite may see a mix of old and new entries; every one
//!   of them is a valid, initialised node id, which is all a search needs
//!   (hnswlib makes the same trade, without the atomics).

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

use parking_lot::{Mutex, MutexGuard};

/// log2 of the first segment's size.
const BASE_SHIFT: u32 = 10;
/// Enough segments to address every `u32` id.
const MAX_SEGMENTS: usize = 23;
/// Vector rows start on cache-line boundaries (for dims that are multiples
/// of 16, every row is then cache-line aligned).
const VECTOR_ALIGN: usize = 64;

/// Largest number of nodes the store can address.
pub(super) const MAX_NODES: u64 = u32::MAX as u64 - (1 << BASE_SHIFT);

pub(super) struct NodeStore {
    dim: usize,
    /// Words per level-0 list: count + `cap0` ids.
    stride0: usize,
    /// Words per upper-level list: count + `cap_upper` ids.
    stride_upper: usize,
    segments: [AtomicPtr<Segment>; MAX_SEGMENTS],
    /// Serialises segment allocation only; readers never take it.
    grow: Mutex<()>,
    upper_words: AtomicUsize,
}

struct Segment {
    cap: usize,
    vectors: NonNull<f32>,
    vectors_layout: Layout,
    links0: NonNull<AtomicU32>,
    links0_layout: Layout,
    labels: Box<[AtomicU64]>,
    levels: Box<[AtomicU8]>,
    /// Per node: `level * stride_upper` words for levels 1..=level, or null.
    upper: Box<[AtomicPtr<AtomicU32>]>,
    locks: Box<[Mutex<()>]>,
    ready: Box<[AtomicBool]>,
    /// Level-0 in-links, kept so pruning never removes a node's last one.
    in_links: Box<[AtomicU32]>,
}

// SAFETY: the raw pointers in `NodeStore`/`Segment` own heap memory that is
// only freed in `Drop`. Shared access follows the contract in the module
// docs: vectors are written once before publication (happens-before every
// reader through the Release/Acquire link stores), everything else is atomic
// or behind a `Mutex`.
unsafe impl Send for NodeStore {}
unsafe impl Sync for NodeStore {}

#[inline(always)]
fn locate(id: u32) -> (usize, usize) {
    let x = u64::from(id) + (1 << BASE_SHIFT);
    let high = 63 - x.leading_zeros();
    ((high - BASE_SHIFT) as usize, (x - (1u64 << high)) as usize)
}

impl NodeStore {
    pub(super) fn new(dim: usize, cap0: usize, cap_upper: usize) -> Self {
        NodeStore {
            dim,
            stride0: 1 + cap0,
            stride_upper: 1 + cap_upper,
            segments: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            grow: Mutex::new(()),
            upper_words: AtomicUsize::new(0),
        }
    }

    /// Makes sure the segment holding `id` exists.
    pub(super) fn ensure(&self, id: u32) {
        let (seg, _) = locate(id);
        if !self.segments[seg].load(Ordering::Acquire).is_null() {
            return;
        }
        let _g = self.grow.lock();
        if self.segments[seg].load(Ordering::Acquire).is_null() {
            let s = Box::new(Segment::new(
                1usize << (BASE_SHIFT as usize + seg),
                self.dim,
                self.stride0,
            ));
            self.segments[seg].store(Box::into_raw(s), Ordering::Release);
        }
    }

    #[inline(always)]
    fn slot(&self, id: u32) -> (&Segment, usize) {
        let (seg, off) = locate(id);
        let p = self.segments[seg].load(Ordering::Acquire);
        assert!(!p.is_null(), "node {id} is not allocated");
        // SAFETY: non-null segment pointers come from `Box::into_raw` in
        // `ensure` and stay valid until `Drop`.
        (unsafe { &*p }, off)
    }

    /// Writes a freshly reserved node.
    ///
    /// # Safety
    /// `id` must have been reserved by the caller (after [`Self::ensure`]),
    /// `init` must be called once per id, and the id must not yet appear in
    /// any link list or entry point, so no other thread reads the vector
    /// while it is written.
    pub(super) unsafe fn init(&self, id: u32, label: u64, level: usize, vector: &[f32]) {
        assert_eq!(vector.len(), self.dim);
        let (s, off) = self.slot(id);
        // SAFETY: `off < s.cap`, the row is inside the allocation, and by the
        // caller's contract no one else accesses it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                vector.as_ptr(),
                s.vectors.as_ptr().add(off * self.dim),
                self.dim,
            );
        }
        s.labels[off].store(label, Ordering::Relaxed);
        s.levels[off].store(level as u8, Ordering::Relaxed);
        if level > 0 {
            let words = level * self.stride_upper;
            let b: Box<[AtomicU32]> = (0..words).map(|_| AtomicU32::new(0)).collect();
            s.upper[off].store(Box::into_raw(b).cast::<AtomicU32>(), Ordering::Release);
            self.upper_words.fetch_add(words, Ordering::Relaxed);
        }
        self.links(id, 0)[0].store(0, Ordering::Release);
    }

    /// The vector of an initialised node.
    #[inline(always)]
    pub(super) fn vector(&self, id: u32) -> &[f32] {
        let (s, off) = self.slot(id);
        // SAFETY: callers only pass ids of initialised nodes (ids reach them
        // through link lists or the entry point, which are published after
        // `init`); the row is inside the allocation and never written again.
        unsafe { std::slice::from_raw_parts(s.vectors.as_ptr().add(off * self.dim), self.dim) }
    }

    /// The link list of `id` at `level`: word 0 is the count, then the ids.
    /// Empty when the node has no such level.
    #[inline(always)]
    pub(super) fn links(&self, id: u32, level: usize) -> &[AtomicU32] {
        let (s, off) = self.slot(id);
        if level == 0 {
            // SAFETY: the level-0 array has `cap * stride0` zeroed words.
            return unsafe {
                std::slice::from_raw_parts(s.links0.as_ptr().add(off * self.stride0), self.stride0)
            };
        }
        if level > usize::from(s.levels[off].load(Ordering::Relaxed)) {
            return &[];
        }
        let p = s.upper[off].load(Ordering::Acquire);
        if p.is_null() {
            return &[];
        }
        // SAFETY: `p` owns `node_level * stride_upper` words and
        // `level <= node_level`.
        unsafe {
            std::slice::from_raw_parts(p.add((level - 1) * self.stride_upper), self.stride_upper)
        }
    }

    #[inline(always)]
    pub(super) fn label(&self, id: u32) -> u64 {
        let (s, off) = self.slot(id);
        s.labels[off].load(Ordering::Relaxed)
    }

    #[inline(always)]
    pub(super) fn level(&self, id: u32) -> usize {
        let (s, off) = self.slot(id);
        usize::from(s.levels[off].load(Ordering::Relaxed))
    }

    /// The lock that serialises writers of this node's link lists.
    pub(super) fn lock(&self, id: u32) -> MutexGuard<'_, ()> {
        let (s, off) = self.slot(id);
        s.locks[off].lock()
    }

    pub(super) fn set_ready(&self, id: u32) {
        let (s, off) = self.slot(id);
        s.ready[off].store(true, Ordering::Release);
    }

    /// Number of level-0 lists that link to this node.
    #[inline]
    pub(super) fn in_links(&self, id: u32) -> &AtomicU32 {
        let (s, off) = self.slot(id);
        &s.in_links[off]
    }

    /// True once the node's insert has completed.
    pub(super) fn is_ready(&self, id: u32) -> bool {
        let (s, off) = self.slot(id);
        s.ready[off].load(Ordering::Acquire)
    }

    /// Bytes held for the first `n` nodes: their vectors and level-0 lists
    /// (the untouched tail of the last segment is not committed memory and
    /// is not counted), the per-node bookkeeping of every allocated segment,
    /// and the upper-level lists.
    pub(super) fn memory_bytes(&self, n: usize) -> usize {
        let per_node = self.dim * 4 + self.stride0 * 4;
        let mut small = 0;
        for seg in &self.segments {
            let p = seg.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: see `slot`.
                let s = unsafe { &*p };
                small += s.cap * (8 + 1 + 8 + std::mem::size_of::<Mutex<()>>() + 1 + 4)
                    + std::mem::size_of::<Segment>();
            }
        }
        n * per_node + small + self.upper_words.load(Ordering::Relaxed) * 4
    }
}

impl Drop for NodeStore {
    fn drop(&mut self) {
        for seg in &self.segments {
            let p = seg.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: created by `Box::into_raw` in `ensure`, freed once.
                let s = unsafe { Box::from_raw(p) };
                for (off, u) in s.upper.iter().enumerate() {
                    let q = u.load(Ordering::Acquire);
                    if !q.is_null() {
                        let words =
                            usize::from(s.levels[off].load(Ordering::Relaxed)) * self.stride_upper;
                        // SAFETY: created in `init` from a boxed slice of
                        // exactly `level * stride_upper` words.
                        drop(unsafe {
                            Box::from_raw(std::ptr::slice_from_raw_parts_mut(q, words))
                        });
                    }
                }
                drop(s);
            }
        }
    }
}

impl Segment {
    fn new(cap: usize, dim: usize, stride0: usize) -> Self {
        // Not zeroed: rows are written by `init` before anyone reads them,
        // and untouched pages of a large allocation are never committed.
        let vectors_layout = Layout::from_size_align((cap * dim).max(1) * 4, VECTOR_ALIGN)
            .expect("vector segment layout");
        // SAFETY: the layout has non-zero size.
        let vectors = NonNull::new(unsafe { alloc::alloc(vectors_layout) }.cast::<f32>())
            .unwrap_or_else(|| alloc::handle_alloc_error(vectors_layout));
        // Zeroed (all-zero bytes are valid `AtomicU32`s); large zeroed
        // allocations come from fresh pages, so this is lazy too.
        let links0_layout = Layout::array::<AtomicU32>(cap * stride0).expect("link segment layout");
        // SAFETY: the layout has non-zero size (`cap`, `stride0` >= 1).
        let links0 =
            NonNull::new(unsafe { alloc::alloc_zeroed(links0_layout) }.cast::<AtomicU32>())
                .unwrap_or_else(|| alloc::handle_alloc_error(links0_layout));
        Segment {
            cap,
            vectors,
            vectors_layout,
            links0,
            links0_layout,
            labels: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            levels: (0..cap).map(|_| AtomicU8::new(0)).collect(),
            upper: (0..cap)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            locks: (0..cap).map(|_| Mutex::new(())).collect(),
            ready: (0..cap).map(|_| AtomicBool::new(false)).collect(),
            in_links: (0..cap).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: both allocations were made in `new` with these layouts.
        unsafe {
            alloc::dealloc(self.vectors.as_ptr().cast(), self.vectors_layout);
            alloc::dealloc(self.links0.as_ptr().cast(), self.links0_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_covers_ids_without_gaps() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1023), (0, 1023));
        assert_eq!(locate(1024), (1, 0));
        assert_eq!(locate(3071), (1, 2047));
        assert_eq!(locate(3072), (2, 0));
        let (seg, off) = locate(MAX_NODES as u32);
        assert!(seg < MAX_SEGMENTS && off < (1usize << (BASE_SHIFT as usize + seg)));
    }
}
