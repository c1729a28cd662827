//! Pod -> WorkloadEndpoint.
//!
//! A pod is an endpoint only while it is scheduled, not host-networked, has an IP and has
//! not finished; otherwise its value is `None` (its key is deleted), so a pod that loses
//! its IP or completes disappears from the model.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use sha1::{Digest, Sha1};
use typha_proto::{Key, Kind, Value, pb};

use super::{
    ConvertError, ConvertOptions, ToModel, k8s_protocol, labels_of, name_of, namespace_of, net,
};
use crate::Resource;
use crate::selector::{NAMESPACE_LABEL, ORCHESTRATOR_LABEL, SERVICE_ACCOUNT_LABEL};

/// The host-side interface name of a pod: "cali" + the first 11 hex digits of
/// sha1("<namespace>.<pod>") (Calico's default for the Kubernetes datastore).
pub fn interface_name(namespace: &str, pod: &str) -> String {
    prefixed_interface_name(super::DEFAULT_INTERFACE_PREFIX, namespace, pod)
}

/// The host-side interface name of a pod with another prefix: `prefix` + the first hex
/// digits of sha1("<namespace>.<pod>"), 11 of them (Calico's naming, which the AWS,
/// Azure and GKE CNIs share with their own prefixes) or fewer when a prefix longer
/// than 4 characters would pass Linux's 15-character limit.
pub fn prefixed_interface_name(prefix: &str, namespace: &str, pod: &str) -> String {
    use std::fmt::Write;
    // Once per pod of every (re)list: hash and format without intermediate strings.
    let digest = Sha1::new()
        .chain_update(namespace)
        .chain_update(".")
        .chain_update(pod)
        .finalize();
    let digits = 11.min(15usize.saturating_sub(prefix.len()));
    let mut name = String::with_capacity(prefix.len() + digits + 1);
    name.push_str(prefix);
    for b in digest.iter().take(digits.div_ceil(2)) {
        let _ = write!(name, "{b:02x}");
    }
    name.truncate(prefix.len() + digits);
    name
}

fn pod_ip_nets(pod: &Pod) -> Result<Vec<String>, ConvertError> {
    let Some(status) = &pod.status else {
        return Ok(Vec::new());
    };
    let ips: Vec<&str> = match (&status.pod_ips, &status.pod_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(|p| p.ip.as_str()).collect(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
        _ => Vec::new(),
    };
    ips.into_iter().map(net::host_net).collect()
}

fn is_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed" | "Completed"))
}

fn named_ports(pod: &Pod) -> Result<Vec<pb::NamedPort>, ConvertError> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    let mut ports = Vec::new();
    for port in containers.flat_map(|c| c.ports.iter().flatten()) {
        let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        ports.push(pb::NamedPort {
            name: name.to_string(),
            protocol: k8s_protocol(port.protocol.as_deref())? as i32,
            port: super::port_number(i64::from(port.container_port))?,
        });
    }
    Ok(ports)
}

impl ToModel for Pod {
    const RESOURCE: Resource = Resource::Pods;

    fn model_key(&self) -> Result<Key, ConvertError> {
        Ok(Key::new(
            Kind::WorkloadEndpoint,
            namespace_of(&self.metadata)?,
            name_of(&self.metadata)?,
        )?)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        self.model_value_with(&ConvertOptions::default())
    }

    fn model_value_with(&self, options: &ConvertOptions) -> Result<Option<Value>, ConvertError> {
        let (ns, name) = (namespace_of(&self.metadata)?, name_of(&self.metadata)?);
        let spec = self.spec.as_ref();
        let node = spec.and_then(|s| s.node_name.as_deref()).unwrap_or("");
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        if node.is_empty() || host_network || is_finished(self) {
            return Ok(None);
        }
        let ip_nets = pod_ip_nets(self)?;
        if ip_nets.is_empty() {
            return Ok(None);
        }
        let sa = spec
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("");
        let mut labels: BTreeMap<String, String> = labels_of(&self.metadata);
        labels.insert(NAMESPACE_LABEL.into(), ns.into());
        labels.insert(ORCHESTRATOR_LABEL.into(), "k8s".into());
        let mut profile_ids = vec![format!("kns.{ns}")];
        if !sa.is_empty() {
            labels.insert(SERVICE_ACCOUNT_LABEL.into(), sa.into());
            profile_ids.push(format!("ksa.{ns}.{sa}"));
        }
        Ok(Some(Value::WorkloadEndpoint(pb::WorkloadEndpoint {
            namespace: ns.into(),
            pod: name.into(),
            node: node.into(),
            interface_name: prefixed_interface_name(&options.interface_prefix, ns, name),
            ip_nets,
            labels,
            profile_ids,
            ports: named_ports(self)?,
            service_account: sa.into(),
            mac: String::new(),
        })))
    }
}
