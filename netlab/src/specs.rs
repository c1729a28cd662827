//! What a bench is made of: the pod to create ([`PodSpec`]) and the records of a built
//! bench's nodes and pods ([`NodeInfo`], [`PodInfo`]), with the addresses they publish
//! per IP family (see [`crate::stack`]).
//!
//! Invariant: a record lists exactly what the bench published for it in the API objects
//! ([`crate::kube`]): a node's addresses and pod CIDRs of the bench's families, a pod's
//! IPs with the primary family first.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::{NamedPort, Protocol};
use crate::stack::{IpFamily, Stack};

/// A pod to create.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Index of its node.
    pub node: usize,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
}

impl PodSpec {
    /// Pod `namespace/name` on node `node`, labelled `pod: <name>` (as the e2e suite does).
    pub fn new(namespace: &str, name: &str, node: usize) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            node,
            labels: BTreeMap::from([("pod".to_string(), name.to_string())]),
            ports: Vec::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> PodSpec {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Names container ports `serve-<port>-tcp` and `serve-<port>-udp` for every port.
    pub fn serve_ports(mut self, ports: &[u16]) -> PodSpec {
        for &port in ports {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                self.ports.push(NamedPort {
                    name: format!("serve-{port}-{}", protocol.as_k8s().to_lowercase()),
                    protocol,
                    port,
                });
            }
        }
        self
    }
}

/// A node of a built topology.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The Kubernetes node name (`node-<n>`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on its subnet's segment.
    pub ip: Ipv4Addr,
    /// The index of its subnet (`10.99.<subnet>.0/24`).
    pub subnet: usize,
    /// Its (IPv4) pod CIDR.
    pub pod_cidr: String,
    /// Its IPv6 address on the segment and IPv6 pod CIDR, on an IPv6 bench.
    pub v6: Option<(Ipv6Addr, String)>,
    /// The families it publishes.
    pub stack: Stack,
}

impl NodeInfo {
    /// Its addresses as published (`status.addresses`), the primary family first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let v4 = self.stack.has(IpFamily::V4).then_some(IpAddr::V4(self.ip));
        let v6 = self.v6.as_ref().map(|(ip, _)| IpAddr::V6(*ip));
        v4.into_iter().chain(v6).collect()
    }

    /// Its pod CIDRs as published (`spec.podCIDRs`), the primary family first.
    pub fn pod_cidrs(&self) -> Vec<String> {
        let v4 = self.stack.has(IpFamily::V4).then(|| self.pod_cidr.clone());
        let v6 = self.v6.as_ref().map(|(_, cidr)| cidr.clone());
        v4.into_iter().chain(v6).collect()
    }

    /// Its pod CIDR of `family`, if it has one.
    pub fn pod_cidr_of(&self, family: IpFamily) -> Option<String> {
        let cidrs = self.pod_cidrs().into_iter();
        cidrs
            .zip(self.stack.families())
            .find(|(_, f)| **f == family)
            .map(|(c, _)| c)
    }
}

/// A pod of a built topology.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Index of its node.
    pub node: usize,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
    /// The primary pod IP (`status.podIP`): IPv4 unless the bench is IPv6 only.
    pub ip: IpAddr,
    /// Every pod IP (`status.podIPs`), the primary first.
    pub ips: Vec<IpAddr>,
    /// Its network namespace.
    pub netns: String,
    /// The host-side interface in the node namespace.
    pub iface: String,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its address of `family`, if it has one.
    pub fn ip_of(&self, family: IpFamily) -> Option<IpAddr> {
        crate::stack::address_of(&self.ips, family)
    }
}
