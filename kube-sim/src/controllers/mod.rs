//! The simulated control plane: a scheduler and kubelet for pods (see [`kubelet`]), a
//! Deployment -> ReplicaSet -> Pod controller with owner-reference garbage collection
//! (see [`deployment`]) and the namespace finalizer (see [`namespace`]), like kwok.
//!
//! One task follows the store's change history (the same history watches read) from a
//! snapshot position and reconciles the objects the events name, reading each object's
//! *current* state before writing (level-triggered per object, so a stale or repeated
//! event is harmless). Its own writes come back as events and settle because every write
//! is idempotent (an unchanged object produces no event). Invariants:
//! - only pods lacking `spec.nodeName` are scheduled and only bound pods lacking
//!   `status.podIP` get an address: pods written with an address (seeding, the load
//!   test's churn) are never changed, their addresses are only recorded as taken;
//! - an address is owned by at most one live pod and is released when the pod goes.
//!
//! If the history is compacted past the follower's position it resynchronises from a
//! full snapshot (the same recovery a client performs after a 410).

pub mod deployment;
pub mod ipam;
pub mod kubelet;
pub mod namespace;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::object::{ObjectKey, StoredObject};
use crate::resources::ResourceId;
use crate::store::{Event, EventKind, Store};

/// Events read from the history per batch.
const BATCH: usize = 2_000;

/// The resource ids the controllers act on.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    /// `pods`.
    pub pods: ResourceId,
    /// `nodes`.
    pub nodes: ResourceId,
    /// `namespaces`.
    pub namespaces: ResourceId,
    /// `apps/v1 deployments`.
    pub deployments: ResourceId,
    /// `apps/v1 replicasets`.
    pub replicasets: ResourceId,
}

impl Ids {
    /// Looks the ids up in `store`'s registry (None if a built-in kind is missing).
    pub fn new(store: &Store) -> Option<Ids> {
        let id = |g: &str, p: &str| store.resolve_path(g, "v1", p).map(|(id, _)| id);
        Some(Ids {
            pods: id("", "pods")?,
            nodes: id("", "nodes")?,
            namespaces: id("", "namespaces")?,
            deployments: id("apps", "deployments")?,
            replicasets: id("apps", "replicasets")?,
        })
    }
}

/// Keys to reconcile, collected from a batch of events.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Pods.
    pub pods: BTreeSet<ObjectKey>,
    /// ReplicaSets.
    pub replicasets: BTreeSet<ObjectKey>,
    /// Deployments.
    pub deployments: BTreeSet<ObjectKey>,
    /// Namespaces (name in the second slot).
    pub namespaces: BTreeSet<ObjectKey>,
    /// A node changed or a pod went (freeing an address): pending pods may now fit.
    pub capacity_changed: bool,
}

/// The controller-owner (`ownerReferences[controller=true]`) kind and name of an object.
pub fn controller_of(v: &Value) -> Option<(String, String)> {
    v.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|r| {
            Some((
                r.get("kind")?.as_str()?.to_string(),
                r.get("name")?.as_str()?.to_string(),
            ))
        })
}

/// Starts the controllers on the current runtime; they stop when `shutdown` fires.
pub fn spawn(store: Arc<Store>, shutdown: CancellationToken) -> Option<JoinHandle<()>> {
    let ids = Ids::new(&store)?;
    Some(tokio::spawn(async move {
        tokio::select! {
            _ = run(store, ids) => {}
            _ = shutdown.cancelled() => {}
        }
    }))
}

async fn run(store: Arc<Store>, ids: Ids) {
    let mut changes = store.subscribe();
    let mut kubelet = kubelet::Kubelet::new(ids);
    let mut pos = resync(&store, &mut kubelet);
    loop {
        changes.borrow_and_update();
        let (events, scanned) = match store.events_after(pos, BATCH, |e| relevant(ids, e)) {
            Ok(batch) => batch,
            Err(_) => {
                pos = resync(&store, &mut kubelet);
                continue;
            }
        };
        let mut dirty = Dirty::default();
        for e in &events {
            note(ids, e, &mut kubelet, &mut dirty);
        }
        pos = scanned;
        reconcile(&store, ids, &mut kubelet, dirty);
        if scanned < store.resource_version() {
            // More history to read (a full batch, or our own writes): go on at once.
            tokio::task::yield_now().await;
            continue;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Rebuilds the kubelet's view from a snapshot; every object is reconsidered.
fn resync(store: &Store, kubelet: &mut kubelet::Kubelet) -> u64 {
    let rv = store.resource_version();
    let mut dirty = Dirty::default();
    kubelet.reset();
    let ids = kubelet.ids();
    let (nodes, _) = store.snapshot(ids.nodes, &Default::default());
    for n in &nodes {
        kubelet.node_seen(&n.value());
    }
    let (pods, _) = store.snapshot(ids.pods, &Default::default());
    for p in &pods {
        if kubelet.pod_seen(p, &p.value()) {
            dirty.pods.insert(p.key());
        }
    }
    for (rid, set) in [
        (ids.replicasets, &mut dirty.replicasets),
        (ids.deployments, &mut dirty.deployments),
        (ids.namespaces, &mut dirty.namespaces),
    ] {
        let (objs, _) = store.snapshot(rid, &Default::default());
        set.extend(objs.iter().map(|o| o.key()));
    }
    reconcile(store, ids, kubelet, dirty);
    rv
}

fn relevant(ids: Ids, e: &Event) -> bool {
    let r = e.obj.resource;
    r == ids.pods
        || r == ids.nodes
        || r == ids.namespaces
        || r == ids.deployments
        || r == ids.replicasets
}

/// Records what one event means for the controllers.
fn note(ids: Ids, e: &Event, kubelet: &mut kubelet::Kubelet, dirty: &mut Dirty) {
    let obj: &StoredObject = &e.obj;
    let value = obj.value();
    let r = obj.resource;
    if r == ids.pods {
        if e.kind == EventKind::Deleted {
            kubelet.pod_gone(obj);
            dirty.capacity_changed = true;
        } else if kubelet.pod_seen(obj, &value) {
            dirty.pods.insert(obj.key());
        }
        if let Some((kind, name)) = controller_of(&value)
            && kind == "ReplicaSet"
        {
            dirty.replicasets.insert((obj.namespace.clone(), name));
        }
    } else if r == ids.nodes {
        if e.kind == EventKind::Deleted {
            kubelet.node_gone(&obj.name);
        } else {
            kubelet.node_seen(&value);
        }
        dirty.capacity_changed = true;
    } else if r == ids.replicasets {
        dirty.replicasets.insert(obj.key());
        if let Some((kind, name)) = controller_of(&value)
            && kind == "Deployment"
        {
            dirty.deployments.insert((obj.namespace.clone(), name));
        }
    } else if r == ids.deployments {
        dirty.deployments.insert(obj.key());
    } else if r == ids.namespaces && e.kind != EventKind::Deleted {
        dirty.namespaces.insert(obj.key());
    }
}

fn reconcile(store: &Store, ids: Ids, kubelet: &mut kubelet::Kubelet, mut dirty: Dirty) {
    for key in &dirty.namespaces {
        namespace::reconcile(store, ids, &key.1);
    }
    for key in &dirty.deployments {
        deployment::reconcile_deployment(store, ids, key);
    }
    for key in &dirty.replicasets {
        deployment::reconcile_replicaset(store, ids, key);
    }
    if dirty.capacity_changed {
        dirty.pods.extend(kubelet.take_pending());
    }
    for key in &dirty.pods {
        kubelet.reconcile_pod(store, key);
    }
}
