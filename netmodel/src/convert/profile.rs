//! Namespace -> Profile `kns.<ns>`; ServiceAccount -> Profile `ksa.<ns>.<sa>`.
//!
//! A profile carries the labels endpoints inherit, prefixed so they cannot collide with
//! the endpoint's own (`pcns.` / `pcsa.`), plus a name label for exact matching. A label
//! change on a namespace is therefore one Profile delta, not one per pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use typha_proto::{Key, Kind, Value, pb};

use super::{ConvertError, ToModel, labels_of, name_of, namespace_of};
use crate::Resource;
use crate::selector::{NAME_LABEL, NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX};

/// The profile of the object `meta` describes: its labels under `prefix`, and its name.
fn profile(prefix: &str, meta: &ObjectMeta) -> Result<Option<Value>, ConvertError> {
    let name = name_of(meta)?;
    let mut out: BTreeMap<String, String> = labels_of(meta)
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect();
    out.insert(format!("{prefix}{NAME_LABEL}"), name.to_string());
    Ok(Some(Value::Profile(pb::Profile { labels: out })))
}

impl ToModel for Namespace {
    const RESOURCE: Resource = Resource::Namespaces;

    fn model_key(&self) -> Result<Key, ConvertError> {
        Ok(Key::cluster(
            Kind::Profile,
            format!("kns.{}", name_of(&self.metadata)?),
        )?)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        profile(NAMESPACE_LABEL_PREFIX, &self.metadata)
    }
}

impl ToModel for ServiceAccount {
    const RESOURCE: Resource = Resource::ServiceAccounts;

    fn model_key(&self) -> Result<Key, ConvertError> {
        let (ns, name) = (namespace_of(&self.metadata)?, name_of(&self.metadata)?);
        Ok(Key::cluster(Kind::Profile, format!("ksa.{ns}.{name}"))?)
    }

    fn model_value(&self) -> Result<Option<Value>, ConvertError> {
        profile(SERVICE_ACCOUNT_LABEL_PREFIX, &self.metadata)
    }
}
