//! The bench's IP families: IPv4 (the default), IPv6 only, or dual stack, and the IPv6
//! half of the wiring.
//!
//! IPv6 addressing mirrors the IPv4 one: node `n` has `fd99::<n+1>/64` on the shared
//! segment (next to its IPv4 address, which stays for the bench's own plumbing; an
//! IPv6-only node publishes only the IPv6 one), pod CIDR `fd00:10:244:<n>::/64` inside
//! the cluster CIDR [`CLUSTER_CIDR_V6`], and a pod the same host number as in IPv4 as a
//! /128. The pod's default route goes via [`GATEWAY_V6`] (the link-local address the
//! host side's `ee:ee:ee:ee:ee:ee` MAC gives it, as Calico's CNI does), with a
//! permanent neighbour entry for it, so no neighbour discovery is needed toward the host.
//!
//! Every namespace of an IPv6 bench gets IPv6 switched on, duplicate address detection
//! off (addresses usable at once, no tentative state to wait out) and `bindv6only` on
//! (a `[::]` listener then takes IPv6 only, next to the `0.0.0.0` one). Node namespaces
//! forward IPv6. Invariant: nothing here runs for an IPv4-only bench, which stays
//! exactly as before. The routed underlay (several subnets) is IPv4 only.

use std::net::{IpAddr, Ipv6Addr};

use crate::NetlabError;
use crate::cmd::{ip_in, sysctl_in};

/// The cluster CIDR of the IPv6 pod CIDRs.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";
/// The pods' IPv6 default gateway: the link-local address of the host side's MAC.
pub const GATEWAY_V6: &str = "fe80::ecee:eeff:feee:eeee";

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The unspecified address of the family (`0.0.0.0`, `::`).
    pub fn unspecified(self) -> IpAddr {
        match self {
            IpFamily::V4 => IpAddr::from([0u8; 4]),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// The families of a bench's pods and nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stack {
    /// IPv4 only (the default).
    #[default]
    V4,
    /// IPv6 only.
    V6,
    /// Both; IPv4 is the primary family (`status.podIP`).
    Dual,
}

impl Stack {
    /// The families, the primary first.
    pub fn families(self) -> &'static [IpFamily] {
        match self {
            Stack::V4 => &[IpFamily::V4],
            Stack::V6 => &[IpFamily::V6],
            Stack::Dual => &[IpFamily::V4, IpFamily::V6],
        }
    }

    /// Whether the bench has `family`.
    pub fn has(self, family: IpFamily) -> bool {
        self.families().contains(&family)
    }
}

/// The address of `family` among `ips`, if any.
pub fn address_of(ips: &[IpAddr], family: IpFamily) -> Option<IpAddr> {
    ips.iter().copied().find(|ip| IpFamily::of(*ip) == family)
}

fn hextet(value: usize, what: &str) -> Result<u16, NetlabError> {
    u16::try_from(value).map_err(|_| NetlabError::Spec(format!("{what} {value}")))
}

/// Node `n`'s IPv6 address on the shared segment.
pub fn node_ip6(n: usize) -> Result<Ipv6Addr, NetlabError> {
    Ok(Ipv6Addr::new(
        0xfd99,
        0,
        0,
        0,
        0,
        0,
        0,
        hextet(n + 1, "node")?,
    ))
}

/// Node `n`'s IPv6 pod CIDR.
pub fn pod_cidr6(n: usize) -> Result<String, NetlabError> {
    Ok(format!("fd00:10:244:{:x}::/64", hextet(n, "node")?))
}

/// The IPv6 address of the pod with host number `host` on node `n`.
pub fn pod_ip6(n: usize, host: u8) -> Result<Ipv6Addr, NetlabError> {
    let n = hextet(n, "node")?;
    Ok(Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        n,
        0,
        0,
        0,
        u16::from(host),
    ))
}

/// Switches IPv6 on in `netns` (see the module docs); before any link is created, so
/// every link inherits the defaults.
pub(crate) async fn enable_ipv6(netns: &str) -> Result<(), NetlabError> {
    for (key, value) in [
        ("net.ipv6.conf.all.disable_ipv6", "0"),
        ("net.ipv6.conf.default.disable_ipv6", "0"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.bindv6only", "1"),
    ] {
        sysctl_in(netns, key, value).await?;
    }
    Ok(())
}

/// A node's IPv6 side: its address on `eth0` and forwarding.
pub(crate) async fn wire_node_v6(netns: &str, ip: Ipv6Addr) -> Result<(), NetlabError> {
    let cidr = format!("{ip}/64");
    ip_in(netns, &["addr", "add", &cidr, "dev", "eth0", "nodad"]).await?;
    sysctl_in(netns, "net.ipv6.conf.all.forwarding", "1").await?;
    Ok(())
}

/// A pod's IPv6 side (its veth exists and is up): the /128, the permanent neighbour
/// entry for the gateway (MAC `mac`) and the default route via it.
pub(crate) async fn wire_pod_v6(pod_ns: &str, ip: Ipv6Addr, mac: &str) -> Result<(), NetlabError> {
    let cidr = format!("{ip}/128");
    ip_in(pod_ns, &["addr", "add", &cidr, "dev", "eth0", "nodad"]).await?;
    ip_in(
        pod_ns,
        &[
            "-6",
            "neigh",
            "replace",
            GATEWAY_V6,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .await?;
    ip_in(
        pod_ns,
        &[
            "-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0",
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_mirror_the_ipv4_plan() {
        assert_eq!(node_ip6(0).unwrap().to_string(), "fd99::1");
        assert_eq!(pod_cidr6(1).unwrap(), "fd00:10:244:1::/64");
        assert_eq!(pod_ip6(1, 3).unwrap().to_string(), "fd00:10:244:1::3");
        assert!(node_ip6(70_000).is_err());
        assert_eq!(Stack::default().families(), &[IpFamily::V4]);
        assert!(Stack::Dual.has(IpFamily::V6) && !Stack::V6.has(IpFamily::V4));
        assert_eq!(IpFamily::of("fd00::1".parse().unwrap()), IpFamily::V6);
        assert_eq!(IpFamily::V6.unspecified().to_string(), "::");
    }
}
