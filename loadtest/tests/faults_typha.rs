//! Faults of typha processes and of their clients, end to end: two typha replicas as real
//! processes (`loadtest typha serve ...`, mutual TLS) watching one in-process kube-sim,
//! and in-process felix-client sync clients whose events are replayed into a shadow of
//! their mirrors (see `replica_support::Record`).
//!
//! 1. A replica is SIGKILLed while its clients are in the middle of a multi-chunk
//!    snapshot: they move to the other replica and converge; a client whose snapshot was
//!    cut reported nothing of it (its first changes are the complete snapshot, just
//!    before its first in-sync).
//! 2. Clients die mid-stream (tasks aborted while deltas flow, others aborted during
//!    their snapshot, held there by a gated proxy, others stopped and restarted with
//!    their old mirrors): the replicas' `typha_connections_active` returns to the live
//!    clients (no leaked sessions), the other clients never reconnect, and the
//!    restarted ones resume without a snapshot.
//!
//! Both end with every client's digest equal to a fresh observer's (after a sentinel pod
//! written once the churn stopped), each shadow equal to its mirror, and no "dataplane
//! flush": no deletion (the churn never deletes), no change that changed nothing, every
//! in-sync with the shadow's key count. Waits poll conditions under a deadline that only
//! turns a hang into a failure; nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod replica_support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edge::discovery::TyphaEndpoint;
use felix_client::discovery::TyphaSource;
use felix_client::{Mirror, SyncStatus};
use kube_sim::{KubeSim, SeedConfig};
use replica_support::{
    Client, Replica, World, churn, connections, metric, spawn_client, totals, wait_sentinel,
    wait_until, write_sentinel,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 150;

async fn start_sim(nodes: usize, pods_per_node: usize) -> KubeSim {
    let sim = KubeSim::start(kube_sim::Config::default()).await.unwrap();
    kube_sim::seed(
        sim.store(),
        &SeedConfig {
            nodes,
            pods_per_node,
            namespaces: 10,
            policies_per_namespace: 1,
            host_network_every: 0,
        },
    )
    .unwrap();
    sim
}

async fn start_replicas(world: &World, n: usize) -> Vec<Replica> {
    let mut replicas: Vec<Replica> = (0..n).map(|i| world.replica(i, &[])).collect();
    for r in &mut replicas {
        r.wait_ready().await;
    }
    replicas
}

fn source(endpoints: &watch::Receiver<Vec<TyphaEndpoint>>) -> TyphaSource {
    TyphaSource::watching(endpoints.clone(), "the test's endpoints".to_string())
}

/// The typha address of each client's current session.
fn sessions(clients: &[&Client]) -> HashMap<String, usize> {
    let mut by_addr = HashMap::new();
    for c in clients {
        if let Some(addr) = c.status.endpoint.borrow().clone() {
            *by_addr.entry(addr).or_insert(0) += 1;
        }
    }
    by_addr
}

/// Waits until the client behind `probe` received five more delta batches.
async fn five_more_batches(what: &str, probe: &SyncStatus) {
    let batches = probe.batches.load(Ordering::Relaxed);
    wait_until(what, || async {
        let now = probe.batches.load(Ordering::Relaxed);
        (now >= batches + 5)
            .then_some(())
            .ok_or(format!("{now} batches"))
    })
    .await;
}

/// [`wait_settled`] for the live clients of `clients`; then the replicas'
/// `typha_connections_dropped_total`, summed.
async fn settled_drops(what: &str, replicas: &[Replica], clients: &[Option<Client>]) -> f64 {
    let all: Vec<&Client> = clients.iter().flatten().collect();
    wait_settled(what, replicas, &all).await;
    metric(replicas, "typha_connections_dropped_total")
        .await
        .into_iter()
        .flatten()
        .sum()
}

/// Waits until every client in `clients` is in sync, its record has taken an InSync event
/// (a client's status says in sync before its consumer drains the event from the
/// channel), and each replica's `typha_connections_active` equals the clients whose
/// session it holds.
async fn wait_settled(what: &str, replicas: &[Replica], clients: &[&Client]) -> Duration {
    wait_until(what, || async {
        let t = totals(clients.iter().copied());
        let recorded = clients
            .iter()
            .filter(|c| c.record.lock().unwrap().in_syncs > 0)
            .count();
        let by_addr = sessions(clients);
        let active = connections(replicas).await;
        let expected: Vec<Option<f64>> = replicas
            .iter()
            .map(|r| Some(by_addr.get(&r.grpc.to_string()).copied().unwrap_or(0) as f64))
            .collect();
        (t.in_sync == clients.len() && recorded == clients.len() && active == expected)
            .then_some(())
            .ok_or(format!(
                "{t:?}, {recorded} records in sync; active {active:?}, clients' sessions {expected:?}"
            ))
    })
    .await
}

/// Stops the churn, writes the sentinel, and proves the end state: every client's mirror
/// has the digest of a fresh observer's, its event shadow equals its mirror, and its
/// events never flushed (no deletion, no change that changed nothing, every in-sync with
/// the shadow's key count). Returns the mirrors.
async fn assert_converged(
    sim: &KubeSim,
    stop_churn: CancellationToken,
    churner: JoinHandle<u64>,
    observer_source: TyphaSource,
    world: &World,
    clients: Vec<Client>,
) -> Vec<Mirror> {
    let started = Instant::now();
    stop_churn.cancel();
    let writes = churner.await.unwrap();
    write_sentinel(sim);
    let observer = spawn_client(
        "observer".into(),
        observer_source,
        world.tls.clone(),
        None,
        None,
    );
    wait_sentinel(clients.iter().chain(std::iter::once(&observer))).await;
    let reference = observer.stop().await.0.digest();
    println!("sentinel everywhere after {:?}", started.elapsed());
    let mut digests = BTreeMap::new();
    let mut mirrors = Vec::new();
    for c in clients {
        assert_eq!(c.status.digest_mismatches.load(Ordering::Relaxed), 0);
        let (mirror, record) = c.stop().await;
        let record = record.lock().unwrap();
        assert!(record.matches(&mirror), "events and mirror differ");
        assert_eq!(record.flaps, 0, "changes that changed nothing: a flush");
        assert_eq!(record.deletions, 0, "deletions of keys still in the API");
        assert_eq!(record.bad_in_syncs, 0, "an in-sync with a partial mirror");
        *digests.entry(mirror.digest().to_string()).or_insert(0usize) += 1;
        assert_eq!(mirror.digest(), reference, "a client differs from the API");
        mirrors.push(mirror);
    }
    println!("final: digests {digests:?} (observer {reference}); {writes} churn writes");
    mirrors
}

/// A TCP proxy to `upstream` that forwards each connection's server-to-client bytes up
/// to `budget` and then holds them: its clients stop in the middle of their snapshot.
/// Aborting it drops every connection, as the network does once the server is gone.
async fn gated_proxy(upstream: SocketAddr, budget: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((down, _)) = listener.accept().await {
            conns.spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut down_r, mut down_w) = down.into_split();
                let (mut up_r, mut up_w) = up.into_split();
                let to_server = tokio::io::copy(&mut down_r, &mut up_w);
                let to_client = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut left = budget;
                    while left > 0 {
                        let n = match up_r.read(&mut buf[..left.min(16 * 1024)]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if down_w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    _ = to_server => {}
                    _ = to_client => {}
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_snapshot_moves_clients_without_a_partial_snapshot() {
    const CLIENTS: usize = 120;
    const DIRECT: usize = 40;
    let seeded = 300 * 15;
    // 4,500 pods: a snapshot of more than one 1 MiB chunk.
    let sim = start_sim(300, 15).await;
    let world = World::create("faults-typha-snapshot", &sim);
    let mut replicas = start_replicas(&world, 2).await;
    let direct = watch::channel(vec![replicas[0].endpoint()]);
    let stop_churn = CancellationToken::new();
    let churner = churn(&sim, 300, 10, stop_churn.clone());

    // DIRECT clients sync with replica 0 (which builds its snapshot); the others are
    // then held mid-snapshot by the proxy.
    let spawn = |i: usize, rx: &watch::Receiver<Vec<TyphaEndpoint>>| {
        spawn_client(
            format!("client-{i:04}"),
            source(rx),
            world.tls.clone(),
            None,
            None,
        )
    };
    let mut clients: Vec<Client> = (0..DIRECT).map(|i| spawn(i, &direct.1)).collect();
    wait_until("direct clients in sync", || async {
        let t = totals(&clients);
        (t.in_sync == DIRECT).then_some(()).ok_or(format!("{t:?}"))
    })
    .await;
    let scrape = replicas[0].scrape().await.unwrap();
    let raw = scrape.sum("typha_snapshot_raw_bytes");
    let compressed = scrape.sum("typha_snapshot_compressed_bytes");
    assert!(
        raw > 1024.0 * 1024.0,
        "premise: a multi-chunk snapshot ({raw} bytes)"
    );
    assert!(
        compressed > 64.0 * 1024.0,
        "premise: a snapshot well past the TLS handshake ({compressed} bytes)"
    );
    let (proxy, proxy_task) = gated_proxy(replicas[0].grpc, compressed as usize / 2).await;
    let gated = watch::channel(vec![TyphaEndpoint {
        address: "127.0.0.1".into(),
        port: proxy.port(),
        node_name: None,
    }]);
    clients.extend((DIRECT..CLIENTS).map(|i| spawn(i, &gated.1)));
    wait_until(
        "replica 0 serving everyone, the gated clients mid-snapshot",
        || async {
            let t = totals(&clients[..DIRECT]);
            let mid = clients[DIRECT..]
                .iter()
                .filter(|c| {
                    c.status.endpoint.borrow().is_some()
                        && c.status.snapshots.load(Ordering::Relaxed) == 0
                })
                .count();
            let active = connections(&replicas[..1]).await[0];
            (t.in_sync == DIRECT && mid == CLIENTS - DIRECT && active == Some(CLIENTS as f64))
                .then_some(())
                .ok_or(format!(
                    "direct {t:?}, {mid} gated mid-snapshot, replica 0 active {active:?}"
                ))
        },
    )
    .await;
    let sent = replicas[0]
        .scrape()
        .await
        .unwrap()
        .sum("typha_snapshots_sent_total");
    let before = totals(&clients);
    drop(replicas.remove(0));
    proxy_task.abort();
    // Discovery lags: the dead replica (and the proxy) stay listed beside the live one.
    for (endpoints, _) in [&direct, &gated] {
        endpoints.send_modify(|e| e.push(replicas[0].endpoint()));
    }
    println!(
        "snapshot of {raw} raw / {compressed} compressed bytes; SIGKILL after {sent} snapshots were queued, {before:?}"
    );
    assert_eq!(
        before.snapshots, DIRECT as u64,
        "a gated client completed its snapshot"
    );
    let all: Vec<&Client> = clients.iter().collect();
    let took = wait_settled("clients moved to replica 1", &replicas, &all).await;
    println!("moved in {took:?}");
    let after = totals(&clients);
    println!("after the kill: {after:?}");
    let mut cut = 0;
    for (i, c) in clients.iter().enumerate() {
        let record = c.record.lock().unwrap();
        let early = record.before_first_sync.as_str();
        assert!(
            early.trim_start_matches('D') == "C",
            "client {i}: events before its first in-sync {early:?}: a partial snapshot leaked"
        );
        assert!(
            record.first_sync_keys.unwrap() > seeded,
            "client {i} was first in sync with {:?} keys",
            record.first_sync_keys
        );
        if early.starts_with('D') && i >= DIRECT {
            cut += 1;
            // Its only snapshot is the complete one from replica 1.
            assert_eq!(c.status.snapshots.load(Ordering::Relaxed), 1, "client {i}");
        }
    }
    println!(
        "{cut} clients had their first snapshot cut; the {DIRECT} synced ones: {:?}",
        totals(&clients[..DIRECT])
    );
    assert_eq!(
        cut,
        CLIENTS - DIRECT,
        "every gated client's snapshot was cut"
    );
    assert_eq!(after.mismatches, 0);
    assert_converged(
        &sim,
        stop_churn,
        churner,
        source(&direct.1),
        &world,
        clients,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_clients_free_their_sessions_and_resume_with_their_mirrors() {
    let sim = start_sim(200, 10).await;
    let world = World::create("faults-typha-clients", &sim);
    let replicas = start_replicas(&world, 2).await;
    let (_endpoints, rx) = watch::channel(replicas.iter().map(Replica::endpoint).collect());
    let node = |i: usize| format!("client-{i:04}");
    let mut clients: Vec<Option<Client>> = (0..CLIENTS)
        .map(|i| {
            Some(spawn_client(
                node(i),
                source(&rx),
                world.tls.clone(),
                None,
                None,
            ))
        })
        .collect();
    let live = |clients: &[Option<Client>]| -> Vec<usize> {
        (0..clients.len())
            .filter(|i| clients[*i].is_some())
            .collect()
    };
    let dropped_before = settled_drops("initial sync", &replicas, &clients).await;
    let reconnects_before: Vec<u64> = clients
        .iter()
        .flatten()
        .map(|c| c.status.reconnects.load(Ordering::Relaxed))
        .collect();

    // Deltas flow.
    let stop_churn = CancellationToken::new();
    let churner = churn(&sim, 200, 20, stop_churn.clone());
    let probe = clients[1].as_ref().unwrap().status.clone();
    five_more_batches("deltas flowing", &probe).await;

    // Every 10th client aborted for good; every 10th (offset 5) stopped, its mirror kept.
    let mut aborted = 0;
    let mut kept: Vec<(
        usize,
        Mirror,
        Arc<std::sync::Mutex<replica_support::Record>>,
    )> = Vec::new();
    for i in (0..CLIENTS).step_by(5) {
        let c = clients[i].take().unwrap();
        if i % 10 == 0 {
            c.task.abort();
            assert!(c.task.await.is_err_and(|e| e.is_cancelled()));
            aborted += 1;
        } else {
            let (mirror, record) = c.stop().await;
            kept.push((i, mirror, record));
        }
    }

    // Late clients, held mid-snapshot by a gated proxy to replica 0, then aborted.
    let compressed = replicas[0]
        .scrape()
        .await
        .unwrap()
        .sum("typha_snapshot_compressed_bytes");
    assert!(
        compressed > 16.0 * 1024.0,
        "premise: a snapshot well past the TLS handshake ({compressed} bytes)"
    );
    let (proxy, proxy_task) = gated_proxy(replicas[0].grpc, compressed as usize / 2).await;
    let (_gated, gated_rx) = watch::channel(vec![TyphaEndpoint {
        address: "127.0.0.1".into(),
        port: proxy.port(),
        node_name: None,
    }]);
    let late: Vec<Client> = (0..20)
        .map(|i| {
            let node = format!("late-{i:02}");
            spawn_client(node, source(&gated_rx), world.tls.clone(), None, None)
        })
        .collect();
    wait_until("late clients mid-snapshot", || async {
        let mid = late
            .iter()
            .filter(|c| c.status.endpoint.borrow().is_some())
            .count();
        (mid == late.len())
            .then_some(())
            .ok_or(format!("{mid} late clients have their ServerHello"))
    })
    .await;
    let cut_in_snapshot = late
        .iter()
        .filter(|c| c.status.snapshots.load(Ordering::Relaxed) == 0)
        .count();
    assert_eq!(
        cut_in_snapshot,
        late.len(),
        "a late client got its snapshot"
    );
    for c in late {
        c.task.abort();
        assert!(c.task.await.is_err_and(|e| e.is_cancelled()));
    }

    // No leaked session: each replica counts exactly the live clients it serves.
    let dropped_after =
        settled_drops("sessions of killed clients freed", &replicas, &clients).await;
    println!(
        "{aborted} aborted, {} stopped, {cut_in_snapshot} late aborted mid-snapshot; replicas counted {} dropped sessions",
        kept.len(),
        dropped_after - dropped_before
    );
    assert!(dropped_after - dropped_before >= (aborted + kept.len() + 20) as f64);
    proxy_task.abort();

    // More deltas, then the stopped clients restart with their old mirrors.
    five_more_batches("deltas the stopped clients missed", &probe).await;
    let restarted: Vec<usize> = kept.iter().map(|(i, _, _)| *i).collect();
    for (i, mirror, record) in kept {
        let c = spawn_client(
            node(i),
            source(&rx),
            world.tls.clone(),
            Some(mirror),
            Some(record),
        );
        clients[i] = Some(c);
    }
    {
        let all: Vec<&Client> = clients.iter().flatten().collect();
        wait_settled("restarted clients back in sync", &replicas, &all).await;
    }
    let survivors: Vec<usize> = live(&clients)
        .into_iter()
        .filter(|i| !restarted.contains(i))
        .collect();
    let reconnects: u64 = survivors
        .iter()
        .map(|&i| {
            let c = clients[i].as_ref().unwrap();
            c.status.reconnects.load(Ordering::Relaxed) - reconnects_before[i]
        })
        .sum();
    assert_eq!(reconnects, 0, "bystanders reconnected");
    for &i in &restarted {
        let s = &clients[i].as_ref().unwrap().status;
        assert_eq!(s.resumes.load(Ordering::Relaxed), 1, "client {i} resumes");
        assert_eq!(
            s.snapshots.load(Ordering::Relaxed),
            0,
            "client {i} snapshots"
        );
    }
    let clients: Vec<Client> = clients.into_iter().flatten().collect();
    assert_eq!(clients.len(), CLIENTS - aborted);
    assert_converged(&sim, stop_churn, churner, source(&rx), &world, clients).await;
}
