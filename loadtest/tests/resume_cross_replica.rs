//! Cross-replica resume end to end: one kube-sim, two typha replicas (the real upstream
//! watchers, `typha::app::start` twice), felix-client sync clients.
//!
//! Clients follow replica A through API churn; A shuts down and every client moves to
//! B: B sends no snapshot at all (each client is resumed from its version vector with
//! one rebase batch) and every client's mirror ends with B's digest. A client whose
//! position is older than B's (short) history gets a snapshot, and also ends with B's
//! digest.
//!
//! Exact floors: a replica started after a delete that no listed object reflects has
//! the list's own resourceVersion as its floor, so a client of another replica that saw
//! the delete (and whose vector the bookmarks advanced past that floor) is resumed
//! there, and one that did not is not. After a datastore restore (resourceVersions
//! start over lower) every client gets a snapshot, and no digest mismatch happens.
//!
//! kube-sim sends bookmarks every 100 ms here, so replicas' vectors converge quickly.
//! Waits are on signals (hub revisions, client `applied` and endpoint watches) or polled
//! conditions under a generous deadline; nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sync_support;

use std::time::Duration;

use edge::discovery::TyphaEndpoint;
use felix_client::discovery::TyphaSource;
use felix_client::{Mirror, SyncConfig};
use kube_sim::{KubeSim, SeedConfig, Store};
use loadtest::harness::{ClientHandle, Harness, TyphaSpec};
use netmodel::UpstreamConfig;
use serde_json::{Value as Json, json};
use snapshot_cache::CacheConfig;
use sync_support::{apply_frame, next_frame, open_sync};
use tokio::sync::watch;
use typha::app::Upstream;
use typha::hub::{Hub, HubConfig};
use typha_proto::PROTOCOL_VERSION;
use typha_proto::frame::ServerFrame;
use typha_proto::pb;

const LIMIT: Duration = Duration::from_secs(120);
const CLIENTS: usize = 12;
/// Batches replica B keeps in `clients_move_to_another_replica_without_snapshots`.
const B_HISTORY: usize = 48;

/// A kube-sim whose watches get a bookmark every 100 ms, seeded with `nodes` nodes of
/// `pods_per_node` pods in two namespaces of one policy each (tracing to the test's
/// output, filtered by `RUST_LOG`).
async fn start_sim(nodes: usize, pods_per_node: usize) -> KubeSim {
    testkit::test_logs();
    let config = kube_sim::Config {
        bookmark_interval: Duration::from_millis(100),
        ..kube_sim::Config::default()
    };
    let sim = KubeSim::start(config).await.unwrap();
    let seed = SeedConfig {
        nodes,
        pods_per_node,
        namespaces: 2,
        policies_per_namespace: 1,
        host_network_every: 0,
    };
    kube_sim::seed(sim.store(), &seed).unwrap();
    sim
}

/// Polls `done` every 20 ms until it holds, panicking with `what` after [`LIMIT`].
async fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `from`'s vector is at or above `to`'s floor for every resource (its
/// clients can be resumed on `to`), and returns `from`'s revision then.
async fn wait_progress_past_floor(from: &Hub, to: &Hub) -> typha_proto::Revision {
    poll_until("the source's vector passed the target's floor", || {
        to.version_floor()
            .is_some_and(|floor| floor.first_above(&from.versions()).is_none())
    })
    .await;
    from.revision()
}

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
        client: kube::Client::try_from(netmodel::without_retry(config)).unwrap(),
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
    let hello = pb::ClientHello {
        node_name: "laggard".into(),
        syncer_type: pb::SyncerType::Felix as i32,
        protocol_version: PROTOCOL_VERSION,
        capabilities: vec![1, 2, 3, 4],
        resume: mirror.resume_position(),
        client_version: "test".into(),
    };
    let (_up, frames) = open_sync(channel, hello).await;
    let mut frames = frames.unwrap();
    let mut resumed = None;
    loop {
        match next_frame(&mut frames, "server silent").await {
            ServerFrame::Hello(hello) => {
                mirror.accept_hello(&hello);
                resumed = Some(hello.resumed);
                if hello.resumed && !mirror.is_rebasing() {
                    // Resumed on the same replica: nothing else need come.
                    return true;
                }
            }
            // A snapshot ends with InSync.
            frame @ ServerFrame::InSync(_) => {
                apply_frame(mirror, frame);
                return false;
            }
            // Deltas while rebasing end a resume on another replica.
            frame @ ServerFrame::Deltas(_) if mirror.is_rebasing() => {
                apply_frame(mirror, frame);
                return resumed == Some(true);
            }
            frame => apply_frame(mirror, frame),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_to_another_replica_without_snapshots() {
    let sim = start_sim(4, 5).await;
    let a = start_replica(&sim, 10_000).await;
    // B keeps a short history, so that an old position falls out of it: shorter than
    // churn "two" (one batch per step), longer than what B publishes after it (bookmark
    // progress, at most one batch per resource once versions converged, and churn
    // "three"). The margin is counted in batches, not time: a session that the loaded
    // machine leaves unscheduled while those batches pass is still inside the history.
    let b = start_replica(&sim, B_HISTORY).await;
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
    churn(sim.store(), &[&hub_a, &hub_b], "two", B_HISTORY + 12).await;
    // Bookmarks bring both replicas to the same vector (they listed at different
    // times), and A's clients past B's floor.
    poll_until("the replicas' vectors converged", || {
        hub_a.versions() == hub_b.versions()
    })
    .await;
    let progressed = wait_progress_past_floor(&hub_a, &hub_b).await;
    let waits = clients.iter().map(|c| c.wait_for(progressed));
    tokio::time::timeout(LIMIT, futures::future::join_all(waits))
        .await
        .expect("clients never caught up with A");
    assert_eq!(hub_a.digest(), hub_b.digest());
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
        // Bookmarks may have moved B on by empty (progress) batches since.
        assert!(mirror.revision() <= hub_b.revision(), "client {i}");
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
    assert!(laggard.revision() <= hub_b.revision());
}

/// `n` sync clients following the endpoints of `endpoints`.
fn spawn_clients(endpoints: &watch::Receiver<Vec<TyphaEndpoint>>, n: usize) -> Vec<ClientHandle> {
    (0..n)
        .map(|i| {
            let source = TyphaSource::watching(endpoints.clone(), "test endpoints");
            let mut config = SyncConfig::with_source(format!("node-{i}"), source);
            config.backoff_min = Duration::from_millis(20);
            config.backoff_max = Duration::from_millis(200);
            ClientHandle::spawn(config)
        })
        .collect()
}

async fn wait_clients(clients: &[ClientHandle], revision: typha_proto::Revision, what: &str) {
    let waits = clients.iter().map(|c| c.wait_for(revision));
    tokio::time::timeout(LIMIT, futures::future::join_all(waits))
        .await
        .unwrap_or_else(|_| panic!("clients never reached {revision}: {what}"));
}

/// Points every client at `to` only, stops `from`, and waits until every client has
/// started a session on `to` (revisions of two replicas do not compare) and holds its
/// state.
async fn move_clients(
    clients: &[ClientHandle],
    endpoints: &watch::Sender<Vec<TyphaEndpoint>>,
    from: Harness,
    to: &Harness,
) {
    let hub = to.typha.hub.clone();
    let started = |s: typha::hub::SessionStats| {
        s.snapshots_sent + s.resumes_same_replica + s.resumes_cross_replica
    };
    let before = started(hub.session_stats());
    endpoints.send_replace(vec![endpoint(to)]);
    from.typha.shutdown().await.unwrap();
    poll_until("every client started a session on the new replica", || {
        started(hub.session_stats()) >= before + clients.len() as u64
            && clients
                .iter()
                .all(|c| *c.status.digest.borrow() == hub.digest())
    })
    .await;
}

/// Stops every client, asserting it saw no digest mismatch and ended at `hub`'s state.
async fn stop_matching(clients: Vec<ClientHandle>, hub: &Hub) {
    for (i, client) in clients.into_iter().enumerate() {
        let mismatches = client
            .status
            .digest_mismatches
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(mismatches, 0, "client {i} saw digest mismatches");
        let mirror = client.stop().await.unwrap();
        assert_eq!(mirror.digest(), hub.digest(), "client {i}");
    }
}

/// Creates a pod and deletes it, so that the datastore's newest change is a delete no
/// object reflects; waits until `hub` saw it and returns the delete's resourceVersion.
async fn unreflected_delete(sim: &KubeSim, hub: &Hub) -> u64 {
    let created = sim
        .store()
        .upsert_object(pod_json("doomed", "10.9.9.9", "a"))
        .unwrap();
    wait_pods(hub, rv_of(&created)).await;
    let deleted = sim
        .store()
        .delete_object("v1", "Pod", "ns-0", "doomed")
        .unwrap();
    let rv = rv_of(&deleted);
    wait_pods(hub, rv).await;
    rv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_started_after_an_unreflected_delete_resumes_clients_of_another() {
    let sim = start_sim(2, 3).await;
    let a = start_replica(&sim, 10_000).await;
    let hub_a = a.typha.hub.clone();
    let (endpoints, endpoints_rx) = watch::channel(vec![endpoint(&a)]);
    let clients = spawn_clients(&endpoints_rx, 4);
    wait_clients(&clients, hub_a.revision(), "first sync with A").await;
    // A laggard syncs before the delete and leaves.
    let mut laggard = Mirror::new();
    assert!(!sync_once(&a.typha.grpc_addr.to_string(), &mut laggard).await);

    let deleted = unreflected_delete(&sim, &hub_a).await;
    assert_eq!(
        sim.store().resource_version(),
        deleted,
        "a write after the delete"
    );
    // B lists after the delete: its floor is the list's version, not its newest pod's.
    let b = start_replica(&sim, 10_000).await;
    let hub_b = b.typha.hub.clone();
    let floor = hub_b.version_floor().expect("B's floor is known");
    assert!(
        floor.get("pods") >= deleted,
        "B's floor {floor} is below the delete {deleted}"
    );

    // Bookmarks carry A's clients past B's floor; then they move to B.
    let progressed = wait_progress_past_floor(&hub_a, &hub_b).await;
    wait_clients(&clients, progressed, "A's progress").await;
    move_clients(&clients, &endpoints, a, &b).await;
    let stats = hub_b.session_stats();
    assert_eq!(stats.snapshots_sent, 0, "B sent snapshots: {stats:?}");
    assert_eq!(stats.resumes_cross_replica, clients.len() as u64);
    stop_matching(clients, &hub_b).await;

    // The laggard never saw the delete: below B's floor, so a snapshot, not a mismatch.
    let before = hub_b.session_stats();
    assert!(!sync_once(&b.typha.grpc_addr.to_string(), &mut laggard).await);
    let after = hub_b.session_stats();
    assert_eq!(after.snapshots_sent, before.snapshots_sent + 1);
    assert_eq!(after.resume_refusals, before.resume_refusals + 1);
    assert_eq!(laggard.digest(), hub_b.digest());
}

/// Every resource of `hub` is at or below `rv` (it relisted the restored datastore).
fn relisted_below(hub: &Hub, rv: u64) -> bool {
    hub.versions().iter().all(|(_, v)| v <= rv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_datastore_gives_snapshots_not_mismatches() {
    let sim = start_sim(2, 3).await;
    let a = start_replica(&sim, 10_000).await;
    let b = start_replica(&sim, 10_000).await;
    let (hub_a, hub_b) = (a.typha.hub.clone(), b.typha.hub.clone());
    churn(sim.store(), &[&hub_a, &hub_b], "old", 30).await;
    let survivor = sim
        .store()
        .upsert_object(pod_json("survivor", "10.9.8.7", "a"))
        .unwrap();
    wait_pods(&hub_a, rv_of(&survivor)).await;
    wait_pods(&hub_b, rv_of(&survivor)).await;
    let (endpoints, endpoints_rx) = watch::channel(vec![endpoint(&a)]);
    let clients = spawn_clients(&endpoints_rx, 4);
    wait_clients(&clients, hub_a.revision(), "first sync with A").await;
    let mut laggard = Mirror::new();
    assert!(!sync_once(&a.typha.grpc_addr.to_string(), &mut laggard).await);
    let old_rv = sim.store().resource_version();

    // Restore: the same objects but one, plus a new one, at resourceVersions from 2 on.
    let fresh = sim.fresh_store();
    fresh
        .delete_object("v1", "Pod", "ns-0", "survivor")
        .unwrap();
    fresh
        .upsert_object(pod_json("restored", "10.9.8.8", "b"))
        .unwrap();
    let new_rv = fresh.resource_version();
    assert!(new_rv < old_rv);
    let sim = sim.restart_with(std::sync::Arc::new(fresh)).await.unwrap();
    poll_until("both replicas relisted the restored datastore", || {
        let now = sim.store().resource_version();
        let done = relisted_below(&hub_a, now)
            && relisted_below(&hub_b, now)
            && hub_a.digest() == hub_b.digest();
        if !done {
            tracing::info!(now, a = %hub_a.versions(), b = %hub_b.versions(), "not yet");
        }
        done
    })
    .await;
    // A's clients followed the relist through deltas, digest-checked.
    wait_clients(&clients, hub_a.revision(), "A's relist").await;

    // On B their positions are not comparable: snapshots, not resumes.
    let before = hub_b.session_stats();
    move_clients(&clients, &endpoints, a, &b).await;
    let after = hub_b.session_stats();
    assert_eq!(
        after.resumes_cross_replica, before.resumes_cross_replica,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.snapshots_sent,
        before.snapshots_sent + clients.len() as u64
    );
    stop_matching(clients, &hub_b).await;
    assert!(!sync_once(&b.typha.grpc_addr.to_string(), &mut laggard).await);
    assert_eq!(laggard.digest(), hub_b.digest());
    drop(sim);
}
