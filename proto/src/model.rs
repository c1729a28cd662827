//! The typed model: keys, values and updates, converted from the wire exactly once.
//!
//! Invariants enforced by [`Key::new`] and the `TryFrom` conversions:
//! - a key's kind is known; namespaced kinds carry a namespace, cluster kinds none;
//! - a value's variant matches its key's kind (a Policy under a policy key, ...).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use prost::Message;

use crate::pb;

/// A value of the model: one variant per kind of object.
pub use pb::value::Kind as Value;

/// A position in one server's ordered history: the number of delta batches applied.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision after this one.
    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A version vector: per Kubernetes API resource (e.g. `pods`), a resourceVersion such
/// that every change of that resource up to it is reflected in the state it describes.
/// An absent resource is version 0. Replicas watching the same API agree on it, so it is
/// a position every replica understands (unlike an epoch's revision).
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct VersionVector(BTreeMap<String, u64>);

impl VersionVector {
    /// The empty vector (every resource at 0).
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The version of `resource` (0 when absent).
    pub fn get(&self, resource: &str) -> u64 {
        self.0.get(resource).copied().unwrap_or(0)
    }

    /// Raises `resource` to `version`; whether it rose (versions never go down).
    pub fn advance(&mut self, resource: &str, version: u64) -> bool {
        match self.0.get_mut(resource) {
            Some(held) if *held >= version => false,
            Some(held) => {
                *held = version;
                true
            }
            None if version == 0 => false,
            None => {
                self.0.insert(resource.to_string(), version);
                true
            }
        }
    }

    /// Sets `resource` to `version`, downwards too (a restored datastore starts its
    /// resourceVersions over lower); whether it changed.
    pub fn set(&mut self, resource: &str, version: u64) -> bool {
        let old = if version == 0 {
            self.0.remove(resource)
        } else {
            self.0.insert(resource.to_string(), version)
        };
        old.unwrap_or(0) != version
    }

    /// Applies a delta batch's entries: each replaces the held version. They are the
    /// entries that changed, normally upwards; lower after a datastore restore, which a
    /// client must follow (its old, higher numbers mean nothing in the new history).
    pub fn merge(&mut self, entries: &[pb::ResourceVersion]) {
        for e in entries {
            self.set(&e.resource, e.version);
        }
    }

    /// The vector of the wire entries (duplicates: the highest wins).
    pub fn from_pb(entries: &[pb::ResourceVersion]) -> VersionVector {
        let mut v = VersionVector::new();
        for e in entries {
            v.advance(&e.resource, e.version);
        }
        v
    }

    /// The wire form, in resource order.
    pub fn to_pb(&self) -> Vec<pb::ResourceVersion> {
        self.0
            .iter()
            .map(|(resource, version)| pb::ResourceVersion {
                resource: resource.clone(),
                version: *version,
            })
            .collect()
    }

    /// Every (resource, version) with a non-zero version, in resource order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(r, v)| (r.as_str(), *v))
    }

    /// Whether every resource is at 0.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes every entry, returning them (the advances since the last drain).
    pub fn take(&mut self) -> VersionVector {
        std::mem::take(self)
    }

    /// The first resource at which `self` is above `other`, if any.
    pub fn first_above(&self, other: &VersionVector) -> Option<&str> {
        self.iter().find(|(r, v)| *v > other.get(r)).map(|(r, _)| r)
    }
}

/// What one upstream batch says about one API resource it touched (the snapshot cache's `versions` module says how it is used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceMark {
    /// The API resource, as in `Resource::as_str` (e.g. `pods`).
    pub resource: String,
    /// The resource's version after the batch: the highest resourceVersion of its
    /// events, or of a completed list. `None`: not known (a list in progress, or a
    /// resourceVersion that did not parse as an integer).
    pub version: Option<u64>,
    /// The batch's changes of this resource came from a (re)list, or have unknown
    /// versions: a resuming client always receives them.
    pub listed: bool,
}

impl ResourceMark {
    /// A watch batch whose events reached `version`.
    pub fn watched(resource: impl Into<String>, version: u64) -> ResourceMark {
        ResourceMark {
            resource: resource.into(),
            version: Some(version),
            listed: false,
        }
    }

    /// List changes; `settled`: the list completed in this batch at that version.
    pub fn listed(resource: impl Into<String>, settled: Option<u64>) -> ResourceMark {
        ResourceMark {
            resource: resource.into(),
            version: settled,
            listed: true,
        }
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (r, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}:{v}")?;
        }
        f.write_str("}")
    }
}

/// A conversion from the wire failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// A required field was absent. Not retryable: the sender is broken.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// An enum field held a value this build does not know (a newer peer, or garbage).
    #[error("unknown {field} value {value}")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// The key's namespace does not fit its kind.
    #[error("{kind:?} key {name:?}: {problem}")]
    BadKey {
        /// The key's kind.
        kind: Kind,
        /// The key's name.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The value's variant does not belong under the key's kind.
    #[error("value of type {value} under a {kind:?} key")]
    KindMismatch {
        /// The key's kind.
        kind: Kind,
        /// The value's variant.
        value: &'static str,
    },
    /// The bytes were not a valid message.
    #[error("decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// The kind of a model object.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Kind {
    /// A pod on some node.
    WorkloadEndpoint,
    /// Labels from a namespace (`kns.<ns>`) or service account (`ksa.<ns>.<sa>`).
    Profile,
    /// A networking.k8s.io/v1 NetworkPolicy.
    K8sNetworkPolicy,
    /// A Calico (crd.projectcalico.org/v1) NetworkPolicy.
    NetworkPolicy,
    /// A Calico GlobalNetworkPolicy.
    GlobalNetworkPolicy,
    /// A Kubernetes node.
    Node,
    /// A Calico IPPool.
    IpPool,
    /// A Calico NetworkSet (namespaced).
    NetworkSet,
    /// A Calico GlobalNetworkSet.
    GlobalNetworkSet,
    /// A Calico HostEndpoint.
    HostEndpoint,
    /// A Calico FelixConfiguration.
    FelixConfiguration,
    /// Calico's ClusterInformation.
    ClusterInformation,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 12] = [
        Kind::WorkloadEndpoint,
        Kind::Profile,
        Kind::K8sNetworkPolicy,
        Kind::NetworkPolicy,
        Kind::GlobalNetworkPolicy,
        Kind::Node,
        Kind::IpPool,
        Kind::NetworkSet,
        Kind::GlobalNetworkSet,
        Kind::HostEndpoint,
        Kind::FelixConfiguration,
        Kind::ClusterInformation,
    ];

    /// Whether keys of this kind carry a namespace.
    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            Kind::WorkloadEndpoint
                | Kind::K8sNetworkPolicy
                | Kind::NetworkPolicy
                | Kind::NetworkSet
        )
    }

    /// A short stable name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::WorkloadEndpoint => "workload_endpoint",
            Kind::Profile => "profile",
            Kind::K8sNetworkPolicy => "k8s_network_policy",
            Kind::NetworkPolicy => "network_policy",
            Kind::GlobalNetworkPolicy => "global_network_policy",
            Kind::Node => "node",
            Kind::IpPool => "ip_pool",
            Kind::NetworkSet => "network_set",
            Kind::GlobalNetworkSet => "global_network_set",
            Kind::HostEndpoint => "host_endpoint",
            Kind::FelixConfiguration => "felix_configuration",
            Kind::ClusterInformation => "cluster_information",
        }
    }

    /// Whether `value` is the variant stored under keys of this kind.
    pub fn accepts(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (Kind::WorkloadEndpoint, Value::WorkloadEndpoint(_))
                | (Kind::Profile, Value::Profile(_))
                | (
                    Kind::K8sNetworkPolicy | Kind::NetworkPolicy | Kind::GlobalNetworkPolicy,
                    Value::Policy(_)
                )
                | (Kind::Node, Value::Node(_))
                | (Kind::IpPool, Value::IpPool(_))
                | (
                    Kind::NetworkSet | Kind::GlobalNetworkSet,
                    Value::NetworkSet(_)
                )
                | (Kind::HostEndpoint, Value::HostEndpoint(_))
                | (Kind::FelixConfiguration, Value::FelixConfiguration(_))
                | (Kind::ClusterInformation, Value::ClusterInformation(_))
        )
    }
}

impl From<Kind> for pb::Kind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::WorkloadEndpoint => pb::Kind::WorkloadEndpoint,
            Kind::Profile => pb::Kind::Profile,
            Kind::K8sNetworkPolicy => pb::Kind::K8sNetworkPolicy,
            Kind::NetworkPolicy => pb::Kind::NetworkPolicy,
            Kind::GlobalNetworkPolicy => pb::Kind::GlobalNetworkPolicy,
            Kind::Node => pb::Kind::Node,
            Kind::IpPool => pb::Kind::IpPool,
            Kind::NetworkSet => pb::Kind::NetworkSet,
            Kind::GlobalNetworkSet => pb::Kind::GlobalNetworkSet,
            Kind::HostEndpoint => pb::Kind::HostEndpoint,
            Kind::FelixConfiguration => pb::Kind::FelixConfiguration,
            Kind::ClusterInformation => pb::Kind::ClusterInformation,
        }
    }
}

impl TryFrom<i32> for Kind {
    type Error = ModelError;

    fn try_from(raw: i32) -> Result<Self, ModelError> {
        let unknown = ModelError::UnknownEnum {
            field: "Key.kind",
            value: raw,
        };
        let wire = pb::Kind::try_from(raw).map_err(|_| unknown.clone())?;
        Kind::ALL
            .into_iter()
            .find(|k| pb::Kind::from(*k) == wire)
            .ok_or(unknown)
    }
}

/// The name of one model object. Construct with [`Key::new`], which validates it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Key {
    kind: Kind,
    namespace: String,
    name: String,
}

impl Key {
    /// A validated key: a non-empty name, and a namespace exactly when the kind has one.
    pub fn new(
        kind: Kind,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Key, ModelError> {
        let (namespace, name) = (namespace.into(), name.into());
        let problem = if name.is_empty() {
            Some("empty name")
        } else if kind.is_namespaced() && namespace.is_empty() {
            Some("namespaced kind without a namespace")
        } else if !kind.is_namespaced() && !namespace.is_empty() {
            Some("cluster-scoped kind with a namespace")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(ModelError::BadKey {
                kind,
                name,
                problem,
            }),
            None => Ok(Key {
                kind,
                namespace,
                name,
            }),
        }
    }

    /// A cluster-scoped key (panics never: returns an error for namespaced kinds).
    pub fn cluster(kind: Kind, name: impl Into<String>) -> Result<Key, ModelError> {
        Key::new(kind, "", name)
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The namespace; empty for cluster-scoped kinds.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::Key {
        pb::Key {
            kind: pb::Kind::from(self.kind) as i32,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

impl TryFrom<pb::Key> for Key {
    type Error = ModelError;

    fn try_from(wire: pb::Key) -> Result<Self, ModelError> {
        Key::new(Kind::try_from(wire.kind)?, wire.namespace, wire.name)
    }
}

/// The variant name of a value, for errors and logs.
pub fn value_type(value: &Value) -> &'static str {
    match value {
        Value::WorkloadEndpoint(_) => "WorkloadEndpoint",
        Value::Profile(_) => "Profile",
        Value::Policy(_) => "Policy",
        Value::Node(_) => "Node",
        Value::IpPool(_) => "IPPool",
        Value::NetworkSet(_) => "NetworkSet",
        Value::HostEndpoint(_) => "HostEndpoint",
        Value::FelixConfiguration(_) => "FelixConfiguration",
        Value::ClusterInformation(_) => "ClusterInformation",
    }
}

/// One change to the model: a new value for a key, or its deletion (`value: None`).
#[derive(Clone, PartialEq, Debug)]
pub struct Update {
    /// What changes.
    pub key: Key,
    /// The new value; `None` deletes.
    pub value: Option<Value>,
}

impl Update {
    /// A validated update: the value (if any) must belong under the key's kind.
    pub fn new(key: Key, value: Option<Value>) -> Result<Update, ModelError> {
        if let Some(v) = &value
            && !key.kind.accepts(v)
        {
            return Err(ModelError::KindMismatch {
                kind: key.kind,
                value: value_type(v),
            });
        }
        Ok(Update { key, value })
    }

    /// A deletion of `key`.
    pub fn delete(key: Key) -> Update {
        Update { key, value: None }
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::KeyValue {
        pb::KeyValue {
            key: Some(self.key.to_pb()),
            value: self
                .value
                .clone()
                .map(|kind| pb::Value { kind: Some(kind) }),
        }
    }

    /// The encoded `KeyValue`: the unit the digest hashes and frames carry.
    pub fn encode(&self) -> Bytes {
        Bytes::from(self.to_pb().encode_to_vec())
    }

    /// Decodes and validates one encoded `KeyValue`.
    pub fn decode(encoded: &[u8]) -> Result<Update, ModelError> {
        Update::try_from(pb::KeyValue::decode(encoded)?)
    }
}

impl TryFrom<pb::KeyValue> for Update {
    type Error = ModelError;

    fn try_from(wire: pb::KeyValue) -> Result<Self, ModelError> {
        let key = Key::try_from(wire.key.ok_or(ModelError::Missing("KeyValue.key"))?)?;
        let value = match wire.value {
            None => None,
            Some(v) => Some(v.kind.ok_or(ModelError::Missing("Value.kind"))?),
        };
        Update::new(key, value)
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
