//! The label index: every endpoint and network set of the cluster, the profiles they
//! inherit labels from, the active selectors with the objects each matches, and the
//! ipsets derived from them with their members.
//!
//! Cost model: an object update evaluates only the active selectors that could match it
//! (those scoped to its namespace plus the unscoped ones); a profile update re-evaluates
//! the objects inheriting from it; a selector seen for the first time is evaluated once
//! on its candidates: its namespace's objects when it requires one, the objects whose
//! profiles satisfy its inherited-label part when it has one (a namespace selector: only
//! the matching namespaces are scanned), else the whole cluster. Members are counted (two objects may
//! contribute the same member) and the member sets are `Arc`s changed copy-on-write
//! ([`Arc::make_mut`]): while the dataplane holds the previous [`super::Desired`], a
//! change clones the set, so `Arc::ptr_eq` between two `Desired`s proves a set unchanged.
//!
//! Invariants: `SelEntry::matches` is exactly the set of live objects the selector
//! matches; a set's `members` are exactly the members with a positive count; an entry
//! with no references is removed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use netmodel::selector::Selector;
use typha_proto::Key;

use super::names::{family_digit, hash_hex};
use super::objects::{Net, Obj, Profiles, label_lookup};
use super::{Family, IpSet, IpSetKind};

/// Index of an object slot.
type ObjId = u32;

/// What an ipset holds; its name is a hash of this.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SetSpec {
    /// `hash:net`: the addresses / nets of the objects a selector matches.
    Selector {
        /// Family of the members.
        family: Family,
        /// Canonical selector text.
        selector: String,
    },
    /// `hash:ip,port`: `ip,proto:port` of the endpoints a selector matches that have a
    /// port of that name and protocol.
    NamedPort {
        /// Family of the members.
        family: Family,
        /// Canonical selector text.
        selector: String,
        /// `tcp`, `udp` or `sctp`.
        protocol: &'static str,
        /// The port's name.
        port: String,
    },
    /// `hash:net`: a fixed list of nets (a rule with several CIDRs).
    Nets {
        /// Family of the members.
        family: Family,
        /// Canonical CIDRs, sorted.
        nets: Vec<String>,
    },
}

impl SetSpec {
    /// The ipset name: `cali<family><s|p|n>-` and 20 hex digits of a hash of the spec.
    pub fn name(&self) -> String {
        let (family, tag, text) = match self {
            SetSpec::Selector { family, selector } => (*family, 's', format!("s:{selector}")),
            SetSpec::NamedPort {
                family,
                selector,
                protocol,
                port,
            } => (*family, 'p', format!("p:{protocol}:{port}:{selector}")),
            SetSpec::Nets { family, nets } => (*family, 'n', format!("n:{}", nets.join(","))),
        };
        format!("cali{}{tag}-{}", family_digit(family), hash_hex(&text, 20))
    }

    fn selector(&self) -> Option<&str> {
        match self {
            SetSpec::Selector { selector, .. } | SetSpec::NamedPort { selector, .. } => {
                Some(selector)
            }
            SetSpec::Nets { .. } => None,
        }
    }

    fn family(&self) -> Family {
        match self {
            SetSpec::Selector { family, .. }
            | SetSpec::NamedPort { family, .. }
            | SetSpec::Nets { family, .. } => *family,
        }
    }

    fn kind(&self) -> IpSetKind {
        match self {
            SetSpec::NamedPort { .. } => IpSetKind::IpPort,
            _ => IpSetKind::Net,
        }
    }

    /// The members `obj` contributes when the spec's selector matches it.
    fn contributions(&self, obj: &Obj, out: &mut Vec<String>) {
        match self {
            SetSpec::Selector { family, .. } => {
                for net in obj.nets.iter().filter(|n| n.family == *family) {
                    out.extend(net.hash_net_members());
                }
            }
            SetSpec::NamedPort {
                family,
                protocol,
                port,
                ..
            } => {
                let ports = obj
                    .ports
                    .iter()
                    .filter(|p| p.name == *port && p.protocol == *protocol);
                for p in ports {
                    for net in obj.nets.iter().filter(|n| n.family == *family) {
                        out.push(format!("{},{}:{}", net.addr, p.protocol, p.port));
                    }
                }
            }
            SetSpec::Nets { .. } => {}
        }
    }
}

struct SelEntry {
    selector: Selector,
    scope: Option<String>,
    refs: u32,
    matches: HashSet<ObjId>,
    /// Names of the sets derived from this selector.
    sets: BTreeSet<String>,
}

struct SetEntry {
    spec: SetSpec,
    refs: u32,
    counts: HashMap<String, u32>,
    members: Arc<BTreeSet<String>>,
}

impl SetEntry {
    fn add(&mut self, member: String) {
        let count = self.counts.entry(member.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            Arc::make_mut(&mut self.members).insert(member);
        }
    }

    fn remove(&mut self, member: &str) {
        let Some(count) = self.counts.get_mut(member) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(member);
            Arc::make_mut(&mut self.members).remove(member);
        }
    }
}

/// The object store with namespace and profile indexes.
#[derive(Default)]
struct Objects {
    slots: Vec<Option<Arc<Obj>>>,
    free: Vec<ObjId>,
    ids: HashMap<Key, ObjId>,
    by_namespace: HashMap<String, HashSet<ObjId>>,
    by_profile: HashMap<String, HashSet<ObjId>>,
    /// Objects by their whole profile list (what inherited labels depend on).
    by_profile_list: HashMap<Vec<String>, HashSet<ObjId>>,
    /// Objects with an own label under an inherited prefix (`pcns.`, `pcsa.`): their
    /// inherited-looking labels do not come from their profiles alone.
    own_inherited: HashSet<ObjId>,
    profiles: Profiles,
}

/// Label key prefixes that profiles give their labels.
const INHERITED_PREFIXES: [&str; 2] = ["pcns.", "pcsa."];

fn is_inherited_key(key: &str) -> bool {
    INHERITED_PREFIXES.iter().any(|p| key.starts_with(p))
}

fn has_own_inherited(obj: &Obj) -> bool {
    obj.labels.keys().any(|k| is_inherited_key(k))
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

impl Objects {
    fn get(&self, id: ObjId) -> Option<&Arc<Obj>> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    fn unindex(&mut self, id: ObjId, obj: &Obj) {
        if let Some(ns) = obj.namespace()
            && let Some(set) = self.by_namespace.get_mut(ns)
        {
            set.remove(&id);
            if set.is_empty() {
                self.by_namespace.remove(ns);
            }
        }
        for p in &obj.profiles {
            if let Some(set) = self.by_profile.get_mut(p) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_profile.remove(p);
                }
            }
        }
        if let Some(set) = self.by_profile_list.get_mut(&obj.profiles) {
            set.remove(&id);
            if set.is_empty() {
                self.by_profile_list.remove(&obj.profiles);
            }
        }
        self.own_inherited.remove(&id);
    }

    fn index(&mut self, id: ObjId, obj: &Obj) {
        if let Some(ns) = obj.namespace() {
            self.by_namespace
                .entry(ns.to_string())
                .or_default()
                .insert(id);
        }
        for p in &obj.profiles {
            self.by_profile.entry(p.clone()).or_default().insert(id);
        }
        self.by_profile_list
            .entry(obj.profiles.clone())
            .or_default()
            .insert(id);
        if has_own_inherited(obj) {
            self.own_inherited.insert(id);
        }
    }

    /// The objects a new unscoped selector must be evaluated on: with an inherited-only
    /// part (a namespace selector), only those whose profiles satisfy it, plus the few
    /// objects carrying such labels themselves; otherwise every object.
    fn candidates_for(&self, sel: &Selector) -> Vec<ObjId> {
        let Some(part) = inherited_part(sel) else {
            return self.ids.values().copied().collect();
        };
        let mut out: Vec<ObjId> = self.own_inherited.iter().copied().collect();
        for (list, ids) in &self.by_profile_list {
            let get = |key: &str| {
                list.iter()
                    .filter_map(|p| self.profiles.get(p))
                    .find_map(|labels| labels.get(key).map(String::as_str))
            };
            if part.matches(&get) {
                out.extend(ids.iter().filter(|id| !self.own_inherited.contains(id)));
            }
        }
        out
    }
}

/// Selectors and sets; separate from [`Objects`] so both can be borrowed at once.
#[derive(Default)]
struct Selectors {
    sels: HashMap<String, SelEntry>,
    scoped: HashMap<String, BTreeSet<String>>,
    unscoped: BTreeSet<String>,
    sets: BTreeMap<String, SetEntry>,
}

impl Selectors {
    /// Selector texts that may match an object in namespace `ns` (or none).
    fn candidates(&self, ns: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = self.unscoped.iter().cloned().collect();
        if let Some(scoped) = ns.and_then(|ns| self.scoped.get(ns)) {
            out.extend(scoped.iter().cloned());
        }
        out
    }

    /// Moves `id` from `old` to `new` (either may be absent) for selector `text`.
    fn refresh_one(
        &mut self,
        text: &str,
        id: ObjId,
        old: Option<&Obj>,
        new: Option<&Obj>,
        profiles: &Profiles,
    ) {
        let Some(entry) = self.sels.get_mut(text) else {
            return;
        };
        let was = entry.matches.contains(&id);
        let now = new.is_some_and(|o| entry.selector.matches(&label_lookup(o, profiles)));
        let same_members = match (old, new) {
            (Some(o), Some(n)) => o.nets == n.nets && o.ports == n.ports,
            _ => false,
        };
        if !was && !now || was && now && same_members {
            return;
        }
        if now {
            entry.matches.insert(id);
        } else {
            entry.matches.remove(&id);
        }
        let mut buf = Vec::new();
        for name in &entry.sets {
            let Some(set) = self.sets.get_mut(name) else {
                continue;
            };
            // Add before removing, so a member both had and has never leaves the set.
            if let (true, Some(n)) = (now, new) {
                buf.clear();
                set.spec.contributions(n, &mut buf);
                for m in buf.drain(..) {
                    set.add(m);
                }
            }
            if let (true, Some(o)) = (was, old) {
                set.spec.contributions(o, &mut buf);
                for m in buf.drain(..) {
                    set.remove(&m);
                }
            }
        }
    }
}

/// The label index (see the module docs).
#[derive(Default)]
pub(super) struct Index {
    objects: Objects,
    selectors: Selectors,
}

impl Index {
    /// Profile labels by name.
    pub fn profiles(&self) -> &Profiles {
        &self.objects.profiles
    }

    /// The object stored under `key`.
    pub fn object(&self, key: &Key) -> Option<&Arc<Obj>> {
        let id = self.objects.ids.get(key)?;
        self.objects.get(*id)
    }

    /// Inserts or replaces the object under `key`; `None` removes it.
    pub fn set_object(&mut self, key: &Key, obj: Option<Obj>) {
        let id = match (self.objects.ids.get(key), &obj) {
            (Some(id), _) => *id,
            (None, None) => return,
            (None, Some(_)) => {
                let id = match self.objects.free.pop() {
                    Some(id) => id,
                    None => {
                        self.objects.slots.push(None);
                        u32::try_from(self.objects.slots.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.objects.ids.insert(key.clone(), id);
                id
            }
        };
        let new = obj.map(Arc::new);
        let Some(slot) = self.objects.slots.get_mut(id as usize) else {
            return;
        };
        let old = std::mem::replace(slot, new.clone());
        if let Some(o) = &old {
            self.objects.unindex(id, o);
        }
        if let Some(n) = &new {
            self.objects.index(id, n);
        }
        let old_ns = old.as_ref().and_then(|o| o.namespace());
        let new_ns = new.as_ref().and_then(|n| n.namespace());
        let mut texts = self.selectors.candidates(old_ns);
        // A namespace move also needs the new namespace's scoped selectors.
        if new_ns != old_ns
            && let Some(scoped) = new_ns.and_then(|ns| self.selectors.scoped.get(ns))
        {
            texts.extend(scoped.iter().cloned());
        }
        for text in texts {
            self.selectors.refresh_one(
                &text,
                id,
                old.as_deref(),
                new.as_deref(),
                &self.objects.profiles,
            );
        }
        if new.is_none() {
            self.objects.ids.remove(key);
            self.objects.free.push(id);
        }
    }

    /// Sets (or with `None` removes) a profile's labels and re-evaluates its objects.
    pub fn set_profile(&mut self, name: &str, labels: Option<BTreeMap<String, String>>) {
        match labels {
            Some(l) => self.objects.profiles.insert(name.to_string(), l),
            None => self.objects.profiles.remove(name),
        };
        let ids: Vec<ObjId> = self
            .objects
            .by_profile
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            let Some(obj) = self.objects.get(id).cloned() else {
                continue;
            };
            for text in self.selectors.candidates(obj.namespace()) {
                self.selectors.refresh_one(
                    &text,
                    id,
                    Some(&obj),
                    Some(&obj),
                    &self.objects.profiles,
                );
            }
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
        let scope = selector.required_namespace().map(str::to_string);
        let objects = &self.objects;
        let matches: HashSet<ObjId> = {
            let check = |id: &ObjId| {
                objects
                    .get(*id)
                    .is_some_and(|o| selector.matches(&label_lookup(o, &objects.profiles)))
            };
            match &scope {
                Some(ns) => objects
                    .by_namespace
                    .get(ns)
                    .map(|ids| ids.iter().copied().filter(check).collect())
                    .unwrap_or_default(),
                None => objects
                    .candidates_for(&selector)
                    .into_iter()
                    .filter(check)
                    .collect(),
            }
        };
        match &scope {
            Some(ns) => {
                self.selectors
                    .scoped
                    .entry(ns.clone())
                    .or_default()
                    .insert(text.to_string());
            }
            None => {
                self.selectors.unscoped.insert(text.to_string());
            }
        }
        self.selectors.sels.insert(
            text.to_string(),
            SelEntry {
                selector,
                scope,
                refs: 1,
                matches,
                sets: BTreeSet::new(),
            },
        );
    }

    fn release_selector(&mut self, text: &str) {
        let Some(entry) = self.selectors.sels.get_mut(text) else {
            return;
        };
        entry.refs -= 1;
        if entry.refs > 0 {
            return;
        }
        let scope = entry.scope.clone();
        self.selectors.sels.remove(text);
        match scope {
            Some(ns) => {
                if let Some(set) = self.selectors.scoped.get_mut(&ns) {
                    set.remove(text);
                    if set.is_empty() {
                        self.selectors.scoped.remove(&ns);
                    }
                }
            }
            None => {
                self.selectors.unscoped.remove(text);
            }
        }
    }

    /// Takes a reference on the set `spec` defines, creating and filling it if new.
    pub fn acquire_set(&mut self, spec: &SetSpec) {
        let name = spec.name();
        if let Some(entry) = self.selectors.sets.get_mut(&name) {
            entry.refs += 1;
            return;
        }
        let mut entry = SetEntry {
            spec: spec.clone(),
            refs: 1,
            counts: HashMap::new(),
            members: Arc::new(BTreeSet::new()),
        };
        if let SetSpec::Nets { nets, .. } = spec {
            for net in nets.iter().filter_map(|n| Net::parse(n)) {
                for m in net.hash_net_members() {
                    entry.add(m);
                }
            }
        }
        if let Some(text) = spec.selector() {
            self.acquire_selector(text);
            if let Some(sel) = self.selectors.sels.get_mut(text) {
                sel.sets.insert(name.clone());
                let mut buf = Vec::new();
                for id in &sel.matches {
                    if let Some(obj) = self.objects.get(*id) {
                        spec.contributions(obj, &mut buf);
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
            self.release_selector(text);
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
