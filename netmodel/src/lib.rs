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

/// Where a resource lives in the Kubernetes API: the one table the watch's RBAC
/// (k8s/base/typha-rbac.yaml), kube-sim's serving and the kind checklist test
/// (loadtest/tests/kind_checklist.rs) are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiResource {
    /// The API group ("" for core).
    pub group: &'static str,
    /// The version within the group.
    pub version: &'static str,
    /// The plural resource name in URLs and RBAC rules.
    pub plural: &'static str,
}

impl ApiResource {
    fn of<T: k8s_openapi::Resource>() -> ApiResource {
        ApiResource {
            group: T::GROUP,
            version: T::VERSION,
            plural: T::URL_PATH_SEGMENT,
        }
    }

    fn calico<K: crd::CalicoKind>() -> ApiResource {
        ApiResource {
            group: crd::GROUP,
            version: crd::VERSION,
            plural: K::PLURAL,
        }
    }
}

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

    /// Where the resource lives in the API (from the same types the watch uses).
    pub fn api(self) -> ApiResource {
        use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
        use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
        match self {
            Resource::Pods => ApiResource::of::<Pod>(),
            Resource::Namespaces => ApiResource::of::<Namespace>(),
            Resource::ServiceAccounts => ApiResource::of::<ServiceAccount>(),
            Resource::Nodes => ApiResource::of::<Node>(),
            Resource::KubernetesNetworkPolicies => ApiResource::of::<K8sNetworkPolicy>(),
            Resource::NetworkPolicies => ApiResource::calico::<crd::NetworkPolicy>(),
            Resource::GlobalNetworkPolicies => ApiResource::calico::<crd::GlobalNetworkPolicy>(),
            Resource::GlobalNetworkSets => ApiResource::calico::<crd::GlobalNetworkSet>(),
            Resource::NetworkSets => ApiResource::calico::<crd::NetworkSet>(),
            Resource::HostEndpoints => ApiResource::calico::<crd::HostEndpoint>(),
            Resource::IpPools => ApiResource::calico::<crd::IPPool>(),
            Resource::FelixConfigurations => ApiResource::calico::<crd::FelixConfiguration>(),
            Resource::ClusterInformations => ApiResource::calico::<crd::ClusterInformation>(),
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
