//! OpenAPI v3 documents: per group/version, one PATCH operation per kind (carrying
//! `x-kubernetes-group-version-kind` and the `fieldValidation` parameter, which kubectl
//! 1.27+ probes before it relies on server-side validation) and the kinds' schemas under
//! `components.schemas` (see [`crate::schemas`]), which `kubectl explain` renders.
//!
//! Built-in kinds use the upstream schemas (without the `x-kubernetes-patch-*`
//! extensions; kubectl then falls back to its compiled-in patch metadata); CRD kinds their
//! `openAPIV3Schema` plus the standard `apiVersion`/`kind`/`metadata` fields; Calico's
//! kinds served without a CRD object get an open (`x-kubernetes-preserve-unknown-fields`)
//! schema.

use serde_json::{Map, Value, json};

use crate::resources::{Registry, ResourceType};
use crate::schemas::{BUILTINS, builtin_root, closure, collect_refs, crd_def_name};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The `/openapi/v3` root: one entry per served group/version.
pub fn root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".to_string())];
    for (g, versions) in reg.groups() {
        gvs.extend(versions.into_iter().map(|v| (g.clone(), v)));
    }
    for (g, v) in gvs {
        let p = gv_path(&g, &v);
        let url = format!("/openapi/v3/{p}?hash=kube-sim");
        paths.insert(p, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

fn object_path(t: &ResourceType) -> String {
    let base = gv_path(&t.group, &t.version);
    if t.namespaced {
        format!("/{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
    } else {
        format!("/{base}/{}/{{name}}", t.plural)
    }
}

/// The document of one group/version (`/openapi/v3/api/v1`, `/openapi/v3/apis/<g>/<v>`).
pub fn group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = reg.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut wanted = Vec::new();
    for t in &types {
        match builtin_root(t) {
            Some(name) => wanted.push(name.to_string()),
            None => {
                let s = custom_schema(t);
                collect_refs(&s, &mut wanted);
                schemas.insert(crd_def_name(t), s);
            }
        }
    }
    for name in closure(wanted) {
        if let Some(d) = BUILTINS.defs.get(&name) {
            schemas.insert(name, d.clone());
        }
    }
    for t in types {
        let op = json!({
            "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(object_path(t), json!({"patch": op}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kube-sim)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The published schema of a CRD (or CRD-less Calico) kind.
fn custom_schema(t: &ResourceType) -> Value {
    let mut s = match &t.schema {
        Some(s) => (**s).clone(),
        None => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                       "description": format!("{} (kube-sim serves this kind without a schema)", t.kind)}),
    };
    if let Some(o) = s.as_object_mut() {
        let props = o.entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.entry("apiVersion").or_insert_with(|| json!({"type": "string",
                "description": "APIVersion defines the versioned schema of this representation of an object."}));
            p.entry("kind").or_insert_with(|| json!({"type": "string",
                "description": "Kind is a string value representing the REST resource this object represents."}));
            p.entry("metadata").or_insert_with(|| {
                json!({"allOf": [{"$ref":
                "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
                "description": "Standard object's metadata."})
            });
        }
        o.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": t.group, "version": t.version, "kind": t.kind}]),
        );
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_cover_served_kinds() {
        let reg = Registry::new(true);
        let root = root(&reg);
        assert!(root["paths"]["api/v1"]["serverRelativeURL"].is_string());
        assert!(root["paths"]["apis/crd.projectcalico.org/v1"].is_object());
        let core = group_version(&reg, "", "v1").unwrap();
        let pod = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(pod["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(core["paths"]["/api/v1/nodes/{name}"].is_object());
        let schemas = &core["components"]["schemas"];
        assert_eq!(
            schemas["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"][0]["kind"],
            "Pod"
        );
        assert!(schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"].is_object());
        let calico = group_version(&reg, "crd.projectcalico.org", "v1").unwrap();
        let ippool = &calico["components"]["schemas"]["org.projectcalico.crd.v1.IPPool"];
        assert_eq!(
            ippool["x-kubernetes-group-version-kind"][0]["kind"],
            "IPPool"
        );
        assert!(
            calico["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
                .is_object()
        );
    }
}
