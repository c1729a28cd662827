//! Minimal OpenAPI v3 documents, just enough for kubectl's field-validation probe.
//!
//! kubectl (1.27+) validates manifests by asking the server to (`fieldValidation=Strict`)
//! once OpenAPI v3 shows that the kind's PATCH operation accepts that query parameter;
//! without OpenAPI it refuses to apply unless `--validate=false`. We publish, per
//! group/version, one PATCH operation per kind carrying `x-kubernetes-group-version-kind`
//! and the `fieldValidation` parameter, and no schemas (so kubectl computes strategic
//! merge patches from its compiled-in types and JSON merge patches for custom kinds).
//! kube-sim accepts the parameter and does not validate fields.

use serde_json::{Map, Value, json};

use crate::resources::{Registry, ResourceType};

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
    }))
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
    }
}
