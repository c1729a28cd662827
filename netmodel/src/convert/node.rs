//! Node -> Node: IP addresses, pod CIDRs, labels and the first IPv4 InternalIP.
//!
//! When Calico's `projectcalico.org/IPv4Address` annotation (`10.0.0.1/24`: the node's
//! address with its subnet's prefix) is present, `ipv4_address` is that, prefix included:
//! agents use the subnet for `CrossSubnet` encapsulation. An unparsable one rejects the
//! node.
//!
//! Only IP-typed addresses (InternalIP, ExternalIP) are kept, deduplicated, every
//! InternalIP before every ExternalIP (each in listed order): agents route a family's pod
//! CIDR via the node's first address of that family, so a dual-stack node is reached
//! over IPv6 at its internal IPv6 address even when an external one is listed first. An
//! unparsable address rejects the node, as does an unparsable pod CIDR. Pod CIDRs are
//! `spec.podCIDRs` (both families on a dual-stack node), else `spec.podCIDR`.

use k8s_openapi::api::core::v1::Node;
use typha_proto::{Key, Kind, Value, pb};

use super::{ConvertError, ToModel, key_of, labels_of, name_of, net};
use crate::Resource;

/// Calico's annotation of a node's IPv4 address with its subnet prefix.
pub const IPV4_ANNOTATION: &str = "projectcalico.org/IPv4Address";

/// `10.0.0.1/24` validated (an IPv4 address, a prefix up to 32), host bits kept.
fn address_with_prefix(text: &str) -> Result<String, ConvertError> {
    let bad = || ConvertError::BadCidr(text.to_string());
    let (addr, len) = text.trim().split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok(format!("{addr}/{len}"))
}

impl ToModel for Node {
    const RESOURCE: Resource = Resource::Nodes;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::Node, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let name = name_of(&self.metadata)?;
        let mut addresses: Vec<String> = Vec::new();
        let mut ipv4_address = String::new();
        let listed: Vec<_> = self
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .collect();
        let by_type = ["InternalIP", "ExternalIP"]
            .into_iter()
            .flat_map(|t| listed.iter().filter(move |a| a.type_ == t));
        for a in by_type {
            let ip = net::address(&a.address)?.to_string();
            if ipv4_address.is_empty() && a.type_ == "InternalIP" && !ip.contains(':') {
                ipv4_address = ip.clone();
            }
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        if let Some(annotated) = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(IPV4_ANNOTATION))
        {
            ipv4_address = address_with_prefix(annotated)?;
        }
        let spec = self.spec.as_ref();
        let cidrs: Vec<String> = match spec.and_then(|s| s.pod_cidrs.clone()) {
            Some(list) if !list.is_empty() => list,
            _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
        };
        let pod_cidrs = cidrs
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| net::cidr(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Value::Node(pb::Node {
            name: name.to_string(),
            addresses,
            pod_cidrs,
            labels: labels_of(&self.metadata),
            ipv4_address,
        })))
    }
}
