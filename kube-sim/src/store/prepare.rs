//! Server-managed fields of a write: what the store fills in or keeps on a create and an
//! update before the object is committed.
//!
//! Invariants: the object carries its type's `apiVersion` and `kind`; `name`, `namespace`
//! (namespaced kinds only), `uid` and `creationTimestamp` never change after the create;
//! `generation` starts at 1 and grows only when the spec part changes; `managedFields`
//! is never stored. A refused write returns an [`ApiError`] and changes nothing stored.

use serde_json::{Map, Value, json};

use super::WriteScope;
use crate::error::ApiError;
use crate::object::{StoredObject, generate_name, metadata_mut, new_uid, now_rfc3339, spec_part};
use crate::resources::ResourceType;

/// Fills server-managed metadata for a create; returns the namespace ("" if cluster-scoped).
pub(super) fn prepare_create(
    t: &ResourceType,
    url_ns: Option<&str>,
    obj: &mut Value,
) -> Result<String, ApiError> {
    require_object(obj)?;
    stamp_type(t, obj);
    let meta = metadata_mut(obj);
    let ns = create_namespace(t, url_ns, meta)?;
    let name = create_name(meta)?;
    crate::validate::validate_name(t, &name)?;
    meta.insert("name".into(), Value::String(name));
    meta.insert("uid".into(), Value::String(new_uid()));
    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    crate::defaults::namespace_label(t, meta);
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("managedFields");
    Ok(ns)
}

/// Builds the stored form of an update from the old object and the requested one.
pub(super) fn prepare_update(
    t: &ResourceType,
    old: &StoredObject,
    old_value: Value,
    mut new: Value,
    scope: WriteScope,
) -> Result<Value, ApiError> {
    require_object(&new)?;
    check_update_target(t, old, metadata_mut(&mut new))?;
    let mut merged = merge_scope(t, &old_value, new, scope);
    let old_meta = old_value.get("metadata").cloned().unwrap_or_default();
    let generation = old_meta
        .get("generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let bump = spec_part(&merged) != spec_part(&old_value);
    stamp_type(t, &mut merged);
    let meta = metadata_mut(&mut merged);
    keep_identity(t, old, &old_meta, meta, scope);
    meta.insert(
        "generation".into(),
        json!(if bump { generation + 1 } else { generation }),
    );
    meta.insert("resourceVersion".into(), Value::String(old.rv.to_string()));
    meta.remove("managedFields");
    Ok(merged)
}

/// Refuses a request body that is not a JSON object.
fn require_object(obj: &Value) -> Result<(), ApiError> {
    if obj.is_object() {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ))
    }
}

/// Sets `apiVersion` and `kind` to the type's own.
fn stamp_type(t: &ResourceType, obj: &mut Value) {
    if let Value::Object(o) = obj {
        o.insert("apiVersion".into(), Value::String(t.api_version()));
        o.insert("kind".into(), Value::String(t.kind.clone()));
    }
}

/// The namespace of a new object: the URL's, else the body's, else "default" (a
/// mismatch is refused); "" for cluster-scoped kinds, whose body namespace is dropped.
fn create_namespace(
    t: &ResourceType,
    url_ns: Option<&str>,
    meta: &mut Map<String, Value>,
) -> Result<String, ApiError> {
    if !t.namespaced {
        meta.remove("namespace");
        return Ok(String::new());
    }
    let body_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let ns = match (url_ns, body_ns) {
        (Some(u), Some(b)) if u != b => {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        (Some(u), _) => u.to_string(),
        (None, Some(b)) => b,
        (None, None) => "default".to_string(),
    };
    meta.insert("namespace".into(), Value::String(ns.clone()));
    Ok(ns)
}

/// The name of a new object: `metadata.name`, else one made from `generateName`.
fn create_name(meta: &Map<String, Value>) -> Result<String, ApiError> {
    let non_empty = |field: &str| {
        meta.get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (non_empty("name"), non_empty("generateName")) {
        (Some(n), _) => Ok(n.to_string()),
        (None, Some(prefix)) => Ok(generate_name(prefix)),
        (None, None) => Err(ApiError::Invalid(
            "metadata.name: Required value: name or generateName is required".into(),
        )),
    }
}

/// Refuses an update whose body names another object (400) or carries a stale
/// `resourceVersion` (409).
fn check_update_target(
    t: &ResourceType,
    old: &StoredObject,
    meta: &Map<String, Value>,
) -> Result<(), ApiError> {
    if let Some(n) = meta.get("name").and_then(Value::as_str)
        && n != old.name
    {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({n}) does not match the name on the URL ({})",
            old.name
        )));
    }
    if let Some(rv) = meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        && rv != old.rv.to_string()
    {
        return Err(ApiError::conflict(&t.qualified_plural(), &old.name));
    }
    Ok(())
}

/// The requested object limited to what `scope` may change: a status write takes only
/// `.status`; a main write keeps the old `.status` when the kind has the subresource.
fn merge_scope(t: &ResourceType, old_value: &Value, mut new: Value, scope: WriteScope) -> Value {
    match scope {
        WriteScope::Status => {
            let mut base = old_value.clone();
            if let (Value::Object(b), Some(s)) = (&mut base, new.get("status")) {
                b.insert("status".into(), s.clone());
            }
            base
        }
        WriteScope::Full => new,
        WriteScope::Main => {
            if t.status_subresource
                && let Value::Object(n) = &mut new
            {
                match old_value.get("status") {
                    Some(s) => n.insert("status".into(), s.clone()),
                    None => n.remove("status"),
                };
            }
            new
        }
    }
}

/// Puts back the fields an update may not change: name, namespace, uid, creation time
/// and (unless the write is `Full`) the deletion marks.
fn keep_identity(
    t: &ResourceType,
    old: &StoredObject,
    old_meta: &Value,
    meta: &mut Map<String, Value>,
    scope: WriteScope,
) {
    meta.insert("name".into(), Value::String(old.name.clone()));
    if t.namespaced {
        meta.insert("namespace".into(), Value::String(old.namespace.clone()));
    } else {
        meta.remove("namespace");
    }
    crate::defaults::namespace_label(t, meta);
    let kept: &[&str] = if scope == WriteScope::Full {
        &["uid", "creationTimestamp"]
    } else {
        &[
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ]
    };
    for k in kept.iter().copied() {
        match old_meta.get(k) {
            Some(v) => meta.insert(k.into(), v.clone()),
            None => meta.remove(k),
        };
    }
}
