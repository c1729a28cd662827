//! `loadtest`: with no arguments, every scenario on the embedded default configuration
//! (kube-sim + typha replicas as child processes, the client fleet here), then a report.
//!
//! Multi-call: `loadtest kube-sim ...` and `loadtest typha ...` run those binaries'
//! command lines (the scenarios start their servers this way, so each is measured as
//! its own process); `loadtest raw-writer ...` is the raw loopback baseline's writer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use loadtest::report::{Report, RunConfig};
use loadtest::scenarios::{self, Scenario};
use loadtest::stack::RestartMode;

/// Load test for typha: a synthetic cluster in kube-sim, typha replicas, and thousands
/// of mutual-TLS sync clients, each with its own mirror and digest check.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Cli {
    /// Which scenarios to run (comma-separated), in order.
    #[arg(
        long,
        value_enum,
        env = "LOADTEST_SCENARIO",
        value_delimiter = ',',
        default_value = "all"
    )]
    scenario: Vec<Scenario>,
    /// Sync clients (each a real mutual-TLS gRPC stream with its own mirror).
    #[arg(long, env = "LOADTEST_CLIENTS", default_value_t = 500)]
    clients: usize,
    /// Nodes in the synthetic cluster.
    #[arg(long, env = "LOADTEST_NODES", default_value_t = 100)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, env = "LOADTEST_PODS_PER_NODE", default_value_t = 10)]
    pods_per_node: usize,
    /// Namespaces.
    #[arg(long, env = "LOADTEST_NAMESPACES", default_value_t = 10)]
    namespaces: usize,
    /// Kubernetes NetworkPolicies per namespace.
    #[arg(long, env = "LOADTEST_POLICIES", default_value_t = 2)]
    policies: usize,
    /// Nodes of the cold-start cluster.
    #[arg(long, env = "LOADTEST_COLD_NODES", default_value_t = 200)]
    cold_nodes: usize,
    /// Pods per node of the cold-start cluster.
    #[arg(long, env = "LOADTEST_COLD_PODS_PER_NODE", default_value_t = 10)]
    cold_pods_per_node: usize,
    /// Churn writes per second (pod creates/deletes, label changes, policy edits).
    #[arg(long, env = "LOADTEST_RATE", default_value_t = 50)]
    rate: u32,
    /// How long churn runs in each scenario.
    #[arg(long, env = "LOADTEST_DURATION", default_value = "6s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// typha replicas (the restart scenario uses at least 2).
    #[arg(long, env = "LOADTEST_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// How the restart scenario takes a replica down: kill (SIGKILL) or roll (SIGTERM).
    #[arg(
        long,
        value_enum,
        env = "LOADTEST_RESTART_MODE",
        default_value = "kill"
    )]
    restart_mode: RestartMode,
    /// Share of clients that are slow (half) or stalled (half) in the slow scenario.
    #[arg(long, env = "LOADTEST_SLOW_SHARE", default_value_t = 0.1)]
    slow_share: f64,
    /// Pause of a slow client after each event.
    #[arg(long, env = "LOADTEST_SLOW_PAUSE", default_value = "50ms", value_parser = humantime::parse_duration)]
    slow_pause: Duration,
    /// typha's --write-timeout in the slow scenario (a stalled client is dropped after it).
    #[arg(long, env = "LOADTEST_SLOW_WRITE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    slow_write_timeout: Duration,
    /// Skip the raw loopback baseline after the steady scenario.
    #[arg(long)]
    no_raw_baseline: bool,
    /// Write every figure and the configuration as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write latency over time and connections per replica as SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Log filter for this process.
    #[arg(long, env = "LOADTEST_LOG", default_value = "error")]
    log: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("kube-sim") => return kube_sim::cli::run(&args[1..]),
        Some("typha") => return typha::cli::run(&args[1..]),
        Some("raw-writer") => return loadtest::rawnet::writer_main(&args[2..]),
        _ => {}
    }
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
    if cli.clients == 0 || cli.rate == 0 || !(0.0..=1.0).contains(&cli.slow_share) {
        eprintln!("loadtest: --clients and --rate must be positive, --slow-share in 0..=1");
        return ExitCode::FAILURE;
    }
    let scenarios: Vec<Scenario> = cli.scenario.iter().flat_map(|s| s.expand()).collect();
    let config = RunConfig {
        scenarios: scenarios.iter().map(|s| s.name().to_string()).collect(),
        clients: cli.clients,
        nodes: cli.nodes,
        pods_per_node: cli.pods_per_node,
        namespaces: cli.namespaces,
        policies: cli.policies,
        cold_nodes: cli.cold_nodes,
        cold_pods_per_node: cli.cold_pods_per_node,
        rate: cli.rate,
        duration_seconds: cli.duration.as_secs_f64(),
        replicas: cli.replicas,
        restart_mode: cli.restart_mode,
        slow_share: cli.slow_share,
        slow_pause_ms: cli.slow_pause.as_millis() as u64,
        slow_write_timeout_seconds: cli.slow_write_timeout.as_secs_f64(),
        raw_baseline: !cli.no_raw_baseline,
        command: args.join(" "),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadtest: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            // Dropping the run on ctrl-c drops every child-process guard: nothing is left behind.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            report = run(&scenarios, config) => report,
        }
    });
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("loadtest: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    report.print();
    if let Err(error) = write_outputs(&report, cli.report.as_ref(), cli.plot.as_ref()) {
        eprintln!("loadtest: {error:#}");
        return ExitCode::FAILURE;
    }
    let failed: Vec<&str> = report
        .scenarios
        .iter()
        .filter(|s| !s.converged || s.digests_equal != s.digests_total)
        .map(|s| s.name.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!(
            "loadtest: not converged or digests differ in: {}",
            failed.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn run(scenarios: &[Scenario], config: RunConfig) -> anyhow::Result<Report> {
    let mut report = Report {
        config,
        scenarios: Vec::new(),
        comparison: None,
        goals: Vec::new(),
    };
    for scenario in scenarios {
        report
            .scenarios
            .push(scenarios::run(*scenario, &report.config).await?);
    }
    report.finish();
    Ok(report)
}

fn write_outputs(
    report: &Report,
    json: Option<&PathBuf>,
    svg: Option<&PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(path) = json {
        let text = serde_json::to_vec_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = svg {
        std::fs::write(path, loadtest::plot::render(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
