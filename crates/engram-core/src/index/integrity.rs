//! Graph invariant checks ([`Hnsw::check_integrity`]): structure, then
//! findability of every stored vector, in time linear in the graph size.

use std::sync::atomic::Ordering;

use super::hnsw::{link_count, unpack_entry, Hnsw, Quantized};
use super::visited::{Keyed, Scratch};

/// Similarities this close count as equal in the findability check: the
/// SIMD sum of a unit vector with itself can come out a few ulps below a
/// near-duplicate's.
const SAME_SIMILARITY: f32 = 1e-5;

/// Breadth-first walk over ids `0..n` from `start`; `neighbours(id, out)`
/// appends the ids `id` links to. Returns which ids were reached.
fn walk(n: usize, start: u32, neighbours: impl Fn(u32, &mut Vec<u32>)) -> Vec<bool> {
    let mut seen = vec![false; n];
    let mut queue = vec![start];
    seen[start as usize] = true;
    let mut next = Vec::new();
    let mut head = 0;
    while let Some(&id) = queue.get(head) {
        head += 1;
        next.clear();
        neighbours(id, &mut next);
        for &x in &next {
            if !std::mem::replace(&mut seen[x as usize], true) {
                queue.push(x);
            }
        }
    }
    seen
}

/// The level-0 links of nodes `0..n` in compressed form: node `i` links to
/// `targets[offsets[i]..offsets[i + 1]]`.
struct Level0 {
    entry: Option<(u32, usize)>,
    offsets: Vec<usize>,
    targets: Vec<u32>,
}

impl Level0 {
    /// The level-0 links of every node not in `out` (reclaimed nodes,
    /// whose lists count as empty).
    fn copy(h: &Hnsw, out: &std::collections::HashSet<u32>) -> Self {
        let n = h.allocated.load(Ordering::Acquire);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut targets = Vec::with_capacity(n * h.params.m);
        offsets.push(0);
        for id in 0..n as u32 {
            if out.contains(&id) {
                offsets.push(targets.len());
                continue;
            }
            let list = h.store.links(id, 0);
            targets.extend(
                list[1..=link_count(list)]
                    .iter()
                    .map(|w| w.load(Ordering::Acquire)),
            );
            offsets.push(targets.len());
        }
        Level0 {
            entry: unpack_entry(h.entry.load(Ordering::Acquire)),
            offsets,
            targets,
        }
    }
}

impl Hnsw {
    /// Checks the graph invariants; `Err` describes the first violation.
    ///
    /// Structure: every insert completed, every link in range, no
    /// self-links, no duplicate links, degree within the level's maximum,
    /// links only to nodes that have the level, entry point on the top
    /// level, label table and in-link counters consistent. Findability: a
    /// search (with `ef` unbounded) for each stored vector returns its own
    /// label first, or at a similarity equal to the first; see
    /// `check_findable` for how that is decided in linear time.
    ///
    /// Inserts wait while the structure is checked and the level-0 links are
    /// copied (part of the 0.2 s the whole check takes at 100K nodes), so
    /// the check sees a consistent graph even under load; searches never
    /// wait.
    pub fn check_integrity(&self) -> Result<(), String> {
        // Registered as a reader: the findability probes below run outside
        // the gate, and no node they read may be reclaimed meanwhile.
        let _reading = self.readers.enter();
        let (links, skip) = {
            let _gate = self.gate.write();
            self.check_structure()?;
            // Abandoned nodes need not be findable; reclaimed ones are not
            // in the graph.
            let mut skip: std::collections::HashSet<u32> =
                self.abandoned.lock().values().copied().collect();
            let out = self.reclaimed_ids();
            skip.extend(&out);
            (Level0::copy(self, &out), skip)
        };
        self.check_findable(&links, &skip)
    }

    /// The structural checks, on a graph no insert is modifying (under the
    /// exclusive gate, or while loading a snapshot).
    pub(super) fn check_structure(&self) -> Result<(), String> {
        let n = self.allocated.load(Ordering::Acquire);
        // A node is ready, or abandoned by an insert that panicked (to be
        // finished when its label is inserted again).
        let abandoned: std::collections::HashSet<u32> = {
            let ab = self.abandoned.lock();
            let ids = self.label_ids.lock();
            for (label, id) in ab.iter() {
                if ids.get(*label) != Some(*id) || self.store.is_ready(*id) {
                    return Err(format!(
                        "abandoned node {id} (label {label}) is ready or not in the label table"
                    ));
                }
            }
            ab.values().copied().collect()
        };
        // Reclaimed nodes are out of the graph: nothing may link to them,
        // and their own lists and labels no longer count.
        let out = self.reclaimed_ids();
        if let Some(id) = (0..n as u32)
            .find(|&id| !self.store.is_ready(id) && !abandoned.contains(&id) && !out.contains(&id))
        {
            return Err(format!("node {id}: its insert did not complete"));
        }
        let entry = unpack_entry(self.entry.load(Ordering::Acquire));
        let top = match entry {
            // Empty, or every node reclaimed.
            None if n == out.len() => return Ok(()),
            None => return Err(format!("{n} nodes but no entry point")),
            Some((e, top)) => {
                if e as usize >= n {
                    return Err(format!("entry point {e} out of range (nodes: {n})"));
                }
                if out.contains(&e) {
                    return Err(format!("entry point {e} was reclaimed"));
                }
                if self.store.level(e) != top {
                    return Err(format!(
                        "entry point {e} has level {} but top level is {top}",
                        self.store.level(e)
                    ));
                }
                top
            }
        };
        let ids = self.label_ids.lock();
        if ids.len() + out.len() != n {
            return Err(format!(
                "label table has {} entries for {n} nodes, {} of them reclaimed",
                ids.len(),
                out.len()
            ));
        }
        let mut buf = Vec::with_capacity(2 * self.params.m);
        let mut in_links = vec![0u32; n];
        for id in 0..n as u32 {
            if out.contains(&id) {
                continue;
            }
            let label = self.store.label(id);
            if ids.get(label) != Some(id) {
                return Err(format!(
                    "node {id}: label {label} maps to {:?}",
                    ids.get(label)
                ));
            }
            let level = self.store.level(id);
            if level > top {
                return Err(format!(
                    "node {id} has level {level} above the top level {top}"
                ));
            }
            for l in 0..=level {
                let list = self.store.links(id, l);
                let max = if l == 0 {
                    2 * self.params.m
                } else {
                    self.params.m
                };
                if list.len() != max + 1 {
                    return Err(format!(
                        "node {id} level {l}: list has room for {} links, expected {max}",
                        list.len().saturating_sub(1)
                    ));
                }
                let raw = list[0].load(Ordering::Acquire) as usize;
                if raw > max {
                    return Err(format!("node {id} level {l}: degree {raw} > max {max}"));
                }
                buf.clear();
                buf.extend(list[1..=raw].iter().map(|w| w.load(Ordering::Acquire)));
                for &x in &buf {
                    if x as usize >= n {
                        return Err(format!(
                            "node {id} level {l}: link {x} out of range (nodes: {n})"
                        ));
                    }
                    if out.contains(&x) {
                        return Err(format!(
                            "node {id} level {l}: link to node {x}, which was reclaimed"
                        ));
                    }
                    if x == id {
                        return Err(format!("node {id} level {l}: self-link"));
                    }
                    if self.store.level(x) < l {
                        return Err(format!(
                            "node {id} level {l}: link to node {x} whose level is {}",
                            self.store.level(x)
                        ));
                    }
                }
                buf.sort_unstable();
                if let Some(w) = buf.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!("node {id} level {l}: duplicate link {}", w[0]));
                }
                if l == 0 {
                    for &x in &buf {
                        in_links[x as usize] += 1;
                    }
                }
            }
        }
        for (id, &count) in in_links.iter().enumerate() {
            if out.contains(&(id as u32)) {
                continue;
            }
            let recorded = self.store.in_links(id as u32).load(Ordering::Acquire);
            if recorded != count {
                return Err(format!(
                    "node {id}: {count} level-0 in-links, counter says {recorded}"
                ));
            }
        }
        Ok(())
    }

    /// Findability as a search with unbounded `ef` sees it: such a search
    /// visits every node reachable on level 0 from where it starts, and a
    /// stored unit vector is its own most similar vector, so a node is
    /// findable exactly when it is reachable from the start of a search for
    /// its vector. A search starts at the entry point or at a node of an
    /// upper level (where the greedy descent ends), so when every such node can
    /// reach the entry point, "reachable from the entry point" decides it:
    /// two breadth-first walks (forward and over reversed links), no
    /// distance computations. Nodes that fail that test get the exact check:
    /// an early-exit search probe, then a walk from their actual start.
    fn check_findable(
        &self,
        links: &Level0,
        abandoned: &std::collections::HashSet<u32>,
    ) -> Result<(), String> {
        let Some((entry, _)) = links.entry else {
            return Ok(());
        };
        let n = links.offsets.len() - 1;
        let (offsets, targets) = (&links.offsets, &links.targets);
        // The same links reversed: the sources of links to `x` are
        // `sources[starts[x]..starts[x + 1]]`.
        let mut starts = vec![0usize; n + 1];
        for &x in targets {
            starts[x as usize + 1] += 1;
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut sources = vec![0u32; targets.len()];
        for id in 0..n {
            for &x in &targets[offsets[id]..offsets[id + 1]] {
                sources[fill[x as usize]] = id as u32;
                fill[x as usize] += 1;
            }
        }
        let forward = walk(n, entry, |id, out| {
            out.extend_from_slice(&targets[offsets[id as usize]..offsets[id as usize + 1]])
        });
        let backward = walk(n, entry, |id, out| {
            out.extend_from_slice(&sources[starts[id as usize]..starts[id as usize + 1]])
        });
        let starts_reach_entry = (0..n as u32).all(|id| {
            self.store.level(id) == 0 || backward[id as usize] || abandoned.contains(&id)
        });
        let mut s = self.pool.get();
        for id in 0..n as u32 {
            if (forward[id as usize] && starts_reach_entry) || abandoned.contains(&id) {
                continue;
            }
            const PROBE_EF: usize = 64;
            let q = self.store.vector_owned(id);
            let q = &q[..];
            let start = self
                .descend(
                    &Quantized {
                        store: &self.store,
                        q,
                    },
                    0,
                )
                .unwrap_or(entry);
            // `start` can be a node inserted after the links were copied.
            if (forward[id as usize] && backward.get(start as usize) == Some(&true))
                || self.probe(q, id, start, PROBE_EF, &mut s)
                || self.reachable(start, id, &mut s)
            {
                continue;
            }
            return Err(format!(
                "label {} (node {id}) is not findable: it cannot be reached on level 0 from node {start}, where a search for its vector starts",
                self.store.label(id),
            ));
        }
        Ok(())
    }

    /// Whether `target` can be reached from `start` following level-0 links.
    fn reachable(&self, start: u32, target: u32, s: &mut Scratch) -> bool {
        s.begin(self.allocated.load(Ordering::Acquire));
        let mut queue = std::mem::take(&mut s.neighbours);
        queue.clear();
        queue.push(start);
        s.visit(start);
        let mut head = 0;
        let mut found = false;
        while let Some(&n) = queue.get(head) {
            head += 1;
            if n == target {
                found = true;
                break;
            }
            let list = self.store.links(n, 0);
            for w in &list[1..=link_count(list)] {
                let x = w.load(Ordering::Acquire);
                if s.visit(x) {
                    queue.push(x);
                }
            }
        }
        s.neighbours = queue;
        found
    }

    /// Beam search on level 0 that stops as soon as `target` is reached:
    /// true if it was, at a similarity no lower than any node seen.
    fn probe(&self, q: &[f32], target: u32, start: u32, ef: usize, s: &mut Scratch) -> bool {
        s.begin(self.allocated.load(Ordering::Acquire));
        s.candidates.clear();
        s.results.clear();
        let esim = self.store.sim_exact(q, start);
        let mut best = esim;
        if start == target {
            return true;
        }
        s.visit(start);
        s.candidates.push(Keyed {
            key: esim,
            id: start,
        });
        s.results.push(Keyed {
            key: -esim,
            id: start,
        });
        while let Some(c) = s.candidates.pop() {
            if s.results.len() >= ef && s.results.peek().is_some_and(|w| c.key < -w.key) {
                break;
            }
            let list = self.store.links(c.id, 0);
            for w in &list[1..=link_count(list)] {
                let n = w.load(Ordering::Acquire);
                if !s.visit(n) {
                    continue;
                }
                let sim = self.store.sim_exact(q, n);
                if n == target {
                    return sim >= best - SAME_SIMILARITY;
                }
                best = best.max(sim);
                if s.results.len() < ef || s.results.peek().is_some_and(|w| sim > -w.key) {
                    s.candidates.push(Keyed { key: sim, id: n });
                    s.results.push(Keyed { key: -sim, id: n });
                    if s.results.len() > ef {
                        s.results.pop();
                    }
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hnsw::tests::{build, random_unit_vectors};
    use crate::index::HnswParams;

    #[test]
    fn integrity_check_reports_a_broken_link() {
        let vectors = random_unit_vectors(300, 8, 10);
        let h = build(&vectors, HnswParams::default());
        h.check_integrity().unwrap();
        let list = h.store.links(5, 0);
        list[1].store(5, Ordering::Release);
        let err = h.check_integrity().unwrap_err();
        assert!(err.contains("self-link"), "{err}");
    }

    #[test]
    fn integrity_check_reports_an_unreachable_node() {
        let vectors = random_unit_vectors(400, 8, 15);
        let h = build(&vectors, HnswParams::default());
        let victim = (0..400u32).find(|&id| h.store.level(id) == 0).unwrap();
        for id in 0..400u32 {
            let list = h.store.links(id, 0);
            let kept: Vec<u32> = list[1..=link_count(list)]
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .filter(|&x| x != victim)
                .collect();
            Hnsw::write_list(list, &kept);
        }
        h.store.in_links(victim).store(0, Ordering::Relaxed);
        let err = h.check_integrity().unwrap_err();
        assert!(
            err.contains(&format!("node {victim}) is not findable")),
            "{err}"
        );
    }

    #[test]
    fn integrity_check_during_inserts_sees_a_consistent_graph() {
        let vectors = random_unit_vectors(3000, 16, 17);
        let h = crate::index::Hnsw::new(16, HnswParams::default());
        let done = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..2 {
                let (h, vectors, done) = (&h, &vectors, &done);
                s.spawn(move || {
                    for i in (t..vectors.len()).step_by(2) {
                        assert!(h.insert(i as u64, &vectors[i]));
                    }
                    done.fetch_add(1, Ordering::Release);
                });
            }
            s.spawn(|| {
                let mut checks = 0;
                while done.load(Ordering::Acquire) < 2 || checks == 0 {
                    h.check_integrity().unwrap();
                    checks += 1;
                }
            });
        });
        h.check_integrity().unwrap();
    }
}
