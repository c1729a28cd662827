//! Scale-out operations end to end: 3 typha replicas as real processes (this package's
//! multi-call binary, `loadtest typha serve ...`) watching one kube-sim, discovered
//! through EndpointSlices by 600 in-process sync clients with mutual TLS, under churn:
//!
//! 1. a fourth replica joins: the others shed clients with Goodbye(REBALANCE) until
//!    max/mean connections <= 1.2, and the moved clients resume on their new replica
//!    (zero snapshots, counted on the clients and on the replicas);
//! 2. a replica is SIGKILLed: its clients move to the others and resume or resync;
//! 3. a replica gets SIGTERM: it drains with Goodbye(SHUTDOWN) and exits 0, and no
//!    client takes an error-path reconnect.
//!
//! The end state is proven: every client's digest equals a fresh observer's. Waits are on
//! conditions with generous deadlines that only turn a hang into a failure; nothing
//! asserts on timing (the elapsed times are printed for the record).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod replica_support;

use edge::discovery::{Discovery, DiscoveryConfig, TyphaEndpoint};
use felix_client::discovery::TyphaSource;
use kube_sim::{KubeSim, SeedConfig};
use replica_support::{
    Client, LIMIT, Replica, connections, snapshots_sent, totals, wait_sentinel, wait_until,
};
use serde_json::{Value as Json, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 600;
const NODES: usize = 600;
const NS: &str = "calico-system";
const SERVICE: &str = "calico-typha";

/// The flags that make a replica rebalance within the Service and drain quickly.
const REPLICA_FLAGS: &[&str] = &[
    "--service-namespace",
    NS,
    "--service-name",
    SERVICE,
    "--rebalance-rate",
    "25",
    "--drain-duration",
    "5s",
];

fn slice(replica: &Replica, ready: bool) -> Json {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": replica.name,
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": SERVICE},
        },
        "addressType": "IPv4",
        "ports": [{"name": "calico-typha", "port": replica.grpc.port(), "protocol": "TCP"}],
        "endpoints": [{
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": ready},
            "nodeName": format!("{}-node", replica.name),
        }],
    })
}

fn spawn_client(
    node: String,
    endpoints: watch::Receiver<Vec<TyphaEndpoint>>,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Client {
    let source = TyphaSource::watching(endpoints, format!("service {NS}/{SERVICE}"));
    replica_support::spawn_client(node, source, tls, None, None)
}

/// Waits until every client is in sync and the live replicas hold exactly `CLIENTS`
/// connections; returns how long it took.
async fn all_back(what: &str, replicas: &[Replica], clients: &[Client]) -> std::time::Duration {
    wait_until(what, || async {
        let counts: Vec<f64> = connections(replicas).await.into_iter().flatten().collect();
        let t = totals(clients);
        let total: f64 = counts.iter().sum();
        (t.in_sync == CLIENTS && total as usize == CLIENTS)
            .then_some(())
            .ok_or(format!("{t:?} connections {counts:?}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_rebalance_resume_survive_kill_and_drain() {
    // Bookmarks every 100 ms: a new replica's floor is its list's resourceVersion, and
    // moved clients are resumed there once the other replicas' bookmarks carried them
    // past it (exact floors; docs/protocol.md "Resume").
    let config = kube_sim::Config {
        bookmark_interval: std::time::Duration::from_millis(100),
        ..kube_sim::Config::default()
    };
    let sim = KubeSim::start(config).await.unwrap();
    kube_sim::seed(
        sim.store(),
        &SeedConfig {
            nodes: NODES,
            pods_per_node: 2,
            namespaces: 10,
            policies_per_namespace: 1,
            host_network_every: 0,
        },
    )
    .unwrap();
    let world = replica_support::World::create("scaleout", &sim);
    let tls = world.tls.clone();

    let mut replicas: Vec<Replica> = (0..3).map(|i| world.replica(i, REPLICA_FLAGS)).collect();
    for r in &mut replicas {
        r.wait_ready().await;
        sim.store().create_object(slice(r, true)).unwrap();
    }

    let kube = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    let stop_discovery = CancellationToken::new();
    let discovery = Discovery::spawn(kube, DiscoveryConfig::new(NS, SERVICE), &stop_discovery);
    let mut endpoints = discovery.endpoints();
    endpoints.wait_for(|e| e.len() == 3).await.unwrap();

    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| spawn_client(format!("client-{i:04}"), endpoints.clone(), tls.clone()))
        .collect();
    let took = wait_until("initial sync", || async {
        let t = totals(&clients);
        (t.in_sync == CLIENTS).then_some(()).ok_or(format!("{t:?}"))
    })
    .await;
    println!("initial sync of {CLIENTS} clients over 3 replicas: {took:?}");
    let stop_churn = CancellationToken::new();
    let churner = replica_support::churn(&sim, NODES, 20, stop_churn.clone());

    // 1. A fourth replica joins.
    let mut fourth = world.replica(3, REPLICA_FLAGS);
    fourth.wait_ready().await;
    replica_support::wait_covered(&sim, &replicas, &fourth, &clients, "fourth").await;
    replicas.push(fourth);
    let before = totals(&clients);
    let sent_before = snapshots_sent(&replicas).await;
    sim.store()
        .create_object(slice(&replicas[3], true))
        .unwrap();
    let took = wait_until("rebalance to max/mean <= 1.2", || async {
        let counts: Vec<f64> = connections(&replicas).await.into_iter().flatten().collect();
        let total: f64 = counts.iter().sum();
        let max = counts.iter().cloned().fold(0.0, f64::max);
        let mean = total / counts.len() as f64;
        let balanced = counts.len() == 4 && total as usize == CLIENTS && max / mean <= 1.2;
        // A moved client is counted as connected by its new replica a
        // moment before it counts its own resume: wait for both.
        let t = totals(&clients);
        let settled =
            t.in_sync == CLIENTS && t.resumes - before.resumes >= t.goodbyes - before.goodbyes;
        (balanced && settled)
            .then_some(())
            .ok_or(format!("connections {counts:?}, {t:?}"))
    })
    .await;
    let after = totals(&clients);
    let sent_after = snapshots_sent(&replicas).await;
    let counts = connections(&replicas).await;
    println!(
        "rebalanced in {took:?}: connections {counts:?}; client goodbyes {}, resumes {}, snapshots {}; replica snapshots sent {}",
        after.goodbyes - before.goodbyes,
        after.resumes - before.resumes,
        after.snapshots - before.snapshots,
        sent_after - sent_before
    );
    assert!(after.goodbyes > before.goodbyes, "nobody was moved");
    assert_eq!(
        after.snapshots, before.snapshots,
        "moved clients downloaded snapshots"
    );
    assert_eq!(
        sent_after, sent_before,
        "replicas sent snapshots to moved clients"
    );
    assert!(after.resumes - before.resumes >= after.goodbyes - before.goodbyes);
    assert_eq!(after.mismatches, 0);

    // 2. SIGKILL replica 0: its clients move and converge.
    let before = totals(&clients);
    let killed = replicas.remove(0);
    sim.store()
        .delete_object("discovery.k8s.io/v1", "EndpointSlice", NS, &killed.name)
        .unwrap();
    drop(killed);
    let took = all_back(
        "clients of the killed replica back in sync",
        &replicas,
        &clients,
    )
    .await;
    let after = totals(&clients);
    println!(
        "after SIGKILL: back in {took:?}; resumes {}, snapshots {}, failures {}",
        after.resumes - before.resumes,
        after.snapshots - before.snapshots,
        after.failures - before.failures
    );
    assert!(after.resumes + after.snapshots > before.resumes + before.snapshots);
    assert!(after.failures > before.failures, "a kill is an error path");
    assert_eq!(after.mismatches, 0);

    // 3. SIGTERM replica 0 (was 1): it drains; nobody takes an error path.
    let before = totals(&clients);
    let draining = replicas.remove(0);
    let drained: f64 = draining
        .scrape()
        .await
        .map(|s| s.sum("typha_connections_active"))
        .unwrap();
    // As Kubernetes does for a terminating pod: its endpoint stops being ready.
    sim.store().upsert_object(slice(&draining, false)).unwrap();
    let mut draining = draining;
    draining.terminate();
    let exit = draining
        .proc
        .wait_exit(LIMIT)
        .await
        .expect("drained replica did not exit");
    assert!(
        exit.success(),
        "drain exit: {exit}\n{}",
        draining.log_tail()
    );
    all_back("drained clients back in sync", &replicas, &clients).await;
    let after = totals(&clients);
    println!(
        "after SIGTERM of a replica with {drained} clients: goodbyes {}, resumes {}, snapshots {}, failures {}",
        after.goodbyes - before.goodbyes,
        after.resumes - before.resumes,
        after.snapshots - before.snapshots,
        after.failures - before.failures
    );
    assert_eq!(
        after.failures, before.failures,
        "a drain took an error path"
    );
    assert!(after.goodbyes - before.goodbyes >= drained as u64);
    assert_eq!(after.mismatches, 0);

    // The end state, proven: a sentinel pod written after the churn, in the same
    // resource (so after every churn event on every replica's watch); once every client
    // and a freshly connected observer have seen it, all mirrors must be equal.
    stop_churn.cancel();
    let writes = churner.await.unwrap();
    replica_support::write_sentinel(&sim);
    let observer = spawn_client("observer".into(), endpoints.clone(), tls.clone());
    wait_sentinel(clients.iter().chain(std::iter::once(&observer))).await;
    let reference = observer.stop().await.0.digest().to_string();
    let mut digests = std::collections::BTreeMap::new();
    for c in clients {
        let (mirror, _) = c.stop().await;
        *digests.entry(mirror.digest().to_string()).or_insert(0usize) += 1;
    }
    stop_discovery.cancel();
    println!(
        "final: {} distinct digests over {CLIENTS} clients; {writes} churn writes",
        digests.len()
    );
    assert_eq!(digests.len(), 1, "clients disagree: {digests:?}");
    assert!(
        digests.contains_key(&reference),
        "clients {digests:?}, observer {reference}"
    );
}
