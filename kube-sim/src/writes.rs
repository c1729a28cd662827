//! Write verbs: create, update, patch (merge, strategic, JSON patch, apply) and delete,
//! with what the API server does around them: body decoding (JSON, YAML, protobuf; 415
//! for anything else), `fieldValidation`, defaults, `dryRun=All`, finalizers and
//! graceful namespace deletion, the `scale` subresource and the self-subject reviews.
//!
//! Every check runs before the store is touched (the store applies a write atomically
//! or not at all), so a rejected request leaves the stored state unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::defaults;
use crate::error::ApiError;
use crate::http::{App, ResourcePath};
use crate::object::{StoredObject, metadata_mut, now_rfc3339};
use crate::patch::{merge_patch, strategic_merge_patch};
use crate::protobuf::{self, ProtoError};
use crate::store::{Store, WriteScope};
use crate::validate::{FieldValidation, check_fields};

/// The largest request body accepted (the API server's limit: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A successful write: HTTP code, the object, warnings for the `Warning` header.
pub type Written = (StatusCode, Value, Vec<String>);

/// Per-request write options from the query.
#[derive(Debug, Clone, Copy)]
pub struct WriteOpts {
    /// `dryRun=All`: check and answer, store nothing.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub validation: FieldValidation,
}

impl WriteOpts {
    /// Parses `dryRun` and `fieldValidation`.
    pub fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let dry_run = match q.get("dryRun").map(String::as_str) {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "Invalid dry run value: {other}: supported values: \"All\""
                )));
            }
        };
        let validation = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
        Ok(WriteOpts {
            dry_run,
            validation,
        })
    }
}

fn mime(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Decodes a create/update body by its content type.
pub fn decode_object(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    match mime(content_type) {
        "" | "application/json" => serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
        }),
        "application/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("yaml parse error: {e}"))),
        "application/vnd.kubernetes.protobuf" => protobuf::decode_body(body).map_err(|e| match e {
            ProtoError::UnsupportedKind(_) | ProtoError::UnknownField { .. } => {
                ApiError::UnsupportedMediaType(e.to_string())
            }
            ProtoError::Magic | ProtoError::Malformed(_) => ApiError::BadRequest(e.to_string()),
        }),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"
        ))),
    }
}

fn ns_of(path: &ResourcePath) -> &str {
    path.namespace.as_deref().unwrap_or("")
}

/// A free service cluster IP (none of the current services holds it).
fn cluster_ip_allocator(store: &Store) -> impl FnMut() -> String + '_ {
    move || {
        let used: HashSet<String> = match store.resolve_path("", "v1", "services") {
            Some((rid, _)) => store
                .snapshot(rid, &Default::default())
                .0
                .iter()
                .filter_map(|s| {
                    s.value()
                        .pointer("/spec/clusterIP")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect(),
            None => HashSet::new(),
        };
        defaults::free_cluster_ip(&used)
    }
}

/// Validation and defaults for an object about to be written; returns the warnings.
fn admit(
    app: &App,
    path: &ResourcePath,
    obj: &mut Value,
    old: Option<&Value>,
    opts: WriteOpts,
) -> Result<Vec<String>, ApiError> {
    let warnings = check_fields(&path.rtype, obj, opts.validation)?;
    defaults::apply(&path.rtype, obj, old, &mut cluster_ip_allocator(&app.store));
    Ok(warnings)
}

fn forbidden(message: String) -> ApiError {
    ApiError::Detailed {
        code: 403,
        reason: "Forbidden",
        message,
        details: json!({}),
    }
}

/// 403 if `ns` is being deleted (no new content in a terminating namespace).
fn check_namespace_open(app: &App, path: &ResourcePath) -> Result<(), ApiError> {
    let Some(ns) = &path.namespace else {
        return Ok(());
    };
    let terminating = app
        .store
        .resolve_path("", "v1", "namespaces")
        .and_then(|(rid, _)| app.store.get(rid, "", ns))
        .is_some_and(|o| o.value().pointer("/metadata/deletionTimestamp").is_some());
    if terminating {
        return Err(forbidden(format!(
            "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            path.rtype.qualified_plural()
        )));
    }
    Ok(())
}

/// POST to a collection.
pub fn create(
    app: &App,
    path: &ResourcePath,
    q: &HashMap<String, String>,
    ct: &str,
    body: &[u8],
) -> Result<Written, ApiError> {
    if path.status || path.scale {
        return Err(ApiError::MethodNotAllowed(
            "create is not supported on a subresource".into(),
        ));
    }
    let opts = WriteOpts::parse(q)?;
    let mut obj = decode_object(ct, body)?;
    if matches!(
        path.rtype.group.as_str(),
        "authorization.k8s.io" | "authentication.k8s.io"
    ) {
        return Ok((
            StatusCode::CREATED,
            crate::authz::review(&path.rtype, obj)?,
            Vec::new(),
        ));
    }
    let warnings = admit(app, path, &mut obj, None, opts)?;
    check_namespace_open(app, path)?;
    let o = app
        .store
        .create_with(path.rid, path.namespace.as_deref(), obj, opts.dry_run)?;
    Ok((StatusCode::CREATED, o.value(), warnings))
}

/// PUT of an object (or its status or scale).
pub fn update(
    app: &App,
    path: &ResourcePath,
    name: &str,
    q: &HashMap<String, String>,
    ct: &str,
    body: &[u8],
) -> Result<Written, ApiError> {
    let opts = WriteOpts::parse(q)?;
    let obj = decode_object(ct, body)?;
    if path.scale {
        let replicas = obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
        return scale_write(app, path, name, opts, move |_| Ok(replicas));
    }
    let mut warnings = Vec::new();
    let o = app.store.modify_with(
        path.rid,
        ns_of(path),
        name,
        |old| {
            let mut obj = obj;
            warnings = admit(app, path, &mut obj, Some(&old), opts)?;
            Ok(obj)
        },
        scope(path),
        opts.dry_run,
    )?;
    finish(app, path, o, opts, warnings)
}

fn scope(path: &ResourcePath) -> WriteScope {
    if path.status {
        WriteScope::Status
    } else {
        WriteScope::Main
    }
}

/// After an update: an object marked for deletion whose last finalizer went is deleted.
fn finish(
    app: &App,
    path: &ResourcePath,
    o: Arc<StoredObject>,
    opts: WriteOpts,
    warnings: Vec<String>,
) -> Result<Written, ApiError> {
    let v = o.value();
    let marked = v.pointer("/metadata/deletionTimestamp").is_some();
    let finalizers = v
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let namespace = path.rtype.kind == "Namespace" && path.rtype.group.is_empty();
    if marked && !finalizers && !opts.dry_run && !namespace {
        let _ = app.store.delete(path.rid, ns_of(path), &o.name, None);
    }
    Ok((StatusCode::OK, v, warnings))
}

/// A parsed patch body.
enum Patch {
    Merge(Value),
    Strategic(Value),
    Json(json_patch::Patch),
    Apply(Value),
}

fn parse_patch(ct: &str, body: &[u8]) -> Result<Patch, ApiError> {
    let json = |body: &[u8]| {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))
    };
    Ok(match mime(ct) {
        "application/merge-patch+json" => Patch::Merge(json(body)?),
        "application/strategic-merge-patch+json" => Patch::Strategic(json(body)?),
        "application/json-patch+json" => Patch::Json(
            serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?,
        ),
        "application/apply-patch+yaml" => Patch::Apply(
            serde_yaml::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?,
        ),
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"
            )));
        }
    })
}

/// Applies a patch to `cur`; a failing JSON patch (e.g. its `test`) is the API server's 422.
fn apply_patch(patch: &Patch, mut cur: Value) -> Result<Value, ApiError> {
    match patch {
        Patch::Merge(p) | Patch::Apply(p) => merge_patch(&mut cur, p),
        Patch::Strategic(p) => strategic_merge_patch(&mut cur, p),
        Patch::Json(p) => json_patch::patch(&mut cur, p).map_err(|e| {
            tracing::debug!(error = %e, "JSON patch failed");
            ApiError::Detailed {
                code: 422,
                reason: "Invalid",
                message: "the server rejected our request due to an error in our request".into(),
                details: Value::Null,
            }
        })?,
    }
    Ok(cur)
}

/// PATCH of an object (or its status or scale); apply patches create missing objects.
pub fn patch(
    app: &App,
    path: &ResourcePath,
    name: &str,
    q: &HashMap<String, String>,
    ct: &str,
    body: &[u8],
) -> Result<Written, ApiError> {
    let opts = WriteOpts::parse(q)?;
    let p = parse_patch(ct, body)?;
    if path.scale {
        return scale_write(app, path, name, opts, |scale| {
            let patched = apply_patch(&p, scale)?;
            Ok(patched
                .pointer("/spec/replicas")
                .cloned()
                .unwrap_or(json!(0)))
        });
    }
    let ns = ns_of(path);
    if let Patch::Apply(applied) = &p
        && !path.status
        && app.store.get(path.rid, ns, name).is_none()
    {
        let mut obj = applied.clone();
        metadata_mut(&mut obj).insert("name".into(), Value::String(name.to_string()));
        let warnings = admit(app, path, &mut obj, None, opts)?;
        check_namespace_open(app, path)?;
        let o = app
            .store
            .create_with(path.rid, path.namespace.as_deref(), obj, opts.dry_run)?;
        return Ok((StatusCode::CREATED, o.value(), warnings));
    }
    let mut warnings = Vec::new();
    let o = app.store.modify_with(
        path.rid,
        ns,
        name,
        |cur| {
            let mut new = apply_patch(&p, cur.clone())?;
            warnings = admit(app, path, &mut new, Some(&cur), opts)?;
            Ok(new)
        },
        scope(path),
        opts.dry_run,
    )?;
    finish(app, path, o, opts, warnings)
}

/// The `autoscaling/v1` Scale of a deployment or replica set.
pub fn scale_of(path: &ResourcePath, obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": path.namespace, "uid": meta["uid"],
                     "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// Sets `spec.replicas` from `f(current scale)`; answers with the new Scale.
fn scale_write(
    app: &App,
    path: &ResourcePath,
    name: &str,
    opts: WriteOpts,
    f: impl FnOnce(Value) -> Result<Value, ApiError>,
) -> Result<Written, ApiError> {
    let o = app.store.modify_with(
        path.rid,
        ns_of(path),
        name,
        |mut cur| {
            let replicas = f(scale_of(path, &cur))?;
            if replicas.as_i64().is_none_or(|r| r < 0) {
                return Err(ApiError::invalid_object(
                    "autoscaling",
                    "Scale",
                    name,
                    &[(
                        "spec.replicas".into(),
                        format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                    )],
                ));
            }
            if let Some(spec) = cur.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("replicas".into(), replicas);
            }
            Ok(cur)
        },
        WriteScope::Main,
        opts.dry_run,
    )?;
    Ok((StatusCode::OK, scale_of(path, &o.value()), Vec::new()))
}

/// The DeleteOptions body of a DELETE (None: no body).
struct DeleteOptions(Option<Value>);

impl DeleteOptions {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.is_empty() {
            return Ok(DeleteOptions(None));
        }
        Ok(DeleteOptions(Some(decode_object(
            "application/json",
            body,
        )?)))
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.0.as_ref().and_then(|o| o.get(field))
    }

    fn preconditions(&self) -> Option<&Value> {
        self.get("preconditions")
    }

    /// kubectl sends `dryRun` in the body, not the query.
    fn dry_run(&self) -> bool {
        self.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"))
    }

    /// Whether the dependents are to be left behind, not deleted with the object.
    fn orphans(&self) -> bool {
        self.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
            || self.get("orphanDependents").and_then(Value::as_bool) == Some(true)
    }
}

/// DELETE of one object: objects with finalizers (and, with the simulated control plane,
/// namespaces) are marked with `deletionTimestamp` and removed once their finalizers
/// (or the namespace controller) are done; others go at once.
pub fn delete(
    app: &App,
    path: &ResourcePath,
    name: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Result<Written, ApiError> {
    if path.status || path.scale {
        return Err(ApiError::MethodNotAllowed(
            "delete is not supported on a subresource".into(),
        ));
    }
    let opts = WriteOpts::parse(q)?;
    let del = DeleteOptions::parse(body)?;
    let ns = ns_of(path);
    let cur = app
        .store
        .get(path.rid, ns, name)
        .ok_or_else(|| ApiError::not_found(&path.rtype.qualified_plural(), name))?;
    crate::store::check_preconditions(&path.rtype, &cur, del.preconditions())?;
    let v = cur.value();
    if opts.dry_run || del.dry_run() {
        return Ok((StatusCode::OK, v, Vec::new()));
    }
    let namespace = path.rtype.kind == "Namespace" && path.rtype.group.is_empty();
    let finalizers = v
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if (namespace && app.simulate) || finalizers {
        return mark_deleting(app, path, name, namespace);
    }
    if del.orphans() {
        crate::controllers::deployment::orphan_dependents(&app.store, &path.rtype, &v);
    }
    let o = app.store.delete(path.rid, ns, name, del.preconditions())?;
    Ok((StatusCode::OK, o.value(), Vec::new()))
}

/// Marks an object as being deleted (`deletionTimestamp`; a namespace also turns
/// `Terminating`); its finalizers or the namespace controller remove it later.
fn mark_deleting(
    app: &App,
    path: &ResourcePath,
    name: &str,
    namespace: bool,
) -> Result<Written, ApiError> {
    let mark = |mut cur: Value| {
        let now = now_rfc3339();
        let meta = metadata_mut(&mut cur);
        meta.entry("deletionTimestamp").or_insert(json!(now));
        meta.entry("deletionGracePeriodSeconds").or_insert(json!(0));
        if namespace && let Some(o) = cur.as_object_mut() {
            o.insert("status".into(), json!({"phase": "Terminating"}));
        }
        Ok(cur)
    };
    let o = app
        .store
        .modify(path.rid, ns_of(path), name, mark, WriteScope::Full)?;
    Ok((StatusCode::OK, o.value(), Vec::new()))
}
