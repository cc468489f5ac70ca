//! Binary snapshot of an [`Hnsw`]: parameters, graph, labels and vectors.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "ENGRHNSW" | version u32 = 1
//! dim u32 | m u32 | ef_construction u32 | ef_search u32 | seed u64
//! nodes u64 | entry u64 (level << 32 | id, or u64::MAX when empty)
//! per node, in id order:
//!     label u64 | level u8 (bit 7 set: the node's insert panicked and is
//!                            finished when its label is inserted again)
//!     per level 0..=level: count u32 | count x id u32
//!     dim x f32
//! crc32 u32 of every byte above
//! ```
//!
//! The reader validates every count and id against the header as it goes
//! (so corrupt input can neither panic nor allocate without bound), checks
//! the CRC at the end and the graph structure after that. It reads exactly
//! the snapshot's bytes, with no read-ahead, so a snapshot can be embedded in
//! a larger stream; wrap a file in a `BufReader` for speed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;

use super::hnsw::{link_count, pack_entry, unpack_entry, Hnsw, HnswParams, MAX_LEVEL, NO_ENTRY};
use super::labels::LabelTable;
use super::storage::{VectorFileError, VectorPlacement, MAX_NODES};

const MAGIC: &[u8; 8] = b"ENGRHNSW";
const VERSION: u32 = 1;
/// Sanity bounds for header fields, far above any real use.
const MAX_DIM: u32 = 1 << 16;
const MAX_M: u32 = 1 << 12;
const MAX_EF: u32 = 1 << 24;

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<'a> {
    inner: &'a mut dyn Read,
    crc: crc32fast::Hasher,
}

impl CrcReader<'_> {
    fn bytes<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.exact(&mut b)?;
        Ok(b)
    }
    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt HNSW snapshot: {msg}"),
    )
}

/// Link lists of every node, copied while inserts are held off.
struct LinkSnapshot {
    nodes: usize,
    entry: u64,
    /// Per node and level: count, then the ids.
    words: Vec<u32>,
    /// Abandoned nodes (see [`Hnsw::insert`]).
    abandoned: std::collections::HashSet<u32>,
    /// Compacted: the index's node id of each written node (else the
    /// written ids are the index's).
    ids: Option<Vec<u32>>,
    /// Each node's level, as the lists were copied (a reclaimed node's
    /// slot can be reused, with another level, while the copy is written).
    levels: Vec<u8>,
    /// Nodes reclaimed when the lists were copied: out of the graph.
    out: std::collections::HashSet<u32>,
}

/// Bit of the level byte that marks an abandoned node.
const ABANDONED_BIT: u8 = 0x80;

impl Hnsw {
    /// Writes the whole index (see the module docs for the format).
    ///
    /// Inserts wait while the link lists are copied (a memcpy-sized pause);
    /// vectors, labels and levels never change once written, so they are
    /// streamed afterwards with inserts running again. Searches never wait.
    ///
    /// # Errors
    /// Any error of `w`.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        self.write_compacted(w, &|_| true)
    }

    /// Whether `label` is one [`Hnsw::retire_labels_above`] gave a retired
    /// node (no episode has it).
    pub fn is_retired_label(label: u64) -> bool {
        label > u64::MAX - MAX_NODES
    }

    /// [`Hnsw::write_to`], leaving out every node whose label `keep`
    /// refuses (a forgotten or expired memory's, a retired one): the
    /// written index holds only the rest, renumbered, and reading it back
    /// reclaims the dropped nodes' space. The graph is repaired where nodes
    /// went, as FreshDiskANN consolidates deletes: a kept node that linked
    /// to a dropped one takes the dropped node's kept neighbours (two hops
    /// through dropped nodes) as candidates beside its own, re-selected with
    /// the insert's diversity heuristic; a kept node left without a level-0
    /// in-link gets one from its most similar neighbour, and a dropped
    /// entry point is replaced by a kept node of the highest level. With
    /// nothing to drop it writes what `write_to` writes.
    ///
    /// # Errors
    /// Any error of `w`.
    pub fn write_compacted(&self, w: &mut dyn Write, keep: &dyn Fn(u64) -> bool) -> io::Result<()> {
        // Registered as a reader until the last vector is written: no node
        // read here may be reclaimed (and its slot reused) meanwhile.
        let _reading = self.readers.enter();
        // A node whose insert panicked is finished now if it can be; one
        // that panics again is written as abandoned.
        self.finish_abandoned();
        let snap = self.snapshot_links();
        let n = snap.nodes;
        // Reclaimed nodes are never written (nor their rows read: a free
        // slot may be taken by an insert while this runs).
        let kept: Vec<bool> = (0..n as u32)
            .map(|id| !snap.out.contains(&id) && keep(self.store.label(id)))
            .collect();
        if kept.iter().all(|&k| k) {
            return self.write_snapshot(&snap, w);
        }
        let compacted = self.compact(&snap, &kept);
        self.write_snapshot(&compacted, w)
    }

    /// The link snapshot without the nodes `kept` refuses (see
    /// [`Hnsw::write_compacted`]).
    fn compact(&self, snap: &LinkSnapshot, kept: &[bool]) -> LinkSnapshot {
        let n = snap.nodes;
        // Where each node's lists start in `snap.words`.
        let mut start = Vec::with_capacity(n);
        let mut pos = 0;
        for id in 0..n {
            start.push(pos);
            for _ in 0..=snap.levels[id] {
                pos += 1 + snap.words[pos] as usize;
            }
        }
        let list = |id: u32, l: usize| -> &[u32] {
            let mut p = start[id as usize];
            for _ in 0..l {
                p += 1 + snap.words[p] as usize;
            }
            &snap.words[p + 1..=p + snap.words[p] as usize]
        };
        let order: Vec<u32> = (0..n as u32).filter(|&id| kept[id as usize]).collect();
        let mut new_id = vec![u32::MAX; n];
        for (i, &id) in order.iter().enumerate() {
            new_id[id as usize] = i as u32;
        }
        let mut lists: Vec<Vec<Vec<u32>>> = Vec::with_capacity(order.len());
        let mut chosen = Vec::new();
        let gone = |x: u32| !kept[x as usize];
        for &id in &order {
            let level = usize::from(snap.levels[id as usize]);
            let mut own = Vec::with_capacity(level + 1);
            for l in 0..=level {
                let links = list(id, l);
                let max = if l == 0 {
                    2 * self.params.m
                } else {
                    self.params.m
                };
                if links.iter().all(|&x| kept[x as usize]) {
                    own.push(links.to_vec());
                    continue;
                }
                self.reselect_around(id, links, max, &|x| list(x, l).to_vec(), &gone, &mut chosen);
                own.push(chosen.clone());
            }
            lists.push(own);
        }
        // Every kept node keeps a level-0 in-link (the insert's own
        // invariant): one left without gets it from its most similar
        // out-neighbour, which makes room by its least similar neighbour
        // that has another in-link when its list is full.
        let mut in_links = vec![0u32; n];
        for own in &lists {
            for &x in &own[0] {
                in_links[x as usize] += 1;
            }
        }
        let entry_old = unpack_entry(snap.entry).map(|(e, _)| e);
        for i in 0..order.len() {
            let u = order[i];
            if in_links[u as usize] > 0 || Some(u) == entry_old && kept[u as usize] {
                continue;
            }
            let mut outs: Vec<(f32, u32)> = lists[i][0]
                .iter()
                .map(|&r| (self.store.sim_nodes(u, r), r))
                .collect();
            outs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, r) in &outs {
                let r_list = &mut lists[new_id[r as usize] as usize][0];
                if r_list.contains(&u) {
                    break;
                }
                if r_list.len() < 2 * self.params.m {
                    r_list.push(u);
                    in_links[u as usize] += 1;
                    break;
                }
                let victim = r_list
                    .iter()
                    .enumerate()
                    .filter(|(_, &x)| in_links[x as usize] > 1)
                    .map(|(j, &x)| (self.store.sim_nodes(r, x), j, x))
                    .min_by(|a, b| a.0.total_cmp(&b.0));
                if let Some((_, j, x)) = victim {
                    in_links[x as usize] -= 1;
                    r_list[j] = u;
                    in_links[u as usize] += 1;
                    break;
                }
            }
        }
        let entry = match unpack_entry(snap.entry) {
            None => NO_ENTRY,
            Some((e, level)) if kept[e as usize] => pack_entry(new_id[e as usize], level),
            Some(_) => order
                .iter()
                .map(|&id| (usize::from(snap.levels[id as usize]), std::cmp::Reverse(id)))
                .max()
                .map_or(NO_ENTRY, |(level, std::cmp::Reverse(id))| {
                    pack_entry(new_id[id as usize], level)
                }),
        };
        let mut words = Vec::with_capacity(order.len() * (1 + 2 * self.params.m));
        for own in &lists {
            for l in own {
                words.push(l.len() as u32);
                words.extend(l.iter().map(|&x| new_id[x as usize]));
            }
        }
        LinkSnapshot {
            nodes: order.len(),
            entry,
            words,
            abandoned: snap
                .abandoned
                .iter()
                .filter(|&&id| kept[id as usize])
                .map(|&id| new_id[id as usize])
                .collect(),
            levels: order.iter().map(|&id| snap.levels[id as usize]).collect(),
            out: Default::default(),
            ids: Some(order),
        }
    }

    /// Writes a link snapshot with the nodes' labels, levels and vectors.
    fn write_snapshot(&self, snap: &LinkSnapshot, w: &mut dyn Write) -> io::Result<()> {
        let mut out = CrcWriter {
            inner: io::BufWriter::with_capacity(1 << 20, w),
            crc: crc32fast::Hasher::new(),
        };
        let p = &self.params;
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        for v in [self.dim, p.m, p.ef_construction, p.ef_search] {
            let v = u32::try_from(v).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("HNSW parameter {v} does not fit the snapshot format"),
                )
            })?;
            out.write_all(&v.to_le_bytes())?;
        }
        out.write_all(&p.seed.to_le_bytes())?;
        out.write_all(&(snap.nodes as u64).to_le_bytes())?;
        out.write_all(&snap.entry.to_le_bytes())?;
        let mut pos = 0;
        let mut bytes = Vec::with_capacity(self.dim * 4);
        for i in 0..snap.nodes as u32 {
            // The node's id in this index (they differ once compacted).
            let id = snap.ids.as_ref().map_or(i, |ids| ids[i as usize]);
            let level = usize::from(snap.levels[i as usize]);
            out.write_all(&self.store.label(id).to_le_bytes())?;
            let flag = if snap.abandoned.contains(&i) {
                ABANDONED_BIT
            } else {
                0
            };
            out.write_all(&[level as u8 | flag])?;
            for _ in 0..=level {
                let count = snap.words[pos] as usize;
                bytes.clear();
                for x in &snap.words[pos..=pos + count] {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
                out.write_all(&bytes)?;
                pos += 1 + count;
            }
            bytes.clear();
            for x in self.store.vector_owned(id).iter() {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            out.write_all(&bytes)?;
        }
        let crc = out.crc.finalize();
        let mut inner = out.inner;
        inner.write_all(&crc.to_le_bytes())?;
        inner.flush()
    }

    fn snapshot_links(&self) -> LinkSnapshot {
        // Exclusive gate: no insert is in flight, so nodes `0..allocated` are
        // complete and no link list changes while it is copied.
        let _gate = self.gate.write();
        let nodes = self.allocated.load(Ordering::Acquire);
        let entry = self.entry.load(Ordering::Acquire);
        let mut words = Vec::with_capacity(nodes * (1 + 2 * self.params.m));
        let mut levels = Vec::with_capacity(nodes);
        for id in 0..nodes as u32 {
            let level = self.store.level(id);
            levels.push(level as u8);
            for l in 0..=level {
                let list = self.store.links(id, l);
                let count = link_count(list);
                words.push(count as u32);
                words.extend(list[1..=count].iter().map(|w| w.load(Ordering::Acquire)));
            }
        }
        LinkSnapshot {
            nodes,
            entry,
            words,
            abandoned: self.abandoned.lock().values().copied().collect(),
            ids: None,
            levels,
            out: self.reclaimed_ids(),
        }
    }

    /// Reads an index written by [`Hnsw::write_to`], with its vectors in RAM.
    ///
    /// # Errors
    /// `InvalidData` for a wrong magic or version, out-of-range fields, a
    /// checksum mismatch or a graph that fails the structural checks;
    /// `UnexpectedEof` for truncated input; any error of `r`.
    pub fn read_from(r: &mut dyn Read) -> io::Result<Self> {
        Self::read_from_with(r, &VectorPlacement::Memory)
    }

    /// Reads an index written by [`Hnsw::write_to`] into the given vector
    /// placement (the file format does not depend on it: a snapshot of a
    /// compact index holds its vectors like any other).
    ///
    /// # Errors
    /// As [`Hnsw::read_from`]; errors creating or writing the vector file
    /// are wrapped in a [`VectorFileError`] (see [`VectorFileError::is`]).
    pub fn read_from_with(r: &mut dyn Read, placement: &VectorPlacement) -> io::Result<Self> {
        let mut rd = CrcReader {
            inner: r,
            crc: crc32fast::Hasher::new(),
        };
        if &rd.bytes::<8>()? != MAGIC {
            return Err(invalid("bad magic (not an engram HNSW snapshot)".into()));
        }
        let version = rd.u32()?;
        if version != VERSION {
            return Err(invalid(format!(
                "version {version}, this build reads version {VERSION}"
            )));
        }
        let dim = rd.u32()?;
        let m = rd.u32()?;
        let ef_construction = rd.u32()?;
        let ef_search = rd.u32()?;
        let seed = rd.u64()?;
        if dim == 0 || dim > MAX_DIM {
            return Err(invalid(format!("dimension {dim} outside 1..={MAX_DIM}")));
        }
        if !(2..=MAX_M).contains(&m) {
            return Err(invalid(format!("m {m} outside 2..={MAX_M}")));
        }
        if ef_construction == 0 || ef_construction > MAX_EF || ef_search > MAX_EF {
            return Err(invalid(format!(
                "ef_construction {ef_construction} / ef_search {ef_search} out of range"
            )));
        }
        let nodes = rd.u64()?;
        if nodes > MAX_NODES {
            return Err(invalid(format!(
                "{nodes} nodes, at most {MAX_NODES} supported"
            )));
        }
        let entry = rd.u64()?;
        let entry_ok = if nodes == 0 {
            entry == NO_ENTRY
        } else {
            entry != NO_ENTRY
                && (entry as u32 as u64) < nodes
                && (entry >> 32) as usize <= MAX_LEVEL
        };
        if !entry_ok {
            return Err(invalid(format!(
                "entry point {entry:#x} invalid for {nodes} nodes"
            )));
        }
        let (dim, m) = (dim as usize, m as usize);
        let params = HnswParams {
            m,
            ef_construction: ef_construction as usize,
            ef_search: ef_search as usize,
            seed,
        };
        let h = Hnsw::with_placement(dim, params, placement).map_err(VectorFileError::wrap)?;
        let mut ids = LabelTable::with_capacity(nodes.min(1 << 20) as usize);
        let mut bytes = vec![0u8; dim * 4];
        let mut vector = vec![0f32; dim];
        let mut links: Vec<Vec<u32>> = Vec::new();
        let mut abandoned: HashMap<u64, u32> = HashMap::new();
        for id in 0..nodes as u32 {
            let label = rd.u64()?;
            let byte = rd.bytes::<1>()?[0];
            let level = usize::from(byte & !ABANDONED_BIT);
            if level > MAX_LEVEL {
                return Err(invalid(format!("node {id}: level {level} > {MAX_LEVEL}")));
            }
            links.resize_with(level + 1, Vec::new);
            for (l, list) in links.iter_mut().enumerate().take(level + 1) {
                let count = rd.u32()? as usize;
                let max = if l == 0 { 2 * m } else { m };
                if count > max {
                    return Err(invalid(format!(
                        "node {id} level {l}: {count} links, at most {max}"
                    )));
                }
                bytes.resize(count * 4, 0);
                rd.exact(&mut bytes)?;
                list.clear();
                list.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
                if let Some(&x) = list.iter().find(|&&x| u64::from(x) >= nodes) {
                    return Err(invalid(format!(
                        "node {id} level {l}: link {x} out of range"
                    )));
                }
            }
            bytes.resize(dim * 4, 0);
            rd.exact(&mut bytes)?;
            for (v, c) in vector.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            if !ids.insert(label, id) {
                return Err(invalid(format!("label {label} appears twice")));
            }
            h.store.ensure(id);
            // SAFETY: `h` is not shared yet and each id is initialised once.
            unsafe { h.store.init(id, label, level, &vector) };
            h.store
                .write_vector(id, &vector)
                .map_err(VectorFileError::wrap)?;
            for (l, list) in links.iter().enumerate().take(level + 1) {
                let words = h.store.links(id, l);
                for (w, &x) in words[1..].iter().zip(list) {
                    w.store(x, Ordering::Relaxed);
                }
                words[0].store(list.len() as u32, Ordering::Release);
            }
            if byte & ABANDONED_BIT == 0 {
                h.store.set_ready(id);
            } else {
                abandoned.insert(label, id);
            }
        }
        let computed = rd.crc.clone().finalize();
        let mut stored = [0u8; 4];
        rd.inner.read_exact(&mut stored)?;
        if u32::from_le_bytes(stored) != computed {
            return Err(invalid("checksum mismatch".into()));
        }
        if nodes > 0 && h.store.level(entry as u32) != (entry >> 32) as usize {
            return Err(invalid("entry point level does not match its node".into()));
        }
        for id in 0..nodes as u32 {
            let list = h.store.links(id, 0);
            for w in &list[1..=link_count(list)] {
                h.store
                    .in_links(w.load(Ordering::Relaxed))
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        *h.label_ids.lock() = ids;
        h.allocated.store(nodes as usize, Ordering::Release);
        h.len
            .store(nodes as usize - abandoned.len(), Ordering::Release);
        *h.abandoned.lock() = abandoned;
        h.entry.store(
            if nodes == 0 {
                NO_ENTRY
            } else {
                pack_entry(entry as u32, (entry >> 32) as usize)
            },
            Ordering::Release,
        );
        h.check_structure().map_err(invalid)?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hnsw::tests::{build, random_unit_vectors};

    fn snapshot(h: &Hnsw) -> Vec<u8> {
        let mut buf = Vec::new();
        h.write_to(&mut buf).unwrap();
        buf
    }

    /// Drops `share` of 3,000 nodes at random and checks the compacted
    /// index read back: only the kept labels, a sound and fully findable
    /// graph, and recall@10 against exact search over the kept vectors.
    fn compaction_keeps_a_searchable_graph(share: f64, seed: u64) {
        use crate::index::hnsw::tests::brute_force;
        let vectors = random_unit_vectors(3000, 32, seed);
        let params = HnswParams {
            m: 8,
            ef_construction: 60,
            ef_search: 40,
            seed,
        };
        let h = build(&vectors, params);
        let dropped = |label: u64| {
            let x = (label ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
            (x as f64 / (1u64 << 53) as f64) < share
        };
        let mut buf = Vec::new();
        h.write_compacted(&mut buf, &|l| !dropped(l)).unwrap();
        let r = Hnsw::read_from(&mut buf.as_slice()).unwrap();
        let kept: Vec<u64> = (0..3000).filter(|&l| !dropped(l)).collect();
        let mut labels = r.labels();
        labels.sort_unstable();
        assert_eq!(
            labels, kept,
            "the compacted index holds exactly the kept labels"
        );
        r.check_integrity()
            .unwrap_or_else(|e| panic!("compacted at {share}: {e}"));
        // Against the uncompacted index searched with the dropped nodes
        // filtered out (what recall did before the snapshot), at the same
        // breadth.
        let queries = random_unit_vectors(200, 32, seed + 1);
        let (mut hits, mut hits_before) = (0, 0);
        for q in &queries {
            let truth = brute_force(&vectors, q, 10, |l| !dropped(l));
            let found = |got: Vec<(u64, f32)>| {
                got.iter()
                    .filter(|(l, _)| truth.iter().any(|(t, _)| t == l))
                    .count()
            };
            hits += found(r.search(q, 10, 40, &|_| true));
            hits_before += found(h.search(q, 10, 40, &|l| !dropped(l)));
        }
        let (recall, before) = (hits as f64 / 2000.0, hits_before as f64 / 2000.0);
        assert!(
            recall >= before - 0.02,
            "recall@10 after dropping {share}: {recall}, before compaction {before}"
        );
        // Compacting again with nothing more to drop changes nothing.
        let mut again = Vec::new();
        r.write_compacted(&mut again, &|_| true).unwrap();
        assert_eq!(again, snapshot(&r));
    }

    #[test]
    fn compaction_drops_nodes_and_keeps_the_graph_searchable() {
        for (share, seed) in [(0.05, 1), (0.3, 2), (0.7, 3), (0.95, 4)] {
            compaction_keeps_a_searchable_graph(share, seed);
        }
    }

    #[test]
    fn compaction_of_everything_writes_an_empty_index() {
        let vectors = random_unit_vectors(50, 8, 9);
        let h = build(&vectors, HnswParams::default());
        let mut buf = Vec::new();
        h.write_compacted(&mut buf, &|_| false).unwrap();
        let r = Hnsw::read_from(&mut buf.as_slice()).unwrap();
        assert!(r.is_empty());
        assert!(r.search(&vectors[0], 5, 10, &|_| true).is_empty());
    }

    #[test]
    fn round_trip_gives_identical_searches() {
        let vectors = random_unit_vectors(1500, 24, 11);
        let params = HnswParams {
            m: 12,
            ef_construction: 80,
            ef_search: 40,
            seed: 5,
        };
        let h = build(&vectors, params.clone());
        let buf = snapshot(&h);
        let r = Hnsw::read_from(&mut buf.as_slice()).unwrap();
        assert_eq!(r.params(), &params);
        assert_eq!(r.dim(), 24);
        assert_eq!(r.len(), h.len());
        assert_eq!(r.labels(), h.labels());
        r.check_integrity().unwrap();
        for q in random_unit_vectors(50, 24, 12) {
            assert_eq!(
                r.search(&q, 10, 40, &|_| true),
                h.search(&q, 10, 40, &|_| true)
            );
        }
        assert_eq!(snapshot(&r), buf, "a loaded index writes the same bytes");
        // The loaded index keeps working like the original.
        assert!(!r.insert(3, &vectors[0]));
        assert!(r.insert(10_000, &vectors[0]));
        r.check_integrity().unwrap();
    }

    #[test]
    fn snapshots_taken_during_inserts_are_consistent() {
        let vectors = random_unit_vectors(2000, 16, 16);
        let h = Hnsw::new(16, HnswParams::default());
        let snaps = std::thread::scope(|s| {
            for t in 0..2 {
                let (h, vectors) = (&h, &vectors);
                s.spawn(move || {
                    for i in (t..vectors.len()).step_by(2) {
                        assert!(h.insert(i as u64, &vectors[i]));
                    }
                });
            }
            s.spawn(|| (0..4).map(|_| snapshot(&h)).collect::<Vec<_>>())
                .join()
                .unwrap()
        });
        for buf in snaps {
            let r = Hnsw::read_from(&mut buf.as_slice()).unwrap();
            r.check_integrity().unwrap();
            for label in r.labels() {
                let v = &vectors[label as usize];
                assert_eq!(r.search(v, 1, 64, &|_| true)[0].0, label);
            }
        }
    }

    #[test]
    fn empty_index_round_trips() {
        let h = Hnsw::new(7, HnswParams::default());
        let r = Hnsw::read_from(&mut snapshot(&h).as_slice()).unwrap();
        assert!(r.is_empty());
        assert_eq!(r.dim(), 7);
        assert!(r.insert(1, &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn snapshot_is_read_exactly_leaving_trailing_bytes() {
        let h = build(&random_unit_vectors(50, 8, 13), HnswParams::default());
        let mut buf = snapshot(&h);
        buf.extend_from_slice(b"tail");
        let mut rd = buf.as_slice();
        Hnsw::read_from(&mut rd).unwrap();
        assert_eq!(rd, b"tail");
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error_not_a_panic() {
        let h = build(
            &random_unit_vectors(60, 8, 14),
            HnswParams {
                m: 4,
                ..HnswParams::default()
            },
        );
        let buf = snapshot(&h);
        for len in 0..buf.len() {
            assert!(
                Hnsw::read_from(&mut &buf[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        for pos in 0..buf.len() {
            for bit in [0u8, 3, 7] {
                let mut bad = buf.clone();
                bad[pos] ^= 1 << bit;
                let err = Hnsw::read_from(&mut bad.as_slice()).err();
                assert!(err.is_some(), "flipped bit {bit} of byte {pos} accepted");
            }
        }
        let err = Hnsw::read_from(&mut &b"not a snapshot at all"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn huge_counts_in_the_header_do_not_allocate() {
        let h = Hnsw::new(4, HnswParams::default());
        let mut buf = snapshot(&h);
        // nodes field: after magic(8) version(4) 4 x u32 seed(8).
        let at = 8 + 4 + 16 + 8;
        buf[at..at + 8].copy_from_slice(&(MAX_NODES).to_le_bytes());
        buf[at + 8..at + 16].copy_from_slice(&0u64.to_le_bytes());
        let err = Hnsw::read_from(&mut buf.as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
