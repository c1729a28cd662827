//! The Service the soak publishes its replicas in: where agents find typha
//! ([`TyphaTargets`]: fixed addresses or the Service's EndpointSlices) and the objects
//! written to kube-sim for it (the namespace, one EndpointSlice per serving replica).
//!
//! Invariant: a replica's slice exists only while the replica serves (created once it
//! is ready, deleted just before it is killed or rolled), as kubelet's readiness and the
//! EndpointSlice controller would have it; a held replica's slice is published later
//! ([`Stack::publish_held`]), never earlier.

use anyhow::Context;
use edge::discovery::{DEFAULT_PORT_NAME, SERVICE_NAME_LABEL};

use super::{Replica, Stack};

/// The namespace of the Service the stack publishes its replicas in.
pub const SERVICE_NAMESPACE: &str = "calico-system";
/// The Service's name (the EndpointSlices carry `kubernetes.io/service-name` = this).
pub const SERVICE_NAME: &str = "calico-typha";

/// Where a fleet's agents find typha.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TyphaTargets {
    /// A fixed list of HOST:PORT addresses.
    Addresses(Vec<String>),
    /// The ready endpoints of a Service's EndpointSlices in the API server at `api`
    /// (a plain-HTTP kube-sim URL).
    Service {
        /// The API server's URL.
        api: String,
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
    },
}

impl std::fmt::Display for TyphaTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TyphaTargets::Addresses(addresses) => write!(f, "addresses {}", addresses.join(",")),
            TyphaTargets::Service {
                namespace, name, ..
            } => write!(f, "service {namespace}/{name} (EndpointSlices)"),
        }
    }
}

pub(super) fn namespace_object() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": SERVICE_NAMESPACE},
    })
}

/// Replica `r`'s EndpointSlice in the Service: one ready endpoint on loopback, named
/// after it, on a node of its own (so agents have no same-node preference).
pub(super) fn endpoint_slice(r: &Replica) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": r.name,
            "namespace": SERVICE_NAMESPACE,
            "labels": {SERVICE_NAME_LABEL: SERVICE_NAME},
        },
        "addressType": "IPv4",
        "ports": [{"name": DEFAULT_PORT_NAME, "port": r.grpc.port(), "protocol": "TCP"}],
        "endpoints": [{
            "addresses": [r.grpc.ip().to_string()],
            "conditions": {"ready": true},
            "nodeName": format!("{}-node", r.name),
        }],
    })
}

impl Stack {
    /// Publishes replica `i` in the Service (its EndpointSlice, ready; nothing while it
    /// is held) or withdraws it (the slice deleted, as when its pod goes away; a slice
    /// already gone is fine). Nothing without a Service.
    pub(super) async fn publish(&self, i: usize, serving: bool) -> anyhow::Result<()> {
        if self.service_api.is_none() || (serving && self.held.contains(&i)) {
            return Ok(());
        }
        let replica = self.replicas.get(i).context("no such replica")?;
        let collection =
            format!("/apis/discovery.k8s.io/v1/namespaces/{SERVICE_NAMESPACE}/endpointslices");
        if serving {
            self.api_write("POST", &collection, &endpoint_slice(replica), &[])
                .await
        } else {
            let path = format!("{collection}/{}", replica.name);
            self.api_write("DELETE", &path, &serde_json::Value::Null, &[404])
                .await
        }
    }

    /// Holds replica `i`'s slice back from its next (re)publication, until
    /// [`Stack::publish_held`]; a slice published now stays until the replica goes down.
    pub fn hold(&mut self, i: usize) {
        self.held.insert(i);
    }

    /// Publishes every held replica (the Service's endpoints then include them).
    pub async fn publish_held(&mut self) -> anyhow::Result<()> {
        for i in std::mem::take(&mut self.held) {
            self.publish(i, true).await?;
        }
        Ok(())
    }
}
