//! Growable node storage for the HNSW graph: vectors, quantized codes, link
//! lists, labels, levels and one lock per node.
//!
//! Nodes live in *segments* whose sizes double (1024, 2048, 4096, ... nodes),
//! found through a fixed directory of 23 pointers. A node id maps to
//! (segment, offset) with one `leading_zeros`, segments never move once
//! allocated, and adding a segment never blocks readers: there is no global
//! lock on the read path and no pause when the index grows. The price is
//! that the last segment is up to half empty; its large arrays are allocated
//! without being touched, so the operating system only commits the pages
//! that nodes actually use.
//!
//! Within a segment the data is stored by kind, each row 64-byte aligned:
//! - the exact `f32` vectors (inserts, re-ranking, snapshots);
//! - the *code rows* searches traverse with: a 16-byte header (label, scale)
//!   and the vector quantized to `i8` (see `distance::quantize`). A 768-d
//!   row is 832 bytes instead of 3,072, and graph search is bound by memory
//!   traffic, so a query touches a quarter of the memory. The label sits in
//!   the row's first cache line, which the search loads anyway, so filters
//!   cost no extra cache miss;
//! - the level-0 link lists.
//!
//! # Concurrency contract
//! - A node's vector, code row and level are written once by the inserting
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
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};

use super::distance::{prefetch, quantize};

/// log2 of the first segment's size.
const BASE_SHIFT: u32 = 10;
/// Enough segments to address every `u32` id.
const MAX_SEGMENTS: usize = 23;
const CACHE_LINE: usize = 64;
/// Code row header: label (u64), scale (f32), 4 bytes unused.
const CODE_HEADER: usize = 16;

/// Largest number of nodes the store can address.
pub(super) const MAX_NODES: u64 = u32::MAX as u64 - (1 << BASE_SHIFT);

pub(super) struct NodeStore {
    dim: usize,
    /// Bytes per code row (header + codes, rounded up to a cache line).
    code_stride: usize,
    /// Words per level-0 list: count + `cap0` ids.
    stride0: usize,
    /// Words per upper-level list: count + `cap_upper` ids.
    stride_upper: usize,
    segments: [AtomicPtr<Segment>; MAX_SEGMENTS],
    /// Serialises segment allocation only; readers never take it.
    grow: Mutex<()>,
    upper_words: AtomicUsize,
}

/// A node's quantized vector: `vector ≈ scale * codes`.
pub(super) struct Code<'a> {
    pub scale: f32,
    pub codes: &'a [i8],
}

/// An owned, cache-line aligned heap block.
struct RawBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl RawBuf {
    /// `zeroed`: all bytes zero (lazily, for large blocks: fresh pages).
    /// Otherwise uninitialised; callers write before they read.
    fn new(bytes: usize, zeroed: bool) -> Self {
        let layout = Layout::from_size_align(bytes.max(1), CACHE_LINE).expect("segment layout");
        // SAFETY: the layout has non-zero size.
        let p = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        let ptr = NonNull::new(p).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        RawBuf { ptr, layout }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct Segment {
    cap: usize,
    /// `cap * dim` f32, uninitialised until `init`.
    vectors: RawBuf,
    /// `cap * code_stride` bytes, uninitialised until `init`.
    codes: RawBuf,
    /// `cap * stride0` zeroed `AtomicU32`.
    links0: RawBuf,
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
// docs: vectors and code rows are written once before publication
// (happens-before every reader through the Release/Acquire link stores),
// everything else is atomic or behind a `Mutex`.
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
            code_stride: (CODE_HEADER + dim).div_ceil(CACHE_LINE) * CACHE_LINE,
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
            let cap = 1usize << (BASE_SHIFT as usize + seg);
            let s = Box::new(Segment {
                cap,
                vectors: RawBuf::new(cap * self.dim * 4, false),
                codes: RawBuf::new(cap * self.code_stride, false),
                // All-zero bytes are valid `AtomicU32`s.
                links0: RawBuf::new(cap * self.stride0 * 4, true),
                levels: (0..cap).map(|_| AtomicU8::new(0)).collect(),
                upper: (0..cap)
                    .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                    .collect(),
                locks: (0..cap).map(|_| Mutex::new(())).collect(),
                ready: (0..cap).map(|_| AtomicBool::new(false)).collect(),
                in_links: (0..cap).map(|_| AtomicU32::new(0)).collect(),
            });
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

    #[inline(always)]
    fn code_row(&self, id: u32) -> *const u8 {
        let (s, off) = self.slot(id);
        // SAFETY: `off < cap`, so the row is inside the allocation.
        unsafe { s.codes.ptr.as_ptr().add(off * self.code_stride) }
    }

    /// Writes a freshly reserved node.
    ///
    /// # Safety
    /// `id` must have been reserved by the caller (after [`Self::ensure`]),
    /// `init` must be called once per id, and the id must not yet appear in
    /// any link list or entry point, so no other thread reads the node
    /// while it is written.
    pub(super) unsafe fn init(&self, id: u32, label: u64, level: usize, vector: &[f32]) {
        assert_eq!(vector.len(), self.dim);
        let (s, off) = self.slot(id);
        let mut codes = vec![0i8; self.dim];
        let scale = quantize(vector, &mut codes);
        // SAFETY: `off < s.cap`, both rows are inside their allocations, and
        // by the caller's contract no one else accesses them yet.
        unsafe {
            let v = s.vectors.ptr.as_ptr().cast::<f32>().add(off * self.dim);
            std::ptr::copy_nonoverlapping(vector.as_ptr(), v, self.dim);
            let row = s.codes.ptr.as_ptr().add(off * self.code_stride);
            row.cast::<[u8; 8]>().write(label.to_le_bytes());
            row.add(8).cast::<[u8; 4]>().write(scale.to_le_bytes());
            row.add(12).cast::<[u8; 4]>().write([0; 4]);
            std::ptr::copy_nonoverlapping(
                codes.as_ptr(),
                row.add(CODE_HEADER).cast::<i8>(),
                self.dim,
            );
        }
        s.levels[off].store(level as u8, Ordering::Relaxed);
        if level > 0 {
            let words = level * self.stride_upper;
            let b: Box<[AtomicU32]> = (0..words).map(|_| AtomicU32::new(0)).collect();
            s.upper[off].store(Box::into_raw(b).cast::<AtomicU32>(), Ordering::Release);
            self.upper_words.fetch_add(words, Ordering::Relaxed);
        }
        self.links(id, 0)[0].store(0, Ordering::Release);
    }

    // The accessors below take ids of initialised nodes only: ids reach
    // callers through link lists or the entry point, which are published
    // after `init`, and the rows they read are never written again.

    /// The exact vector of a node.
    #[inline(always)]
    pub(super) fn vector(&self, id: u32) -> &[f32] {
        let (s, off) = self.slot(id);
        // SAFETY: see above; the row is inside the allocation.
        unsafe {
            std::slice::from_raw_parts(
                s.vectors.ptr.as_ptr().cast::<f32>().add(off * self.dim),
                self.dim,
            )
        }
    }

    /// The quantized vector of a node.
    #[inline(always)]
    pub(super) fn code(&self, id: u32) -> Code<'_> {
        let row = self.code_row(id);
        // SAFETY: see above; header and codes are inside the row.
        unsafe {
            Code {
                scale: f32::from_le_bytes(row.add(8).cast::<[u8; 4]>().read()),
                codes: std::slice::from_raw_parts(row.add(CODE_HEADER).cast::<i8>(), self.dim),
            }
        }
    }

    #[inline(always)]
    pub(super) fn label(&self, id: u32) -> u64 {
        // SAFETY: see above; the label is the row's first 8 bytes.
        u64::from_le_bytes(unsafe { self.code_row(id).cast::<[u8; 8]>().read() })
    }

    /// Rewrites the node's label.
    ///
    /// # Safety
    /// The index must not be shared yet (recovery, before any search or
    /// insert can read the row).
    pub(super) unsafe fn set_label(&self, id: u32, label: u64) {
        // SAFETY: the caller guarantees no concurrent reader; the label is
        // the row's first 8 bytes, inside the allocation.
        unsafe {
            self.code_row(id)
                .cast_mut()
                .cast::<[u8; 8]>()
                .write(label.to_le_bytes())
        }
    }

    /// Hints the CPU to load the node's code row.
    #[inline(always)]
    pub(super) fn prefetch_code(&self, id: u32) {
        let row = self.code_row(id);
        // SAFETY: the whole row is inside the allocation.
        prefetch(unsafe { std::slice::from_raw_parts(row, self.code_stride) });
    }

    /// Hints the CPU to load the first `lines` cache lines of the vector.
    #[inline(always)]
    pub(super) fn prefetch_vector(&self, id: u32, lines: usize) {
        let v = self.vector(id);
        let bytes = (lines * CACHE_LINE).min(v.len() * 4);
        // SAFETY: `bytes` is within the vector.
        prefetch(unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), bytes) });
    }

    /// Hints the CPU to load the node's level-0 list.
    #[inline(always)]
    pub(super) fn prefetch_links0(&self, id: u32) {
        let l = self.links(id, 0);
        // SAFETY: the list's words are inside the allocation.
        prefetch(unsafe { std::slice::from_raw_parts(l.as_ptr().cast::<u8>(), l.len() * 4) });
    }

    /// The link list of `id` at `level`: word 0 is the count, then the ids.
    /// Empty when the node has no such level.
    #[inline(always)]
    pub(super) fn links(&self, id: u32, level: usize) -> &[AtomicU32] {
        let (s, off) = self.slot(id);
        if level == 0 {
            // SAFETY: the level-0 array has `cap * stride0` zeroed words.
            return unsafe {
                std::slice::from_raw_parts(
                    s.links0
                        .ptr
                        .as_ptr()
                        .cast::<AtomicU32>()
                        .add(off * self.stride0),
                    self.stride0,
                )
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

    /// True once the node's insert has completed.
    pub(super) fn is_ready(&self, id: u32) -> bool {
        let (s, off) = self.slot(id);
        s.ready[off].load(Ordering::Acquire)
    }

    /// Number of level-0 lists that link to this node.
    #[inline]
    pub(super) fn in_links(&self, id: u32) -> &AtomicU32 {
        let (s, off) = self.slot(id);
        &s.in_links[off]
    }

    /// Bytes held for the first `n` nodes: their vectors, code rows and
    /// level-0 lists (the untouched tail of the last segment is not
    /// committed memory and is not counted), the per-node bookkeeping of
    /// every allocated segment, and the upper-level lists.
    /// Bytes of `n` nodes' vectors, code rows, and everything else (links,
    /// labels, levels, locks, segment headers).
    pub(super) fn memory_by_kind(&self, n: usize) -> (usize, usize, usize) {
        let vectors = n * self.dim * 4;
        let codes = n * self.code_stride;
        (vectors, codes, self.memory_bytes(n) - vectors - codes)
    }

    pub(super) fn memory_bytes(&self, n: usize) -> usize {
        let per_node = self.dim * 4 + self.code_stride + self.stride0 * 4;
        let per_slot = 1 + 8 + std::mem::size_of::<Mutex<()>>() + 1 + 4;
        let mut small = 0;
        for seg in &self.segments {
            let p = seg.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: see `slot`.
                let s = unsafe { &*p };
                small += s.cap * per_slot + std::mem::size_of::<Segment>();
            }
        }
        n * per_node + small + self.upper_words.load(Ordering::Relaxed) * 4
    }
}

impl Drop for NodeStore {
    fn drop(&mut self) {
        for seg in &self.segments {
            let p = seg.load(Ordering::Acquire);
            if p.is_null() {
                continue;
            }
            // SAFETY: created by `Box::into_raw` in `ensure`, freed once.
            let s = unsafe { Box::from_raw(p) };
            for (off, u) in s.upper.iter().enumerate() {
                let q = u.load(Ordering::Acquire);
                if !q.is_null() {
                    let words =
                        usize::from(s.levels[off].load(Ordering::Relaxed)) * self.stride_upper;
                    // SAFETY: created in `init` from a boxed slice of exactly
                    // `level * stride_upper` words.
                    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(q, words)) });
                }
            }
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
