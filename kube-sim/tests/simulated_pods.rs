//! The simulated scheduler and kubelet through the store API: unbound pods are bound to
//! ready nodes only, addresses come from the node's pod CIDR without duplicates and are
//! released on delete (a pod left unscheduled while the CIDR was full then gets the
//! freed one),
//! host-network pods get the node IP, and pods that already have an address (seeded,
//! or the load test's churn) are never touched. `simulate_pods: false` turns it off
//! (namespaces are then deleted at once instead of terminating).
//! Dual-stack nodes give their pods an address from each pod CIDR, IPv6-only nodes an
//! IPv6 address. Conditions are polled under a generous deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use kube_sim::{Config, KubeSim, Store};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

fn node(name: &str, cidr: &str, ip: &str, ready: bool) -> Value {
    let mut v = node_with(name, &[cidr], &[ip]);
    v["status"]["conditions"][0]["status"] = json!(if ready { "True" } else { "False" });
    v
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

fn node_with(name: &str, cidrs: &[&str], ips: &[&str]) -> Value {
    let addresses: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
           "status": {"addresses": addresses,
                      "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn ips_of(store: &Store, name: &str) -> Vec<String> {
    let pod = get(store, name);
    let list = pod["status"]["podIPs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.iter()
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_nodes_give_an_address_of_each_family() {
    let sim = KubeSim::start(Config::default()).await.unwrap();
    let store = sim.store().clone();
    let cidrs = ["10.1.0.0/24", "fd00:10:1::/64"];
    let node_ips = ["172.16.0.1", "fd99::1"];
    store
        .create_object(node_with("dual", &cidrs, &node_ips))
        .unwrap();
    let on = |node: &str| json!({"nodeName": node, "containers": [{"name": "c", "image": "i"}]});
    store.create_object(pod("d0", on("dual"))).unwrap();
    store.create_object(pod("d1", on("dual"))).unwrap();
    until(&store, "both dual-stack pods start", |s| {
        ip_of(s, "d0").is_some() && ip_of(s, "d1").is_some()
    })
    .await;
    let mut seen = vec![ips_of(&store, "d0"), ips_of(&store, "d1")];
    seen.sort();
    assert_eq!(
        seen,
        vec![
            vec!["10.1.0.2".to_string(), "fd00:10:1::2".to_string()],
            vec!["10.1.0.3".to_string(), "fd00:10:1::3".to_string()],
        ],
        "one address per family, IPv4 (the first CIDR) first, no duplicates"
    );
    assert_eq!(ip_of(&store, "d0"), Some(ips_of(&store, "d0")[0].clone()));
    let d0 = get(&store, "d0");
    assert_eq!(
        d0["status"]["hostIPs"],
        json!([{"ip": "172.16.0.1"}, {"ip": "fd99::1"}])
    );
    assert_eq!(d0["status"]["hostIP"], "172.16.0.1");

    // An IPv6-only node: IPv6 pod addresses, IPv6 host address; a freed address is
    // handed out again.
    store
        .create_object(node_with("six", &["fd00:10:2::/64"], &["fd99::2"]))
        .unwrap();
    store.create_object(pod("s0", on("six"))).unwrap();
    until(&store, "the IPv6 pod starts", |s| ip_of(s, "s0").is_some()).await;
    assert_eq!(ips_of(&store, "s0"), vec!["fd00:10:2::2"]);
    assert_eq!(ip_of(&store, "s0").as_deref(), Some("fd00:10:2::2"));
    assert_eq!(get(&store, "s0")["status"]["hostIP"], "fd99::2");
    store.delete_object("v1", "Pod", "t", "s0").unwrap();
    store.create_object(pod("s1", on("six"))).unwrap();
    until(&store, "the next IPv6 pod starts", |s| {
        ip_of(s, "s1").is_some()
    })
    .await;
    assert_eq!(ips_of(&store, "s1"), vec!["fd00:10:2::2"]);
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
