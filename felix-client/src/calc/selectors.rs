//! The active selectors (those an active policy's ipsets use), each with the objects it
//! matches as a compact [`IdSet`] and the names of the sets derived from it, and the
//! live sets themselves. Selectors requiring one namespace are scoped to it, so an
//! object update evaluates only its namespace's selectors and the unscoped ones.
//!
//! Invariant: `SelEntry::matches` is exactly the set of live objects the selector
//! matches; a set derived from a selector holds exactly the contributions of its matches.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use netmodel::selector::Selector;

use super::idset::{IdSet, ObjId};
use super::objects::Obj;
use super::sets::SetEntry;
use super::store::Store;

/// One active selector.
pub(super) struct SelEntry {
    /// The parsed selector.
    pub selector: Selector,
    /// The namespace it requires, if any.
    pub scope: Option<String>,
    /// The number of sets using it.
    pub refs: u32,
    /// The live objects it matches.
    pub matches: IdSet,
    /// Names of the sets derived from this selector.
    pub sets: BTreeSet<String>,
}

/// Selectors and sets; separate from the [`Store`] so both can be borrowed at once.
#[derive(Default)]
pub(super) struct Selectors {
    /// Active selectors by canonical text.
    pub sels: HashMap<String, SelEntry>,
    /// Texts of the selectors scoped to each namespace.
    pub scoped: HashMap<String, BTreeSet<String>>,
    /// Texts of the selectors without a required namespace.
    pub unscoped: BTreeSet<String>,
    /// Live sets by name.
    pub sets: BTreeMap<String, SetEntry>,
}

impl Selectors {
    /// Registers a new selector under `text` with its matches.
    pub fn insert(&mut self, text: &str, selector: Selector, matches: IdSet) {
        let scope = selector.required_namespace().map(str::to_string);
        match &scope {
            Some(ns) => {
                let texts = self.scoped.entry(ns.clone()).or_default();
                texts.insert(text.to_string());
            }
            None => {
                self.unscoped.insert(text.to_string());
            }
        }
        let entry = SelEntry {
            selector,
            scope,
            refs: 1,
            matches,
            sets: BTreeSet::new(),
        };
        self.sels.insert(text.to_string(), entry);
    }

    /// Drops one reference on selector `text`, removing it with the last.
    pub fn release(&mut self, text: &str) {
        let Some(entry) = self.sels.get_mut(text) else {
            return;
        };
        entry.refs -= 1;
        if entry.refs > 0 {
            return;
        }
        let scope = entry.scope.clone();
        self.sels.remove(text);
        match scope {
            Some(ns) => {
                if let Some(set) = self.scoped.get_mut(&ns) {
                    set.remove(text);
                    if set.is_empty() {
                        self.scoped.remove(&ns);
                    }
                }
            }
            None => {
                self.unscoped.remove(text);
            }
        }
    }

    /// Moves `id` from `old` to `new` (either may be absent) for every selector that may
    /// match an object of one of `namespaces`: the unscoped ones and those scoped to
    /// each namespace (a repeated namespace is evaluated once). No selector text is
    /// copied: this runs for every object update.
    pub fn refresh(
        &mut self,
        namespaces: [Option<&str>; 2],
        id: ObjId,
        old: Option<&Obj>,
        new: Option<&Obj>,
        store: &Store,
    ) {
        let Selectors {
            sels,
            scoped,
            unscoped,
            sets,
        } = self;
        let [first, second] = namespaces;
        let second = second.filter(|ns| Some(*ns) != first);
        let scoped = [first, second]
            .into_iter()
            .flatten()
            .filter_map(|ns| scoped.get(ns))
            .flatten();
        for text in unscoped.iter().chain(scoped) {
            if let Some(entry) = sels.get_mut(text) {
                refresh_entry(entry, sets, id, old, new, store);
            }
        }
    }
}

/// Moves `id` from `old` to `new` in one selector's matches and its sets' members.
fn refresh_entry(
    entry: &mut SelEntry,
    sets: &mut BTreeMap<String, SetEntry>,
    id: ObjId,
    old: Option<&Obj>,
    new: Option<&Obj>,
    store: &Store,
) {
    let was = entry.matches.contains(id);
    let now = new.is_some_and(|o| entry.selector.matches(&store.lookup(o)));
    let same_members = match (old, new) {
        (Some(o), Some(n)) => o.addrs == n.addrs && o.ports == n.ports,
        _ => false,
    };
    if !was && !now || was && now && same_members {
        return;
    }
    if now {
        entry.matches.insert(id);
    } else {
        entry.matches.remove(id);
    }
    let mut buf = Vec::new();
    for name in &entry.sets {
        let Some(set) = sets.get_mut(name) else {
            continue;
        };
        // Add before removing, so a member both had and has never leaves the set.
        if let (true, Some(n)) = (now, new) {
            buf.clear();
            set.spec.contributions(store, n, &mut buf);
            for m in buf.drain(..) {
                set.add(m);
            }
        }
        if let (true, Some(o)) = (was, old) {
            set.spec.contributions(store, o, &mut buf);
            for m in buf.drain(..) {
                set.remove(&m);
            }
        }
    }
}
