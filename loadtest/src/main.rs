//! `loadtest`: with no arguments, every scenario on the embedded default configuration
//! (kube-sim + typha replicas as child processes, the client fleet here), then a report.
//!
//! Multi-call: `loadtest kube-sim ...` and `loadtest typha ...` run those binaries'
//! command lines (the scenarios start their servers this way, so each is measured as
//! its own process); `loadtest raw-writer ...` is the raw loopback baseline's writer and
//! `loadtest agent-worker --spec FILE` runs a share of the agents (see `loadtest::worker`).
//!
//! Real-cluster mode: `--kubeconfig` uses an existing API server instead of kube-sim,
//! `--typha-addr` running replicas instead of local ones (`--tls-*` reach them).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use edge::tls::{PeerIdentity, TransportChoice};
use loadtest::pinning::CpuList;
use loadtest::report::{Environment, Report, RunConfig};
use loadtest::scenario::{self, Scenario, Target};
use loadtest::stack::{ExternalTypha, RestartMode};

/// Load test for typha: a synthetic cluster in kube-sim, typha replicas, and thousands
/// of mutual-TLS sync clients, each with its own mirror and digest check.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, after_help = AFTER_HELP)]
struct Cli {
    /// Which scenarios to run (comma-separated), in order. `all` is steady, cold-start,
    /// restart, slow and direct; `soak` runs only when named.
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
    /// typha replicas (the restart and storm scenarios use at least 2).
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
    /// How often the soak takes a replica down (SIGKILL and roll alternately); the soak
    /// runs --duration / this many rounds, each ending with a barrier and a digest check.
    #[arg(long, env = "LOADTEST_SOAK_KILL_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    soak_kill_interval: Duration,
    /// Use the API server of this kubeconfig instead of starting kube-sim (real-cluster
    /// mode): churn writes service accounts and a NetworkPolicy in --churn-namespace
    /// (needs create/patch/delete there, and create on namespaces if it is missing);
    /// local typha replicas watch it with this kubeconfig unless --typha-addr is given.
    /// The synthetic-cluster flags (--nodes, --pods-per-node, ...) do not apply.
    #[arg(long, env = "LOADTEST_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace churn writes in against --kubeconfig; created if missing. The objects
    /// churn creates are deleted at the end of each scenario.
    #[arg(long, env = "LOADTEST_CHURN_NAMESPACE", default_value = "loadtest")]
    churn_namespace: String,
    /// Connect the clients to these running typha replicas (HOST:PORT, repeatable or
    /// comma-separated) instead of starting replicas; needs --kubeconfig and
    /// --tls-ca/--tls-cert/--tls-key (or --insecure-plaintext). Scenarios that kill
    /// replicas (restart, soak) refuse, and typha's own figures are not measured.
    #[arg(long, env = "LOADTEST_TYPHA_ADDR", value_delimiter = ',')]
    typha_addr: Vec<String>,
    /// CA bundle the --typha-addr replicas' certificates chain to.
    #[arg(long, visible_alias = "ca", env = "LOADTEST_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate the clients present to --typha-addr replicas (the identity
    /// typha's --client-cn / --client-uri-san accepts).
    #[arg(long, visible_alias = "cert", env = "LOADTEST_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, visible_alias = "key", env = "LOADTEST_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Require this CN of the --typha-addr replicas' certificate (else the host name).
    #[arg(long, env = "LOADTEST_TYPHA_CN")]
    typha_cn: Option<String>,
    /// Require this URI SAN of the --typha-addr replicas' certificate.
    #[arg(long, env = "LOADTEST_TYPHA_URI_SAN")]
    typha_uri_san: Option<String>,
    /// Reach --typha-addr replicas without TLS (development only; typha must run with
    /// its plaintext flag).
    #[arg(long)]
    insecure_plaintext: bool,
    /// Pin kube-sim and the typha replicas (and the raw-loopback writer) to these CPUs
    /// (`0`, `0-1`, `0,2`), so typha's share is measured apart from the load generator's.
    #[arg(long, env = "LOADTEST_TYPHA_CPUS", default_value = "")]
    typha_cpus: CpuList,
    /// Pin the load generator (the clients) to these CPUs.
    #[arg(long, env = "LOADTEST_AGENT_CPUS", default_value = "")]
    agent_cpus: CpuList,
    /// Worker processes the agents run in (each a single-threaded process pinned to the
    /// agent CPUs). Default: one per agent CPU (all CPUs when not pinned), and at least one
    /// per 1,000 agents, never more than the agents.
    #[arg(long, env = "LOADTEST_AGENT_WORKERS")]
    agent_workers: Option<usize>,
    /// Exit non-zero when a goal measured at its own configuration is missed (goals not
    /// measured at their configuration never fail the check).
    #[arg(long)]
    check: bool,
    /// Skip the raw loopback baseline after the steady scenario.
    #[arg(long)]
    no_raw_baseline: bool,
    /// Write every figure and the configuration as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write, per scenario, latency over time, connections per replica and the latency
    /// CDF as SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Log filter for this process.
    #[arg(long, env = "LOADTEST_LOG", default_value = "error")]
    log: String,
}

const AFTER_HELP: &str = "\
Examples:
  loadtest                                   every scenario on the embedded cluster
  loadtest --scenario soak --duration 30m --replicas 2 --soak-kill-interval 60s
  loadtest --scenario steady,cold-start --kubeconfig ~/.kube/config --replicas 2
  loadtest --scenario steady --kubeconfig K --typha-addr typha.example:5473 \\
           --tls-ca ca.crt --tls-cert client.crt --tls-key client.key --typha-cn typha-server

Each sync client is a full mutual-TLS session with its own mirror; run the load test
on a machine other than typha's when sizing a real deployment.";

/// `--churn-namespace` by the API server's own rule for namespace names (an RFC 1123
/// label).
fn check_churn_namespace(ns: &str) -> Result<(), String> {
    let problems = kube_sim::validate::name_problems(ns, kube_sim::validate::NameRule::Label);
    if problems.is_empty() {
        return Ok(());
    }
    let why = problems.join("; ");
    Err(format!(
        "--churn-namespace {ns:?} is not a namespace name: {why}"
    ))
}

/// Real-cluster mode from the flags, or why the flags do not fit together.
fn target(cli: &Cli, scenarios: &[Scenario]) -> Result<Target, String> {
    let identity = PeerIdentity {
        cn: cli.typha_cn.clone(),
        uri_san: cli.typha_uri_san.clone(),
    };
    let tls_flags = cli.tls_ca.is_some()
        || cli.tls_cert.is_some()
        || cli.tls_key.is_some()
        || cli.insecure_plaintext
        || !identity.is_empty();
    let ns = &cli.churn_namespace;
    check_churn_namespace(ns)?;
    let external = if cli.typha_addr.is_empty() {
        if tls_flags {
            return Err(
                "--tls-ca/--tls-cert/--tls-key, --typha-cn, --typha-uri-san and --insecure-plaintext only apply with --typha-addr (local replicas use generated certificates)".into(),
            );
        }
        None
    } else {
        if cli.kubeconfig.is_none() {
            return Err("--typha-addr needs --kubeconfig: churn writes to the API server those replicas watch".into());
        }
        if let Some(s) = scenarios.iter().find(|s| s.kills_replicas()) {
            return Err(format!(
                "the {} scenario kills and restarts replicas, which it cannot do to the running ones of --typha-addr; choose others with --scenario (e.g. steady,cold-start,slow,direct)",
                s.name()
            ));
        }
        if let Some(bad) = cli.typha_addr.iter().find(|a| {
            a.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        }) {
            return Err(format!("--typha-addr {bad:?} is not HOST:PORT"));
        }
        let transport = TransportChoice::from_flags(
            &cli.tls_ca,
            &cli.tls_cert,
            &cli.tls_key,
            identity,
            cli.insecure_plaintext,
        )
        .map_err(|e| e.to_string())?;
        Some(ExternalTypha {
            addresses: cli.typha_addr.clone(),
            transport,
        })
    };
    Ok(Target {
        kubeconfig: cli.kubeconfig.clone(),
        external,
        churn_namespace: ns.clone(),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // Before any thread starts: children of a pinned run pin themselves, and the
    // open-file limit is raised (inherited by every child: typha, kube-sim, workers).
    let pinned = loadtest::pinning::pin_from_env();
    if let Err(error) = pinned.and_then(|()| loadtest::procs::raise_open_files()) {
        eprintln!("loadtest: {error:#}");
        return ExitCode::FAILURE;
    }
    match args.get(1).map(String::as_str) {
        Some("kube-sim") => return kube_sim::cli::run(&args[1..]),
        Some("typha") => return typha::cli::run(&args[1..]),
        Some("felix-client") => return felix_client::cli::run_cli(&args[1..]),
        Some("raw-writer") => return loadtest::rawnet::writer_main(&args[2..]),
        Some("agent-worker") => return loadtest::worker::worker_main(&args[2..]),
        _ => {}
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let (scenarios, target, config) = match prepare(&cli, &args) {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("loadtest: {error}");
            return ExitCode::FAILURE;
        }
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
            report = run(&scenarios, config, &target) => report,
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
    if cli.check
        && let Err(missed) = report.check()
    {
        eprintln!("loadtest: --check: {missed}");
        return ExitCode::FAILURE;
    }
    verdict(&report)
}

async fn run(scenarios: &[Scenario], config: RunConfig, target: &Target) -> anyhow::Result<Report> {
    let environment = Environment::of_this_run(&config);
    let mut report = Report {
        config,
        scenarios: Vec::new(),
        environment,
        comparison: None,
        goals: Vec::new(),
    };
    for scenario in scenarios {
        report
            .scenarios
            .push(scenario::run(*scenario, &report.config, target).await?);
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
        std::fs::write(path, loadtest::plot::render(&report.scenarios)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The run's configuration as the report records it.
fn run_config(cli: &Cli, scenarios: &[Scenario], args: &[String]) -> RunConfig {
    RunConfig {
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
        soak_kill_interval_seconds: cli.soak_kill_interval.as_secs_f64(),
        kubeconfig: cli.kubeconfig.as_ref().map(|p| p.display().to_string()),
        typha_addrs: cli.typha_addr.clone(),
        churn_namespace: cli.kubeconfig.as_ref().map(|_| cli.churn_namespace.clone()),
        typha_cpus: cli.typha_cpus.clone(),
        agent_cpus: cli.agent_cpus.clone(),
        agent_workers: cli.agent_workers.unwrap_or_else(|| {
            let cpus = match cli.agent_cpus.is_empty() {
                true => loadtest::pinning::current().0.len(),
                false => cli.agent_cpus.0.len(),
            };
            loadtest::worker::default_workers(cli.clients, cpus)
        }),
        command: args.join(" "),
    }
}

/// Failure when a scenario did not converge or digests differ.
fn verdict(report: &Report) -> ExitCode {
    let failed: Vec<&str> = report
        .scenarios
        .iter()
        .filter(|s| {
            !s.converged
                || s.digests_equal != s.digests_total
                || s.soak
                    .as_ref()
                    .is_some_and(|k| k.digest_mismatches > 0 || k.client_digest_mismatches > 0)
        })
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

/// Logging, validation, real-cluster mode and CPU pinning from the flags: what to run,
/// against what, and the configuration the report records.
fn prepare(cli: &Cli, args: &[String]) -> Result<(Vec<Scenario>, Target, RunConfig), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).map_err(|e| format!("--log: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if cli.clients == 0
        || cli.agent_workers == Some(0)
        || cli.rate == 0
        || !(0.0..=1.0).contains(&cli.slow_share)
        || cli.soak_kill_interval.is_zero()
    {
        return Err(
            "--clients, --agent-workers, --rate and --soak-kill-interval must be positive, --slow-share in 0..=1"
                .into(),
        );
    }
    let scenarios: Vec<Scenario> = cli.scenario.iter().flat_map(|s| s.expand()).collect();
    let target = target(cli, &scenarios)?;
    let config = run_config(cli, &scenarios, args);
    loadtest::pinning::set_server_cpus(cli.typha_cpus.clone());
    loadtest::pinning::pin_self(&cli.agent_cpus).map_err(|e| format!("--agent-cpus: {e:#}"))?;
    Ok((scenarios, target, config))
}
