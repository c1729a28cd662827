//! Kubernetes NetworkPolicy (networking.k8s.io/v1) as small plain structs: what the
//! tests write (through [`crate::kube`]) and what the [`crate::oracle`] evaluates. Kept
//! independent of the model and of felix-client's calc so the oracle cannot inherit
//! their mistakes. Builders keep test cases short.

use std::collections::BTreeMap;

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (policies may name it; the bench does not probe it).
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn as_k8s(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// A set-based selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Operator {
    /// The Kubernetes spelling.
    pub fn as_k8s(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }
}

/// One matchExpressions entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: Operator,
    /// The values (empty for Exists / DoesNotExist).
    pub values: Vec<String>,
}

/// A Kubernetes label selector; the empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// Exact label matches.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements (all must hold).
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Selects everything.
    pub fn all() -> LabelSelector {
        LabelSelector::default()
    }

    /// `{key: value}`.
    pub fn label(key: &str, value: &str) -> LabelSelector {
        LabelSelector::default().and_label(key, value)
    }

    /// Adds `key: value` to matchLabels.
    pub fn and_label(mut self, key: &str, value: &str) -> LabelSelector {
        self.match_labels.insert(key.into(), value.into());
        self
    }

    /// Adds a matchExpressions requirement.
    pub fn and_expr(mut self, key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        self.match_expressions.push(Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        });
        self
    }
}

/// An ipBlock peer: `cidr` minus every `except` CIDR (IPv4 in this bench).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    /// The CIDR, e.g. `10.244.0.0/16`.
    pub cidr: String,
    /// CIDRs inside `cidr` that do not match.
    pub except: Vec<String>,
}

/// One from/to peer. Kubernetes allows `ip_block` alone, or either or both selectors
/// (both = pods matching `pod_selector` in namespaces matching `namespace_selector`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Pods (in the policy's namespace unless `namespace_selector` is set).
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    pub ip_block: Option<IpBlock>,
}

impl Peer {
    /// Pods of the policy's namespace matching `selector`.
    pub fn pods(selector: LabelSelector) -> Peer {
        Peer {
            pod_selector: Some(selector),
            ..Peer::default()
        }
    }

    /// Every pod of the namespaces matching `selector`.
    pub fn namespaces(selector: LabelSelector) -> Peer {
        Peer {
            namespace_selector: Some(selector),
            ..Peer::default()
        }
    }

    /// Pods matching `pods` in namespaces matching `namespaces` (one peer: AND).
    pub fn pods_in(namespaces: LabelSelector, pods: LabelSelector) -> Peer {
        Peer {
            pod_selector: Some(pods),
            namespace_selector: Some(namespaces),
            ip_block: None,
        }
    }

    /// `cidr` minus `except`.
    pub fn ip_block(cidr: &str, except: &[&str]) -> Peer {
        Peer {
            ip_block: Some(IpBlock {
                cidr: cidr.into(),
                except: except.iter().map(|e| e.to_string()).collect(),
            }),
            ..Peer::default()
        }
    }
}

/// A port given by number or by the destination pod's container port name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortValue {
    /// A port number.
    Number(u16),
    /// A named container port of the destination pod.
    Name(String),
}

/// One `ports` entry of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPort {
    /// The protocol (Kubernetes defaults it to TCP).
    pub protocol: Option<Protocol>,
    /// The port; `None` means every port of the protocol.
    pub port: Option<PortValue>,
    /// With a numeric `port`: the last port of the range `port..=end_port`.
    pub end_port: Option<u16>,
}

impl PolicyPort {
    /// `protocol`/`port`.
    pub fn number(protocol: Protocol, port: u16) -> PolicyPort {
        PolicyPort {
            protocol: Some(protocol),
            port: Some(PortValue::Number(port)),
            end_port: None,
        }
    }

    /// `protocol`/`name` (a named container port).
    pub fn named(protocol: Protocol, name: &str) -> PolicyPort {
        PolicyPort {
            protocol: Some(protocol),
            port: Some(PortValue::Name(name.into())),
            end_port: None,
        }
    }

    /// `protocol`/`port..=end_port`.
    pub fn range(protocol: Protocol, port: u16, end_port: u16) -> PolicyPort {
        PolicyPort {
            protocol: Some(protocol),
            port: Some(PortValue::Number(port)),
            end_port: Some(end_port),
        }
    }

    /// Every port of `protocol`.
    pub fn any_port(protocol: Protocol) -> PolicyPort {
        PolicyPort {
            protocol: Some(protocol),
            port: None,
            end_port: None,
        }
    }
}

/// One ingress or egress rule. Empty `peers` means every peer; empty `ports` every port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress).
    pub peers: Vec<Peer>,
    /// `ports`.
    pub ports: Vec<PolicyPort>,
}

impl Rule {
    /// Allows everything.
    pub fn allow_all() -> Rule {
        Rule::default()
    }

    /// Allows these peers on every port.
    pub fn from_peers(peers: Vec<Peer>) -> Rule {
        Rule {
            peers,
            ports: Vec::new(),
        }
    }

    /// Adds ports.
    pub fn with_ports(mut self, ports: Vec<PolicyPort>) -> Rule {
        self.ports = ports;
        self
    }
}

/// A policy direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyType {
    /// Traffic to the selected pods.
    Ingress,
    /// Traffic from the selected pods.
    Egress,
}

/// A networking.k8s.io/v1 NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// Which pods of `namespace` it applies to.
    pub pod_selector: LabelSelector,
    /// Explicit policyTypes; `None` applies the Kubernetes default (see
    /// [`Policy::effective_types`]).
    pub policy_types: Option<Vec<PolicyType>>,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
}

impl Policy {
    /// A policy with no rules and default types (so: deny all ingress to the selected).
    pub fn new(namespace: &str, name: &str, pod_selector: LabelSelector) -> Policy {
        Policy {
            namespace: namespace.into(),
            name: name.into(),
            pod_selector,
            policy_types: None,
            ingress: Vec::new(),
            egress: Vec::new(),
        }
    }

    /// Sets explicit policyTypes.
    pub fn types(mut self, types: &[PolicyType]) -> Policy {
        self.policy_types = Some(types.to_vec());
        self
    }

    /// Adds an ingress rule.
    pub fn ingress(mut self, rule: Rule) -> Policy {
        self.ingress.push(rule);
        self
    }

    /// Adds an egress rule.
    pub fn egress(mut self, rule: Rule) -> Policy {
        self.egress.push(rule);
        self
    }

    /// The types in force: explicit ones, or Kubernetes' default (Ingress always, plus
    /// Egress when the policy has egress rules).
    pub fn effective_types(&self) -> Vec<PolicyType> {
        match &self.policy_types {
            Some(types) => types.clone(),
            None if self.egress.is_empty() => vec![PolicyType::Ingress],
            None => vec![PolicyType::Ingress, PolicyType::Egress],
        }
    }

    /// Whether the policy governs `direction`.
    pub fn applies_to(&self, direction: PolicyType) -> bool {
        self.effective_types().contains(&direction)
    }
}

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// The name (`serve-80-tcp`).
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The container port.
    pub port: u16,
}
