//! The labelled objects selectors match: workload endpoints and (global) network sets,
//! converted once from their model values, plus CIDR parsing.
//!
//! An object's effective labels are its own labels over those of its profiles, in
//! profile order (Calico's inheritance: the endpoint's own label wins). A namespaced
//! NetworkSet gets `projectcalico.org/namespace` and the namespace profile, as Calico's
//! syncer gives it, so namespace selectors match it like a pod of that namespace.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmodel::selector::NAMESPACE_LABEL;
use typha_proto::{Key, pb};

use super::Family;

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
        Some(match addr {
            IpAddr::V4(a) => {
                let prefix = prefix.unwrap_or(32);
                if prefix > 32 {
                    return None;
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Net {
                    family: Family::V4,
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)),
                    prefix,
                }
            }
            IpAddr::V6(a) => {
                let prefix = prefix.unwrap_or(128);
                if prefix > 128 {
                    return None;
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Net {
                    family: Family::V6,
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)),
                    prefix,
                }
            }
        })
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

/// A named port of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct PortName {
    /// The port's name.
    pub name: String,
    /// Its protocol (`tcp`, `udp`, `sctp`).
    pub protocol: &'static str,
    /// Its number.
    pub port: u32,
}

/// What only workload endpoints have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EndpointInfo {
    /// The node it runs on.
    pub node: String,
    /// Its host-side interface.
    pub iface: String,
}

/// One labelled object: an endpoint or a network set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Obj {
    /// Its own labels.
    pub labels: BTreeMap<String, String>,
    /// Profiles whose labels it inherits, in order.
    pub profiles: Vec<String>,
    /// Its addresses (endpoints) or networks (network sets).
    pub nets: Vec<Net>,
    /// Named ports (endpoints only).
    pub ports: Vec<PortName>,
    /// Endpoint-only data; `None` for network sets.
    pub endpoint: Option<EndpointInfo>,
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

impl Obj {
    /// The object of a workload endpoint.
    pub fn endpoint(wep: &pb::WorkloadEndpoint) -> Obj {
        Obj {
            labels: wep.labels.clone().into_iter().collect(),
            profiles: wep.profile_ids.clone(),
            nets: parse_nets(&wep.ip_nets),
            ports: wep
                .ports
                .iter()
                .filter_map(|p| {
                    Some(PortName {
                        name: p.name.clone(),
                        protocol: port_protocol(p.protocol)?,
                        port: p.port,
                    })
                })
                .collect(),
            endpoint: Some(EndpointInfo {
                node: wep.node.clone(),
                iface: wep.interface_name.clone(),
            }),
        }
    }

    /// The object of a (global, when the key has no namespace) network set.
    pub fn network_set(key: &Key, set: &pb::NetworkSet) -> Obj {
        let mut labels: BTreeMap<String, String> = set.labels.clone().into_iter().collect();
        let mut profiles = Vec::new();
        if !key.namespace().is_empty() {
            labels.insert(NAMESPACE_LABEL.to_string(), key.namespace().to_string());
            profiles.push(format!("kns.{}", key.namespace()));
        }
        Obj {
            labels,
            profiles,
            nets: parse_nets(&set.nets),
            ports: Vec::new(),
            endpoint: None,
        }
    }

    /// The namespace the object's labels place it in (the index's scoping key).
    pub fn namespace(&self) -> Option<&str> {
        self.labels.get(NAMESPACE_LABEL).map(String::as_str)
    }
}

/// Profile labels by profile name.
pub(super) type Profiles = HashMap<String, BTreeMap<String, String>>;

/// The effective label lookup of `obj`: own labels first, then its profiles in order.
pub(super) fn label_lookup<'a>(
    obj: &'a Obj,
    profiles: &'a Profiles,
) -> impl Fn(&str) -> Option<&'a str> + 'a {
    move |key: &str| {
        if let Some(v) = obj.labels.get(key) {
            return Some(v.as_str());
        }
        obj.profiles
            .iter()
            .filter_map(|p| profiles.get(p))
            .find_map(|labels| labels.get(key).map(String::as_str))
    }
}

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
    fn own_labels_win_over_profiles() {
        let obj = Obj {
            labels: [("a".to_string(), "own".to_string())].into(),
            profiles: vec!["p1".into(), "p2".into()],
            nets: vec![],
            ports: vec![],
            endpoint: None,
        };
        let mut profiles = Profiles::new();
        profiles.insert(
            "p1".into(),
            [("a".into(), "p1".into()), ("b".into(), "p1".into())].into(),
        );
        profiles.insert(
            "p2".into(),
            [("b".into(), "p2".into()), ("c".into(), "p2".into())].into(),
        );
        let get = label_lookup(&obj, &profiles);
        assert_eq!(get("a"), Some("own"));
        assert_eq!(get("b"), Some("p1"));
        assert_eq!(get("c"), Some("p2"));
        assert_eq!(get("d"), None);
    }
}
