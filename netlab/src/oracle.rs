//! The oracle: an independent implementation of Kubernetes NetworkPolicy semantics that
//! computes the expected reachability of every probe. It knows nothing of Calico, the
//! model or felix-client's calc; it follows the Kubernetes API reference directly:
//!
//! - A pod is isolated for a direction when some policy of its namespace selects it and
//!   has that direction in its (defaulted) policyTypes; a non-isolated pod allows all.
//! - An isolated pod allows a connection when any rule of any such policy matches it:
//!   the peer matches any `from`/`to` entry (none = all peers) and the port any `ports`
//!   entry (none = all ports).
//! - A connection needs the source's egress and the destination's ingress.
//! - Named ports resolve against the destination pod's container ports (for ingress and
//!   egress alike); `endPort` makes an inclusive range; a missing protocol is TCP.
//! - ipBlock matches the other pod's IP (no NAT between pods) unless it is in an except.
//!   Each IP family is its own connection: a dual-stack pair is judged once over IPv4
//!   and once over IPv6, and an ipBlock matches only addresses of its own family (an
//!   IPv4 block never admits an IPv6 connection); selectors apply to both alike.
//! - A pod reaching its own IP never leaves its namespace (loopback): always allowed.
//! - Every namespace carries `kubernetes.io/metadata.name: <name>` (set by the API
//!   server, whatever the namespace object says), so namespace selectors can use it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::policy::{
    IpBlock, LabelSelector, NamedPort, Operator, Peer, Policy, PolicyPort, PolicyType, PortValue,
    Protocol, Requirement, Rule,
};
use crate::probe::{Matrix, ProbeKey};
use crate::stack::IpFamily;

/// The label the API server puts on every namespace (its name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A pod as the oracle sees it.
#[derive(Clone, Debug)]
pub struct ClusterPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The pod IPs (one per family).
    pub ips: Vec<IpAddr>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
}

impl ClusterPod {
    /// `namespace/name`, the id used in matrices.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its address of `family`, if it has one.
    pub fn ip_of(&self, family: IpFamily) -> Option<IpAddr> {
        crate::stack::address_of(&self.ips, family)
    }
}

/// The cluster the policies apply to.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Namespace name -> the labels written to its object (the API server's
    /// `kubernetes.io/metadata.name` label is implied, not listed).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Every pod.
    pub pods: Vec<ClusterPod>,
}

impl Cluster {
    /// The labels a namespace has in the API: its own, plus the
    /// `kubernetes.io/metadata.name: <namespace>` label the API server sets on every
    /// namespace (clients cannot change or remove it).
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), namespace.into());
        labels
    }
}

/// Whether `selector` selects an object with `labels`.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector
            .match_expressions
            .iter()
            .all(|r| requirement_holds(r, labels))
}

fn requirement_holds(r: &Requirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    match r.operator {
        Operator::In => value.is_some_and(|v| r.values.contains(v)),
        Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
        Operator::Exists => value.is_some(),
        Operator::DoesNotExist => value.is_none(),
    }
}

/// An address as (family, number): IPv4 in the low 32 bits.
fn number(ip: IpAddr) -> (IpFamily, u128) {
    match ip {
        IpAddr::V4(a) => (IpFamily::V4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (IpFamily::V6, u128::from(a)),
    }
}

/// Parses `a.b.c.d/len` or `v6/len` (a bare address is a host network) into (family,
/// network, mask).
fn parse_cidr(cidr: &str) -> Option<(IpFamily, u128, u128)> {
    let (addr, len) = match cidr.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u32>().ok()?)),
        None => (cidr.parse::<IpAddr>().ok()?, None),
    };
    let (family, n) = number(addr);
    let bits = if family == IpFamily::V4 { 32 } else { 128 };
    let len = len.unwrap_or(bits);
    if len > bits {
        return None;
    }
    let width = u128::MAX >> (128 - bits);
    let mask = width & u128::MAX.checked_shl(bits - len).unwrap_or(0);
    Some((family, n & mask, mask))
}

fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let (family, n) = number(ip);
    parse_cidr(cidr).is_some_and(|(f, net, mask)| f == family && n & mask == net)
}

/// Whether `ip` is in the block and in none of its excepts (of its family only).
pub fn ip_block_contains(block: &IpBlock, ip: IpAddr) -> bool {
    cidr_contains(&block.cidr, ip) && !block.except.iter().any(|e| cidr_contains(e, ip))
}

fn peer_matches(
    cluster: &Cluster,
    policy_ns: &str,
    peer: &Peer,
    pod: &ClusterPod,
    family: IpFamily,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return pod
            .ip_of(family)
            .is_some_and(|ip| ip_block_contains(block, ip));
    }
    let pod_ok = |s: &LabelSelector| selects(s, &pod.labels);
    let ns_ok = |s: &LabelSelector| selects(s, &cluster.namespace_labels(&pod.namespace));
    match (&peer.pod_selector, &peer.namespace_selector) {
        (Some(ps), None) => pod.namespace == policy_ns && pod_ok(ps),
        (None, Some(ns)) => ns_ok(ns),
        (Some(ps), Some(ns)) => ns_ok(ns) && pod_ok(ps),
        // Not valid in Kubernetes (a peer needs a field); matches nothing.
        (None, None) => false,
    }
}

fn port_matches(spec: &PolicyPort, dest: &ClusterPod, port: u16, protocol: Protocol) -> bool {
    if spec.protocol.unwrap_or(Protocol::Tcp) != protocol {
        return false;
    }
    match (&spec.port, spec.end_port) {
        (None, _) => true,
        (Some(PortValue::Number(start)), Some(end)) => (*start..=end).contains(&port),
        (Some(PortValue::Number(n)), None) => *n == port,
        (Some(PortValue::Name(name)), _) => dest
            .ports
            .iter()
            .any(|p| &p.name == name && p.protocol == protocol && p.port == port),
    }
}

/// One connection attempt: `peer` is the other side (source for ingress, destination
/// for egress); `dest` owns the port.
struct Attempt<'a> {
    peer: &'a ClusterPod,
    dest: &'a ClusterPod,
    port: u16,
    protocol: Protocol,
    family: IpFamily,
}

fn rule_matches(cluster: &Cluster, policy: &Policy, rule: &Rule, a: &Attempt<'_>) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(cluster, &policy.namespace, p, a.peer, a.family));
    let port_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|p| port_matches(p, a.dest, a.port, a.protocol));
    peer_ok && port_ok
}

/// Whether `pod`'s policies allow the attempt in `direction`.
fn direction_allows(
    cluster: &Cluster,
    policies: &[Policy],
    pod: &ClusterPod,
    direction: PolicyType,
    attempt: &Attempt<'_>,
) -> bool {
    let mut isolated = false;
    for policy in policies {
        if policy.namespace != pod.namespace
            || !selects(&policy.pod_selector, &pod.labels)
            || !policy.applies_to(direction)
        {
            continue;
        }
        isolated = true;
        let rules = match direction {
            PolicyType::Ingress => &policy.ingress,
            PolicyType::Egress => &policy.egress,
        };
        if rules
            .iter()
            .any(|r| rule_matches(cluster, policy, r, attempt))
        {
            return true;
        }
    }
    !isolated
}

/// Whether `from` may reach `to` on `port`/`protocol` over `family` under `policies`.
pub fn allowed(
    cluster: &Cluster,
    policies: &[Policy],
    from: &ClusterPod,
    to: &ClusterPod,
    (port, protocol): (u16, Protocol),
    family: IpFamily,
) -> bool {
    if from.namespace == to.namespace && from.name == to.name {
        return true;
    }
    let egress = Attempt {
        peer: to,
        dest: to,
        port,
        protocol,
        family,
    };
    let ingress = Attempt {
        peer: from,
        dest: to,
        port,
        protocol,
        family,
    };
    direction_allows(cluster, policies, from, PolicyType::Egress, &egress)
        && direction_allows(cluster, policies, to, PolicyType::Ingress, &ingress)
}

/// The expected matrix: every (from, to) pod pair of `cluster` on every `(protocol,
/// port)` of `ports`, over every family both pods have.
pub fn expected(cluster: &Cluster, policies: &[Policy], ports: &[(Protocol, u16)]) -> Matrix {
    let mut matrix = Matrix::default();
    for from in &cluster.pods {
        for to in &cluster.pods {
            let families = to.ips.iter().map(|ip| IpFamily::of(*ip));
            for family in families.filter(|f| from.ip_of(*f).is_some()) {
                for &(protocol, port) in ports {
                    let key = ProbeKey {
                        from: from.id(),
                        to: to.id(),
                        protocol,
                        port,
                        family,
                    };
                    let ok = allowed(cluster, policies, from, to, (port, protocol), family);
                    matrix.insert(key, ok);
                }
            }
        }
    }
    matrix
}

#[cfg(test)]
mod tests;
