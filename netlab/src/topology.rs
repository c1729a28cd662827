//! The bench: nodes and pods as network namespaces.
//!
//! Layout (names carry the pid and a per-process counter, so parallel benches never
//! collide):
//! - a switch namespace holding a bridge; each node namespace has `eth0` (node IP
//!   `10.99.0.<n+1>/24`) whose peer is a bridge port: all nodes share one L2 segment;
//!   with [`TopologyBuilder::subnets`] nodes sit on several segments joined by a router
//!   that knows no pod CIDR (see [`crate::underlay`]);
//! - each node has a pod CIDR `10.244.<n>.0/24` and IP forwarding on;
//! - each pod namespace has `eth0` with the pod IP as a /32, a default route via
//!   169.254.1.1 (onlink) and a permanent neighbour entry for it; the peer, in the node
//!   namespace, is named like the model's interface (`cali` + sha1 prefix), has Calico's
//!   `ee:ee:ee:ee:ee:ee` MAC, proxy ARP on and no proxy delay: what Calico's CNI leaves.
//!
//! With [`TopologyBuilder::stack`] nodes and pods get IPv6 addresses too, or only (see
//! [`crate::stack`]); probes then cover every family a pair shares.
//!
//! With [`TopologyBuilder::wiring`] a CNI plugin creates each pod's wiring instead (ADD
//! run in the node's namespace, see [`crate::cni`]); the pod's IP and host-side
//! interface are then the plugin's.
//!
//! Routes to pods are the dataplane's job and the bench adds none, except through
//! [`Topology::install_test_routes`], which exists only to test the bench itself.
//! Invariant: every namespace created is deleted when the [`Topology`] drops, also on a
//! failed build and during a panic.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cmd::{exec_in, ip, ip_blocking, ip_in, sysctl_in};
use crate::cni::{self, CniCall, CniOutput, CniWiring};
use crate::oracle::{Cluster, ClusterPod};
use crate::policy::Protocol;
use crate::probe::{Endpoint, Matrix, probe_all};
use crate::stack::{self, IpFamily, Stack};
use crate::{NetlabError, listen, underlay};

/// The MAC Calico gives every host-side pod interface.
const CALI_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The pods' default gateway (link-local; answered by the host side).
const GATEWAY: &str = "169.254.1.1";
/// The cluster CIDR all pod CIDRs come from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

pub use crate::specs::{NodeInfo, PodInfo, PodSpec};

/// Describes a topology; [`TopologyBuilder::build`] creates it.
#[derive(Clone, Debug, Default)]
pub struct TopologyBuilder {
    nodes: usize,
    pods: Vec<PodSpec>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    listen: Vec<u16>,
    cni: Option<CniWiring>,
    subnets: Vec<usize>,
    stack: Stack,
}

impl TopologyBuilder {
    /// The number of nodes.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// One node per entry, on subnet `of_node[n]` (indices from 0, none skipped); more
    /// than one subnet adds the router (see [`crate::underlay`]).
    pub fn subnets(mut self, of_node: &[usize]) -> Self {
        self.nodes = of_node.len();
        self.subnets = of_node.to_vec();
        self
    }

    /// The IP families of nodes and pods (IPv4 by default).
    pub fn stack(mut self, stack: Stack) -> Self {
        self.stack = stack;
        self
    }

    /// Adds a pod.
    pub fn pod(mut self, spec: PodSpec) -> Self {
        self.pods.push(spec);
        self
    }

    /// Adds a label to a namespace. Every namespace of a pod exists and carries
    /// `ns: <ns>`; `kubernetes.io/metadata.name: <ns>` is not written by the bench: the
    /// API server (kube-sim) sets it, and the oracle models it.
    pub fn namespace_label(mut self, namespace: &str, key: &str, value: &str) -> Self {
        self.namespace_labels
            .entry(namespace.into())
            .or_default()
            .insert(key.into(), value.into());
        self
    }

    /// Ports every pod listens on (TCP and UDP).
    pub fn listen(mut self, ports: &[u16]) -> Self {
        self.listen = ports.to_vec();
        self
    }

    /// Wires pods through a CNI plugin (ADD in the node's namespace) instead of by hand:
    /// their IPs and host-side interfaces are the plugin's.
    pub fn wiring(mut self, cni: CniWiring) -> Self {
        self.cni = Some(cni);
        self
    }

    fn validate(&self) -> Result<(), NetlabError> {
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.pods {
            if p.node >= self.nodes {
                return Err(NetlabError::Spec(format!(
                    "{}/{} on node {}",
                    p.namespace, p.name, p.node
                )));
            }
            if !seen.insert((p.namespace.as_str(), p.name.as_str())) {
                return Err(NetlabError::Spec(format!(
                    "duplicate pod {}/{}",
                    p.namespace, p.name
                )));
            }
        }
        if self.nodes == 0 || self.nodes > 200 {
            return Err(NetlabError::Spec(format!("{} nodes", self.nodes)));
        }
        let routed = self.subnets.iter().any(|s| *s > 0);
        if self.stack.has(IpFamily::V6) && (routed || self.cni.is_some()) {
            return Err(NetlabError::Spec(
                "IPv6 benches have one segment and pods wired by hand".into(),
            ));
        }
        Ok(())
    }

    /// Creates every namespace, link, address and listener.
    pub async fn build(self) -> Result<Topology, NetlabError> {
        self.validate()?;
        let id = format!(
            "nl{}x{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let mut topo = Topology {
            switch: format!("{id}-sw"),
            id,
            nodes: Vec::new(),
            pods: Vec::new(),
            namespaces: BTreeMap::new(),
            created: Vec::new(),
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
            cni: self.cni.clone(),
            stack: self.stack,
        };
        for p in &self.pods {
            let labels = topo.namespaces.entry(p.namespace.clone()).or_default();
            labels.insert("ns".into(), p.namespace.clone());
        }
        for (ns, extra) in &self.namespace_labels {
            topo.namespaces
                .entry(ns.clone())
                .or_default()
                .extend(extra.clone());
        }
        let subnets = self.subnets.iter().max().map_or(1, |m| m + 1);
        for s in 0..subnets {
            topo.add_switch(s).await?;
        }
        if subnets > 1 {
            topo.add_router(subnets).await?;
        }
        for n in 0..self.nodes {
            let subnet = self.subnets.get(n).copied().unwrap_or(0);
            topo.add_node(n, subnet, subnets > 1).await?;
        }
        let mut per_node = vec![0u8; self.nodes];
        for spec in self.pods {
            let host = per_node[spec.node]
                .checked_add(2)
                .ok_or_else(|| NetlabError::Spec(format!("too many pods on node {}", spec.node)))?;
            per_node[spec.node] += 1;
            topo.add_pod(spec, host).await?;
        }
        for i in 0..topo.pods.len() {
            let netns = topo.pods[i].netns.clone();
            let families: Vec<IpFamily> = topo.pods[i]
                .ips
                .iter()
                .map(|ip| IpFamily::of(*ip))
                .collect();
            listen::start(&netns, &self.listen, &families, &mut topo.tasks, &topo.stop).await?;
        }
        Ok(topo)
    }
}

/// A built bench (see the module docs). Dropping it deletes everything.
pub struct Topology {
    id: String,
    switch: String,
    nodes: Vec<NodeInfo>,
    pods: Vec<PodInfo>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    created: Vec<String>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    cni: Option<CniWiring>,
    stack: Stack,
}

impl Topology {
    /// Starts describing a topology.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The prefix of every namespace name of this bench.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The pods, in creation order.
    pub fn pods(&self) -> &[PodInfo] {
        &self.pods
    }

    /// Pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The bench's IP families.
    pub fn stack(&self) -> Stack {
        self.stack
    }

    /// Namespaces and their labels.
    pub fn namespaces(&self) -> &BTreeMap<String, BTreeMap<String, String>> {
        &self.namespaces
    }

    /// The cluster as the oracle sees it.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            namespaces: self.namespaces.clone(),
            pods: self
                .pods
                .iter()
                .map(|p| ClusterPod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    ips: p.ips.clone(),
                    ports: p.ports.clone(),
                })
                .collect(),
        }
    }

    /// Probes every pod pair on every service, concurrently, each within `limit`.
    pub async fn probe(
        &self,
        services: &[(Protocol, u16)],
        limit: Duration,
    ) -> Result<Matrix, NetlabError> {
        let endpoints: Vec<Endpoint> = self
            .pods
            .iter()
            .map(|p| Endpoint {
                id: p.id(),
                netns: p.netns.clone(),
                ips: p.ips.clone(),
            })
            .collect();
        probe_all(&endpoints, services, limit).await
    }

    /// `iptables-save` of node `node` (then `ip6tables-save` on an IPv6 bench), for
    /// diagnostics.
    pub async fn iptables_save(&self, node: usize) -> Result<String, NetlabError> {
        let netns = self.node_netns(node)?;
        let mut out = exec_in(&netns, "iptables-save", &[]).await?;
        if self.stack.has(IpFamily::V6) {
            out.push_str(&exec_in(&netns, "ip6tables-save", &[]).await?);
        }
        Ok(out)
    }

    /// `ip route` of node `node` (then `ip -6 route` on an IPv6 bench), for diagnostics.
    pub async fn routes(&self, node: usize) -> Result<String, NetlabError> {
        let netns = self.node_netns(node)?;
        let mut out = ip_in(&netns, &["route", "show"]).await?;
        if self.stack.has(IpFamily::V6) {
            out.push_str(&ip_in(&netns, &["-6", "route", "show"]).await?);
        }
        Ok(out)
    }

    fn node_netns(&self, node: usize) -> Result<String, NetlabError> {
        self.nodes
            .get(node)
            .map(|n| n.netns.clone())
            .ok_or_else(|| NetlabError::Spec(format!("no node {node}")))
    }

    /// The CNI wiring the pods were created with, if any.
    pub fn cni(&self) -> Option<&CniWiring> {
        self.cni.as_ref()
    }

    /// Runs the CNI plugin for pod `pod` with `command` and the config of its node
    /// (`config` overrides it). Errors only when the plugin cannot be run at all.
    pub async fn cni_call(
        &self,
        pod: &PodInfo,
        command: &str,
        config: Option<&serde_json::Value>,
    ) -> Result<CniOutput, NetlabError> {
        let wiring = self
            .cni
            .as_ref()
            .ok_or_else(|| NetlabError::Spec("no CNI wiring".into()))?;
        let node = &self.nodes[pod.node];
        let own = (wiring.config)(node);
        let call = CniCall {
            command,
            node_netns: &node.netns,
            pod_netns: &pod.netns,
            pod: (&pod.namespace, &pod.name),
        };
        cni::invoke(wiring, &call, config.unwrap_or(&own)).await
    }

    /// Creates a namespace that is deleted with the bench (for a pod the test wires
    /// itself, e.g. through [`Topology::cni_call`]).
    pub async fn add_scratch_netns(&mut self, suffix: &str) -> Result<String, NetlabError> {
        let name = format!("{}-{suffix}", self.id);
        self.add_netns(&name).await?;
        Ok(name)
    }

    /// The switch namespace (the bridge joining the nodes).
    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    /// Gives the switch namespace the address `ip/24` on its bridge: a host outside the
    /// cluster, on the nodes' segment (`ip` must be in `10.99.0.0/24` and no node's).
    pub async fn add_external_address(&self, ip: Ipv4Addr) -> Result<(), NetlabError> {
        if self.nodes.iter().any(|n| n.ip == ip) || ip.octets()[..3] != [10, 99, 0] {
            return Err(NetlabError::Spec(format!("external address {ip}")));
        }
        let cidr = format!("{ip}/24");
        ip_in(&self.switch, &["addr", "add", &cidr, "dev", "br0"]).await?;
        Ok(())
    }

    /// TEST-ONLY: installs the routes the dataplane would (a /32 per local pod via its
    /// `cali` interface, other nodes' pod CIDRs via their node IPs), to test the bench
    /// without a dataplane. The end-to-end policy tests must not call this.
    pub async fn install_test_routes(&self) -> Result<(), NetlabError> {
        for (n, node) in self.nodes.iter().enumerate() {
            for pod in self.pods.iter().filter(|p| p.node == n) {
                let dst = format!("{}/32", pod.ip);
                ip_in(
                    &node.netns,
                    &["route", "replace", &dst, "dev", &pod.iface, "scope", "link"],
                )
                .await?;
            }
        }
        self.install_test_node_routes().await
    }

    /// TEST-ONLY: installs only the routes between nodes (each other node's pod CIDR via
    /// its node IP, `proto static`): what the user's own networking provides when the
    /// agent runs in policy-only mode. Not the agent's routes (another protocol).
    pub async fn install_test_node_routes(&self) -> Result<(), NetlabError> {
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.name != node.name) {
                let via = other.ip.to_string();
                ip_in(
                    &node.netns,
                    &[
                        "route",
                        "replace",
                        &other.pod_cidr,
                        "via",
                        &via,
                        "dev",
                        "eth0",
                        "proto",
                        "static",
                    ],
                )
                .await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn add_netns(&mut self, name: &str) -> Result<(), NetlabError> {
        ip(&["netns", "add", name]).await?;
        self.created.push(name.to_string());
        if self.stack.has(IpFamily::V6) {
            stack::enable_ipv6(name).await?;
        }
        ip_in(name, &["link", "set", "lo", "up"]).await?;
        Ok(())
    }

    async fn add_node(&mut self, n: usize, subnet: usize, routed: bool) -> Result<(), NetlabError> {
        let netns = format!("{}-n{n}", self.id);
        self.add_netns(&netns).await?;
        let (sw, port) = (underlay::switch_name(&self.id, subnet), format!("p{n}"));
        ip_in(
            &sw,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )
        .await?;
        ip_in(&sw, &["link", "set", &port, "master", "br0", "up"]).await?;
        let ip = underlay::node_ip(subnet, n)?;
        ip_in(&netns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).await?;
        ip_in(&netns, &["link", "set", "eth0", "up"]).await?;
        if routed {
            let gw = underlay::gateway(subnet)?.to_string();
            ip_in(&netns, &["route", "add", "default", "via", &gw]).await?;
        }
        sysctl_in(&netns, "net.ipv4.ip_forward", "1").await?;
        let v6 = if self.stack.has(IpFamily::V6) {
            let ip6 = stack::node_ip6(n)?;
            stack::wire_node_v6(&netns, ip6).await?;
            Some((ip6, stack::pod_cidr6(n)?))
        } else {
            None
        };
        self.nodes.push(NodeInfo {
            name: format!("node-{n}"),
            netns,
            ip,
            subnet,
            pod_cidr: format!("10.244.{n}.0/24"),
            v6,
            stack: self.stack,
        });
        Ok(())
    }

    async fn add_pod(&mut self, spec: PodSpec, host: u8) -> Result<(), NetlabError> {
        let node = self.nodes[spec.node].clone();
        let netns = format!("{}-{}-{}", self.id, spec.namespace, spec.name);
        self.add_netns(&netns).await?;
        if let Some(wiring) = self.cni.clone() {
            let call = CniCall {
                command: "ADD",
                node_netns: &node.netns,
                pod_netns: &netns,
                pod: (&spec.namespace, &spec.name),
            };
            let out = cni::invoke(&wiring, &call, &(wiring.config)(&node)).await?;
            let (ip, iface) = cni::parse_add(&out)?;
            self.push_pod(spec, vec![IpAddr::V4(ip)], netns, iface);
            return Ok(());
        }
        let iface = netmodel::interface_name(&spec.namespace, &spec.name);
        let n = node.netns.as_str();
        ip_in(
            n,
            &[
                "link", "add", &iface, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )
        .await?;
        ip_in(n, &["link", "set", &iface, "address", CALI_MAC]).await?;
        sysctl_in(n, &format!("net.ipv4.conf.{iface}.proxy_arp"), "1").await?;
        sysctl_in(n, &format!("net.ipv4.neigh.{iface}.proxy_delay"), "0").await?;
        ip_in(n, &["link", "set", &iface, "up"]).await?;
        ip_in(&netns, &["link", "set", "eth0", "up"]).await?;
        let mut ips = Vec::new();
        if self.stack.has(IpFamily::V4) {
            let third =
                u8::try_from(spec.node).map_err(|_| NetlabError::Spec("node index".into()))?;
            let ip = Ipv4Addr::new(10, 244, third, host);
            wire_pod_v4(&netns, ip).await?;
            ips.push(IpAddr::V4(ip));
        }
        if self.stack.has(IpFamily::V6) {
            let ip = stack::pod_ip6(spec.node, host)?;
            stack::wire_pod_v6(&netns, ip, CALI_MAC).await?;
            ips.push(IpAddr::V6(ip));
        }
        self.push_pod(spec, ips, netns, iface);
        Ok(())
    }

    fn push_pod(&mut self, spec: PodSpec, ips: Vec<IpAddr>, netns: String, iface: String) {
        self.pods.push(PodInfo {
            namespace: spec.namespace,
            name: spec.name,
            node: spec.node,
            labels: spec.labels,
            ports: spec.ports,
            ip: ips
                .first()
                .copied()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            ips,
            netns,
            iface,
        });
    }
}

/// A pod's IPv4 side (its veth is up): the /32, the permanent neighbour entry for the
/// gateway and the default route via it.
async fn wire_pod_v4(pod_ns: &str, ip: Ipv4Addr) -> Result<(), NetlabError> {
    ip_in(pod_ns, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"]).await?;
    let neigh = ["neigh", "replace", GATEWAY, "lladdr", CALI_MAC];
    let mut args = neigh.to_vec();
    args.extend(["dev", "eth0", "nud", "permanent"]);
    ip_in(pod_ns, &args).await?;
    ip_in(
        pod_ns,
        &[
            "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink",
        ],
    )
    .await?;
    Ok(())
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.abort_all();
        // Pods first, then nodes, then the switch (reverse creation order).
        for netns in self.created.iter().rev() {
            if let Err(error) = ip_blocking(&["netns", "del", netns]) {
                tracing::warn!(%error, netns, "cannot delete namespace");
            }
        }
    }
}
