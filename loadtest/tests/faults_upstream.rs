//! Upstream faults end to end: kube-sim injects failures (watch cuts, 5xx/429 storms,
//! 410 storms, a restart with a fresh, lower resourceVersion history) while typha
//! watches it and felix-client sync clients follow typha over mutual TLS.
//!
//! Every test ends with (1) every mirror equal to the API's state through the model and
//! its digest equal to the hub's, and (2) no dataplane flush: the `SyncEvent::Changes`
//! an event consumer received across the fault name only keys really changed in the API
//! meanwhile (no delete of a key that still exists, no re-add of unchanged keys).
//! Waits are on signals (kube-sim counters, client events, hub revisions) under a
//! generous deadline; nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use felix_client::SyncConfig;
use k8s_openapi::api::core::v1::Pod;
use kube_sim::{FaultKind, KubeSim, MetricsSnapshot, SeedConfig, Store, Target};
use loadtest::harness::{ClientSet, Harness};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use typha::hub::Hub;
use typha_proto::{Key, Update};

mod upstream_support;

use upstream_support::{
    Model, Observer, api_model, assert_mirrors, endpoint_pods, hashes, mirror_model, model_of,
};

/// Generous bound on every wait: a hung test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(60);
/// Resources typha watches (one watch each).
const WATCHED: u64 = netmodel::Resource::ALL.len() as u64;

/// Keys whose value differs between two models (added, removed or changed).
fn changed_keys(before: &Model, after: &Model) -> BTreeSet<Key> {
    let mut keys: BTreeSet<Key> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(after.keys().filter(|k| !before.contains_key(*k)).cloned());
    keys
}

// ---------------------------------------------------------------- fixtures

fn seed_config() -> SeedConfig {
    SeedConfig {
        nodes: 10,
        pods_per_node: 10,
        namespaces: 4,
        policies_per_namespace: 2,
        host_network_every: 10,
    }
}

/// Sets a label on endpoint pod `i` through `store`; returns the model update it implies.
fn relabel_pod(store: &Store, i: usize, value: &str) -> Update {
    let mut pod = endpoint_pods(store).swap_remove(i);
    let labels = pod["metadata"]
        .as_object_mut()
        .unwrap()
        .entry("labels")
        .or_insert_with(|| json!({}));
    labels["fault"] = json!(value);
    model_of::<Pod>(&store.upsert_object(pod).unwrap())
}

/// Deletes endpoint pod `i`; returns the model delete it implies.
fn delete_pod(store: &Store, i: usize) -> Update {
    let pod = endpoint_pods(store).swap_remove(i);
    let key = model_of::<Pod>(&pod).key;
    let meta = &pod["metadata"];
    store
        .delete_object(
            "v1",
            "Pod",
            meta["namespace"].as_str().unwrap(),
            meta["name"].as_str().unwrap(),
        )
        .unwrap();
    Update::delete(key)
}

// ---------------------------------------------------------------- metrics

/// The process-wide debugging recorder (installed once; nextest runs each test alone).
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::set_global_recorder(recorder).expect("one recorder per test process");
        snapshotter
    })
}

/// The sum over all labels of counter `name` since the previous snapshot (a snapshot
/// resets the debugging recorder's counters).
fn counter_since_last(name: &str) -> u64 {
    recorder()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .map(|(.., value)| match value {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

// ---------------------------------------------------------------- the rig

/// kube-sim seeded with [`seed_config`], and typha watching it through a kube client
/// configured like typha's own (`without_retry`).
struct Rig {
    sim: Option<KubeSim>,
    harness: Harness,
}

impl Rig {
    async fn start() -> Rig {
        let sim = upstream_support::start_unbookmarked_sim(&seed_config()).await;
        let config = kube::Config::new(sim.url().parse().unwrap());
        let client = kube::Client::try_from(netmodel::without_retry(config)).unwrap();
        let harness = upstream_support::typha_watching(client, LIMIT).await;
        Rig {
            sim: Some(sim),
            harness,
        }
    }

    fn sim(&self) -> &KubeSim {
        self.sim.as_ref().unwrap()
    }

    fn hub(&self) -> &Hub {
        &self.harness.typha.hub
    }

    fn store(&self) -> &Store {
        self.sim().store()
    }

    /// Waits until kube-sim's counters satisfy `done`.
    async fn until_sim(&self, what: &str, done: impl Fn(&MetricsSnapshot) -> bool) {
        tokio::time::timeout(LIMIT, self.sim().metrics().wait_until(done))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {what}: {:?}",
                    self.sim().metrics().snapshot()
                )
            });
    }

    /// Waits until every resource watches again after a cut (`watches_before`: the
    /// watch request count at the cut).
    async fn until_rewatched(&self, watches_before: u64) {
        self.until_sim("every resource watching again", |m| {
            m.watch_requests >= watches_before + WATCHED && m.open_watches == WATCHED as i64
        })
        .await;
    }
}

impl Observer {
    /// Waits until the observer holds exactly `oracle`, then forgets the changes so far.
    async fn baseline(&mut self, oracle: &Model) {
        self.until("initial state", |o| o.in_syncs > 0 && o.state == *oracle)
            .await;
        self.forget_changes();
    }

    /// Waits until the observer's state is `oracle`.
    async fn converge(&mut self, oracle: &Model) {
        self.until("convergence on the API state", |o| o.state == *oracle)
            .await;
    }

    /// No dataplane flush: every change since the baseline is of a key in `touched`,
    /// and no key that still exists was deleted.
    fn assert_only(&self, who: &str, touched: &BTreeSet<Key>, oracle: &Model) {
        for u in &self.changes {
            assert!(
                touched.contains(&u.key),
                "{who}: received a change of {:?}, which did not change in the API",
                u.key
            );
            if u.value.is_none() {
                assert!(
                    !oracle.contains_key(&u.key),
                    "{who}: deleted {:?}, which still exists",
                    u.key
                );
            }
        }
        let received: BTreeSet<&Key> = self.changes.iter().map(|u| &u.key).collect();
        assert_eq!(
            received.len(),
            touched.len(),
            "{who}: not every real change arrived"
        );
    }
}

/// Ends with: hub = API state, every client and observer equal to it (digest too), and
/// each observer received only the `touched` keys since its baseline.
async fn finish(rig: &Rig, clients: ClientSet, observers: Vec<Observer>, touched: &BTreeSet<Key>) {
    let oracle = api_model(rig.store()).0;
    let mut stopped = Vec::new();
    for (i, mut o) in observers.into_iter().enumerate() {
        o.converge(&oracle).await;
        o.assert_only(&format!("observer {i}"), touched, &oracle);
        stopped.push(o.stop().await.0);
    }
    assert_eq!(rig.hub().len(), oracle.len());
    clients.wait_all(rig.hub().revision(), LIMIT).await.unwrap();
    for (i, mirror) in stopped.iter().enumerate() {
        assert_eq!(mirror.digest(), rig.hub().digest(), "observer {i} digest");
        assert!(
            mirror_model(mirror) == hashes(&oracle),
            "observer {i} mirror"
        );
    }
    assert_mirrors(clients, rig.hub(), &oracle).await;
}

/// Starts `n` observers through typha and waits until each holds the API state.
async fn observers(rig: &Rig, n: usize) -> Vec<Observer> {
    let oracle = api_model(rig.store()).0;
    let mut out = Vec::new();
    for i in 0..n {
        let config = rig.harness.sync_config(&format!("observer-{i}")).unwrap();
        let mut o = Observer::start(config).tolerating_disconnects();
        o.baseline(&oracle).await;
        out.push(o);
    }
    out
}

/// A started rig with 20 clients and two observers, all holding the API state; and that
/// state, the model before the test's writes.
async fn settled_rig() -> (Rig, ClientSet, Vec<Observer>, Model) {
    let rig = Rig::start().await;
    let clients = rig.harness.spawn_clients(20).unwrap();
    let observers = observers(&rig, 2).await;
    clients.wait_all(rig.hub().revision(), LIMIT).await.unwrap();
    let before = api_model(rig.store()).0;
    (rig, clients, observers, before)
}

// ---------------------------------------------------------------- a cuttable TCP hop

/// A TCP forwarder in front of typha that can cut its connections and refuse new ones,
/// so one client reconnects (with its resume position) when the test says so.
struct Hop {
    addr: SocketAddr,
    open: Arc<Mutex<Option<CancellationToken>>>,
    task: JoinHandle<()>,
}

impl Hop {
    async fn start(target: SocketAddr) -> Hop {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Mutex::new(Some(CancellationToken::new())));
        let gate = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(cut) = gate.lock().unwrap().clone() else {
                    continue; // closed: drop the connection
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Hop { addr, open, task }
    }

    /// Cuts every connection and refuses new ones.
    fn close(&self) {
        if let Some(cut) = self.open.lock().unwrap().take() {
            cut.cancel();
        }
    }

    /// Accepts connections again.
    fn reopen(&self) {
        *self.open.lock().unwrap() = Some(CancellationToken::new());
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        self.close();
        self.task.abort();
    }
}

// ---------------------------------------------------------------- the tests

/// (a) Watch connections cut five times while writes go on: typha resumes each watch
/// from its position (no relist), and clients receive exactly the real changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cuts_while_writing_deliver_only_real_changes() {
    let (rig, clients, observers, before) = settled_rig().await;
    let lists = rig.sim().metrics().snapshot().list_requests;

    let mut written = BTreeSet::new();
    for round in 0..5usize {
        let watches = rig.sim().metrics().snapshot().watch_requests;
        rig.sim().faults().cut_watches();
        written.insert(relabel_pod(rig.store(), round * 3, &format!("cut-{round}")).key);
        rig.until_rewatched(watches).await;
        written.insert(relabel_pod(rig.store(), round * 3 + 1, &format!("after-{round}")).key);
    }
    written.insert(delete_pod(rig.store(), 40).key);

    let touched: BTreeSet<Key> = changed_keys(&before, &api_model(rig.store()).0);
    assert_eq!(touched, written, "every write changed the model");
    let m = rig.sim().metrics().snapshot();
    assert_eq!(m.watch_cuts, 5);
    assert_eq!(
        m.list_requests, lists,
        "a cut watch resumes without relisting"
    );
    finish(&rig, clients, observers, &touched).await;
}

/// (b) A storm of 500/503/429 on every list and watch (with history compacted, so the
/// watchers must relist once it heals): typha keeps serving its last state (a client
/// joining mid-storm gets it), counts the upstream errors, and converges after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_storm_keeps_serving_then_converges() {
    counter_since_last("typha_upstream_watch_errors_total");
    let (rig, clients, observers, before) = settled_rig().await;
    // Start counting at the storm.
    counter_since_last("typha_upstream_watch_errors_total");
    let revision = rig.hub().revision();
    let digest = rig.hub().digest();

    let faults = rig.sim().faults();
    faults.fail_all(
        Target::Reads,
        vec![
            FaultKind::InternalError,
            FaultKind::ServiceUnavailable,
            FaultKind::TooManyRequests {
                retry_after_secs: 1,
            },
        ],
    );
    rig.sim().compact();
    faults.cut_watches();
    let changed = relabel_pod(rig.store(), 5, "during-storm");
    let deleted = delete_pod(rig.store(), 9);
    rig.until_sim("every resource failing at least twice", |m| {
        m.faults_injected >= 2 * WATCHED
    })
    .await;
    // Meanwhile typha serves its last state: a new client gets it, unchanged.
    let latecomer = rig.harness.spawn_clients(1).unwrap();
    latecomer.wait_all(revision, LIMIT).await.unwrap();
    assert_eq!(rig.hub().revision(), revision, "nothing reached typha");
    assert_eq!(rig.hub().digest(), digest);
    assert!(rig.hub().is_in_sync());
    let errors = counter_since_last("typha_upstream_watch_errors_total");
    assert!(
        errors >= WATCHED,
        "typha counted {errors} upstream errors for {WATCHED} failing watches"
    );

    let lists = rig.sim().metrics().snapshot().list_requests;
    faults.heal();
    rig.until_sim("every resource relisted and watching", |m| {
        m.list_requests >= lists + WATCHED && m.open_watches == WATCHED as i64
    })
    .await;
    let touched = changed_keys(&before, &api_model(rig.store()).0);
    assert_eq!(touched, BTreeSet::from([changed.key, deleted.key]));
    let mut clients = clients;
    clients.clients.extend(latecomer.clients);
    finish(&rig, clients, observers, &touched).await;
}

/// (c) A 410 storm: five rounds of compaction + cut (and injected 410s on the watch
/// restarts), each forcing every resource to relist, with writes in between: the relists
/// of unchanged objects reach clients as nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_storm_relists_without_flushing_clients() {
    let (rig, clients, observers, before) = settled_rig().await;
    let noops = rig.hub().stats().noop_updates_dropped;

    let mut written = BTreeSet::new();
    for round in 0..5usize {
        let m = rig.sim().metrics().snapshot();
        if round % 2 == 1 {
            // The watch restarts themselves are refused with 410 too.
            rig.sim()
                .faults()
                .fail_next(WATCHED, Target::Watches, FaultKind::Gone);
        }
        rig.sim().compact();
        rig.sim().faults().cut_watches();
        written.insert(relabel_pod(rig.store(), round * 2, &format!("gone-{round}")).key);
        let faults = if round % 2 == 1 { WATCHED } else { 0 };
        rig.until_sim("every resource relisted and watching", |now| {
            now.list_requests >= m.list_requests + WATCHED
                && now.open_watches == WATCHED as i64
                && now.faults_injected >= m.faults_injected + faults
        })
        .await;
    }
    assert_eq!(rig.sim().faults().active_rules(), 0);
    let touched = changed_keys(&before, &api_model(rig.store()).0);
    assert_eq!(touched, written);
    let objects = api_model(rig.store()).0.len() as u64;
    finish(&rig, clients, observers, &touched).await;
    assert!(
        rig.hub().stats().noop_updates_dropped >= noops + objects,
        "relists did not reach typha"
    );
}

/// (d) kube-sim restarts with a fresh history (every resourceVersion lower than before)
/// and one change made while it was down. typha's watchers, resuming from positions the
/// new server never issued (504 "Too large resource version"), must relist: clients
/// converge with only that change, follow a change made afterwards, and a client that
/// was disconnected across the restart resumes with its old position and ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_fresh_history_converges_with_only_the_real_change() {
    let mut rig = Rig::start().await;
    let clients = rig.harness.spawn_clients(10).unwrap();
    let mut observers = observers(&rig, 1).await;
    let hop = Hop::start(rig.harness.typha.grpc_addr).await;
    let mut config = SyncConfig::new("behind-hop", vec![hop.addr.to_string()]);
    config.tls = rig.harness.client_tls().unwrap();
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    let mut returning = Observer::start(config).tolerating_disconnects();
    let before = api_model(rig.store()).0;
    returning.baseline(&before).await;
    clients.wait_all(rig.hub().revision(), LIMIT).await.unwrap();
    let old_rv = rig.store().resource_version();
    let sessions = rig.hub().session_stats();

    // The returning client goes away across the restart, holding its position.
    hop.close();
    returning.until("the hop cut", |o| o.disconnects > 0).await;
    let fresh = rig.sim().fresh_store();
    let down_change = relabel_pod(&fresh, 4, "while-down");
    assert!(fresh.resource_version() < old_rv);
    let applied = rig.hub().stats().updates_applied;
    let sim = rig.sim.take().unwrap();
    rig.sim = Some(sim.restart_with(Arc::new(fresh)).await.unwrap());

    observers[0].converge(&api_model(rig.store()).0).await;
    // (Revisions may also grow by empty progress batches, from bookmarks.)
    assert_eq!(
        rig.hub().stats().updates_applied,
        applied + 1,
        "one change while down, one update"
    );
    rig.until_sim("every resource watching the new server", |m| {
        m.open_watches == WATCHED as i64
    })
    .await;
    // Every resource listed the new server (a watch at an old position would get 504
    // "Too large resource version"; typha relists on any failed watch start).
    assert!(rig.sim().metrics().snapshot().list_requests >= WATCHED);
    // The watches follow the new history.
    let after_change = relabel_pod(rig.store(), 6, "after-restart");
    observers[0].converge(&api_model(rig.store()).0).await;

    hop.reopen();
    observers.push(returning);
    let touched = changed_keys(&before, &api_model(rig.store()).0);
    assert_eq!(touched, BTreeSet::from([down_change.key, after_change.key]));
    finish(&rig, clients, observers, &touched).await;
    let stats = rig.hub().session_stats();
    assert!(
        stats.resumes_same_replica > sessions.resumes_same_replica
            || stats.resume_refusals > sessions.resume_refusals,
        "the returning client neither resumed nor was refused"
    );
}
