//! Schemas of the served kinds: the built-in kinds' OpenAPI v3 schemas come from
//! k8s-openapi (its `schemars` implementations, generated from the Kubernetes OpenAPI
//! spec of v1.33), CRD kinds use their `openAPIV3Schema`. They feed the OpenAPI v3
//! documents (`kubectl explain`) and unknown-field detection (`fieldValidation`).
//!
//! Definitions are named as upstream (`io.k8s.api.core.v1.Pod`) and referenced as
//! `#/components/schemas/<name>`; each kind's root definition carries
//! `x-kubernetes-group-version-kind`. Built once, on first use.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use k8s_openapi::{Resource, api};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::resources::ResourceType;

/// The built-in definitions and which kind each root is.
pub struct Builtins {
    /// Definition name -> schema.
    pub defs: Map<String, Value>,
    /// (group, version, kind, definition name) of every root.
    pub roots: Vec<(String, String, String, String)>,
}

/// Collects the built-in kinds' definitions and roots.
struct Collector {
    g: SchemaGenerator,
    roots: Vec<(String, String, String, String)>,
}

impl Collector {
    /// Adds kind `T` (its group, version and kind as k8s-openapi declares them).
    fn add<T: JsonSchema + Resource>(&mut self) {
        self.g.subschema_for::<T>();
        self.roots.push((
            T::GROUP.into(),
            T::VERSION.into(),
            T::KIND.into(),
            T::schema_name().into_owned(),
        ));
    }

    /// The definitions, each root tagged with `x-kubernetes-group-version-kind`.
    fn finish(mut self) -> Builtins {
        let mut defs = self.g.take_definitions(true);
        for (group, version, kind, name) in &self.roots {
            if let Some(Value::Object(d)) = defs.get_mut(name) {
                d.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": group, "version": version, "kind": kind}]),
                );
            }
        }
        Builtins {
            defs,
            roots: self.roots,
        }
    }
}

fn build() -> Builtins {
    use api::{apps::v1 as apps, core::v1 as core_v1, rbac::v1 as rbac};
    let mut c = Collector {
        g: SchemaSettings::openapi3().into_generator(),
        roots: Vec::new(),
    };
    c.add::<core_v1::Pod>();
    c.add::<core_v1::Namespace>();
    c.add::<core_v1::ServiceAccount>();
    c.add::<core_v1::Node>();
    c.add::<core_v1::Service>();
    c.add::<core_v1::ConfigMap>();
    c.add::<core_v1::Secret>();
    c.add::<core_v1::Endpoints>();
    c.add::<core_v1::Event>();
    c.add::<api::networking::v1::NetworkPolicy>();
    c.add::<apps::Deployment>();
    c.add::<apps::DaemonSet>();
    c.add::<apps::ReplicaSet>();
    c.add::<rbac::Role>();
    c.add::<rbac::RoleBinding>();
    c.add::<rbac::ClusterRole>();
    c.add::<rbac::ClusterRoleBinding>();
    c.add::<api::policy::v1::PodDisruptionBudget>();
    c.add::<api::discovery::v1::EndpointSlice>();
    c.add::<api::coordination::v1::Lease>();
    c.add::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>();
    c.add::<api::authorization::v1::SelfSubjectAccessReview>();
    c.add::<api::authorization::v1::SelfSubjectRulesReview>();
    c.add::<api::authentication::v1::SelfSubjectReview>();
    c.add::<api::autoscaling::v1::Scale>();
    c.finish()
}

/// The built-in schemas (built on first use).
pub static BUILTINS: LazyLock<Builtins> = LazyLock::new(build);

const REF_PREFIX: &str = "#/components/schemas/";

/// The definition name of the built-in kind `t`, if it has one.
pub fn builtin_root(t: &ResourceType) -> Option<&'static str> {
    BUILTINS
        .roots
        .iter()
        .find(|(g, v, k, _)| *g == t.group && *v == t.version && *k == t.kind)
        .map(|(_, _, _, n)| n.as_str())
}

/// The definition name a CRD kind's schema is published under (`com.example.v1.Widget`).
pub fn crd_def_name(t: &ResourceType) -> String {
    let group: Vec<&str> = t.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), t.version, t.kind)
}

/// Definitions reachable from `names` (the names themselves included).
pub fn closure(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = names.into_iter().collect();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(d) = BUILTINS.defs.get(&n) {
            collect_refs(d, &mut todo);
        }
    }
    seen
}

/// Every `$ref` target name inside `v`.
pub fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
            {
                out.push(r.to_string());
            }
            m.values().for_each(|c| collect_refs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out)),
        _ => {}
    }
}

fn resolve(schema: &Value) -> &Value {
    let mut s = schema;
    for _ in 0..8 {
        let target = s
            .get("$ref")
            .or_else(|| s.pointer("/allOf/0/$ref"))
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(REF_PREFIX))
            .and_then(|n| BUILTINS.defs.get(n));
        match target {
            Some(t) => s = t,
            None => break,
        }
    }
    s
}

/// Paths (`spec.foo`, `spec.containers[0].bar`) of fields of `obj` its kind's schema
/// does not declare. Kinds without a schema accept everything.
pub fn unknown_fields(t: &ResourceType, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(root) = builtin_root(t).and_then(|n| BUILTINS.defs.get(n)) {
        walk(root, obj, "", false, &mut out);
    } else if let Some(schema) = &t.schema {
        let Some(m) = obj.as_object() else { return out };
        let meta = builtin_root_named("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
        for (k, v) in m {
            match (k.as_str(), schema.pointer(&format!("/properties/{k}"))) {
                ("apiVersion" | "kind", _) => {}
                ("metadata", None) => {
                    if let Some(meta) = meta {
                        walk(meta, v, "metadata", false, &mut out);
                    }
                }
                (_, Some(s)) => walk(s, v, k, true, &mut out),
                (_, None) if preserves(schema) => {}
                (_, None) => out.push(k.clone()),
            }
        }
    }
    out
}

fn builtin_root_named(name: &str) -> Option<&'static Value> {
    BUILTINS.defs.get(name)
}

fn preserves(s: &Value) -> bool {
    s.get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// `structural`: CRD semantics (an object schema without properties allows no fields).
fn walk(schema: &Value, v: &Value, path: &str, structural: bool, out: &mut Vec<String>) {
    let s = resolve(schema);
    if preserves(s) || s.get("x-kubernetes-embedded-resource").is_some() {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let extra = s.get("additionalProperties");
            for (k, child) in m {
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(cs), _) => walk(cs, child, &join(path, k), structural, out),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(e @ Value::Object(_))) => {
                        walk(e, child, &join(path, k), structural, out)
                    }
                    (None, _) if props.is_some() || structural => out.push(join(path, k)),
                    (None, _) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                for (i, child) in items.iter().enumerate() {
                    walk(item, child, &format!("{path}[{i}]"), structural, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn ty(kind: &str) -> ResourceType {
        Registry::new(true)
            .iter()
            .find(|(_, t)| t.kind == kind)
            .unwrap()
            .1
            .clone()
    }

    #[test]
    fn builtin_kinds_have_roots_with_gvk() {
        let name = builtin_root(&ty("Deployment")).unwrap();
        assert_eq!(name, "io.k8s.api.apps.v1.Deployment");
        let d = &BUILTINS.defs[name];
        assert_eq!(
            d["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let c = closure([name.to_string()]);
        assert!(c.contains("io.k8s.api.core.v1.PodSpec"));
        assert!(c.contains("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
    }

    #[test]
    fn unknown_fields_are_found_with_paths() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"foo": 1, "containers": [{"name": "c", "image": "i", "bar": true,
                     "resources": {"limits": {"cpu": "1"}}}]}});
        assert_eq!(
            unknown_fields(&ty("Pod"), &pod),
            ["spec.containers[0].bar", "spec.foo"]
        );
        let ok = json!({"metadata": {"name": "x", "annotations": {"k": "v"}}, "data": {"a": "b"}});
        assert!(unknown_fields(&ty("ConfigMap"), &ok).is_empty());
    }

    #[test]
    fn crd_schemas_are_structural() {
        let mut t = ty("IPPool");
        t.schema = Some(std::sync::Arc::new(
            json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"cidr": {"type": "string"}}},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}),
        ));
        let obj = json!({"apiVersion": "x/v1", "kind": "IPPool", "metadata": {"name": "a", "bogus": 1},
            "spec": {"cidr": "10.0.0.0/8", "foo": 1}, "extra": {"anything": 1}, "top": 2});
        let mut found = unknown_fields(&t, &obj);
        found.sort();
        assert_eq!(found, ["metadata.bogus", "spec.foo", "top"]);
    }
}
