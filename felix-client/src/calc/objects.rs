//! The labelled objects selectors match: workload endpoints and (global) network sets,
//! converted once from their model values, plus CIDR parsing.
//!
//! An object's effective labels are its own labels over those of its profiles, in
//! profile order (Calico's inheritance: the endpoint's own label wins). A namespaced
//! NetworkSet gets `projectcalico.org/namespace` and the namespace profile, as Calico's
//! syncer gives it, so namespace selectors match it like a pod of that namespace.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmodel::selector::NAMESPACE_LABEL;
use typha_proto::{Key, pb};

use super::Family;
use super::intern::Id;

/// `addr` with all but its first `prefix` bits cleared; `None` when the prefix is longer
/// than the address.
fn masked(addr: IpAddr, prefix: u8) -> Option<IpAddr> {
    let prefix = u32::from(prefix);
    Some(match addr {
        IpAddr::V4(a) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
        _ => return None,
    })
}

/// A parsed, canonical CIDR.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Net {
    /// The family.
    pub family: Family,
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Net {
    /// Parses `a.b.c.d/n`, `v6/n` or a bare address (a host network); `None` if invalid.
    pub fn parse(text: &str) -> Option<Net> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let (family, host) = match addr {
            IpAddr::V4(_) => (Family::V4, 32),
            IpAddr::V6(_) => (Family::V6, 128),
        };
        let prefix = prefix.unwrap_or(host);
        Some(Net {
            family,
            addr: masked(addr, prefix)?,
            prefix,
        })
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        masked(addr, self.prefix) == Some(self.addr)
    }

    /// The host net of one address (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Net {
        match addr {
            IpAddr::V4(_) => Net {
                family: Family::V4,
                addr,
                prefix: 32,
            },
            IpAddr::V6(_) => Net {
                family: Family::V6,
                addr,
                prefix: 128,
            },
        }
    }

    /// Canonical text: `10.0.0.0/8`.
    pub fn text(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }

    /// The members this net adds to a `hash:net` set: itself, or its two halves for a
    /// zero-length prefix (which `hash:net` cannot hold).
    pub fn hash_net_members(&self) -> Vec<String> {
        if self.prefix > 0 {
            return vec![self.text()];
        }
        match self.family {
            Family::V4 => vec!["0.0.0.0/1".into(), "128.0.0.0/1".into()],
            Family::V6 => vec!["::/1".into(), "8000::/1".into()],
        }
    }
}

/// Parses every net; invalid entries are dropped (the converters never produce them).
pub(super) fn parse_nets(nets: &[String]) -> Vec<Net> {
    nets.iter().filter_map(|n| Net::parse(n)).collect()
}

/// A named port of an endpoint, its name interned.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct PortName {
    /// The port's name (an interned string).
    pub name: Id,
    /// Its protocol (`tcp`, `udp`, `sctp`).
    pub protocol: &'static str,
    /// Its number.
    pub port: u32,
}

/// The iptables / ipset name of a port protocol; `None` for protocols without ports.
pub(super) fn port_protocol(raw: i32) -> Option<&'static str> {
    match pb::Protocol::try_from(raw).ok()? {
        pb::Protocol::Tcp => Some("tcp"),
        pb::Protocol::Udp => Some("udp"),
        pb::Protocol::Sctp => Some("sctp"),
        _ => None,
    }
}

/// An object's addresses: one IPv4 and/or one IPv6 host address inline (every pod,
/// single- or dual-stack), any other list of nets (network sets, several addresses of
/// one family, non-host prefixes) boxed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Addrs {
    /// One IPv4 host address (`/32`).
    V4(Ipv4Addr),
    /// One IPv6 host address (`/128`).
    V6(Ipv6Addr),
    /// One of each (dual stack).
    Dual(Ipv4Addr, Ipv6Addr),
    /// Anything else, in the order given.
    Nets(Box<[Net]>),
}

impl Addrs {
    /// The compact form of `nets`.
    pub fn new(nets: Vec<Net>) -> Addrs {
        let host = |n: &Net| match n.addr {
            IpAddr::V4(a) if n.prefix == 32 => Some(IpAddr::V4(a)),
            IpAddr::V6(a) if n.prefix == 128 => Some(IpAddr::V6(a)),
            _ => None,
        };
        match nets.as_slice() {
            [a] => match host(a) {
                Some(IpAddr::V4(a)) => return Addrs::V4(a),
                Some(IpAddr::V6(a)) => return Addrs::V6(a),
                None => {}
            },
            [a, b] => {
                if let (Some(IpAddr::V4(a)), Some(IpAddr::V6(b))) = (host(a), host(b)) {
                    return Addrs::Dual(a, b);
                }
            }
            _ => {}
        }
        Addrs::Nets(nets.into_boxed_slice())
    }

    /// The nets, in order.
    pub fn nets(&self) -> impl Iterator<Item = Net> + '_ {
        let (inline, boxed): ([Option<IpAddr>; 2], &[Net]) = match self {
            Addrs::V4(a) => ([Some(IpAddr::V4(*a)), None], &[]),
            Addrs::V6(a) => ([Some(IpAddr::V6(*a)), None], &[]),
            Addrs::Dual(a, b) => ([Some(IpAddr::V4(*a)), Some(IpAddr::V6(*b))], &[]),
            Addrs::Nets(nets) => ([None, None], nets),
        };
        inline
            .into_iter()
            .flatten()
            .map(Net::host)
            .chain(boxed.iter().cloned())
    }
}

/// What an update says about a labelled object, before interning: borrowed from the
/// model value (the index keeps only interned ids and the compact addresses).
#[derive(Debug)]
pub(super) struct NewObj<'a> {
    /// Own labels, sorted by key.
    pub labels: Vec<(&'a str, &'a str)>,
    /// Profiles whose labels it inherits, in order.
    pub profiles: Vec<Cow<'a, str>>,
    /// Addresses (endpoints) or networks (network sets).
    pub addrs: Addrs,
    /// Named ports: (name, protocol, number).
    pub ports: Vec<(&'a str, &'static str, u32)>,
}

impl<'a> NewObj<'a> {
    /// The object of a workload endpoint.
    pub fn endpoint(wep: &'a pb::WorkloadEndpoint) -> NewObj<'a> {
        NewObj::labelled(&wep.labels, &wep.profile_ids, &wep.ip_nets, &wep.ports)
    }

    /// The object of a host endpoint (for rule selectors: its expected IPs are members).
    pub fn host_endpoint(hep: &'a pb::HostEndpoint) -> NewObj<'a> {
        NewObj::labelled(&hep.labels, &hep.profile_ids, &hep.expected_ips, &hep.ports)
    }

    /// An endpoint's object from its labels (a model map, so already sorted), profiles,
    /// addresses and named ports.
    fn labelled(
        labels: &'a BTreeMap<String, String>,
        profiles: &'a [String],
        nets: &[String],
        ports: &'a [pb::NamedPort],
    ) -> NewObj<'a> {
        NewObj {
            labels: labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            profiles: profiles.iter().map(|p| Cow::Borrowed(p.as_str())).collect(),
            addrs: Addrs::new(parse_nets(nets)),
            ports: ports
                .iter()
                .filter_map(|p| Some((p.name.as_str(), port_protocol(p.protocol)?, p.port)))
                .collect(),
        }
    }

    /// The object of a (global, when the key has no namespace) network set.
    pub fn network_set(key: &'a Key, set: &'a pb::NetworkSet) -> NewObj<'a> {
        let mut labels: Vec<(&str, &str)> = set
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| key.namespace().is_empty() || *k != NAMESPACE_LABEL)
            .collect();
        let mut profiles = Vec::new();
        if !key.namespace().is_empty() {
            labels.push((NAMESPACE_LABEL, key.namespace()));
            labels.sort_unstable();
            profiles.push(Cow::Owned(format!("kns.{}", key.namespace())));
        }
        NewObj {
            labels,
            profiles,
            addrs: Addrs::new(parse_nets(&set.nets)),
            ports: Vec::new(),
        }
    }
}

/// One labelled object as the index keeps it: interned ids and compact addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Obj {
    /// Its own labels (an interned label set).
    pub labels: Id,
    /// Profiles it inherits labels from (an interned list of profile names).
    pub profiles: Id,
    /// Named ports (an interned list).
    pub ports: Id,
    /// Its addresses or networks.
    pub addrs: Addrs,
}

/// Profile labels by profile name.
pub(super) type Profiles = HashMap<String, BTreeMap<String, String>>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nets_parse_masked_and_split_at_zero() {
        let n = Net::parse("10.1.2.3/8").unwrap();
        assert_eq!(n.text(), "10.0.0.0/8");
        assert_eq!(Net::parse("10.1.2.3").unwrap().text(), "10.1.2.3/32");
        assert_eq!(Net::parse("fd00::1").unwrap().family, Family::V6);
        assert_eq!(
            Net::parse("0.0.0.0/0").unwrap().hash_net_members(),
            vec!["0.0.0.0/1", "128.0.0.0/1"]
        );
        assert!(Net::parse("10.0.0.0/33").is_none());
        assert!(Net::parse("x").is_none());
    }

    #[test]
    fn addresses_are_inline_for_pods_and_boxed_otherwise() {
        let nets =
            |list: &[&str]| parse_nets(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let cases: [(&[&str], bool); 7] = [
            (&["10.0.0.1/32"], true),
            (&["fd00::1/128"], true),
            (&["10.0.0.1", "fd00::1"], true),
            (&["10.0.0.0/24"], false),
            (&["10.0.0.1/32", "10.0.0.2/32"], false),
            (&["fd00::1", "10.0.0.1"], false),
            (&[], false),
        ];
        for (list, inline) in cases {
            let addrs = Addrs::new(nets(list));
            assert_eq!(!matches!(addrs, Addrs::Nets(_)), inline, "{list:?}");
            assert_eq!(addrs.nets().collect::<Vec<_>>(), nets(list), "{list:?}");
        }
        assert!(std::mem::size_of::<Addrs>() <= 24);
    }
}
