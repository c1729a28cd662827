//! Reference-counted interning: each distinct value (a label key or value, a whole label
//! set, a profile list, a port list) is stored once and named by a small [`Id`]; the
//! objects of the label index hold ids instead of owned copies. Pods of one workload
//! share their label set, so 150,000 endpoints hold a few thousand sets.
//!
//! Invariants: an id names one live value while its count is positive; a value's id
//! never changes while it lives; when the count reaches zero the value is dropped and
//! its id is reused, so memory follows the live objects under churn (callers release
//! exactly what they acquired).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// The name of an interned value.
pub(super) type Id = u32;

struct Entry<T: ?Sized> {
    value: Arc<T>,
    refs: u32,
}

/// A set of interned values with reference counts (see the module docs).
pub(super) struct Interner<T: ?Sized + Eq + Hash> {
    ids: HashMap<Arc<T>, Id>,
    entries: Vec<Option<Entry<T>>>,
    free: Vec<Id>,
}

impl<T: ?Sized + Eq + Hash> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            ids: HashMap::new(),
            entries: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    /// Takes a reference on `value`, interning it if new; returns its id and whether it
    /// was new (a caller whose value holds references of its own takes them then).
    pub fn acquire(&mut self, value: &T) -> (Id, bool)
    where
        for<'a> Arc<T>: From<&'a T>,
    {
        if let Some(&id) = self.ids.get(value) {
            self.retain(id);
            return (id, false);
        }
        let value: Arc<T> = Arc::from(value);
        let entry = Entry {
            value: Arc::clone(&value),
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.entries.get_mut(id as usize) {
                    *slot = Some(entry);
                }
                id
            }
            None => {
                self.entries.push(Some(entry));
                Id::try_from(self.entries.len() - 1).unwrap_or(Id::MAX)
            }
        };
        self.ids.insert(value, id);
        (id, true)
    }

    /// Takes one more reference on a live id.
    pub fn retain(&mut self, id: Id) {
        if let Some(Some(entry)) = self.entries.get_mut(id as usize) {
            entry.refs += 1;
        }
    }

    /// Drops a reference; returns the value when that was the last one (so a caller
    /// can release what the value itself references).
    pub fn release(&mut self, id: Id) -> Option<Arc<T>> {
        let slot = self.entries.get_mut(id as usize)?;
        let entry = slot.as_mut()?;
        entry.refs -= 1;
        if entry.refs > 0 {
            return None;
        }
        let entry = slot.take()?;
        self.ids.remove(&*entry.value);
        self.free.push(id);
        Some(entry.value)
    }

    /// The value of a live id.
    pub fn get(&self, id: Id) -> Option<&T> {
        match self.entries.get(id as usize) {
            Some(Some(entry)) => Some(&*entry.value),
            _ => None,
        }
    }

    /// The id of `value` if it is interned (no reference taken).
    pub fn find<Q>(&self, value: &Q) -> Option<Id>
    where
        Arc<T>: Borrow<Q>,
        Q: ?Sized + Eq + Hash,
    {
        self.ids.get(value).copied()
    }

    /// The live values with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (Id, &T)> + '_ {
        self.ids.iter().map(|(value, id)| (*id, &**value))
    }

    /// The number of live values.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shared_counted_and_reused() {
        let mut strings: Interner<str> = Interner::default();
        let (a, new_a) = strings.acquire("app");
        let (a2, new_a2) = strings.acquire("app");
        assert_eq!((a, new_a, new_a2), (a2, true, false));
        let (b, _) = strings.acquire("web");
        assert_ne!(a, b);
        assert_eq!(strings.find("web"), Some(b));
        assert_eq!(strings.get(a), Some("app"));
        assert!(strings.release(a).is_none(), "one reference left");
        assert_eq!(strings.release(a).as_deref(), Some("app"));
        assert_eq!(strings.find("app"), None);
        assert_eq!(strings.get(a), None);
        // The freed id is reused for the next new value.
        assert_eq!(strings.acquire("db").0, a);
        assert_eq!(strings.len(), 2);
    }

    #[test]
    fn slices_intern_by_content() {
        let mut sets: Interner<[(Id, Id)]> = Interner::default();
        let (x, _) = sets.acquire(&[(1, 2), (3, 4)]);
        let (y, new) = sets.acquire(&[(1, 2), (3, 4)]);
        assert_eq!((x, new), (y, false));
        assert_ne!(sets.acquire(&[(1, 2)]).0, x);
    }
}
