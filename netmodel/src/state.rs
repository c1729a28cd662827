//! Per-resource relist bookkeeping: which keys a resource has produced, and the deletes a
//! fresh list implies.
//!
//! A watcher restarts with a full list after a 410 Gone or a reconnect (`Init`,
//! `InitApply`*, `InitDone`). Objects deleted while the watch was down never produce a
//! `Delete` event, so at `InitDone` every key produced before and absent from the new list
//! is deleted. Listed values are forwarded as they arrive (the cache drops unchanged values
//! as no-ops, so relisting an unchanged cluster yields zero deltas) and only the keys are
//! held, not the objects: one map from each live key to the number of the last list that
//! listed it, so a (re)list needs no second set of keys (at 150,000 pods a second set was
//! about 20 MiB during every list).
//!
//! Each resource also has a [`VersionTracker`]: the resourceVersions its events carry,
//! summarised per batch as a [`ResourceMark`] (the resource's version after the batch,
//! unknown during a list or after an unparsable version; whether the changes came from
//! a list). A completed list stands for the list's own resourceVersion (what
//! [`crate::listwatch`] reports at its end; without one, the highest among its objects,
//! an empty list 0), a bookmark for its version. A list version below the tracker's
//! means the datastore was restored (its resourceVersions started over lower): the
//! version goes down with it, and the snapshot cache treats older positions as
//! incomparable.
//!
//! Pure: no I/O, no clock; driven by [`Input`]s, returns the updates to emit.

use std::collections::HashMap;

use typha_proto::{Key, Update};

use typha_proto::ResourceMark;

/// The resourceVersion of one watcher event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventVersion {
    /// The object's `metadata.resourceVersion`, parsed.
    Known(u64),
    /// The object's resourceVersion is absent or not an integer.
    Unparsable,
    /// The event carries no object (`Init`, `InitDone`, a CRD gone).
    NoObject,
}

impl EventVersion {
    /// Parses a `metadata.resourceVersion` (etcd-backed API servers and kube-sim use
    /// decimal integers).
    pub fn parse(raw: Option<&str>) -> EventVersion {
        match raw.and_then(|s| s.parse::<u64>().ok()) {
            Some(v) => EventVersion::Known(v),
            None => EventVersion::Unparsable,
        }
    }
}

/// What kind of event a [`VersionTracker`] observes (an [`Input`] without its payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A (re)list starts.
    ListStart,
    /// An object of the (re)list.
    Listed,
    /// The (re)list is complete.
    ListDone,
    /// A watch event (added, modified, deleted).
    Watched,
    /// The resource is gone (CRD not installed).
    Gone,
}

impl Observed {
    /// The kind of `input`.
    pub fn of(input: &Input) -> Observed {
        match input {
            Input::Init => Observed::ListStart,
            Input::InitApply(_) => Observed::Listed,
            Input::InitDone => Observed::ListDone,
            Input::Apply(_) | Input::Delete(_) | Input::Progress => Observed::Watched,
            Input::Gone => Observed::Gone,
        }
    }
}

/// One resource's resourceVersion bookkeeping (see the module docs).
#[derive(Debug, Default)]
pub struct VersionTracker {
    /// Every change up to this version has been emitted.
    version: Option<u64>,
    /// During a list: the highest version listed so far (used when the list's own
    /// version is not known).
    list_max: Option<u64>,
    listing: bool,
    /// An unparsable version was seen, and no parsable watch event since.
    unparsable: bool,
    /// The resource went away (CRD removed) and has not listed since.
    gone: bool,
    /// Since the last mark: whether anything was observed, and whether from a list.
    touched: bool,
    listed: bool,
}

impl VersionTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Observes one event; `emitted`: how many updates it produced. Returns true when
    /// the version just became unparsable (log it once).
    pub fn observe(&mut self, event: Observed, version: EventVersion, emitted: usize) -> bool {
        let was_unparsable = self.unparsable;
        match event {
            Observed::ListStart => {
                self.listing = true;
                self.list_max = None;
                self.touched = true;
                self.listed = true;
            }
            Observed::Listed => {
                self.touched = true;
                self.listed = true;
                match version {
                    EventVersion::Known(v) => {
                        self.list_max = self.list_max.max(Some(v));
                    }
                    EventVersion::Unparsable => self.unparsable = true,
                    EventVersion::NoObject => {}
                }
            }
            Observed::ListDone => {
                self.touched = true;
                self.listed = true;
                self.listing = false;
                self.gone = false;
                let list_max = self.list_max.take();
                self.version = match version {
                    // The list's own version: exact, and lower after a restore.
                    EventVersion::Known(v) => Some(v),
                    _ => self.version.max(list_max),
                };
            }
            Observed::Watched => {
                self.touched = true;
                match version {
                    EventVersion::Known(v) => {
                        self.version = self.version.max(Some(v));
                        self.unparsable = false;
                    }
                    EventVersion::Unparsable => self.unparsable = true,
                    EventVersion::NoObject => {}
                }
            }
            Observed::Gone => {
                self.listing = false;
                self.list_max = None;
                if emitted > 0 {
                    self.gone = true;
                    self.touched = true;
                    self.listed = true;
                }
            }
        }
        self.unparsable && !was_unparsable
    }

    /// The version every change up to which has been emitted, if any.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The mark for the batch that ends now, if this resource was observed in it.
    pub fn take_mark(&mut self, resource: &str) -> Option<ResourceMark> {
        if !std::mem::take(&mut self.touched) {
            return None;
        }
        let known = !(self.listing || self.unparsable || self.gone);
        Some(ResourceMark {
            resource: resource.to_string(),
            // A resource that never had an object is consistently at 0.
            version: known.then(|| self.version.unwrap_or(0)),
            listed: std::mem::take(&mut self.listed) || self.unparsable,
        })
    }
}

/// One already-converted watcher event.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// An object was added or modified (or rejected: then a delete of its key).
    Apply(Update),
    /// An object was deleted.
    Delete(Key),
    /// A (re)list starts.
    Init,
    /// An object of the (re)list.
    InitApply(Update),
    /// The (re)list is complete.
    InitDone,
    /// The resource is gone (its CRD is not installed): everything it produced goes.
    Gone,
    /// A bookmark: no change, only a newer version.
    Progress,
}

/// What one resource has produced so far.
#[derive(Debug, Default)]
pub struct ResourceState {
    /// Keys currently holding a value in the model because of this resource, each with
    /// the number of the last list that listed it (0: none did).
    live: HashMap<Key, u32>,
    /// During a (re)list: its number.
    listing: Option<u32>,
    /// Lists started so far (the last list's number).
    lists: u32,
    /// Whether a list has completed at least once.
    synced: bool,
}

impl ResourceState {
    /// An empty state: nothing produced, never listed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a list has completed at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// How many keys this resource currently holds in the model.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether this resource currently holds no keys.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Records a watched update: a set keeps the key's list number (0 for a new key), a
    /// delete forgets the key.
    fn record(&mut self, update: &Update) {
        if update.value.is_some() {
            if !self.live.contains_key(&update.key) {
                self.live.insert(update.key.clone(), 0);
            }
        } else {
            self.live.remove(&update.key);
        }
    }

    /// Starts a list: its number.
    fn start_list(&mut self) -> u32 {
        self.lists = self.lists.wrapping_add(1).max(1);
        self.listing = Some(self.lists);
        self.lists
    }

    /// Applies one event; appends the updates it implies to `out`.
    pub fn apply(&mut self, input: Input, out: &mut Vec<Update>) {
        match input {
            Input::Apply(update) => {
                self.record(&update);
                out.push(update);
            }
            Input::Delete(key) => {
                self.live.remove(&key);
                out.push(Update::delete(key));
            }
            Input::Init => {
                self.start_list();
            }
            Input::InitApply(update) => {
                if update.value.is_some() {
                    // A missing Init (never expected) is treated as its start.
                    let list = match self.listing {
                        Some(list) => list,
                        None => self.start_list(),
                    };
                    match self.live.get_mut(&update.key) {
                        Some(listed) => *listed = list,
                        None => {
                            self.live.insert(update.key.clone(), list);
                        }
                    }
                } else {
                    self.live.remove(&update.key);
                }
                out.push(update);
            }
            Input::InitDone => {
                // A missing Init: nothing was listed by this list, every key is stale.
                let list = self.listing.take().unwrap_or(0);
                let mut stale: Vec<Key> = Vec::new();
                self.live.retain(|key, listed| {
                    let keep = list != 0 && *listed == list;
                    if !keep {
                        stale.push(key.clone());
                    }
                    keep
                });
                stale.sort();
                out.extend(stale.into_iter().map(Update::delete));
                self.synced = true;
            }
            Input::Gone => {
                self.listing = None;
                let mut all: Vec<Key> = self.live.drain().map(|(key, _)| key).collect();
                all.sort();
                out.extend(all.into_iter().map(Update::delete));
            }
            Input::Progress => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use typha_proto::{Kind, Value, pb};

    fn key(name: &str) -> Key {
        Key::cluster(Kind::Node, name).unwrap()
    }

    fn node(name: &str, label: &str) -> Update {
        let value = Value::Node(pb::Node {
            name: name.into(),
            labels: [("l".to_string(), label.to_string())].into(),
            ..Default::default()
        });
        Update::new(key(name), Some(value)).unwrap()
    }

    fn run(state: &mut ResourceState, inputs: Vec<Input>) -> Vec<Update> {
        let mut out = Vec::new();
        for i in inputs {
            state.apply(i, &mut out);
        }
        out
    }

    /// A complete list of `updates`.
    fn list(updates: impl IntoIterator<Item = Update>) -> Vec<Input> {
        let mut inputs = vec![Input::Init];
        inputs.extend(updates.into_iter().map(Input::InitApply));
        inputs.push(Input::InitDone);
        inputs
    }

    /// A state in sync after listing the nodes `names` (all labelled "1").
    fn listed(names: &[&str]) -> ResourceState {
        let mut s = ResourceState::new();
        run(&mut s, list(names.iter().map(|n| node(n, "1"))));
        s
    }

    fn observe_all(t: &mut VersionTracker, events: &[(Input, EventVersion)]) {
        for (input, version) in events {
            t.observe(Observed::of(input), *version, 1);
        }
    }

    /// A complete list of one object at `object`, ending at `list`.
    fn relist(t: &mut VersionTracker, object: EventVersion, list: EventVersion) {
        let listed = Input::InitApply(node("a", "1"));
        let start = (Input::Init, EventVersion::NoObject);
        observe_all(t, &[start, (listed, object), (Input::InitDone, list)]);
    }

    #[test]
    fn version_tracker_marks_lists_watches_and_unparsable() {
        use EventVersion::{Known, NoObject, Unparsable};
        let mut t = VersionTracker::new();
        assert_eq!(t.take_mark("nodes"), None);
        observe_all(
            &mut t,
            &[
                (Input::Init, NoObject),
                (Input::InitApply(node("a", "1")), Known(7)),
            ],
        );
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::listed("nodes", None))
        );
        observe_all(
            &mut t,
            &[
                (Input::InitApply(node("b", "1")), Known(4)),
                (Input::InitDone, NoObject),
            ],
        );
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::listed("nodes", Some(7)))
        );
        // The list's own version wins over its objects' (a delete it reflects).
        relist(&mut t, Known(7), Known(8));
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::listed("nodes", Some(8)))
        );
        observe_all(&mut t, &[(Input::Apply(node("a", "2")), Known(9))]);
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::watched("nodes", 9))
        );
        // A bookmark advances the version without a change.
        observe_all(&mut t, &[(Input::Progress, Known(11))]);
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::watched("nodes", 11))
        );
        // A restored datastore: the list's version is lower, and so is the tracker's.
        relist(&mut t, Known(2), Known(3));
        assert_eq!(t.version(), Some(3));
        t.take_mark("nodes");
        observe_all(&mut t, &[(Input::Apply(node("a", "3")), Known(9))]);
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::watched("nodes", 9))
        );
        // A relist that lists only older objects keeps the version.
        relist(&mut t, Known(9), NoObject);
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::listed("nodes", Some(9)))
        );
        // Unparsable: unknown (and listed: always resent) until a parsable event.
        assert!(t.observe(Observed::Watched, Unparsable, 1));
        assert!(!t.observe(Observed::Watched, Unparsable, 1));
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::listed("nodes", None))
        );
        observe_all(&mut t, &[(Input::Apply(node("a", "5")), Known(12))]);
        assert_eq!(
            t.take_mark("nodes"),
            Some(ResourceMark::watched("nodes", 12))
        );
    }

    #[test]
    fn version_tracker_empty_lists_and_gone() {
        let mut t = VersionTracker::new();
        observe_all(
            &mut t,
            &[
                (Input::Init, EventVersion::NoObject),
                (Input::InitDone, EventVersion::NoObject),
            ],
        );
        // Never had an object: consistently at 0.
        assert_eq!(
            t.take_mark("ippools"),
            Some(ResourceMark::listed("ippools", Some(0)))
        );
        // A CRD that is not installed and produced nothing is not a change.
        t.observe(Observed::Gone, EventVersion::NoObject, 0);
        assert_eq!(t.take_mark("ippools"), None);
        // One whose keys were withdrawn is unknown until it lists again.
        t.observe(Observed::Gone, EventVersion::NoObject, 2);
        assert_eq!(
            t.take_mark("ippools"),
            Some(ResourceMark::listed("ippools", None))
        );
        assert_eq!(EventVersion::parse(Some("42")), EventVersion::Known(42));
        assert_eq!(EventVersion::parse(Some("x1")), EventVersion::Unparsable);
        assert_eq!(EventVersion::parse(None), EventVersion::Unparsable);
    }

    #[test]
    fn initial_list_emits_values_and_syncs() {
        let mut s = ResourceState::new();
        assert!(!s.is_synced());
        let out = run(
            &mut s,
            vec![
                Input::Init,
                Input::InitApply(node("a", "1")),
                Input::InitApply(node("b", "1")),
            ],
        );
        assert_eq!(out, vec![node("a", "1"), node("b", "1")]);
        assert!(!s.is_synced(), "not synced before InitDone");
        assert!(run(&mut s, vec![Input::InitDone]).is_empty());
        assert!(s.is_synced());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn relist_deletes_what_vanished_and_keeps_the_rest() {
        let mut s = listed(&["a", "b"]);
        run(&mut s, vec![Input::Apply(node("c", "1"))]);
        // Watch lost; b was deleted and a changed meanwhile; c unchanged.
        let out = run(&mut s, list([node("a", "2"), node("c", "1")]));
        assert_eq!(
            out,
            vec![node("a", "2"), node("c", "1"), Update::delete(key("b"))]
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn relist_of_unchanged_cluster_emits_only_the_same_values() {
        let mut s = ResourceState::new();
        let inputs = list([node("a", "1"), node("b", "1")]);
        let first = run(&mut s, inputs.clone());
        let second = run(&mut s, inputs);
        // Identical values (the cache's no-ops) and no deletes.
        assert_eq!(first, second);
        assert!(second.iter().all(|u| u.value.is_some()));
    }

    #[test]
    fn restarted_list_and_rejected_objects() {
        let mut s = listed(&["a", "b"]);
        // A relist fails half-way (Init again), then completes; "a" is now rejected
        // (a delete), "b" is gone, "d" is new.
        let mut inputs = vec![Input::Init, Input::InitApply(node("d", "1"))];
        inputs.extend(list([Update::delete(key("a")), node("d", "1")]));
        let out = run(&mut s, inputs);
        assert_eq!(
            out,
            vec![
                node("d", "1"),
                Update::delete(key("a")),
                node("d", "1"),
                Update::delete(key("b")),
            ]
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn deletes_and_gone() {
        let mut s = listed(&["a"]);
        run(
            &mut s,
            vec![Input::Apply(node("b", "1")), Input::Delete(key("a"))],
        );
        assert_eq!(s.len(), 1);
        let out = run(&mut s, vec![Input::Gone]);
        assert_eq!(out, vec![Update::delete(key("b"))]);
        assert!(s.is_empty());
        // A later relist does not resurrect deletes for keys already withdrawn.
        assert!(run(&mut s, vec![Input::Init, Input::InitDone]).is_empty());
    }
}
