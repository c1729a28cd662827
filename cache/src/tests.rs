//! Unit tests of the snapshot cache, and the decoding helpers the property tests share.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;
use typha_proto::digest::EntryHash;
use typha_proto::frame::{RawSnapshotEntries, ServerFrame};
use typha_proto::{Kind, pb};

use super::*;

/// A client-side mirror: what decoding frames yields.
pub(super) type Mirror = BTreeMap<Key, Value>;

pub(super) fn wep(ns: &str, pod: &str, version: &str) -> Update {
    let key = Key::new(Kind::WorkloadEndpoint, ns, pod).unwrap();
    let value = Value::WorkloadEndpoint(pb::WorkloadEndpoint {
        namespace: ns.into(),
        pod: pod.into(),
        node: "node-1".into(),
        ip_nets: vec!["10.0.0.1/32".into()],
        labels: [("version".to_string(), version.to_string())].into(),
        ..Default::default()
    });
    Update::new(key, Some(value)).unwrap()
}

pub(super) fn node(name: &str, address: &str) -> Update {
    let key = Key::cluster(Kind::Node, name).unwrap();
    let value = Value::Node(pb::Node {
        name: name.into(),
        addresses: vec![address.into()],
        ..Default::default()
    });
    Update::new(key, Some(value)).unwrap()
}

fn del(update: &Update) -> Update {
    Update::delete(update.key.clone())
}

/// The digest of `state`, recomputed from scratch.
pub(super) fn digest_of<'a>(state: impl IntoIterator<Item = (&'a Key, &'a Value)>) -> Digest {
    let mut digest = Digest::EMPTY;
    for (key, value) in state {
        let encoded = Update::new(key.clone(), Some(value.clone()))
            .unwrap()
            .encode();
        digest.add(EntryHash::of(&encoded));
    }
    digest
}

pub(super) fn state_of(cache: &SnapshotCache) -> Mirror {
    cache.iter().map(|(k, v)| (k.clone(), v)).collect()
}

/// Decodes an encoded snapshot as a client would; checks the chunk headers and in-sync.
pub(super) fn decode_snapshot(snapshot: &EncodedSnapshot) -> Mirror {
    let mut mirror = Mirror::new();
    let count = snapshot.chunk_frames.len() as u32;
    for (index, frame) in snapshot.chunk_frames.iter().enumerate() {
        let ServerFrame::SnapshotChunk(chunk) = ServerFrame::decode(frame.clone()).unwrap() else {
            panic!("not a snapshot chunk")
        };
        assert_eq!((chunk.index, chunk.count), (index as u32, count));
        assert_eq!(chunk.revision, snapshot.revision.0);
        assert_eq!(chunk.compression, pb::Compression::Zstd as i32);
        let raw = zstd::stream::decode_all(&chunk.payload[..]).unwrap();
        assert_eq!(raw.len() as u64, chunk.raw_len);
        for entry in RawSnapshotEntries::decode(Bytes::from(raw))
            .unwrap()
            .entries
        {
            let update = Update::decode(&entry).unwrap();
            let value = update.value.expect("snapshot entries carry values");
            assert!(mirror.insert(update.key, value).is_none(), "key twice");
        }
    }
    let ServerFrame::InSync(in_sync) = ServerFrame::decode(snapshot.in_sync_frame.clone()).unwrap()
    else {
        panic!("not in-sync")
    };
    assert_eq!(in_sync.revision, snapshot.revision.0);
    assert_eq!(in_sync.key_count, mirror.len() as u64);
    assert_eq!(Digest::from_bytes(&in_sync.digest), Some(snapshot.digest));
    assert_eq!(
        digest_of(&mirror),
        snapshot.digest,
        "digest of decoded state"
    );
    mirror
}

/// Applies one delta frame to `mirror` as a client would; returns (from, to, digest).
pub(super) fn apply_frame(mirror: &mut Mirror, frame: &Bytes) -> (Revision, Revision, Digest) {
    let ServerFrame::Deltas(batch) = ServerFrame::decode(frame.clone()).unwrap() else {
        panic!("not a delta batch")
    };
    let mut seen = std::collections::HashSet::new();
    for encoded in &batch.updates {
        let update = Update::decode(encoded).unwrap();
        assert!(seen.insert(update.key.clone()), "key twice in one batch");
        match update.value {
            Some(value) => mirror.insert(update.key, value),
            None => mirror.remove(&update.key),
        };
    }
    let digest = Digest::from_bytes(&batch.digest).unwrap();
    assert_eq!(digest_of(&*mirror), digest, "frame digest vs mirror");
    (
        Revision(batch.from_revision),
        Revision(batch.revision),
        digest,
    )
}

fn crumbs(deltas: DeltasSince) -> Vec<Arc<Breadcrumb>> {
    match deltas {
        DeltasSince::Crumbs(crumbs) => crumbs,
        other => panic!("expected crumbs, got {other:?}"),
    }
}

fn revisions(crumbs: &[Arc<Breadcrumb>]) -> Vec<u64> {
    crumbs.iter().map(|c| c.revision.0).collect()
}

#[test]
fn noop_updates_are_dropped_and_counted() {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    let a = wep("x", "a", "1");
    assert!(cache.apply([a.clone()]).is_some());
    let digest = cache.digest();

    assert!(cache.apply([a.clone()]).is_none(), "same value twice");
    assert!(
        cache.apply([del(&node("n1", "1.1.1.1"))]).is_none(),
        "delete absent"
    );
    assert!(cache.apply([]).is_none(), "empty batch");
    assert_eq!(cache.revision(), Revision(1));
    assert_eq!(cache.digest(), digest);
    let stats = cache.stats();
    assert_eq!(stats.noop_updates_dropped, 2);
    assert_eq!((stats.batches_applied, stats.updates_applied), (1, 1));
    assert_eq!(stats.log_batches, 1);

    // A batch mixing a no-op and a change keeps only the change.
    let b = wep("x", "b", "1");
    let crumb = cache.apply([a.clone(), b.clone()]).unwrap();
    assert_eq!(crumb.updates.len(), 1);
    assert_eq!(crumb.updates[0].0, b.key);
    assert_eq!(cache.stats().noop_updates_dropped, 3);
}

#[test]
fn last_update_per_key_wins_within_a_batch() {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    let (a1, a2, b) = (
        wep("x", "a", "1"),
        wep("x", "a", "2"),
        node("n1", "1.1.1.1"),
    );
    let crumb = cache
        .apply([a1.clone(), b.clone(), del(&a1), a2.clone()])
        .unwrap();
    let keys: Vec<&Key> = crumb.updates.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        vec![&b.key, &a2.key],
        "each key once, in last-update order"
    );
    assert_eq!(crumb.updates[1].1, a2.encode());
    assert_eq!(cache.get(&a1.key), a2.value);
    assert_eq!(
        cache.stats().noop_updates_dropped,
        2,
        "two superseded updates"
    );

    // Changes that cancel out within a batch are no change at all.
    assert!(cache.apply([del(&a2), a2.clone()]).is_none());
    // A set then a delete of an absent key is a no-op too.
    assert!(
        cache
            .apply([wep("y", "c", "1"), del(&wep("y", "c", "1"))])
            .is_none()
    );
    assert_eq!(cache.revision(), Revision(1));
}

#[test]
fn revision_and_digest_follow_the_state() {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    assert_eq!(
        (cache.revision(), cache.digest()),
        (Revision(0), Digest::EMPTY)
    );
    assert!(cache.is_empty());
    assert_eq!(cache.epoch().len(), 16);
    assert_ne!(
        cache.epoch(),
        SnapshotCache::new(CacheConfig::default()).epoch()
    );

    let (a, b, a2) = (
        wep("x", "a", "1"),
        node("n1", "1.1.1.1"),
        wep("x", "a", "2"),
    );
    let first = cache.apply([a.clone(), b.clone()]).unwrap();
    assert_eq!((first.from, first.revision), (Revision(0), Revision(1)));
    assert_eq!(first.digest, cache.digest());
    assert_eq!(cache.digest(), digest_of(&state_of(&cache)));
    assert_eq!(cache.len(), 2);

    let second = cache.apply([a2.clone()]).unwrap();
    assert_eq!((second.from, second.revision), (Revision(1), Revision(2)));
    assert_ne!(second.digest, first.digest);
    assert_eq!(cache.digest(), digest_of(&state_of(&cache)));

    // The same state reached in another order has the same digest.
    let mut other = SnapshotCache::new(CacheConfig::default());
    other.apply([a2.clone()]);
    other.apply([wep("y", "z", "1")]);
    other.apply([b.clone(), del(&wep("y", "z", "1"))]);
    assert_eq!(other.digest(), cache.digest());
    assert_ne!(other.revision(), cache.revision());

    cache.apply([del(&a), del(&b)]).unwrap();
    assert_eq!(
        (cache.revision(), cache.digest()),
        (Revision(3), Digest::EMPTY)
    );
    assert!(cache.is_empty());
}

#[test]
fn breadcrumb_updates_and_frame_match_the_encoded_key_values() {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    let a = wep("x", "a", "1");
    cache.apply([a.clone()]).unwrap();
    let crumb = cache.apply([del(&a), node("n1", "1.1.1.1")]).unwrap();
    assert_eq!(crumb.updates[0].1, del(&a).encode());
    assert_eq!(crumb.updates[1].1, node("n1", "1.1.1.1").encode());
    let mut mirror: Mirror = [(a.key.clone(), a.value.clone().unwrap())].into();
    let (from, to, digest) = apply_frame(&mut mirror, &crumb.frame);
    assert_eq!(
        (from, to, digest),
        (Revision(1), Revision(2), cache.digest())
    );
    assert_eq!(mirror, state_of(&cache));
    assert_eq!(crumb.encoded_len(), crumb.frame.len());
}

#[test]
fn one_delta_frame_is_encoded_per_batch() {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    for i in 0..5 {
        let batch: Vec<Update> = (0..10)
            .map(|j| wep("x", &format!("p{j}"), &i.to_string()))
            .collect();
        cache.apply(batch).unwrap();
        cache.apply([wep("x", "p0", &i.to_string())]);
    }
    let stats = cache.stats();
    assert_eq!(stats.delta_frames_encoded, 5);
    assert_eq!(stats.batches_applied, 5);
    assert_eq!(stats.updates_applied, 50);
    assert_eq!(stats.noop_updates_dropped, 5);
    // Handing out crumbs and coalescing them encodes nothing more in the cache.
    let all = crumbs(cache.deltas_since(Revision(0)));
    assert!(coalesce(&all).is_some());
    assert_eq!(cache.stats().delta_frames_encoded, 5);
}

/// A cache with the default configuration as `tune` changes it.
fn cache_with(tune: impl FnOnce(&mut CacheConfig)) -> SnapshotCache {
    let mut config = CacheConfig::default();
    tune(&mut config);
    SnapshotCache::new(config)
}

fn apply_n(cache: &mut SnapshotCache, n: usize) {
    for i in 0..n {
        cache
            .apply([wep("x", &format!("p{i}"), "1")])
            .expect("new key");
    }
}

#[test]
fn log_is_trimmed_by_count() {
    let mut cache = cache_with(|c| c.max_log_batches = 3);
    apply_n(&mut cache, 5);
    assert_eq!(cache.stats().log_batches, 3);
    assert!(matches!(
        cache.deltas_since(Revision(0)),
        DeltasSince::Expired
    ));
    assert!(matches!(
        cache.deltas_since(Revision(1)),
        DeltasSince::Expired
    ));
    assert_eq!(
        revisions(&crumbs(cache.deltas_since(Revision(2)))),
        vec![3, 4, 5]
    );
    assert_eq!(revisions(&crumbs(cache.deltas_since(Revision(4)))), vec![5]);
}

#[test]
fn log_is_trimmed_by_bytes_and_keeps_the_newest() {
    let mut probe = SnapshotCache::new(CacheConfig::default());
    apply_n(&mut probe, 1);
    let frame_len = probe.stats().log_bytes as usize;
    // Every frame here has the same length (names p0..p9 are the same size).
    let mut cache = cache_with(|c| c.max_log_bytes = 2 * frame_len + 1);
    apply_n(&mut cache, 6);
    let stats = cache.stats();
    assert_eq!(
        (stats.log_batches, stats.log_bytes),
        (2, 2 * frame_len as u64)
    );
    assert_eq!(
        revisions(&crumbs(cache.deltas_since(Revision(4)))),
        vec![5, 6]
    );
    assert!(matches!(
        cache.deltas_since(Revision(3)),
        DeltasSince::Expired
    ));

    let mut cache = cache_with(|c| {
        c.max_log_bytes = 0;
        c.max_log_batches = 0;
    });
    apply_n(&mut cache, 3);
    assert_eq!(
        cache.stats().log_batches,
        1,
        "the newest crumb is always kept"
    );
    assert_eq!(revisions(&crumbs(cache.deltas_since(Revision(2)))), vec![3]);
}

#[test]
fn deltas_since_boundaries() {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    assert!(matches!(
        cache.deltas_since(Revision(0)),
        DeltasSince::UpToDate
    ));
    assert!(matches!(
        cache.deltas_since(Revision(1)),
        DeltasSince::Expired
    ));
    apply_n(&mut cache, 3);
    assert!(matches!(
        cache.deltas_since(Revision(3)),
        DeltasSince::UpToDate
    ));
    assert!(matches!(
        cache.deltas_since(Revision(4)),
        DeltasSince::Expired
    ));
    assert!(matches!(
        cache.deltas_since(Revision(u64::MAX)),
        DeltasSince::Expired
    ));
    let all = crumbs(cache.deltas_since(Revision(0)));
    assert_eq!(revisions(&all), vec![1, 2, 3]);
    assert_eq!(all[0].from, Revision(0));
    assert!(all.windows(2).all(|w| w[0].revision == w[1].from));
}

#[test]
fn coalesce_keeps_the_latest_value_per_key() {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    let (a1, a2, b, c) = (
        wep("x", "a", "1"),
        wep("x", "a", "2"),
        node("n1", "1.1.1.1"),
        node("n2", "2.2.2.2"),
    );
    cache.apply([a1.clone(), b.clone()]).unwrap();
    let start = state_of(&cache);
    cache.apply([del(&a1), c.clone()]).unwrap(); // a deleted, c added
    cache.apply([a2.clone(), del(&c)]).unwrap(); // a re-added, c deleted
    assert!(coalesce(&[]).is_none());

    let all = crumbs(cache.deltas_since(Revision(1)));
    let one = coalesce(&all[..1]).unwrap();
    assert_eq!(
        (one.wire, one.frame),
        (all[0].wire.clone(), all[0].frame.clone())
    );
    let coalesced = coalesce(&all).unwrap();
    assert_eq!(
        coalesced.wire,
        typha_proto::frame::grpc_message(&coalesced.frame)
    );
    let frame = coalesced.frame;
    let ServerFrame::Deltas(batch) = ServerFrame::decode(frame.clone()).unwrap() else {
        panic!()
    };
    assert_eq!((batch.from_revision, batch.revision), (1, 3));
    assert_eq!(batch.updates, vec![a2.encode(), del(&c).encode()]);

    let mut mirror = start;
    let (_, _, digest) = apply_frame(&mut mirror, &frame);
    assert_eq!(digest, cache.digest());
    assert_eq!(mirror, state_of(&cache));
}

#[test]
fn compress_round_trips_the_state_in_several_chunks() {
    let mut cache = cache_with(|c| c.chunk_raw_bytes = 400);
    let batch: Vec<Update> = (0..50)
        .map(|i| wep(&format!("ns{}", i % 3), &format!("pod-{i}"), "v1"))
        .chain((0..5).map(|i| node(&format!("n{i}"), "10.1.1.1")))
        .collect();
    cache.apply(batch).unwrap();
    cache.apply([del(&node("n0", ""))]).unwrap();

    let raw = cache.build_snapshot();
    assert_eq!(cache.stats().snapshots_built, 1);
    assert!(raw.chunks.len() > 3, "{} chunks", raw.chunks.len());
    assert!(raw.chunks.iter().all(|c| c.len() <= 400));
    assert_eq!(
        raw.raw_bytes,
        raw.chunks.iter().map(|c| c.len() as u64).sum::<u64>()
    );
    assert_eq!(
        (raw.key_count, raw.revision, raw.digest),
        (54, Revision(2), cache.digest())
    );

    let encoded = compress(&raw, 3).unwrap();
    // Each frame is the message's bytes after the gRPC prefix, in the same buffer.
    let pairs = encoded
        .chunk_frames
        .iter()
        .zip(&encoded.chunk_messages)
        .chain([(&encoded.in_sync_frame, &encoded.in_sync_message)]);
    for (frame, message) in pairs {
        assert_eq!(*message, typha_proto::frame::grpc_message(frame));
        assert_eq!(
            message[typha_proto::frame::GRPC_PREFIX_LEN..].as_ptr(),
            frame.as_ptr()
        );
    }
    assert_eq!(encoded.chunk_messages.len(), encoded.chunk_frames.len());
    assert_eq!(encoded.chunk_frames.len(), raw.chunks.len());
    assert_eq!((encoded.raw_bytes, encoded.key_count), (raw.raw_bytes, 54));
    assert!(encoded.compressed_bytes > 0);
    assert_eq!(decode_snapshot(&encoded), state_of(&cache));
}

#[test]
fn an_oversized_entry_gets_a_chunk_of_its_own() {
    let mut cache = cache_with(|c| c.chunk_raw_bytes = 10);
    cache.apply([node("n1", "1"), node("n2", "2"), node("n3", "3")]);
    let raw = cache.build_snapshot();
    assert_eq!(raw.chunks.len(), 3);
    assert_eq!(decode_snapshot(&compress(&raw, 1).unwrap()).len(), 3);
}

#[test]
fn an_empty_state_is_one_empty_chunk() {
    let cache = SnapshotCache::new(CacheConfig::default());
    let raw = cache.build_snapshot();
    assert_eq!((raw.chunks.len(), raw.raw_bytes, raw.key_count), (1, 0, 0));
    let encoded = compress(&raw, 1).unwrap();
    assert_eq!(encoded.chunk_frames.len(), 1);
    assert!(decode_snapshot(&encoded).is_empty());
}

#[test]
fn encoding_matches_update_encode() {
    for update in [
        wep("x", "a", "1"),
        node("n", "1.2.3.4"),
        del(&wep("x", "a", "1")),
    ] {
        assert_eq!(
            encode_key_value(&update.key, update.value.as_ref()),
            update.encode()
        );
    }
}

#[test]
fn a_value_that_encodes_the_same_is_a_noop_even_if_it_compares_unequal() {
    let key = Key::new(Kind::NetworkPolicy, "x", "p").unwrap();
    let policy = Value::Policy(pb::Policy {
        namespace: "x".into(),
        order: f64::NAN,
        has_order: true,
        ..Default::default()
    });
    assert_ne!(policy, policy.clone(), "NaN != NaN");
    let mut cache = SnapshotCache::new(CacheConfig::default());
    assert!(
        cache
            .apply([Update::new(key.clone(), Some(policy.clone())).unwrap()])
            .is_some()
    );
    assert!(
        cache
            .apply([Update::new(key, Some(policy)).unwrap()])
            .is_none()
    );
    assert_eq!(cache.stats().noop_updates_dropped, 1);
    assert_eq!(cache.digest(), digest_of(&state_of(&cache)));
}
