//! Conversion of Kubernetes objects and Calico custom resources into model updates.
//!
//! Pure functions, no I/O: each watched type implements [`ToModel`] (its key, and its value
//! or `None` when the object yields no model object, e.g. a host-network pod). [`convert`]
//! combines the two into one [`Update`]; an invalid object is a [`Rejection`] carrying the
//! key (when the object has a name) so the caller can delete a previously valid version.
//!
//! Invariants: a key depends only on an object's kind, namespace and name, so every
//! version of an object maps to the same key; equal objects convert to equal values
//! (maps are ordered, selectors canonical), so unchanged objects are no-op updates.

mod calico;
mod net;
mod node;
mod pod;
mod policy;
mod profile;
mod resources;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use typha_proto::{Key, ModelError, Update, Value, pb};

use super::Resource;
use super::selector::SelectorError;

pub use pod::{interface_name, prefixed_interface_name};

/// Why an object cannot be converted. None of these is retryable: the object must change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    /// A required field is absent or empty.
    #[error("missing required field {0}")]
    Missing(&'static str),
    /// A CIDR or IP address does not parse.
    #[error("invalid CIDR or IP address {0:?}")]
    BadCidr(String),
    /// A selector does not parse or cannot be written in Calico syntax.
    #[error(transparent)]
    BadSelector(#[from] SelectorError),
    /// A port number outside 1..=65535, or a range whose end precedes its start.
    #[error("port {0} out of range")]
    PortOutOfRange(String),
    /// A port that is neither a number, a range nor a valid port name.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// A protocol the model has no value for.
    #[error("unsupported protocol {0:?}")]
    BadProtocol(String),
    /// A field holds a value outside its allowed set.
    #[error("invalid {field}: {value:?}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// The object uses a feature the model cannot express (rejected rather than widened).
    #[error("{0} cannot be expressed in the model")]
    Unsupported(&'static str),
    /// A custom resource's spec does not match its schema.
    #[error("spec does not parse: {0}")]
    Spec(String),
    /// The resulting key or value breaks a model invariant.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl ConvertError {
    /// A short, stable name of the error's kind: the `reason` label of
    /// `typha_upstream_rejected_total`, so an operator sees e.g. how many objects were
    /// rejected for an unparsable selector.
    pub fn reason(&self) -> &'static str {
        match self {
            ConvertError::Missing(_) => "missing_field",
            ConvertError::BadCidr(_) => "bad_cidr",
            ConvertError::BadSelector(_) => "bad_selector",
            ConvertError::PortOutOfRange(_) => "port_out_of_range",
            ConvertError::BadPort(_) => "bad_port",
            ConvertError::BadProtocol(_) => "bad_protocol",
            ConvertError::BadValue { .. } => "bad_value",
            ConvertError::Unsupported(_) => "unsupported",
            ConvertError::Spec(_) => "bad_spec",
            ConvertError::Model(_) => "model",
        }
    }
}

/// The policy types named in `listed` (`Ingress`, `Egress`; in any case with
/// `ignore_case`), or `defaults` when none is listed: sorted, deduplicated, as wire values.
/// A name that is neither is a bad value of `field`.
fn policy_types(
    listed: &[String],
    field: &'static str,
    ignore_case: bool,
    defaults: &[pb::PolicyType],
) -> Result<Vec<i32>, ConvertError> {
    const NAMES: [(&str, pb::PolicyType); 2] = [
        ("Ingress", pb::PolicyType::Ingress),
        ("Egress", pb::PolicyType::Egress),
    ];
    let mut out = Vec::new();
    for name in listed {
        let known = NAMES
            .iter()
            .find(|(known, _)| *known == name || (ignore_case && known.eq_ignore_ascii_case(name)));
        let Some((_, t)) = known else {
            return Err(ConvertError::BadValue {
                field,
                value: name.clone(),
            });
        };
        out.push(*t);
    }
    if out.is_empty() {
        out.extend_from_slice(defaults);
    }
    out.sort();
    out.dedup();
    Ok(out.into_iter().map(|t| t as i32).collect())
}

/// A watched type that converts into the model.
pub trait ToModel {
    /// The resource this type is watched as.
    const RESOURCE: Resource;
    /// The model key of this object: a function of its namespace and name only.
    fn model_key(&self) -> Result<Key, ConvertError>;
    /// The model value; `None` when the object yields no model object (its key is deleted).
    fn model_value(&self) -> Result<Option<Value>, ConvertError>;
    /// The model value under the cluster's `options` (only pods depend on them: their
    /// interface names); the default ignores them.
    fn model_value_with(&self, options: &ConvertOptions) -> Result<Option<Value>, ConvertError> {
        let _ = options;
        self.model_value()
    }
}

/// An object that failed conversion.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} {object}: {error}", .resource.as_str())]
pub struct Rejection {
    /// Where the object came from.
    pub resource: Resource,
    /// `namespace/name` of the object, for logs.
    pub object: String,
    /// Its key when it has one: delete it so an earlier valid version does not linger.
    pub key: Option<Key>,
    /// Why.
    #[source]
    pub error: ConvertError,
}

impl Rejection {
    /// The update that withdraws the object from the model, if it has a key.
    pub fn to_delete(&self) -> Option<Update> {
        self.key.clone().map(Update::delete)
    }
}

/// `namespace/name` (or `name`) of an object, for logs.
pub(crate) fn object_name<T: kube::Resource>(obj: &T) -> String {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or("<unnamed>");
    match meta.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// The cluster's choices the conversion follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertOptions {
    /// The prefix of WorkloadEndpoints' host-side interface names.
    pub interface_prefix: String,
}

/// Calico's interface prefix.
pub const DEFAULT_INTERFACE_PREFIX: &str = "cali";

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            interface_prefix: DEFAULT_INTERFACE_PREFIX.to_string(),
        }
    }
}

/// Converts an added or modified object into an update with the default options.
pub fn convert<T: ToModel + kube::Resource>(obj: &T) -> Result<Update, Box<Rejection>> {
    convert_with(obj, &ConvertOptions::default())
}

/// Converts an added or modified object into an update (a value, or a delete when the
/// object yields no model object); endpoints' interfaces get `options`' prefix.
pub fn convert_with<T: ToModel + kube::Resource>(
    obj: &T,
    options: &ConvertOptions,
) -> Result<Update, Box<Rejection>> {
    let reject = |key: Option<Key>, error| {
        Box::new(Rejection {
            resource: T::RESOURCE,
            object: object_name(obj),
            key,
            error,
        })
    };
    let key = obj.model_key().map_err(|e| reject(None, e))?;
    let value = obj
        .model_value_with(options)
        .map_err(|e| reject(Some(key.clone()), e))?;
    Update::new(key.clone(), value).map_err(|e| reject(Some(key), e.into()))
}

/// The update for a deleted object: a delete of its key.
pub fn convert_delete<T: ToModel + kube::Resource>(obj: &T) -> Result<Update, Box<Rejection>> {
    obj.model_key().map(Update::delete).map_err(|error| {
        Box::new(Rejection {
            resource: T::RESOURCE,
            object: object_name(obj),
            key: None,
            error,
        })
    })
}

fn name_of(meta: &ObjectMeta) -> Result<&str, ConvertError> {
    meta.name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or(ConvertError::Missing("metadata.name"))
}

fn namespace_of(meta: &ObjectMeta) -> Result<&str, ConvertError> {
    meta.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or(ConvertError::Missing("metadata.namespace"))
}

/// The key of the object `meta` describes, of `kind`: its name, and its namespace when
/// `kind` is namespaced.
fn key_of(kind: typha_proto::Kind, meta: &ObjectMeta) -> Result<Key, ConvertError> {
    let name = name_of(meta)?;
    Ok(if kind.is_namespaced() {
        Key::new(kind, namespace_of(meta)?, name)?
    } else {
        Key::cluster(kind, name)?
    })
}

fn labels_of(meta: &ObjectMeta) -> std::collections::BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// A protocol from its Kubernetes name (absent = TCP).
fn k8s_protocol(protocol: Option<&str>) -> Result<pb::Protocol, ConvertError> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(pb::Protocol::Tcp),
        "UDP" => Ok(pb::Protocol::Udp),
        "SCTP" => Ok(pb::Protocol::Sctp),
        other => Err(ConvertError::BadProtocol(other.to_string())),
    }
}

/// A port number in 1..=65535.
fn port_number(port: i64) -> Result<u32, ConvertError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .map(u32::from)
        .ok_or_else(|| ConvertError::PortOutOfRange(port.to_string()))
}

/// Whether `name` is an RFC 1123 DNS label (what Kubernetes requires of a namespace
/// name): 1 to 63 lowercase letters, digits and inner dashes.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` is a valid port name (an IANA service name: a DNS label of at most 15
/// characters with at least one letter).
fn is_port_name(name: &str) -> bool {
    name.len() <= 15 && is_dns_label(name) && name.chars().any(|c| c.is_ascii_lowercase())
}

fn port_range(first: u32, last: u32) -> pb::PortRange {
    pb::PortRange {
        first,
        last,
        name: String::new(),
    }
}

fn named_port(name: &str) -> Result<pb::PortRange, ConvertError> {
    if !is_port_name(name) {
        return Err(ConvertError::BadPort(name.to_string()));
    }
    Ok(pb::PortRange {
        first: 0,
        last: 0,
        name: name.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
