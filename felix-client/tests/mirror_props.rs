//! Property tests of the client [`Mirror`] fed by the server's real `SnapshotCache`: any
//! interleaving of server batches, single and coalesced delta frames, resumes, fresh
//! snapshots and connections lost mid-snapshot leaves the mirror equal to a BTreeMap
//! oracle of the server's history at the mirror's revision, with a matching digest, and
//! converges to the cache once everything is delivered. The consumer's view, built only
//! from the emitted changes, always equals the mirror, and a snapshot reports exactly the
//! difference from the old mirror. Unit tests cover the mirror's error paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use felix_client::mirror::{MAX_CHUNK_RAW_BYTES, Mirror, MirrorError};
use proptest::prelude::*;
use typha::cache::{Breadcrumb, CacheConfig, DeltasSince, SnapshotCache, coalesce, compress};
use typha_proto::digest::EntryHash;
use typha_proto::frame::{RawDeltaBatch, ServerFrame};
use typha_proto::{Digest, Key, Kind, Revision, Update, Value, pb};

type State = BTreeMap<Key, Value>;

/// Size of the key space: small, so that updates collide (replace, delete, re-add, no-op).
const KEYS: usize = 8;

fn key(index: usize) -> Key {
    match index {
        0 => Key::new(Kind::WorkloadEndpoint, "x", "pod-a"),
        1 => Key::new(Kind::WorkloadEndpoint, "x", "pod-b"),
        2 => Key::new(Kind::WorkloadEndpoint, "y", "pod-a"),
        3 => Key::cluster(Kind::Profile, "kns.x"),
        4 => Key::cluster(Kind::Profile, "kns.y"),
        5 => Key::cluster(Kind::Node, "n1"),
        6 => Key::cluster(Kind::Node, "n2"),
        _ => Key::new(Kind::K8sNetworkPolicy, "x", "allow-web"),
    }
    .unwrap()
}

/// One of three values for the key's kind, differing in labels (or selector).
fn value(key: &Key, variant: u8) -> Value {
    let labels: BTreeMap<String, String> = [
        ("app".to_string(), format!("web-{variant}")),
        ("tier".to_string(), "frontend".to_string()),
    ]
    .into();
    match key.kind() {
        Kind::WorkloadEndpoint => Value::WorkloadEndpoint(pb::WorkloadEndpoint {
            namespace: key.namespace().into(),
            pod: key.name().into(),
            node: "n1".into(),
            ip_nets: vec![format!("10.0.0.{variant}/32")],
            labels,
            profile_ids: vec![format!("kns.{}", key.namespace())],
            ..Default::default()
        }),
        Kind::Profile => Value::Profile(pb::Profile { labels }),
        Kind::Node => Value::Node(pb::Node {
            name: key.name().into(),
            labels,
            ipv4_address: format!("192.168.0.{variant}"),
            ..Default::default()
        }),
        _ => Value::Policy(pb::Policy {
            namespace: key.namespace().into(),
            selector: format!("app == 'web-{variant}'"),
            ..Default::default()
        }),
    }
}

/// (key index, value variant or delete).
type Op = (usize, Option<u8>);

fn update((index, variant): Op) -> Update {
    let key = key(index);
    let value = variant.map(|v| value(&key, v));
    Update::new(key, value).unwrap()
}

/// One event of a run: the server applies a batch, or the client's connection does
/// something.
#[derive(Clone, Debug)]
enum Step {
    Server(Vec<Op>),
    Deliver,
    Coalesced(usize),
    Resume,
    Resnapshot,
    LoseMidSnapshot(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let op = (0..KEYS, proptest::option::weighted(0.7, 0u8..3));
    let step = prop_oneof![
        5 => prop::collection::vec(op, 0..5).prop_map(Step::Server),
        3 => Just(Step::Deliver),
        2 => (2usize..6).prop_map(Step::Coalesced),
        1 => Just(Step::Resume),
        1 => Just(Step::Resnapshot),
        1 => any::<usize>().prop_map(Step::LoseMidSnapshot),
    ];
    prop::collection::vec(step, 1..60)
}

/// The digest recomputed from scratch (encoding is deterministic: maps are BTreeMaps).
fn digest_of(state: &State) -> Digest {
    let mut digest = Digest::EMPTY;
    for (k, v) in state {
        digest.add(EntryHash::of(
            &Update::new(k.clone(), Some(v.clone())).unwrap().encode(),
        ));
    }
    digest
}

fn state_of<'a>(entries: impl Iterator<Item = (&'a Key, &'a Value)>) -> State {
    entries.map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn deltas(frame: Bytes) -> RawDeltaBatch {
    match ServerFrame::decode(frame).unwrap() {
        ServerFrame::Deltas(batch) => batch,
        other => panic!("not a delta frame: {other:?}"),
    }
}

/// The snapshot of `cache`'s current state, as the client decodes it.
fn snapshot(cache: &SnapshotCache) -> (Vec<pb::SnapshotChunk>, pb::InSync) {
    let encoded = compress(&cache.build_snapshot(), 1).unwrap();
    let chunks =
        encoded
            .chunk_frames
            .iter()
            .map(|f| match ServerFrame::decode(f.clone()).unwrap() {
                ServerFrame::SnapshotChunk(chunk) => chunk,
                other => panic!("not a chunk: {other:?}"),
            });
    let ServerFrame::InSync(in_sync) = ServerFrame::decode(encoded.in_sync_frame).unwrap() else {
        panic!("not in-sync");
    };
    (chunks.collect(), in_sync)
}

/// A server, its history (the oracle at every revision) and one client.
struct World {
    cache: SnapshotCache,
    history: Vec<State>,
    mirror: Mirror,
    /// The consumer's copy, built only from the changes the mirror emitted.
    view: State,
    /// Crumbs the server still owes the client; `None` while disconnected.
    pending: Option<VecDeque<Arc<Breadcrumb>>>,
    /// Resumes refused because the log had moved on.
    expired: usize,
    snapshots: usize,
}

impl World {
    fn new(config: CacheConfig) -> World {
        World {
            cache: SnapshotCache::new(config),
            history: vec![State::new()],
            mirror: Mirror::new(),
            view: State::new(),
            pending: None,
            expired: 0,
            snapshots: 0,
        }
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Server(ops) => self.server(ops),
            Step::Deliver => {
                if let Some(crumb) = self.pending.as_mut().and_then(VecDeque::pop_front) {
                    self.feed(crumb.frame.clone());
                }
            }
            Step::Coalesced(n) => {
                let Some(pending) = self.pending.as_mut() else {
                    return;
                };
                let crumbs: Vec<_> = pending.drain(..(*n).min(pending.len())).collect();
                if let Some(frame) = coalesce(&crumbs) {
                    self.feed(frame);
                }
            }
            Step::Resume => self.reconnect(true),
            Step::Resnapshot => self.reconnect(false),
            Step::LoseMidSnapshot(cut) => self.lose_mid_snapshot(*cut),
        }
        self.check();
    }

    fn server(&mut self, ops: &[Op]) {
        let updates: Vec<Update> = ops.iter().copied().map(update).collect();
        let mut oracle = self.history.last().unwrap().clone();
        for u in &updates {
            match &u.value {
                Some(v) => oracle.insert(u.key.clone(), v.clone()),
                None => oracle.remove(&u.key),
            };
        }
        let crumb = self.cache.apply(updates);
        assert_eq!(crumb.is_none(), &oracle == self.history.last().unwrap());
        if let Some(crumb) = crumb {
            self.history.push(oracle);
            assert_eq!(crumb.revision.0 as usize, self.history.len() - 1);
            if let Some(pending) = self.pending.as_mut() {
                pending.push_back(crumb);
            }
        }
    }

    fn feed(&mut self, frame: Bytes) {
        let changes = self.mirror.apply_deltas(deltas(frame)).unwrap();
        self.consume(changes);
    }

    /// Applies `changes` to the consumer's view; each must really change it.
    fn consume(&mut self, changes: Vec<Update>) {
        for change in changes {
            assert_ne!(
                self.view.get(&change.key),
                change.value.as_ref(),
                "no-op change {change:?}"
            );
            match change.value {
                Some(v) => self.view.insert(change.key, v),
                None => self.view.remove(&change.key),
            };
        }
    }

    fn reconnect(&mut self, resume: bool) {
        self.pending = None;
        let epoch = self.cache.epoch().to_string();
        if let Some(position) = self.mirror.resume_position().filter(|_| resume) {
            assert_eq!(position.epoch, epoch);
            assert_eq!(position.revision, self.mirror.revision().0);
            assert_eq!(position.digest, self.mirror.digest().to_bytes());
            match self.cache.deltas_since(Revision(position.revision)) {
                DeltasSince::UpToDate => {
                    self.mirror.start_session(&epoch, true);
                    self.pending = Some(VecDeque::new());
                    return;
                }
                DeltasSince::Crumbs(crumbs) => {
                    self.mirror.start_session(&epoch, true);
                    self.pending = Some(crumbs.into());
                    return;
                }
                DeltasSince::Expired => self.expired += 1,
            }
        }
        self.mirror.start_session(&epoch, false);
        let (chunks, in_sync) = snapshot(&self.cache);
        let before = self.view.clone();
        for chunk in chunks {
            self.mirror.apply_chunk(chunk).unwrap();
        }
        assert_eq!(
            state_of(self.mirror.iter()),
            before,
            "staged, not yet swapped in"
        );
        let changes = self.mirror.finish_snapshot(&in_sync).unwrap();
        self.snapshots += 1;
        // Exactly the difference: upserts for new or changed keys, deletes for vanished.
        let now = &self.history[self.cache.revision().0 as usize];
        let mut expected: BTreeMap<Key, Option<Value>> = now
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        expected.extend(
            before
                .keys()
                .filter(|k| !now.contains_key(*k))
                .map(|k| (k.clone(), None)),
        );
        let got: BTreeMap<Key, Option<Value>> = changes
            .iter()
            .map(|u| (u.key.clone(), u.value.clone()))
            .collect();
        assert_eq!(
            got.len(),
            changes.len(),
            "a key reported twice: {changes:?}"
        );
        assert_eq!(got, expected);
        self.consume(changes);
        self.pending = Some(VecDeque::new());
    }

    fn lose_mid_snapshot(&mut self, cut: usize) {
        self.pending = None;
        let (revision, digest, before) = (
            self.mirror.revision(),
            self.mirror.digest(),
            self.view.clone(),
        );
        self.mirror.start_session(self.cache.epoch(), false);
        let (chunks, _) = snapshot(&self.cache);
        let cut = cut % chunks.len();
        for chunk in chunks.into_iter().take(cut) {
            self.mirror.apply_chunk(chunk).unwrap();
        }
        assert_eq!(
            (self.mirror.revision(), self.mirror.digest()),
            (revision, digest)
        );
        assert_eq!(state_of(self.mirror.iter()), before);
    }

    /// Invariants after every step.
    fn check(&self) {
        let mirror = state_of(self.mirror.iter());
        assert_eq!(mirror, self.view, "the change stream rebuilds the mirror");
        assert_eq!(self.mirror.len(), mirror.len());
        assert_eq!(self.mirror.digest(), digest_of(&mirror));
        assert_eq!(
            mirror,
            self.history[self.mirror.revision().0 as usize],
            "state at its revision"
        );
        if self.pending.as_ref().is_some_and(VecDeque::is_empty) {
            assert_eq!(self.mirror.revision(), self.cache.revision());
            assert_eq!(self.mirror.digest(), self.cache.digest());
        }
    }

    /// Reconnects (resuming if possible) and delivers everything owed.
    fn converge(&mut self) {
        self.step(&Step::Resume);
        while self.pending.as_ref().is_some_and(|p| !p.is_empty()) {
            self.step(&Step::Deliver);
        }
        assert!(self.mirror.has_synced());
        assert_eq!(self.mirror.revision(), self.cache.revision());
        assert_eq!(self.mirror.digest(), self.cache.digest());
        let mirror = state_of(self.mirror.iter());
        assert_eq!(mirror, state_of(self.cache.iter()));
        assert_eq!(&mirror, self.history.last().unwrap());
    }
}

fn config(max_log_batches: usize, chunk_raw_bytes: usize) -> CacheConfig {
    CacheConfig {
        max_log_batches,
        chunk_raw_bytes,
        ..CacheConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mirror_converges_under_any_interleaving(steps in steps(), max_log in 1usize..5) {
        let mut world = World::new(config(max_log, 256));
        for step in &steps {
            world.step(step);
        }
        world.converge();
    }

    #[test]
    fn change_stream_alone_rebuilds_the_mirror(steps in steps()) {
        // One entry per chunk and a one-crumb log: the most snapshots and chunk edges.
        let mut world = World::new(config(1, 1));
        for step in &steps {
            world.step(step);
            prop_assert_eq!(&world.view, &state_of(world.mirror.iter()));
        }
        world.converge();
        prop_assert_eq!(&world.view, world.history.last().unwrap());
    }
}

#[test]
fn resume_after_log_expiry_falls_back_to_snapshot() {
    let mut world = World::new(config(2, 256));
    world.step(&Step::Resume); // never synced: a snapshot
    world.step(&Step::Server(vec![(0, Some(0)), (3, Some(1))]));
    world.step(&Step::Deliver);
    world.step(&Step::Resume); // up to date
    world.step(&Step::LoseMidSnapshot(0));
    for variant in 0..5 {
        world.step(&Step::Server(vec![
            (5, Some(variant % 3)),
            (7, Some(variant % 3)),
            (1, None),
        ]));
    }
    world.converge();
    assert_eq!((world.expired, world.snapshots), (1, 2));
    assert!(world.cache.len() >= 3);
}

/// A cache with a few entries over several chunks and a mirror in sync with it.
fn synced() -> (SnapshotCache, Mirror) {
    let mut cache = SnapshotCache::new(config(4, 128));
    cache.apply((0..KEYS).map(|i| update((i, Some(0)))));
    let mut mirror = Mirror::new();
    mirror.start_session(cache.epoch(), false);
    let (chunks, in_sync) = snapshot(&cache);
    assert!(chunks.len() >= 3, "several chunks");
    for chunk in chunks {
        mirror.apply_chunk(chunk).unwrap();
    }
    assert_eq!(mirror.finish_snapshot(&in_sync).unwrap().len(), KEYS);
    (cache, mirror)
}

#[test]
fn chunk_out_of_order_is_refused() {
    let (cache, mut mirror) = synced();
    let (chunks, in_sync) = snapshot(&cache);
    let err = Mirror::new().apply_chunk(chunks[1].clone()).unwrap_err();
    assert!(
        matches!(
            err,
            MirrorError::ChunkOutOfOrder {
                expected: 0,
                got: 1,
                ..
            }
        ),
        "{err}"
    );
    mirror.apply_chunk(chunks[0].clone()).unwrap();
    let err = mirror.apply_chunk(chunks[2].clone()).unwrap_err();
    assert!(
        matches!(
            err,
            MirrorError::ChunkOutOfOrder {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    let other_revision = pb::SnapshotChunk {
        revision: 99,
        ..chunks[1].clone()
    };
    assert!(matches!(
        mirror.apply_chunk(other_revision),
        Err(MirrorError::ChunkOutOfOrder { .. })
    ));
    // An incomplete snapshot cannot be finished.
    let err = mirror.finish_snapshot(&in_sync).unwrap_err();
    assert!(matches!(err, MirrorError::UnexpectedInSync { .. }), "{err}");
}

#[test]
fn in_sync_without_snapshot_is_refused() {
    let (cache, _) = synced();
    let (_, in_sync) = snapshot(&cache);
    let err = Mirror::new().finish_snapshot(&in_sync).unwrap_err();
    assert!(
        matches!(
            err,
            MirrorError::UnexpectedInSync {
                expected: None,
                got: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn revision_gap_and_unsynced_batches_are_refused() {
    let (mut cache, mut mirror) = synced();
    let first = cache.apply([update((0, Some(1)))]).unwrap();
    let second = cache.apply([update((1, None))]).unwrap();
    let err = Mirror::new()
        .apply_deltas(deltas(first.frame.clone()))
        .unwrap_err();
    assert!(matches!(err, MirrorError::NotSynced), "{err}");
    let err = mirror
        .apply_deltas(deltas(second.frame.clone()))
        .unwrap_err();
    assert!(
        matches!(err, MirrorError::RevisionGap { have: 1, from: 2 }),
        "{err}"
    );
    assert_eq!(
        mirror.revision(),
        Revision(1),
        "a refused batch changes nothing"
    );
    mirror.apply_deltas(deltas(first.frame.clone())).unwrap();
    mirror.apply_deltas(deltas(second.frame.clone())).unwrap();
    assert_eq!(
        (mirror.revision(), mirror.digest()),
        (cache.revision(), cache.digest())
    );
}

#[test]
fn tampered_digest_is_a_mismatch() {
    let (mut cache, mut mirror) = synced();
    let (chunks, mut in_sync) = snapshot(&cache);
    in_sync.digest[15] ^= 1;
    mirror.start_session(cache.epoch(), false);
    for chunk in chunks {
        mirror.apply_chunk(chunk).unwrap();
    }
    let (revision, digest) = (mirror.revision(), mirror.digest());
    let err = mirror.finish_snapshot(&in_sync).unwrap_err();
    assert!(
        matches!(err, MirrorError::DigestMismatch { revision: 1, .. }),
        "{err}"
    );
    assert_eq!(
        (mirror.revision(), mirror.digest()),
        (revision, digest),
        "not swapped in"
    );

    let crumb = cache.apply([update((2, Some(2)))]).unwrap();
    let mut batch = deltas(crumb.frame.clone());
    let mut tampered = batch.digest.to_vec();
    tampered[0] ^= 0x80;
    batch.digest = tampered.into();
    let err = mirror.apply_deltas(batch).unwrap_err();
    assert!(
        matches!(err, MirrorError::DigestMismatch { revision: 2, .. }),
        "{err}"
    );
}

#[test]
fn oversized_and_unknown_chunks_are_refused() {
    let (cache, _) = synced();
    let (chunks, _) = snapshot(&cache);
    let huge = pb::SnapshotChunk {
        raw_len: MAX_CHUNK_RAW_BYTES + 1,
        ..chunks[0].clone()
    };
    let err = Mirror::new().apply_chunk(huge).unwrap_err();
    assert!(
        matches!(err, MirrorError::ChunkSize { raw_len } if raw_len == MAX_CHUNK_RAW_BYTES + 1),
        "{err}"
    );
    // A payload that inflates beyond its claimed size is refused too.
    let short = pb::SnapshotChunk {
        raw_len: chunks[0].raw_len - 1,
        ..chunks[0].clone()
    };
    assert!(Mirror::new().apply_chunk(short).is_err());
    let unknown = pb::SnapshotChunk {
        compression: 7,
        ..chunks[0].clone()
    };
    let err = Mirror::new().apply_chunk(unknown).unwrap_err();
    assert!(matches!(err, MirrorError::Compression(7)), "{err}");
}
