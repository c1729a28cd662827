//! Property tests of the snapshot cache against a BTreeMap oracle: random batches over a
//! small key space (so updates collide: replacements, deletes, re-adds and no-ops of
//! several kinds), then for every n < m: snapshot(n) + the frames n..m == snapshot(m) ==
//! the oracle at m, the same through `coalesce`, and the digest recomputed from scratch
//! equals the cache's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use typha_proto::{Kind, pb};

use super::tests::{Mirror, apply_frame, decode_snapshot, digest_of, state_of};
use super::*;

/// A key of the small space: index into [`key`].
const KEYS: usize = 7;

fn key(index: usize) -> Key {
    let key = match index {
        0 => Key::new(Kind::WorkloadEndpoint, "x", "a"),
        1 => Key::new(Kind::WorkloadEndpoint, "x", "b"),
        2 => Key::new(Kind::WorkloadEndpoint, "y", "a"),
        3 => Key::cluster(Kind::Node, "n1"),
        4 => Key::cluster(Kind::Node, "n2"),
        5 => Key::cluster(Kind::Profile, "kns.x"),
        _ => Key::new(Kind::NetworkPolicy, "x", "allow-a"),
    };
    key.unwrap()
}

/// One of three values for the key's kind.
fn value(key: &Key, variant: u8) -> Value {
    let labels = [("v".to_string(), variant.to_string())].into();
    match key.kind() {
        Kind::WorkloadEndpoint => Value::WorkloadEndpoint(pb::WorkloadEndpoint {
            namespace: key.namespace().into(),
            pod: key.name().into(),
            ip_nets: vec![format!("10.0.0.{variant}/32")],
            labels,
            ..Default::default()
        }),
        Kind::Node => Value::Node(pb::Node {
            name: key.name().into(),
            labels,
            ..Default::default()
        }),
        Kind::Profile => Value::Profile(pb::Profile { labels }),
        _ => Value::Policy(pb::Policy {
            namespace: key.namespace().into(),
            selector: format!("v == '{variant}'"),
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

fn batches() -> impl Strategy<Value = Vec<Vec<Op>>> {
    let op = (0..KEYS, proptest::option::weighted(0.7, 0u8..3));
    prop::collection::vec(prop::collection::vec(op, 0..6), 1..24)
}

/// The history of one run: snapshot and oracle at every revision, and the final cache.
struct Run {
    cache: SnapshotCache,
    snapshots: Vec<EncodedSnapshot>,
    oracles: Vec<Mirror>,
}

fn run(batches: &[Vec<Op>], config: CacheConfig) -> Run {
    let mut cache = SnapshotCache::new(config);
    let mut oracle = Mirror::new();
    let mut oracles = vec![oracle.clone()];
    let mut snapshots = vec![compress(&cache.build_snapshot(), 1).unwrap()];
    let mut received = 0;
    for batch in batches {
        let before = oracle.clone();
        let updates: Vec<Update> = batch.iter().copied().map(update).collect();
        received += updates.len() as u64;
        for u in &updates {
            match &u.value {
                Some(v) => oracle.insert(u.key.clone(), v.clone()),
                None => oracle.remove(&u.key),
            };
        }
        let crumb = cache.apply(updates);
        assert_eq!(
            crumb.is_none(),
            oracle == before,
            "None iff the state is unchanged"
        );
        assert_eq!(state_of(&cache), oracle);
        assert_eq!(cache.digest(), digest_of(&state_of(&cache)));
        if let Some(crumb) = crumb {
            assert_eq!(crumb.revision, cache.revision());
            assert_eq!(crumb.digest, cache.digest());
            oracles.push(oracle.clone());
            snapshots.push(compress(&cache.build_snapshot(), 1).unwrap());
        }
    }
    let stats = cache.stats();
    assert_eq!(stats.updates_applied + stats.noop_updates_dropped, received);
    assert_eq!(stats.batches_applied, cache.revision().0);
    assert_eq!(stats.delta_frames_encoded, cache.revision().0);
    Run {
        cache,
        snapshots,
        oracles,
    }
}

fn small_chunks() -> CacheConfig {
    CacheConfig {
        chunk_raw_bytes: 80,
        ..CacheConfig::default()
    }
}

proptest! {
    #[test]
    fn snapshot_plus_deltas_equals_later_snapshot(batches in batches()) {
        let Run { cache, snapshots, oracles } = run(&batches, small_chunks());
        let last = cache.revision().0 as usize;
        prop_assert_eq!(snapshots.len(), last + 1);
        let decoded: Vec<Mirror> = snapshots.iter().map(decode_snapshot).collect();
        for (snapshot, oracle) in decoded.iter().zip(&oracles) {
            prop_assert_eq!(snapshot, oracle);
        }
        for n in 0..last {
            let DeltasSince::Crumbs(crumbs) = cache.deltas_since(Revision(n as u64)) else {
                panic!("the whole history is kept");
            };
            prop_assert_eq!(crumbs.len(), last - n);
            let mut mirror = decoded[n].clone();
            for (i, crumb) in crumbs.iter().enumerate() {
                let m = n + i + 1;
                let (from, to, digest) = apply_frame(&mut mirror, &crumb.frame);
                prop_assert_eq!((from.0, to.0), (m as u64 - 1, m as u64));
                prop_assert_eq!(digest, snapshots[m].digest);
                prop_assert_eq!(&mirror, &decoded[m]);
                prop_assert_eq!(&mirror, &oracles[m]);

                let mut coalesced = decoded[n].clone();
                let frame = coalesce(&crumbs[..=i]).unwrap().frame;
                let (from, to, digest) = apply_frame(&mut coalesced, &frame);
                prop_assert_eq!((from.0, to.0), (n as u64, m as u64));
                prop_assert_eq!(digest, snapshots[m].digest);
                prop_assert_eq!(&coalesced, &oracles[m]);
            }
        }
        prop_assert!(matches!(cache.deltas_since(cache.revision()), DeltasSince::UpToDate));
    }

    #[test]
    fn trimmed_log_stays_contiguous_and_bounded(
        batches in batches(),
        max_log_batches in 0usize..6,
        max_log_bytes in 0usize..600,
    ) {
        let config = CacheConfig { max_log_batches, max_log_bytes, ..small_chunks() };
        let Run { cache, .. } = run(&batches, config);
        let revision = cache.revision();
        let stats = cache.stats();
        if revision.0 == 0 {
            prop_assert_eq!(stats.log_batches, 0);
            return Ok(());
        }
        prop_assert!(stats.log_batches >= 1);
        prop_assert!(
            stats.log_batches == 1
                || (stats.log_batches as usize <= max_log_batches
                    && stats.log_bytes as usize <= max_log_bytes)
        );
        let oldest = revision.0 - stats.log_batches;
        for since in 0..=revision.0 + 1 {
            match cache.deltas_since(Revision(since)) {
                DeltasSince::UpToDate => prop_assert_eq!(since, revision.0),
                DeltasSince::Expired => prop_assert!(since < oldest || since > revision.0),
                DeltasSince::Crumbs(crumbs) => {
                    prop_assert!(since >= oldest && since < revision.0);
                    prop_assert_eq!(crumbs.len() as u64, revision.0 - since);
                    prop_assert_eq!(crumbs[0].from.0, since);
                    prop_assert!(crumbs.windows(2).all(|w| w[0].revision == w[1].from));
                    let bytes: usize = crumbs.iter().map(|c| c.encoded_len()).sum();
                    prop_assert!(bytes as u64 <= stats.log_bytes);
                }
            }
        }
    }

    #[test]
    fn entry_encoding_matches_update_encode(op in (0..KEYS, proptest::option::of(0u8..3))) {
        let u = update(op);
        prop_assert_eq!(encode_key_value(&u.key, u.value.as_ref()), u.encode());
    }
}
