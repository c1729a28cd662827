//! Cross-replica resume end to end: one kube-sim, two typha replicas (the real upstream
//! watchers, `typha::app::start` twice), felix-client sync clients.
//!
//! Clients follow replica A through API churn; A shuts down and every client moves to
//! B: B sends no snapshot at all (each client is resumed from its version vector with
//! one rebase batch) and every client's mirror ends with B's digest. A client whose
//! position is older than B's (short) history gets a snapshot, and also ends with B's
//! digest. Waits are on signals (hub revisions, client `applied` and endpoint watches)
//! under a generous deadline; nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use edge::discovery::TyphaEndpoint;
use felix_client::discovery::TyphaSource;
use felix_client::{Mirror, SyncConfig};
use kube_sim::{KubeSim, SeedConfig, Store};
use loadtest::harness::{ClientHandle, Harness, TyphaSpec};
use netmodel::UpstreamConfig;
use serde_json::{Value as Json, json};
use snapshot_cache::CacheConfig;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use typha::app::Upstream;
use typha::hub::{Hub, HubConfig};
use typha_proto::PROTOCOL_VERSION;
use typha_proto::client::typha_client::TyphaClient;
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, client_message};

const LIMIT: Duration = Duration::from_secs(120);
const CLIENTS: usize = 12;

fn pod_json(name: &str, ip: &str, app: &str) -> Json {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns-0", "labels": {"app": app}},
        "spec": {"nodeName": kube_sim::seed::node_name(0), "serviceAccountName": "default",
                 "containers": [{"name": "main", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

async fn start_replica(sim: &KubeSim, max_log_batches: usize) -> Harness {
    let config = kube::Config::new(sim.url().parse().unwrap());
    let upstream = Upstream::Kube {
        client: kube::Client::try_from(config).unwrap(),
        config: UpstreamConfig::default(),
    };
    let spec = TyphaSpec {
        tls: false,
        hub: HubConfig {
            cache: CacheConfig {
                max_log_batches,
                ..CacheConfig::default()
            },
            ..HubConfig::default()
        },
        ..TyphaSpec::default()
    };
    let harness = Harness::start_with(spec, upstream).await.unwrap();
    tokio::time::timeout(LIMIT, harness.typha.hub.wait_in_sync())
        .await
        .expect("typha never in sync");
    harness
}

fn endpoint(harness: &Harness) -> TyphaEndpoint {
    TyphaEndpoint {
        address: "127.0.0.1".into(),
        port: harness.typha.grpc_addr.port(),
        node_name: None,
    }
}

/// Waits until `hub` has seen pods up to resourceVersion `rv`.
async fn wait_pods(hub: &Hub, rv: u64) {
    let mut revisions = hub.subscribe();
    let seen = revisions.wait_for(|_| hub.versions().get("pods") >= rv);
    tokio::time::timeout(LIMIT, seen)
        .await
        .expect("hub never saw the write")
        .unwrap();
}

fn rv_of(obj: &Json) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// One write per step, each awaited by both hubs (so each is its own breadcrumb): pod
/// creations, relabels and deletions.
async fn churn(store: &Store, hubs: &[&Hub], round: &str, steps: usize) {
    for i in 0..steps {
        let name = format!("churn-{round}-{}", i / 3);
        let obj = match i % 3 {
            0 => store
                .upsert_object(pod_json(
                    &name,
                    &format!("10.9.{}.{}", i / 250, i % 250 + 1),
                    "a",
                ))
                .unwrap(),
            1 => store
                .upsert_object(pod_json(
                    &name,
                    &format!("10.9.{}.{}", i / 250, i % 250),
                    "b",
                ))
                .unwrap(),
            _ => store.delete_object("v1", "Pod", "ns-0", &name).unwrap(),
        };
        for hub in hubs {
            wait_pods(hub, rv_of(&obj)).await;
        }
    }
}

/// A client session by hand (as felix-client's sync does): hello with the mirror's
/// resume position, frames into the mirror until it is in sync. Returns whether the
/// server resumed.
async fn sync_once(addr: &str, mirror: &mut Mirror) -> bool {
    let channel = felix_client::connect::connect(addr, None, LIMIT)
        .await
        .unwrap();
    let (up, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::ClientHello {
        node_name: "laggard".into(),
        syncer_type: pb::SyncerType::Felix as i32,
        protocol_version: PROTOCOL_VERSION,
        capabilities: vec![1, 2, 3, 4],
        resume: mirror.resume_position(),
        client_version: "test".into(),
    };
    up.send(pb::ClientMessage {
        msg: Some(client_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut frames = TyphaClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut resumed = None;
    loop {
        let frame = tokio::time::timeout(LIMIT, frames.message())
            .await
            .expect("server silent")
            .unwrap()
            .expect("stream ended");
        match frame {
            ServerFrame::Hello(hello) => {
                mirror.accept_hello(&hello);
                resumed = Some(hello.resumed);
            }
            ServerFrame::SnapshotChunk(chunk) => mirror.apply_chunk(chunk).unwrap(),
            ServerFrame::InSync(in_sync) => {
                mirror.finish_snapshot(&in_sync).unwrap();
                return false;
            }
            ServerFrame::Deltas(batch) => {
                let rebasing = mirror.is_rebasing();
                mirror.apply_deltas(batch).unwrap();
                if rebasing {
                    return resumed == Some(true);
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_to_another_replica_without_snapshots() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let sim = KubeSim::start(kube_sim::Config::default()).await.unwrap();
    let seed = SeedConfig {
        nodes: 4,
        pods_per_node: 5,
        namespaces: 2,
        policies_per_namespace: 1,
        host_network_every: 0,
    };
    kube_sim::seed(sim.store(), &seed).unwrap();
    let a = start_replica(&sim, 10_000).await;
    // B keeps a short history, so that an old position falls out of it.
    let b = start_replica(&sim, 8).await;
    let (hub_a, hub_b) = (a.typha.hub.clone(), b.typha.hub.clone());

    // Every client starts on A.
    let (endpoints, endpoints_rx) = watch::channel(vec![endpoint(&a)]);
    let clients: Vec<ClientHandle> = (0..CLIENTS)
        .map(|i| {
            let source = TyphaSource::watching(endpoints_rx.clone(), "test endpoints");
            let mut config = SyncConfig::with_source(format!("node-{i}"), source);
            config.backoff_min = Duration::from_millis(20);
            config.backoff_max = Duration::from_millis(200);
            ClientHandle::spawn(config)
        })
        .collect();
    let wait_all = |hub: &Hub| {
        let target = hub.revision();
        let waits = clients.iter().map(move |c| c.wait_for(target));
        tokio::time::timeout(LIMIT, futures::future::join_all(waits))
    };
    wait_all(&hub_a).await.expect("clients never synced with A");

    // A laggard syncs with A now and leaves.
    churn(sim.store(), &[&hub_a, &hub_b], "one", 9).await;
    let mut laggard = Mirror::new();
    assert!(!sync_once(&a.typha.grpc_addr.to_string(), &mut laggard).await);
    assert_eq!(laggard.digest(), hub_a.digest());

    // More churn than B's history holds; the clients follow A.
    churn(sim.store(), &[&hub_a, &hub_b], "two", 24).await;
    wait_all(&hub_a)
        .await
        .expect("clients never caught up with A");
    assert_eq!(hub_a.digest(), hub_b.digest());
    assert_eq!(hub_a.versions(), hub_b.versions());
    assert_eq!(hub_b.session_stats().snapshots_sent, 0);

    // A goes away; the clients find only B.
    endpoints.send_replace(vec![endpoint(&b)]);
    let b_addr = b.typha.grpc_addr.to_string();
    a.typha.shutdown().await.unwrap();
    for client in &clients {
        let mut at = client.status.endpoint.subscribe();
        tokio::time::timeout(
            LIMIT,
            at.wait_for(|e| e.as_deref() == Some(b_addr.as_str())),
        )
        .await
        .expect("client never moved to B")
        .unwrap();
    }
    wait_all(&hub_b).await.expect("clients never synced with B");
    let stats = hub_b.session_stats();
    assert_eq!(stats.snapshots_sent, 0, "B sent snapshots: {stats:?}");
    assert_eq!(stats.resumes_cross_replica, CLIENTS as u64);
    // Changes after the move still flow.
    churn(sim.store(), &[&hub_b], "three", 3).await;
    wait_all(&hub_b).await.expect("clients never followed B");
    for (i, client) in clients.into_iter().enumerate() {
        assert_eq!(
            client
                .status
                .digest_mismatches
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        let mirror = client.stop().await.unwrap();
        assert_eq!(mirror.digest(), hub_b.digest(), "client {i}");
        assert_eq!(mirror.revision(), hub_b.revision(), "client {i}");
    }

    // The laggard's position is older than B's history: a snapshot, then B's digest.
    let before = hub_b.session_stats();
    assert!(
        !sync_once(&b_addr, &mut laggard).await,
        "the laggard was resumed"
    );
    let after = hub_b.session_stats();
    assert_eq!(after.snapshots_sent, before.snapshots_sent + 1);
    assert_eq!(after.resume_refusals, before.resume_refusals + 1);
    assert_eq!(laggard.digest(), hub_b.digest());
    assert_eq!(laggard.revision(), hub_b.revision());
}
