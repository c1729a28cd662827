//! A compact set of object ids (the label index's slot numbers): a sorted vector while
//! sparse, a bitmap once dense. A selector matching a fifth of a 150,000-pod cluster
//! costs 19 KB as a bitmap instead of about 200 KB as a hash set; a namespace's few
//! hundred pods cost 4 bytes each.
//!
//! Invariant: the representation never takes more than about twice the bytes of the
//! other one (it switches when the vector would outgrow the bitmap, and back when it
//! would fit in a quarter of it); iteration is in ascending id order either way.

/// An object id.
pub(super) type ObjId = u32;

/// Below this many members the set always stays a vector.
const MIN_BITMAP_LEN: usize = 64;

/// A set of ids (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum IdSet {
    /// Ascending ids.
    Sorted(Vec<ObjId>),
    /// Bit `i` of word `i / 64` set for each member `i`, with the member count.
    Bits {
        /// The words.
        words: Vec<u64>,
        /// The number of set bits.
        len: usize,
    },
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet::Sorted(Vec::new())
    }
}

impl IdSet {
    /// Whether `id` is a member.
    pub fn contains(&self, id: ObjId) -> bool {
        match self {
            IdSet::Sorted(ids) => ids.binary_search(&id).is_ok(),
            IdSet::Bits { words, .. } => words
                .get(id as usize / 64)
                .is_some_and(|w| w & (1 << (id % 64)) != 0),
        }
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        match self {
            IdSet::Sorted(ids) => ids.len(),
            IdSet::Bits { len, .. } => *len,
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `id`; returns whether it was new.
    pub fn insert(&mut self, id: ObjId) -> bool {
        let added = match self {
            IdSet::Sorted(ids) => match ids.binary_search(&id) {
                Ok(_) => false,
                Err(at) => {
                    ids.insert(at, id);
                    true
                }
            },
            IdSet::Bits { words, len } => {
                let word = id as usize / 64;
                if words.len() <= word {
                    words.resize(word + 1, 0);
                }
                let bit = 1 << (id % 64);
                let added = words.get(word).is_some_and(|w| w & bit == 0);
                if let Some(w) = words.get_mut(word) {
                    *w |= bit;
                }
                *len += usize::from(added);
                added
            }
        };
        self.rebalance();
        added
    }

    /// Removes `id`; returns whether it was a member.
    pub fn remove(&mut self, id: ObjId) -> bool {
        let removed = match self {
            IdSet::Sorted(ids) => match ids.binary_search(&id) {
                Ok(at) => {
                    ids.remove(at);
                    true
                }
                Err(_) => false,
            },
            IdSet::Bits { words, len } => {
                let bit = 1 << (id % 64);
                let word = words.get_mut(id as usize / 64);
                let removed = word.is_some_and(|w| {
                    let had = *w & bit != 0;
                    *w &= !bit;
                    had
                });
                *len -= usize::from(removed);
                removed
            }
        };
        self.rebalance();
        removed
    }

    /// The members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = ObjId> + '_ {
        let (sorted, words) = match self {
            IdSet::Sorted(ids) => (ids.as_slice(), &[][..]),
            IdSet::Bits { words, .. } => (&[][..], words.as_slice()),
        };
        let bits = words.iter().enumerate().flat_map(|(i, &word)| {
            let base = ObjId::try_from(i * 64).unwrap_or(ObjId::MAX);
            (0..64u32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| base + b)
        });
        sorted.iter().copied().chain(bits)
    }

    /// Switches representation when the other one is clearly smaller.
    fn rebalance(&mut self) {
        match self {
            IdSet::Sorted(ids) => {
                let Some(&max) = ids.last() else {
                    *ids = Vec::new();
                    return;
                };
                let bitmap_bytes = (max as usize / 64 + 1) * 8;
                if ids.len() >= MIN_BITMAP_LEN && ids.len() * 4 > bitmap_bytes {
                    let mut words = vec![0u64; max as usize / 64 + 1];
                    for &id in ids.iter() {
                        if let Some(w) = words.get_mut(id as usize / 64) {
                            *w |= 1 << (id % 64);
                        }
                    }
                    *self = IdSet::Bits {
                        words,
                        len: ids.len(),
                    };
                } else if ids.capacity() > 2 * ids.len() + 8 {
                    ids.shrink_to(ids.len() + ids.len() / 2);
                }
            }
            IdSet::Bits { words, len } => {
                while words.last() == Some(&0) {
                    words.pop();
                }
                let bitmap_bytes = words.len() * 8;
                if *len >= MIN_BITMAP_LEN / 2 && *len * 4 * 4 >= bitmap_bytes {
                    return;
                }
                let ids: Vec<ObjId> = self.iter().collect();
                *self = IdSet::Sorted(ids);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn dense_sets_become_bitmaps_and_sparse_ones_vectors() {
        let mut set = IdSet::default();
        for id in 0..1_000 {
            assert!(set.insert(id));
        }
        assert!(matches!(set, IdSet::Bits { .. }), "dense: a bitmap");
        assert!(!set.insert(5));
        for id in 0..990 {
            assert!(set.remove(id));
        }
        assert!(matches!(set, IdSet::Sorted(_)), "sparse again: a vector");
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            (990..1_000).collect::<Vec<_>>()
        );
        let mut sparse = IdSet::default();
        for id in (0..100).map(|i| i * 1_000) {
            sparse.insert(id);
        }
        assert!(
            matches!(sparse, IdSet::Sorted(_)),
            "100 of 100,000: a vector"
        );
    }

    proptest! {
        #[test]
        fn behaves_like_a_btree_set(ops in proptest::collection::vec((any::<bool>(), 0..2_000u32), 0..600)) {
            let mut set = IdSet::default();
            let mut oracle = BTreeSet::new();
            for (add, id) in ops {
                if add {
                    prop_assert_eq!(set.insert(id), oracle.insert(id));
                } else {
                    prop_assert_eq!(set.remove(id), oracle.remove(&id));
                }
                prop_assert_eq!(set.len(), oracle.len());
            }
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), oracle.iter().copied().collect::<Vec<_>>());
            for id in 0..2_000 {
                prop_assert_eq!(set.contains(id), oracle.contains(&id));
            }
        }
    }
}
