//! Running a CNI plugin the way a container runtime does: inside the node's namespace,
//! with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH` and the
//! Kubernetes `CNI_ARGS` in the environment and the network config on stdin; the result
//! (or error result) is read from stdout.
//!
//! [`CniWiring`] makes the bench create its pods through a plugin (see
//! [`crate::TopologyBuilder::wiring`]): the pod's IP and host-side interface then come
//! from the plugin's ADD result. The container id of a bench pod is its namespace name.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value as Json;
use tokio::io::AsyncWriteExt;

use crate::NetlabError;
use crate::topology::NodeInfo;

/// The network config a node's plugin gets (its pod CIDR goes into the IPAM range).
pub type NodeConfig = Arc<dyn Fn(&NodeInfo) -> Json + Send + Sync>;

/// How the bench wires pods through a CNI plugin.
#[derive(Clone)]
pub struct CniWiring {
    /// The plugin binary.
    pub plugin: PathBuf,
    /// `CNI_PATH` (where its IPAM plugin is).
    pub cni_path: String,
    /// The network config for a node.
    pub config: NodeConfig,
}

impl std::fmt::Debug for CniWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniWiring")
            .field("plugin", &self.plugin)
            .field("cni_path", &self.cni_path)
            .finish_non_exhaustive()
    }
}

/// One plugin invocation.
#[derive(Clone, Debug)]
pub struct CniCall<'a> {
    /// `ADD`, `DEL`, `CHECK` or `VERSION`.
    pub command: &'a str,
    /// The node namespace the plugin runs in (the runtime's "host").
    pub node_netns: &'a str,
    /// The pod's namespace name (also the container id); `CNI_NETNS` is its path.
    pub pod_netns: &'a str,
    /// The pod's Kubernetes namespace and name (`CNI_ARGS`).
    pub pod: (&'a str, &'a str),
}

/// What the plugin answered.
#[derive(Clone, Debug)]
pub struct CniOutput {
    /// It exited zero.
    pub success: bool,
    /// Its stdout as JSON (`Null` when empty).
    pub stdout: Json,
    /// Its stdout as text (when not JSON, for diagnostics).
    pub raw: String,
}

impl CniOutput {
    /// The error result's code, if this is one.
    pub fn error_code(&self) -> Option<u64> {
        self.stdout.get("code").and_then(Json::as_u64)
    }
}

/// Runs the plugin once with `config` on stdin.
pub async fn invoke(
    wiring: &CniWiring,
    call: &CniCall<'_>,
    config: &Json,
) -> Result<CniOutput, NetlabError> {
    let command = format!(
        "{} {} (in {})",
        wiring.plugin.display(),
        call.command,
        call.node_netns
    );
    let spawn_error = |source| NetlabError::Spawn {
        command: command.clone(),
        source,
    };
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
        call.pod.0, call.pod.1, call.pod_netns
    );
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", call.node_netns])
        .arg(&wiring.plugin)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.pod_netns)
        .env("CNI_NETNS", format!("/run/netns/{}", call.pod_netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &wiring.cni_path)
        .env("CNI_ARGS", args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config.to_string().as_bytes())
            .await
            .map_err(spawn_error)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_error)?;
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let stdout = if raw.trim().is_empty() {
        Json::Null
    } else {
        serde_json::from_str(&raw).unwrap_or(Json::Null)
    };
    Ok(CniOutput {
        success: out.status.success(),
        stdout,
        raw,
    })
}

/// The first IPv4 address and the host-side interface of an ADD result.
pub fn parse_add(out: &CniOutput) -> Result<(std::net::Ipv4Addr, String), NetlabError> {
    let bad = || NetlabError::Spec(format!("CNI ADD result {}", out.raw.trim()));
    if !out.success {
        return Err(bad());
    }
    let address = out.stdout["ips"][0]["address"].as_str().ok_or_else(bad)?;
    let ip = address
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(bad)?;
    let host = out.stdout["interfaces"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i.get("sandbox").is_none()))
        .and_then(|i| i["name"].as_str())
        .ok_or_else(bad)?;
    Ok((ip, host.to_string()))
}
