//! The API-state oracle shared by the upstream tests (`kube_upstream.rs`,
//! `faults_upstream.rs`, `kubectl_deployment.rs`): typha watching a kube-sim, kube-sim's
//! stored objects converted to the model through the upstream's own conversion, mirrors
//! as models, the end-of-test mirror check, and [`Observer`]: a sync client whose events
//! are folded into a model.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use felix_client::{Mirror, SyncClient, SyncConfig, SyncEvent, SyncStatus};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use kube_sim::{KubeSim, SeedConfig, Store};
use loadtest::harness::{ClientSet, Harness, TyphaSpec};
use netmodel::UpstreamConfig;
use netmodel::crd::{
    CalicoObject, ClusterInformation, FelixConfiguration, GlobalNetworkPolicy, GlobalNetworkSet,
    HostEndpoint, IPPool, NetworkPolicy, NetworkSet,
};
use netmodel::{ToModel, convert};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use typha::app::Upstream;
use typha::hub::Hub;
use typha_proto::digest::EntryHash;
use typha_proto::{Digest, Key, Revision, Update, Value};

/// A kube-sim seeded with `seed` that sends no bookmarks within a test: their progress
/// batches (empty deltas) would make revisions count more than the changes the tests
/// make. Installs the ring provider and the test logs first.
pub async fn start_unbookmarked_sim(seed: &SeedConfig) -> KubeSim {
    let _ = rustls::crypto::ring::default_provider().install_default();
    testkit::test_logs();
    let config = kube_sim::Config {
        bookmark_interval: Duration::from_secs(3600),
        ..kube_sim::Config::default()
    };
    let sim = KubeSim::start(config).await.unwrap();
    kube_sim::seed(sim.store(), seed).unwrap();
    sim
}

/// typha (in-process, the harness's mutual TLS) watching the API through `client`, once
/// its upstream is in sync (panics after `limit`).
pub async fn typha_watching(client: kube::Client, limit: Duration) -> Harness {
    let upstream = Upstream::Kube {
        client,
        config: UpstreamConfig::default(),
    };
    let harness = Harness::start_with(TyphaSpec::default(), upstream)
        .await
        .unwrap();
    tokio::time::timeout(limit, harness.typha.hub.wait_in_sync())
        .await
        .expect("typha never in sync");
    harness
}

/// The cluster's state as model keys and values.
pub type Model = BTreeMap<Key, Value>;

/// The model of one stored object, through the upstream's conversion.
pub fn model_of<T>(obj: &Json) -> Update
where
    T: DeserializeOwned + ToModel + kube::Resource,
{
    let typed: T = serde_json::from_value(obj.clone()).unwrap();
    convert(&typed).unwrap_or_else(|r| panic!("fixture rejected: {r}"))
}

fn add_kind<T>(store: &Store, api_version: &str, kind: &str, model: &mut Model) -> usize
where
    T: DeserializeOwned + ToModel + kube::Resource,
{
    let objects = store.list_objects(api_version, kind);
    for obj in &objects {
        let update = model_of::<T>(obj);
        if let Some(value) = update.value {
            model.insert(update.key, value);
        }
    }
    objects.len()
}

/// The API's whole state as the model, and the number of stored objects it came from.
pub fn api_model(store: &Store) -> (Model, usize) {
    let mut m = Model::new();
    let crd = "crd.projectcalico.org/v1";
    let objects = add_kind::<Pod>(store, "v1", "Pod", &mut m)
        + add_kind::<Namespace>(store, "v1", "Namespace", &mut m)
        + add_kind::<ServiceAccount>(store, "v1", "ServiceAccount", &mut m)
        + add_kind::<Node>(store, "v1", "Node", &mut m)
        + add_kind::<K8sNetworkPolicy>(store, "networking.k8s.io/v1", "NetworkPolicy", &mut m)
        + add_kind::<CalicoObject<NetworkPolicy>>(store, crd, "NetworkPolicy", &mut m)
        + add_kind::<CalicoObject<GlobalNetworkPolicy>>(store, crd, "GlobalNetworkPolicy", &mut m)
        + add_kind::<CalicoObject<GlobalNetworkSet>>(store, crd, "GlobalNetworkSet", &mut m)
        + add_kind::<CalicoObject<NetworkSet>>(store, crd, "NetworkSet", &mut m)
        + add_kind::<CalicoObject<HostEndpoint>>(store, crd, "HostEndpoint", &mut m)
        + add_kind::<CalicoObject<IPPool>>(store, crd, "IPPool", &mut m)
        + add_kind::<CalicoObject<FelixConfiguration>>(store, crd, "FelixConfiguration", &mut m)
        + add_kind::<CalicoObject<ClusterInformation>>(store, crd, "ClusterInformation", &mut m);
    (m, objects)
}

/// What a mirror holds: each key's entry hash.
pub type Hashes = BTreeMap<Key, EntryHash>;

/// A mirror's entries (the compact mirror keeps each key's entry hash, not its value).
pub fn mirror_model(mirror: &Mirror) -> Hashes {
    mirror.iter().collect()
}

/// The entry hashes of `model`, to compare with [`mirror_model`].
pub fn hashes(model: &Model) -> Hashes {
    model
        .iter()
        .map(|(k, v)| {
            let update = Update {
                key: k.clone(),
                value: Some(v.clone()),
            };
            (k.clone(), EntryHash::of(&update.encode()))
        })
        .collect()
}

/// The stored pods that are endpoints (not host-networked), in key order.
pub fn endpoint_pods(store: &Store) -> Vec<Json> {
    store
        .list_objects("v1", "Pod")
        .into_iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .collect()
}

/// Stops `clients` and checks every mirror against the oracle and the hub's digest.
pub async fn assert_mirrors(clients: ClientSet, hub: &Hub, oracle: &Model) {
    for (i, client) in clients.clients.iter().enumerate() {
        assert_eq!(
            client.status.digest_mismatches.load(Ordering::Relaxed),
            0,
            "client {i}"
        );
    }
    let mirrors = clients.stop().await.unwrap();
    for (i, mirror) in mirrors.iter().enumerate() {
        assert_eq!(mirror.digest(), hub.digest(), "client {i} digest");
        assert_eq!(mirror.revision(), hub.revision(), "client {i} revision");
        assert!(
            mirror_model(mirror) == hashes(oracle),
            "client {i}: mirror differs from the API state"
        );
    }
}

/// Applies one change to `model`.
pub fn apply(model: &mut Model, update: &Update) {
    match &update.value {
        Some(v) => model.insert(update.key.clone(), v.clone()),
        None => model.remove(&update.key),
    };
}

/// The next event of a client before `deadline`; panics naming `what` when the deadline
/// passes or the client stopped.
pub async fn next_event(
    events: &mut mpsc::Receiver<SyncEvent>,
    deadline: Instant,
    what: &str,
) -> SyncEvent {
    tokio::time::timeout_at(deadline, events.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("client stopped while waiting for {what}"))
}

/// How long an [`Observer`] waits for an event before the test fails (only turns a hang
/// into a failure).
pub const OBSERVER_LIMIT: Duration = Duration::from_secs(120);

/// A sync client whose events are folded into a model, so that a test can wait for a
/// state, and recorded (since [`Observer::forget_changes`]).
pub struct Observer {
    /// The client's counters.
    pub status: Arc<SyncStatus>,
    events: mpsc::Receiver<SyncEvent>,
    /// The model the events so far amount to.
    pub state: Model,
    /// InSync events received.
    pub in_syncs: u64,
    /// The last InSync event: (revision, digest, keys).
    pub last_in_sync: Option<(Revision, Digest, usize)>,
    /// Disconnections seen; without [`Observer::tolerating_disconnects`] one fails the
    /// test.
    pub disconnects: u64,
    tolerate_disconnects: bool,
    /// Every change received since [`Observer::forget_changes`].
    pub changes: Vec<Update>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<Mirror>>,
}

impl Observer {
    /// A felix-client sync client with `config`.
    pub fn start(config: SyncConfig) -> Observer {
        let client = SyncClient::new(config);
        Observer::spawn(client.status(), |tx, token| async move {
            Ok(client.run(tx, token).await?)
        })
    }

    /// An observer of the client `run` starts: `run` gets the event sender and the
    /// shutdown token, and reports through `status`.
    pub fn spawn<F>(
        status: Arc<SyncStatus>,
        run: impl FnOnce(mpsc::Sender<SyncEvent>, CancellationToken) -> F,
    ) -> Observer
    where
        F: Future<Output = anyhow::Result<Mirror>> + Send + 'static,
    {
        let (tx, events) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(tx, shutdown.clone()));
        Observer {
            status,
            events,
            state: Model::new(),
            in_syncs: 0,
            last_in_sync: None,
            disconnects: 0,
            tolerate_disconnects: false,
            changes: Vec::new(),
            shutdown,
            task,
        }
    }

    /// Counts disconnections instead of failing on one.
    pub fn tolerating_disconnects(mut self) -> Observer {
        self.tolerate_disconnects = true;
        self
    }

    /// Consumes events until `done(self)` holds (panics, naming `what`, after
    /// [`OBSERVER_LIMIT`]).
    pub async fn until(&mut self, what: &str, done: impl Fn(&Observer) -> bool) {
        let deadline = Instant::now() + OBSERVER_LIMIT;
        while !done(self) {
            match next_event(&mut self.events, deadline, what).await {
                SyncEvent::Changes { updates, .. } => {
                    for u in updates {
                        apply(&mut self.state, &u);
                        self.changes.push(u);
                    }
                }
                SyncEvent::InSync {
                    revision,
                    digest,
                    keys,
                } => {
                    self.in_syncs += 1;
                    self.last_in_sync = Some((revision, digest, keys));
                }
                SyncEvent::Disconnected { reason } => {
                    assert!(self.tolerate_disconnects, "observer disconnected: {reason}");
                    self.disconnects += 1;
                }
            }
        }
    }

    /// Forgets the changes received so far.
    pub fn forget_changes(&mut self) {
        self.changes.clear();
    }

    /// Stops the client: its mirror and the observed model.
    pub async fn stop(self) -> (Mirror, Model) {
        self.shutdown.cancel();
        (self.task.await.unwrap().unwrap(), self.state)
    }
}
