//! The simulated scheduler and kubelet: binds unbound pods to a ready node and starts
//! bound pods (an address from the node's pod CIDR, `phase: Running`, Ready conditions,
//! container statuses); host-network pods get the node's InternalIP.
//!
//! Invariants: a pod is bound only if it has no `spec.nodeName`; an address is assigned
//! only to a pod without `status.podIP`. Addresses already present (seeded or written by
//! a client) are recorded as taken if they fall inside their node's CIDR, so a new pod
//! never receives an address a live pod holds; a pod's address is released when it is
//! deleted. Pods that cannot be placed yet (no ready node, node unknown, CIDR full) stay
//! pending (unscheduled) and are retried whenever a node changes or a pod is deleted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::controllers::Ids;
use crate::error::ApiError;
use crate::object::{ObjectKey, StoredObject, now_rfc3339};
use crate::store::{Store, WriteScope};

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
struct Node {
    ready: bool,
    /// Base address and prefix length of `spec.podCIDR`.
    cidr: Option<(u32, u8)>,
    /// `status.addresses[type=InternalIP]`.
    internal_ip: Option<String>,
    /// Pods bound to it (for spreading).
    pods: usize,
}

/// Scheduler and kubelet state: nodes, taken addresses, pending pods.
#[derive(Debug)]
pub struct Kubelet {
    ids: Ids,
    nodes: HashMap<String, Node>,
    /// Addresses in use per node.
    taken: HashMap<String, HashSet<u32>>,
    /// Which pod holds which address (node, address).
    holders: HashMap<ObjectKey, (String, u32)>,
    /// Pods that could not be bound or started yet.
    pending: BTreeSet<ObjectKey>,
}

fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 30).then_some((
        u32::from(ip) & (u32::MAX.checked_shl(32 - u32::from(len))?),
        len,
    ))
}

fn pod_ip(v: &Value) -> Option<&str> {
    v.pointer("/status/podIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn is_terminal(v: &Value) -> bool {
    matches!(
        v.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
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

    /// Records a node's readiness, CIDR and address.
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
        let cidr = v
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .and_then(parse_cidr);
        let internal_ip = v
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
            .and_then(|a| a["address"].as_str())
            .map(str::to_string);
        let pods = self.nodes.get(name).map_or(0, |n| n.pods);
        self.nodes.insert(
            name.to_string(),
            Node {
                ready,
                cidr,
                internal_ip,
                pods,
            },
        );
    }

    /// A node was deleted (its pods keep their addresses until they go).
    pub fn node_gone(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Records a live pod's address; returns whether the pod needs work (binding or start).
    pub fn pod_seen(&mut self, obj: &StoredObject, v: &Value) -> bool {
        let key = obj.key();
        match (&obj.node_name, pod_ip(v)) {
            (Some(node), Some(ip)) => {
                self.pending.remove(&key);
                if !self.holders.contains_key(&key) {
                    self.take(&key, node, ip);
                }
                false
            }
            (Some(_), None) => !is_terminal(v),
            (None, _) => true,
        }
    }

    fn take(&mut self, key: &ObjectKey, node: &str, ip: &str) {
        let Ok(addr) = ip.parse::<Ipv4Addr>() else {
            return;
        };
        let addr = u32::from(addr);
        if let Some(n) = self.nodes.get_mut(node)
            && let Some((base, len)) = n.cidr
            && addr >> (32 - len) == base >> (32 - len)
        {
            n.pods += 1;
            self.taken.entry(node.to_string()).or_default().insert(addr);
            self.holders.insert(key.clone(), (node.to_string(), addr));
        }
    }

    /// A pod was deleted: its address is free again.
    pub fn pod_gone(&mut self, obj: &StoredObject) {
        let key = obj.key();
        self.pending.remove(&key);
        if let Some((node, addr)) = self.holders.remove(&key) {
            if let Some(t) = self.taken.get_mut(&node) {
                t.remove(&addr);
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
        let Some((ip, host_ip, addr)) = self.address_for(&node, host_network) else {
            self.pending.insert(key.clone());
            return;
        };
        let result = store.modify(
            self.ids.pods,
            &key.0,
            &key.1,
            |cur| start_pod(cur, &node, &ip, &host_ip),
            WriteScope::Full,
        );
        match result {
            Ok(_) => {
                self.pending.remove(key);
                if let Some(addr) = addr {
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.pods += 1;
                    }
                    self.taken.entry(node.clone()).or_default().insert(addr);
                    self.holders.insert(key.clone(), (node, addr));
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

    /// (pod IP, host IP, allocated address) for a pod on `node`.
    fn address_for(&self, node: &str, host_network: bool) -> Option<(String, String, Option<u32>)> {
        let n = self.nodes.get(node)?;
        let host_ip = n.internal_ip.clone().unwrap_or_default();
        if host_network {
            return (!host_ip.is_empty()).then(|| (host_ip.clone(), host_ip, None));
        }
        let (base, len) = n.cidr?;
        let size = 1u64 << (32 - u32::from(len));
        let taken = self.taken.get(node);
        // .0 is the network, .1 the node's gateway, the last the broadcast address.
        (2..size - 1)
            .map(|off| base + off as u32)
            .find(|a| !taken.is_some_and(|t| t.contains(a)))
            .map(|a| (Ipv4Addr::from(a).to_string(), host_ip, Some(a)))
    }
}

fn condition(kind: &str, now: &str) -> Value {
    json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
}

/// The pod `cur` bound to `node` and running with `ip` (unchanged if it already has one).
fn start_pod(mut cur: Value, node: &str, ip: &str, host_ip: &str) -> Result<Value, ApiError> {
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
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
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
    fn cidrs_parse_to_network_base() {
        assert_eq!(
            parse_cidr("10.0.1.0/24"),
            Some((u32::from(Ipv4Addr::new(10, 0, 1, 0)), 24))
        );
        assert_eq!(
            parse_cidr("10.0.1.7/24"),
            Some((u32::from(Ipv4Addr::new(10, 0, 1, 0)), 24))
        );
        assert_eq!(parse_cidr("10.0.1.0/31"), None);
        assert_eq!(parse_cidr("nonsense"), None);
    }

    #[test]
    fn started_pod_is_running_and_ready() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let v = start_pod(pod, "n1", "10.0.0.2", "172.16.0.1").unwrap();
        assert_eq!(v["spec"]["nodeName"], "n1");
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(v["status"]["podIP"], "10.0.0.2");
        assert_eq!(v["status"]["containerStatuses"][0]["ready"], true);
        let ready = v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        // A pod with an address is left alone.
        let again = start_pod(v.clone(), "n2", "10.0.0.9", "x").unwrap();
        assert_eq!(again, v);
    }
}
