//! The index's label table: label -> node id.
//!
//! engram's labels are server sequences, dense from 1, so most labels live
//! in a vector indexed by label (4 bytes a slot) instead of a hash map (16
//! bytes a slot plus a control byte, at up to 87.5% load: 22 to 36 bytes
//! per memory at 100K and 1M, computed from its capacity). Labels far above
//! the dense range (tests' arbitrary labels, the retired labels
//! `u64::MAX - id` of recovery) go to a map, so a stray large label can
//! never allocate a huge vector.

use std::collections::HashMap;

/// An empty dense slot.
const EMPTY: u32 = u32::MAX;
/// The dense vector grows to cover a new label only below
/// `max(2 * its length, DENSE_MIN)`, so its size stays within about twice
/// the largest dense label.
const DENSE_MIN: u64 = 1 << 16;

#[derive(Debug, Default)]
pub(super) struct LabelTable {
    dense: Vec<u32>,
    sparse: HashMap<u64, u32>,
    len: usize,
}

impl LabelTable {
    pub(super) fn with_capacity(n: usize) -> Self {
        LabelTable {
            dense: Vec::with_capacity(n.saturating_add(1)),
            ..Self::default()
        }
    }

    pub(super) fn get(&self, label: u64) -> Option<u32> {
        match usize::try_from(label).ok().and_then(|i| self.dense.get(i)) {
            Some(&id) if id != EMPTY => Some(id),
            _ => self.sparse.get(&label).copied(),
        }
    }

    pub(super) fn contains(&self, label: u64) -> bool {
        self.get(label).is_some()
    }

    /// Maps `label` to `id`; false (and nothing changed) if it is mapped.
    ///
    /// # Panics
    /// If `id` is `u32::MAX` (never a node id: the store addresses fewer).
    pub(super) fn insert(&mut self, label: u64, id: u32) -> bool {
        assert_ne!(id, EMPTY, "node id {id} is reserved");
        if self.contains(label) {
            return false;
        }
        let limit = (2 * self.dense.len() as u64).max(DENSE_MIN);
        if label < limit {
            let i = label as usize;
            if i >= self.dense.len() {
                self.dense.resize(i + 1, EMPTY);
            }
            self.dense[i] = id;
        } else {
            self.sparse.insert(label, id);
        }
        self.len += 1;
        true
    }

    pub(super) fn remove(&mut self, label: u64) -> Option<u32> {
        let slot = usize::try_from(label)
            .ok()
            .and_then(|i| self.dense.get_mut(i))
            .filter(|id| **id != EMPTY);
        let id = match slot {
            Some(slot) => Some(std::mem::replace(slot, EMPTY)),
            None => self.sparse.remove(&label),
        };
        if id.is_some() {
            self.len -= 1;
        }
        id
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the table's slots (allocated, used or not).
    pub(super) fn bytes(&self) -> usize {
        self.dense.capacity() * std::mem::size_of::<u32>()
            + self.sparse.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dense_labels_take_four_bytes_each() {
        let mut t = LabelTable::default();
        for label in 1..=100_000u64 {
            assert!(t.insert(label, label as u32 - 1));
        }
        assert_eq!(t.len(), 100_000);
        assert!(t.bytes() <= 2 * 4 * 100_001, "{}", t.bytes());
        assert_eq!(t.get(5), Some(4));
        assert!(!t.insert(5, 9), "already mapped");
        assert_eq!(t.get(5), Some(4));
    }

    #[test]
    fn a_huge_label_goes_to_the_map_without_a_huge_vector() {
        let mut t = LabelTable::default();
        assert!(t.insert(u64::MAX - 3, 3));
        assert!(t.insert(1 << 40, 4));
        assert!(t.bytes() < 4096, "{}", t.bytes());
        assert_eq!(t.get(u64::MAX - 3), Some(3));
        assert_eq!(t.remove(1 << 40), Some(4));
        assert_eq!(t.get(1 << 40), None);
        assert_eq!(t.len(), 1);
    }

    proptest! {
        /// The table behaves as a map, whatever the labels and their order
        /// (including a label put in the map before the vector grew past it).
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec((0u8..3, prop_oneof![0u64..200_000, any::<u64>()], 0u32..1000), 1..400)) {
            let mut t = LabelTable::default();
            let mut m: HashMap<u64, u32> = HashMap::new();
            for (op, label, id) in ops {
                match op {
                    0 => {
                        let fresh = !m.contains_key(&label);
                        prop_assert_eq!(t.insert(label, id), fresh);
                        m.entry(label).or_insert(id);
                    }
                    1 => prop_assert_eq!(t.remove(label), m.remove(&label)),
                    _ => prop_assert_eq!(t.get(label), m.get(&label).copied()),
                }
                prop_assert_eq!(t.len(), m.len());
            }
            for (label, id) in &m {
                prop_assert_eq!(t.get(*label), Some(*id));
            }
        }
    }
}
