//! Memory benchmark: bytes held per key by the mirror and per endpoint by the calc, for a
//! 150,000-pod cluster (5,000 nodes x 30 pods, 500 namespaces of deployments whose pods
//! share their labels, 5 NetworkPolicies per namespace, 100 endpoints on this node).
//! A counting global allocator (stats_alloc) measures the live heap: the mirror is synced from a real
//! snapshot (the server's cache, compressed chunks), then the calc folds the changes the
//! mirror emits. Reports the allocator's counts next to the structures' own accounting
//! ([`Mirror::heap_bytes`]). A report, not an assertion (tests/memory_budget.rs asserts).
//!
//! Run with `cargo bench -p felix-client --bench memory` (`PODS=20000` for a smaller run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
fn live() -> isize {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

const NODES: usize = 5_000;
const PODS_PER_DEPLOYMENT: usize = 30;
const NAMESPACES: usize = 500;
const NODE: &str = "node-0000";

fn endpoint(i: usize) -> Update {
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

fn cluster(pods: usize) -> Vec<Update> {
    let mut updates: Vec<Update> = (0..pods).map(endpoint).collect();
    updates.extend((0..NAMESPACES).flat_map(policies));
    updates
}

/// A mirror synced from `cache`; the changes it emits go to `consume`, a chunk at a
/// time, as the agent's sync client hands them on.
fn sync(cache: &SnapshotCache, mut consume: impl FnMut(Vec<Update>)) -> Mirror {
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
    for batch in mirror.finish_snapshot(&in_sync).unwrap() {
        consume(batch);
    }
    mirror
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let pods: usize = std::env::var("PODS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(150_000);
    let mut cache = SnapshotCache::new(CacheConfig::default());
    cache.apply(cluster(pods));
    let keys = cache.len();
    println!("cluster: {pods} pods, {keys} keys");

    // Pass 1: the mirror alone (the changes are dropped as they come).
    let base = live();
    let mirror = sync(&cache, drop);
    let mirror_live = live() - base;
    println!(
        "mirror: {:.1} MiB live = {} bytes/key (own accounting {} bytes/key)",
        mib(mirror_live),
        mirror_live / keys as isize,
        mirror.heap_bytes() / keys.max(1),
    );

    // Pass 2: a second mirror whose changes the calc folds in, a chunk at a time.
    let mut calc = Calc::new(CalcConfig {
        node_name: NODE.to_string(),
        mode: CalcMode::PolicyOnly,
        cluster_cidrs: vec!["10.0.0.0/8".into()],
    });
    let before = live();
    let second = sync(&cache, |batch| calc.apply(&batch));
    let desired = calc.desired();
    let calc_live = live() - before - mirror_live;
    println!(
        "calc: {:.1} MiB live incl. one Desired = {} bytes/endpoint",
        mib(calc_live),
        calc_live / pods as isize,
    );
    println!(
        "(desired: {} ipsets; mirrors hold {} and {} keys)",
        desired.ipsets.len(),
        mirror.len(),
        second.len()
    );
}
