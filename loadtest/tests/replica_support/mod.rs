//! Shared pieces of the tests that run typha replicas as real processes (scaleout.rs,
//! faults_typha.rs): the development PKI and kubeconfig in a scratch dir, a [`Replica`]
//! process (this package's multi-call binary, `loadtest typha serve ...`, SIGKILLed on
//! drop), in-process sync clients whose events are recorded, client and replica totals,
//! polling waits, and pod churn.
//!
//! The [`Recorder`] replays every client's events into a shadow map, so a test can prove
//! what the dataplane would have seen: `flaps` counts changes that changed nothing (a
//! re-add of an unchanged key, a delete of an absent one), `deletions` counts deletes,
//! and `shadow` must equal the client's final mirror.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge::certs::{DEFAULT_SERVER_CN, DevPki};
use edge::discovery::TyphaEndpoint;
use edge::tls::{PeerIdentity, client_config};
use felix_client::discovery::TyphaSource;
use felix_client::{Mirror, SyncClient, SyncConfig, SyncEvent, SyncStatus};
use kube_sim::KubeSim;
use loadtest::http1::{self, Scrape};
use loadtest::procs::{ChildProc, ScratchDir, free_port};
use loadtest::stack::{replica_args, wait_ready};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use typha_proto::digest::EntryHash;
use typha_proto::{Key, Value};

/// Deadline of every wait: it only turns a hang into a failure. Well under nextest's
/// 10-minute kill (.config/nextest.toml), so that a hang fails with the state it
/// waited on instead of a bare timeout.
pub const LIMIT: Duration = Duration::from_secs(180);

/// The pod written after the churn stops; once every client has it, all have the rest.
pub const SENTINEL: &str = "replica-sentinel";

/// The prefix of the pods [`wait_covered`] writes.
const MARKER: &str = "replica-marker-";

/// A scratch dir with the development PKI and a kubeconfig for `sim`, and the clients'
/// TLS configuration.
pub struct World {
    /// Holds the PKI files, the kubeconfig and the replicas' logs.
    pub dir: ScratchDir,
    /// The kubeconfig pointing at the kube-sim.
    pub kubeconfig: PathBuf,
    /// Client TLS: the development client certificate, expecting typha's CN.
    pub tls: Arc<rustls::ClientConfig>,
}

impl World {
    /// Writes the PKI and the kubeconfig of `sim` into a new scratch dir named `name`.
    pub fn create(name: &str, sim: &KubeSim) -> World {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = ScratchDir::create(name).unwrap();
        let pki = DevPki::generate().unwrap();
        pki.write_to_dir(dir.path(), true).unwrap();
        let tls = client_config(
            &pki.client_material(),
            &PeerIdentity::with_cn(DEFAULT_SERVER_CN),
        )
        .unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, sim.kubeconfig()).unwrap();
        World {
            dir,
            kubeconfig,
            tls,
        }
    }

    /// Spawns replica `i` with the common flags plus `extra`.
    pub fn replica(&self, i: usize, extra: &[&str]) -> Replica {
        Replica::spawn(i, self.dir.path(), &self.kubeconfig, extra)
    }
}

/// A replica process, killed by PID on drop.
pub struct Replica {
    /// `typha-<i>`, also its server id.
    pub name: String,
    /// The gRPC listener.
    pub grpc: SocketAddr,
    /// The health and metrics listener.
    pub health: SocketAddr,
    /// The process.
    pub proc: ChildProc,
}

impl Replica {
    fn spawn(i: usize, dir: &Path, kubeconfig: &Path, extra: &[&str]) -> Replica {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let health = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let mut args = replica_args(i, dir, kubeconfig, grpc, health);
        args.extend(extra.iter().map(|a| a.to_string()));
        let name = format!("typha-{i}");
        let exe = Path::new(env!("CARGO_BIN_EXE_loadtest"));
        let proc = ChildProc::spawn_exe(exe, &name, &args, dir).unwrap();
        Replica {
            name,
            grpc,
            health,
            proc,
        }
    }

    /// The last lines of the replica's log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Waits until /readyz answers; fails if the process exits first.
    pub async fn wait_ready(&mut self) {
        wait_ready(self.health, "/readyz", &mut self.proc, LIMIT)
            .await
            .unwrap();
    }

    /// The replica's metrics, or `None` when it does not answer.
    pub async fn scrape(&self) -> Option<Scrape> {
        http1::get_text(self.health, "/metrics")
            .await
            .ok()
            .map(|text| Scrape::parse(&text))
    }

    /// The endpoint clients connect to.
    pub fn endpoint(&self) -> TyphaEndpoint {
        TyphaEndpoint {
            address: self.grpc.ip().to_string(),
            port: self.grpc.port(),
            node_name: None,
        }
    }

    /// SIGTERM: the replica drains and exits on its own.
    pub fn terminate(&mut self) {
        self.proc.signal_term();
    }
}

/// What a client's events did, replayed into a shadow of its mirror.
#[derive(Debug, Default)]
pub struct Record {
    /// The mirror as the events describe it.
    pub shadow: HashMap<Key, Value>,
    /// Changes that changed nothing: an unchanged value re-added, an absent key deleted.
    pub flaps: u64,
    /// Deletions reported.
    pub deletions: u64,
    /// InSync events whose key count differed from the shadow's.
    pub bad_in_syncs: u64,
    /// InSync events.
    pub in_syncs: u64,
    /// Disconnected events.
    pub disconnects: u64,
    /// The reason of the first Disconnected event, for diagnosis.
    pub first_disconnect: Option<String>,
    /// The events before the first InSync, `C` for a run of Changes and `D` for
    /// Disconnected: a snapshot's changes come in consecutive events (one per chunk) just
    /// before its InSync, so a client whose first snapshot was cut shows `D...DC`, and a
    /// `C` before a `D` is a leaked partial snapshot.
    pub before_first_sync: String,
    /// Keys in the shadow at the first InSync.
    pub first_sync_keys: Option<usize>,
    /// Whether the sentinel pod has been seen.
    pub sentinel: bool,
    /// The marker pods seen (see [`wait_covered`]).
    pub markers: HashSet<String>,
}

impl Record {
    fn apply(&mut self, event: SyncEvent) {
        match event {
            SyncEvent::Changes { updates, .. } => {
                if self.in_syncs == 0 && !self.before_first_sync.ends_with('C') {
                    self.before_first_sync.push('C');
                }
                for update in updates {
                    if update.key.name().contains(SENTINEL) {
                        self.sentinel = true;
                    }
                    if update.key.name().starts_with(MARKER) {
                        self.markers.insert(update.key.name().to_string());
                    }
                    match update.value {
                        Some(value) => {
                            if self.shadow.get(&update.key) == Some(&value) {
                                self.flaps += 1;
                            }
                            self.shadow.insert(update.key, value);
                        }
                        None => {
                            self.deletions += 1;
                            if self.shadow.remove(&update.key).is_none() {
                                self.flaps += 1;
                            }
                        }
                    }
                }
            }
            SyncEvent::InSync { keys, .. } => {
                if keys != self.shadow.len() {
                    self.bad_in_syncs += 1;
                }
                if self.in_syncs == 0 {
                    self.first_sync_keys = Some(self.shadow.len());
                }
                self.in_syncs += 1;
            }
            SyncEvent::Disconnected { reason } => {
                self.first_disconnect.get_or_insert(reason);
                if self.in_syncs == 0 {
                    self.before_first_sync.push('D');
                }
                self.disconnects += 1;
            }
        }
    }

    /// Whether the shadow holds exactly the mirror's entries.
    pub fn matches(&self, mirror: &Mirror) -> bool {
        mirror.len() == self.shadow.len()
            && mirror.iter().all(|(k, h)| {
                self.shadow.get(&k).map(|v| {
                    let update = typha_proto::Update {
                        key: k.clone(),
                        value: Some(v.clone()),
                    };
                    EntryHash::of(&update.encode())
                }) == Some(h)
            })
    }
}

/// A running in-process sync client.
pub struct Client {
    /// Its counters (replaced when the client is restarted).
    pub status: Arc<SyncStatus>,
    /// Its events, replayed (kept across restarts).
    pub record: Arc<Mutex<Record>>,
    /// Stops it gracefully: `task` then returns the mirror.
    pub shutdown: CancellationToken,
    /// The client.
    pub task: tokio::task::JoinHandle<Result<Mirror, felix_client::SyncError>>,
}

impl Client {
    /// Whether the client has seen the sentinel pod.
    pub fn has_sentinel(&self) -> bool {
        self.record.lock().unwrap().sentinel
    }

    /// Stops the client and returns its mirror.
    pub async fn stop(self) -> (Mirror, Arc<Mutex<Record>>) {
        self.shutdown.cancel();
        (self.task.await.unwrap().unwrap(), self.record)
    }
}

/// Starts a client following `source`, from `mirror` (a restart) or empty, whose events
/// go into `record` (a fresh one when `None`).
pub fn spawn_client(
    node: String,
    source: TyphaSource,
    tls: Arc<rustls::ClientConfig>,
    mirror: Option<Mirror>,
    record: Option<Arc<Mutex<Record>>>,
) -> Client {
    let mut config = SyncConfig::with_source(node, source);
    config.tls = Some(tls);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(30);
    let client = match mirror {
        Some(mirror) => SyncClient::with_mirror(config, mirror),
        None => SyncClient::new(config),
    };
    let status = client.status();
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(16);
    let record = record.unwrap_or_default();
    let sink = record.clone();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            sink.lock().unwrap().apply(event);
        }
    });
    let task = tokio::spawn(client.run(tx, shutdown.clone()));
    Client {
        status,
        record,
        shutdown,
        task,
    }
}

/// Client-side totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Clients in sync now.
    pub in_sync: usize,
    /// Snapshots received.
    pub snapshots: u64,
    /// Sessions resumed.
    pub resumes: u64,
    /// Reconnects after a goodbye.
    pub goodbyes: u64,
    /// Reconnects after a failure.
    pub failures: u64,
    /// Digest mismatches.
    pub mismatches: u64,
}

/// The totals over `clients`.
pub fn totals<'a>(clients: impl IntoIterator<Item = &'a Client>) -> Totals {
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
pub async fn connections(replicas: &[Replica]) -> Vec<Option<f64>> {
    metric(replicas, "typha_connections_active").await
}

/// `name` summed over its labels, per replica (None for a replica that does not answer).
pub async fn metric(replicas: &[Replica], name: &str) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(r.scrape().await.map(|s| s.sum(name)));
    }
    out
}

/// Snapshots sent by the replicas that answer.
pub async fn snapshots_sent(replicas: &[Replica]) -> f64 {
    metric(replicas, "typha_snapshots_sent_total")
        .await
        .into_iter()
        .flatten()
        .sum()
}

/// Polls `check` every 250 ms (the conditions span several processes, so there is no
/// single signal to await) until it holds or the deadline passes.
pub async fn wait_until<F, Fut>(what: &str, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    poll_until(what, Duration::from_millis(250), check).await
}

/// As [`wait_until`], polling every `every`.
pub async fn poll_until<F, Fut>(what: &str, every: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(()) => return started.elapsed(),
            Err(state) if started.elapsed() > LIMIT => panic!("{what}: gave up; {state}"),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Label changes on 50 pods of namespace `ns-0000` spread over `nodes` seeded nodes, at
/// about `per_second`, until cancelled; returns the number of writes. Never deletes.
pub fn churn(
    sim: &KubeSim,
    nodes: usize,
    per_second: u64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let store = sim.store().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return n,
                _ = tick.tick() => {}
            }
            let node = (n as usize * 7) % nodes;
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

/// Writes the sentinel pod (after the churn stopped: the same resource, so every replica
/// sees it after every churn event).
pub fn write_sentinel(sim: &KubeSim) {
    write_pod(sim, SENTINEL, "10.251.0.1");
}

/// Creates pod `name` at `ip` in namespace `ns-0000` on the first seeded node.
fn write_pod(sim: &KubeSim, name: &str, ip: &str) {
    sim.store()
        .create_object(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns-0000"},
            "spec": {"nodeName": kube_sim::seed::node_name(0), "containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": ip, "phase": "Running"},
        }))
        .unwrap();
}

/// Waits until `clients` would be resumed on `newcomer`, a replica that just started: its
/// resume floor is its lists' resourceVersions, above the clients' positions for every
/// resource no event touched since (exact floors). Bookmarks carry the serving
/// replicas past it; a marker pod written after that, once every client has it,
/// proves the clients applied those bookmarks' progress too (a replica publishes in
/// order). Without this wait a client moved to `newcomer` early gets a snapshot, and how
/// early is early depends on how loaded the machine is.
pub async fn wait_covered(
    sim: &KubeSim,
    serving: &[Replica],
    newcomer: &Replica,
    clients: &[Client],
    round: &str,
) {
    wait_until(
        "the serving replicas passed the newcomer's floor",
        || async {
            let floor = (newcomer.scrape().await)
                .ok_or_else(|| "the newcomer does not answer".to_string())?;
            for replica in serving {
                let scrape = replica
                    .scrape()
                    .await
                    .ok_or_else(|| format!("{} does not answer", replica.name))?;
                loadtest::stack::passed_floor(&scrape, &floor)
                    .map_err(|why| format!("{}: {why}", replica.name))?;
            }
            Ok(())
        },
    )
    .await;
    let name = format!("{MARKER}{round}");
    write_pod(sim, &name, "10.251.1.1");
    wait_until("every client has the marker", || async {
        let missing = clients
            .iter()
            .filter(|c| !c.record.lock().unwrap().markers.contains(&name))
            .count();
        (missing == 0)
            .then_some(())
            .ok_or(format!("{missing} clients without {name}"))
    })
    .await;
}

/// Waits until every client in `clients` has seen the sentinel.
pub async fn wait_sentinel<'a>(clients: impl Iterator<Item = &'a Client> + Clone) {
    wait_until("everyone has the sentinel", || {
        let clients = clients.clone();
        async move {
            let missing = clients.filter(|c| !c.has_sentinel()).count();
            (missing == 0)
                .then_some(())
                .ok_or(format!("{missing} clients without the sentinel"))
        }
    })
    .await;
}
