//! Everyday kubectl (v1.32) against kube-sim with the simulated control plane on:
//! typed `create` commands (protobuf bodies: namespace, serviceaccount, configmap,
//! secret, role, rolebinding, service, pdb, deployment), `--dry-run=server`, `patch --type=json`,
//! `explain`, `auth can-i`, deployments that scale and roll out with pods that get
//! addresses, `wait`, `expose`, `label`, graceful namespace deletion, and the exact
//! error texts for an unknown field and an invalid name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use kube_sim::{Config, KubeSim, SeedConfig};
use serde_json::Value;
use testkit::Kubectl;

async fn sim_with_nodes() -> KubeSim {
    let sim = KubeSim::start(Config::default()).await.unwrap();
    kube_sim::seed(sim.store(), &SeedConfig::nodes_only(2)).unwrap();
    sim
}

/// Pods of `ns` as (name, node, IP).
fn pods(sim: &KubeSim, ns: &str) -> Vec<(String, String, String)> {
    sim.store()
        .list_objects("v1", "Pod")
        .into_iter()
        .filter(|p| p["metadata"]["namespace"] == ns)
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&p["metadata"]["name"]),
                s(&p["spec"]["nodeName"]),
                s(&p["status"]["podIP"]),
            )
        })
        .collect()
}

/// Every pod has a node and a distinct address inside that node's pod CIDR (seeded node
/// `node-0000i` owns 10.0.i.0/24).
fn assert_addressed(pods: &[(String, String, String)]) {
    let mut seen = BTreeSet::new();
    for (name, node, ip) in pods {
        let ip: Ipv4Addr = ip
            .parse()
            .unwrap_or_else(|_| panic!("{name} has no IP: {pods:?}"));
        let i: u8 = node.trim_start_matches("node-").parse().unwrap();
        assert_eq!(ip.octets()[..3], [10, 0, i], "{name} on {node} got {ip}");
        assert!(seen.insert(ip), "duplicate address {ip}: {pods:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_creates_dry_run_and_json_patch() {
    let sim = sim_with_nodes().await;
    let k = Kubectl::new(&sim.url());
    let store = sim.store().clone();
    k.ok(&["create", "namespace", "demo"]).await;
    let ns = store.get_object("v1", "Namespace", "", "demo").unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "demo"
    );
    assert_eq!(ns["status"]["phase"], "Active");
    k.ok(&["create", "serviceaccount", "robot", "-n", "demo"])
        .await;
    k.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "demo",
        "--from-literal=a=b",
    ])
    .await;
    k.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "demo",
        "--from-literal=p=hunter2",
    ])
    .await;
    assert!(
        store
            .get_object("v1", "ServiceAccount", "demo", "robot")
            .is_some()
    );
    assert_eq!(
        store.get_object("v1", "ConfigMap", "demo", "cfg").unwrap()["data"]["a"],
        "b"
    );
    let secret = store.get_object("v1", "Secret", "demo", "pw").unwrap();
    assert_eq!(secret["data"]["p"], "aHVudGVyMg==");
    assert_eq!(secret["type"], "Opaque");

    k.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "demo",
        "--verb=get,list",
        "--resource=pods",
    ])
    .await;
    k.ok(&[
        "create",
        "rolebinding",
        "rb",
        "-n",
        "demo",
        "--role=reader",
        "--serviceaccount=demo:robot",
    ])
    .await;
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "api",
        "-n",
        "demo",
        "--tcp=80:8080",
    ])
    .await;
    k.ok(&[
        "create",
        "pdb",
        "keep",
        "-n",
        "demo",
        "--selector=app=web",
        "--min-available=1",
    ])
    .await;
    let role = store
        .get_object("rbac.authorization.k8s.io/v1", "Role", "demo", "reader")
        .unwrap();
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list"])
    );
    let rb = store
        .get_object("rbac.authorization.k8s.io/v1", "RoleBinding", "demo", "rb")
        .unwrap();
    assert_eq!(rb["roleRef"]["name"], "reader");
    assert_eq!(rb["subjects"][0]["name"], "robot");
    let svc = store.get_object("v1", "Service", "demo", "api").unwrap();
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    let pdb = store
        .get_object("policy/v1", "PodDisruptionBudget", "demo", "keep")
        .unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // --dry-run=server answers as if created and stores nothing.
    let rv = store.resource_version();
    let out = k
        .ok(&[
            "create",
            "configmap",
            "dry",
            "-n",
            "demo",
            "--from-literal=x=y",
            "--dry-run=server",
            "-o",
            "json",
        ])
        .await;
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["data"]["x"], "y");
    k.ok(&[
        "create",
        "deployment",
        "ghost",
        "-n",
        "demo",
        "--image=nginx",
        "--dry-run=server",
    ])
    .await;
    k.ok(&[
        "delete",
        "configmap",
        "cfg",
        "-n",
        "demo",
        "--dry-run=server",
    ])
    .await;
    assert_eq!(store.resource_version(), rv, "a dry run wrote something");
    assert!(store.get_object("v1", "ConfigMap", "demo", "cfg").is_some());

    // JSON patch with a passing and a failing test operation.
    let ok = r#"[{"op":"test","path":"/data/a","value":"b"},{"op":"replace","path":"/data/a","value":"c"}]"#;
    k.patch("configmap cfg -n demo --type=json", ok).await;
    assert_eq!(
        store.get_object("v1", "ConfigMap", "demo", "cfg").unwrap()["data"]["a"],
        "c"
    );
    let rv = store.resource_version();
    let bad = r#"[{"op":"test","path":"/data/a","value":"b"},{"op":"replace","path":"/data/a","value":"z"}]"#;
    let err = k
        .patch_fails("configmap cfg -n demo --type=json", bad)
        .await;
    assert_eq!(
        err.trim(),
        "The request is invalid: the server rejected our request due to an error in our request"
    );
    assert_eq!(store.resource_version(), rv);
    let status = r#"[{"op":"add","path":"/status/phase","value":"Active"}]"#;
    k.patch("namespace demo --subresource=status --type=json", status)
        .await;

    // Finalizers: deletion marks the object, removing the last finalizer deletes it.
    k.ok(&["create", "configmap", "held", "-n", "demo"]).await;
    let hold = r#"{"metadata":{"finalizers":["example.com/hold"]}}"#;
    k.patch("configmap held -n demo --type=merge", hold).await;
    k.ok(&["delete", "configmap", "held", "-n", "demo", "--wait=false"])
        .await;
    let held = store.get_object("v1", "ConfigMap", "demo", "held").unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    let release = r#"[{"op":"remove","path":"/metadata/finalizers"}]"#;
    k.patch("configmap held -n demo --type=json", release).await;
    assert!(
        store
            .get_object("v1", "ConfigMap", "demo", "held")
            .is_none()
    );

    // generateName: the server picks the name.
    let manifest = k.dir.join("generated.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: gen-, namespace: demo}\n",
    )
    .unwrap();
    let out = k
        .ok(&["create", "-f", manifest.to_str().unwrap(), "-o", "name"])
        .await;
    assert!(
        out.trim().starts_with("configmap/gen-") && out.trim().len() == "configmap/gen-".len() + 5,
        "{out}"
    );

    // The namespace label cannot be changed.
    k.ok(&[
        "label",
        "namespace",
        "demo",
        "kubernetes.io/metadata.name=other",
        "--overwrite",
    ])
    .await;
    let ns = store.get_object("v1", "Namespace", "", "demo").unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "demo"
    );
    assert!(sim.metrics().snapshot().rejected_bodies >= 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_scale_roll_out_and_namespaces_delete_with_contents() {
    let sim = sim_with_nodes().await;
    let k = Kubectl::new(&sim.url());
    k.ok(&["create", "namespace", "shop"]).await;
    k.deploy("web", "shop", "nginx:1.27", 3, &["--port=80"])
        .await;
    let running = pods(&sim, "shop");
    assert_eq!(running.len(), 3, "{running:?}");
    assert_addressed(&running);
    let first = format!("pod/{}", running[0].0);
    let out = k
        .ok(&[
            "wait",
            "--for=condition=Ready",
            &first,
            "-n",
            "shop",
            "--timeout=60s",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");

    k.ok(&["scale", "deployment", "web", "-n", "shop", "--replicas=5"])
        .await;
    k.rollout("web", "shop").await;
    let scaled = pods(&sim, "shop");
    assert_eq!(scaled.len(), 5, "{scaled:?}");
    assert_addressed(&scaled);
    k.ok(&["scale", "deployment", "web", "-n", "shop", "--replicas=2"])
        .await;
    k.rollout("web", "shop").await;
    assert_eq!(pods(&sim, "shop").len(), 2);

    k.ok(&["expose", "deployment", "web", "-n", "shop", "--port=80"])
        .await;
    let svc = sim
        .store()
        .get_object("v1", "Service", "shop", "web")
        .unwrap();
    assert_eq!(svc["spec"]["selector"]["app"], "web");
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.96.")
    );
    k.ok(&["label", "deployment", "web", "-n", "shop", "tier=front"])
        .await;
    k.ok(&["run", "solo", "-n", "shop", "--image=busybox"])
        .await;
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/solo",
        "-n",
        "shop",
        "--timeout=60s",
    ])
    .await;

    let out = k
        .ok(&["delete", "namespace", "shop", "--timeout=60s"])
        .await;
    assert!(out.contains("namespace \"shop\" deleted"), "{out}");
    assert!(
        sim.store()
            .get_object("v1", "Namespace", "", "shop")
            .is_none()
    );
    assert!(pods(&sim, "shop").is_empty());
    assert!(
        sim.store()
            .get_object("apps/v1", "Deployment", "shop", "web")
            .is_none()
    );
    assert!(
        sim.store()
            .get_object("v1", "Service", "shop", "web")
            .is_none()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_auth_and_the_errors_kubectl_prints() {
    let sim = sim_with_nodes().await;
    let k = Kubectl::new(&sim.url());
    let out = k.ok(&["explain", "deployment.spec.replicas"]).await;
    assert!(out.contains("FIELD: replicas <integer>"), "{out}");
    let out = k.ok(&["explain", "pods.spec.containers"]).await;
    assert!(
        out.contains("image\t<string>") || out.contains("image <string>"),
        "{out}"
    );
    assert_eq!(
        k.ok(&["auth", "can-i", "create", "pods"]).await.trim(),
        "yes"
    );
    assert_eq!(
        k.ok(&["auth", "can-i", "delete", "nodes", "--all-namespaces"])
            .await
            .trim(),
        "yes"
    );
    let me = k.ok(&["auth", "whoami"]).await;
    assert!(
        me.contains("kube-sim:anyone") && me.contains("system:masters"),
        "{me}"
    );
    let rules = k.ok(&["auth", "can-i", "--list"]).await;
    assert!(rules.contains("*.*"), "{rules}");

    let err = k.fails(&["create", "namespace", "Bad_Name"]).await;
    assert_eq!(
        err.trim(),
        "The Namespace \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase \
         RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and \
         end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation \
         is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    );
    let manifest = k.dir.join("unknown.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: odd, namespace: default}\nspec:\n  \
         foo: 1\n  selector: {matchLabels: {app: odd}}\n  template:\n    metadata: {labels: {app: odd}}\n    \
         spec: {containers: [{name: c, image: nginx}]}\n",
    )
    .unwrap();
    let path = manifest.to_str().unwrap();
    let err = k.fails(&["apply", "-f", path]).await;
    assert_eq!(
        err.trim(),
        format!(
            "Error from server (BadRequest): error when creating \"{path}\": Deployment in version \"v1\" \
             cannot be handled as a Deployment: strict decoding error: unknown field \"spec.foo\""
        )
    );
    assert!(
        sim.store()
            .get_object("apps/v1", "Deployment", "default", "odd")
            .is_none()
    );
    // --validate=warn creates it and prints the server's warning.
    let out = k
        .command(&["apply", "--validate=warn", "-f", path])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Warning: unknown field \"spec.foo\""),
        "{stderr}"
    );
    sim.shutdown().await;
}
