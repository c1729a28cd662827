//! API-server defaults a client can observe, applied to objects written over HTTP:
//! pod spec and container defaults (plus what the ServiceAccount and
//! DefaultTolerationSeconds admission plugins add to pods), service defaults with a
//! cluster IP from 10.96.0.0/12 (node ports are not allocated), deployment and replica-set defaults, and the
//! `kubernetes.io/metadata.name` namespace label (the label alone is applied to every
//! write, in-process ones included, because selectors depend on it).
//!
//! Defaults only fill absent fields; a value the client set is never changed. Objects
//! written in-process (seeding, the load test's direct writes) skip the other defaults
//! so synthetic clusters keep their compact size.

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;

/// The label the API server sets on every namespace: its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Sets `kubernetes.io/metadata.name` on a namespace's metadata (on each write, so it
/// cannot be changed or removed), as the API server does.
pub fn namespace_label(t: &ResourceType, meta: &mut Map<String, Value>) {
    if t.kind != "Namespace" || !t.group.is_empty() {
        return;
    }
    let name = meta.get("name").cloned().unwrap_or(Value::Null);
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if !labels.is_object() {
        *labels = Value::Object(Map::new());
    }
    if let Value::Object(l) = labels {
        l.insert(NAMESPACE_NAME_LABEL.into(), name);
    }
}

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

fn set(m: &mut Map<String, Value>, k: &str, v: Value) {
    m.entry(k).or_insert(v);
}

fn child<'a>(m: &'a mut Map<String, Value>, k: &str) -> Option<&'a mut Map<String, Value>> {
    let v = m.entry(k).or_insert_with(|| json!({}));
    v.as_object_mut()
}

/// Defaults of a pod spec (also inside templates).
fn pod_spec(spec: &mut Map<String, Value>) {
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            cs.iter_mut().filter_map(obj).for_each(container);
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let tag = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split_once(':'))
        .map(|(_, t)| t);
    let latest = !image.contains('@') && matches!(tag, None | Some("latest"));
    set(
        c,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(obj) {
            set(p, "protocol", json!("TCP"));
        }
    }
}

/// What admission adds to a pod (not to templates): service account, priority and the
/// not-ready/unreachable tolerations.
fn pod_admission(spec: &mut Map<String, Value>) {
    set(spec, "serviceAccountName", json!("default"));
    let sa = spec
        .get("serviceAccountName")
        .cloned()
        .unwrap_or(json!("default"));
    set(spec, "serviceAccount", sa);
    set(spec, "priority", json!(0));
    set(spec, "enableServiceLinks", json!(true));
    set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(ts) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !ts.iter().any(|t| t["key"] == key) {
                ts.push(
                    json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                               "tolerationSeconds": 300}),
                );
            }
        }
    }
}

fn template_spec(spec: &mut Map<String, Value>) {
    if let Some(t) = child(spec, "template").and_then(|t| child(t, "spec")) {
        pod_spec(t);
    }
}

fn service(v: &mut Value, old: Option<&Value>, alloc_ip: &mut dyn FnMut() -> String) {
    let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).cloned();
    let Some(spec) = obj(v).and_then(|m| child(m, "spec")) else {
        return;
    };
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or_default();
    let external = kind == "ExternalName";
    if matches!(kind, "NodePort" | "LoadBalancer") {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if !external {
        set(spec, "internalTrafficPolicy", json!("Cluster"));
        set(spec, "ipFamilyPolicy", json!("SingleStack"));
        set(spec, "ipFamilies", json!(["IPv4"]));
    }
    if !external && !spec.contains_key("clusterIP") {
        let ip = old_ip.unwrap_or_else(|| json!(alloc_ip()));
        spec.insert("clusterIP".into(), ip);
    }
    if let Some(ip) = spec.get("clusterIP").cloned() {
        set(spec, "clusterIPs", json!([ip]));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(obj) {
            set(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set(p, "targetPort", port);
            }
        }
    }
    if let Some(m) = obj(v) {
        set(m, "status", json!({"loadBalancer": {}}));
    }
}

fn deployment(spec: &mut Map<String, Value>) {
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    set(
        spec,
        "strategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
    );
    template_spec(spec);
}

/// Applies the defaults of `t` to an object written over HTTP. `old` is the current
/// object on updates; `alloc_ip` hands out a free service cluster IP.
pub fn apply(
    t: &ResourceType,
    v: &mut Value,
    old: Option<&Value>,
    alloc_ip: &mut dyn FnMut() -> String,
) {
    match (t.group.as_str(), t.kind.as_str()) {
        ("", "Pod") => {
            if let Some(spec) = obj(v).and_then(|m| child(m, "spec")) {
                pod_spec(spec);
                pod_admission(spec);
            }
            if let Some(m) = obj(v) {
                set(
                    m,
                    "status",
                    json!({"phase": "Pending", "qosClass": "BestEffort"}),
                );
            }
        }
        ("", "Service") => service(v, old, alloc_ip),
        ("", "Namespace") => {
            if let Some(m) = obj(v) {
                if let Some(spec) = child(m, "spec") {
                    set(spec, "finalizers", json!(["kubernetes"]));
                }
                if let Some(status) = child(m, "status") {
                    set(status, "phase", json!("Active"));
                }
            }
        }
        ("", "ServiceAccount") | ("", "ConfigMap") => {}
        ("", "Secret") => {
            if let Some(m) = obj(v) {
                set(m, "type", json!("Opaque"));
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = obj(v).and_then(|m| child(m, "spec")) {
                deployment(spec);
            }
        }
        ("apps", "ReplicaSet" | "DaemonSet") => {
            if let Some(spec) = obj(v).and_then(|m| child(m, "spec")) {
                if t.kind == "ReplicaSet" {
                    set(spec, "replicas", json!(1));
                }
                template_spec(spec);
            }
        }
        _ => {}
    }
}

/// The first free cluster IP in 10.96.0.0/12 (from .1 of the second /24, skipping
/// 10.96.0.x, which holds the API server's own service), given the ones in use.
pub fn free_cluster_ip(used: &std::collections::HashSet<String>) -> String {
    let base = u32::from(std::net::Ipv4Addr::new(10, 96, 1, 0));
    (1..(1u32 << 20) - 256)
        .map(|i| std::net::Ipv4Addr::from(base + i).to_string())
        .find(|ip| !used.contains(ip) && !ip.ends_with(".0") && !ip.ends_with(".255"))
        .unwrap_or_else(|| "None".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn ty(kind: &str) -> ResourceType {
        let reg = Registry::new(false);
        reg.iter().find(|(_, t)| t.kind == kind).unwrap().1.clone()
    }

    #[test]
    fn pod_defaults_fill_only_absent_fields() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx:1.2",
             "ports": [{"containerPort": 80}]}]}});
        apply(&ty("Pod"), &mut pod, None, &mut || unreachable!());
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn service_gets_cluster_ip_and_target_port() {
        let mut svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        apply(&ty("Service"), &mut svc, None, &mut || "10.96.1.1".into());
        assert_eq!(svc["spec"]["clusterIP"], "10.96.1.1");
        assert_eq!(svc["spec"]["clusterIPs"], json!(["10.96.1.1"]));
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        let used = ["10.96.1.1".to_string()].into_iter().collect();
        assert_eq!(free_cluster_ip(&used), "10.96.1.2");
    }
}
