//! Property tests of cross-replica resume: one simulated API (random creates, updates,
//! no-op writes and deletes over two resources, with etcd-like global resourceVersions)
//! feeds two caches through the real upstream bookkeeping (`ResourceState` and
//! `VersionTracker`), each in its own batching, with B starting (listing) later and
//! either replica optionally losing one resource's watch for a while and relisting it.
//! A client that followed A, at a random point, moves to B: whenever B accepts its
//! version vector, B's one rebase batch must bring the client's state to exactly B's
//! (state and digest); without watch outages and with B's whole history, B must accept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use typha_proto::{Kind, pb};

use super::tests::{Mirror, apply_frame, state_of};
use super::*;
use netmodel::state::{EventVersion, Input, Observed, ResourceState, VersionTracker};

const RESOURCES: [&str; 2] = ["pods", "nodes"];
const KEYS: usize = 4;

fn key(resource: usize, index: usize) -> Key {
    match resource {
        0 => Key::new(Kind::WorkloadEndpoint, "x", format!("p{index}")),
        _ => Key::cluster(Kind::Node, format!("n{index}")),
    }
    .unwrap()
}

fn update(resource: usize, index: usize, variant: u8) -> Update {
    let key = key(resource, index);
    let labels = [("v".to_string(), variant.to_string())].into();
    let value = match resource {
        0 => Value::WorkloadEndpoint(pb::WorkloadEndpoint {
            namespace: "x".into(),
            pod: key.name().into(),
            labels,
            ..Default::default()
        }),
        _ => Value::Node(pb::Node {
            name: key.name().into(),
            labels,
            ..Default::default()
        }),
    };
    Update::new(key, Some(value)).unwrap()
}

/// (resource, key, new variant or delete); the event's resourceVersion is its index + 1.
type Event = (usize, usize, Option<u8>);

/// The API's objects after a prefix of the events: (resource, key) -> (variant, rv).
type World = BTreeMap<(usize, usize), (u8, u64)>;

fn world_at(events: &[Event], upto: usize) -> World {
    let mut world = World::new();
    for (i, (r, k, v)) in events.iter().take(upto).enumerate() {
        match v {
            Some(v) => world.insert((*r, *k), (*v, i as u64 + 1)),
            None => world.remove(&(*r, *k)),
        };
    }
    world
}

/// One replica: a cache fed through the upstream's per-resource bookkeeping.
struct Replica {
    cache: SnapshotCache,
    states: Vec<(ResourceState, VersionTracker)>,
    pending: Vec<Update>,
    cuts: Vec<bool>,
    step: usize,
}

impl Replica {
    fn new(config: CacheConfig, cuts: Vec<bool>) -> Replica {
        Replica {
            cache: SnapshotCache::new(config),
            states: RESOURCES
                .iter()
                .map(|_| (ResourceState::new(), VersionTracker::new()))
                .collect(),
            pending: Vec::new(),
            cuts,
            step: 0,
        }
    }

    /// One upstream input; the batch may end after it (the replica's own batching).
    fn input(&mut self, resource: usize, input: Input, version: EventVersion) {
        let (state, _) = &mut self.states[resource];
        let observed = Observed::of(&input);
        let mut out = Vec::new();
        state.apply(input, &mut out);
        // As the upstream does: a key changes at most once per batch.
        if out
            .iter()
            .any(|u| self.pending.iter().any(|p| p.key == u.key))
        {
            self.flush();
        }
        let (_, tracker) = &mut self.states[resource];
        tracker.observe(observed, version, out.len());
        self.pending.extend(out);
        self.step += 1;
        if self.cuts.is_empty() || self.cuts[self.step % self.cuts.len()] {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let marks: Vec<ResourceMark> = self
            .states
            .iter_mut()
            .zip(RESOURCES)
            .filter_map(|((_, tracker), name)| tracker.take_mark(name))
            .collect();
        self.cache
            .apply_marked(std::mem::take(&mut self.pending), &marks);
    }

    /// A (re)list of `resource` as the API holds it in `world`.
    fn list(&mut self, resource: usize, world: &World) {
        self.input(resource, Input::Init, EventVersion::NoObject);
        for ((r, k), (variant, rv)) in world {
            if *r == resource {
                let listed = Input::InitApply(update(*r, *k, *variant));
                self.input(resource, listed, EventVersion::Known(*rv));
            }
        }
        self.input(resource, Input::InitDone, EventVersion::NoObject);
    }

    /// Starts at `world`: every resource listed, then in sync.
    fn start(&mut self, world: &World) {
        for resource in 0..RESOURCES.len() {
            self.list(resource, world);
        }
        self.flush();
        self.cache.mark_in_sync();
    }

    /// Watch event `i` (unless `resource` is in an outage then).
    fn watch(&mut self, events: &[Event], i: usize) {
        let (r, k, v) = events[i];
        let version = EventVersion::Known(i as u64 + 1);
        match v {
            Some(v) => self.input(r, Input::Apply(update(r, k, v)), version),
            None => self.input(r, Input::Delete(key(r, k)), version),
        }
    }

    /// Follows events `from..to`; a watch outage of one resource over `outage` ends in a
    /// relist of it.
    fn follow(&mut self, events: &[Event], from: usize, to: usize, outage: Option<Outage>) {
        for i in from..to {
            if let Some(o) = outage {
                if i == o.end {
                    self.list(o.resource, &world_at(events, i));
                }
                if (o.start..o.end).contains(&i) && events[i].0 == o.resource {
                    continue;
                }
            }
            self.watch(events, i);
        }
        if let Some(o) = outage
            && o.end >= to
            && o.start < to
        {
            self.list(o.resource, &world_at(events, to));
        }
        self.flush();
    }
}

/// Whether B, relisting after `outage`, missed a delete of the relisted resource newer
/// than the version its relist settled at.
fn missed_delete(events: &[Event], start: usize, outage: Outage) -> bool {
    let r = outage.resource;
    let end = outage.end.min(events.len());
    let listed = world_at(events, end)
        .iter()
        .filter(|((res, _), _)| *res == r)
        .map(|(_, (_, rv))| *rv)
        .max();
    let before = world_at(events, start)
        .iter()
        .filter(|((res, _), _)| *res == r)
        .map(|(_, (_, rv))| *rv)
        .chain(
            (start..outage.start)
                .filter(|i| events[*i].0 == r)
                .map(|i| i as u64 + 1),
        )
        .max();
    let settled = listed.max(before).unwrap_or(0);
    (outage.start..end).any(|i| events[i].0 == r && events[i].2.is_none() && i as u64 + 1 > settled)
}

#[derive(Clone, Copy, Debug)]
struct Outage {
    resource: usize,
    start: usize,
    end: usize,
}

/// Events with deletes only of existing objects (an API deletes what exists).
fn events() -> impl Strategy<Value = Vec<Event>> {
    let event = (
        0..RESOURCES.len(),
        0..KEYS,
        proptest::option::weighted(0.75, 0u8..3),
    );
    prop::collection::vec(event, 1..40).prop_map(|raw| {
        let mut live = std::collections::BTreeSet::new();
        raw.into_iter()
            .filter(|(r, k, v)| match v {
                Some(_) => {
                    live.insert((*r, *k));
                    true
                }
                None => live.remove(&(*r, *k)),
            })
            .collect()
    })
}

fn outage(n: usize, seed: (usize, usize, usize, bool)) -> Option<Outage> {
    let (resource, a, b, on) = seed;
    if !on || n == 0 {
        return None;
    }
    let (start, end) = (a % n, b % n);
    Some(Outage {
        resource: resource % RESOURCES.len(),
        start: start.min(end),
        end: start.max(end) + 1,
    })
}

type OutageSeed = (usize, usize, usize, bool);

fn outage_seed() -> impl Strategy<Value = OutageSeed> {
    (
        0..2usize,
        0..64usize,
        0..64usize,
        proptest::bool::weighted(0.3),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_rebased_client_of_another_replica_holds_exactly_its_state(
        events in events(),
        b_start in 0..64usize,
        client_at in 0..64usize,
        cuts_a in prop::collection::vec(proptest::bool::ANY, 1..5),
        cuts_b in prop::collection::vec(proptest::bool::ANY, 1..5),
        outage_a in outage_seed(),
        outage_b in outage_seed(),
        trim in proptest::option::of(1usize..6),
    ) {
        let n = events.len();
        let s = b_start % (n + 1);
        // The client leaves A at or after B's start (see docs/protocol.md on the gap a
        // client older than a replica's initial list could fall into).
        let k = s + client_at % (n - s + 1);
        // A's outage (if any) starts after B listed; B's is after its start too.
        let outage_a = outage(n, outage_a).filter(|o| o.start >= s);
        let outage_b = outage(n, outage_b).filter(|o| o.start >= s);
        // B's history is trimmed only when B keeps no list crumbs it might evict.
        let trim = trim.filter(|_| outage_b.is_none());
        let config_b = CacheConfig {
            max_log_batches: trim.unwrap_or(100_000),
            ..CacheConfig::default()
        };

        let mut a = Replica::new(CacheConfig::default(), cuts_a);
        a.start(&World::new());
        a.follow(&events, 0, k, outage_a);
        let client_state: Mirror = state_of(&a.cache);
        let client_versions = a.cache.versions().clone();

        let mut b = Replica::new(config_b, cuts_b);
        b.start(&world_at(&events, s));
        b.follow(&events, s, n, outage_b);
        // Both replicas watched the same API: they end with the same state, and B never
        // claims more than a replica that watched everything (a list cannot see the
        // version of a delete, so B may claim less).
        let mut a_all = Replica::new(CacheConfig::default(), vec![true]);
        a_all.start(&World::new());
        a_all.follow(&events, 0, n, None);
        prop_assert_eq!(a_all.cache.digest(), b.cache.digest());
        prop_assert_eq!(b.cache.versions().first_above(a_all.cache.versions()), None);

        match b.cache.rebase(&client_versions) {
            // The documented gap (docs/protocol.md): a delete B missed during its outage,
            // newer than anything B's relist listed, leaves no trace in B; the client's
            // digest check catches it. Not asserted here.
            Ok(_) if outage_b.is_some_and(|o| missed_delete(&events, s, o)) => {}
            Ok(rebase) => {
                let mut mirror = client_state;
                let (from, to, digest) = apply_frame(&mut mirror, &rebase.frame);
                prop_assert_eq!((from, to), (b.cache.revision(), b.cache.revision()));
                prop_assert_eq!(digest, b.cache.digest());
                prop_assert_eq!(&mirror, &state_of(&b.cache));
                let typha_proto::frame::ServerFrame::Deltas(batch) =
                    typha_proto::frame::ServerFrame::decode(rebase.frame.clone()).unwrap()
                else {
                    panic!("not deltas")
                };
                prop_assert_eq!(&VersionVector::from_pb(&batch.versions), b.cache.versions());
            }
            Err(refusal) => {
                // With no outage and B's whole history, the only refusal is a client
                // "ahead" where B's list could not see a delete's version.
                let clean = outage_a.is_none() && outage_b.is_none() && trim.is_none();
                let lagging_claim = |r: &str| {
                    b.cache.versions().get(r) < a_all.cache.versions().get(r)
                };
                let excused = matches!(&refusal, RebaseRefusal::Ahead(r) if lagging_claim(r));
                prop_assert!(!clean || excused, "clean history refused: {}", refusal);
            }
        }
    }
}

/// A client older than what B's history covers is refused, and so is one whose replica
/// saw changes B has not; both get snapshots.
#[test]
fn behind_the_floor_and_ahead_are_refused() {
    let events: Vec<Event> = (0..12)
        .map(|i| (i % 2, i % KEYS, Some((i % 3) as u8)))
        .collect();
    let mut a = Replica::new(CacheConfig::default(), vec![true]);
    a.start(&World::new());
    a.follow(&events, 0, 2, None);
    let early = a.cache.versions().clone();
    let mut b = Replica::new(
        CacheConfig {
            max_log_batches: 3,
            ..CacheConfig::default()
        },
        vec![true],
    );
    b.start(&World::new());
    b.follow(&events, 0, 12, None);
    assert!(matches!(
        b.cache.rebase(&early).unwrap_err(),
        RebaseRefusal::BehindHistory(_)
    ));
    let mut ahead = b.cache.versions().clone();
    ahead.advance("nodes", 99);
    assert_eq!(
        b.cache.rebase(&ahead).unwrap_err(),
        RebaseRefusal::Ahead("nodes".into())
    );
    // A client at B's own current vector gets an empty rebase batch with the digest.
    let current = b.cache.versions().clone();
    let rebase = b.cache.rebase(&current).unwrap();
    assert_eq!(rebase.keys, 0);
    // A bare (unmarked) batch switches cross-replica resume off.
    b.cache.apply([update(0, 0, 9)]);
    assert_eq!(
        b.cache.rebase(&current).unwrap_err(),
        RebaseRefusal::Unversioned
    );
}
