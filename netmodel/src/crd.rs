//! Calico's custom resources (crd.projectcalico.org/v1), as watchable kube resources.
//!
//! A [`CalicoObject`] keeps its `spec` as raw JSON and parses it into the typed spec only
//! at conversion time. Why: a list response is decoded as a whole, so a single object
//! with a malformed spec would otherwise fail every list of that kind forever; here it
//! becomes one rejected object (a typed conversion error) and the rest flows on.
//!
//! The spec structs hold the fields the model needs. Fields whose meaning the model cannot
//! express (negated protocol matches, HTTP matches, service-account and service matches)
//! are captured as raw JSON so conversion can reject them instead of silently widening a
//! rule; any other unknown field is ignored (newer Calico versions add fields).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::{Deserialize, Serialize};

use super::Resource as Watched;

/// The API group of Calico's custom resources.
pub const GROUP: &str = "crd.projectcalico.org";
/// The API version of Calico's custom resources.
pub const VERSION: &str = "v1";

/// Static description of one Calico custom resource kind.
pub trait CalicoKind: Send + Sync + 'static {
    /// The typed spec.
    type Spec: serde::de::DeserializeOwned;
    /// `NamespaceResourceScope` or `ClusterResourceScope`.
    type Scope;
    /// The Kubernetes kind, e.g. "GlobalNetworkPolicy".
    const KIND: &'static str;
    /// The URL plural, e.g. "globalnetworkpolicies".
    const PLURAL: &'static str;
    /// Which watched resource this is (metrics labels, logs).
    const RESOURCE: Watched;
}

/// One Calico custom resource: metadata plus a spec parsed on demand.
#[derive(Serialize, Deserialize)]
pub struct CalicoObject<K> {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The raw spec; `Null` when absent.
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

impl<K> CalicoObject<K> {
    /// An object from metadata and a raw spec (tests, fixtures).
    pub fn new(metadata: ObjectMeta, spec: serde_json::Value) -> Self {
        CalicoObject {
            metadata,
            spec,
            kind: PhantomData,
        }
    }
}

impl<K: CalicoKind> CalicoObject<K> {
    /// The typed spec; an absent spec reads as `{}` (every field optional).
    pub fn parse_spec(&self) -> Result<K::Spec, serde_json::Error> {
        match &self.spec {
            serde_json::Value::Null => serde_json::from_value(serde_json::json!({})),
            spec => K::Spec::deserialize(spec),
        }
    }
}

// Manual impls: derives would demand `K: Clone`/`K: Debug` of the marker type.
impl<K> Clone for CalicoObject<K> {
    fn clone(&self) -> Self {
        CalicoObject::new(self.metadata.clone(), self.spec.clone())
    }
}

impl<K: CalicoKind> std::fmt::Debug for CalicoObject<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(K::KIND)
            .field("metadata", &self.metadata)
            .field("spec", &self.spec)
            .finish()
    }
}

impl<K: CalicoKind> kube::Resource for CalicoObject<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Declares each Calico kind as a marker type implementing [`CalicoKind`]; one row per
/// kind: doc, name, spec, scope, plural, watched resource.
macro_rules! calico_kinds {
    ($($(#[$doc:meta])* $name:ident, $spec:ty, $scope:ty, $plural:literal, $resource:expr;)*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug)]
            pub struct $name;
            impl CalicoKind for $name {
                type Spec = $spec;
                type Scope = $scope;
                const KIND: &'static str = stringify!($name);
                const PLURAL: &'static str = $plural;
                const RESOURCE: Watched = $resource;
            }
        )*
    };
}

// A flat table: one row per kind is clearer than one macro call per kind.
calico_kinds! {
    /// Calico GlobalNetworkPolicy (cluster-scoped).
    GlobalNetworkPolicy, PolicySpec, ClusterResourceScope, "globalnetworkpolicies",
    Watched::GlobalNetworkPolicies;
    /// Calico NetworkPolicy (namespaced).
    NetworkPolicy, PolicySpec, NamespaceResourceScope, "networkpolicies",
    Watched::NetworkPolicies;
    /// Calico GlobalNetworkSet (cluster-scoped).
    GlobalNetworkSet, NetworkSetSpec, ClusterResourceScope, "globalnetworksets",
    Watched::GlobalNetworkSets;
    /// Calico NetworkSet (namespaced).
    NetworkSet, NetworkSetSpec, NamespaceResourceScope, "networksets",
    Watched::NetworkSets;
    /// Calico HostEndpoint (cluster-scoped).
    HostEndpoint, HostEndpointSpec, ClusterResourceScope, "hostendpoints",
    Watched::HostEndpoints;
    /// Calico IPPool (cluster-scoped).
    IPPool, IpPoolSpec, ClusterResourceScope, "ippools",
    Watched::IpPools;
    /// Calico FelixConfiguration (cluster-scoped).
    FelixConfiguration, FelixConfigurationSpec, ClusterResourceScope, "felixconfigurations",
    Watched::FelixConfigurations;
    /// Calico ClusterInformation (cluster-scoped).
    ClusterInformation, ClusterInformationSpec, ClusterResourceScope, "clusterinformations",
    Watched::ClusterInformations;
}

/// A port in Calico's syntax: a number, "first:last", or a named port.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum PortSpec {
    /// A single numeric port (range-checked at conversion).
    Number(i64),
    /// "80", "80:90" or a port name.
    Text(String),
}

/// A protocol in Calico's syntax: a name ("TCP") or an IP protocol number.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ProtocolSpec {
    /// An IP protocol number.
    Number(i64),
    /// A protocol name, case-insensitive.
    Name(String),
}

/// Spec of NetworkPolicy and GlobalNetworkPolicy.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicySpec {
    /// Lower orders apply first; absent = last.
    pub order: Option<f64>,
    /// The tier; absent = "default".
    pub tier: Option<String>,
    /// Endpoints the policy applies to; empty = all().
    pub selector: Option<String>,
    /// Further restricts by service-account labels.
    pub service_account_selector: Option<String>,
    /// GlobalNetworkPolicy only: restricts by namespace labels.
    pub namespace_selector: Option<String>,
    /// "Ingress"/"Egress"; empty = derived from the rules present.
    pub types: Vec<String>,
    /// Inbound rules in order.
    pub ingress: Vec<RuleSpec>,
    /// Outbound rules in order.
    pub egress: Vec<RuleSpec>,
    /// GlobalNetworkPolicy only.
    pub do_not_track: bool,
    /// GlobalNetworkPolicy only.
    #[serde(rename = "preDNAT")]
    pub pre_dnat: bool,
    /// GlobalNetworkPolicy only.
    pub apply_on_forward: bool,
}

/// ICMP type and code match.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct IcmpSpec {
    /// ICMP type.
    #[serde(rename = "type")]
    pub type_: Option<i64>,
    /// ICMP code (needs a type).
    pub code: Option<i64>,
}

/// One Calico rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleSpec {
    /// Allow, Deny, Log or Pass.
    pub action: String,
    /// Absent = any protocol.
    pub protocol: Option<ProtocolSpec>,
    /// ICMP match.
    pub icmp: Option<IcmpSpec>,
    /// Source match.
    pub source: EntitySpec,
    /// Destination match.
    pub destination: EntitySpec,
    /// Not expressible in the model: rejected when present.
    pub ip_version: Option<serde_json::Value>,
    /// Not expressible in the model: rejected when present.
    pub not_protocol: Option<serde_json::Value>,
    /// Not expressible in the model: rejected when present.
    #[serde(rename = "notICMP")]
    pub not_icmp: Option<serde_json::Value>,
    /// Not expressible in the model: rejected when present.
    pub http: Option<serde_json::Value>,
}

/// One side of a Calico rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EntitySpec {
    /// Endpoint label selector.
    pub selector: Option<String>,
    /// Negated endpoint label selector.
    pub not_selector: Option<String>,
    /// Namespace label selector.
    pub namespace_selector: Option<String>,
    /// CIDRs matched.
    pub nets: Vec<String>,
    /// CIDRs excluded.
    pub not_nets: Vec<String>,
    /// Ports matched.
    pub ports: Vec<PortSpec>,
    /// Ports excluded.
    pub not_ports: Vec<PortSpec>,
    /// Not expressible in the model: rejected when present.
    pub service_accounts: Option<serde_json::Value>,
    /// Not expressible in the model: rejected when present.
    pub services: Option<serde_json::Value>,
}

/// Spec of NetworkSet and GlobalNetworkSet.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkSetSpec {
    /// CIDRs (or bare IPs) in the set.
    pub nets: Vec<String>,
}

/// A named port on a host endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointPortSpec {
    /// Port name (required).
    pub name: String,
    /// Protocol; absent = TCP.
    pub protocol: Option<ProtocolSpec>,
    /// Port number (required).
    pub port: i64,
}

/// Spec of HostEndpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostEndpointSpec {
    /// The node the interface lives on (required).
    pub node: String,
    /// The interface; empty = all interfaces ("*" in Calico).
    pub interface_name: String,
    /// IPs expected on the interface.
    #[serde(rename = "expectedIPs")]
    pub expected_ips: Vec<String>,
    /// Profiles applied.
    pub profiles: Vec<String>,
    /// Named ports.
    pub ports: Vec<EndpointPortSpec>,
}

/// Spec of IPPool.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IpPoolSpec {
    /// The pool's CIDR (required).
    pub cidr: String,
    /// Masquerade traffic leaving the pool.
    pub nat_outgoing: bool,
    /// No new allocations.
    pub disabled: bool,
    /// Never / Always / CrossSubnet; absent = Never.
    pub ipip_mode: Option<String>,
    /// Never / Always / CrossSubnet; absent = Never.
    pub vxlan_mode: Option<String>,
    /// Allocation block prefix length; absent = 26 (IPv4) or 122 (IPv6).
    pub block_size: Option<i64>,
    /// Nodes the pool serves; absent = all().
    pub node_selector: Option<String>,
}

/// Spec of FelixConfiguration: every field kept, flattened into string settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct FelixConfigurationSpec {
    /// Spec fields by their JSON name.
    #[serde(flatten)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

/// Spec of ClusterInformation.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterInformationSpec {
    /// The cluster's unique id.
    #[serde(rename = "clusterGUID")]
    pub cluster_guid: Option<String>,
    /// Comma-separated cluster type tags.
    pub cluster_type: Option<String>,
    /// Calico version that initialised the datastore.
    pub calico_version: Option<String>,
    /// Whether agents may act on the datastore.
    pub datastore_ready: Option<bool>,
}
