//! Calico NetworkPolicy (namespaced) and GlobalNetworkPolicy -> Policy.
//!
//! Selectors are parsed and printed canonically. Namespace scoping is folded in (see the
//! module docs of `upstream`): a namespaced policy's selector and its rule selectors
//! without a namespace selector gain `projectcalico.org/namespace == '<ns>'`; namespace
//! and service-account selectors are rewritten over `pcns.` / `pcsa.` keys. Rule features
//! the model cannot carry reject the policy rather than widen it.

use typha_proto::{Key, Kind, Value, pb};

use super::{ConvertError, ToModel, key_of, namespace_of, net, policy_types, port_number};
use crate::Resource;
use crate::crd::{
    CalicoKind, CalicoObject, EntitySpec, GlobalNetworkPolicy, NetworkPolicy, PolicySpec, PortSpec,
    ProtocolSpec, RuleSpec,
};
use crate::selector::{
    NAMESPACE_LABEL, NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX, Selector,
};

/// A protocol from Calico's syntax: a name (any case) or an IP protocol number.
pub(super) fn protocol(spec: &ProtocolSpec) -> Result<pb::Protocol, ConvertError> {
    let p = match spec {
        ProtocolSpec::Number(6) => pb::Protocol::Tcp,
        ProtocolSpec::Number(17) => pb::Protocol::Udp,
        ProtocolSpec::Number(132) => pb::Protocol::Sctp,
        ProtocolSpec::Number(1) => pb::Protocol::Icmp,
        ProtocolSpec::Number(58) => pb::Protocol::Icmpv6,
        ProtocolSpec::Name(name) => match name.to_ascii_lowercase().as_str() {
            "tcp" => pb::Protocol::Tcp,
            "udp" => pb::Protocol::Udp,
            "sctp" => pb::Protocol::Sctp,
            "icmp" => pb::Protocol::Icmp,
            "icmpv6" => pb::Protocol::Icmpv6,
            _ => return Err(ConvertError::BadProtocol(name.clone())),
        },
        ProtocolSpec::Number(n) => return Err(ConvertError::BadProtocol(n.to_string())),
    };
    Ok(p)
}

/// A port from Calico's syntax: 80, "80", "80:90" or a port name.
fn port(spec: &PortSpec) -> Result<pb::PortRange, ConvertError> {
    let text = match spec {
        PortSpec::Number(n) => {
            let p = port_number(*n)?;
            return Ok(super::port_range(p, p));
        }
        PortSpec::Text(t) => t.trim(),
    };
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| ConvertError::BadPort(text.to_string()))
            .and_then(port_number)
    };
    if let Some((a, b)) = text.split_once(':') {
        let (first, last) = (number(a)?, number(b)?);
        if last < first {
            return Err(ConvertError::PortOutOfRange(text.to_string()));
        }
        return Ok(super::port_range(first, last));
    }
    if let Ok(n) = text.parse::<i64>() {
        let p = port_number(n)?;
        return Ok(super::port_range(p, p));
    }
    super::named_port(text)
}

fn ports(specs: &[PortSpec]) -> Result<Vec<pb::PortRange>, ConvertError> {
    specs.iter().map(port).collect()
}

fn parse(text: Option<&str>) -> Result<Option<Selector>, ConvertError> {
    Ok(Selector::parse(text.unwrap_or(""))?)
}

fn entity(spec: &EntitySpec, ns: Option<&str>) -> Result<pb::EntityRule, ConvertError> {
    if spec.service_accounts.is_some() {
        return Err(ConvertError::Unsupported("rule serviceAccounts"));
    }
    if spec.services.is_some() {
        return Err(ConvertError::Unsupported("rule services"));
    }
    let selector = parse(spec.selector.as_deref())?;
    let not_selector = parse(spec.not_selector.as_deref())?;
    let ns_selector = parse(spec.namespace_selector.as_deref())?;
    let (selector, namespace_selector) = match (ns_selector, ns) {
        (Some(nss), _) => (
            selector,
            Some(nss.into_profile_scope(NAMESPACE_LABEL_PREFIX)),
        ),
        (None, Some(ns)) if selector.is_some() || not_selector.is_some() => {
            let scope = Selector::eq(NAMESPACE_LABEL, ns)?;
            (Selector::and_all([scope].into_iter().chain(selector)), None)
        }
        (None, _) => (selector, None),
    };
    let text = |s: Option<Selector>| s.map(|s| s.to_string()).unwrap_or_default();
    Ok(pb::EntityRule {
        selector: text(selector),
        namespace_selector: text(namespace_selector),
        nets: net::cidrs(&spec.nets)?,
        not_nets: net::cidrs(&spec.not_nets)?,
        ports: ports(&spec.ports)?,
        not_selector: text(not_selector),
        not_ports: ports(&spec.not_ports)?,
    })
}

fn action(text: &str) -> Result<pb::Action, ConvertError> {
    match text.to_ascii_lowercase().as_str() {
        "allow" => Ok(pb::Action::Allow),
        "deny" => Ok(pb::Action::Deny),
        "log" => Ok(pb::Action::Log),
        "pass" => Ok(pb::Action::Pass),
        "" => Err(ConvertError::Missing("rule action")),
        _ => Err(ConvertError::BadValue {
            field: "rule action",
            value: text.to_string(),
        }),
    }
}

fn icmp_field(value: Option<i64>, field: &'static str) -> Result<Option<i32>, ConvertError> {
    value
        .map(|v| {
            u8::try_from(v)
                .map(i32::from)
                .map_err(|_| ConvertError::BadValue {
                    field,
                    value: v.to_string(),
                })
        })
        .transpose()
}

fn rule(spec: &RuleSpec, ns: Option<&str>) -> Result<pb::Rule, ConvertError> {
    for (present, what) in [
        (spec.ip_version.is_some(), "rule ipVersion"),
        (spec.not_protocol.is_some(), "rule notProtocol"),
        (spec.not_icmp.is_some(), "rule notICMP"),
        (spec.http.is_some(), "rule http"),
    ] {
        if present {
            return Err(ConvertError::Unsupported(what));
        }
    }
    let protocol = spec.protocol.as_ref().map(protocol).transpose()?;
    let source = entity(&spec.source, ns)?;
    let destination = entity(&spec.destination, ns)?;
    let has_ports = [&source, &destination]
        .iter()
        .any(|e| !e.ports.is_empty() || !e.not_ports.is_empty());
    let port_protocol = matches!(
        protocol,
        Some(pb::Protocol::Tcp | pb::Protocol::Udp | pb::Protocol::Sctp)
    );
    if has_ports && !port_protocol {
        return Err(ConvertError::BadValue {
            field: "rule ports",
            value: "ports need protocol TCP, UDP or SCTP".into(),
        });
    }
    let mut out = pb::Rule {
        action: action(&spec.action)? as i32,
        protocol: protocol.unwrap_or(pb::Protocol::Unspecified) as i32,
        source: Some(source),
        destination: Some(destination),
        ..Default::default()
    };
    if let Some(icmp) = &spec.icmp {
        if !matches!(protocol, Some(pb::Protocol::Icmp | pb::Protocol::Icmpv6)) {
            return Err(ConvertError::BadValue {
                field: "rule icmp",
                value: "icmp needs protocol ICMP or ICMPv6".into(),
            });
        }
        let icmp_type = icmp_field(icmp.type_, "icmp type")?;
        let icmp_code = icmp_field(icmp.code, "icmp code")?;
        if icmp_code.is_some() && icmp_type.is_none() {
            return Err(ConvertError::Missing("icmp type"));
        }
        if let Some(t) = icmp_type {
            out.has_icmp = true;
            out.icmp_type = t;
            // -1: any code of the type.
            out.icmp_code = icmp_code.unwrap_or(-1);
        }
    }
    Ok(out)
}

/// Calico's type defaulting: listed types win; otherwise Ingress, plus Egress when
/// egress rules exist, and Egress alone when only egress rules exist.
fn types(spec: &PolicySpec) -> Result<Vec<i32>, ConvertError> {
    use pb::PolicyType::{Egress, Ingress};
    let defaults: &[pb::PolicyType] = match (spec.ingress.is_empty(), spec.egress.is_empty()) {
        (_, true) => &[Ingress],
        (true, false) => &[Egress],
        (false, false) => &[Ingress, Egress],
    };
    policy_types(&spec.types, "spec.types", true, defaults)
}

fn policy(spec: &PolicySpec, ns: Option<&str>) -> Result<pb::Policy, ConvertError> {
    let mut parts = Vec::new();
    if let Some(ns) = ns {
        parts.push(Selector::eq(NAMESPACE_LABEL, ns)?);
    }
    parts.extend(parse(spec.selector.as_deref())?);
    if ns.is_none()
        && let Some(nss) = parse(spec.namespace_selector.as_deref())?
    {
        parts.push(nss.into_profile_scope(NAMESPACE_LABEL_PREFIX));
    } else if ns.is_some() && spec.namespace_selector.is_some() {
        return Err(ConvertError::Unsupported(
            "namespaceSelector on a namespaced policy",
        ));
    }
    if let Some(sas) = parse(spec.service_account_selector.as_deref())? {
        parts.push(sas.into_profile_scope(SERVICE_ACCOUNT_LABEL_PREFIX));
    }
    let selector = Selector::and_all(parts).unwrap_or(Selector::All);
    let rules = |list: &[RuleSpec]| {
        list.iter()
            .map(|r| rule(r, ns))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(pb::Policy {
        namespace: ns.unwrap_or_default().to_string(),
        order: spec.order.unwrap_or_default(),
        has_order: spec.order.is_some(),
        selector: selector.to_string(),
        inbound_rules: rules(&spec.ingress)?,
        outbound_rules: rules(&spec.egress)?,
        types: types(spec)?,
        tier: spec
            .tier
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "default".into()),
        apply_on_forward: spec.apply_on_forward,
        pre_dnat: spec.pre_dnat,
        do_not_track: spec.do_not_track,
    })
}

/// The typed spec of a custom resource; one that does not match its schema is rejected.
pub(super) fn spec_of<K: CalicoKind>(object: &CalicoObject<K>) -> Result<K::Spec, ConvertError> {
    object
        .parse_spec()
        .map_err(|e| ConvertError::Spec(e.to_string()))
}

impl ToModel for CalicoObject<NetworkPolicy> {
    const RESOURCE: Resource = Resource::NetworkPolicies;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::NetworkPolicy, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let ns = namespace_of(&self.metadata)?;
        let spec = spec_of(self)?;
        Ok(Some(Value::Policy(policy(&spec, Some(ns))?)))
    }
}

impl ToModel for CalicoObject<GlobalNetworkPolicy> {
    const RESOURCE: Resource = Resource::GlobalNetworkPolicies;

    fn model_key(&self) -> Result<Key, ConvertError> {
        key_of(Kind::GlobalNetworkPolicy, &self.metadata)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        let spec = spec_of(self)?;
        Ok(Some(Value::Policy(policy(&spec, None)?)))
    }
}
