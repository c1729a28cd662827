//! The bench and its policies as Kubernetes objects (JSON, as stored by kube-sim):
//! namespaces, default service accounts, nodes (InternalIPs + pod CIDRs of the bench's
//! families), pods (node, IPs, labels, named container ports, Running), the IPPools (an
//! IPv6 one on an IPv6 bench) and networking.k8s.io/v1 NetworkPolicy.

use serde_json::{Map, Value as Json, json};

use crate::policy::{
    IpBlock, LabelSelector, Peer, Policy, PolicyPort, PolicyType, PortValue, Rule,
};
use crate::stack::{CLUSTER_CIDR_V6, IpFamily};
use crate::topology::{CLUSTER_CIDR, NodeInfo, PodInfo, Topology};
use crate::underlay::NODE_PREFIX_LEN;

fn labels_json(labels: &std::collections::BTreeMap<String, String>) -> Json {
    Json::Object(labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// A Namespace.
pub fn namespace_json(name: &str, labels: &std::collections::BTreeMap<String, String>) -> Json {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels_json(labels)}})
}

/// The `default` ServiceAccount of `namespace`.
pub fn service_account_json(namespace: &str) -> Json {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "default", "namespace": namespace}})
}

/// A Node with its InternalIPs, pod CIDRs and (with IPv4) Calico's address annotation
/// (the address with its subnet's prefix, what `CrossSubnet` encapsulation compares).
pub fn node_json(node: &NodeInfo) -> Json {
    let mut addresses: Vec<Json> = node
        .addresses()
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": node.name}));
    let mut annotations = Map::new();
    if node.stack.has(IpFamily::V4) {
        let annotated = format!("{}/{NODE_PREFIX_LEN}", node.ip);
        annotations.insert("projectcalico.org/IPv4Address".into(), json!(annotated));
    }
    let cidrs = node.pod_cidrs();
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name},
                        "annotations": annotations},
           "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
           "status": {"addresses": addresses,
                      "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// A running Pod on `node_name` with the bench's IP and named ports.
pub fn pod_json(pod: &PodInfo, node_name: &str) -> Json {
    let ports: Vec<Json> = pod
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol.as_k8s()}))
        .collect();
    let ip = pod.ip.to_string();
    let ips: Vec<Json> = pod
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels_json(&pod.labels)},
           "spec": {"nodeName": node_name, "serviceAccountName": "default",
                    "containers": [{"name": "serve", "image": "registry.example/agnhost:1", "ports": ports}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": ips,
                      "conditions": [{"type": "Ready", "status": "True"}]}})
}

const CALICO_API: &str = "crd.projectcalico.org/v1";

/// The bench's IPPool (`default-ipv4-ippool`, the cluster CIDR, natOutgoing) with the
/// given `vxlanMode` and `ipipMode` (`Never`, `Always`, `CrossSubnet`).
pub fn ip_pool_json(vxlan_mode: &str, ipip_mode: &str) -> Json {
    json!({"apiVersion": CALICO_API, "kind": "IPPool", "metadata": {"name": "default-ipv4-ippool"},
           "spec": {"cidr": CLUSTER_CIDR, "ipipMode": ipip_mode, "vxlanMode": vxlan_mode,
                    "natOutgoing": true, "blockSize": 24, "nodeSelector": "all()"}})
}

/// Calico's cluster-wide objects a real cluster has: ClusterInformation (datastore
/// ready) and an IPPool covering the pod CIDRs (no encapsulation).
pub fn calico_defaults() -> Vec<Json> {
    vec![
        json!({"apiVersion": CALICO_API, "kind": "ClusterInformation", "metadata": {"name": "default"},
               "spec": {"datastoreReady": true, "clusterType": "k8s"}}),
        ip_pool_json("Never", "Never"),
    ]
}

/// The bench's IPv6 IPPool (`default-ipv6-ippool`, [`CLUSTER_CIDR_V6`], natOutgoing, no
/// encapsulation: IPv6 pod CIDRs are routed plainly).
pub fn ip_pool6_json() -> Json {
    json!({"apiVersion": CALICO_API, "kind": "IPPool", "metadata": {"name": "default-ipv6-ippool"},
           "spec": {"cidr": CLUSTER_CIDR_V6, "ipipMode": "Never", "vxlanMode": "Never",
                    "natOutgoing": true, "blockSize": 122, "nodeSelector": "all()"}})
}

/// Every object of the bench: namespaces (with their default service accounts), nodes,
/// pods, and the Calico defaults (plus the IPv6 pool on an IPv6 bench).
pub fn topology_objects(topo: &Topology) -> Vec<Json> {
    let mut out = calico_defaults();
    if topo.stack().has(IpFamily::V6) {
        out.push(ip_pool6_json());
    }
    for (name, labels) in topo.namespaces() {
        out.push(namespace_json(name, labels));
        out.push(service_account_json(name));
    }
    out.extend(topo.nodes().iter().map(node_json));
    for pod in topo.pods() {
        out.push(pod_json(pod, &topo.nodes()[pod.node].name));
    }
    out
}

/// A label selector.
pub fn selector_json(selector: &LabelSelector) -> Json {
    let mut m = Map::new();
    if !selector.match_labels.is_empty() {
        m.insert("matchLabels".into(), labels_json(&selector.match_labels));
    }
    if !selector.match_expressions.is_empty() {
        let exprs: Vec<Json> = selector
            .match_expressions
            .iter()
            .map(|r| {
                let mut e = json!({"key": r.key, "operator": r.operator.as_k8s()});
                if !r.values.is_empty() {
                    e["values"] = json!(r.values);
                }
                e
            })
            .collect();
        m.insert("matchExpressions".into(), Json::Array(exprs));
    }
    Json::Object(m)
}

fn ip_block_json(block: &IpBlock) -> Json {
    let mut b = json!({"cidr": block.cidr});
    if !block.except.is_empty() {
        b["except"] = json!(block.except);
    }
    b
}

fn peer_json(peer: &Peer) -> Json {
    let mut m = Map::new();
    if let Some(s) = &peer.pod_selector {
        m.insert("podSelector".into(), selector_json(s));
    }
    if let Some(s) = &peer.namespace_selector {
        m.insert("namespaceSelector".into(), selector_json(s));
    }
    if let Some(b) = &peer.ip_block {
        m.insert("ipBlock".into(), ip_block_json(b));
    }
    Json::Object(m)
}

fn port_json(port: &PolicyPort) -> Json {
    let mut m = Map::new();
    if let Some(p) = port.protocol {
        m.insert("protocol".into(), json!(p.as_k8s()));
    }
    match &port.port {
        Some(PortValue::Number(n)) => m.insert("port".into(), json!(n)),
        Some(PortValue::Name(name)) => m.insert("port".into(), json!(name)),
        None => None,
    };
    if let Some(end) = port.end_port {
        m.insert("endPort".into(), json!(end));
    }
    Json::Object(m)
}

fn rule_json(rule: &Rule, peers_field: &str) -> Json {
    let mut m = Map::new();
    if !rule.peers.is_empty() {
        m.insert(
            peers_field.into(),
            rule.peers.iter().map(peer_json).collect(),
        );
    }
    if !rule.ports.is_empty() {
        m.insert("ports".into(), rule.ports.iter().map(port_json).collect());
    }
    Json::Object(m)
}

/// A networking.k8s.io/v1 NetworkPolicy. `policyTypes` is written only when explicit
/// (so the API's defaulting is exercised); empty rule lists are omitted.
pub fn policy_json(policy: &Policy) -> Json {
    let mut spec = Map::new();
    spec.insert("podSelector".into(), selector_json(&policy.pod_selector));
    if let Some(types) = &policy.policy_types {
        let names: Vec<&str> = types
            .iter()
            .map(|t| match t {
                PolicyType::Ingress => "Ingress",
                PolicyType::Egress => "Egress",
            })
            .collect();
        spec.insert("policyTypes".into(), json!(names));
    }
    if !policy.ingress.is_empty() {
        let rules = policy
            .ingress
            .iter()
            .map(|r| rule_json(r, "from"))
            .collect();
        spec.insert("ingress".into(), rules);
    }
    if !policy.egress.is_empty() {
        let rules = policy.egress.iter().map(|r| rule_json(r, "to")).collect();
        spec.insert("egress".into(), rules);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": policy.name, "namespace": policy.namespace},
           "spec": Json::Object(spec)})
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::policy::Protocol;

    #[test]
    fn policy_json_has_the_k8s_shape() {
        let p = Policy::new("x", "p", LabelSelector::label("pod", "a"))
            .ingress(
                Rule::from_peers(vec![
                    Peer::pods_in(LabelSelector::label("ns", "y"), LabelSelector::all()),
                    Peer::ip_block("10.244.0.0/16", &["10.244.1.0/24"]),
                ])
                .with_ports(vec![
                    PolicyPort::named(Protocol::Tcp, "serve-80-tcp"),
                    PolicyPort::range(Protocol::Udp, 80, 81),
                ]),
            )
            .egress(Rule::allow_all());
        let j = policy_json(&p);
        assert_eq!(j["metadata"]["namespace"], "x");
        assert!(j["spec"].get("policyTypes").is_none());
        let rule = &j["spec"]["ingress"][0];
        assert_eq!(
            rule["from"][0]["namespaceSelector"]["matchLabels"]["ns"],
            "y"
        );
        assert_eq!(rule["from"][0]["podSelector"], json!({}));
        assert_eq!(rule["from"][1]["ipBlock"]["except"][0], "10.244.1.0/24");
        assert_eq!(
            rule["ports"][0],
            json!({"protocol": "TCP", "port": "serve-80-tcp"})
        );
        assert_eq!(
            rule["ports"][1],
            json!({"protocol": "UDP", "port": 80, "endPort": 81})
        );
        assert_eq!(j["spec"]["egress"], json!([{}]));
    }

    #[test]
    fn explicit_types_and_expressions() {
        let sel = LabelSelector::all().and_expr("pod", crate::Operator::NotIn, &["a", "b"]);
        let p = Policy::new("x", "deny", sel).types(&[PolicyType::Egress]);
        let j = policy_json(&p);
        assert_eq!(j["spec"]["policyTypes"], json!(["Egress"]));
        assert_eq!(
            j["spec"]["podSelector"]["matchExpressions"][0],
            json!({"key": "pod", "operator": "NotIn", "values": ["a", "b"]})
        );
        assert!(j["spec"].get("ingress").is_none());
    }
}
