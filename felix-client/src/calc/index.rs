//! The label index: every endpoint and network set of the cluster ([`Store`]), the
//! profiles they inherit labels from, the active selectors with the objects each matches
//! ([`Selectors`]), and the ipsets derived from them with their members ([`SetEntry`]).
//!
//! Cost model: an object update evaluates only the active selectors that could match it
//! (those scoped to its namespace plus the unscoped ones); a profile update re-evaluates
//! the objects inheriting from it; a selector seen for the first time is evaluated once
//! on its candidates: its namespace's objects when it requires one, the objects whose
//! profiles satisfy its inherited-label part when it has one (a namespace selector: only
//! the matching namespaces are scanned), else the whole cluster.
//!
//! Invariants: those of [`Store`], [`Selectors`] and [`SetEntry`]; an entry with no
//! references is removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use netmodel::selector::Selector;
use typha_proto::Key;

use super::IpSet;
use super::idset::{IdSet, ObjId};
use super::objects::NewObj;
use super::selectors::Selectors;
use super::sets::{SetEntry, SetSpec};
use super::store::Store;

/// The label index (see the module docs).
#[derive(Default)]
pub(super) struct Index {
    store: Store,
    selectors: Selectors,
}

impl Index {
    /// The store (label lookups, namespaces and profile names of objects).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Inserts or replaces the object under `key`; `None` removes it. Returns the slot
    /// of the object now stored (`None` after a removal).
    pub fn set_object(&mut self, key: &Key, obj: Option<&NewObj<'_>>) -> Option<ObjId> {
        let (id, old) = self.store.replace(key, obj)?;
        let new = self.store.get(id);
        let old_ns = old.as_ref().and_then(|o| self.store.namespace(o));
        let new_ns = new.as_ref().and_then(|n| self.store.namespace(n));
        let stored = new.is_some();
        // Both namespaces: a namespace move needs the new one's scoped selectors too.
        self.selectors
            .refresh([old_ns, new_ns], id, old.as_ref(), new, &self.store);
        if let Some(old) = old {
            self.store.forget(old);
        }
        stored.then_some(id)
    }

    /// Sets (or with `None` removes) a profile's labels and re-evaluates its objects.
    pub fn set_profile(&mut self, name: &str, labels: Option<BTreeMap<String, String>>) {
        self.store.set_profile(name, labels);
        if self.selectors.sels.is_empty() {
            return;
        }
        for id in self.store.with_profile(name) {
            let Some(obj) = self.store.get(id) else {
                continue;
            };
            let ns = self.store.namespace(obj);
            let obj = Some(obj);
            self.selectors
                .refresh([ns, None], id, obj, obj, &self.store);
        }
    }

    fn acquire_selector(&mut self, text: &str) {
        if let Some(entry) = self.selectors.sels.get_mut(text) {
            entry.refs += 1;
            return;
        }
        let selector = match Selector::parse(text) {
            Ok(Some(s)) => s,
            Ok(None) => Selector::All,
            Err(e) => {
                // Unreachable through the renderer, which only passes canonical text.
                tracing::warn!(selector = text, error = %e, "unparsable selector matches nothing");
                Selector::Not(Box::new(Selector::All))
            }
        };
        let store = &self.store;
        let candidates = match selector.required_namespace() {
            Some(ns) => store.in_namespace(ns),
            None => store.candidates_for(&selector),
        };
        let mut matches = IdSet::default();
        for id in candidates {
            if store
                .get(id)
                .is_some_and(|o| selector.matches(&store.lookup(o)))
            {
                matches.insert(id);
            }
        }
        self.selectors.insert(text, selector, matches);
    }

    /// Takes a reference on the set `spec` defines, creating and filling it if new.
    pub fn acquire_set(&mut self, spec: &SetSpec) {
        let name = spec.name();
        if let Some(entry) = self.selectors.sets.get_mut(&name) {
            entry.refs += 1;
            return;
        }
        let mut entry = SetEntry::new(spec);
        if let Some(text) = spec.selector() {
            self.acquire_selector(text);
            if let Some(sel) = self.selectors.sels.get_mut(text) {
                sel.sets.insert(name.clone());
                let mut buf = Vec::new();
                for id in sel.matches.iter() {
                    if let Some(obj) = self.store.get(id) {
                        spec.contributions(&self.store, obj, &mut buf);
                    }
                }
                for m in buf {
                    entry.add(m);
                }
            }
        }
        self.selectors.sets.insert(name, entry);
    }

    /// Drops a reference taken by [`Index::acquire_set`].
    pub fn release_set(&mut self, spec: &SetSpec) {
        let name = spec.name();
        let Some(entry) = self.selectors.sets.get_mut(&name) else {
            return;
        };
        entry.refs -= 1;
        if entry.refs > 0 {
            return;
        }
        self.selectors.sets.remove(&name);
        if let Some(text) = spec.selector() {
            if let Some(sel) = self.selectors.sels.get_mut(text) {
                sel.sets.remove(&name);
            }
            self.selectors.release(text);
        }
    }

    /// Every live set, as the dataplane should hold it (`Arc` clones of the members).
    pub fn ipsets(&self, out: &mut BTreeMap<String, IpSet>) {
        for (name, entry) in &self.selectors.sets {
            out.insert(
                name.clone(),
                IpSet {
                    kind: entry.spec.kind(),
                    family: entry.spec.family(),
                    members: Arc::clone(&entry.members),
                },
            );
        }
    }

    /// Number of active selectors (for tests and metrics).
    pub fn active_selectors(&self) -> usize {
        self.selectors.sels.len()
    }
}
