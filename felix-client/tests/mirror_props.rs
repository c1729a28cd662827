//! Property tests of the client [`Mirror`] fed by the server's real `SnapshotCache`: any
//! interleaving of server batches, single and coalesced delta frames, resumes, fresh
//! snapshots and connections lost mid-snapshot leaves the mirror equal to a BTreeMap
//! oracle of the server's history at the mirror's revision, with a matching digest, and
//! converges to the cache once everything is delivered. The consumer's view, built only
//! from the emitted changes, always equals the mirror, and a snapshot reports exactly the
//! difference from the old mirror. Unit tests cover the mirror's error paths, and
//! regression tests that a refused batch or a lost snapshot changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use felix_client::mirror::{MAX_CHUNK_RAW_BYTES, Mirror, MirrorError};
use proptest::prelude::*;
use snapshot_cache::{Breadcrumb, CacheConfig, DeltasSince, SnapshotCache, coalesce, compress};
use typha_proto::digest::EntryHash;
use typha_proto::frame::{RawDeltaBatch, ServerFrame};
use typha_proto::{Digest, Key, Kind, Revision, Update, Value, pb};

type State = BTreeMap<Key, Value>;
/// What the compact mirror holds: each key's entry hash.
type Hashes = BTreeMap<Key, EntryHash>;

/// The entry hashes of `state` (encoding is deterministic).
fn hashes(state: &State) -> Hashes {
    state
        .iter()
        .map(|(k, v)| {
            let encoded = Update::new(k.clone(), Some(v.clone())).unwrap().encode();
            (k.clone(), EntryHash::of(&encoded))
        })
        .collect()
}

fn mirror_hashes(mirror: &Mirror) -> Hashes {
    mirror.iter().collect()
}

/// The key space: small, so that updates collide (replace, delete, re-add, no-op).
const KEYS: [(Kind, &str, &str); 8] = [
    (Kind::WorkloadEndpoint, "x", "pod-a"),
    (Kind::WorkloadEndpoint, "x", "pod-b"),
    (Kind::WorkloadEndpoint, "y", "pod-a"),
    (Kind::Profile, "", "kns.x"),
    (Kind::Profile, "", "kns.y"),
    (Kind::Node, "", "n1"),
    (Kind::Node, "", "n2"),
    (Kind::K8sNetworkPolicy, "x", "allow-web"),
];

/// One of three values for the key's kind, differing in labels (or selector).
fn value(key: &Key, variant: u8) -> Value {
    let labels = BTreeMap::from([("app".to_string(), format!("web-{variant}"))]);
    let (namespace, name) = (key.namespace().to_string(), key.name().to_string());
    match key.kind() {
        Kind::WorkloadEndpoint => Value::WorkloadEndpoint(pb::WorkloadEndpoint {
            profile_ids: vec![format!("kns.{namespace}")],
            ip_nets: vec![format!("10.0.0.{variant}/32")],
            namespace,
            pod: name,
            labels,
            ..Default::default()
        }),
        Kind::Profile => Value::Profile(pb::Profile { labels }),
        Kind::Node => Value::Node(pb::Node {
            name,
            labels,
            ..Default::default()
        }),
        _ => Value::Policy(pb::Policy {
            namespace,
            selector: format!("app == 'web-{variant}'"),
            ..Default::default()
        }),
    }
}

/// (key index, value variant or delete).
type Op = (usize, Option<u8>);

fn update((index, variant): Op) -> Update {
    let (kind, namespace, name) = KEYS[index];
    let key = Key::new(kind, namespace, name).unwrap();
    let value = variant.map(|v| value(&key, v));
    Update::new(key, value).unwrap()
}

/// One event of a run: the server applies a batch, or the client's connection acts.
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
    let op = (0..KEYS.len(), proptest::option::weighted(0.7, 0u8..3));
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

fn state_of<'a>(entries: impl Iterator<Item = (&'a Key, Value)>) -> State {
    entries.map(|(k, v)| (k.clone(), v)).collect()
}

fn apply_to(state: &mut State, update: Update) {
    match update.value {
        Some(v) => state.insert(update.key, v),
        None => state.remove(&update.key),
    };
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
    let chunk = |frame: &Bytes| match ServerFrame::decode(frame.clone()).unwrap() {
        ServerFrame::SnapshotChunk(chunk) => chunk,
        other => panic!("not a chunk: {other:?}"),
    };
    let ServerFrame::InSync(in_sync) = ServerFrame::decode(encoded.in_sync_frame).unwrap() else {
        panic!("not in-sync");
    };
    (encoded.chunk_frames.iter().map(chunk).collect(), in_sync)
}

/// A fresh-snapshot session from `cache`: every chunk, then InSync.
fn load(mirror: &mut Mirror, cache: &SnapshotCache) -> Result<Vec<Update>, MirrorError> {
    mirror.start_session(cache.epoch(), false);
    let (chunks, in_sync) = snapshot(cache);
    for chunk in chunks {
        mirror.apply_chunk(chunk)?;
    }
    mirror.finish_snapshot(&in_sync).map(|c| c.into_vec())
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
    /// Resumes refused because the log had moved on, and snapshots loaded.
    expired: usize,
    snapshots: usize,
}

impl World {
    fn new(max_log_batches: usize, chunk_raw_bytes: usize) -> World {
        let config = CacheConfig {
            max_log_batches,
            chunk_raw_bytes,
            ..CacheConfig::default()
        };
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
                let pending = self.pending.as_mut().map(|p| p.drain(..(*n).min(p.len())));
                let crumbs: Vec<_> = pending.into_iter().flatten().collect();
                if let Some(coalesced) = coalesce(&crumbs) {
                    self.feed(coalesced.frame);
                }
            }
            Step::Resume => self.reconnect(true),
            Step::Resnapshot => self.reconnect(false),
            Step::LoseMidSnapshot(cut) => self.snapshot_session(Some(*cut)),
        }
        self.check();
    }

    fn server(&mut self, ops: &[Op]) {
        let updates: Vec<Update> = ops.iter().copied().map(update).collect();
        let mut oracle = self.history.last().unwrap().clone();
        for u in updates.iter().cloned() {
            apply_to(&mut oracle, u);
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
            let old = self.view.get(&change.key);
            assert_ne!(old, change.value.as_ref(), "no-op change {change:?}");
            apply_to(&mut self.view, change);
        }
    }

    fn reconnect(&mut self, resume: bool) {
        self.pending = None;
        let epoch = self.cache.epoch().to_string();
        if let Some(position) = self.mirror.resume_position().filter(|_| resume) {
            assert_eq!(position.epoch, epoch);
            assert_eq!(position.revision, self.mirror.revision().0);
            assert_eq!(position.digest, self.mirror.digest().to_bytes());
            let crumbs = match self.cache.deltas_since(Revision(position.revision)) {
                DeltasSince::UpToDate => Some(VecDeque::new()),
                DeltasSince::Crumbs(crumbs) => Some(crumbs.into()),
                DeltasSince::Expired => None,
            };
            if crumbs.is_some() {
                self.mirror.start_session(&epoch, true);
                self.pending = crumbs;
                return;
            }
            self.expired += 1;
        }
        self.snapshot_session(None);
    }

    /// A fresh-snapshot session; with `cut`, the connection drops after that many chunks
    /// (fewer than all) and the mirror must be as it was.
    fn snapshot_session(&mut self, cut: Option<usize>) {
        self.pending = None;
        let before = (
            self.mirror.revision(),
            self.mirror.digest(),
            hashes(&self.view),
        );
        self.mirror.start_session(self.cache.epoch(), false);
        let (chunks, in_sync) = snapshot(&self.cache);
        let (count, cut) = (
            chunks.len(),
            cut.map_or(chunks.len(), |cut| cut % chunks.len()),
        );
        for chunk in chunks.into_iter().take(cut) {
            self.mirror.apply_chunk(chunk).unwrap();
        }
        let now = (
            self.mirror.revision(),
            self.mirror.digest(),
            self.mirror_state(),
        );
        assert_eq!(now, before, "a snapshot is staged until InSync");
        if cut < count {
            return;
        }
        let changes = self.mirror.finish_snapshot(&in_sync).unwrap().into_vec();
        self.snapshots += 1;
        // Exactly the difference: upserts for new or changed keys, deletes for vanished.
        let (old, new) = (&before.2, &self.history[self.cache.revision().0 as usize]);
        let new_hashes = hashes(new);
        let keys: BTreeSet<&Key> = old.keys().chain(new.keys()).collect();
        let expected: BTreeMap<_, _> = (keys.into_iter())
            .filter(|k| old.get(*k) != new_hashes.get(*k))
            .map(|k| (k, new.get(k).cloned()))
            .collect();
        let got: BTreeMap<_, _> = changes.iter().map(|u| (&u.key, u.value.clone())).collect();
        assert_eq!(got.len(), changes.len(), "a key twice: {changes:?}");
        assert_eq!(got, expected);
        self.consume(changes);
        self.pending = Some(VecDeque::new());
    }

    fn mirror_state(&self) -> Hashes {
        mirror_hashes(&self.mirror)
    }

    /// Invariants after every step.
    fn check(&self) {
        let mirror = self.mirror_state();
        assert_eq!(
            mirror,
            hashes(&self.view),
            "the change stream rebuilds the mirror"
        );
        assert_eq!(self.mirror.len(), mirror.len());
        assert_eq!(self.mirror.digest(), digest_of(&self.view));
        let at = self.mirror.revision().0 as usize;
        assert_eq!(
            mirror,
            hashes(&self.history[at]),
            "the state at the mirror's revision"
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
        let mirror = mirror_hashes(&self.mirror);
        assert_eq!(mirror, hashes(&state_of(self.cache.iter())));
        assert_eq!(mirror, hashes(self.history.last().unwrap()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mirror_converges_under_any_interleaving(steps in steps(), max_log in 1usize..5) {
        let mut world = World::new(max_log, 256);
        steps.iter().for_each(|step| world.step(step));
        world.converge();
    }

    #[test]
    fn change_stream_alone_rebuilds_the_mirror(steps in steps()) {
        // One entry per chunk and a one-crumb log: the most snapshots and chunk edges.
        let mut world = World::new(1, 1);
        for step in &steps {
            world.step(step);
            prop_assert_eq!(hashes(&world.view), mirror_hashes(&world.mirror));
        }
        world.converge();
        prop_assert_eq!(&world.view, world.history.last().unwrap());
    }
}

#[test]
fn resume_after_log_expiry_falls_back_to_snapshot() {
    let mut world = World::new(2, 256);
    world.step(&Step::Resume); // never synced: a snapshot
    world.step(&Step::Server(vec![(0, Some(0)), (3, Some(1))]));
    world.step(&Step::Deliver);
    world.step(&Step::Resume); // up to date
    world.step(&Step::LoseMidSnapshot(0));
    for v in 0..5 {
        world.step(&Step::Server(vec![(5, Some(v % 3)), (7, None), (1, None)]));
    }
    world.converge();
    assert_eq!((world.expired, world.snapshots), (1, 2));
    assert_eq!(world.cache.len(), 3);
}

/// `assert_err!(result => pattern)`: the result is an error matching the pattern.
macro_rules! assert_err {
    ($result:expr => $pattern:pat $(if $guard:expr)?) => {
        match $result {
            Err($pattern) $(if $guard)? => {}
            other => panic!("expected {}, got {other:?}", stringify!($pattern)),
        }
    };
}

/// A cache of every key (revision 1, several chunks) and a mirror in sync with it.
fn synced() -> (SnapshotCache, Mirror) {
    let mut cache = SnapshotCache::new(CacheConfig {
        chunk_raw_bytes: 128,
        ..Default::default()
    });
    cache.apply((0..KEYS.len()).map(|i| update((i, Some(0)))));
    assert!(snapshot(&cache).0.len() >= 3, "several chunks");
    let mut mirror = Mirror::new();
    assert_eq!(load(&mut mirror, &cache).unwrap().len(), KEYS.len());
    (cache, mirror)
}

#[test]
fn chunks_out_of_order_and_in_sync_without_snapshot_are_refused() {
    let (cache, mut mirror) = synced();
    let (chunks, in_sync) = snapshot(&cache);
    let (mut other_revision, c) = (chunks[1].clone(), |i: usize| chunks[i].clone());
    other_revision.revision = 99;
    use MirrorError::{ChunkOutOfOrder as Order, UnexpectedInSync as InSync};
    assert_err!(Mirror::new().apply_chunk(c(1)) => Order { expected: 0, got: 1, .. });
    assert_err!(Mirror::new().finish_snapshot(&in_sync) => InSync { expected: None, got: 1 });
    mirror.apply_chunk(c(0)).unwrap();
    assert_err!(mirror.apply_chunk(c(2)) => Order { expected: 1, got: 2, .. });
    assert_err!(mirror.apply_chunk(other_revision) => Order { expected: 1, got: 1, .. });
    // An incomplete snapshot cannot be finished; the failures left the mirror as it was.
    assert_err!(mirror.finish_snapshot(&in_sync) => InSync { expected: Some(1), got: 1 });
    assert_eq!(mirror.digest(), cache.digest());
    assert_eq!(mirror_hashes(&mirror), hashes(&state_of(cache.iter())));
}

#[test]
fn revision_gap_and_unsynced_batches_are_refused() {
    let (mut cache, mut mirror) = synced();
    let first = deltas(cache.apply([update((0, Some(1)))]).unwrap().frame.clone());
    let second = deltas(cache.apply([update((1, None))]).unwrap().frame.clone());
    assert_err!(Mirror::new().apply_deltas(first.clone()) => MirrorError::NotSynced);
    let gap = mirror.apply_deltas(second.clone());
    assert_err!(gap => MirrorError::RevisionGap { have: 1, from: 2 });
    assert_eq!(
        mirror.revision(),
        Revision(1),
        "a refused batch changes nothing"
    );
    assert_eq!(mirror.apply_deltas(first).unwrap().len(), 1);
    assert_eq!(mirror.apply_deltas(second).unwrap().len(), 1);
    assert_eq!(mirror.digest(), cache.digest());
}

#[test]
fn tampered_digest_is_a_mismatch() {
    let (mut cache, mut mirror) = synced();
    let (chunks, mut in_sync) = snapshot(&cache);
    in_sync.digest[15] ^= 1;
    mirror.start_session(cache.epoch(), false);
    chunks
        .into_iter()
        .for_each(|c| mirror.apply_chunk(c).unwrap());
    let mismatch = mirror.finish_snapshot(&in_sync);
    assert_err!(mismatch => MirrorError::DigestMismatch { revision: 1, .. });
    assert_eq!(
        mirror.digest(),
        cache.digest(),
        "the bad snapshot was not swapped in"
    );

    let mut batch = deltas(cache.apply([update((2, Some(2)))]).unwrap().frame.clone());
    batch.digest = Bytes::from(vec![0xa5; 16]);
    assert_err!(mirror.apply_deltas(batch) => MirrorError::DigestMismatch { revision: 2, .. });
}

#[test]
fn oversized_short_and_unknown_chunks_are_refused() {
    let chunk = snapshot(&synced().0).0.remove(0);
    let (mut huge, mut short, mut unknown) = (chunk.clone(), chunk.clone(), chunk.clone());
    huge.raw_len = MAX_CHUNK_RAW_BYTES + 1;
    short.raw_len -= 1; // the payload inflates beyond the claimed size
    unknown.compression = 7;
    assert_err!(Mirror::new().apply_chunk(huge) => MirrorError::ChunkSize { raw_len }
        if raw_len == MAX_CHUNK_RAW_BYTES + 1);
    assert_err!(Mirror::new().apply_chunk(short) => MirrorError::Decompress(_));
    assert_err!(Mirror::new().apply_chunk(unknown) => MirrorError::Compression(7));
}

#[test]
fn changes_of_a_batch_refused_for_its_digest_reach_the_consumer_after_resync() {
    let (mut cache, mut mirror) = synced();
    let mut view = state_of(cache.iter());
    let mut batch = deltas(cache.apply([update((2, Some(2)))]).unwrap().frame.clone());
    batch.digest = Bytes::from(vec![0xa5; 16]);
    assert_err!(mirror.apply_deltas(batch) => MirrorError::DigestMismatch { .. });
    // What the sync client does: forget the position, load a snapshot, emit its changes.
    mirror.forget_position();
    let changes = load(&mut mirror, &cache).unwrap();
    changes.into_iter().for_each(|u| apply_to(&mut view, u));
    assert_eq!(
        view,
        state_of(cache.iter()),
        "the consumer missed key 2's new value"
    );
}

#[test]
fn a_batch_refused_for_an_invalid_update_is_all_reported_when_resent() {
    let (mut cache, mut mirror) = synced();
    let crumb = cache.apply([update((2, Some(2)))]).unwrap();
    let mut batch = deltas(crumb.frame.clone());
    // A KeyValue whose key has kind 99, unknown to this build.
    batch
        .updates
        .push(Bytes::from_static(&[0x0a, 0x02, 0x08, 99]));
    assert_err!(mirror.apply_deltas(batch) => MirrorError::Model(_));
    // The client reconnects at the same revision; the server sends the batch again.
    let changes = mirror.apply_deltas(deltas(crumb.frame.clone())).unwrap();
    assert_eq!(
        changes.len(),
        1,
        "key 2's change was swallowed by the refused batch"
    );
}

#[test]
fn a_lost_snapshot_from_a_restarted_server_keeps_the_old_resume_position() {
    let (cache, mut mirror) = synced();
    let mut restarted = SnapshotCache::new(CacheConfig {
        chunk_raw_bytes: 128,
        ..Default::default()
    });
    restarted.apply((0..KEYS.len()).map(|i| update((i, Some(1)))));
    restarted.apply([update((0, None))]);
    mirror.start_session(restarted.epoch(), false);
    let first_chunk = snapshot(&restarted).0.remove(0);
    mirror.apply_chunk(first_chunk).unwrap(); // then the connection drops
    let position = mirror.resume_position().unwrap();
    // As it is, the position names the new epoch, whose server would resume at revision 1
    // of its own, different history.
    assert!(matches!(
        restarted.deltas_since(Revision(1)),
        DeltasSince::Crumbs(_)
    ));
    assert_eq!(
        (position.revision, position.epoch.as_str()),
        (1, cache.epoch())
    );
}

// ------------------------------------------------------------ cross-replica resume

/// A ServerHello as `cache`'s server sends it.
fn hello(cache: &SnapshotCache, resumed: bool, versions: bool) -> pb::ServerHello {
    let mut capabilities = vec![
        pb::Capability::SnapshotZstd as i32,
        pb::Capability::Resume as i32,
        pb::Capability::Digest as i32,
    ];
    if versions {
        capabilities.push(pb::Capability::ResourceVersions as i32);
    }
    pb::ServerHello {
        epoch: cache.epoch().to_string(),
        resumed,
        capabilities,
        protocol_version: if versions { 2 } else { 1 },
        ..Default::default()
    }
}

/// Two replicas fed the same versioned changes (`pods` at resourceVersion 10 + i for
/// change i), in different batchings, both in sync after the first change.
fn replicas(changes: &[Op], a_cut: usize, b_cut: usize) -> (SnapshotCache, SnapshotCache) {
    use snapshot_cache::ResourceMark;
    let feed = |cut: usize| {
        let mut cache = SnapshotCache::new(CacheConfig::default());
        let mut pending: Vec<Update> = Vec::new();
        let mut version = 0;
        for (i, op) in changes.iter().enumerate() {
            let u = update(*op);
            if pending.iter().any(|p| p.key == u.key) || (i > 0 && i % cut == 0) {
                cache.apply_marked(
                    std::mem::take(&mut pending),
                    &[ResourceMark::watched("pods", version)],
                );
            }
            pending.push(u);
            version = 10 + i as u64;
            if i == 0 {
                cache.apply_marked(
                    std::mem::take(&mut pending),
                    &[ResourceMark::listed("pods", Some(version))],
                );
                cache.mark_in_sync();
            }
        }
        cache.apply_marked(pending, &[ResourceMark::watched("pods", version)]);
        cache
    };
    (feed(a_cut), feed(b_cut))
}

/// A mirror of A halfway moves to B: one rebase batch brings it to B's exact state,
/// it adopts B's epoch, revision and versions, and B's next batch applies normally.
#[test]
fn a_rebase_batch_moves_the_mirror_to_another_replica() {
    let changes: Vec<Op> = (0..40)
        .map(|i| (i % KEYS.len(), Some((i % 3) as u8)))
        .collect();
    let (a_half, _) = replicas(&changes[..20], 3, 5);
    let (_, mut b) = replicas(&changes, 3, 5);
    let mut mirror = Mirror::new();
    mirror.accept_hello(&hello(&a_half, false, true));
    let (chunks, in_sync) = snapshot(&a_half);
    for chunk in chunks {
        mirror.apply_chunk(chunk).unwrap();
    }
    mirror.finish_snapshot(&in_sync).unwrap();
    let position = mirror.resume_position().unwrap();
    assert_eq!(position.epoch, a_half.epoch());
    let client = typha_proto::VersionVector::from_pb(&position.versions);
    assert_eq!(&client, a_half.versions());

    mirror.accept_hello(&hello(&b, true, true));
    assert!(mirror.is_rebasing());
    let rebase = b.rebase(&client).unwrap();
    let changes = mirror.apply_deltas(deltas(rebase.frame)).unwrap();
    assert!(!changes.is_empty());
    assert!(!mirror.is_rebasing());
    assert_eq!(mirror.digest(), b.digest());
    assert_eq!(mirror.revision(), b.revision());
    assert_eq!(mirror_state(&mirror), hashes(&state_of(b.iter())));
    let position = mirror.resume_position().unwrap();
    assert_eq!(position.epoch, b.epoch());
    assert_eq!(mirror.versions(), Some(b.versions()));

    let crumb = b
        .apply_marked(
            [update((0, None))],
            &[snapshot_cache::ResourceMark::watched("pods", 99)],
        )
        .unwrap();
    mirror.apply_deltas(deltas(crumb.frame.clone())).unwrap();
    assert_eq!(mirror.digest(), b.digest());
    assert_eq!(mirror.versions().unwrap().get("pods"), 99);
}

/// A mirror that does not hold what its versions claim refuses the rebase batch (digest
/// mismatch) and is left as it was; a server that does not grant resource versions
/// makes the mirror forget (and stop sending) its vector.
#[test]
fn a_wrong_mirror_refuses_the_rebase_and_ungranted_versions_are_dropped() {
    let changes: Vec<Op> = (0..12)
        .map(|i| (i % KEYS.len(), Some((i % 3) as u8)))
        .collect();
    let (a, _) = replicas(&changes[..6], 2, 4);
    let (_, b) = replicas(&changes, 2, 4);
    let mut mirror = Mirror::new();
    mirror.accept_hello(&hello(&a, false, true));
    let (chunks, in_sync) = snapshot(&a);
    for chunk in chunks {
        mirror.apply_chunk(chunk).unwrap();
    }
    mirror.finish_snapshot(&in_sync).unwrap();
    // Claim a newer position than the mirror holds: B sends too little.
    let mut claimed = mirror.versions().unwrap().clone();
    claimed.advance("pods", 10 + changes.len() as u64 - 1);
    let (digest, revision) = (mirror.digest(), mirror.revision());
    mirror.accept_hello(&hello(&b, true, true));
    let rebase = b.rebase(&claimed).unwrap();
    assert_eq!(rebase.keys, 0);
    assert!(matches!(
        mirror.apply_deltas(deltas(rebase.frame)),
        Err(MirrorError::DigestMismatch { .. })
    ));
    assert_eq!((mirror.digest(), mirror.revision()), (digest, revision));

    let mut old = Mirror::new();
    old.accept_hello(&hello(&a, false, false));
    let (chunks, in_sync) = snapshot(&a);
    for chunk in chunks {
        old.apply_chunk(chunk).unwrap();
    }
    old.finish_snapshot(&in_sync).unwrap();
    assert_eq!(old.versions(), None);
    assert!(old.resume_position().unwrap().versions.is_empty());
    assert_eq!(old.digest(), a.digest());
}

fn mirror_state(mirror: &Mirror) -> Hashes {
    mirror_hashes(mirror)
}
