//! Encapsulation toward other nodes, per IPPool (`vxlanMode` / `ipipMode`: `Never`,
//! `Always`, `CrossSubnet`), and the tunnel devices it needs on this node.
//!
//! For each other node's pod CIDR the pool containing it (the first by name, enabled)
//! decides: VXLAN when its `vxlanMode` encapsulates toward that node, else IPIP when its
//! `ipipMode` does, else a plain route via the node's address. `CrossSubnet`
//! encapsulates only toward nodes outside this node's subnet (this node's address must
//! carry its prefix, as Calico's `projectcalico.org/IPv4Address` does; without one every
//! node counts as outside: encapsulating is the safe side).
//!
//! VXLAN (Calico's parameters: device `vxlan.calico`, VNI 4096, UDP 4789): each node's
//! device has a MAC derived from its node name, so every agent computes every peer's MAC
//! without extra datastore fields. Toward a peer: an FDB entry (peer MAC -> peer node
//! address), a permanent neighbour (the peer's pod CIDR network address -> peer MAC) and
//! the route `<pod CIDR> via <that address> dev vxlan.calico onlink`. IPIP: the route
//! `<pod CIDR> via <peer node address> dev tunl0 onlink`. Device MTUs are the host MTU
//! minus the overhead (VXLAN 50, IPIP 20). IPv4 only: IPv6 pod CIDRs are routed plainly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use typha_proto::pb;

use super::names::hash_hex;
use super::objects::Net;
use super::{Family, RouteTarget};

/// The VXLAN device's name (Calico's).
pub const VXLAN_DEVICE: &str = "vxlan.calico";
/// The IPIP device's name (the kernel's fallback tunnel).
pub const IPIP_DEVICE: &str = "tunl0";
/// Calico's VXLAN network identifier.
pub const VXLAN_VNI: u32 = 4096;
/// The VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// The MTU assumed for the host's interfaces.
pub const HOST_MTU: u32 = 1500;
/// VXLAN's overhead over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// IPIP's overhead (the outer IPv4 header).
pub const IPIP_OVERHEAD: u32 = 20;

/// A pool's encapsulation mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapMode {
    /// Never encapsulate (also the empty string).
    Never,
    /// Always encapsulate toward other nodes.
    Always,
    /// Only toward nodes outside this node's subnet.
    CrossSubnet,
}

impl EncapMode {
    /// Parses Calico's spelling; anything unknown is `Never` (the converter validates).
    pub fn parse(text: &str) -> EncapMode {
        match text {
            "Always" => EncapMode::Always,
            "CrossSubnet" => EncapMode::CrossSubnet,
            _ => EncapMode::Never,
        }
    }

    fn encapsulates(self, same_subnet: bool) -> bool {
        match self {
            EncapMode::Never => false,
            EncapMode::Always => true,
            EncapMode::CrossSubnet => !same_subnet,
        }
    }
}

/// The VXLAN device this node should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// This node's address (the outer source).
    pub local: IpAddr,
    /// The device's MAC ([`node_mac`] of this node).
    pub mac: String,
    /// The device's MTU.
    pub mtu: u32,
}

/// One remote node reached through VXLAN.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VxlanPeer {
    /// The peer's node address (outer destination; the FDB entry).
    pub node_ip: IpAddr,
    /// The peer's device MAC.
    pub mac: String,
    /// The next hop of routes to the peer (its pod CIDR's network address).
    pub gateway: IpAddr,
}

/// The tunnel devices and VXLAN peers this node should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tunnels {
    /// The VXLAN device, when some route uses it.
    pub vxlan: Option<VxlanDevice>,
    /// The IPIP device's MTU, when some route uses it.
    pub ipip_mtu: Option<u32>,
    /// VXLAN peers (FDB and neighbour entries).
    pub vxlan_peers: BTreeSet<VxlanPeer>,
}

/// The MAC of node `name`'s VXLAN device: locally administered, unicast, stable.
pub fn node_mac(name: &str) -> String {
    let h = hash_hex(&format!("vxlan-mac/{name}"), 10);
    let pairs: Vec<&str> = (0..5).map(|i| &h[i * 2..i * 2 + 2]).collect();
    format!("66:{}", pairs.join(":"))
}

/// A node's IPv4 address and, when known, its subnet.
fn node_v4(node: &pb::Node) -> Option<(Ipv4Addr, Option<Net>)> {
    let text = node.ipv4_address.trim();
    let (addr, subnet) = match text.split_once('/') {
        Some((a, _)) => (a.parse().ok()?, Net::parse(text)),
        None => (text.parse().ok()?, None),
    };
    Some((addr, subnet))
}

/// A node's addresses: its IPv4 address first, then the others.
pub(super) fn node_addresses(node: &pb::Node) -> Vec<IpAddr> {
    node_v4(node)
        .map(|(a, _)| IpAddr::V4(a))
        .into_iter()
        .chain(node.addresses.iter().filter_map(|a| a.parse().ok()))
        .collect()
}

fn contains(outer: &Net, inner: &Net) -> bool {
    outer.prefix <= inner.prefix && outer.contains(inner.addr)
}

/// The enabled pool containing `net`, first by name.
fn pool_of<'a>(pools: &'a BTreeMap<String, pb::IpPool>, net: &Net) -> Option<&'a pb::IpPool> {
    pools
        .values()
        .find(|p| !p.disabled && Net::parse(&p.cidr).is_some_and(|pool| contains(&pool, net)))
}

/// How a peer's pod CIDR is reached: the peer, its tunnel endpoint when the pool
/// encapsulates, whether that is VXLAN (else IPIP), and its addresses.
struct Via<'a> {
    peer: &'a str,
    tunnel: Option<Ipv4Addr>,
    vxlan: bool,
    addresses: &'a [IpAddr],
}

/// The route target for `net` (recording the tunnel it needs in `tunnels`); `None` when
/// the peer has no address of the net's family.
fn route_target(net: &Net, via: &Via<'_>, tunnels: &mut Tunnels) -> Option<RouteTarget> {
    Some(match via.tunnel {
        Some(peer) if via.vxlan => {
            let gateway = net.addr;
            tunnels.vxlan_peers.insert(VxlanPeer {
                node_ip: IpAddr::V4(peer),
                mac: node_mac(via.peer),
                gateway,
            });
            RouteTarget::Tunnel {
                device: VXLAN_DEVICE.into(),
                gateway,
            }
        }
        Some(peer) => {
            tunnels.ipip_mtu = Some(HOST_MTU - IPIP_OVERHEAD);
            RouteTarget::Tunnel {
                device: IPIP_DEVICE.into(),
                gateway: IpAddr::V4(peer),
            }
        }
        None => {
            let family_of = |a: &&IpAddr| match a {
                IpAddr::V4(_) => net.family == Family::V4,
                IpAddr::V6(_) => net.family == Family::V6,
            };
            RouteTarget::Gateway(*via.addresses.iter().find(family_of)?)
        }
    })
}

/// Every remote node's routes and this node's tunnels, from the nodes and pools.
pub(super) fn plan(
    own_name: &str,
    own: Option<&pb::Node>,
    peers: &BTreeMap<String, pb::Node>,
    pools: &BTreeMap<String, pb::IpPool>,
) -> (BTreeMap<String, Vec<(String, RouteTarget)>>, Tunnels) {
    let own_v4 = own.and_then(node_v4);
    let own_ip = own_v4.as_ref().map(|(a, _)| *a);
    let mut tunnels = Tunnels::default();
    let mut routes = BTreeMap::new();
    for (name, node) in peers {
        let addresses = node_addresses(node);
        let peer_v4 = node_v4(node).map(|(a, _)| a);
        let same_subnet = match (own_v4.as_ref(), peer_v4) {
            (Some((_, Some(subnet))), Some(peer)) => subnet.contains(IpAddr::V4(peer)),
            _ => false,
        };
        let mut list = Vec::new();
        for net in node.pod_cidrs.iter().filter_map(|c| Net::parse(c)) {
            let pool = pool_of(pools, &net);
            let mode = |text: Option<&str>| EncapMode::parse(text.unwrap_or_default());
            let vxlan = mode(pool.map(|p| p.vxlan_mode.as_str())).encapsulates(same_subnet);
            let ipip = mode(pool.map(|p| p.ipip_mode.as_str())).encapsulates(same_subnet);
            let tunnel = match (net.family, own_ip, peer_v4) {
                (Family::V4, Some(_), Some(peer)) if vxlan || ipip => Some(peer),
                _ => None,
            };
            let via = Via {
                peer: name,
                tunnel,
                vxlan,
                addresses: &addresses,
            };
            let Some(target) = route_target(&net, &via, &mut tunnels) else {
                continue;
            };
            list.push((net.text(), target));
        }
        routes.insert(name.clone(), list);
    }
    if let (Some(local), false) = (own_ip, tunnels.vxlan_peers.is_empty()) {
        tunnels.vxlan = Some(VxlanDevice {
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: IpAddr::V4(local),
            mac: node_mac(own_name),
            mtu: HOST_MTU - VXLAN_OVERHEAD,
        });
    }
    (routes, tunnels)
}
