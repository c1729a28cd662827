//! The host-side interface name: the configured prefix plus the hash the model uses for
//! the pod's WorkloadEndpoint, so the kernel's interface and the endpoint agree.
//!
//! A runtime that passes no Kubernetes pod (`K8S_POD_NAMESPACE`/`K8S_POD_NAME` in
//! `CNI_ARGS`) gets a name hashed from the container id instead (no endpoint will name
//! it, so the agent enforces nothing there).

use crate::config::RuntimeEnv;

/// The host-side interface of this container's pod.
pub fn host_interface(prefix: &str, env: &RuntimeEnv) -> String {
    match env.pod() {
        Some((namespace, pod)) => netmodel::prefixed_interface_name(prefix, namespace, pod),
        None => netmodel::prefixed_interface_name(prefix, "container", &env.container_id),
    }
}
