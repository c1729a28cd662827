//! A stored object: its serialized JSON plus the few fields selectors need, and helpers
//! for server-managed metadata (uid, timestamps, names, generation).
//!
//! Objects are kept serialized (`raw`) rather than as `serde_json::Value`: a 150,000-pod
//! cluster then costs about the JSON size, and LIST/WATCH responses are built by
//! concatenating bytes without re-encoding. Invariant: `raw` is always valid JSON produced
//! by this crate, and `rv`, `namespace`, `name`, `labels` and `node_name` agree with it.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::Rng;
use serde_json::{Map, Value};

use crate::resources::ResourceId;
use crate::selectors::json_field;

/// (namespace, name); the namespace is empty for cluster-scoped objects. Ordered like
/// etcd keys, which is the order LIST returns.
pub type ObjectKey = (String, String);

/// One object as held by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Its resource type.
    pub resource: ResourceId,
    /// Namespace, empty for cluster-scoped kinds.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.resourceVersion` as an integer.
    pub rv: u64,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName` (pods), the one non-metadata field selector kept pre-extracted.
    pub node_name: Option<String>,
    /// The complete object as JSON.
    pub raw: Bytes,
}

impl StoredObject {
    /// Serializes `value` (whose metadata must already be final) into a stored object.
    pub fn new(resource: ResourceId, value: &Value, rv: u64) -> Self {
        let meta = value.get("metadata");
        let text = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        StoredObject {
            resource,
            namespace: text("namespace"),
            name: text("name"),
            rv,
            labels,
            node_name: value
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .map(str::to_string),
            // Serializing a Value cannot fail (all keys are strings).
            raw: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        }
    }

    /// The key of this object.
    pub fn key(&self) -> ObjectKey {
        (self.namespace.clone(), self.name.clone())
    }

    /// The object parsed back into JSON.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }

    /// The value at a dotted path, with fast paths for the common field selectors.
    pub fn field(&self, path: &str) -> Option<String> {
        match path {
            "metadata.name" => Some(self.name.clone()),
            "metadata.namespace" => Some(self.namespace.clone()),
            "spec.nodeName" => self.node_name.clone(),
            other => json_field(&self.value(), other),
        }
    }
}

/// The current time as RFC 3339 with second precision, the format Kubernetes uses.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `t` as RFC 3339 with second precision, in UTC (`2006-01-02T15:04:05Z`).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A random version-4 UUID string.
pub fn new_uid() -> String {
    let b: u128 = rand::random::<u128>() & !(0xf000u128 << 64) & !(0xc000u128 << 48);
    let b = b | (0x4000u128 << 64) | (0x8000u128 << 48);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `prefix` plus five random characters, as the API server expands `generateName`.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// The object without `metadata` and `status`: a change here bumps `metadata.generation`.
pub fn spec_part(v: &Value) -> Map<String, Value> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Mutable access to `metadata`, creating it (and replacing a non-object) if needed.
pub fn metadata_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let Value::Object(obj) = v else {
        unreachable!("made an object above")
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_object_extracts_fields() {
        let v = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}},
                       "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let o = StoredObject::new(ResourceId(0), &v, 7);
        assert_eq!(o.key(), ("ns".to_string(), "p".to_string()));
        assert_eq!(o.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(o.field("spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(o.field("status.phase").as_deref(), Some("Running"));
        assert_eq!(o.value(), v);
    }

    #[test]
    fn names_and_uids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert!(generate_name("web-").starts_with("web-"));
        assert_eq!(now_rfc3339().len(), 20);
    }
}
