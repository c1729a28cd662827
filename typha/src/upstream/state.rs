//! Per-resource relist bookkeeping: which keys a resource has produced, and the deletes a
//! fresh list implies.
//!
//! A watcher restarts with a full list after a 410 Gone or a reconnect (`Init`,
//! `InitApply`*, `InitDone`). Objects deleted while the watch was down never produce a
//! `Delete` event, so at `InitDone` every key produced before and absent from the new list
//! is deleted. Listed values are forwarded as they arrive (the cache drops unchanged values
//! as no-ops, so relisting an unchanged cluster yields zero deltas) and only the key set
//! is held, not the objects.
//!
//! Pure: no I/O, no clock; driven by [`Input`]s, returns the updates to emit.

use std::collections::HashSet;

use typha_proto::{Key, Update};

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
}

/// What one resource has produced so far.
#[derive(Debug, Default)]
pub struct ResourceState {
    /// Keys currently holding a value in the model because of this resource.
    live: HashSet<Key>,
    /// During a (re)list: the keys listed so far.
    listing: Option<HashSet<Key>>,
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

    fn record(&mut self, update: &Update) {
        if update.value.is_some() {
            self.live.insert(update.key.clone());
        } else {
            self.live.remove(&update.key);
        }
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
            Input::Init => self.listing = Some(HashSet::new()),
            Input::InitApply(update) => {
                if update.value.is_some() {
                    // A missing Init (never expected) is treated as its start.
                    self.listing
                        .get_or_insert_with(HashSet::new)
                        .insert(update.key.clone());
                }
                self.record(&update);
                out.push(update);
            }
            Input::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let mut stale: Vec<Key> = self.live.difference(&listed).cloned().collect();
                stale.sort();
                out.extend(stale.into_iter().map(Update::delete));
                self.live = listed;
                self.synced = true;
            }
            Input::Gone => {
                self.listing = None;
                let mut all: Vec<Key> = self.live.drain().collect();
                all.sort();
                out.extend(all.into_iter().map(Update::delete));
            }
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
        let mut s = ResourceState::new();
        run(
            &mut s,
            vec![
                Input::Init,
                Input::InitApply(node("a", "1")),
                Input::InitApply(node("b", "1")),
                Input::InitDone,
                Input::Apply(node("c", "1")),
            ],
        );
        // Watch lost; b was deleted and a changed meanwhile; c unchanged.
        let out = run(
            &mut s,
            vec![
                Input::Init,
                Input::InitApply(node("a", "2")),
                Input::InitApply(node("c", "1")),
                Input::InitDone,
            ],
        );
        assert_eq!(
            out,
            vec![node("a", "2"), node("c", "1"), Update::delete(key("b"))]
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn relist_of_unchanged_cluster_emits_only_the_same_values() {
        let mut s = ResourceState::new();
        let list = vec![
            Input::Init,
            Input::InitApply(node("a", "1")),
            Input::InitApply(node("b", "1")),
            Input::InitDone,
        ];
        let first = run(&mut s, list.clone());
        let second = run(&mut s, list);
        // Identical values (the cache's no-ops) and no deletes.
        assert_eq!(first, second);
        assert!(second.iter().all(|u| u.value.is_some()));
    }

    #[test]
    fn restarted_list_and_rejected_objects() {
        let mut s = ResourceState::new();
        run(
            &mut s,
            vec![
                Input::Init,
                Input::InitApply(node("a", "1")),
                Input::InitApply(node("b", "1")),
                Input::InitDone,
            ],
        );
        // A relist fails half-way (Init again), then completes; "a" is now rejected
        // (a delete), "b" is gone, "d" is new.
        let out = run(
            &mut s,
            vec![
                Input::Init,
                Input::InitApply(node("d", "1")),
                Input::Init,
                Input::InitApply(Update::delete(key("a"))),
                Input::InitApply(node("d", "1")),
                Input::InitDone,
            ],
        );
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
        let mut s = ResourceState::new();
        run(
            &mut s,
            vec![
                Input::Init,
                Input::InitApply(node("a", "1")),
                Input::InitDone,
            ],
        );
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
