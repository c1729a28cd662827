//! felix-cni: run by the container runtime as a CNI plugin (no arguments; `CNI_*`
//! environment, config on stdin, result on stdout), or as `felix-cni install` by the
//! DaemonSet's init container. Logs go to the config's `logFile`, never to stdout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use felix_cni::config::RuntimeEnv;
use felix_cni::error::{CniError, DEFAULT_VERSION};
use felix_cni::install::{InstallConfig, install};

/// `felix-cni install`: copy the plugin and write the conflist (the init container).
#[derive(Debug, Parser)]
#[command(name = "felix-cni install", version)]
struct InstallArgs {
    /// The host's CNI bin directory, as mounted in the container.
    #[arg(long, env = "FELIX_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The host's CNI config directory, as mounted in the container.
    #[arg(
        long,
        env = "FELIX_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    conf_dir: PathBuf,
    /// The conflist's file name.
    #[arg(long, env = "FELIX_CNI_CONF_NAME", default_value = "10-felix.conflist")]
    conf_name: String,
    /// The network's name.
    #[arg(
        long,
        env = "FELIX_CNI_NETWORK_NAME",
        default_value = "k8s-pod-network"
    )]
    network_name: String,
    /// This node's pod CIDR (host-local's range).
    #[arg(long, env = "FELIX_CNI_POD_CIDR")]
    pod_cidr: String,
    /// Host-side interface prefixes (comma-separated, as the agent's; the first names
    /// the pods' interfaces).
    #[arg(long, env = "FELIX_INTERFACE_PREFIX", default_value = "cali")]
    interface_prefix: String,
    /// MTU of the pods' interfaces (default: the kernel's).
    #[arg(long, env = "FELIX_CNI_MTU")]
    mtu: Option<u32>,
    /// Where the plugin logs on the host.
    #[arg(
        long,
        env = "FELIX_CNI_LOG_FILE",
        default_value = "/var/log/felix-cni/cni.log"
    )]
    log_file: PathBuf,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "install") {
        return run_install();
    }
    run_plugin()
}

fn run_install() -> ExitCode {
    let args = InstallArgs::parse_from(std::env::args_os().skip(1));
    let source = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("felix-cni install: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = InstallConfig {
        source,
        bin_dir: args.bin_dir,
        conf_dir: args.conf_dir,
        conf_name: args.conf_name,
        network_name: args.network_name,
        pod_cidr: args.pod_cidr,
        interface_prefix: args
            .interface_prefix
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        mtu: args.mtu,
        log_file: args.log_file,
    };
    match install(&config) {
        Ok(outcome) => {
            println!(
                "felix-cni install: binary {}, conflist {}",
                if outcome.binary_written {
                    "written"
                } else {
                    "unchanged"
                },
                if outcome.conflist_written {
                    "written"
                } else {
                    "unchanged"
                },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("felix-cni install: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The log file the config names (read leniently: a config too broken to parse still
/// gets its failure logged to the default file).
fn log_file(stdin: &[u8]) -> PathBuf {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v["logFile"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/log/felix-cni/cni.log"))
}

fn init_logging(path: &std::path::Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // No log file (read-only host path, say): log nothing rather than touch stdout.
    if let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("FELIX_CNI_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
    }
}

fn run_plugin() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    init_logging(&log_file(&stdin));
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| DEFAULT_VERSION.to_string());
    let outcome = read
        .map_err(|source| CniError::Io {
            what: "reading stdin".into(),
            source,
        })
        .and_then(|_| RuntimeEnv::from_vars(|k| std::env::var(k).ok()))
        .and_then(|env| felix_cni::plugin::run(&env, &stdin));
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(result) => {
            if let Some(result) = result {
                let _ = writeln!(stdout, "{result}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "failed");
            let json = serde_json::to_string(&e.result(&version)).unwrap_or_default();
            let _ = writeln!(stdout, "{json}");
            ExitCode::FAILURE
        }
    }
}
