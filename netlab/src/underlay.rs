//! The nodes' underlay: one L2 segment per subnet, and a router joining the subnets.
//!
//! Subnet `s` is `10.99.<s>.0/24`, a bridge in its own switch namespace (subnet 0's is
//! the bench's [`Topology::switch_netns`]); node `n` on subnet `s` has `10.99.<s>.<n+1>`.
//! With more than one subnet a router namespace holds `10.99.<s>.254` on each segment,
//! forwards between them, and every node's default route points at its subnet's
//! router address. Invariant: the router has no route to any pod CIDR, so pod traffic
//! between subnets crosses only encapsulated (or not at all).

use std::net::Ipv4Addr;

use crate::NetlabError;
use crate::cmd::{ip_in, sysctl_in};
use crate::topology::Topology;

/// The prefix length of every node subnet (what the node's
/// `projectcalico.org/IPv4Address` annotation carries).
pub const NODE_PREFIX_LEN: u8 = 24;
/// The router's host number on every subnet.
const ROUTER_HOST: u8 = 254;

/// The switch namespace of subnet `subnet` in bench `id`.
pub(crate) fn switch_name(id: &str, subnet: usize) -> String {
    match subnet {
        0 => format!("{id}-sw"),
        s => format!("{id}-sw{s}"),
    }
}

fn octet(value: usize, what: &str) -> Result<u8, NetlabError> {
    u8::try_from(value).map_err(|_| NetlabError::Spec(format!("{what} {value}")))
}

/// Node `n`'s address on subnet `subnet`.
pub(crate) fn node_ip(subnet: usize, n: usize) -> Result<Ipv4Addr, NetlabError> {
    let host = octet(n + 1, "node")?;
    if host >= ROUTER_HOST {
        return Err(NetlabError::Spec(format!("node {n}")));
    }
    Ok(Ipv4Addr::new(10, 99, octet(subnet, "subnet")?, host))
}

/// The router's address on subnet `subnet` (the nodes' gateway when routed).
pub fn gateway(subnet: usize) -> Result<Ipv4Addr, NetlabError> {
    Ok(Ipv4Addr::new(10, 99, octet(subnet, "subnet")?, ROUTER_HOST))
}

impl Topology {
    /// Creates the switch namespace of subnet `subnet` (a bridge `br0`, up).
    pub(crate) async fn add_switch(&mut self, subnet: usize) -> Result<(), NetlabError> {
        let sw = switch_name(self.id(), subnet);
        self.add_netns(&sw).await?;
        ip_in(&sw, &["link", "add", "br0", "type", "bridge"]).await?;
        ip_in(&sw, &["link", "set", "br0", "up"]).await?;
        Ok(())
    }

    /// Creates the router namespace with a port on each of `subnets` segments (their
    /// switches exist) and forwarding on; no route beyond the connected subnets.
    pub(crate) async fn add_router(&mut self, subnets: usize) -> Result<(), NetlabError> {
        let router = format!("{}-rt", self.id());
        self.add_netns(&router).await?;
        sysctl_in(&router, "net.ipv4.ip_forward", "1").await?;
        for s in 0..subnets {
            let (sw, port, rif) = (switch_name(self.id(), s), format!("r{s}"), format!("s{s}"));
            ip_in(
                &sw,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", &rif, "netns", &router,
                ],
            )
            .await?;
            ip_in(&sw, &["link", "set", &port, "master", "br0", "up"]).await?;
            let addr = format!("{}/{NODE_PREFIX_LEN}", gateway(s)?);
            ip_in(&router, &["addr", "add", &addr, "dev", &rif]).await?;
            ip_in(&router, &["link", "set", &rif, "up"]).await?;
        }
        Ok(())
    }

    /// The router's namespace, when the bench has more than one subnet.
    pub fn router_netns(&self) -> Option<String> {
        let routed = self.nodes().iter().any(|n| n.subnet > 0);
        routed.then(|| format!("{}-rt", self.id()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_per_subnet() {
        assert_eq!(node_ip(0, 0).unwrap(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(node_ip(1, 2).unwrap(), Ipv4Addr::new(10, 99, 1, 3));
        assert_eq!(gateway(1).unwrap(), Ipv4Addr::new(10, 99, 1, 254));
        assert!(node_ip(0, 253).is_err());
        assert_eq!(switch_name("b", 0), "b-sw");
        assert_eq!(switch_name("b", 2), "b-sw2");
    }
}
