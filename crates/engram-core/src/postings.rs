//! A space's inverted index of tags and metadata: for each tag, and each
//! metadata (key, value), the sequences of the live memories that have it,
//! ascending. Recall asks it which memories a filter admits
//! ([`Postings::admitted`]), so that a selective filter is answered by an
//! exact scan of just those memories instead of a graph search that would
//! have to wade through the rest (docs/design/filters.md).
//!
//! It is derived data: built from the episodes as they are applied (by the
//! commit thread, and by recovery from the snapshot and the WAL), so it is
//! persisted and recovered with them, and never written on its own.

use std::collections::HashMap;

use crate::model::{MemoryFilter, StoredEpisode};

/// Tag and metadata postings of one space.
#[derive(Debug, Default)]
pub struct Postings {
    tags: HashMap<String, Vec<u64>>,
    /// key -> value -> sequences.
    metadata: HashMap<String, HashMap<String, Vec<u64>>>,
    /// Sequences held in all lists together.
    entries: usize,
}

/// Which memories a filter admits, as far as the postings can tell.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Only these sequences (ascending) can match: the filter's positive
    /// conditions (tags all/any, metadata) narrowed it to them. Each still
    /// has to be checked against the whole filter (tags_none) and liveness.
    Only(Vec<u64>),
    /// The filter has no positive condition: every memory except these
    /// (ascending; those with a `tags_none` tag) can match.
    AllBut(Vec<u64>),
}

impl Postings {
    /// Adds a memory that was just applied. Sequences arrive ascending.
    pub fn add(&mut self, e: &StoredEpisode) {
        let seq = e.server_sequence;
        for t in &e.tags {
            let list = self.tags.entry(t.clone()).or_default();
            // The same tag twice on one episode is listed once.
            if list.last() != Some(&seq) {
                push_sorted(list, seq);
                self.entries += 1;
            }
        }
        for (k, v) in &e.metadata {
            let list = self
                .metadata
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default();
            push_sorted(list, seq);
            self.entries += 1;
        }
    }

    /// Removes a forgotten memory.
    pub fn remove(&mut self, e: &StoredEpisode) {
        let seq = e.server_sequence;
        for t in &e.tags {
            if let Some(list) = self.tags.get_mut(t) {
                if let Ok(i) = list.binary_search(&seq) {
                    list.remove(i);
                    self.entries -= 1;
                }
                if list.is_empty() {
                    self.tags.remove(t);
                }
            }
        }
        for (k, v) in &e.metadata {
            if let Some(values) = self.metadata.get_mut(k) {
                if let Some(list) = values.get_mut(v) {
                    if let Ok(i) = list.binary_search(&seq) {
                        list.remove(i);
                        self.entries -= 1;
                    }
                    if list.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.metadata.remove(k);
                }
            }
        }
    }

    /// Bytes the lists hold (their sequences; the keys are counted once
    /// per distinct tag or value).
    pub fn bytes(&self) -> usize {
        let keys: usize = self.tags.keys().map(String::len).sum::<usize>()
            + self
                .metadata
                .iter()
                .map(|(k, vs)| k.len() + vs.keys().map(String::len).sum::<usize>())
                .sum::<usize>();
        self.entries * std::mem::size_of::<u64>() + keys
    }

    /// The memories `f` can admit (see [`Admitted`]). Cost: the lengths of
    /// the lists the filter names.
    pub fn admitted(&self, f: &MemoryFilter) -> Admitted {
        let mut sets: Vec<Vec<u64>> = Vec::new();
        for t in &f.tags_all {
            sets.push(self.tags.get(t).cloned().unwrap_or_default());
        }
        if !f.tags_any.is_empty() {
            let lists: Vec<&[u64]> = f
                .tags_any
                .iter()
                .filter_map(|t| self.tags.get(t).map(Vec::as_slice))
                .collect();
            sets.push(union(&lists));
        }
        for c in &f.metadata {
            let lists: Vec<&[u64]> = match self.metadata.get(&c.key) {
                Some(values) => c
                    .values
                    .iter()
                    .filter_map(|v| values.get(v).map(Vec::as_slice))
                    .collect(),
                None => Vec::new(),
            };
            sets.push(union(&lists));
        }
        let excluded = || {
            let lists: Vec<&[u64]> = f
                .tags_none
                .iter()
                .filter_map(|t| self.tags.get(t).map(Vec::as_slice))
                .collect();
            union(&lists)
        };
        if sets.is_empty() {
            return Admitted::AllBut(excluded());
        }
        // Intersect from the smallest set: the result is at most its size.
        sets.sort_by_key(Vec::len);
        let mut it = sets.into_iter();
        let mut acc = it.next().unwrap_or_default();
        for s in it {
            if acc.is_empty() {
                break;
            }
            acc = intersect(&acc, &s);
        }
        if !f.tags_none.is_empty() && !acc.is_empty() {
            let ex = excluded();
            acc.retain(|s| ex.binary_search(s).is_err());
        }
        Admitted::Only(acc)
    }
}

/// Appends `seq`, keeping the list ascending (recovery can apply a space's
/// episodes out of order only across a snapshot boundary, never within a
/// list, but a misordered push must not break the binary searches).
fn push_sorted(list: &mut Vec<u64>, seq: u64) {
    match list.last() {
        Some(&last) if last > seq => {
            if let Err(i) = list.binary_search(&seq) {
                list.insert(i, seq);
            }
        }
        Some(&last) if last == seq => {}
        _ => list.push(seq),
    }
}

fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn union(lists: &[&[u64]]) -> Vec<u64> {
    match lists {
        [] => Vec::new(),
        [one] => one.to_vec(),
        _ => {
            let mut out: Vec<u64> = lists.iter().flat_map(|l| l.iter().copied()).collect();
            out.sort_unstable();
            out.dedup();
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetadataCondition;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn ep(seq: u64, tags: &[&str], meta: &[(&str, &str)]) -> StoredEpisode {
        StoredEpisode {
            id: format!("e{seq}"),
            when_unix_nanos: 0,
            what: String::new(),
            embedding: Arc::from(Vec::<f32>::new()),
            encoding_confidence: 1.0,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            server_sequence: seq,
            committed_at_unix_nanos: 0,
            expires_at_unix_nanos: None,
        }
    }

    const TAGS: [&str; 4] = ["a", "b", "c", "d"];
    const USERS: [&str; 3] = ["ada", "bob", "cy"];

    fn arb_episode(seq: u64) -> impl Strategy<Value = StoredEpisode> {
        (
            proptest::sample::subsequence(TAGS.to_vec(), 0..=3),
            proptest::option::of(proptest::sample::select(USERS.to_vec())),
        )
            .prop_map(move |(tags, user)| {
                let meta: Vec<(&str, &str)> = user.map(|u| ("user", u)).into_iter().collect();
                ep(seq, &tags, &meta)
            })
    }

    fn arb_filter() -> impl Strategy<Value = MemoryFilter> {
        let tags = || proptest::sample::subsequence(TAGS.to_vec(), 0..=2);
        (
            tags(),
            tags(),
            tags(),
            proptest::option::of(proptest::sample::subsequence(USERS.to_vec(), 1..=2)),
        )
            .prop_map(|(all, any, none, users)| MemoryFilter {
                tags_all: all.iter().map(|s| s.to_string()).collect(),
                tags_any: any.iter().map(|s| s.to_string()).collect(),
                tags_none: none.iter().map(|s| s.to_string()).collect(),
                metadata: users
                    .map(|u| MetadataCondition {
                        key: "user".into(),
                        values: u.iter().map(|s| s.to_string()).collect(),
                    })
                    .into_iter()
                    .collect(),
            })
    }

    proptest! {
        /// What the postings admit, checked against the filter, is exactly
        /// the memories the filter matches, after any adds and removes.
        #[test]
        fn admitted_memories_are_exactly_the_matching_ones(
            episodes in (1..60u64).prop_flat_map(|n| (1..=n).map(arb_episode).collect::<Vec<_>>()),
            forget in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            filter in arb_filter(),
        ) {
            let mut p = Postings::default();
            for e in &episodes {
                p.add(e);
            }
            let mut live: Vec<&StoredEpisode> = episodes.iter().collect();
            for i in forget {
                if live.is_empty() {
                    break;
                }
                let e = live.remove(i.index(live.len()));
                p.remove(e);
            }
            let want: Vec<u64> = live
                .iter()
                .filter(|e| filter.matches(e))
                .map(|e| e.server_sequence)
                .collect();
            let got: Vec<u64> = match p.admitted(&filter) {
                Admitted::Only(seqs) => live
                    .iter()
                    .filter(|e| seqs.binary_search(&e.server_sequence).is_ok() && filter.matches(e))
                    .map(|e| e.server_sequence)
                    .collect(),
                Admitted::AllBut(ex) => live
                    .iter()
                    .filter(|e| ex.binary_search(&e.server_sequence).is_err() && filter.matches(e))
                    .map(|e| e.server_sequence)
                    .collect(),
            };
            prop_assert_eq!(got, want);
            // Only(..) never leaves out a match.
            if let Admitted::Only(seqs) = p.admitted(&filter) {
                for e in live.iter().filter(|e| filter.matches(e)) {
                    prop_assert!(seqs.binary_search(&e.server_sequence).is_ok());
                }
            }
        }
    }

    #[test]
    fn removing_everything_leaves_nothing() {
        let mut p = Postings::default();
        let es = [ep(1, &["a", "a"], &[("user", "ada")]), ep(2, &["a"], &[])];
        for e in &es {
            p.add(e);
        }
        assert!(p.bytes() > 0);
        for e in &es {
            p.remove(e);
        }
        assert_eq!(p.bytes(), 0);
        assert!(p.tags.is_empty() && p.metadata.is_empty());
    }
}
