//! Memory budgets as counts: the mirror's own accounting of the bytes it holds per key
//! ([`Mirror::heap_bytes`]) must stay under a budget for a cluster of realistic keys, so
//! a change that doubles the mirror's memory (say, keeping the values again) fails CI.
//! No timings: the accounting is a sum over the mirror's map and key strings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use felix_client::mirror::Mirror;
use snapshot_cache::{CacheConfig, SnapshotCache, compress};
use typha_proto::frame::ServerFrame;
use typha_proto::{Key, Kind, Update, Value, pb};

/// The budget per key, in bytes (the map slot with the key and its 16-byte hash, and
/// the key's strings). The mirror that kept decoded values used about 3.9 KiB.
const MIRROR_BYTES_PER_KEY: usize = 200;

/// A workload endpoint the way the converters produce one for a pod of a deployment.
fn endpoint(ns: usize, pod: usize) -> Update {
    let namespace = format!("namespace-{ns:03}");
    let name = format!(
        "node-{:04}-k8s-web-{ns:03}-7d9f8c6b5d-{pod:05}-eth0",
        pod % 5000
    );
    let key = Key::new(Kind::WorkloadEndpoint, namespace.clone(), name).unwrap();
    let labels = BTreeMap::from([
        ("app".to_string(), format!("web-{ns:03}")),
        ("pod-template-hash".to_string(), "7d9f8c6b5d".to_string()),
        ("projectcalico.org/namespace".to_string(), namespace.clone()),
    ]);
    let value = Value::WorkloadEndpoint(pb::WorkloadEndpoint {
        profile_ids: vec![format!("kns.{namespace}"), "ksa.default".to_string()],
        ip_nets: vec![format!("10.{}.{}.{}/32", ns % 250, pod / 250, pod % 250)],
        node: format!("node-{:04}", pod % 5000),
        interface_name: format!("cali{pod:011x}"),
        namespace,
        pod: format!("web-{pod:05}"),
        labels,
        ..Default::default()
    });
    Update::new(key, Some(value)).unwrap()
}

/// A mirror synced from a snapshot of `updates`.
fn synced(updates: Vec<Update>) -> Mirror {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    cache.apply(updates);
    let encoded = compress(&cache.build_snapshot(), 1).unwrap();
    let mut mirror = Mirror::new();
    mirror.start_session(cache.epoch(), false);
    for frame in &encoded.chunk_frames {
        let ServerFrame::SnapshotChunk(chunk) = ServerFrame::decode(Bytes::clone(frame)).unwrap()
        else {
            panic!("not a chunk");
        };
        mirror.apply_chunk(chunk).unwrap();
    }
    let ServerFrame::InSync(in_sync) = ServerFrame::decode(encoded.in_sync_frame).unwrap() else {
        panic!("not in-sync");
    };
    let changes: usize = mirror
        .finish_snapshot(&in_sync)
        .unwrap()
        .map(|b| b.len())
        .sum();
    assert_eq!(
        changes,
        mirror.len(),
        "the first snapshot reports every key"
    );
    assert_eq!(mirror.digest(), cache.digest());
    mirror
}

#[test]
fn mirror_bytes_per_key_stay_under_budget() {
    let updates: Vec<Update> = (0..20_000).map(|i| endpoint(i % 100, i)).collect();
    let keys = updates.len();
    let mirror = synced(updates);
    assert_eq!(mirror.len(), keys);
    let per_key = mirror.heap_bytes() / keys;
    assert!(
        per_key <= MIRROR_BYTES_PER_KEY,
        "mirror holds {per_key} bytes per key (budget {MIRROR_BYTES_PER_KEY})"
    );
    // The accounting is not vacuous: it counts at least the slot and the key's strings.
    assert!(per_key >= std::mem::size_of::<Key>() + 16 + 40, "{per_key}");
}
