//! Discovery documents: /version, /api, /api/v1, /apis, /apis/<group>[/<version>].
//!
//! Only the legacy (unaggregated) discovery format is served. Clients that ask for
//! aggregated discovery (`as=APIGroupDiscoveryList`) accept a plain `application/json`
//! answer and fall back to the legacy documents, as they do against older servers.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceType};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The `/version` document.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-kube-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// The `/api` document.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    })
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let gv: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": gv, "preferredVersion": gv.first().cloned().unwrap_or_default()})
}

/// The `/apis` document.
pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg.groups().iter().map(|(g, v)| group_doc(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The `/apis/<group>` document, if the group is served.
pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    let groups = reg.groups();
    let (_, versions) = groups.iter().find(|(g, _)| g == name)?;
    let mut doc = group_doc(name, versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn resource_entries(t: &ResourceType) -> Vec<Value> {
    let mut main = json!({
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": VERBS,
    });
    if !t.short_names.is_empty() {
        main["shortNames"] = json!(t.short_names);
    }
    if !t.group.is_empty() && t.group.ends_with("projectcalico.org") {
        main["categories"] = json!(["calico"]);
    }
    let in_all = matches!(
        (t.group.as_str(), t.kind.as_str()),
        ("", "Pod" | "Service") | ("apps", "Deployment" | "ReplicaSet" | "DaemonSet")
    );
    if in_all {
        main["categories"] = json!(["all"]);
    }
    if matches!(
        t.group.as_str(),
        "authorization.k8s.io" | "authentication.k8s.io"
    ) {
        main["verbs"] = json!(["create"]);
    }
    let scalable = t.group == "apps" && matches!(t.kind.as_str(), "Deployment" | "ReplicaSet");
    let mut out = vec![main];
    if scalable {
        out.push(json!({
            "name": format!("{}/scale", t.plural),
            "singularName": "",
            "namespaced": t.namespaced,
            "group": "autoscaling",
            "version": "v1",
            "kind": "Scale",
            "verbs": ["get", "patch", "update"],
        }));
    }
    if t.status_subresource {
        out.push(json!({
            "name": format!("{}/status", t.plural),
            "singularName": "",
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

/// The `APIResourceList` of one group/version, if any of its kinds is served.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = reg.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = types.into_iter().flat_map(resource_entries).collect();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn core_list_has_pods_with_short_names_and_status() {
        let reg = Registry::new(true);
        let doc = resource_list(&reg, "", "v1").unwrap();
        let res = doc["resources"].as_array().unwrap();
        let pods = res.iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["namespaced"], true);
        assert!(res.iter().any(|r| r["name"] == "pods/status"));
        let ns = res.iter().find(|r| r["name"] == "namespaces").unwrap();
        assert_eq!(ns["namespaced"], false);
    }

    #[test]
    fn calico_group_can_be_absent() {
        assert!(group(&Registry::new(true), "crd.projectcalico.org").is_some());
        assert!(group(&Registry::new(false), "crd.projectcalico.org").is_none());
        assert!(resource_list(&Registry::new(false), "crd.projectcalico.org", "v1").is_none());
    }
}
