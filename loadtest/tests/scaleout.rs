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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use felix_client::discovery::TyphaSource;
use felix_client::{Mirror, SyncClient, SyncConfig, SyncEvent, SyncStatus};
use kube_sim::{KubeSim, SeedConfig};
use loadtest::http1::{self, Scrape};
use loadtest::procs::free_port;
use serde_json::{Value as Json, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use typha::certs::{DEFAULT_CLIENT_CN, DEFAULT_SERVER_CN, DevPki};
use typha::discovery::{Discovery, DiscoveryConfig, TyphaEndpoint};
use typha::tls::{PeerIdentity, client_config};

const CLIENTS: usize = 600;
const NODES: usize = 600;
const NS: &str = "calico-system";
const SERVICE: &str = "calico-typha";
const SENTINEL: &str = "scaleout-sentinel";
const LIMIT: Duration = Duration::from_secs(600);

/// A replica process, killed by PID on drop.
struct Replica {
    name: String,
    grpc: SocketAddr,
    health: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn spawn(i: usize, dir: &Path, kubeconfig: &Path) -> Replica {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let health = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let file = |name: &str| dir.join(name).display().to_string();
        let name = format!("typha-{i}");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let args: Vec<String> = vec![
            "typha".into(),
            "serve".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--listen".into(),
            grpc.to_string(),
            "--health-listen".into(),
            health.to_string(),
            "--tls-ca".into(),
            file("ca.crt"),
            "--tls-cert".into(),
            file("typha.crt"),
            "--tls-key".into(),
            file("typha.key"),
            "--client-cn".into(),
            DEFAULT_CLIENT_CN.into(),
            "--server-id".into(),
            name.clone(),
            "--service-namespace".into(),
            NS.into(),
            "--service-name".into(),
            SERVICE.into(),
            "--rebalance-rate".into(),
            "25".into(),
            "--drain-duration".into(),
            "5s".into(),
            "--log".into(),
            "warn".into(),
        ];
        let child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Replica {
            name,
            grpc,
            health,
            child,
            log,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + LIMIT;
        while http1::get_text(self.health, "/readyz").await.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn scrape(&self) -> Option<Scrape> {
        http1::get_text(self.health, "/metrics")
            .await
            .ok()
            .map(|text| Scrape::parse(&text))
    }

    /// SIGTERM through the `kill` command (the workspace forbids unsafe code, so no libc).
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

struct Client {
    status: Arc<SyncStatus>,
    /// Set once the client has seen the sentinel pod (written after the churn stops).
    done: Arc<AtomicBool>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<Mirror, felix_client::SyncError>>,
}

fn spawn_client(
    node: String,
    endpoints: watch::Receiver<Vec<TyphaEndpoint>>,
    tls: Arc<rustls::ClientConfig>,
) -> Client {
    let source = TyphaSource::watching(endpoints, format!("service {NS}/{SERVICE}"));
    let mut config = SyncConfig::with_source(node, source);
    config.tls = Some(tls);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(30);
    let client = SyncClient::new(config);
    let status = client.status();
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(16);
    let done = Arc::new(AtomicBool::new(false));
    let seen = done.clone();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if let SyncEvent::Changes { updates, .. } = event
                && updates.iter().any(|u| u.key.name().contains(SENTINEL))
            {
                seen.store(true, Ordering::Relaxed);
            }
        }
    });
    let task = tokio::spawn(client.run(tx, shutdown.clone()));
    Client {
        status,
        done,
        shutdown,
        task,
    }
}

/// Client-side totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Totals {
    in_sync: usize,
    snapshots: u64,
    resumes: u64,
    goodbyes: u64,
    failures: u64,
    mismatches: u64,
}

fn totals(clients: &[Client]) -> Totals {
    let mut t = Totals::default();
    for c in clients {
        let s = &c.status;
        t.in_sync += usize::from(s.in_sync.load(Ordering::Relaxed));
        t.snapshots += s.snapshots.load(Ordering::Relaxed);
        t.resumes += s.resumes.load(Ordering::Relaxed);
        t.goodbyes += s.goodbyes.load(Ordering::Relaxed);
        t.failures += s.failures.load(Ordering::Relaxed);
        t.mismatches += s.digest_mismatches.load(Ordering::Relaxed);
    }
    t
}

/// Active connections per live replica (None for a replica that does not answer).
async fn connections(replicas: &[Replica]) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(r.scrape().await.map(|s| s.sum("typha_connections_active")));
    }
    out
}

async fn snapshots_sent(replicas: &[Replica]) -> f64 {
    let mut total = 0.0;
    for r in replicas {
        if let Some(s) = r.scrape().await {
            total += s.sum("typha_snapshots_sent_total");
        }
    }
    total
}

/// Polls `check` (every 250 ms; the conditions span several processes, so there is no
/// single signal to await) until it holds or the deadline passes.
async fn wait_until<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(()) => return started.elapsed(),
            Err(state) if started.elapsed() > LIMIT => panic!("{what}: gave up; {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Label changes on seeded pods, at about `per_second`, until cancelled.
fn churn(sim: &KubeSim, per_second: u64, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    let store = sim.store().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return n,
                _ = tick.tick() => {}
            }
            let node = (n as usize * 7) % NODES;
            let name = format!("churn-{}", n % 50);
            let pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "ns-0000", "labels": {"gen": n.to_string()}},
                "spec": {"nodeName": kube_sim::seed::node_name(node), "containers": [{"name": "c", "image": "i"}]},
                "status": {"podIP": format!("10.250.{}.{}", (n % 50) / 250, (n % 50) % 250 + 1), "phase": "Running"},
            });
            store.upsert_object(pod).unwrap();
            n += 1;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_rebalance_resume_survive_kill_and_drain() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = loadtest::procs::ScratchDir::create("scaleout").unwrap();
    let pki = DevPki::generate().unwrap();
    pki.write_to_dir(dir.path(), true).unwrap();
    let tls = client_config(
        &pki.client_material(),
        &PeerIdentity::with_cn(DEFAULT_SERVER_CN),
    )
    .unwrap();

    let sim = KubeSim::start(kube_sim::Config::default()).await.unwrap();
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
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: sim, cluster: {{server: \"{}\"}}}}]\ncontexts: [{{name: sim, context: {{cluster: sim}}}}]\ncurrent-context: sim\n",
            sim.url()
        ),
    )
    .unwrap();

    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::spawn(i, dir.path(), &kubeconfig))
        .collect();
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
    let churner = churn(&sim, 20, stop_churn.clone());

    // 1. A fourth replica joins.
    let mut fourth = Replica::spawn(3, dir.path(), &kubeconfig);
    fourth.wait_ready().await;
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
    let took = wait_until("clients of the killed replica back in sync", || async {
        let counts: Vec<f64> = connections(&replicas).await.into_iter().flatten().collect();
        let t = totals(&clients);
        let total: f64 = counts.iter().sum();
        (t.in_sync == CLIENTS && total as usize == CLIENTS)
            .then_some(())
            .ok_or(format!("{t:?} connections {counts:?}"))
    })
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
    draining.terminate();
    let mut draining = draining;
    let exit = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(status) = draining.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("drained replica did not exit");
    assert!(
        exit.success(),
        "drain exit: {exit}\n{}",
        draining.log_tail()
    );
    wait_until("drained clients back in sync", || async {
        let counts: Vec<f64> = connections(&replicas).await.into_iter().flatten().collect();
        let t = totals(&clients);
        let total: f64 = counts.iter().sum();
        (t.in_sync == CLIENTS && total as usize == CLIENTS)
            .then_some(())
            .ok_or(format!("{t:?} connections {counts:?}"))
    })
    .await;
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
    sim.store()
        .create_object(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": SENTINEL, "namespace": "ns-0000"},
            "spec": {"nodeName": kube_sim::seed::node_name(0), "containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": "10.251.0.1", "phase": "Running"},
        }))
        .unwrap();
    let observer = spawn_client("observer".into(), endpoints.clone(), tls.clone());
    wait_until("everyone has the sentinel", || async {
        let missing = clients
            .iter()
            .chain(std::iter::once(&observer))
            .filter(|c| !c.done.load(Ordering::Relaxed))
            .count();
        (missing == 0)
            .then_some(())
            .ok_or(format!("{missing} clients without the sentinel"))
    })
    .await;
    observer.shutdown.cancel();
    let reference = observer.task.await.unwrap().unwrap().digest().to_string();
    let mut digests = std::collections::BTreeMap::new();
    for c in clients {
        c.shutdown.cancel();
        let mirror = c.task.await.unwrap().unwrap();
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
