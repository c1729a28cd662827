//! kubectl v1.32 against kube-sim: apply, get, label, patch (merge, strategic, status),
//! delete, `get -w` and `get --chunk-size`. Uses a throw-away kubeconfig and cache dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use kube_sim::{Config, KubeSim};
use serde_json::{Value, json};
use testkit::Kubectl;
use tokio::io::{AsyncBufReadExt, BufReader};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {team: a}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  nodeName: node-1
  containers:
  - {name: main, image: "nginx:1"}
  - {name: side, image: "envoy:1"}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: demo, labels: {app: db}}
spec:
  containers: [{name: main, image: "pg:1"}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: demo}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: demo}
spec:
  selector: app == 'web'
  ingress: [{action: Allow}]
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: default-deny}
spec:
  selector: all()
  types: [Ingress, Egress]
"#;

fn pod(sim: &KubeSim, name: &str) -> Value {
    sim.store()
        .get_object("v1", "Pod", "demo", name)
        .expect("pod exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_label_patch_delete() {
    let sim = KubeSim::start(Config::default()).await.unwrap();
    let k = Kubectl::new(&sim.url());
    let manifest = k.dir.join("manifest.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let manifest = manifest.to_str().unwrap();
    let out = k.ok(&["apply", "-f", manifest]).await;
    assert!(out.contains("pod/web created"), "{out}");
    assert!(
        out.contains("globalnetworkpolicy.crd.projectcalico.org/default-deny created"),
        "{out}"
    );
    let store = sim.store();
    assert!(
        store
            .get_object("networking.k8s.io/v1", "NetworkPolicy", "demo", "deny-all")
            .is_some()
    );
    assert!(
        store
            .get_object(
                "crd.projectcalico.org/v1",
                "NetworkPolicy",
                "demo",
                "allow-web"
            )
            .is_some()
    );
    assert!(
        store
            .get_object(
                "crd.projectcalico.org/v1",
                "GlobalNetworkPolicy",
                "",
                "default-deny"
            )
            .is_some()
    );
    // Re-applying is a no-op.
    let out = k.ok(&["apply", "-f", manifest]).await;
    assert!(out.contains("pod/web unchanged"), "{out}");

    let got: Value = serde_json::from_str(
        &k.ok(&["get", "pod", "web", "-n", "demo", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(got["metadata"]["labels"]["app"], "web");
    assert_eq!(got["spec"]["nodeName"], "node-1");
    let list: Value =
        serde_json::from_str(&k.ok(&["get", "po", "-n", "demo", "-o", "json"]).await).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let names = k.ok(&["get", "netpol,gnp", "-A", "-o", "name"]).await;
    assert!(
        names.contains("networkpolicy.networking.k8s.io/deny-all"),
        "{names}"
    );
    assert!(
        names.contains("globalnetworkpolicy.crd.projectcalico.org/default-deny"),
        "{names}"
    );

    k.ok(&["label", "pod", "web", "-n", "demo", "tier=frontend"])
        .await;
    k.ok(&["annotate", "pod", "web", "-n", "demo", "note=hello"])
        .await;
    let p = pod(&sim, "web");
    assert_eq!(p["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(p["metadata"]["annotations"]["note"], "hello");
    k.ok(&["label", "pod", "web", "-n", "demo", "tier-"]).await;
    assert!(pod(&sim, "web")["metadata"]["labels"].get("tier").is_none());

    let merge = json!({"metadata": {"labels": {"version": "v2"}}}).to_string();
    k.patch("pod web -n demo --type=merge", &merge).await;
    assert_eq!(pod(&sim, "web")["metadata"]["labels"]["version"], "v2");
    let strategic =
        json!({"spec": {"containers": [{"name": "side", "image": "envoy:2"}]}}).to_string();
    k.ok(&["patch", "pod", "web", "-n", "demo", "-p", &strategic])
        .await;
    let containers: Vec<Value> = pod(&sim, "web")["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| json!({"name": c["name"], "image": c["image"]}))
        .collect();
    assert_eq!(
        containers,
        [
            json!({"name": "main", "image": "nginx:1"}),
            json!({"name": "side", "image": "envoy:2"})
        ]
    );

    let status = json!({"status": {"podIP": "10.0.0.5"}}).to_string();
    k.patch("pod web -n demo --subresource=status --type=merge", &status)
        .await;
    assert_eq!(pod(&sim, "web")["status"]["podIP"], "10.0.0.5");
    // A main-resource patch cannot change the status.
    let sneaky = json!({"status": {"podIP": "10.9.9.9"}}).to_string();
    k.patch("pod web -n demo --type=merge", &sneaky).await;
    assert_eq!(pod(&sim, "web")["status"]["podIP"], "10.0.0.5");

    k.ok(&["delete", "pod", "db", "-n", "demo"]).await;
    assert!(store.get_object("v1", "Pod", "demo", "db").is_none());
    let err = k.fails(&["get", "pod", "db", "-n", "demo"]).await;
    assert!(
        err.contains("NotFound") && err.contains("\"db\" not found"),
        "{err}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_observes_changes() {
    let sim = KubeSim::start(Config::default()).await.unwrap();
    let k = Kubectl::new(&sim.url());
    let store = sim.store().clone();
    store
        .create_object(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "first", "namespace": "w"}}))
        .unwrap();
    let mut child = k
        .command(&["get", "pods", "-n", "w", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("kubectl printed nothing")
            .unwrap()
            .expect("kubectl exited")
    };
    // Header, then the initial object.
    loop {
        let line = next_line().await;
        if line.starts_with("ADDED") && line.contains("first") {
            break;
        }
    }
    let mut first = store.get_object("v1", "Pod", "w", "first").unwrap();
    first["metadata"]["labels"] = json!({"stage": "two"});
    store.replace_object(first).unwrap();
    store.delete_object("v1", "Pod", "w", "first").unwrap();
    let line = next_line().await;
    assert!(
        line.starts_with("MODIFIED") && line.contains("first"),
        "{line}"
    );
    let line = next_line().await;
    assert!(
        line.starts_with("DELETED") && line.contains("first"),
        "{line}"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(sim.metrics().snapshot().watch_requests >= 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_chunk_size_paginates() {
    let sim = KubeSim::start(Config::default()).await.unwrap();
    let k = Kubectl::new(&sim.url());
    for i in 0..5 {
        sim.store()
            .create_object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{i}")}}))
            .unwrap();
    }
    let before = sim.metrics().snapshot();
    let out = k.ok(&["get", "ns", "--chunk-size=2", "-o", "name"]).await;
    let names: Vec<&str> = out.lines().collect();
    assert_eq!(
        names,
        [
            "namespace/ns-0",
            "namespace/ns-1",
            "namespace/ns-2",
            "namespace/ns-3",
            "namespace/ns-4"
        ]
    );
    let after = sim.metrics().snapshot();
    assert_eq!(after.continue_requests - before.continue_requests, 2);
    assert_eq!(after.list_requests - before.list_requests, 3);
    sim.shutdown().await;
}
