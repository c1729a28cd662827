//! Pod address ranges of the simulated kubelet: a node's pod CIDRs (`spec.podCIDRs`, one
//! per family on a dual-stack node, IPv4 and IPv6 alike) and the first free address of
//! each.
//!
//! Both families are numbers in one `u128` space with a family flag, so one allocator
//! serves both. Invariants: the network address and the one after it (the node's
//! gateway by convention) are never handed out, nor the last address of the range (the
//! IPv4 broadcast; kept out of IPv6 ranges too, for symmetry); a search costs at most
//! one step per taken address.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One pod CIDR of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    /// The network address (host bits cleared) as a number.
    base: u128,
    /// The prefix length.
    len: u8,
    /// IPv6 (else IPv4).
    v6: bool,
}

fn number(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

fn address(n: u128, v6: bool) -> Option<IpAddr> {
    if v6 {
        Some(IpAddr::V6(Ipv6Addr::from(n)))
    } else {
        u32::try_from(n).ok().map(|n| IpAddr::V4(Ipv4Addr::from(n)))
    }
}

impl PodCidr {
    /// Parses `10.0.1.0/24` or `fd00:1::/64` (host bits are cleared); `None` when it is
    /// not a CIDR or has fewer than four addresses (nothing to hand out).
    pub fn parse(text: &str) -> Option<PodCidr> {
        let (ip, len) = text.trim().split_once('/')?;
        let (addr, v6) = number(ip.parse().ok()?);
        let len: u8 = len.parse().ok()?;
        let bits = if v6 { 128 } else { 32 };
        if u32::from(len) + 2 > bits {
            return None;
        }
        let host_bits = bits - u32::from(len);
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        Some(PodCidr {
            base: addr & mask,
            len,
            v6,
        })
    }

    /// Whether this is an IPv6 range.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    fn host_bits(&self) -> u32 {
        (if self.v6 { 128 } else { 32 }) - u32::from(self.len)
    }

    /// Whether `ip` lies in this range (same family, same network bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (n, v6) = number(ip);
        v6 == self.v6
            && n.checked_shr(self.host_bits()).unwrap_or(0)
                == self.base.checked_shr(self.host_bits()).unwrap_or(0)
    }

    /// The lowest address of the range not in `taken` (see the module invariants), or
    /// `None` when the range is full.
    pub fn first_free(&self, taken: &HashSet<IpAddr>) -> Option<IpAddr> {
        let last = match 1u128.checked_shl(self.host_bits()) {
            Some(size) => size - 1,
            None => u128::MAX,
        };
        (2..last)
            .filter_map(|off| address(self.base + off, self.v6))
            .find(|a| !taken.contains(a))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_to_their_network() {
        let v4 = PodCidr::parse("10.0.1.7/24").unwrap();
        assert_eq!(v4, PodCidr::parse("10.0.1.0/24").unwrap());
        assert!(!v4.is_v6());
        let v6 = PodCidr::parse("fd00:1::5/64").unwrap();
        assert!(v6.is_v6());
        assert_eq!(v6, PodCidr::parse("fd00:1::/64").unwrap());
        for bad in [
            "10.0.1.0/31",
            "fd00::/127",
            "nonsense",
            "10.0.1.0",
            "10.0.0.0/x",
        ] {
            assert_eq!(PodCidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn membership_is_per_family() {
        let v4 = PodCidr::parse("10.0.1.0/24").unwrap();
        let v6 = PodCidr::parse("fd00:1::/64").unwrap();
        assert!(v4.contains(ip("10.0.1.200")));
        assert!(!v4.contains(ip("10.0.2.1")));
        assert!(
            !v4.contains(ip("::a00:105")),
            "an IPv6 address is never in an IPv4 range"
        );
        assert!(v6.contains(ip("fd00:1::1234")));
        assert!(!v6.contains(ip("fd00:2::1")));
        assert!(PodCidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(PodCidr::parse("::/0").unwrap().contains(ip("fd00::1")));
    }

    #[test]
    fn first_free_skips_network_gateway_broadcast_and_taken() {
        let v4 = PodCidr::parse("10.0.1.0/30").unwrap();
        let mut taken = HashSet::new();
        assert_eq!(v4.first_free(&taken), Some(ip("10.0.1.2")));
        taken.insert(ip("10.0.1.2"));
        assert_eq!(v4.first_free(&taken), None, ".3 is the broadcast");
        let v6 = PodCidr::parse("fd00:1::/64").unwrap();
        taken.insert(ip("fd00:1::2"));
        taken.insert(ip("fd00:1::3"));
        assert_eq!(v6.first_free(&taken), Some(ip("fd00:1::4")));
        let top = PodCidr::parse("255.255.255.0/24").unwrap();
        assert_eq!(top.first_free(&HashSet::new()), Some(ip("255.255.255.2")));
    }
}
