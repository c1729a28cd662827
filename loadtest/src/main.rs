//! `loadtest`: with no arguments, the embedded demo (kube-sim + typha + clients, steady
//! churn) end to end, then a report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use loadtest::steady::{self, SteadyConfig};

/// Load test for typha: a synthetic cluster in kube-sim, typha, and many sync clients.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Cli {
    /// Sync clients (each a real mutual-TLS gRPC stream with its own mirror).
    #[arg(long, env = "LOADTEST_CLIENTS", default_value_t = 300)]
    clients: usize,
    /// Nodes in the synthetic cluster.
    #[arg(long, env = "LOADTEST_NODES", default_value_t = 100)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, env = "LOADTEST_PODS_PER_NODE", default_value_t = 20)]
    pods_per_node: usize,
    /// Namespaces.
    #[arg(long, env = "LOADTEST_NAMESPACES", default_value_t = 10)]
    namespaces: usize,
    /// Churn operations per second.
    #[arg(long, env = "LOADTEST_RATE", default_value_t = 20)]
    rate: u32,
    /// How long churn runs.
    #[arg(long, env = "LOADTEST_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Write every figure and the configuration as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Log filter.
    #[arg(long, env = "LOADTEST_LOG", default_value = "warn")]
    log: String,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        Err(error) => {
            eprintln!("loadtest: --log: {error}");
            return ExitCode::FAILURE;
        }
    }
    if cli.clients == 0 || cli.rate == 0 {
        eprintln!("loadtest: --clients and --rate must be positive");
        return ExitCode::FAILURE;
    }
    let config = SteadyConfig {
        clients: cli.clients,
        nodes: cli.nodes,
        pods_per_node: cli.pods_per_node,
        namespaces: cli.namespaces,
        rate: cli.rate,
        duration: cli.duration,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadtest: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(steady::run(config));
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("loadtest: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    steady::print(&report);
    if let Some(path) = cli.report {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(anyhow::Error::from)
            .and_then(|json| std::fs::write(&path, json).map_err(anyhow::Error::from));
        if let Err(error) = written {
            eprintln!("loadtest: writing {}: {error:#}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.digests_equal != report.config.clients {
        eprintln!(
            "loadtest: {} clients ended with a digest different from typha's",
            report.config.clients - report.digests_equal
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
