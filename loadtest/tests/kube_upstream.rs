//! typha against a Kubernetes API (kube-sim) end to end: the real upstream watchers, the
//! hub, mutual TLS, felix-client sync clients, and felix-client's local (no typha) mode.
//!
//! The oracle is the API's own state converted through the model (`netmodel::
//! convert` of every stored object): mirrors must equal it, and their digests the hub's.
//! Waits are on signals (the hub's revision channel, client `applied` revisions, client
//! events, the hub's counters after each batch, kube-sim's request counters), each under a
//! generous deadline. Nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use felix_client::SyncStatus;
use felix_client::local::run_local;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use kube_sim::{KubeSim, SeedConfig, Store};
use loadtest::harness::Harness;
use netmodel::{ToModel, UpstreamConfig};
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use snapshot_cache::DeltasSince;
use typha::hub::Hub;
use typha_proto::{Key, Revision, Update};

mod upstream_support;

use upstream_support::{
    Observer, api_model, assert_mirrors, endpoint_pods, hashes, mirror_model, model_of,
};

/// Generous bound on every wait: a hung test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(120);
/// Resources typha watches (one relist each after a forced 410).
const WATCHED: u64 = netmodel::Resource::ALL.len() as u64;

// ---------------------------------------------------------------- fixtures

fn seed_config() -> SeedConfig {
    SeedConfig {
        nodes: 20,
        pods_per_node: 10,
        namespaces: 5,
        policies_per_namespace: 2,
        host_network_every: 10,
    }
}

fn pod_json(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> Json {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app, "tier": "frontend"}},
        "spec": {
            "nodeName": node, "serviceAccountName": "default",
            "containers": [{"name": "main", "image": "registry.example/x:1",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn k8s_policy_json(ns: &str, name: &str, port: u16) -> Json {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "frontend"}}}],
                         "ports": [{"protocol": "TCP", "port": port}]}],
        },
    })
}

fn set_label(obj: &mut Json, key: &str, value: &str) {
    let meta = obj["metadata"].as_object_mut().unwrap();
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    labels[key] = json!(value);
}

/// Upserts `obj` and returns the stored version.
fn write(store: &Store, obj: Json) -> Json {
    store.upsert_object(obj).unwrap()
}

// ---------------------------------------------------------------- the rig

/// kube-sim seeded with [`seed_config`], and typha watching it.
struct Rig {
    sim: KubeSim,
    harness: Harness,
}

fn kube_client(sim: &KubeSim) -> kube::Client {
    let config = kube::Config::new(sim.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

impl Rig {
    async fn start() -> Rig {
        let sim = upstream_support::start_unbookmarked_sim(&seed_config()).await;
        let harness = upstream_support::typha_watching(kube_client(&sim), LIMIT).await;
        Rig { sim, harness }
    }

    fn hub(&self) -> &Hub {
        &self.harness.typha.hub
    }

    fn store(&self) -> &Store {
        self.sim.store()
    }

    /// Waits until the hub moves past `before`; returns the new revision.
    async fn next_revision(&self, before: Revision) -> Revision {
        let mut rx = self.hub().subscribe();
        let waited = tokio::time::timeout(LIMIT, rx.wait_for(|r| *r > before)).await;
        *waited.expect("hub revision did not advance").unwrap()
    }

    /// Asserts that exactly one breadcrumb with exactly one update (of `key`) follows
    /// `before`, i.e. one API change became exactly one delta.
    fn assert_one_delta(&self, before: Revision, key: &Key) {
        assert_eq!(
            self.hub().revision(),
            before.next(),
            "more than one revision for one change"
        );
        let DeltasSince::Crumbs(crumbs) = self.hub().deltas_since(before) else {
            panic!("no breadcrumbs after {before}")
        };
        assert_eq!(crumbs.len(), 1);
        let keys: Vec<&Key> = crumbs[0].updates.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![key]);
    }

    /// Waits until the hub has dropped at least `at_least` no-op updates in all.
    async fn wait_noops(&self, at_least: u64) {
        let noops = self
            .hub()
            .wait_stats(|stats| stats.noop_updates_dropped >= at_least);
        tokio::time::timeout(LIMIT, noops)
            .await
            .expect("no-op updates never reached the hub");
    }
}

impl Observer {
    fn through_typha(harness: &Harness, name: &str) -> Observer {
        Observer::start(harness.sync_config(name).unwrap())
    }

    fn local(sim: &KubeSim) -> Observer {
        let status = Arc::new(SyncStatus::default());
        let (client, st) = (kube_client(sim), status.clone());
        Observer::spawn(status, |tx, token| async move {
            Ok(run_local(client, UpstreamConfig::default(), tx, st, token).await?)
        })
    }

    /// Waits until the observer holds `expected` (a value, or absence) for its key.
    async fn until_holds(&mut self, expected: &Update) {
        let what = format!("{:?} = {}", expected.key, expected.value.is_some());
        self.until(&what, |o| {
            o.state.get(&expected.key) == expected.value.as_ref()
        })
        .await;
    }
}

// ---------------------------------------------------------------- the tests

/// (a) 500 sync clients through typha against a seeded API all end with exactly the
/// API's state (through the model) and the hub's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_mirror_the_api() {
    let rig = Rig::start().await;
    let (oracle, objects) = api_model(rig.store());
    // 5 namespaces x (1 + 11 SAs + 2 policies), 20 nodes, 180 endpoint pods (20 are
    // host-networked), 4 Calico defaults.
    assert_eq!(objects, 5 * 14 + 20 + 200 + 4);
    assert_eq!(oracle.len(), 5 * 14 + 20 + 180 + 4);
    assert_eq!(rig.hub().len(), oracle.len());

    let clients = rig.harness.spawn_clients(500).unwrap();
    clients.wait_all(rig.hub().revision(), LIMIT).await.unwrap();
    assert!(
        clients
            .clients
            .iter()
            .all(|c| c.status.in_sync.load(Ordering::Relaxed))
    );
    assert_mirrors(clients, rig.hub(), &oracle).await;
}

/// (b) Changes made through the API reach every client, one delta per change; a
/// namespace label change is one Profile delta (not one per pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_reach_every_client() {
    let rig = Rig::start().await;
    let clients = rig.harness.spawn_clients(30).unwrap();
    let mut observers: Vec<Observer> = (0..3)
        .map(|i| Observer::through_typha(&rig.harness, &format!("observer-{i}")))
        .collect();
    clients.wait_all(rig.hub().revision(), LIMIT).await.unwrap();

    let store = rig.store();
    let created = pod_json(
        "ns-0",
        "web-new",
        &kube_sim::seed::node_name(0),
        "10.0.0.200",
        "web",
    );
    let mut relabeled = created.clone();
    set_label(&mut relabeled, "version", "v2");
    let mut ns = store.get_object("v1", "Namespace", "", "ns-0").unwrap();
    set_label(&mut ns, "team", "team-new");
    type ToModelFn = fn(&Json) -> Update;
    let steps: Vec<(&str, Json, ToModelFn)> = vec![
        ("pod create", created.clone(), model_of::<Pod>),
        ("pod label update", relabeled, model_of::<Pod>),
        ("namespace label", ns, model_of::<Namespace>),
        (
            "policy create",
            k8s_policy_json("ns-1", "allow-web", 80),
            model_of::<K8sNetworkPolicy>,
        ),
        (
            "policy edit",
            k8s_policy_json("ns-1", "allow-web", 443),
            model_of::<K8sNetworkPolicy>,
        ),
    ];
    for (what, obj, to_model) in steps {
        let before = rig.hub().revision();
        let expected = to_model(&write(store, obj));
        let revision = rig.next_revision(before).await;
        rig.assert_one_delta(before, &expected.key);
        clients
            .wait_all(revision, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        for o in &mut observers {
            o.until_holds(&expected).await;
        }
    }

    // Pod delete.
    let before = rig.hub().revision();
    store.delete_object("v1", "Pod", "ns-0", "web-new").unwrap();
    let gone = Update::delete(model_of::<Pod>(&created).key);
    let revision = rig.next_revision(before).await;
    rig.assert_one_delta(before, &gone.key);
    clients.wait_all(revision, LIMIT).await.unwrap();
    for o in &mut observers {
        o.until_holds(&gone).await;
    }

    let (oracle, _) = api_model(store);
    for o in observers {
        let (mirror, events) = o.stop().await;
        assert_eq!(mirror.digest(), rig.hub().digest());
        assert!(
            events == oracle,
            "the observer's events do not add up to the API state"
        );
    }
    assert_mirrors(clients, rig.hub(), &oracle).await;
}

/// (c) A forced 410 (history compacted, watches cut) makes typha relist everything; the
/// relist of unchanged objects produces zero deltas and exactly the one real change made
/// while the watch was down arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_410_relists_and_delivers_only_the_real_change() {
    let rig = Rig::start().await;
    let clients = rig.harness.spawn_clients(20).unwrap();
    let mut observer = Observer::through_typha(&rig.harness, "observer");
    clients.wait_all(rig.hub().revision(), LIMIT).await.unwrap();
    let (_, objects) = api_model(rig.store());

    let before = rig.hub().revision();
    let noops = rig.hub().stats().noop_updates_dropped;
    let lists = rig.sim.metrics().snapshot().list_requests;
    rig.sim.compact();
    rig.sim.disconnect_watches();
    let mut pod = endpoint_pods(rig.store()).swap_remove(7);
    set_label(&mut pod, "version", "while-cut");
    let changed = model_of::<Pod>(&write(rig.store(), pod));

    let revision = rig.next_revision(before).await;
    // Every resource relisted and watches again (kinds without objects relist nothing),
    // and every other object came back through a relist as a no-op.
    let metrics = rig.sim.metrics().clone();
    let relisted = metrics.wait_until(|now| {
        now.list_requests >= lists + WATCHED && now.open_watches == WATCHED as i64
    });
    tokio::time::timeout(LIMIT, relisted)
        .await
        .expect("resources never relisted and watched again");
    rig.wait_noops(noops + objects as u64 - 1).await;
    rig.assert_one_delta(before, &changed.key);
    clients.wait_all(revision, LIMIT).await.unwrap();
    observer.until_holds(&changed).await;

    let (oracle, _) = api_model(rig.store());
    let (mirror, _) = observer.stop().await;
    assert!(mirror_model(&mirror) == hashes(&oracle));
    assert_mirrors(clients, rig.hub(), &oracle).await;
}

/// Writes `status` (with a distinct timestamp) to the first five `objects`, then a label
/// change to the last one: the status writes reach the cache as no-ops and exactly one
/// delta, the label change, follows. Returns the revision after it.
async fn status_writes_then_one_change<K>(
    rig: &Rig,
    mut objects: Vec<Json>,
    status: impl Fn(&mut Json, &str),
) -> Revision
where
    K: DeserializeOwned + ToModel + kube::Resource,
{
    let store = rig.store();
    let before = rig.hub().revision();
    let noops = rig.hub().stats().noop_updates_dropped;
    let mut sentinel = objects.pop().expect("a sentinel object");
    for (i, object) in objects.iter_mut().take(5).enumerate() {
        status(object, &format!("2030-01-01T00:00:0{i}Z"));
        write(store, object.clone());
    }
    set_label(&mut sentinel, "sentinel", "yes");
    let sentinel = model_of::<K>(&write(store, sentinel));
    let revision = rig.next_revision(before).await;
    rig.assert_one_delta(before, &sentinel.key);
    assert!(
        rig.hub().stats().noop_updates_dropped >= noops + 5,
        "status writes never reached the cache"
    );
    revision
}

/// (d) Status-only updates (condition timestamps, node heartbeats) reach typha but
/// produce zero deltas: the next real change advances the revision by exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_only_updates_produce_no_deltas() {
    let rig = Rig::start().await;
    let clients = rig.harness.spawn_clients(10).unwrap();
    clients.wait_all(rig.hub().revision(), LIMIT).await.unwrap();
    let store = rig.store();

    // Pods: five condition-timestamp updates, then one label change (same watch stream,
    // so the status updates were processed first).
    let pods = endpoint_pods(store).into_iter().take(11).collect();
    let revision = status_writes_then_one_change::<Pod>(&rig, pods, |pod, stamp| {
        pod["status"]["conditions"] = json!([
            {"type": "Ready", "status": "True", "lastProbeTime": stamp, "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": stamp},
        ]);
        pod["status"]["startTime"] = json!(stamp);
    })
    .await;
    // Nodes: heartbeats, then a label change.
    let nodes = store
        .list_objects("v1", "Node")
        .into_iter()
        .take(7)
        .collect();
    let revision_after_nodes = status_writes_then_one_change::<Node>(&rig, nodes, |node, stamp| {
        node["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True", "lastHeartbeatTime": stamp}]);
    })
    .await;
    assert_eq!(revision_after_nodes, revision.next());
    let revision = revision_after_nodes;

    clients.wait_all(revision, LIMIT).await.unwrap();
    let (oracle, _) = api_model(store);
    assert_mirrors(clients, rig.hub(), &oracle).await;
}

/// (e) felix-client without typha (local mode, same upstream code) reaches the same state
/// as the clients through typha: same digest as the hub, same entries, and follows a
/// change made afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_matches_typha() {
    let rig = Rig::start().await;
    let clients = rig.harness.spawn_clients(2).unwrap();
    let mut local = Observer::local(&rig.sim);
    local
        .until("local in-sync", |o| o.last_in_sync.is_some())
        .await;
    let (revision, digest, keys) = local.last_in_sync.unwrap();
    assert_eq!(digest, rig.hub().digest());
    assert_eq!(keys, rig.hub().len());
    assert!(revision.0 >= 1);
    assert!(local.status.in_sync.load(Ordering::Relaxed));
    let (oracle, _) = api_model(rig.store());
    assert!(
        local.state == oracle,
        "local events before in-sync differ from the API state"
    );

    let before = rig.hub().revision();
    let mut pod = endpoint_pods(rig.store()).swap_remove(3);
    set_label(&mut pod, "app", "moved");
    let changed = model_of::<Pod>(&write(rig.store(), pod));
    let revision = rig.next_revision(before).await;
    local.until_holds(&changed).await;
    clients.wait_all(revision, LIMIT).await.unwrap();

    let (oracle, _) = api_model(rig.store());
    assert_eq!(local.status.digest_mismatches.load(Ordering::Relaxed), 0);
    assert_eq!(
        local.status.keys.load(Ordering::Relaxed),
        oracle.len() as u64
    );
    let (mirror, events) = local.stop().await;
    assert_eq!(mirror.digest(), rig.hub().digest());
    assert!(mirror_model(&mirror) == hashes(&oracle));
    assert!(events == oracle);
    assert_mirrors(clients, rig.hub(), &oracle).await;
}
