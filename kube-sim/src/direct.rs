//! In-process object API for tests and the load test: create, update, delete and read
//! objects as JSON without HTTP, addressed by their `apiVersion` and `kind`.
//!
//! These go through the same store code as HTTP requests (same rv, history and watch
//! events); only the status-subresource split is relaxed: `upsert`/`replace` write the
//! whole object, status included.

use serde_json::Value;

use crate::error::ApiError;
use crate::object::StoredObject;
use crate::resources::{ResourceId, ResourceType};
use crate::store::{Store, WriteScope};

fn type_of(store: &Store, obj: &Value) -> Result<(ResourceId, ResourceType), ApiError> {
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    store.resolve_kind(api_version, kind)
}

fn ns_name(t: &ResourceType, obj: &Value) -> (String, String) {
    let meta = obj.get("metadata");
    let get = |k| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let ns = if t.namespaced {
        Some(get("namespace"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string())
    } else {
        String::new()
    };
    (ns, get("name"))
}

impl Store {
    /// Creates `obj` (its apiVersion/kind pick the resource); returns the stored object.
    pub fn create_object(&self, obj: Value) -> Result<Value, ApiError> {
        let (rid, t) = type_of(self, &obj)?;
        let (ns, _) = ns_name(&t, &obj);
        let ns = t.namespaced.then_some(ns.as_str());
        self.create(rid, ns, obj).map(|o| o.value())
    }

    /// Replaces `obj` whole (status included); a set `metadata.resourceVersion` must match.
    pub fn replace_object(&self, obj: Value) -> Result<Value, ApiError> {
        let (rid, t) = type_of(self, &obj)?;
        let (ns, name) = ns_name(&t, &obj);
        self.update(rid, &ns, &name, obj, WriteScope::Full)
            .map(|o| o.value())
    }

    /// Creates `obj`, or replaces the existing object whole, ignoring its resourceVersion.
    pub fn upsert_object(&self, mut obj: Value) -> Result<Value, ApiError> {
        let (rid, t) = type_of(self, &obj)?;
        let (ns, name) = ns_name(&t, &obj);
        if self.get(rid, &ns, &name).is_none() {
            let url_ns = t.namespaced.then_some(ns.as_str());
            return self.create(rid, url_ns, obj).map(|o| o.value());
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        self.update(rid, &ns, &name, obj, WriteScope::Full)
            .map(|o| o.value())
    }

    /// Deletes an object; `namespace` is ignored for cluster-scoped kinds.
    pub fn delete_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (rid, t) = self.resolve_kind(api_version, kind)?;
        let ns = if t.namespaced { namespace } else { "" };
        self.delete(rid, ns, name, None).map(|o| o.value())
    }

    /// The current object, if it exists.
    pub fn get_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let (rid, t) = self.resolve_kind(api_version, kind).ok()?;
        let ns = if t.namespaced { namespace } else { "" };
        self.get(rid, ns, name).map(|o| o.value())
    }

    /// Every current object of a kind, in key order.
    pub fn list_objects(&self, api_version: &str, kind: &str) -> Vec<Value> {
        self.list_stored(api_version, kind)
            .iter()
            .map(|o| o.value())
            .collect()
    }

    /// Every current object of a kind, as stored (cheap: no JSON parsing).
    pub fn list_stored(&self, api_version: &str, kind: &str) -> Vec<std::sync::Arc<StoredObject>> {
        match self.resolve_kind(api_version, kind) {
            Ok((rid, _)) => self.snapshot(rid, &Default::default()).0,
            Err(_) => Vec::new(),
        }
    }

    /// Starts or stops serving a kind (e.g. Calico's CRDs) by group and plural; stopping
    /// makes its URLs answer 404 as if the CRD were not installed. Objects are kept.
    pub fn set_served(&self, group: &str, plural: &str, served: bool) {
        self.state
            .write()
            .registry
            .set_served(group, plural, served);
    }
}
