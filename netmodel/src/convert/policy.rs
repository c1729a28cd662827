//! networking.k8s.io/v1 NetworkPolicy -> Policy `knp.default.<name>` at order 1000.
//!
//! Every (peer x protocol) pair of a Kubernetes rule becomes one Calico rule: a rule's
//! ports are grouped by protocol (sorted by protocol name, numeric ports merged into
//! ranges), and an empty peer or port list means "any". Unlike libcalico-go, which drops
//! a rule it cannot convert, any invalid part rejects the whole policy (the module-wide
//! contract: invalid objects are rejected and counted, never half-applied).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use typha_proto::{Key, Kind, Value, pb};

use super::{
    ConvertError, ToModel, k8s_protocol, name_of, namespace_of, net, policy_types, port_number,
};
use crate::Resource;
use crate::selector::{NAMESPACE_LABEL, NAMESPACE_LABEL_PREFIX, ORCHESTRATOR_LABEL, Selector};

/// The order Calico gives every Kubernetes NetworkPolicy.
pub const K8S_POLICY_ORDER: f64 = 1000.0;
/// The key-name prefix of converted Kubernetes NetworkPolicies.
pub const K8S_POLICY_PREFIX: &str = "knp.default.";

/// `projectcalico.org/orchestrator == 'k8s' && <pod selector>`, optionally scoped to `ns`.
fn pod_selector(ls: Option<&LabelSelector>, ns: Option<&str>) -> Result<Selector, ConvertError> {
    let mut parts = Vec::new();
    if let Some(ns) = ns {
        parts.push(Selector::eq(NAMESPACE_LABEL, ns)?);
    }
    parts.push(Selector::eq(ORCHESTRATOR_LABEL, "k8s")?);
    if let Some(sel) = ls.map(Selector::from_label_selector).transpose()?.flatten() {
        parts.push(sel);
    }
    Ok(Selector::and_all(parts).unwrap_or(Selector::All))
}

/// The entity a peer matches (selectors and nets; ports are added by the caller).
fn peer_entity(peer: Option<&NetworkPolicyPeer>, ns: &str) -> Result<pb::EntityRule, ConvertError> {
    let Some(peer) = peer else {
        return Ok(pb::EntityRule::default());
    };
    if let Some(block) = &peer.ip_block {
        return Ok(pb::EntityRule {
            nets: vec![net::cidr(&block.cidr)?],
            not_nets: net::cidrs(block.except.as_deref().unwrap_or_default())?,
            ..Default::default()
        });
    }
    match &peer.namespace_selector {
        Some(ns_sel) => {
            let ns_sel = Selector::from_label_selector(ns_sel)?.unwrap_or(Selector::All);
            Ok(pb::EntityRule {
                selector: pod_selector(peer.pod_selector.as_ref(), None)?.to_string(),
                namespace_selector: ns_sel
                    .into_profile_scope(NAMESPACE_LABEL_PREFIX)
                    .to_string(),
                ..Default::default()
            })
        }
        None => Ok(pb::EntityRule {
            selector: pod_selector(peer.pod_selector.as_ref(), Some(ns))?.to_string(),
            ..Default::default()
        }),
    }
}

/// One port entry: its protocol and its range (`None` = every port of the protocol).
fn port_entry(
    port: &NetworkPolicyPort,
) -> Result<(pb::Protocol, Option<pb::PortRange>), ConvertError> {
    let protocol = k8s_protocol(port.protocol.as_deref())?;
    let first = match &port.port {
        None => return Ok((protocol, None)),
        Some(IntOrString::Int(p)) => port_number(i64::from(*p))?,
        Some(IntOrString::String(s)) => match s.parse::<i64>() {
            Ok(p) => port_number(p)?,
            Err(_) if port.end_port.is_some() => return Err(ConvertError::BadPort(s.clone())),
            Err(_) => return Ok((protocol, Some(super::named_port(s)?))),
        },
    };
    let last = match port.end_port {
        Some(end) => port_number(i64::from(end))?,
        None => first,
    };
    if last < first {
        return Err(ConvertError::PortOutOfRange(format!("{first}:{last}")));
    }
    Ok((protocol, Some(super::port_range(first, last))))
}

/// Merges numeric ranges that overlap or touch; named ports follow, deduplicated.
fn simplify(ports: Vec<pb::PortRange>) -> Vec<pb::PortRange> {
    let (mut numeric, named): (Vec<_>, Vec<_>) = ports.into_iter().partition(|p| p.name.is_empty());
    numeric.sort_by_key(|p| (p.first, p.last));
    let mut out: Vec<pb::PortRange> = Vec::new();
    for p in numeric {
        match out.last_mut() {
            Some(prev) if p.first <= prev.last.saturating_add(1) => {
                prev.last = prev.last.max(p.last)
            }
            _ => out.push(p),
        }
    }
    for p in named {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Groups a rule's ports by protocol name: `None` ports = all ports of that protocol.
/// An empty port list yields one "any protocol, any port" group.
fn port_groups(
    ports: &[NetworkPolicyPort],
) -> Result<Vec<(pb::Protocol, Vec<pb::PortRange>)>, ConvertError> {
    if ports.is_empty() {
        return Ok(vec![(pb::Protocol::Unspecified, Vec::new())]);
    }
    let mut groups: BTreeMap<&'static str, (pb::Protocol, Option<Vec<pb::PortRange>>)> =
        BTreeMap::new();
    for port in ports {
        let (protocol, range) = port_entry(port)?;
        let entry = groups
            .entry(protocol.as_str_name())
            .or_insert((protocol, Some(Vec::new())));
        match (range, &mut entry.1) {
            (None, all) => *all = None,
            (Some(r), Some(list)) => list.push(r),
            (Some(_), None) => {}
        }
    }
    Ok(groups
        .into_values()
        .map(|(protocol, ports)| (protocol, simplify(ports.unwrap_or_default())))
        .collect())
}

fn k8s_rules(
    peers: &[NetworkPolicyPeer],
    ports: &[NetworkPolicyPort],
    ns: &str,
    ingress: bool,
) -> Result<Vec<pb::Rule>, ConvertError> {
    let peers: Vec<Option<&NetworkPolicyPeer>> = if peers.is_empty() {
        vec![None]
    } else {
        peers.iter().map(Some).collect()
    };
    let mut rules = Vec::new();
    for (protocol, ports) in port_groups(ports)? {
        for peer in &peers {
            let peer = peer_entity(*peer, ns)?;
            let (source, destination) = if ingress {
                (
                    peer,
                    pb::EntityRule {
                        ports: ports.clone(),
                        ..Default::default()
                    },
                )
            } else {
                (
                    pb::EntityRule::default(),
                    pb::EntityRule {
                        ports: ports.clone(),
                        ..peer
                    },
                )
            };
            rules.push(pb::Rule {
                action: pb::Action::Allow as i32,
                protocol: protocol as i32,
                source: Some(source),
                destination: Some(destination),
                ..Default::default()
            });
        }
    }
    Ok(rules)
}

/// The rules of one direction: each Kubernetes rule's peers (`from` or `to`) and ports.
fn direction_rules<'a>(
    rules: impl Iterator<
        Item = (
            &'a Option<Vec<NetworkPolicyPeer>>,
            &'a Option<Vec<NetworkPolicyPort>>,
        ),
    >,
    ns: &str,
    ingress: bool,
) -> Result<Vec<pb::Rule>, ConvertError> {
    let mut out = Vec::new();
    for (peers, ports) in rules {
        let (peers, ports) = (peers.as_deref(), ports.as_deref());
        out.extend(k8s_rules(
            peers.unwrap_or_default(),
            ports.unwrap_or_default(),
            ns,
            ingress,
        )?);
    }
    Ok(out)
}

impl ToModel for NetworkPolicy {
    const RESOURCE: Resource = Resource::KubernetesNetworkPolicies;

    fn model_key(&self) -> Result<Key, ConvertError> {
        let (ns, name) = (namespace_of(&self.metadata)?, name_of(&self.metadata)?);
        Ok(Key::new(
            Kind::K8sNetworkPolicy,
            ns,
            format!("{K8S_POLICY_PREFIX}{name}"),
        )?)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let ns = namespace_of(&self.metadata)?;
        let spec = self.spec.clone().unwrap_or_default();
        let inbound = spec.ingress.iter().flatten().map(|r| (&r.from, &r.ports));
        let outbound = spec.egress.iter().flatten().map(|r| (&r.to, &r.ports));
        let egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        // The API server's defaulting: Ingress always, Egress when egress rules exist.
        let defaults: &[pb::PolicyType] = if egress_rules {
            &[pb::PolicyType::Ingress, pb::PolicyType::Egress]
        } else {
            &[pb::PolicyType::Ingress]
        };
        let listed = spec.policy_types.as_deref().unwrap_or_default();
        Ok(Some(Value::Policy(pb::Policy {
            namespace: ns.to_string(),
            order: K8S_POLICY_ORDER,
            has_order: true,
            selector: pod_selector(spec.pod_selector.as_ref(), Some(ns))?.to_string(),
            inbound_rules: direction_rules(inbound, ns, true)?,
            outbound_rules: direction_rules(outbound, ns, false)?,
            types: policy_types(listed, "spec.policyTypes", false, defaults)?,
            tier: "default".to_string(),
            ..Default::default()
        })))
    }
}
