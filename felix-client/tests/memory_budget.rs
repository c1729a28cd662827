//! Memory budgets as counts: the bytes the mirror holds per key and the calc per
//! endpoint must stay under budgets for a cluster of realistic keys, so a change that
//! doubles either (say, the mirror keeping the values again) fails CI. No timings: the
//! counts are the mirror's own accounting ([`Mirror::heap_bytes`]) and the live heap
//! bytes a counting global allocator (stats_alloc) sees. nextest runs every test in a
//! process of its own; the one test measuring the heap runs its steps sequentially.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use std::alloc::System;

use bytes::Bytes;
use felix_client::calc::{Calc, CalcConfig, CalcMode};
use felix_client::mirror::Mirror;
use snapshot_cache::{CacheConfig, SnapshotCache, compress};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use typha_proto::frame::ServerFrame;
use typha_proto::{Key, Kind, Update, Value, pb};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes: allocated minus freed (stats_alloc counts a reallocation's growth
/// or shrinkage in those two already).
fn live() -> isize {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

/// The budget of live heap bytes per key for the mirror (the allocator's count).
const MIRROR_LIVE_BYTES_PER_KEY: isize = 256;

/// The budget of live heap bytes per endpoint for the calc (its index of every endpoint
/// of the cluster, selector matches and ipset members; 1,178 bytes measured at 20,000
/// endpoints when set). The mirror measured 187 bytes per key.
const CALC_LIVE_BYTES_PER_ENDPOINT: isize = 1_536;

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
    synced_from(&cache, |_| {})
}

/// A mirror synced from a snapshot of `cache`, its changes handed to `consume`.
fn synced_from(cache: &SnapshotCache, mut consume: impl FnMut(Vec<Update>)) -> Mirror {
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
    let mut changes = 0;
    for batch in mirror.finish_snapshot(&in_sync).unwrap() {
        changes += batch.len();
        consume(batch);
    }
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

/// Endpoints (the pods of a namespace share their labels), one policy per namespace
/// through the real converter (its peer selector is an ipset of the namespace's pods).
fn cluster(pods: usize) -> Vec<Update> {
    let mut updates: Vec<Update> = (0..pods).map(|i| endpoint(i % 100, i)).collect();
    for ns in 0..100 {
        updates.push(allow_from_app(ns));
    }
    updates
}

fn allow_from_app(ns: usize) -> Update {
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "allow-from-app", "namespace": format!("namespace-{ns:03}")},
            "spec": {"podSelector": {}, "ingress": [{"from": [
                {"podSelector": {"matchLabels": {"app": format!("web-{ns:03}")}}}]}]}}))
        .unwrap();
    netmodel::convert(&policy).unwrap()
}

#[test]
fn live_heap_of_mirror_and_calc_stays_under_budget() {
    let pods = 20_000;
    let mut cache = SnapshotCache::new(CacheConfig::default());
    cache.apply(cluster(pods));
    let keys = cache.len();

    let before = live();
    let mirror = synced_from(&cache, drop);
    let mirror_live = live() - before;
    assert_eq!(mirror.len(), keys);
    let per_key = mirror_live / keys as isize;
    println!("mirror: {per_key} live bytes per key");
    assert!(
        per_key <= MIRROR_LIVE_BYTES_PER_KEY,
        "mirror holds {per_key} live bytes per key (budget {MIRROR_LIVE_BYTES_PER_KEY})"
    );

    let mut calc = Calc::new(CalcConfig {
        node_name: "node-0000".to_string(),
        mode: CalcMode::PolicyOnly,
        cluster_cidrs: vec!["10.0.0.0/8".into()],
    });
    let before = live();
    let second = synced_from(&cache, |batch| calc.apply(&batch));
    let calc_live = live() - before - mirror_live;
    assert_eq!(second.len(), keys);
    let per_endpoint = calc_live / pods as isize;
    println!("calc: {per_endpoint} live bytes per endpoint");
    assert!(
        per_endpoint <= CALC_LIVE_BYTES_PER_ENDPOINT,
        "calc holds {per_endpoint} live bytes per endpoint (budget {CALC_LIVE_BYTES_PER_ENDPOINT})"
    );
    // Not vacuous: the calc holds at least each endpoint's address.
    assert!(per_endpoint >= 32, "{per_endpoint}");
}
