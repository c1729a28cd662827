//! The simulated scheduler and kubelet through the store API: unbound pods are bound to
//! ready nodes only, addresses come from the node's pod CIDR without duplicates and are
//! released on delete (a pod left unscheduled while the CIDR was full then gets the
//! freed one),
//! host-network pods get the node IP, and pods that already have an address (seeded,
//! or the load test's churn) are never touched. `simulate_pods: false` turns it off
//! (namespaces are then deleted at once instead of terminating).
//! Conditions are polled under a generous deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use kube_sim::{Config, KubeSim, Store};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

fn node(name: &str, cidr: &str, ip: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                      "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "t"}, "spec": spec})
}

fn get(store: &Store, name: &str) -> Value {
    store.get_object("v1", "Pod", "t", name).unwrap()
}

/// Polls until `done` holds for the store (or panics after LIMIT).
async fn until(store: &Store, what: &str, done: impl Fn(&Store) -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done(store) {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ip_of(store: &Store, name: &str) -> Option<String> {
    get(store, name)["status"]["podIP"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_unique_released_and_only_given_to_pods_without_one() {
    let sim = KubeSim::start(Config::default()).await.unwrap();
    let store = sim.store().clone();
    // A not-ready node never gets pods; the ready one has a /29: .2 to .6 are usable.
    store
        .create_object(node("sick", "10.9.0.0/24", "172.16.0.9", false))
        .unwrap();
    store
        .create_object(node("small", "10.1.0.0/29", "172.16.0.1", true))
        .unwrap();
    let c = json!({"containers": [{"name": "c", "image": "i"}]});
    for i in 0..6 {
        store
            .create_object(pod(&format!("p{i}"), c.clone()))
            .unwrap();
    }
    let bound = |s: &Store| {
        (0..6)
            .filter(|i| ip_of(s, &format!("p{i}")).is_some())
            .count()
            == 5
    };
    until(&store, "five pods started", bound).await;
    let ips: BTreeSet<String> = (0..6)
        .filter_map(|i| ip_of(&store, &format!("p{i}")))
        .collect();
    let want: BTreeSet<String> = (2..=6).map(|h| format!("10.1.0.{h}")).collect();
    assert_eq!(
        ips, want,
        "addresses must be the CIDR's usable ones, without duplicates"
    );
    let waiting = (0..6)
        .find(|i| ip_of(&store, &format!("p{i}")).is_none())
        .unwrap();
    let waiting = format!("p{waiting}");
    for i in 0..6 {
        let p = get(&store, &format!("p{i}"));
        if p["status"]["podIP"].is_string() {
            assert_eq!(p["spec"]["nodeName"], "small", "{p}");
            assert_eq!(p["status"]["phase"], "Running");
            assert_eq!(p["status"]["hostIP"], "172.16.0.1");
        } else {
            // No room on any ready node: the pod stays unscheduled.
            assert!(p["spec"].get("nodeName").is_none(), "{p}");
        }
    }
    // Deleting a pod frees its address for the waiting one.
    let victim = if waiting == "p0" { "p1" } else { "p0" };
    let freed = ip_of(&store, victim).unwrap();
    store.delete_object("v1", "Pod", "t", victim).unwrap();
    until(&store, "the waiting pod starts", |s| {
        ip_of(s, &waiting).is_some()
    })
    .await;
    assert_eq!(ip_of(&store, &waiting), Some(freed));

    // Host network: the node's address. Pre-addressed pods: untouched.
    let host = json!({"hostNetwork": true, "containers": [{"name": "c", "image": "i"}]});
    store.create_object(pod("host", host)).unwrap();
    until(&store, "the host-network pod starts", |s| {
        ip_of(s, "host").is_some()
    })
    .await;
    assert_eq!(ip_of(&store, "host").as_deref(), Some("172.16.0.1"));
    let mut churned = pod(
        "churned",
        json!({"nodeName": "small", "containers": [{"name": "c", "image": "i"}]}),
    );
    churned["status"] =
        json!({"phase": "Running", "podIP": "10.254.0.7", "podIPs": [{"ip": "10.254.0.7"}]});
    let created = store.create_object(churned).unwrap();
    // A marker write after it: once the marker pod has started, the churned pod's event
    // has been processed too (events are handled in order).
    store
        .create_object(pod("marker", json!({"nodeName": "small"})))
        .unwrap();
    let start = |s: &Store| {
        s.get_object("v1", "Pod", "t", "marker")
            .is_some_and(|m| m["status"]["phase"] == "Running")
    };
    store.delete_object("v1", "Pod", "t", "p2").ok();
    store.delete_object("v1", "Pod", "t", "p3").ok();
    until(&store, "the marker pod starts", start).await;
    assert_eq!(
        get(&store, "churned"),
        created,
        "a pod with an address was changed"
    );
    sim.shutdown().await;
}

/// DELETE of a namespace over HTTP: with the simulation its answer is the namespace
/// marked Terminating (the namespace controller removes it later); without, it is gone.
async fn delete_namespace(simulate_pods: bool) -> (Value, bool) {
    let config = Config {
        simulate_pods,
        ..Config::default()
    };
    let sim = KubeSim::start(config).await.unwrap();
    sim.store()
        .create_object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}))
        .unwrap();
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    let answer = api.delete("x", &Default::default()).await.unwrap();
    let answer = serde_json::to_value(answer.left().expect("the namespace object")).unwrap();
    let gone = sim.store().get_object("v1", "Namespace", "", "x").is_none();
    sim.shutdown().await;
    (answer, gone)
}

#[tokio::test]
async fn namespaces_terminate_gracefully_only_with_the_simulation() {
    let (answer, gone) = delete_namespace(true).await;
    assert_eq!(answer["status"]["phase"], "Terminating", "{answer}");
    assert!(
        answer["metadata"]["deletionTimestamp"].is_string(),
        "{answer}"
    );
    let _ = gone; // the controller may or may not have finished already
    let (answer, gone) = delete_namespace(false).await;
    assert!(
        answer["metadata"].get("deletionTimestamp").is_none(),
        "{answer}"
    );
    assert!(gone);
}
