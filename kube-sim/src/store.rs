//! The object store: every object of every kind, one global resourceVersion counter and a
//! bounded history of change events.
//!
//! Invariants (all under one `RwLock`, so a write and its event are atomic):
//! - `rv` only grows; each write takes the next value, stamps it into the object's
//!   `metadata.resourceVersion` and appends exactly one event with that rv.
//! - `history` holds every event with rv > `compacted`, in rv order (at most
//!   `history_limit` of them); older resourceVersions are "expired" (410).
//! - A failed request returns an [`ApiError`] before anything is modified.
//!
//! Watchers are woken through a `tokio::sync::watch` channel carrying the latest rv; they
//! read events from `history` themselves, so there are no per-watcher queues.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::object::{ObjectKey, StoredObject, metadata_mut};
use crate::resources::{Registry, ResourceId, ResourceType, from_crd};

mod prepare;

use prepare::{prepare_create, prepare_update};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventKind {
    /// The watch `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

/// One entry of the change history.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion of this change.
    pub rv: u64,
    /// What happened.
    pub kind: EventKind,
    /// The object after the change (for deletes: the last state, stamped with `rv`).
    pub obj: Arc<StoredObject>,
    /// The object before the change (None for adds).
    pub prev: Option<Arc<StoredObject>>,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteScope {
    /// The main resource: everything but `.status` when the kind has a status subresource.
    Main,
    /// The `/status` subresource: only `.status`.
    Status,
    /// Everything, status included (in-process library writes only).
    Full,
}

/// The type of `rid` and its current object `namespace/name`, or the 404 a client gets.
fn existing(
    st: &State,
    rid: ResourceId,
    namespace: &str,
    name: &str,
) -> Result<(ResourceType, Arc<StoredObject>), ApiError> {
    let t = st
        .registry
        .get(rid)
        .cloned()
        .ok_or_else(|| ApiError::NotFound("unknown resource".into()))?;
    let key = (namespace.to_string(), name.to_string());
    let old = st
        .objects
        .get(&rid)
        .and_then(|m| m.get(&key))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&t.qualified_plural(), name))?;
    Ok((t, old))
}

pub(crate) struct State {
    pub(crate) rv: u64,
    pub(crate) registry: Registry,
    pub(crate) objects: HashMap<ResourceId, BTreeMap<ObjectKey, Arc<StoredObject>>>,
    pub(crate) history: VecDeque<Event>,
    pub(crate) compacted: u64,
    history_limit: usize,
}

/// The in-memory datastore behind the API server (usable directly, without HTTP).
pub struct Store {
    pub(crate) state: RwLock<State>,
    notify: watch::Sender<u64>,
    disconnect: watch::Sender<u64>,
}

impl Store {
    /// An empty store keeping at most `history_limit` events; Calico kinds served if `calico_crds`.
    pub fn new(history_limit: usize, calico_crds: bool) -> Self {
        Store {
            state: RwLock::new(State {
                rv: 1,
                registry: Registry::new(calico_crds),
                objects: HashMap::new(),
                history: VecDeque::new(),
                compacted: 1,
                history_limit: history_limit.max(1),
            }),
            notify: watch::channel(1).0,
            disconnect: watch::channel(0).0,
        }
    }

    /// The current (latest issued) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.read().rv
    }

    /// A copy of the type registry.
    pub fn registry(&self) -> Registry {
        self.state.read().registry.clone()
    }

    /// The served type at group/version/plural.
    pub fn resolve_path(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<(ResourceId, ResourceType)> {
        let st = self.state.read();
        let id = st.registry.by_path(group, version, plural)?;
        st.registry.get(id).map(|t| (id, t.clone()))
    }

    /// The served type of an object (from its apiVersion and kind).
    pub fn resolve_kind(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ResourceId, ResourceType), ApiError> {
        let st = self.state.read();
        st.registry
            .by_kind(api_version, kind)
            .and_then(|id| st.registry.get(id).map(|t| (id, t.clone())))
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "the server could not find the requested resource ({api_version}, Kind={kind})"
                ))
            })
    }

    /// Wakes every watcher when a new rv is committed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Signals watchers to close their streams (see [`Store::disconnect_watches`]).
    pub(crate) fn subscribe_disconnect(&self) -> watch::Receiver<u64> {
        self.disconnect.subscribe()
    }

    /// Ends every open watch stream (clients then reconnect from their last rv).
    pub fn disconnect_watches(&self) {
        self.disconnect.send_modify(|g| *g += 1);
    }

    /// Drops the whole history and expires every resourceVersion issued so far: watches
    /// or Exact lists from any earlier rv, and outstanding continue tokens, get 410.
    pub fn compact(&self) {
        let rv = {
            let mut st = self.state.write();
            st.rv += 1;
            st.compacted = st.rv;
            st.history.clear();
            st.rv
        };
        self.notify.send_replace(rv);
    }

    /// The current object, if any.
    pub fn get(&self, rid: ResourceId, namespace: &str, name: &str) -> Option<Arc<StoredObject>> {
        let st = self.state.read();
        st.objects
            .get(&rid)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Creates an object. `namespace` is the URL's namespace (None: take it from the body).
    pub fn create(
        &self,
        rid: ResourceId,
        namespace: Option<&str>,
        obj: Value,
    ) -> Result<Arc<StoredObject>, ApiError> {
        self.create_with(rid, namespace, obj, false)
    }

    /// [`Store::create`]; with `dry_run` everything is checked and the would-be object
    /// returned, but nothing is stored.
    pub fn create_with(
        &self,
        rid: ResourceId,
        namespace: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let mut st = self.state.write();
        let t = st
            .registry
            .get(rid)
            .cloned()
            .ok_or_else(|| ApiError::NotFound("unknown resource".into()))?;
        let ns = prepare_create(&t, namespace, &mut obj)?;
        let name = metadata_mut(&mut obj)
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = (ns, name.clone());
        if st.objects.get(&rid).is_some_and(|m| m.contains_key(&key)) {
            return Err(ApiError::AlreadyExists(format!(
                "{} \"{name}\" already exists",
                t.qualified_plural()
            )));
        }
        if t.kind == "CustomResourceDefinition" {
            let crd = from_crd(&obj).ok_or_else(|| {
                ApiError::Invalid("spec: invalid CustomResourceDefinition".into())
            })?;
            if !dry_run {
                st.registry.register(crd);
            }
        }
        if dry_run {
            return Ok(Arc::new(StoredObject::new(rid, &obj, 0)));
        }
        let out = commit(&mut st, rid, EventKind::Added, obj, None);
        drop(st);
        self.notify.send_replace(out.rv);
        Ok(out)
    }

    /// Replaces an object (PUT). A non-empty `metadata.resourceVersion` must match (409).
    pub fn update(
        &self,
        rid: ResourceId,
        namespace: &str,
        name: &str,
        obj: Value,
        scope: WriteScope,
    ) -> Result<Arc<StoredObject>, ApiError> {
        self.modify(rid, namespace, name, |_old| Ok(obj), scope)
    }

    /// Read-modify-write of one object under the lock: `f` maps the current JSON to the
    /// desired JSON (used by PUT, all patch types and the library API).
    pub fn modify(
        &self,
        rid: ResourceId,
        namespace: &str,
        name: &str,
        f: impl FnOnce(Value) -> Result<Value, ApiError>,
        scope: WriteScope,
    ) -> Result<Arc<StoredObject>, ApiError> {
        self.modify_with(rid, namespace, name, f, scope, false)
    }

    /// [`Store::modify`]; with `dry_run` the would-be object is returned, not stored.
    pub fn modify_with(
        &self,
        rid: ResourceId,
        namespace: &str,
        name: &str,
        f: impl FnOnce(Value) -> Result<Value, ApiError>,
        scope: WriteScope,
        dry_run: bool,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let mut st = self.state.write();
        let (t, old) = existing(&st, rid, namespace, name)?;
        let old_value = old.value();
        let new = f(old_value.clone())?;
        let new = prepare_update(&t, &old, old_value.clone(), new, scope)?;
        if new == old_value {
            return Ok(old);
        }
        if dry_run {
            return Ok(Arc::new(StoredObject::new(rid, &new, old.rv)));
        }
        let out = commit(&mut st, rid, EventKind::Modified, new, Some(old));
        drop(st);
        self.notify.send_replace(out.rv);
        Ok(out)
    }

    /// Deletes an object, checking optional uid / resourceVersion preconditions. Deleting
    /// a namespace deletes its objects; deleting a CRD stops serving its kind.
    pub fn delete(
        &self,
        rid: ResourceId,
        namespace: &str,
        name: &str,
        preconditions: Option<&Value>,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let mut st = self.state.write();
        let (t, old) = existing(&st, rid, namespace, name)?;
        check_preconditions(&t, &old, preconditions)?;
        if t.kind == "Namespace" && t.group.is_empty() {
            delete_namespace_contents(&mut st, name);
        }
        if t.kind == "CustomResourceDefinition" {
            drop_crd_kind(&mut st, &old);
        }
        let out = commit(&mut st, rid, EventKind::Deleted, old.value(), Some(old));
        drop(st);
        self.notify.send_replace(out.rv);
        Ok(out)
    }
}

pub(crate) fn check_preconditions(
    t: &ResourceType,
    old: &StoredObject,
    pre: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(pre) = pre else { return Ok(()) };
    if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str)
        && rv != old.rv.to_string()
    {
        return Err(ApiError::conflict(&t.qualified_plural(), &old.name));
    }
    if let Some(uid) = pre.get("uid").and_then(Value::as_str)
        && old.value().pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
    {
        return Err(ApiError::Conflict(format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: different"
        )));
    }
    Ok(())
}

fn delete_namespace_contents(st: &mut State, ns: &str) {
    let namespaced: Vec<ResourceId> = st
        .registry
        .iter()
        .filter(|(_, t)| t.namespaced)
        .map(|(id, _)| id)
        .collect();
    for rid in namespaced {
        let victims: Vec<Arc<StoredObject>> = match st.objects.get(&rid) {
            Some(m) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|(k, _)| k.0 == ns)
                .map(|(_, o)| o.clone())
                .collect(),
            None => continue,
        };
        for old in victims {
            commit(st, rid, EventKind::Deleted, old.value(), Some(old));
        }
    }
}

fn drop_crd_kind(st: &mut State, crd: &StoredObject) {
    let v = crd.value();
    if let Some(t) = from_crd(&v) {
        for rid in st.registry.set_served(&t.group, &t.plural, false) {
            st.objects.remove(&rid);
        }
    }
}

/// Takes the next rv, stamps it, stores (or removes) the object and records the event.
pub(crate) fn commit(
    st: &mut State,
    rid: ResourceId,
    kind: EventKind,
    mut value: Value,
    prev: Option<Arc<StoredObject>>,
) -> Arc<StoredObject> {
    st.rv += 1;
    let rv = st.rv;
    metadata_mut(&mut value).insert("resourceVersion".into(), Value::String(rv.to_string()));
    let obj = Arc::new(StoredObject::new(rid, &value, rv));
    let map = st.objects.entry(rid).or_default();
    if kind == EventKind::Deleted {
        map.remove(&obj.key());
    } else {
        map.insert(obj.key(), obj.clone());
    }
    st.history.push_back(Event {
        rv,
        kind,
        obj: obj.clone(),
        prev,
    });
    while st.history.len() > st.history_limit {
        if let Some(e) = st.history.pop_front() {
            st.compacted = e.rv;
        }
    }
    obj
}
