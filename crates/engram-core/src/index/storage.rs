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
//! Within a segment the data is stored by kind:
//! - the exact `f32` vectors (inserts, re-ranking, snapshots), 64-byte
//!   aligned rows; or, in the *compact* placement, none: the vectors are in
//!   an unnamed file on disk ([`VectorPlacement::Disk`]), read only to
//!   re-score a search's best candidates, and graph building compares code
//!   rows instead;
//! - the *code rows* searches traverse with: a 16-byte header (label, scale)
//!   and the vector quantized to `i8` (see `distance::quantize`), 16-byte
//!   aligned. A 768-d row is 784 bytes instead of 3,072, and graph search is
//!   bound by memory traffic, so a query touches a quarter of the memory.
//!   The label sits in the row's first bytes, which the search loads
//!   anyway, so filters cost no extra cache miss;
//! - the level-0 link lists.
//!
//! # Concurrency contract
//! - A node's vector, code row and level are written once by the inserting
//!   thread ([`NodeStore::init`]) *before* its id is published in any link
//!   list; they are immutable afterwards, until the node is reclaimed
//!   (`Hnsw::reclaim`): unlinked from every list, then, once every reader
//!   that could still hold its id has finished (a grace period), cleared
//!   ([`NodeStore::clear`]) and given to a new node by `init`.
//! - Link lists are arrays of `AtomicU32`: slot 0 holds the count, then the
//!   neighbour ids. Writers hold the node's lock, store the ids and then the
//!   count with `Release`; readers take no lock and load with `Acquire`, so
//!   a reader that sees an id also sees the node it names fully written. A
//!   reader racing a rewrite may see a mix of old and new entries; every one
//!   of them is a valid, initialised node id, which is all a search needs
//!   (hnswlib makes the same trade, without the atomics).

use std::alloc::{self, Layout};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

use parking_lot::{Mutex, MutexGuard};

use super::distance::{dot, dot_i8, dot_i8_i8, prefetch, quantize};

/// log2 of the first segment's size.
const BASE_SHIFT: u32 = 10;
/// Enough segments to address every `u32` id.
const MAX_SEGMENTS: usize = 23;
const CACHE_LINE: usize = 64;
/// Code row header: label (u64), scale (f32), 4 bytes unused.
const CODE_HEADER: usize = 16;
/// Code rows are padded to this (not to a cache line: 784 bytes at 768-d
/// instead of 832, with no measurable cost to searches, which load whole
/// rows anyway).
const CODE_ALIGN: usize = 16;

/// Where an index keeps its exact `f32` vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VectorPlacement {
    /// In RAM beside the code rows: inserts and re-scoring read them there.
    Memory,
    /// In an unnamed file created in this directory (compact mode): RAM holds
    /// code rows and links only. The file is unlinked as soon as it is
    /// created, so it never outlives the process (nothing to clean up after
    /// a crash); the index's snapshot, not this file, is what persists the
    /// vectors.
    Disk(PathBuf),
}

/// A failure of the compact placement's vector file (not of the input being
/// read): what lets a snapshot reader tell "this disk cannot take the
/// vectors" from "this snapshot is corrupt".
#[derive(Debug)]
pub struct VectorFileError(pub io::Error);

impl std::fmt::Display for VectorFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the index's vector file failed: {}", self.0)
    }
}

impl std::error::Error for VectorFileError {}

impl VectorFileError {
    /// Wraps `e` so that [`VectorFileError::is`] recognises it.
    pub fn wrap(e: io::Error) -> io::Error {
        io::Error::new(e.kind(), VectorFileError(e))
    }

    /// True if `e` came from the vector file.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|i| i.is::<VectorFileError>())
    }
}

/// The compact placement's vector file: row `id` at `id * dim * 4`.
struct DiskVectors {
    file: File,
    dir: PathBuf,
    /// Nodes whose vector write failed (their insert was abandoned; a retry
    /// with the vector writes it again).
    missing: Mutex<HashSet<u32>>,
    /// `missing.len()`, read without the lock on the search path.
    missing_count: AtomicUsize,
    /// Fault injection: the next this many writes fail.
    fail_writes: AtomicU32,
    /// Fault injection: the next this many reads fail.
    fail_reads: AtomicU32,
    /// Reads that failed (the caller fell back to the code row).
    read_errors: AtomicU64,
}

thread_local! {
    /// Per-thread buffers for a row read from a vector file: its bytes and
    /// the decoded vector (reused, so a re-scoring read allocates nothing).
    static ROW: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl DiskVectors {
    fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(DiskVectors {
            file: tempfile::tempfile_in(dir)?,
            dir: dir.to_path_buf(),
            missing: Mutex::new(HashSet::new()),
            missing_count: AtomicUsize::new(0),
            fail_writes: AtomicU32::new(0),
            fail_reads: AtomicU32::new(0),
            read_errors: AtomicU64::new(0),
        })
    }

    fn write(&self, id: u32, v: &[f32]) -> io::Result<()> {
        let injected = self
            .fail_writes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        let res = if injected {
            Err(io::Error::other("injected fault: vector file write failed"))
        } else {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.file
                .write_all_at(&bytes, u64::from(id) * bytes.len() as u64)
        };
        let mut missing = self.missing.lock();
        if res.is_ok() {
            missing.remove(&id);
        } else {
            missing.insert(id);
        }
        self.missing_count.store(missing.len(), Ordering::Release);
        res
    }

    /// Reads row `id` and hands it to `f`.
    fn read<R>(&self, id: u32, dim: usize, f: impl FnOnce(&[f32]) -> R) -> io::Result<R> {
        if self
            .fail_reads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(io::Error::other("injected fault: vector file read failed"));
        }
        ROW.with(|row| {
            let (bytes, v) = &mut *row.borrow_mut();
            bytes.resize(dim * 4, 0);
            self.file
                .read_exact_at(bytes, u64::from(id) * (dim * 4) as u64)?;
            v.clear();
            v.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            Ok(f(v))
        })
    }
}

/// Largest number of nodes the store can address.
pub(super) const MAX_NODES: u64 = u32::MAX as u64 - (1 << BASE_SHIFT);

pub(super) struct NodeStore {
    dim: usize,
    /// Bytes per code row (header + codes, rounded up to `CODE_ALIGN`).
    code_stride: usize,
    /// The vector file in the compact placement; `None`: vectors in RAM.
    disk: Option<DiskVectors>,
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
    /// # Errors
    /// Creating the vector file of the [`VectorPlacement::Disk`] placement.
    pub(super) fn new(
        dim: usize,
        cap0: usize,
        cap_upper: usize,
        placement: &VectorPlacement,
    ) -> io::Result<Self> {
        let disk = match placement {
            VectorPlacement::Memory => None,
            VectorPlacement::Disk(dir) => Some(DiskVectors::create(dir)?),
        };
        Ok(NodeStore {
            dim,
            code_stride: (CODE_HEADER + dim).div_ceil(CODE_ALIGN) * CODE_ALIGN,
            disk,
            stride0: 1 + cap0,
            stride_upper: 1 + cap_upper,
            segments: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            grow: Mutex::new(()),
            upper_words: AtomicUsize::new(0),
        })
    }

    /// Where the exact vectors are.
    pub(super) fn placement(&self) -> VectorPlacement {
        match &self.disk {
            None => VectorPlacement::Memory,
            Some(d) => VectorPlacement::Disk(d.dir.clone()),
        }
    }

    fn in_memory_vectors(&self) -> bool {
        self.disk.is_none()
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
                vectors: RawBuf::new(
                    if self.in_memory_vectors() {
                        cap * self.dim * 4
                    } else {
                        0
                    },
                    false,
                ),
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

    /// Writes a freshly reserved node: its code row and level, and its
    /// vector when vectors are in RAM (on disk: [`Self::write_vector`]).
    ///
    /// # Safety
    /// `id` must have been reserved by the caller (after [`Self::ensure`]),
    /// either new or reclaimed and cleared ([`Self::clear`]), and must not
    /// appear in any link list or entry point, so no other thread reads the
    /// node while it is written.
    pub(super) unsafe fn init(&self, id: u32, label: u64, level: usize, vector: &[f32]) {
        assert_eq!(vector.len(), self.dim);
        let (s, off) = self.slot(id);
        let mut codes = vec![0i8; self.dim];
        let scale = quantize(vector, &mut codes);
        // SAFETY: `off < s.cap`, both rows are inside their allocations, and
        // by the caller's contract no one else accesses them yet.
        unsafe {
            if self.in_memory_vectors() {
                let v = s.vectors.ptr.as_ptr().cast::<f32>().add(off * self.dim);
                std::ptr::copy_nonoverlapping(vector.as_ptr(), v, self.dim);
            }
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

    /// Returns a reclaimed node's slot to its state before [`Self::init`]:
    /// not ready, level 0, no upper lists (freed), an empty level-0 list
    /// and no in-links; `init` can then give it to a new node.
    ///
    /// # Safety
    /// No thread may read or write the node any more: it is linked from
    /// nowhere, and every reader that could have reached it before it was
    /// unlinked has finished (`Hnsw::reclaim`'s grace period).
    pub(super) unsafe fn clear(&self, id: u32) {
        let (s, off) = self.slot(id);
        s.ready[off].store(false, Ordering::Release);
        let level = usize::from(s.levels[off].load(Ordering::Relaxed));
        let q = s.upper[off].swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !q.is_null() {
            let words = level * self.stride_upper;
            // SAFETY: created in `init` from a boxed slice of exactly
            // `level * stride_upper` words; no one reads it any more (the
            // caller's contract), and the pointer was taken out above.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(q, words)) });
            self.upper_words.fetch_sub(words, Ordering::Relaxed);
        }
        s.levels[off].store(0, Ordering::Relaxed);
        self.links(id, 0)[0].store(0, Ordering::Release);
        s.in_links[off].store(0, Ordering::Release);
    }

    /// Marks a node as no longer complete (it is being reclaimed).
    pub(super) fn clear_ready(&self, id: u32) {
        let (s, off) = self.slot(id);
        s.ready[off].store(false, Ordering::Release);
    }

    // The accessors below take ids of initialised nodes only: ids reach
    // callers through link lists or the entry point, which are published
    // after `init`, and the rows they read are never written again.

    /// Writes the node's vector to the vector file (compact placement; a
    /// no-op in RAM, where `init` copied it). Writing it again after a
    /// failure is how an abandoned node gets it.
    pub(super) fn write_vector(&self, id: u32, vector: &[f32]) -> io::Result<()> {
        match &self.disk {
            None => Ok(()),
            Some(d) => d.write(id, vector),
        }
    }

    /// True if the node's vector write failed and has not been redone.
    pub(super) fn vector_missing(&self, id: u32) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.missing.lock().contains(&id))
    }

    /// Fault injection: the next `n` vector file writes fail.
    pub(super) fn inject_vector_write_failures(&self, n: u32) {
        if let Some(d) = &self.disk {
            d.fail_writes.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Fault injection: the next `n` vector file reads fail.
    pub(super) fn inject_vector_read_failures(&self, n: u32) {
        if let Some(d) = &self.disk {
            d.fail_reads.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Vector file reads that failed so far (each fell back to the code row).
    pub(super) fn vector_read_errors(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, |d| d.read_errors.load(Ordering::Acquire))
    }

    /// The node's vector rebuilt from its code row (`scale * codes`).
    fn dequantized(&self, id: u32) -> Vec<f32> {
        let c = self.code(id);
        c.codes.iter().map(|&x| f32::from(x) * c.scale).collect()
    }

    /// Runs `f` on the node's exact vector: in place in RAM, read from the
    /// vector file otherwise. A failed read (or a vector never written)
    /// falls back to the code row's approximation, counted and logged: a
    /// search stays answerable when a disk read fails.
    #[inline]
    fn with_vector<R>(&self, id: u32, f: impl FnOnce(&[f32]) -> R) -> R {
        let Some(d) = &self.disk else {
            return f(self.vector(id));
        };
        if d.missing_count.load(Ordering::Acquire) > 0 && d.missing.lock().contains(&id) {
            return f(&self.dequantized(id));
        }
        // `f` runs at most once: inside `read` on success, below otherwise.
        let mut f = Some(f);
        match d.read(id, self.dim, |v| (f.take().expect("called once"))(v)) {
            Ok(r) => r,
            Err(e) => {
                if d.read_errors.fetch_add(1, Ordering::AcqRel) == 0 {
                    tracing::error!(
                        node = id,
                        error = %e,
                        "reading a vector from the compact index's vector file failed; using its code row instead (logged once per index)"
                    );
                }
                (f.take().expect("not yet called"))(&self.dequantized(id))
            }
        }
    }

    /// A copy of the node's exact vector, wherever it is.
    pub(super) fn vector_owned(&self, id: u32) -> Cow<'_, [f32]> {
        if self.in_memory_vectors() {
            Cow::Borrowed(self.vector(id))
        } else {
            Cow::Owned(self.with_vector(id, <[f32]>::to_vec))
        }
    }

    /// Exact similarity of `q` to the node (a disk read in the compact
    /// placement): what searches re-score their best candidates with.
    #[inline]
    pub(super) fn sim_exact(&self, q: &[f32], id: u32) -> f32 {
        self.with_vector(id, |v| dot(q, v))
    }

    /// Similarity of `q` to the node while building the graph: exact in
    /// RAM; on the code row in the compact placement (no disk reads while
    /// inserting).
    #[inline]
    pub(super) fn sim_build(&self, q: &[f32], id: u32) -> f32 {
        if self.in_memory_vectors() {
            dot(q, self.vector(id))
        } else {
            let c = self.code(id);
            dot_i8(q, c.codes) * c.scale
        }
    }

    /// Similarity of two nodes while building the graph (the neighbour
    /// heuristic, pruning): exact in RAM, code row by code row in the
    /// compact placement.
    #[inline]
    pub(super) fn sim_nodes(&self, a: u32, b: u32) -> f32 {
        if self.in_memory_vectors() {
            dot(self.vector(a), self.vector(b))
        } else {
            let (ca, cb) = (self.code(a), self.code(b));
            dot_i8_i8(ca.codes, cb.codes) as f32 * ca.scale * cb.scale
        }
    }

    /// The exact vector of a node in RAM.
    ///
    /// # Panics
    /// In the compact placement (no vectors in RAM): use
    /// [`Self::vector_owned`] or the `sim_*` methods.
    #[inline(always)]
    pub(super) fn vector(&self, id: u32) -> &[f32] {
        assert!(
            self.in_memory_vectors(),
            "vectors of a compact index are on disk"
        );
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
        if !self.in_memory_vectors() {
            return;
        }
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
        let vectors = self.vector_row_bytes() * n;
        let codes = n * self.code_stride;
        (vectors, codes, self.memory_bytes(n) - vectors - codes)
    }

    /// RAM per node for its vector (0 in the compact placement).
    fn vector_row_bytes(&self) -> usize {
        if self.in_memory_vectors() {
            self.dim * 4
        } else {
            0
        }
    }

    /// Bytes of vectors in the vector file (0 with vectors in RAM).
    pub(super) fn disk_bytes(&self, n: usize) -> usize {
        if self.in_memory_vectors() {
            0
        } else {
            n * self.dim * 4
        }
    }

    pub(super) fn memory_bytes(&self, n: usize) -> usize {
        let per_node = self.vector_row_bytes() + self.code_stride + self.stride0 * 4;
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
