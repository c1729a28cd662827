//! The memory fixture shared by `tests/memory_budget.rs` (budgets asserted in CI) and
//! `benches/memory.rs` (the 150,000-pod report): a counting global allocator
//! (stats_alloc), a realistic cluster, and one measurement of the live heap held by the
//! mirror per key and by the calc per endpoint.
//!
//! The cluster: deployments of 30 pods whose pods share their labels, spread over 500
//! namespaces with 5 NetworkPolicies each (through the real converter), 5,000 nodes,
//! the first 100 pods on this node. The mirror is synced from a real compressed
//! snapshot (the server's cache), and the calc folds the changes the mirror emits a
//! chunk at a time, as the agent's sync client hands them on. Including this module
//! installs the counting allocator for the whole binary.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::alloc::System;
use std::collections::BTreeMap;

use bytes::Bytes;
use felix_client::calc::{Calc, CalcConfig, CalcMode};
use felix_client::mirror::Mirror;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use snapshot_cache::{CacheConfig, SnapshotCache, compress};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use typha_proto::frame::ServerFrame;
use typha_proto::{Key, Kind, Update, Value, pb};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes: allocated minus freed (stats_alloc counts a reallocation's growth
/// or shrinkage in those two already).
pub fn live() -> isize {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

const NODES: usize = 5_000;
const PODS_PER_DEPLOYMENT: usize = 30;
const NAMESPACES: usize = 500;
/// The node the calc runs for.
pub const NODE: &str = "node-0000";

/// Pod `i` of the cluster as the converters produce it.
pub fn endpoint(i: usize) -> Update {
    let deployment = i / PODS_PER_DEPLOYMENT;
    let ns = deployment % NAMESPACES;
    let namespace = format!("team-{ns:03}");
    let role = ["api", "web", "worker", "frontend", "db"][deployment % 5];
    let pod = format!("{role}-{deployment:05}-7d9f8c6b5d-{i:06}");
    // The first 100 pods run on this node; the rest spread over the others.
    let node = if i < 100 { 0 } else { 1 + i % (NODES - 1) };
    let labels: BTreeMap<String, String> = [
        ("app", format!("{role}-{deployment:05}")),
        ("role", role.to_string()),
        ("pod-template-hash", format!("7d9f{deployment:05}")),
        ("projectcalico.org/namespace", namespace.clone()),
        ("projectcalico.org/orchestrator", "k8s".to_string()),
        ("projectcalico.org/serviceaccount", "default".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let wep = pb::WorkloadEndpoint {
        namespace: namespace.clone(),
        pod: pod.clone(),
        node: format!("node-{node:04}"),
        interface_name: netmodel::interface_name(&namespace, &pod),
        ip_nets: vec![format!(
            "10.{}.{}.{}/32",
            i / 65_536,
            (i / 256) % 256,
            i % 256
        )],
        labels,
        profile_ids: vec![
            format!("kns.{namespace}"),
            format!("ksa.{namespace}.default"),
        ],
        ports: vec![pb::NamedPort {
            name: "http".into(),
            protocol: pb::Protocol::Tcp as i32,
            port: 8080,
        }],
        service_account: "default".into(),
        mac: String::new(),
    };
    Update::new(
        Key::new(Kind::WorkloadEndpoint, namespace, pod).unwrap(),
        Some(Value::WorkloadEndpoint(wep)),
    )
    .unwrap()
}

fn netpol(ns: usize, name: &str, spec: serde_json::Value) -> Update {
    let obj: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": format!("team-{ns:03}")}, "spec": spec}))
    .unwrap();
    netmodel::convert(&obj).unwrap()
}

/// Namespace `ns`'s policies: default deny, and per role "from the next role, named
/// port http" (peer selectors become ipsets, the named port an `ip,port` set).
fn policies(ns: usize) -> Vec<Update> {
    let roles = ["api", "web", "worker", "frontend", "db"];
    let mut out = vec![netpol(
        ns,
        "default-deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )];
    for (n, role) in roles.iter().take(4).enumerate() {
        let from = roles[(n + 1) % roles.len()];
        out.push(netpol(
            ns,
            &format!("to-{role}"),
            json!({"podSelector": {"matchLabels": {"role": role}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": from}}}],
                                "ports": [{"port": "http"}]}]}),
        ));
    }
    out
}

/// The cluster's updates with `pods` pods.
pub fn cluster(pods: usize) -> Vec<Update> {
    let mut updates: Vec<Update> = (0..pods).map(endpoint).collect();
    updates.extend((0..NAMESPACES).flat_map(policies));
    updates
}

/// A mirror synced from a snapshot of `cache`; the changes it emits go to `consume`, a
/// chunk at a time. Asserts the mirror reported every key and matches the digest.
pub fn sync(cache: &SnapshotCache, mut consume: impl FnMut(Vec<Update>)) -> Mirror {
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

/// What one measurement found.
pub struct Measured {
    /// Keys in the cluster.
    pub keys: usize,
    /// Live heap of the mirror, bytes.
    pub mirror_live: isize,
    /// The mirror's own accounting ([`Mirror::heap_bytes`]), bytes.
    pub mirror_accounted: usize,
    /// Live heap of the calc including one `Desired`, bytes.
    pub calc_live: isize,
    /// ipsets in that `Desired`.
    pub ipsets: usize,
    /// Their members in all.
    pub members: usize,
}

/// Syncs a mirror alone, then a second mirror whose changes a calc folds in, and
/// counts the live heap each holds. Run its steps in a process measuring nothing else.
pub fn measure(pods: usize) -> Measured {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    cache.apply(cluster(pods));
    let keys = cache.len();

    // Pass 1: the mirror alone (the changes are dropped as they come).
    let base = live();
    let mirror = sync(&cache, drop);
    let mirror_live = live() - base;
    assert_eq!(mirror.len(), keys);

    // Pass 2: a second mirror whose changes the calc folds in, a chunk at a time.
    let mut calc = Calc::new(CalcConfig {
        node_name: NODE.to_string(),
        mode: CalcMode::PolicyOnly,
        cluster_cidrs: vec!["10.0.0.0/8".into()],
        interface_prefixes: Default::default(),
    });
    let before = live();
    let second = sync(&cache, |batch| calc.apply(&batch));
    let desired = calc.desired();
    let calc_live = live() - before - mirror_live;
    assert_eq!(second.len(), keys);
    Measured {
        keys,
        mirror_live,
        mirror_accounted: mirror.heap_bytes(),
        calc_live,
        ipsets: desired.ipsets.len(),
        members: desired.ipsets.values().map(|s| s.members.len()).sum(),
    }
}
