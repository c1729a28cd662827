//! A minimal Deployment -> ReplicaSet -> Pod controller with owner-reference garbage
//! collection, enough for `kubectl create deployment`, `kubectl scale` and
//! `kubectl rollout status`.
//!
//! A Deployment owns one ReplicaSet per pod template, named `<deployment>-<hash>` (the
//! hash of the template, also the `pod-template-hash` label); the current one is scaled
//! to `spec.replicas` and older ones to zero at once (no surge/unavailability pacing).
//! A ReplicaSet creates or deletes pods (`generateName: <rs>-`) until the number of its
//! live pods matches. Deleting an owner deletes what it controls. Status fields are
//! recomputed from the owned objects each pass; condition timestamps are kept while a
//! condition is unchanged so a repeated pass writes nothing.

use serde_json::{Map, Value, json};

use crate::controllers::{Ids, controller_of};
use crate::list::Filter;
use crate::object::{ObjectKey, StoredObject, now_rfc3339};
use crate::store::{Store, WriteScope};

const HASH_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash` of a pod template (FNV-1a of its JSON, in a safe alphabet).
pub fn template_hash(template: &Value) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|d| HASH_ALPHABET[usize::from(d) % HASH_ALPHABET.len()] as char)
        .collect()
}

fn replicas(v: &Value) -> i64 {
    v.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn terminating(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some()
}

/// The live objects of `rid` in `ns` controlled by `kind/name`.
fn owned(
    store: &Store,
    rid: crate::resources::ResourceId,
    ns: &str,
    kind: &str,
    name: &str,
) -> Vec<Value> {
    let filter = Filter {
        namespace: Some(ns.to_string()),
        ..Default::default()
    };
    store
        .snapshot(rid, &filter)
        .0
        .iter()
        .map(|o: &std::sync::Arc<StoredObject>| o.value())
        .filter(|v| controller_of(v).is_some_and(|(k, n)| k == kind && n == name))
        .collect()
}

fn name_of(v: &Value) -> String {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!([{
        "apiVersion": api_version,
        "kind": kind,
        "name": name_of(owner),
        "uid": owner.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// A condition, keeping the previous timestamps if status and reason are unchanged.
fn condition(prev: &Value, kind: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let old = prev
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let now = now_rfc3339();
    let same = old.is_some_and(|c| c["status"] == status && c["reason"] == reason);
    let stamp = |k: &str| match old {
        Some(c) if same => c.get(k).cloned().unwrap_or(json!(now)),
        _ => json!(now),
    };
    json!({"type": kind, "status": status, "lastUpdateTime": stamp("lastUpdateTime"),
           "lastTransitionTime": stamp("lastTransitionTime"), "reason": reason, "message": message})
}

fn delete_all(store: &Store, rid: crate::resources::ResourceId, ns: &str, victims: &[Value]) {
    for v in victims {
        if let Err(error) = store.delete(rid, ns, &name_of(v), None) {
            tracing::debug!(%error, "controller: delete failed");
        }
    }
}

fn set_replicas(store: &Store, ids: Ids, ns: &str, rs: &str, n: i64) {
    let f = |mut cur: Value| {
        if let Some(spec) = cur.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("replicas".into(), json!(n));
        }
        Ok(cur)
    };
    if let Err(error) = store.modify(ids.replicasets, ns, rs, f, WriteScope::Full) {
        tracing::debug!(%error, rs, "deployment controller: scale failed");
    }
}

/// Makes the Deployment `key`'s ReplicaSets match it and refreshes its status.
pub fn reconcile_deployment(store: &Store, ids: Ids, key: &ObjectKey) {
    let (ns, name) = (key.0.as_str(), key.1.as_str());
    let sets = owned(store, ids.replicasets, ns, "Deployment", name);
    let Some(d) = store.get(ids.deployments, ns, name).map(|o| o.value()) else {
        delete_all(store, ids.replicasets, ns, &sets);
        return;
    };
    if terminating(&d) {
        return;
    }
    let want = replicas(&d);
    let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let rs_name = format!("{name}-{hash}");
    match sets.iter().find(|s| name_of(s) == rs_name) {
        None => create_replicaset(store, ids, &d, &rs_name, &hash, want),
        Some(rs) if replicas(rs) != want => set_replicas(store, ids, ns, &rs_name, want),
        Some(_) => {}
    }
    for old in sets
        .iter()
        .filter(|s| name_of(s) != rs_name && replicas(s) != 0)
    {
        set_replicas(store, ids, ns, &name_of(old), 0);
    }
    let sets = owned(store, ids.replicasets, ns, "Deployment", name);
    let status = deployment_status(&d, &sets, &rs_name, want);
    write_status(store, ids.deployments, ns, name, status);
}

/// The status of Deployment `d` whose current ReplicaSet is `rs_name`, from its sets.
fn deployment_status(d: &Value, sets: &[Value], rs_name: &str, want: i64) -> Value {
    let count = |v: &Value, k: &str| {
        v.pointer(&format!("/status/{k}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let sum = |k: &str| sets.iter().map(|s| count(s, k)).sum::<i64>();
    let updated = sets
        .iter()
        .find(|s| name_of(s) == rs_name)
        .map_or(0, |s| count(s, "replicas"));
    let (total, ready, available) = (
        sum("replicas"),
        sum("readyReplicas"),
        sum("availableReplicas"),
    );
    let complete = updated == want && total == want && available == want;
    let generation = d
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let prev = d
        .pointer("/status/conditions")
        .cloned()
        .unwrap_or(Value::Null);
    let (reason, msg) = if complete {
        (
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
        )
    } else {
        (
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_name}\" is progressing."),
        )
    };
    let min_ok = available >= want;
    let status = json!({
        "observedGeneration": generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (want - available).max(0),
        "conditions": [
            condition(&prev, "Available", min_ok,
                if min_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                if min_ok { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." }),
            condition(&prev, "Progressing", true, reason, &msg),
        ],
    });
    status
}

fn write_status(
    store: &Store,
    rid: crate::resources::ResourceId,
    ns: &str,
    name: &str,
    status: Value,
) {
    let f = |mut cur: Value| {
        if let Some(o) = cur.as_object_mut() {
            o.insert("status".into(), strip_zero(status));
        }
        Ok(cur)
    };
    if let Err(error) = store.modify(rid, ns, name, f, WriteScope::Full) {
        tracing::debug!(%error, name, "controller: status update failed");
    }
}

/// Drops zero counters, as the API server omits them (`omitempty`).
fn strip_zero(status: Value) -> Value {
    match status {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, v)| k == "replicas" || v.as_i64() != Some(0))
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

fn create_replicaset(store: &Store, ids: Ids, d: &Value, rs_name: &str, hash: &str, want: i64) {
    let ns = d
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let mut template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert("pod-template-hash".into(), json!(hash));
    if let Some(meta) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("labels".into(), Value::Object(labels.clone()));
    } else if let Some(t) = template.as_object_mut() {
        t.insert("metadata".into(), json!({"labels": labels}));
    }
    let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    if let Some(s) = selector.as_object_mut() {
        let ml = s.entry("matchLabels").or_insert_with(|| json!({}));
        if let Some(ml) = ml.as_object_mut() {
            ml.insert("pod-template-hash".into(), json!(hash));
        }
    }
    let rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                     "ownerReferences": owner_ref(d, "apps/v1", "Deployment")},
        "spec": {"replicas": want, "selector": selector, "template": template},
    });
    if let Err(error) = store.create(ids.replicasets, Some(ns), rs) {
        tracing::debug!(%error, rs_name, "deployment controller: create failed");
    }
}

fn pod_ready(v: &Value) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Creates or deletes the ReplicaSet `key`'s pods to match it and refreshes its status.
pub fn reconcile_replicaset(store: &Store, ids: Ids, key: &ObjectKey) {
    let (ns, name) = (key.0.as_str(), key.1.as_str());
    let mut pods: Vec<Value> = owned(store, ids.pods, ns, "ReplicaSet", name)
        .into_iter()
        .filter(|p| !terminating(p))
        .collect();
    let Some(rs) = store.get(ids.replicasets, ns, name).map(|o| o.value()) else {
        delete_all(store, ids.pods, ns, &pods);
        return;
    };
    if terminating(&rs) {
        return;
    }
    let want = usize::try_from(replicas(&rs)).unwrap_or(0);
    if pods.len() < want {
        for _ in pods.len()..want {
            create_pod(store, ids, &rs, ns, name);
        }
        pods = owned(store, ids.pods, ns, "ReplicaSet", name);
    } else if pods.len() > want {
        // Unready pods go first, then the newest.
        pods.sort_by_key(|p| {
            let rv: u64 = p
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (pod_ready(p), std::cmp::Reverse(rv))
        });
        let extra = pods.len() - want;
        delete_all(store, ids.pods, ns, &pods[..extra]);
        pods.drain(..extra);
    }
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
    });
    write_status(store, ids.replicasets, ns, name, status);
}

fn create_pod(store: &Store, ids: Ids, rs: &Value, ns: &str, rs_name: &str) {
    let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut meta = template
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    meta.insert("generateName".into(), json!(format!("{rs_name}-")));
    meta.insert("namespace".into(), json!(ns));
    meta.insert(
        "ownerReferences".into(),
        owner_ref(rs, "apps/v1", "ReplicaSet"),
    );
    meta.remove("name");
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    });
    if let Err(error) = store.create(ids.pods, Some(ns), pod) {
        tracing::debug!(%error, rs_name, "replicaset controller: pod create failed");
    }
}

/// `propagationPolicy: Orphan`: before a Deployment or ReplicaSet `owner` is deleted, its
/// ReplicaSets or pods drop their owner reference to it, so the garbage collection of
/// this module leaves them alone.
pub fn orphan_dependents(store: &Store, t: &crate::resources::ResourceType, owner: &Value) {
    let dependents = match (t.group.as_str(), t.kind.as_str()) {
        ("apps", "Deployment") => ("apps", "replicasets"),
        ("apps", "ReplicaSet") => ("", "pods"),
        _ => return,
    };
    let Some((rid, _)) = store.resolve_path(dependents.0, "v1", dependents.1) else {
        return;
    };
    let ns = owner
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let uid = owner
        .pointer("/metadata/uid")
        .cloned()
        .unwrap_or(Value::Null);
    let kind = t.kind.as_str();
    for dep in owned(store, rid, ns, kind, &name_of(owner)) {
        let drop_ref = |mut cur: Value| {
            if let Some(refs) = cur
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r["uid"] != uid);
            }
            Ok(cur)
        };
        if let Err(error) = store.modify(rid, ns, &name_of(&dep), drop_ref, WriteScope::Full) {
            tracing::debug!(%error, "orphaning failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_is_stable_and_label_safe() {
        let a = template_hash(&json!({"spec": {"containers": [{"image": "nginx"}]}}));
        let b = template_hash(&json!({"spec": {"containers": [{"image": "nginx:2"}]}}));
        assert_eq!(
            a,
            template_hash(&json!({"spec": {"containers": [{"image": "nginx"}]}}))
        );
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| HASH_ALPHABET.contains(&c)));
    }

    #[test]
    fn unchanged_condition_keeps_its_timestamps() {
        let prev = json!([{"type": "Available", "status": "True", "reason": "R",
                           "lastUpdateTime": "t0", "lastTransitionTime": "t0"}]);
        let c = condition(&prev, "Available", true, "R", "m");
        assert_eq!(c["lastTransitionTime"], "t0");
        let c = condition(&prev, "Available", false, "R2", "m");
        assert_ne!(c["lastTransitionTime"], "t0");
    }
}
