//! The mirror's compact key: the kind, the namespace shared with every key of that
//! namespace (an interned `Arc<str>`), and the name in a boxed `str`. About 40 bytes
//! inline plus the name, against 56 plus two string buffers for a [`Key`]: at 150,000
//! keys that is about a third of the mirror.
//!
//! Invariants: a [`MirrorKey`] equals and hashes like another exactly when their kind,
//! namespace text and name text are equal (the `Arc` is only a way to share bytes);
//! every namespace of a key in the mirror is in [`Namespaces`]. A [`Key`] is looked up
//! through [`KeyRef`], which hashes and compares like the [`MirrorKey`] it names, so a
//! lookup builds nothing.

use std::collections::HashSet;
use std::hash::{Hash, RandomState};
use std::sync::Arc;

use hashbrown::Equivalent;
use typha_proto::digest::EntryHash;
use typha_proto::{Key, Kind};

/// The mirror's entries: compact keys with their entry hashes.
pub(super) type Entries = hashbrown::HashMap<MirrorKey, EntryHash, RandomState>;

/// A key as the mirror stores it (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct MirrorKey {
    kind: Kind,
    namespace: Arc<str>,
    name: Box<str>,
}

impl MirrorKey {
    /// The model key again (`None` only if it was not a valid key, which a key built
    /// from a [`Key`] always is).
    pub fn to_key(&self) -> Option<Key> {
        Key::new(self.kind, &*self.namespace, &*self.name).ok()
    }

    /// The bytes of its own name buffer.
    pub fn name_len(&self) -> usize {
        self.name.len()
    }
}

/// A borrowed key for lookups in [`Entries`]: hashes exactly as [`MirrorKey`] (the
/// same fields in the same order; `Arc<str>` and `Box<str>` hash as their `str`).
#[derive(Hash)]
pub(super) struct KeyRef<'a> {
    kind: Kind,
    namespace: &'a str,
    name: &'a str,
}

impl<'a> KeyRef<'a> {
    /// The lookup form of `key`.
    pub fn of(key: &'a Key) -> KeyRef<'a> {
        KeyRef {
            kind: key.kind(),
            namespace: key.namespace(),
            name: key.name(),
        }
    }
}

impl Equivalent<MirrorKey> for KeyRef<'_> {
    fn equivalent(&self, key: &MirrorKey) -> bool {
        self.kind == key.kind && self.namespace == &*key.namespace && self.name == &*key.name
    }
}

/// The interned namespaces of the mirror's keys.
#[derive(Clone, Debug, Default)]
pub(super) struct Namespaces {
    set: HashSet<Arc<str>>,
    /// Deletions since the last prune.
    deletions: usize,
}

/// Prune after this many deletions (a prune costs one pass over the namespaces).
const PRUNE_EVERY: usize = 1024;

impl Namespaces {
    /// The compact form of `key`, interning its namespace.
    pub fn key(&mut self, key: &Key) -> MirrorKey {
        let namespace = match self.set.get(key.namespace()) {
            Some(ns) => Arc::clone(ns),
            None => {
                let ns: Arc<str> = Arc::from(key.namespace());
                self.set.insert(Arc::clone(&ns));
                ns
            }
        };
        MirrorKey {
            kind: key.kind(),
            namespace,
            name: key.name().into(),
        }
    }

    /// Counts a deletion; every [`PRUNE_EVERY`] of them, forgets the namespaces no key
    /// uses any more.
    pub fn deleted(&mut self) {
        self.deletions += 1;
        if self.deletions >= PRUNE_EVERY {
            self.prune();
        }
    }

    /// Forgets the namespaces only this set still holds.
    pub fn prune(&mut self) {
        self.set.retain(|ns| Arc::strong_count(ns) > 1);
        self.deletions = 0;
    }

    /// Heap bytes of the namespace texts and the set's slots.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<Arc<str>>() + 1;
        self.set.capacity() * slot + self.set.iter().map(|ns| ns.len() + 16).sum::<usize>()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_their_namespace_and_round_trip() {
        let mut namespaces = Namespaces::default();
        let a = Key::new(Kind::WorkloadEndpoint, "ns", "a").unwrap();
        let b = Key::new(Kind::WorkloadEndpoint, "ns", "b").unwrap();
        let (ka, kb) = (namespaces.key(&a), namespaces.key(&b));
        assert!(Arc::ptr_eq(&ka.namespace, &kb.namespace));
        assert_eq!(ka.to_key(), Some(a.clone()));
        let mut entries = Entries::default();
        entries.insert(ka, EntryHash::default());
        assert!(
            entries.contains_key(&KeyRef::of(&a)),
            "a borrowed key finds it"
        );
        let elsewhere = Key::new(Kind::WorkloadEndpoint, "other", "a").unwrap();
        assert!(!entries.contains_key(&KeyRef::of(&elsewhere)));
        assert!(!entries.contains_key(&KeyRef::of(&b)));
        assert_eq!(namespaces.set.len(), 1);
        drop((entries, kb));
        namespaces.prune();
        assert!(namespaces.set.is_empty(), "no key holds ns: forgotten");
    }
}
