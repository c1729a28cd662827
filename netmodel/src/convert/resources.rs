//! The remaining Calico resources: IPPool, NetworkSet, GlobalNetworkSet, HostEndpoint,
//! FelixConfiguration and ClusterInformation.
//!
//! FelixConfiguration keeps every spec field as a string setting keyed by its JSON name
//! (strings as-is, other scalars and structures as compact JSON, nulls dropped), so a
//! field added by a newer Calico flows through without a model change.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use typha_proto::{Key, Kind, Value, pb};

use super::calico::{protocol, spec_of};
use super::{ConvertError, ToModel, key_of, labels_of, net, port_number};
use crate::Resource;
use crate::crd::{
    CalicoObject, ClusterInformation, FelixConfiguration, GlobalNetworkSet, HostEndpoint, IPPool,
    NetworkSet, NetworkSetSpec,
};
use crate::selector::Selector;

fn encap_mode(value: Option<&str>, field: &'static str) -> Result<String, ConvertError> {
    match value.unwrap_or("") {
        "" | "Never" => Ok("Never".into()),
        mode @ ("Always" | "CrossSubnet") => Ok(mode.into()),
        other => Err(ConvertError::BadValue {
            field,
            value: other.into(),
        }),
    }
}

impl ToModel for CalicoObject<IPPool> {
    const RESOURCE: Resource = Resource::IpPools;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::IpPool, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let spec = spec_of(self)?;
        if spec.cidr.is_empty() {
            return Err(ConvertError::Missing("spec.cidr"));
        }
        let cidr = net::cidr(&spec.cidr)?;
        let (default_block, max) = if cidr.contains(':') {
            (122, 128)
        } else {
            (26, 32)
        };
        let block_size = spec.block_size.unwrap_or(default_block);
        let block_size = u32::try_from(block_size)
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| ConvertError::BadValue {
                field: "spec.blockSize",
                value: block_size.to_string(),
            })?;
        let node_selector =
            Selector::parse(spec.node_selector.as_deref().unwrap_or(""))?.unwrap_or(Selector::All);
        Ok(Some(Value::IpPool(pb::IpPool {
            cidr,
            nat_outgoing: spec.nat_outgoing,
            disabled: spec.disabled,
            ipip_mode: encap_mode(spec.ipip_mode.as_deref(), "spec.ipipMode")?,
            vxlan_mode: encap_mode(spec.vxlan_mode.as_deref(), "spec.vxlanMode")?,
            block_size,
            node_selector: node_selector.to_string(),
        })))
    }
}

/// NetworkSet and GlobalNetworkSet: their nets and labels.
fn network_set(spec: &NetworkSetSpec, meta: &ObjectMeta) -> Result<Option<Value>, ConvertError> {
    Ok(Some(Value::NetworkSet(pb::NetworkSet {
        nets: net::cidrs(&spec.nets)?,
        labels: labels_of(meta),
    })))
}

impl ToModel for CalicoObject<NetworkSet> {
    const RESOURCE: Resource = Resource::NetworkSets;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::NetworkSet, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        network_set(&spec_of(self)?, &self.metadata)
    }
}

impl ToModel for CalicoObject<GlobalNetworkSet> {
    const RESOURCE: Resource = Resource::GlobalNetworkSets;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::GlobalNetworkSet, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        network_set(&spec_of(self)?, &self.metadata)
    }
}

impl ToModel for CalicoObject<HostEndpoint> {
    const RESOURCE: Resource = Resource::HostEndpoints;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::HostEndpoint, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let spec = spec_of(self)?;
        if spec.node.is_empty() {
            return Err(ConvertError::Missing("spec.node"));
        }
        if spec.interface_name.is_empty() && spec.expected_ips.is_empty() {
            return Err(ConvertError::Missing(
                "spec.interfaceName or spec.expectedIPs",
            ));
        }
        let expected_ips = spec
            .expected_ips
            .iter()
            .map(|ip| net::address(ip).map(|a| a.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ports = Vec::new();
        for p in &spec.ports {
            if !super::is_port_name(&p.name) {
                return Err(ConvertError::BadPort(p.name.clone()));
            }
            let proto = p.protocol.as_ref().map(protocol).transpose()?;
            ports.push(pb::NamedPort {
                name: p.name.clone(),
                protocol: proto.unwrap_or(pb::Protocol::Tcp) as i32,
                port: port_number(p.port)?,
            });
        }
        Ok(Some(Value::HostEndpoint(pb::HostEndpoint {
            node: spec.node,
            interface_name: spec.interface_name,
            expected_ips,
            labels: labels_of(&self.metadata),
            profile_ids: spec.profiles,
            ports,
        })))
    }
}

fn setting(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl ToModel for CalicoObject<FelixConfiguration> {
    const RESOURCE: Resource = Resource::FelixConfigurations;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::FelixConfiguration, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let spec = spec_of(self)?;
        let settings: BTreeMap<String, String> = spec
            .fields
            .iter()
            .filter_map(|(k, v)| setting(v).map(|v| (k.clone(), v)))
            .collect();
        Ok(Some(Value::FelixConfiguration(pb::FelixConfiguration {
            settings,
        })))
    }
}

impl ToModel for CalicoObject<ClusterInformation> {
    const RESOURCE: Resource = Resource::ClusterInformations;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::ClusterInformation, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let spec = spec_of(self)?;
        Ok(Some(Value::ClusterInformation(pb::ClusterInformation {
            cluster_guid: spec.cluster_guid.unwrap_or_default(),
            cluster_type: spec.cluster_type.unwrap_or_default(),
            calico_version: spec.calico_version.unwrap_or_default(),
            datastore_ready: spec.datastore_ready.unwrap_or(false),
        })))
    }
}
