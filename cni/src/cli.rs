//! `felix-cni install`: the command line of the DaemonSet's init container. The node's
//! pod CIDR comes from `--pod-cidr`, or else from the Node object `--node-name` names
//! (`spec.podCIDR`, read through the in-cluster API access of the pod's service
//! account: it needs `get` on nodes).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use k8s_openapi::api::core::v1::Node;

use crate::install::{InstallConfig, install};

/// `felix-cni install` flags.
#[derive(Debug, Parser)]
#[command(
    name = "felix-cni install",
    version,
    about = "Install the CNI plugin and its conflist on this node"
)]
pub struct InstallArgs {
    /// The host's CNI bin directory, as mounted in the container.
    #[arg(long, env = "FELIX_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The host's CNI config directory, as mounted in the container.
    #[arg(
        long,
        env = "FELIX_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub conf_dir: PathBuf,
    /// The conflist's file name.
    #[arg(long, env = "FELIX_CNI_CONF_NAME", default_value = "10-felix.conflist")]
    pub conf_name: String,
    /// The network's name.
    #[arg(
        long,
        env = "FELIX_CNI_NETWORK_NAME",
        default_value = "k8s-pod-network"
    )]
    pub network_name: String,
    /// This node's pod CIDR (host-local's range); default: the Node's spec.podCIDR.
    #[arg(long, env = "FELIX_CNI_POD_CIDR")]
    pub pod_cidr: Option<String>,
    /// This node's name, to read its pod CIDR from the API.
    #[arg(long, env = "FELIX_NODE_NAME")]
    pub node_name: Option<String>,
    /// kubeconfig for the Node lookup (default: in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Host-side interface prefixes (comma-separated, as the agent's; the first names
    /// the pods' interfaces).
    #[arg(long, env = "FELIX_INTERFACE_PREFIX", default_value = "cali")]
    pub interface_prefix: netmodel::InterfacePrefixes,
    /// MTU of the pods' interfaces (default: the kernel's).
    #[arg(long, env = "FELIX_CNI_MTU")]
    pub mtu: Option<u32>,
    /// Where the plugin logs on the host.
    #[arg(
        long,
        env = "FELIX_CNI_LOG_FILE",
        default_value = "/var/log/felix-cni/cni.log"
    )]
    pub log_file: PathBuf,
}

/// Reads `spec.podCIDR` of Node `name`.
async fn node_pod_cidr(name: &str, kubeconfig: Option<&std::path::Path>) -> anyhow::Result<String> {
    let client = netmodel::kube_client(kubeconfig).await?;
    let node = kube::Api::<Node>::all(client).get(name).await?;
    node.spec
        .and_then(|s| s.pod_cidr)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("Node {name} has no spec.podCIDR (is --allocate-node-cidrs on?)")
        })
}

fn pod_cidr(args: &InstallArgs) -> anyhow::Result<String> {
    if let Some(cidr) = &args.pod_cidr {
        return Ok(cidr.clone());
    }
    let Some(node) = &args.node_name else {
        anyhow::bail!("set --pod-cidr or --node-name (FELIX_CNI_POD_CIDR or FELIX_NODE_NAME)");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(node_pod_cidr(node, args.kubeconfig.as_deref()))
}

fn install_from(args: InstallArgs) -> anyhow::Result<String> {
    let config = InstallConfig {
        source: std::env::current_exe()?,
        pod_cidr: pod_cidr(&args)?,
        bin_dir: args.bin_dir,
        conf_dir: args.conf_dir,
        conf_name: args.conf_name,
        network_name: args.network_name,
        interface_prefix: args.interface_prefix.primary().to_string(),
        mtu: args.mtu,
        log_file: args.log_file,
    };
    let outcome = install(&config)?;
    let word = |w: bool| if w { "written" } else { "unchanged" };
    Ok(format!(
        "binary {}, conflist {} (pod CIDR {})",
        word(outcome.binary_written),
        word(outcome.conflist_written),
        config.pod_cidr
    ))
}

/// Runs `felix-cni install` with `args` (the first is `install`); a failure prints its
/// error chain once (`edge::cli::exit_code`).
pub fn run_install(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: InstallArgs = match edge::cli::parse(args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let result = install_from(args).map(|summary| println!("felix-cni install: {summary}"));
    edge::cli::exit_code("felix-cni install", result)
}
