//! Synthetic cluster seeding: nodes, namespaces, service accounts, pods and policies.
//!
//! Addresses are in-memory data only (nothing is routed): node `i` owns the pod CIDR
//! `10.<i/256>.<i%256>.0/24` and the InternalIP `172.(16+i/65536).<(i/256)%256>.<i%256>`;
//! its pods get `.2`, `.3`, ... of that /24, host-network pods get the node IP. Pods are
//! spread round-robin over namespaces and, inside a namespace, over ten "deployments"
//! (labels app, tier, version, pod-template-hash; serviceAccountName = the app).
//! Seeding goes through the normal write path, so it produces watch events and rvs.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources::CALICO_GROUP;
use crate::store::Store;

/// Apps (deployments) per namespace.
const APPS: usize = 10;
const TIERS: [&str; 3] = ["frontend", "backend", "db"];

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedConfig {
    /// Number of nodes (at most 65,536).
    pub nodes: usize,
    /// Pods per node (at most 250).
    pub pods_per_node: usize,
    /// Number of namespaces (at least 1 if there are pods).
    pub namespaces: usize,
    /// Kubernetes NetworkPolicies per namespace.
    pub policies_per_namespace: usize,
    /// Every n-th pod of a node uses the host network (0: none).
    pub host_network_every: usize,
}

impl SeedConfig {
    /// `nodes` nodes and nothing else (no namespaces, pods or policies): a cluster for
    /// tests that create their own workloads.
    pub fn nodes_only(nodes: usize) -> Self {
        SeedConfig {
            nodes,
            pods_per_node: 0,
            namespaces: 0,
            policies_per_namespace: 0,
            host_network_every: 0,
        }
    }
}

impl Default for SeedConfig {
    fn default() -> Self {
        SeedConfig {
            nodes: 3,
            pods_per_node: 5,
            namespaces: 2,
            policies_per_namespace: 1,
            host_network_every: 10,
        }
    }
}

/// What was created and how long it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedStats {
    /// Objects created in total.
    pub objects: usize,
    /// Pods created.
    pub pods: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The configuration cannot be laid out (too many nodes or pods per node, no namespace).
    #[error("invalid seed configuration: {0}")]
    Config(String),
    /// The store rejected an object (e.g. it already exists: seed an empty store).
    #[error("seeding failed: {0}")]
    Store(#[from] ApiError),
}

/// The pod CIDR of node `i`.
pub fn node_cidr(i: usize) -> String {
    format!("10.{}.{}.0/24", i / 256, i % 256)
}

/// The InternalIP of node `i`.
pub fn node_ip(i: usize) -> String {
    format!("172.{}.{}.{}", 16 + i / 65536, (i / 256) % 256, i % 256)
}

/// The name of node `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn hash_hex(a: usize, b: usize) -> String {
    let h = (a as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (b as u64 + 1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// Creates the synthetic cluster in `store` (which should not already hold these names).
pub fn seed(store: &Store, cfg: &SeedConfig) -> Result<SeedStats, SeedError> {
    if cfg.nodes > 65_536 || cfg.pods_per_node > 250 {
        return Err(SeedError::Config(
            "at most 65536 nodes and 250 pods per node".into(),
        ));
    }
    if cfg.namespaces == 0 && cfg.nodes * cfg.pods_per_node > 0 {
        return Err(SeedError::Config("pods need at least one namespace".into()));
    }
    let start = Instant::now();
    let calico = store
        .resolve_kind(&format!("{CALICO_GROUP}/v1"), "IPPool")
        .is_ok();
    let mut objects = 0usize;
    for v in seed_objects(cfg, calico) {
        store.create_object(v)?;
        objects += 1;
    }
    Ok(SeedStats {
        objects,
        pods: cfg.nodes * cfg.pods_per_node,
        elapsed: start.elapsed(),
    })
}

/// The synthetic cluster's objects in creation order (Calico's defaults when `calico`,
/// then per namespace its objects, the nodes, the pods), built one at a time: a consumer
/// that converts them (typha's memory budget test) holds one object, not the cluster.
/// [`seed`] checks `cfg`'s bounds; an unchecked config yields what it asks for.
pub fn seed_objects(cfg: &SeedConfig, calico: bool) -> impl Iterator<Item = Value> + '_ {
    let defaults = calico.then(calico_defaults).into_iter().flatten();
    let namespaces =
        (0..cfg.namespaces).flat_map(|n| namespace_objects(n, cfg.policies_per_namespace));
    let nodes = (0..cfg.nodes).map(node);
    let pods = (0..cfg.nodes).flat_map(move |i| {
        (0..cfg.pods_per_node).map(move |k| {
            let host = cfg.host_network_every > 0
                && k % cfg.host_network_every == cfg.host_network_every - 1;
            pod(cfg, i, k, host)
        })
    });
    defaults.chain(namespaces).chain(nodes).chain(pods)
}

fn node(i: usize) -> Value {
    let name = node_name(i);
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        "spec": {"podCIDR": node_cidr(i), "podCIDRs": [node_cidr(i)]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node_ip(i)}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

fn namespace_objects(n: usize, policies: usize) -> Vec<Value> {
    let ns = format!("ns-{n}");
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {
            "kubernetes.io/metadata.name": ns, "team": format!("team-{}", n % 5),
            "env": if n.is_multiple_of(2) { "prod" } else { "dev" }}},
    })];
    out.push(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}));
    for a in 0..APPS {
        out.push(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("app-{a}"), "namespace": ns, "labels": {"app": format!("app-{a}")}}}));
    }
    for p in 0..policies {
        let app = format!("app-{}", p % APPS);
        out.push(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("allow-{app}-{p}"), "namespace": ns},
            "spec": {
                "podSelector": {"matchLabels": {"app": app}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"tier": "frontend"}}},
                             {"namespaceSelector": {"matchLabels": {"team": format!("team-{}", p % 5)}}}],
                    "ports": [{"protocol": "TCP", "port": 8080}],
                }],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.255.0.0/16"]}}]}],
            },
        }));
    }
    out
}

fn pod(cfg: &SeedConfig, i: usize, k: usize, host_network: bool) -> Value {
    let g = i * cfg.pods_per_node + k;
    let n = g % cfg.namespaces;
    let a = (g / cfg.namespaces) % APPS;
    let app = format!("app-{a}");
    let hash = hash_hex(n, a);
    let ip = if host_network {
        node_ip(i)
    } else {
        format!("10.{}.{}.{}", i / 256, i % 256, k + 2)
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-{hash}-{g:06x}"),
            "namespace": format!("ns-{n}"),
            "labels": {"app": app, "tier": TIERS[a % 3], "version": format!("v{}", 1 + g % 3),
                       "pod-template-hash": hash},
        },
        "spec": {
            "nodeName": node_name(i),
            "serviceAccountName": app,
            "hostNetwork": host_network,
            "containers": [{"name": "main", "image": format!("registry.example/{app}:1.0"),
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
        "status": {"phase": "Running", "hostIP": node_ip(i), "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn calico_defaults() -> Vec<Value> {
    let api = format!("{CALICO_GROUP}/v1");
    vec![
        json!({"apiVersion": api, "kind": "ClusterInformation", "metadata": {"name": "default"},
               "spec": {"datastoreReady": true, "clusterGUID": "00000000000000000000000000000001",
                        "calicoVersion": "v3.29.0", "clusterType": "k8s,bgp"}}),
        json!({"apiVersion": api, "kind": "FelixConfiguration", "metadata": {"name": "default"},
               "spec": {"logSeverityScreen": "Info", "reportingInterval": "0s", "bpfEnabled": false}}),
        json!({"apiVersion": api, "kind": "IPPool", "metadata": {"name": "default-ipv4-ippool"},
               "spec": {"cidr": "10.0.0.0/8", "ipipMode": "Never", "vxlanMode": "Never",
                        "natOutgoing": true, "blockSize": 24, "nodeSelector": "all()"}}),
        json!({"apiVersion": api, "kind": "GlobalNetworkPolicy", "metadata": {"name": "default.allow-dns"},
               "spec": {"order": 100, "selector": "all()", "types": ["Egress"],
                        "egress": [{"action": "Allow", "protocol": "UDP",
                                    "destination": {"ports": [53]}}]}}),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn small_seed_is_consistent() {
        let store = Store::new(100, true);
        let cfg = SeedConfig {
            nodes: 4,
            pods_per_node: 10,
            namespaces: 3,
            policies_per_namespace: 2,
            host_network_every: 5,
        };
        let stats = seed(&store, &cfg).unwrap();
        assert_eq!(stats.pods, 40);
        let pods = store.list_objects("v1", "Pod");
        assert_eq!(pods.len(), 40);
        for p in &pods {
            let node: usize = p["spec"]["nodeName"].as_str().unwrap()[5..]
                .parse()
                .unwrap();
            let ip = p["status"]["podIP"].as_str().unwrap();
            if p["spec"]["hostNetwork"] == true {
                assert_eq!(ip, node_ip(node));
            } else {
                assert!(
                    ip.starts_with(&format!("10.{}.{}.", node / 256, node % 256)),
                    "{ip}"
                );
            }
        }
        assert_eq!(
            pods.iter()
                .filter(|p| p["spec"]["hostNetwork"] == true)
                .count(),
            8
        );
        assert_eq!(
            store
                .list_objects("networking.k8s.io/v1", "NetworkPolicy")
                .len(),
            6
        );
        assert_eq!(store.list_objects("v1", "Node").len(), 4);
        assert_eq!(
            store
                .list_objects("crd.projectcalico.org/v1", "ClusterInformation")
                .len(),
            1
        );
        assert!(
            seed(
                &store,
                &SeedConfig {
                    pods_per_node: 251,
                    ..cfg
                }
            )
            .is_err()
        );
    }
}
