//! The "Adding a kind" checklist of docs/architecture.md, enforced: for every model
//! [`Kind`] there is a watched [`Resource`] converting into it (netmodel's
//! `every_resource_converts_to_its_kind_and_every_kind_has_a_resource` converts a sample
//! of each), typha's ClusterRole lets it `list` and `watch` that resource, and kube-sim
//! serves it. Every check reads the resource's place in the API from the one table,
//! [`Resource::api`]. A kind added without the rest fails here, naming what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use kube_sim::KubeSim;
use netmodel::{Kind, Resource};
use serde_json::Value as Json;

/// (group, plural) pairs typha's ClusterRole grants `verb` on, read from the manifest.
fn cluster_role_grants(verb: &str) -> BTreeSet<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/typha-rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut grants = BTreeSet::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object: Json = serde::Deserialize::deserialize(document).unwrap();
        if object["kind"] != "ClusterRole" || object["metadata"]["name"] != "calico-typha" {
            continue;
        }
        for rule in object["rules"].as_array().unwrap() {
            let strings = |field: &str| -> Vec<String> {
                let values = rule[field].as_array().unwrap();
                values
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            if !strings("verbs").iter().any(|v| v == verb) {
                continue;
            }
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    grants.insert((group.clone(), resource));
                }
            }
        }
    }
    grants
}

/// The plural names kube-sim's discovery lists for `group`/`version`.
async fn served(sim: &KubeSim, group: &str, version: &str) -> BTreeSet<String> {
    let path = match group {
        "" => format!("/api/{version}"),
        group => format!("/apis/{group}/{version}"),
    };
    let (status, body) = testkit::http_get(sim.addr(), &path).await;
    assert_eq!(status, 200, "kube-sim does not serve {path}: {body}");
    let list: Json = serde_json::from_str(&body).unwrap();
    let resources = list["resources"].as_array().unwrap();
    resources
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_kind_is_watched_granted_and_served() {
    let sim = KubeSim::start(kube_sim::Config::default()).await.unwrap();
    let (list, watch) = (cluster_role_grants("list"), cluster_role_grants("watch"));
    for kind in Kind::ALL {
        let resources: Vec<Resource> = Resource::ALL
            .into_iter()
            .filter(|r| r.model_kind() == kind)
            .collect();
        assert!(!resources.is_empty(), "{kind:?}: no watched resource");
        for resource in resources {
            let api = resource.api();
            let grant = (api.group.to_string(), api.plural.to_string());
            for (verb, granted) in [("list", &list), ("watch", &watch)] {
                assert!(
                    granted.contains(&grant),
                    "{kind:?}: typha's ClusterRole does not grant {verb} on {grant:?}"
                );
            }
            let served = served(&sim, api.group, api.version).await;
            assert!(
                served.contains(api.plural),
                "{kind:?}: kube-sim does not serve {api:?} (it serves {served:?})"
            );
        }
    }
    sim.shutdown().await;
}
