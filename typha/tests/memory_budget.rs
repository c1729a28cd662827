//! Memory budget of typha's state as counts: the live heap bytes per key that the hub
//! (snapshot cache, breadcrumb log, memoized snapshot) and the upstream's relist state
//! hold for a cluster of realistic pods, at its peak during the initial list and once in
//! sync with a snapshot built, must stay under budgets, so a change that doubles them
//! (say, entries keeping decoded values again, or the initial list's breadcrumbs kept
//! as a second copy of the state) fails CI. No timings.
//!
//! The cluster is kube-sim's synthetic one, generated an object at a time and converted
//! by netmodel's converters as the watch loop converts them, into per-resource
//! [`ResourceState`]s and a [`Hub`] with typha's default configuration. A counting
//! global allocator (stats_alloc) measures the live heap; nextest runs each test in a
//! process of its own, and this file holds one test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube_sim::SeedConfig;
use netmodel::state::{Input, ResourceState};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use typha::hub::{Hub, HubConfig};
use typha_proto::Update;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes: allocated minus freed.
fn live() -> isize {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

/// Live bytes per key once in sync with a snapshot memoized. Measured when set: about
/// 770 (encoded entry ~470, key copies in the cache and the relist state, map slots, the
/// compressed snapshot); before issue 14 (decoded values kept, the initial list's
/// breadcrumbs kept) it was about 2,700.
const IN_SYNC_BYTES_PER_KEY: isize = 1_100;

/// The highest live bytes per key seen after any batch of the initial list.
const LIST_PEAK_BYTES_PER_KEY: isize = 1_100;

/// The cluster: 700 nodes x 30 pods (21,000 pods), 20 namespaces x 2 policies.
fn cluster() -> SeedConfig {
    SeedConfig {
        nodes: 700,
        pods_per_node: 30,
        namespaces: 20,
        policies_per_namespace: 2,
        host_network_every: 0,
    }
}

fn typed<T: DeserializeOwned + netmodel::ToModel + kube::Resource>(obj: Json) -> Update {
    let obj: T = serde_json::from_value(obj).unwrap();
    netmodel::convert(&obj).unwrap()
}

/// The resource of a seeded object and its model update, as the watch loop converts it
/// (Calico's objects are not seeded here).
fn convert(obj: Json) -> (&'static str, Update) {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    match kind.as_str() {
        "Pod" => ("pods", typed::<Pod>(obj)),
        "Node" => ("nodes", typed::<Node>(obj)),
        "Namespace" => ("namespaces", typed::<Namespace>(obj)),
        "ServiceAccount" => ("serviceaccounts", typed::<ServiceAccount>(obj)),
        "NetworkPolicy" => ("networkpolicies", typed::<NetworkPolicy>(obj)),
        other => panic!("unexpected seeded kind {other}"),
    }
}

#[tokio::test]
async fn typha_state_stays_under_its_bytes_per_key_budget() {
    let base = live();
    let hub = Hub::new(HubConfig::default());
    let mut states: BTreeMap<&'static str, ResourceState> = BTreeMap::new();
    let (mut batch, mut peak) = (Vec::new(), 0);
    let config = cluster();
    for obj in kube_sim::seed::seed_objects(&config, false) {
        let (resource, update) = convert(obj);
        let state = states.entry(resource).or_insert_with(|| {
            let mut state = ResourceState::new();
            state.apply(Input::Init, &mut Vec::new());
            state
        });
        state.apply(Input::InitApply(update), &mut batch);
        if batch.len() >= 1_000 {
            hub.apply(std::mem::take(&mut batch));
            peak = peak.max(live() - base);
        }
    }
    for state in states.values_mut() {
        state.apply(Input::InitDone, &mut batch);
    }
    hub.apply(batch);
    hub.set_in_sync(true);
    peak = peak.max(live() - base);
    let snapshot = hub.snapshot().await.unwrap();
    let keys = hub.len() as isize;
    let held = live() - base;
    let (held_per_key, peak_per_key) = (held / keys, peak / keys);
    eprintln!(
        "{keys} keys: {held_per_key} live bytes per key in sync ({} MiB), peak during the \
         list {peak_per_key}; snapshot {} raw / {} compressed bytes",
        held >> 20,
        snapshot.raw_bytes,
        snapshot.compressed_bytes
    );
    assert!(keys > 21_000, "{keys} keys");
    assert!(
        held_per_key < IN_SYNC_BYTES_PER_KEY,
        "{held_per_key} live bytes per key in sync, budget {IN_SYNC_BYTES_PER_KEY}"
    );
    assert!(
        peak_per_key < LIST_PEAK_BYTES_PER_KEY,
        "{peak_per_key} live bytes per key during the list, budget {LIST_PEAK_BYTES_PER_KEY}"
    );
    let relist: usize = states.values().map(ResourceState::len).sum();
    assert_eq!(
        relist as isize, keys,
        "the relist state holds every key once"
    );
}
