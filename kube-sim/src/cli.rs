//! The `kube-sim` command line: serve an in-memory Kubernetes API on plain HTTP,
//! optionally seeded with a synthetic cluster. A library function so that the binary
//! and multi-call tools (the load test) share one entry point.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::{Config, KubeSim, SeedConfig, Store, seed};
use anyhow::Context;
use clap::Parser;

/// In-memory Kubernetes API server for tests and load tests (not for production).
#[derive(Debug, Parser)]
#[command(name = "kube-sim", version)]
pub struct Args {
    /// Listen address (plain HTTP).
    #[arg(long, env = "KUBE_SIM_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Change events kept for watches and continue tokens.
    #[arg(long, env = "KUBE_SIM_HISTORY", default_value_t = 10_000)]
    history: usize,
    /// Seconds between bookmarks on idle watch streams.
    #[arg(long, env = "KUBE_SIM_BOOKMARK_SECS", default_value_t = 5)]
    bookmark_secs: u64,
    /// Do not serve Calico's CRD kinds (crd.projectcalico.org answers 404).
    #[arg(long, env = "KUBE_SIM_NO_CALICO_CRDS")]
    no_calico_crds: bool,
    /// Do not run the simulated scheduler, kubelet and controllers (pods then keep
    /// whatever node, address and status clients write).
    #[arg(long, env = "KUBE_SIM_NO_SIMULATE_PODS")]
    no_simulate_pods: bool,
    /// Nodes to seed.
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// Pods per seeded node.
    #[arg(long, default_value_t = 0)]
    pods_per_node: usize,
    /// Namespaces to seed.
    #[arg(long, default_value_t = 0)]
    namespaces: usize,
    /// NetworkPolicies per seeded namespace.
    #[arg(long, default_value_t = 0)]
    policies: usize,
    /// Every n-th pod of a node uses the host network (0: none).
    #[arg(long, default_value_t = 10)]
    host_network_every: usize,
    /// Seed, print the statistics and exit without serving (for measurements).
    #[arg(long)]
    exit_after_seed: bool,
}

/// Runs the kube-sim command line with `args` (the first is the program name) until
/// SIGINT/SIGTERM, and returns the process exit code.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Args = match edge::cli::parse(args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let result = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(serve(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kube-sim: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if args.bookmark_secs == 0 {
        anyhow::bail!("--bookmark-secs must be at least 1");
    }
    let config = Config {
        listen: args.listen,
        history_limit: args.history,
        bookmark_interval: Duration::from_secs(args.bookmark_secs),
        calico_crds: !args.no_calico_crds,
        simulate_pods: !args.no_simulate_pods,
    };
    let store = Arc::new(Store::new(config.history_limit, config.calico_crds));
    let seed_cfg = SeedConfig {
        nodes: args.nodes,
        pods_per_node: args.pods_per_node,
        namespaces: args.namespaces,
        policies_per_namespace: args.policies,
        host_network_every: args.host_network_every,
    };
    if args.nodes + args.namespaces > 0 {
        let stats = seed(&store, &seed_cfg).context("seeding")?;
        println!(
            "seeded {} objects ({} pods) in {:.3}s, resourceVersion {}",
            stats.objects,
            stats.pods,
            stats.elapsed.as_secs_f64(),
            store.resource_version()
        );
    }
    if args.exit_after_seed {
        return Ok(());
    }
    let sim = KubeSim::start_with_store(config, store).await?;
    println!("kube-sim serving on {}", sim.url());
    wait_for_signal().await?;
    sim.shutdown().await;
    Ok(())
}

/// SIGINT or SIGTERM (a parent process stops kube-sim with either).
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for ctrl-c"),
        _ = term.recv() => Ok(()),
    }
}
