//! Typha discovery through EndpointSlices, against kube-sim: the shared watcher
//! (`edge::discovery`: ready filtering, port selection, following creates, updates and
//! deletes, the replica count) and felix-client sync clients that follow it from one
//! typha to another (harness typhas, plaintext so that both share no PKI).
//!
//! Waits are on the discovery watch and on the clients' status channels, under a generous
//! deadline that only turns a hang into a failure. Nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edge::discovery::{Discovery, DiscoveryConfig, TyphaEndpoint};
use felix_client::discovery::TyphaSource;
use felix_client::{SyncConfig, SyncStatus};
use kube_sim::KubeSim;
use loadtest::harness::{ClientHandle, Harness, TyphaSpec};
use serde_json::{Value as Json, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use typha_proto::{Key, Kind, Update, Value, pb};

const LIMIT: Duration = Duration::from_secs(60);
const NS: &str = "kube-system";
const SERVICE: &str = "calico-typha";

fn kube_client(sim: &KubeSim) -> kube::Client {
    kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap()
}

/// An endpoint of a slice: (address, ready condition, node).
type Ep<'a> = (&'a str, Option<bool>, &'a str);

/// An EndpointSlice of `service` with `ports` (name, number) and `endpoints`.
fn slice(name: &str, service: &str, ports: &[(Option<&str>, u16)], endpoints: &[Ep]) -> Json {
    let ports: Vec<Json> = ports
        .iter()
        .map(|(name, port)| match name {
            Some(name) => json!({"name": name, "port": port, "protocol": "TCP"}),
            None => json!({"port": port, "protocol": "TCP"}),
        })
        .collect();
    let endpoints: Vec<Json> = endpoints
        .iter()
        .map(|(addr, ready, node)| {
            let conditions = match ready {
                Some(ready) => json!({"ready": ready}),
                None => json!({}),
            };
            json!({"addresses": [addr], "conditions": conditions, "nodeName": node})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// A slice of the typha Service with `ports` and one ready endpoint, `addr` on `node`.
fn ready_slice(name: &str, ports: &[(Option<&str>, u16)], addr: &str, node: &str) -> Json {
    slice(name, SERVICE, ports, &[(addr, Some(true), node)])
}

fn ep(addr: &str, port: u16, node: &str) -> TyphaEndpoint {
    TyphaEndpoint {
        address: addr.into(),
        port,
        node_name: Some(node.into()),
    }
}

/// Waits until the watch publishes exactly `want`.
async fn expect(rx: &mut watch::Receiver<Vec<TyphaEndpoint>>, want: Vec<TyphaEndpoint>) {
    let waited = tokio::time::timeout(LIMIT, rx.wait_for(|got| *got == want))
        .await
        .map(|r| r.is_ok());
    assert!(
        matches!(waited, Ok(true)),
        "wanted {want:?}, have {:?}",
        *rx.borrow()
    );
}

async fn start_sim() -> KubeSim {
    let _ = rustls::crypto::ring::default_provider().install_default();
    testkit::test_logs();
    KubeSim::start(kube_sim::Config::default()).await.unwrap()
}

#[tokio::test]
async fn watcher_publishes_ready_endpoints_and_follows_changes() {
    let sim = start_sim().await;
    let store = sim.store();
    let typha_port = Some("calico-typha");
    // Two ports: the named one is chosen. Unready endpoints are left out, unset counts
    // as ready. Another service's slice is ignored.
    // Slice typha-a: endpoints 10.0.0.1-3 on n1-n3 with these ready conditions.
    let typha_a = |ready: [Option<bool>; 3]| {
        let endpoints = [
            ("10.0.0.1", ready[0], "n1"),
            ("10.0.0.2", ready[1], "n2"),
            ("10.0.0.3", ready[2], "n3"),
        ];
        let ports = [(Some("metrics"), 9093), (typha_port, 5473)];
        slice("typha-a", SERVICE, &ports, &endpoints)
    };
    store
        .upsert_object(typha_a([Some(true), Some(false), None]))
        .unwrap();
    store
        .upsert_object(slice(
            "other",
            "not-typha",
            &[(typha_port, 5473)],
            &[("10.9.9.9", Some(true), "n9")],
        ))
        .unwrap();
    let shutdown = CancellationToken::new();
    let discovery = Discovery::spawn(
        kube_client(&sim),
        DiscoveryConfig::new(NS, SERVICE),
        &shutdown,
    );
    let mut rx = discovery.endpoints();
    let mut replicas = discovery.replicas();
    expect(
        &mut rx,
        vec![ep("10.0.0.1", 5473, "n1"), ep("10.0.0.3", 5473, "n3")],
    )
    .await;
    assert!(discovery.state().borrow().listed);
    assert_eq!(*replicas.borrow_and_update(), 2);

    // n2 becomes ready, n1 stops being ready.
    store
        .upsert_object(typha_a([Some(false), Some(true), None]))
        .unwrap();
    expect(
        &mut rx,
        vec![ep("10.0.0.2", 5473, "n2"), ep("10.0.0.3", 5473, "n3")],
    )
    .await;

    // A second slice whose only port has another name: that port is used.
    store
        .upsert_object(ready_slice(
            "typha-b",
            &[(Some("grpc"), 6000)],
            "10.0.1.1",
            "n4",
        ))
        .unwrap();
    // A slice with two ports, neither named calico-typha: skipped.
    store
        .upsert_object(ready_slice(
            "typha-c",
            &[(Some("a"), 1), (Some("b"), 2)],
            "10.0.2.1",
            "n5",
        ))
        .unwrap();
    expect(
        &mut rx,
        vec![
            ep("10.0.0.2", 5473, "n2"),
            ep("10.0.0.3", 5473, "n3"),
            ep("10.0.1.1", 6000, "n4"),
        ],
    )
    .await;
    replicas
        .wait_for(|n| *n == 3)
        .await
        .expect("replica count follows");

    // Deleting a slice removes its endpoints.
    store
        .delete_object("discovery.k8s.io/v1", "EndpointSlice", NS, "typha-a")
        .unwrap();
    expect(&mut rx, vec![ep("10.0.1.1", 6000, "n4")]).await;

    // A relist (every watch closed and history expired) keeps the same answer.
    sim.compact();
    sim.disconnect_watches();
    store
        .delete_object("discovery.k8s.io/v1", "EndpointSlice", NS, "typha-b")
        .unwrap();
    expect(&mut rx, vec![]).await;
    replicas.wait_for(|n| *n == 0).await.unwrap();
    discovery.stop().await;
}

#[tokio::test]
async fn port_name_is_configurable() {
    let sim = start_sim().await;
    sim.store()
        .upsert_object(ready_slice(
            "typha-a",
            &[(Some("calico-typha"), 5473), (Some("alt"), 7000)],
            "10.0.0.1",
            "n1",
        ))
        .unwrap();
    let mut config = DiscoveryConfig::new(NS, SERVICE);
    config.port_name = "alt".into();
    let discovery = Discovery::spawn(kube_client(&sim), config, &CancellationToken::new());
    let mut rx = discovery.endpoints();
    expect(&mut rx, vec![ep("10.0.0.1", 7000, "n1")]).await;
}

// ---------------------------------------------------------------- clients following it

/// A plaintext harness typha loaded with one Node named `marker` (so that a mirror shows
/// which typha it came from).
async fn typha(marker: &str) -> Harness {
    let spec = TyphaSpec {
        tls: false,
        ..TyphaSpec::default()
    };
    let harness = Harness::start(spec).await.unwrap();
    let node = pb::Node {
        name: marker.into(),
        ..Default::default()
    };
    let update = Update::new(
        Key::cluster(Kind::Node, marker).unwrap(),
        Some(Value::Node(node)),
    )
    .unwrap();
    harness.load(vec![update]).await.unwrap();
    harness
}

fn port_of(addr: SocketAddr) -> u16 {
    addr.port()
}

/// A typha slice for `(port, node)` pairs on 127.0.0.1 (a slice has one port per
/// Service port, so each typha gets its own slice, as with hostNetwork typhas).
fn typha_slice(name: &str, port: u16, node: &str) -> Json {
    ready_slice(name, &[(Some("calico-typha"), port)], "127.0.0.1", node)
}

fn spawn_client(node: &str, source: TyphaSource) -> ClientHandle {
    let mut config = SyncConfig::with_source(node, source);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_secs(1);
    ClientHandle::spawn(config)
}

/// Waits until `client` is in sync with the typha at `addr`.
async fn in_sync_with(client: &ClientHandle, addr: SocketAddr) {
    let status = &client.status;
    let want = Some(addr.to_string());
    let mut endpoint = status.endpoint.subscribe();
    let mut applied = status.applied.subscribe();
    let wait = async {
        endpoint.wait_for(|e| *e == want).await.unwrap();
        applied
            .wait_for(|_| status.in_sync.load(Ordering::Relaxed))
            .await
            .unwrap();
    };
    if tokio::time::timeout(LIMIT, wait).await.is_err() {
        panic!(
            "not in sync with {addr}: at {:?}, failures {}",
            *status.endpoint.borrow(),
            status.failures.load(Ordering::Relaxed)
        );
    }
}

fn has_marker(mirror: &felix_client::Mirror, marker: &str) -> bool {
    mirror
        .get(&Key::cluster(Kind::Node, marker).unwrap())
        .is_some()
}

/// kube-sim and two plaintext typhas, A (marked "from-a", on node-a) and B ("from-b", on
/// node-b), each with its slice when listed.
struct TwoTyphas {
    sim: KubeSim,
    a: Harness,
    b: Harness,
}

impl TwoTyphas {
    /// A is listed; B too when `list_b`. With a discovery watch started after that.
    async fn start(list_b: bool) -> (TwoTyphas, Discovery) {
        let sim = start_sim().await;
        let a = typha("from-a").await;
        let b = typha("from-b").await;
        sim.store()
            .upsert_object(typha_slice("typha-a", port_of(a.typha.grpc_addr), "node-a"))
            .unwrap();
        if list_b {
            sim.store()
                .upsert_object(typha_slice("typha-b", port_of(b.typha.grpc_addr), "node-b"))
                .unwrap();
        }
        let discovery = Discovery::spawn(
            kube_client(&sim),
            DiscoveryConfig::new(NS, SERVICE),
            &CancellationToken::new(),
        );
        (TwoTyphas { sim, a, b }, discovery)
    }

    /// A shuts down (a goodbye to its client); `client`, in sync with A, must end in
    /// sync with B and mirror B's content only, without a failure and after one goodbye.
    /// Stops the client, then B; returns the client's counters.
    async fn a_leaves_for_b(self, client: ClientHandle) -> Arc<SyncStatus> {
        self.a.typha.shutdown().await.unwrap();
        in_sync_with(&client, self.b.typha.grpc_addr).await;
        let status = client.status.clone();
        let mirror = client.stop().await.unwrap();
        assert!(has_marker(&mirror, "from-b") && !has_marker(&mirror, "from-a"));
        assert_eq!(status.failures.load(Ordering::Relaxed), 0);
        assert_eq!(status.goodbyes.load(Ordering::Relaxed), 1);
        self.b.typha.shutdown().await.unwrap();
        status
    }
}

#[tokio::test]
async fn client_moves_to_a_new_endpoint_when_the_old_one_is_removed() {
    let (rig, discovery) = TwoTyphas::start(false).await;
    let (a_addr, b_addr) = (rig.a.typha.grpc_addr, rig.b.typha.grpc_addr);
    let store = rig.sim.store();
    let mut seen = discovery.endpoints();
    let client = spawn_client("elsewhere", TyphaSource::discovered(discovery));
    in_sync_with(&client, a_addr).await;

    // B becomes ready, A goes away; the client's source is the same watch channel, so
    // once it shows this, the client's next pick sees it too.
    store
        .upsert_object(typha_slice("typha-b", port_of(b_addr), "node-b"))
        .unwrap();
    store
        .delete_object("discovery.k8s.io/v1", "EndpointSlice", NS, "typha-a")
        .unwrap();
    expect(&mut seen, vec![ep("127.0.0.1", port_of(b_addr), "node-b")]).await;

    // A shuts down: goodbye(shutdown); the client goes to B and never back to A (which
    // would be a connection failure now).
    let status = rig.a_leaves_for_b(client).await;
    assert_eq!(status.snapshots.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn goodbye_moves_to_another_endpoint_without_counting_a_failure() {
    let (rig, discovery) = TwoTyphas::start(true).await;
    let (a_addr, b_addr) = (rig.a.typha.grpc_addr, rig.b.typha.grpc_addr);
    let mut seen = discovery.endpoints();
    let mut both = vec![
        ep("127.0.0.1", port_of(a_addr), "node-a"),
        ep("127.0.0.1", port_of(b_addr), "node-b"),
    ];
    both.sort();
    expect(&mut seen, both).await;

    // The client runs on node-a: it prefers the typha there.
    let client = spawn_client("node-a", TyphaSource::discovered(discovery));
    in_sync_with(&client, a_addr).await;
    // A says goodbye while still listed (as while draining): the client must not retry
    // it (refused now, a failure) but move to B.
    let status = rig.a_leaves_for_b(client).await;
    assert_eq!(status.reconnects.load(Ordering::Relaxed), 1);
}
