//! The namespace finalizer: a namespace whose deletion was requested (it carries
//! `metadata.deletionTimestamp` and `status.phase: Terminating`, see
//! [`crate::lifecycle`]) loses its contents and then disappears, the two phases
//! `kubectl delete namespace` observes.

use serde_json::Value;

use crate::controllers::Ids;
use crate::store::Store;

/// Finishes the deletion of namespace `name` if it is terminating.
pub fn reconcile(store: &Store, ids: Ids, name: &str) {
    let Some(ns) = store.get(ids.namespaces, "", name) else {
        return;
    };
    let v = ns.value();
    if v.pointer("/metadata/deletionTimestamp").is_none() {
        return;
    }
    let blocked = v
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if blocked {
        // Someone else's finalizer: wait until its owner removes it.
        return;
    }
    // Deleting a namespace object deletes its contents first (one atomic store write).
    if let Err(error) = store.delete(ids.namespaces, "", name, None) {
        tracing::debug!(%error, name, "namespace controller: delete failed");
    }
}
