//! A deployment created with plain kubectl (no status patch anywhere) reaches a
//! felix-client sync client through typha as workload endpoints carrying the addresses
//! kube-sim's simulated kubelet assigned; scaling it down removes endpoints.
//!
//! kube-sim (simulated control plane on, two seeded nodes) -> typha's real upstream
//! watchers -> hub -> mutual TLS -> sync client, whose events are folded into a map.
//! Waits are on kubectl's own `rollout status` and on the client's events, under a
//! generous deadline. Needs kubectl at /usr/bin/kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use felix_client::{SyncClient, SyncEvent};
use kube_sim::{KubeSim, SeedConfig};
use testkit::Kubectl;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use typha_proto::{Key, Kind, Value};

mod upstream_support;

const LIMIT: Duration = Duration::from_secs(120);

/// The pods of `ns` as kube-sim stores them: name -> `<podIP>/32`.
fn stored_pods(sim: &KubeSim, ns: &str) -> BTreeMap<String, String> {
    sim.store()
        .list_objects("v1", "Pod")
        .into_iter()
        .filter(|p| p["metadata"]["namespace"] == ns)
        .map(|p| {
            let ip = p["status"]["podIP"].as_str().expect("pod without an IP");
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                format!("{ip}/32"),
            )
        })
        .collect()
}

/// The workload endpoints of `ns` in the client's state: pod -> its one IP net.
fn endpoints(state: &HashMap<Key, Value>, ns: &str) -> BTreeMap<String, String> {
    state
        .values()
        .filter_map(|v| match v {
            Value::WorkloadEndpoint(w) if w.namespace == ns => {
                Some((w.pod.clone(), w.ip_nets.join(",")))
            }
            _ => None,
        })
        .collect()
}

/// Folds client events into `state` until `done` holds.
async fn until(
    events: &mut mpsc::Receiver<SyncEvent>,
    state: &mut HashMap<Key, Value>,
    what: &str,
    done: impl Fn(&HashMap<Key, Value>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done(state) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("client stopped");
        if let SyncEvent::Changes { updates, .. } = event {
            for u in updates {
                match u.value {
                    Some(v) => state.insert(u.key, v),
                    None => state.remove(&u.key),
                };
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_deployment_reaches_felix_client_with_simulated_ips() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = KubeSim::start(kube_sim::Config::default()).await.unwrap();
    kube_sim::seed(sim.store(), &SeedConfig::nodes_only(2)).unwrap();
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    let harness = upstream_support::typha_watching(client, LIMIT).await;
    let sync = SyncClient::new(harness.sync_config("felix-0").unwrap());
    let (tx, mut events) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { sync.run(tx, token).await });
    let mut state = HashMap::new();

    let kubectl = Kubectl::new(&sim.url());
    kubectl.ok(&["create", "namespace", "shop"]).await;
    kubectl.deploy("web", "shop", "nginx:1.27", 3, &[]).await;
    let pods = stored_pods(&sim, "shop");
    assert_eq!(pods.len(), 3, "{pods:?}");
    let ips: std::collections::BTreeSet<&String> = pods.values().collect();
    assert_eq!(ips.len(), 3, "addresses are not distinct: {pods:?}");
    until(&mut events, &mut state, "three endpoints", |s| {
        endpoints(s, "shop") == pods
    })
    .await;
    let profile = Key::new(Kind::Profile, "", "kns.shop").unwrap();
    assert!(state.contains_key(&profile), "namespace profile missing");

    kubectl
        .ok(&["scale", "deployment", "web", "-n", "shop", "--replicas=1"])
        .await;
    kubectl.rollout("web", "shop").await;
    let pods = stored_pods(&sim, "shop");
    assert_eq!(pods.len(), 1);
    until(&mut events, &mut state, "one endpoint", |s| {
        endpoints(s, "shop") == pods
    })
    .await;

    shutdown.cancel();
    task.await.unwrap().unwrap();
    harness.typha.shutdown().await.unwrap();
    sim.shutdown().await;
}
