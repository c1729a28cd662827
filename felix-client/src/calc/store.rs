//! The object store of the label index: every endpoint and network set of the cluster,
//! once, in a slot named by an [`ObjId`], in compact form ([`Obj`]: interned label set,
//! profile list and port list, inline addresses), with the namespace and profile-list
//! indexes that let a new selector scan only its candidates.
//!
//! Keys are not stored: an object is found by a 128-bit hash of its key (the mirror
//! keeps the keys), held beside its slot; the lookup table holds only slot ids (4 bytes
//! and a control byte per bucket), so a slot with its key hash and table entry costs
//! about 65 bytes. Strings, label
//! sets, profile lists and port lists are interned with reference counts
//! ([`Interner`]); pods of one workload share everything but their addresses.
//!
//! Invariants: each live slot holds one reference on its label set, profile list and
//! port list, and each of those one reference on every string it names; `by_namespace`
//! and `by_list` hold exactly the live objects with that namespace / profile list;
//! `own_inherited` exactly the live objects with an own label under an inherited prefix.

use std::collections::{BTreeMap, HashMap};

use hashbrown::HashTable;

use netmodel::selector::{
    NAMESPACE_LABEL, NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX, Selector,
};
use typha_proto::Key;
use xxhash_rust::xxh3::Xxh3;

use super::idset::{IdSet, ObjId};
use super::intern::{Id, Interner};
use super::objects::{NewObj, Obj, PortName, Profiles};

/// A 128-bit hash of a key: what the store finds objects by (its first half is the
/// lookup table's hash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeyId(u64, u64);

impl KeyId {
    fn of(key: &Key) -> KeyId {
        let mut h = Xxh3::new();
        h.update(&[key.kind() as u8]);
        h.update(&(key.namespace().len() as u64).to_le_bytes());
        h.update(key.namespace().as_bytes());
        h.update(key.name().as_bytes());
        let v = h.digest128();
        KeyId(v as u64, (v >> 64) as u64)
    }
}

/// Label key prefixes that profiles give their labels.
const INHERITED_PREFIXES: [&str; 2] = [NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX];

fn is_inherited_key(key: &str) -> bool {
    INHERITED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether every label `sel` reads is an inherited one (or it reads none).
fn reads_only_inherited(sel: &Selector) -> bool {
    match sel {
        Selector::All | Selector::Global => true,
        Selector::Has(k)
        | Selector::Eq(k, _)
        | Selector::Ne(k, _)
        | Selector::In(k, _)
        | Selector::NotIn(k, _)
        | Selector::Contains(k, _)
        | Selector::StartsWith(k, _)
        | Selector::EndsWith(k, _) => is_inherited_key(k),
        Selector::Not(inner) => reads_only_inherited(inner),
        Selector::And(parts) | Selector::Or(parts) => parts.iter().all(reads_only_inherited),
    }
}

/// The conjuncts of `sel` that read only inherited labels (a necessary condition that
/// depends on an object's profiles alone), if any.
fn inherited_part(sel: &Selector) -> Option<Selector> {
    let parts: Vec<Selector> = match sel {
        Selector::And(parts) => parts
            .iter()
            .filter(|p| reads_only_inherited(p))
            .cloned()
            .collect(),
        Selector::All | Selector::Global => Vec::new(),
        other if reads_only_inherited(other) => vec![other.clone()],
        _ => Vec::new(),
    };
    Selector::and_all(parts)
}

/// The object store (see the module docs).
#[derive(Default)]
pub(super) struct Store {
    slots: Vec<Option<Obj>>,
    /// The key hash of each slot (meaningful while the slot is live).
    keys: Vec<KeyId>,
    free: Vec<ObjId>,
    /// Live slots by their key hash.
    ids: HashTable<ObjId>,
    strings: Interner<str>,
    label_sets: Interner<[(Id, Id)]>,
    lists: Interner<[Id]>,
    port_lists: Interner<[PortName]>,
    /// Objects by the string id of their namespace.
    by_namespace: HashMap<Id, IdSet>,
    /// Objects by their whole profile list (what inherited labels depend on).
    by_list: HashMap<Id, IdSet>,
    /// Objects with an own label under an inherited prefix (`pcns.`, `pcsa.`): their
    /// inherited-looking labels do not come from their profiles alone.
    own_inherited: IdSet,
    profiles: Profiles,
}

impl Store {
    /// The live object in slot `id`.
    pub fn get(&self, id: ObjId) -> Option<&Obj> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    /// The slot of the object stored under `key`.
    #[cfg(test)]
    pub fn id_of(&self, key: &Key) -> Option<ObjId> {
        self.find(KeyId::of(key))
    }

    fn find(&self, key: KeyId) -> Option<ObjId> {
        let keys = &self.keys;
        let same = |id: &ObjId| keys.get(*id as usize) == Some(&key);
        self.ids.find(key.0, same).copied()
    }

    /// Stores `new` under `key` (or with `None` removes it). Returns the slot and the
    /// object it held before, whose interned references stay taken until the caller
    /// hands it to [`Store::forget`] (so both can be evaluated side by side).
    pub fn replace(&mut self, key: &Key, new: Option<&NewObj<'_>>) -> Option<(ObjId, Option<Obj>)> {
        let key_id = KeyId::of(key);
        let id = match (self.find(key_id), new) {
            (Some(id), _) => id,
            (None, None) => return None,
            (None, Some(_)) => self.allocate(key_id),
        };
        let new = new.map(|n| self.intern(n));
        let old = std::mem::replace(self.slots.get_mut(id as usize)?, new.clone());
        if let Some(o) = &old {
            self.unindex(id, o);
        }
        match &new {
            Some(n) => self.index(id, n),
            None => {
                let keys = &self.keys;
                let same = |id: &ObjId| keys.get(*id as usize) == Some(&key_id);
                if let Ok(entry) = self.ids.find_entry(key_id.0, same) {
                    entry.remove();
                }
                self.free.push(id);
            }
        }
        Some((id, old))
    }

    /// A free slot for the key `key_id`, registered under it.
    fn allocate(&mut self, key_id: KeyId) -> ObjId {
        let id = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.keys.push(KeyId::default());
            ObjId::try_from(self.slots.len() - 1).unwrap_or(ObjId::MAX)
        });
        if let Some(k) = self.keys.get_mut(id as usize) {
            *k = key_id;
        }
        let keys = &self.keys;
        let hash = |id: &ObjId| keys.get(*id as usize).map_or(0, |k| k.0);
        self.ids.insert_unique(key_id.0, id, hash);
        id
    }

    /// Releases the interned references of an object no slot holds any more.
    pub fn forget(&mut self, obj: Obj) {
        if let Some(pairs) = self.label_sets.release(obj.labels) {
            for (k, v) in pairs.iter() {
                self.strings.release(*k);
                self.strings.release(*v);
            }
        }
        if let Some(list) = self.lists.release(obj.profiles) {
            list.iter().for_each(|p| drop(self.strings.release(*p)));
        }
        if let Some(ports) = self.port_lists.release(obj.ports) {
            ports
                .iter()
                .for_each(|p| drop(self.strings.release(p.name)));
        }
    }

    fn intern_str(&mut self, s: &str) -> Id {
        self.strings.acquire(s).0
    }

    /// The compact object of `new`, its references taken.
    fn intern(&mut self, new: &NewObj<'_>) -> Obj {
        let mut pairs: Vec<(Id, Id)> = new
            .labels
            .iter()
            .map(|(k, v)| (self.intern_str(k), self.intern_str(v)))
            .collect();
        pairs.sort_unstable();
        let (labels, fresh) = self.label_sets.acquire(&pairs);
        if !fresh {
            pairs.iter().for_each(|&(k, v)| {
                self.strings.release(k);
                self.strings.release(v);
            });
        }
        let list: Vec<Id> = new.profiles.iter().map(|p| self.intern_str(p)).collect();
        let (profiles, fresh) = self.lists.acquire(&list);
        if !fresh {
            list.iter().for_each(|p| drop(self.strings.release(*p)));
        }
        let ports: Vec<PortName> = new
            .ports
            .iter()
            .map(|&(name, protocol, port)| PortName {
                name: self.intern_str(name),
                protocol,
                port,
            })
            .collect();
        let (port_list, fresh) = self.port_lists.acquire(&ports);
        if !fresh {
            ports
                .iter()
                .for_each(|p| drop(self.strings.release(p.name)));
        }
        Obj {
            labels,
            profiles,
            ports: port_list,
            addrs: new.addrs.clone(),
        }
    }

    /// The label set of `obj`: (key, value) string ids sorted by key id.
    fn pairs(&self, obj: &Obj) -> &[(Id, Id)] {
        self.label_sets.get(obj.labels).unwrap_or(&[])
    }

    /// An interned string.
    pub fn string(&self, id: Id) -> &str {
        self.strings.get(id).unwrap_or("")
    }

    /// The string id of `obj`'s own label `key`'s value.
    fn own_label(&self, obj: &Obj, key: &str) -> Option<Id> {
        let key = self.strings.find(key)?;
        let pairs = self.pairs(obj);
        let at = pairs.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
        pairs.get(at).map(|(_, v)| *v)
    }

    /// The namespace `obj`'s labels place it in (the index's scoping key).
    pub fn namespace(&self, obj: &Obj) -> Option<&str> {
        self.own_label(obj, NAMESPACE_LABEL).map(|v| self.string(v))
    }

    /// The names of the profiles `obj` inherits from, in order.
    pub fn profile_names<'a>(&'a self, obj: &Obj) -> impl Iterator<Item = &'a str> + 'a {
        let list = self.lists.get(obj.profiles).unwrap_or(&[]);
        list.iter().map(|p| self.string(*p))
    }

    /// The named ports of `obj`.
    pub fn ports(&self, obj: &Obj) -> &[PortName] {
        self.port_lists.get(obj.ports).unwrap_or(&[])
    }

    /// The effective label lookup of `obj`: own labels first, then its profiles in order.
    pub fn lookup<'a>(&'a self, obj: &'a Obj) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |key: &str| {
            if let Some(v) = self.own_label(obj, key) {
                return Some(self.string(v));
            }
            self.profile_names(obj)
                .filter_map(|p| self.profiles.get(p))
                .find_map(|labels| labels.get(key).map(String::as_str))
        }
    }

    fn unindex(&mut self, id: ObjId, obj: &Obj) {
        let ns = self.own_label(obj, NAMESPACE_LABEL);
        for (map, group) in [
            (&mut self.by_namespace, ns),
            (&mut self.by_list, Some(obj.profiles)),
        ] {
            if let Some(group) = group
                && let Some(set) = map.get_mut(&group)
            {
                set.remove(id);
                if set.is_empty() {
                    map.remove(&group);
                }
            }
        }
        self.own_inherited.remove(id);
    }

    fn index(&mut self, id: ObjId, obj: &Obj) {
        if let Some(ns) = self.own_label(obj, NAMESPACE_LABEL) {
            self.by_namespace.entry(ns).or_default().insert(id);
        }
        self.by_list.entry(obj.profiles).or_default().insert(id);
        let own_inherited = self
            .pairs(obj)
            .iter()
            .any(|(k, _)| is_inherited_key(self.string(*k)));
        if own_inherited {
            self.own_inherited.insert(id);
        }
    }

    /// The objects whose labels place them in namespace `ns`.
    pub fn in_namespace(&self, ns: &str) -> Vec<ObjId> {
        let set = self
            .strings
            .find(ns)
            .and_then(|ns| self.by_namespace.get(&ns));
        set.map(|s| s.iter().collect()).unwrap_or_default()
    }

    /// The objects that inherit from profile `name`.
    pub fn with_profile(&self, name: &str) -> Vec<ObjId> {
        let Some(name) = self.strings.find(name) else {
            return Vec::new();
        };
        let lists = self.lists.iter().filter(|(_, list)| list.contains(&name));
        lists
            .filter_map(|(list, _)| self.by_list.get(&list))
            .flat_map(IdSet::iter)
            .collect()
    }

    /// The objects a new unscoped selector must be evaluated on: with an inherited-only
    /// part (a namespace selector), only those whose profiles satisfy it, plus the few
    /// objects carrying such labels themselves; otherwise every object.
    pub fn candidates_for(&self, sel: &Selector) -> Vec<ObjId> {
        let Some(part) = inherited_part(sel) else {
            return self.ids.iter().copied().collect();
        };
        let mut out: Vec<ObjId> = self.own_inherited.iter().collect();
        for (list, ids) in &self.by_list {
            let names = self.lists.get(*list).unwrap_or(&[]);
            let get = |key: &str| {
                names
                    .iter()
                    .filter_map(|p| self.profiles.get(self.string(*p)))
                    .find_map(|labels| labels.get(key).map(String::as_str))
            };
            if part.matches(&get) {
                out.extend(ids.iter().filter(|id| !self.own_inherited.contains(*id)));
            }
        }
        out
    }

    /// Sets (or with `None` removes) a profile's labels.
    pub fn set_profile(&mut self, name: &str, labels: Option<BTreeMap<String, String>>) {
        match labels {
            Some(l) => self.profiles.insert(name.to_string(), l),
            None => self.profiles.remove(name),
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::borrow::Cow;

    use typha_proto::Kind;

    use super::super::objects::Addrs;
    use super::*;

    fn new_obj<'a>(labels: &[(&'a str, &'a str)], profiles: &[&'a str]) -> NewObj<'a> {
        NewObj {
            labels: labels.to_vec(),
            profiles: profiles.iter().map(|p| Cow::Borrowed(*p)).collect(),
            addrs: Addrs::Nets(Box::new([])),
            ports: vec![("http", "tcp", 80)],
        }
    }

    #[test]
    fn own_labels_win_over_profiles() {
        let mut store = Store::default();
        store.set_profile(
            "p1",
            Some([("a".into(), "p1".into()), ("b".into(), "p1".into())].into()),
        );
        store.set_profile(
            "p2",
            Some([("b".into(), "p2".into()), ("c".into(), "p2".into())].into()),
        );
        let key = Key::new(Kind::WorkloadEndpoint, "ns", "x").unwrap();
        let (id, _) = store
            .replace(&key, Some(&new_obj(&[("a", "own")], &["p1", "p2"])))
            .unwrap();
        let obj = store.get(id).unwrap();
        let get = store.lookup(obj);
        assert_eq!(get("a"), Some("own"));
        assert_eq!(get("b"), Some("p1"));
        assert_eq!(get("c"), Some("p2"));
        assert_eq!(get("d"), None);
    }

    #[test]
    fn shared_values_are_stored_once_and_freed_with_the_last_object() {
        let mut store = Store::default();
        let labels = [("app", "web"), (NAMESPACE_LABEL, "ns")];
        for i in 0..10 {
            let key = Key::new(Kind::WorkloadEndpoint, "ns", format!("p{i}")).unwrap();
            let (_, old) = store
                .replace(&key, Some(&new_obj(&labels, &["kns.ns"])))
                .unwrap();
            assert!(old.is_none());
        }
        assert_eq!(store.label_sets.len(), 1);
        assert_eq!(store.lists.len(), 1);
        assert_eq!(store.port_lists.len(), 1);
        // app, web, the namespace label and value, kns.ns, http.
        assert_eq!(store.strings.len(), 6);
        assert_eq!(store.in_namespace("ns").len(), 10);
        assert_eq!(store.with_profile("kns.ns").len(), 10);
        for i in 0..10 {
            let key = Key::new(Kind::WorkloadEndpoint, "ns", format!("p{i}")).unwrap();
            let (_, old) = store.replace(&key, None).unwrap();
            store.forget(old.unwrap());
            assert_eq!(store.id_of(&key), None);
        }
        assert_eq!(store.strings.len(), 0);
        assert_eq!(store.label_sets.len(), 0);
        assert!(store.by_namespace.is_empty() && store.by_list.is_empty());
    }
}
