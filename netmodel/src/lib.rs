//! The cluster's network model, shared by typha and felix-client (the role libcalico-go
//! plays in Calico): neither binary depends on the other, both depend on this.
//!
//! - kinds, keys and values: [`Kind`], [`Key`], [`Value`], [`Update`] are defined beside
//!   the wire schema in `typha_proto` (their `TryFrom` conversions need both) and are
//!   re-exported here, so a consumer of the model needs only this crate;
//! - [`selector`]: Calico selector parsing and printing, and Kubernetes label selector
//!   translation; every selector in the model is in canonical Calico syntax;
//! - [`convert`]: pure conversion of Kubernetes objects and Calico custom resources into
//!   model [`Update`]s, following libcalico-go's Kubernetes-datastore rules; an invalid
//!   object is a typed [`ConvertError`];
//! - [`crd`]: the Calico custom resources as watchable kube types;
//! - [`state`]: per-resource relist bookkeeping (which keys exist; deletes after a relist);
//! - [`watch`]: [`run`], the upstream: one `kube::runtime::watcher` per [`Resource`],
//!   batching, metrics; typha's hub and felix-client's no-typha mode both consume it;
//! - [`bootstrap`]: the default IPPool and ClusterInformation on an empty datastore;
//! - [`client`]: the Kubernetes client both binaries build from their flags.
//!
//! Adding a Kubernetes kind: see "Adding a kind" in docs/architecture.md.
//!
//! Selector conventions of the model (what the agent evaluates): an endpoint's labels are
//! its own labels merged with those of its profiles (`pcns.*` from the namespace,
//! `pcsa.*` from the service account). Every selector is evaluated over those merged
//! labels. Namespace scoping is folded in: a namespaced policy's selector, and a rule
//! selector without a namespace selector in a namespaced policy, carry
//! `projectcalico.org/namespace == '<ns>'`; an `EntityRule.namespace_selector` is written
//! over `pcns.`-prefixed keys (`all()` becomes `has(pcns.projectcalico.org/name)`).
//! An empty selector or namespace selector does not constrain.
//!
//! Nothing here knows about the typha server, TLS or the dataplane.

pub mod bootstrap;
pub mod client;
pub mod convert;
pub mod crd;
pub mod listwatch;
pub mod metrics;
pub mod outage;
pub mod prefix;
pub mod selector;
pub mod state;
pub mod watch;

pub use client::{KubeClientError, kube_client, without_retry};
pub use convert::{
    ConvertError, ConvertOptions, DEFAULT_INTERFACE_PREFIX, Rejection, ToModel, convert,
    convert_delete, convert_with, interface_name, prefixed_interface_name,
};
pub use prefix::{InterfacePrefixes, PrefixError};
pub use state::ResourceState;
pub use typha_proto::{Key, Kind, ResourceMark, Revision, Update, Value, VersionVector};
pub use watch::{UpstreamConfig, UpstreamError, UpstreamEvent, run};

/// One watched API resource. Exactly one watch per resource per process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Resource {
    /// core/v1 Pods.
    Pods,
    /// core/v1 Namespaces.
    Namespaces,
    /// core/v1 ServiceAccounts.
    ServiceAccounts,
    /// core/v1 Nodes.
    Nodes,
    /// networking.k8s.io/v1 NetworkPolicies.
    KubernetesNetworkPolicies,
    /// crd.projectcalico.org/v1 NetworkPolicies.
    NetworkPolicies,
    /// crd.projectcalico.org/v1 GlobalNetworkPolicies.
    GlobalNetworkPolicies,
    /// crd.projectcalico.org/v1 GlobalNetworkSets.
    GlobalNetworkSets,
    /// crd.projectcalico.org/v1 NetworkSets.
    NetworkSets,
    /// crd.projectcalico.org/v1 HostEndpoints.
    HostEndpoints,
    /// crd.projectcalico.org/v1 IPPools.
    IpPools,
    /// crd.projectcalico.org/v1 FelixConfigurations.
    FelixConfigurations,
    /// crd.projectcalico.org/v1 ClusterInformations.
    ClusterInformations,
}

impl Resource {
    /// Every watched resource.
    pub const ALL: [Resource; 13] = [
        Resource::Pods,
        Resource::Namespaces,
        Resource::ServiceAccounts,
        Resource::Nodes,
        Resource::KubernetesNetworkPolicies,
        Resource::NetworkPolicies,
        Resource::GlobalNetworkPolicies,
        Resource::GlobalNetworkSets,
        Resource::NetworkSets,
        Resource::HostEndpoints,
        Resource::IpPools,
        Resource::FelixConfigurations,
        Resource::ClusterInformations,
    ];

    /// A stable name for logs and the `resource` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Namespaces => "namespaces",
            Resource::ServiceAccounts => "serviceaccounts",
            Resource::Nodes => "nodes",
            Resource::KubernetesNetworkPolicies => "networkpolicies.networking.k8s.io",
            Resource::NetworkPolicies => "networkpolicies.crd.projectcalico.org",
            Resource::GlobalNetworkPolicies => "globalnetworkpolicies",
            Resource::GlobalNetworkSets => "globalnetworksets",
            Resource::NetworkSets => "networksets",
            Resource::HostEndpoints => "hostendpoints",
            Resource::IpPools => "ippools",
            Resource::FelixConfigurations => "felixconfigurations",
            Resource::ClusterInformations => "clusterinformations",
        }
    }

    /// The model kind this resource converts into.
    pub fn model_kind(self) -> Kind {
        match self {
            Resource::Pods => Kind::WorkloadEndpoint,
            Resource::Namespaces | Resource::ServiceAccounts => Kind::Profile,
            Resource::Nodes => Kind::Node,
            Resource::KubernetesNetworkPolicies => Kind::K8sNetworkPolicy,
            Resource::NetworkPolicies => Kind::NetworkPolicy,
            Resource::GlobalNetworkPolicies => Kind::GlobalNetworkPolicy,
            Resource::GlobalNetworkSets => Kind::GlobalNetworkSet,
            Resource::NetworkSets => Kind::NetworkSet,
            Resource::HostEndpoints => Kind::HostEndpoint,
            Resource::IpPools => Kind::IpPool,
            Resource::FelixConfigurations => Kind::FelixConfiguration,
            Resource::ClusterInformations => Kind::ClusterInformation,
        }
    }

    /// Whether this is a Calico custom resource (may not be installed).
    pub fn is_crd(self) -> bool {
        !matches!(
            self,
            Resource::Pods
                | Resource::Namespaces
                | Resource::ServiceAccounts
                | Resource::Nodes
                | Resource::KubernetesNetworkPolicies
        )
    }
}
