//! Node -> Node: IP addresses, pod CIDRs, labels and the first IPv4 InternalIP.
//!
//! Only IP-typed addresses (InternalIP, ExternalIP) are kept, deduplicated in order;
//! an unparsable one rejects the node, as does an unparsable pod CIDR.

use k8s_openapi::api::core::v1::Node;
use typha_proto::{Key, Kind, Value, pb};

use super::{ConvertError, ToModel, labels_of, name_of, net};
use crate::Resource;

impl ToModel for Node {
    const RESOURCE: Resource = Resource::Nodes;

    fn model_key(&self) -> Result<Key, ConvertError> {
        Ok(Key::cluster(Kind::Node, name_of(&self.metadata)?)?)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let name = name_of(&self.metadata)?;
        let mut addresses: Vec<String> = Vec::new();
        let mut ipv4_address = String::new();
        let node_addresses = self
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten());
        for a in node_addresses {
            if !matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
                continue;
            }
            let ip = net::address(&a.address)?.to_string();
            if ipv4_address.is_empty() && a.type_ == "InternalIP" && !ip.contains(':') {
                ipv4_address = ip.clone();
            }
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
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
