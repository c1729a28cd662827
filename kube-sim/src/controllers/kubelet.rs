//! The simulated scheduler and kubelet: binds unbound pods to a ready node and starts
//! bound pods (`phase: Running`, Ready conditions, container statuses) with one address
//! from each of the node's pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`): a
//! dual-stack node's pods get an IPv4 and an IPv6 address, in the order of the node's
//! CIDRs (`status.podIP` is the first); host-network pods get the node's InternalIPs.
//!
//! Invariants: a pod is bound only if it has no `spec.nodeName`; addresses are assigned
//! only to a pod without `status.podIP`. Addresses already present (seeded or written by
//! a client) are recorded as taken if they fall inside one of their node's CIDRs, so a
//! new pod never receives an address a live pod holds; a pod's addresses are released
//! when it is deleted. Pods that cannot be placed yet (no ready node, node unknown, a
//! CIDR full) stay pending (unscheduled) and are retried whenever a node changes or a
//! pod is deleted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use serde_json::{Value, json};

use super::ipam::PodCidr;
use crate::controllers::Ids;
use crate::error::ApiError;
use crate::object::{ObjectKey, StoredObject, now_rfc3339};
use crate::store::{Store, WriteScope};

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
struct Node {
    ready: bool,
    /// Its pod CIDRs, the first of each family, in `spec.podCIDRs` order.
    cidrs: Vec<PodCidr>,
    /// `status.addresses[type=InternalIP]`, the first of each family, in order.
    internal_ips: Vec<String>,
    /// Pods bound to it (for spreading).
    pods: usize,
}

/// Scheduler and kubelet state: nodes, taken addresses, pending pods.
#[derive(Debug)]
pub struct Kubelet {
    ids: Ids,
    nodes: HashMap<String, Node>,
    /// Addresses in use per node.
    taken: HashMap<String, HashSet<IpAddr>>,
    /// Which pod holds which addresses (node, addresses).
    holders: HashMap<ObjectKey, (String, Vec<IpAddr>)>,
    /// Pods that could not be bound or started yet.
    pending: BTreeSet<ObjectKey>,
}

/// The pod CIDRs of a node object: `spec.podCIDRs`, else `spec.podCIDR`; the first
/// parsable one of each family.
fn node_cidrs(v: &Value) -> Vec<PodCidr> {
    let listed: Vec<&str> = match v.pointer("/spec/podCIDRs").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().filter_map(Value::as_str).collect(),
        _ => v
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
    };
    let mut cidrs: Vec<PodCidr> = Vec::new();
    for cidr in listed.into_iter().filter_map(PodCidr::parse) {
        if !cidrs.iter().any(|c| c.is_v6() == cidr.is_v6()) {
            cidrs.push(cidr);
        }
    }
    cidrs
}

/// The first InternalIP of each family, in listed order.
fn internal_ips(v: &Value) -> Vec<String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let listed = v.pointer("/status/addresses").and_then(Value::as_array);
    for a in listed
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "InternalIP")
    {
        let Some(ip) = a["address"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
            continue;
        };
        if !out.iter().any(|(v6, _)| *v6 == ip.is_ipv6()) {
            out.push((ip.is_ipv6(), ip.to_string()));
        }
    }
    out.into_iter().map(|(_, ip)| ip).collect()
}

fn pod_ip(v: &Value) -> Option<&str> {
    v.pointer("/status/podIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A pod's addresses: `status.podIPs`, else `status.podIP`.
fn pod_ips(v: &Value) -> Vec<IpAddr> {
    let listed: Vec<&str> = match v.pointer("/status/podIPs").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().filter_map(|p| p["ip"].as_str()).collect(),
        _ => pod_ip(v).into_iter().collect(),
    };
    listed.iter().filter_map(|ip| ip.parse().ok()).collect()
}

fn is_terminal(v: &Value) -> bool {
    matches!(
        v.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// What a started pod gets.
struct Addresses {
    /// `status.podIPs` (the first is `status.podIP`).
    pod_ips: Vec<String>,
    /// `status.hostIPs`.
    host_ips: Vec<String>,
    /// The addresses it takes from the node's ranges (none for host network).
    taken: Vec<IpAddr>,
}

impl Kubelet {
    /// Empty state for the kinds in `ids`.
    pub fn new(ids: Ids) -> Self {
        Kubelet {
            ids,
            nodes: HashMap::new(),
            taken: HashMap::new(),
            holders: HashMap::new(),
            pending: BTreeSet::new(),
        }
    }

    /// The resource ids.
    pub fn ids(&self) -> Ids {
        self.ids
    }

    /// Forgets everything (before a resync).
    pub fn reset(&mut self) {
        *self = Kubelet::new(self.ids);
    }

    /// Records a node's readiness, CIDRs and addresses.
    pub fn node_seen(&mut self, v: &Value) {
        let Some(name) = v.pointer("/metadata/name").and_then(Value::as_str) else {
            return;
        };
        let ready = v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        let pods = self.nodes.get(name).map_or(0, |n| n.pods);
        self.nodes.insert(
            name.to_string(),
            Node {
                ready,
                cidrs: node_cidrs(v),
                internal_ips: internal_ips(v),
                pods,
            },
        );
    }

    /// A node was deleted (its pods keep their addresses until they go).
    pub fn node_gone(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Records a live pod's addresses; returns whether the pod needs work (binding or start).
    pub fn pod_seen(&mut self, obj: &StoredObject, v: &Value) -> bool {
        let key = obj.key();
        match (&obj.node_name, pod_ip(v)) {
            (Some(node), Some(_)) => {
                self.pending.remove(&key);
                if !self.holders.contains_key(&key) {
                    self.take(&key, node, &pod_ips(v));
                }
                false
            }
            (Some(_), None) => !is_terminal(v),
            (None, _) => true,
        }
    }

    fn take(&mut self, key: &ObjectKey, node: &str, ips: &[IpAddr]) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let inside: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| n.cidrs.iter().any(|c| c.contains(*ip)))
            .collect();
        if inside.is_empty() {
            return;
        }
        n.pods += 1;
        self.taken
            .entry(node.to_string())
            .or_default()
            .extend(inside.iter().copied());
        self.holders.insert(key.clone(), (node.to_string(), inside));
    }

    /// A pod was deleted: its address is free again.
    pub fn pod_gone(&mut self, obj: &StoredObject) {
        let key = obj.key();
        self.pending.remove(&key);
        if let Some((node, addrs)) = self.holders.remove(&key) {
            if let Some(t) = self.taken.get_mut(&node) {
                addrs.iter().for_each(|a| {
                    t.remove(a);
                });
            }
            if let Some(n) = self.nodes.get_mut(&node) {
                n.pods = n.pods.saturating_sub(1);
            }
        }
    }

    /// The pending pods (to retry after a node change).
    pub fn take_pending(&mut self) -> BTreeSet<ObjectKey> {
        std::mem::take(&mut self.pending)
    }

    /// Binds and/or starts the pod `key` if it still needs it.
    pub fn reconcile_pod(&mut self, store: &Store, key: &ObjectKey) {
        let Some(obj) = store.get(self.ids.pods, &key.0, &key.1) else {
            return;
        };
        let v = obj.value();
        if v.pointer("/metadata/deletionTimestamp").is_some() || is_terminal(&v) {
            return;
        }
        let node = match &obj.node_name {
            Some(n) => n.clone(),
            None => match self.pick_node() {
                Some(n) => n,
                None => {
                    self.pending.insert(key.clone());
                    return;
                }
            },
        };
        if pod_ip(&v).is_some() {
            if obj.node_name.is_none() {
                self.bind_only(store, key, &node);
            }
            return;
        }
        let host_network = v.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
        let Some(addresses) = self.address_for(&node, host_network) else {
            self.pending.insert(key.clone());
            return;
        };
        let result = store.modify(
            self.ids.pods,
            &key.0,
            &key.1,
            |cur| start_pod(cur, &node, &addresses),
            WriteScope::Full,
        );
        match result {
            Ok(_) => {
                self.pending.remove(key);
                if !addresses.taken.is_empty() {
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.pods += 1;
                    }
                    let taken = self.taken.entry(node.clone()).or_default();
                    taken.extend(addresses.taken.iter().copied());
                    self.holders.insert(key.clone(), (node, addresses.taken));
                }
            }
            Err(error) => tracing::debug!(%error, pod = ?key, "kubelet: pod not started"),
        }
    }

    fn bind_only(&mut self, store: &Store, key: &ObjectKey, node: &str) {
        let bind = |mut cur: Value| {
            if cur.pointer("/spec/nodeName").is_none()
                && let Some(spec) = cur.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.insert("nodeName".into(), json!(node));
            }
            Ok(cur)
        };
        if let Err(error) = store.modify(self.ids.pods, &key.0, &key.1, bind, WriteScope::Full) {
            tracing::debug!(%error, pod = ?key, "scheduler: pod not bound");
        }
    }

    /// The ready node with the fewest pods (ties: by name).
    fn pick_node(&self) -> Option<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.ready)
            .min_by(|a, b| a.1.pods.cmp(&b.1.pods).then(a.0.cmp(b.0)))
            .map(|(name, _)| name.clone())
    }

    /// The addresses of a pod starting on `node`: the node's InternalIPs for host
    /// network, else the first free address of each of its pod CIDRs (`None` while the
    /// node is unknown, has no CIDR, or one of its CIDRs is full).
    fn address_for(&self, node: &str, host_network: bool) -> Option<Addresses> {
        let n = self.nodes.get(node)?;
        let host_ips = n.internal_ips.clone();
        if host_network {
            return (!host_ips.is_empty()).then(|| Addresses {
                pod_ips: host_ips.clone(),
                host_ips,
                taken: Vec::new(),
            });
        }
        let empty = HashSet::new();
        let taken_now = self.taken.get(node).unwrap_or(&empty);
        let taken: Vec<IpAddr> = n
            .cidrs
            .iter()
            .map(|c| c.first_free(taken_now))
            .collect::<Option<_>>()?;
        if taken.is_empty() {
            return None;
        }
        Some(Addresses {
            pod_ips: taken.iter().map(IpAddr::to_string).collect(),
            host_ips,
            taken,
        })
    }
}

fn ip_list(ips: &[String]) -> Vec<Value> {
    ips.iter().map(|ip| json!({"ip": ip})).collect()
}

fn condition(kind: &str, now: &str) -> Value {
    json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
}

/// The pod `cur` bound to `node` and running with `addresses` (unchanged if it already
/// has an IP).
fn start_pod(mut cur: Value, node: &str, addresses: &Addresses) -> Result<Value, ApiError> {
    if pod_ip(&cur).is_some() {
        return Ok(cur);
    }
    let now = now_rfc3339();
    let Some(obj) = cur.as_object_mut() else {
        return Ok(cur);
    };
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    if spec.get("nodeName").is_none()
        && let Some(s) = spec.as_object_mut()
    {
        s.insert("nodeName".into(), json!(node));
    }
    let containers: Vec<Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({
                        "name": c.get("name").cloned().unwrap_or(json!("")),
                        "image": c.get("image").cloned().unwrap_or(json!("")),
                        "imageID": "",
                        "containerID": format!("containerd://{:064x}", i),
                        "ready": true,
                        "started": true,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let kinds = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ];
    obj.insert(
        "status".into(),
        json!({
            "phase": "Running",
            "conditions": kinds.iter().map(|k| condition(k, &now)).collect::<Vec<_>>(),
            "hostIP": addresses.host_ips.first().cloned().unwrap_or_default(),
            "hostIPs": ip_list(&addresses.host_ips),
            "podIP": addresses.pod_ips.first().cloned().unwrap_or_default(),
            "podIPs": ip_list(&addresses.pod_ips),
            "startTime": now,
            "qosClass": "BestEffort",
            "containerStatuses": containers,
        }),
    );
    Ok(cur)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nodes_give_one_cidr_and_one_internal_ip_per_family() {
        let node = json!({"spec": {"podCIDR": "10.0.1.0/24",
                                   "podCIDRs": ["fd00:1::/64", "10.0.1.0/24", "10.0.9.0/24"]},
                          "status": {"addresses": [{"type": "Hostname", "address": "n"},
                                                   {"type": "InternalIP", "address": "172.16.0.1"},
                                                   {"type": "InternalIP", "address": "172.16.0.2"},
                                                   {"type": "InternalIP", "address": "fd99::1"}]}});
        let cidrs = node_cidrs(&node);
        assert_eq!(cidrs.len(), 2);
        assert!(
            cidrs[0].is_v6() && !cidrs[1].is_v6(),
            "podCIDRs order is kept"
        );
        assert_eq!(internal_ips(&node), vec!["172.16.0.1", "fd99::1"]);
        let old = json!({"spec": {"podCIDR": "10.0.1.0/24"}});
        assert_eq!(
            node_cidrs(&old),
            vec![PodCidr::parse("10.0.1.0/24").unwrap()]
        );
    }

    #[test]
    fn started_pod_is_running_and_ready() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let addresses = Addresses {
            pod_ips: vec!["10.0.0.2".into(), "fd00::2".into()],
            host_ips: vec!["172.16.0.1".into()],
            taken: Vec::new(),
        };
        let v = start_pod(pod, "n1", &addresses).unwrap();
        assert_eq!(v["spec"]["nodeName"], "n1");
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(v["status"]["podIP"], "10.0.0.2");
        assert_eq!(
            v["status"]["podIPs"],
            json!([{"ip": "10.0.0.2"}, {"ip": "fd00::2"}])
        );
        assert_eq!(v["status"]["hostIPs"], json!([{"ip": "172.16.0.1"}]));
        assert_eq!(v["status"]["containerStatuses"][0]["ready"], true);
        let ready = v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        // A pod with an address is left alone.
        let again = start_pod(v.clone(), "n2", &addresses).unwrap();
        assert_eq!(again, v);
    }
}
