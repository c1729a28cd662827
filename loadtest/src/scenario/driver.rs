//! The sequence every typha scenario shares: start the servers the scenario's setup
//! asks for, one reference client per replica (so the memory measured next is per
//! client, not the snapshot's), the fleet and its initial sync, the scenario's run
//! phase, a barrier, every digest compared with a fresh reference client's, and the
//! figures. The scenario adds what it measured in its report hook.
//!
//! Invariant: the clients are stopped (their mirrors collected) before churn cleans up
//! in real-cluster mode, or the deletions would reach them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use typha_proto::Digest;

use crate::churn::Churn;
use crate::fleet::{Behaviour, Fleet, FleetClient, FleetCounters};
use crate::http1::Scrape;
use crate::probe::Probe;
use crate::procs::{ProcStats, reset_peak_rss};
use crate::report::{
    ByteFigures, ConnectionPoint, ProcessFigures, RunConfig, ScenarioReport, Series, TyphaMemory,
};
use crate::stack::Stack;
use crate::worker::{AgentSpec, WorkerPlan};

use super::common::{
    InSync, Progress, SYNC_LIMIT, Sampler, event_figures, generator_figures, kube_figures, layout,
    reference_digest, replica_counters, scrape_all, self_figures, snapshot_figures, sync_config,
    typha_rss, typha_share,
};
use super::{Done, Phase, Target, TyphaScenario};

/// Runs `scenario` against kube-sim and local replicas, or what `target` names.
pub async fn run<S: TyphaScenario>(
    scenario: &S,
    config: &RunConfig,
    target: &Target,
) -> anyhow::Result<ScenarioReport> {
    let wall = Instant::now();
    let stack_config = scenario.setup(config, target);
    let name = scenario.name();
    let progress = Progress::new(name, "starting kube-sim and typha");
    let api = match &target.kubeconfig {
        Some(path) => format!("the API server of {}", path.display()),
        None => format!(
            "kube-sim ({} nodes x {} pods)",
            stack_config.nodes, stack_config.pods_per_node
        ),
    };
    match &target.external {
        Some(external) => eprintln!(
            "[{name}] using {api} and typha at {}",
            external.addresses.join(",")
        ),
        None => eprintln!(
            "[{name}] starting {api} and {} typha replica(s)",
            stack_config.replicas
        ),
    }
    let mut stack = Stack::start(&stack_config, name).await?;
    let result = body(scenario, config, target, &mut stack, progress, wall).await;
    if result.is_err() {
        stack.dir.keep = true;
        eprintln!(
            "[{name}] failed; child logs kept in {}",
            stack.log_dir().display()
        );
    }
    result
}

/// The fleet once it is in sync, and what was measured on the way.
struct Started {
    fleet: Arc<Fleet>,
    refs: Fleet,
    release: CancellationToken,
    initial_sync_seconds: f64,
    typha_memory: TyphaMemory,
    /// The replicas' counters as the run phase starts.
    before_run: Vec<ProcStats>,
}

/// The clients' final state.
struct Ending {
    converged: bool,
    converge_seconds: f64,
    reference: Digest,
    digests: Vec<(String, Digest)>,
    workers: Vec<ProcessFigures>,
    scrapes: Vec<Scrape>,
    counters: FleetCounters,
}

async fn body<S: TyphaScenario>(
    scenario: &S,
    config: &RunConfig,
    target: &Target,
    stack: &mut Stack,
    progress: Arc<Progress>,
    wall: Instant,
) -> anyhow::Result<ScenarioReport> {
    let probe = Probe::new((config.duration_seconds as usize) * 2 + 600);
    let mut churn = Churn::new(stack.api.clone(), probe.clone(), layout(config, target)).await?;
    let mut marks = Vec::new();
    reset_peak_rss();
    let self_before = ProcStats::this_process().unwrap_or_default();
    let holder = FleetSlot::default();
    let sampler = start_sampler(stack, &probe, &progress, holder.clone());
    let started = start_fleet(scenario, config, stack, &probe, &progress, &mut marks).await?;
    holder.set(Some(started.fleet.clone()));
    let findings = scenario
        .run(Phase {
            config,
            stack,
            fleet: &started.fleet,
            refs: &started.refs,
            probe: &probe,
            churn: &mut churn,
            progress: &progress,
            marks: &mut marks,
        })
        .await?;
    let after_run = replica_counters(stack);
    let ending = converge(&started, stack, &probe, &mut churn, &progress, &mut marks).await?;
    let connections = sampler.finish().await;
    holder.set(None);
    let ending = collect(started.fleet, started.refs, ending).await?;
    if target.kubeconfig.is_some() {
        churn.clean_up().await;
    }
    let mut report = figures(config, stack, &churn, &ending, &self_before);
    report.name = scenario.name().to_string();
    report.wall_seconds = wall.elapsed().as_secs_f64();
    let sync = (started.initial_sync_seconds, started.typha_memory);
    own_figures(
        &mut report,
        stack,
        sync,
        (&started.before_run, &after_run),
        &ending,
    );
    (report.restart, report.soak) = (findings.restart, findings.soak);
    latency_figures(&mut report, &probe, connections, marks);
    let done = Done {
        config,
        stack,
        progress: &progress,
        before_run: &started.before_run,
        after_run: &after_run,
    };
    scenario.report(done, &mut report).await?;
    Ok(report)
}

/// typha's memory and share, and the generator's cost.
fn own_figures(
    report: &mut ScenarioReport,
    stack: &Stack,
    (initial_sync_seconds, typha_memory): (f64, TyphaMemory),
    (before_run, after_run): (&[ProcStats], &[ProcStats]),
    ending: &Ending,
) {
    report.initial_sync_seconds = initial_sync_seconds;
    if !stack.is_external() {
        report.typha_memory = Some(typha_memory);
        report.typha_share = Some(typha_share(before_run, after_run, &ending.scrapes));
    }
    report.generator = generator_figures(report);
}

/// The probe's latency figures and the time series.
pub(super) fn latency_figures(
    report: &mut ScenarioReport,
    probe: &Probe,
    connections: Vec<ConnectionPoint>,
    mut marks: Vec<(f64, String)>,
) {
    report.latency_ms = probe.normal.total.percentiles();
    report.slow_latency_ms = probe.slow.total.percentiles();
    report.latency_cdf = probe.normal.total.cdf();
    marks.sort_by(|a, b| a.0.total_cmp(&b.0));
    report.series = Series {
        latency: probe.normal.points(),
        connections,
        marks,
    };
}

/// The fleet, once started, for the sampler's progress lines; emptied before the
/// fleet is stopped (stopping needs the only reference).
#[derive(Clone, Default)]
struct FleetSlot(Arc<Mutex<Option<Arc<Fleet>>>>);

impl FleetSlot {
    fn set(&self, fleet: Option<Arc<Fleet>>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = fleet;
        }
    }

    fn in_sync(&self) -> usize {
        self.0
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(|f| f.in_sync()))
            .unwrap_or(0)
    }
}

fn start_sampler(
    stack: &Stack,
    probe: &Arc<Probe>,
    progress: &Arc<Progress>,
    holder: FleetSlot,
) -> Sampler {
    let in_sync: InSync = Arc::new(move || holder.in_sync());
    let health = stack.replicas.iter().map(|r| r.health).collect();
    Sampler::start(health, probe.clone(), progress.clone(), in_sync)
}

/// One reference client per replica, in sync.
async fn start_refs(stack: &Stack, probe: &Arc<Probe>) -> anyhow::Result<Fleet> {
    let mut refs = Fleet::default();
    for (i, addr) in stack.addresses().into_iter().enumerate() {
        let config = sync_config(stack, format!("reference-{i}"), vec![addr]);
        refs.clients.push(FleetClient::spawn(
            config,
            probe.clone(),
            Behaviour::Reference,
        ));
    }
    refs.wait_until(probe, SYNC_LIMIT, |c| c.converged(0))
        .await?;
    Ok(refs)
}

/// The reference clients, then every client, until all are in sync; typha's memory per
/// idle client on the way.
async fn start_fleet<S: TyphaScenario>(
    scenario: &S,
    config: &RunConfig,
    stack: &mut Stack,
    probe: &Arc<Probe>,
    progress: &Progress,
    marks: &mut Vec<(f64, String)>,
) -> anyhow::Result<Started> {
    progress.set("reference clients");
    let refs = start_refs(stack, probe).await?;
    let base_rss = typha_rss(stack);
    progress.set(format!("connecting {} clients", config.clients));
    marks.push((progress.t(), "clients start".to_string()));
    let release = CancellationToken::new();
    let agents = (0..config.clients)
        .map(|i| AgentSpec {
            name: format!("node-{i:05}"),
            behaviour: scenario.behaviour(i, config, &release).spec(),
        })
        .collect();
    let plan = WorkerPlan {
        typha: scenario.targets(stack),
        transport: stack.client_transport(),
        cpus: &config.agent_cpus,
        dir: stack.dir.path(),
        release: release.clone(),
    };
    let started = Instant::now();
    let fleet = Fleet::spawn_workers(agents, config.agent_workers, &plan, probe)?;
    let initial_sync = fleet.wait_until(probe, SYNC_LIMIT, |c| c.in_sync).await?;
    let initial_sync_seconds = started
        .elapsed()
        .as_secs_f64()
        .max(initial_sync.as_secs_f64());
    marks.push((progress.t(), "all in sync".to_string()));
    // Let the storm's buffers drain before calling the clients idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded_rss = typha_rss(stack);
    Ok(Started {
        before_run: replica_counters(stack),
        fleet: Arc::new(fleet),
        refs,
        release,
        initial_sync_seconds,
        typha_memory: TyphaMemory {
            base_rss_bytes: base_rss,
            loaded_rss_bytes: loaded_rss,
            per_client_bytes: (loaded_rss as f64 - base_rss as f64) / config.clients.max(1) as f64,
        },
    })
}

/// A barrier, every client at it, the reference clients at it, and a fresh reference
/// client's digest.
async fn converge(
    started: &Started,
    stack: &Stack,
    probe: &Arc<Probe>,
    churn: &mut Churn,
    progress: &Progress,
    marks: &mut Vec<(f64, String)>,
) -> anyhow::Result<Ending> {
    started.release.cancel();
    progress.set("barrier: waiting for convergence");
    let barrier = churn.barrier().await?;
    let converge = started
        .fleet
        .wait_until(probe, SYNC_LIMIT, |c| c.converged(barrier))
        .await;
    let converged = converge.is_ok();
    let converge_seconds = match converge {
        Ok(d) => d.as_secs_f64(),
        Err(error) => {
            eprintln!("[{}] {error:#}", progress.scenario());
            SYNC_LIMIT.as_secs_f64()
        }
    };
    marks.push((progress.t(), "converged".to_string()));
    progress.set("digests");
    // The pinned reference clients follow their replica through a restart too.
    started
        .refs
        .wait_until(probe, SYNC_LIMIT, |c| c.converged(barrier))
        .await
        .context("the pinned reference clients")?;
    let reference = reference_digest(stack, probe, barrier).await?;
    Ok(Ending {
        converged,
        converge_seconds,
        reference,
        digests: Vec::new(),
        workers: Vec::new(),
        scrapes: scrape_all(stack).await,
        counters: started.fleet.counters(),
    })
}

/// Stops every client and collects its digest.
async fn collect(fleet: Arc<Fleet>, refs: Fleet, mut ending: Ending) -> anyhow::Result<Ending> {
    let fleet = Arc::try_unwrap(fleet).map_err(|_| anyhow::anyhow!("fleet still shared"))?;
    let stopped = fleet.stop().await?;
    ending.digests = stopped.digests;
    ending.workers = stopped.workers;
    ending.digests.extend(refs.stop().await?.digests);
    Ok(ending)
}

/// The report's shared figures (the caller fills in the rest).
fn figures(
    config: &RunConfig,
    stack: &mut Stack,
    churn: &Churn,
    ending: &Ending,
    self_before: &ProcStats,
) -> ScenarioReport {
    let reference = ending.reference;
    let digests = &ending.digests;
    let digests_differ: Vec<String> = digests
        .iter()
        .filter(|(_, d)| *d != reference)
        .map(|(name, _)| name.clone())
        .collect();
    let (mut processes, api_total) = kube_figures(stack);
    let replica_stats = stack.replica_stats();
    for (name, pid, stats) in &replica_stats {
        processes.push(ProcessFigures::new(name, *pid, stats));
    }
    processes.extend(ending.workers.iter().cloned());
    processes.push(self_figures(self_before));
    let typha_written: u64 = replica_stats.iter().map(|(_, _, s)| s.bytes_written).sum();
    let mut report = ScenarioReport::empty(config.clients);
    report.replicas = stack.replicas.len();
    report.api_objects = stack.seeded_objects;
    report.converge_seconds = ending.converge_seconds;
    report.converged = ending.converged;
    report.digests_equal = digests.len() - digests_differ.len();
    report.digests_total = digests.len();
    report.digests_differ = digests_differ;
    report.churn = churn.stats.clone();
    report.bytes = ByteFigures {
        api_sent_total: api_total,
        api_sent_to_writer: churn.bytes_received,
        api_sent_to_watchers: api_total.saturating_sub(churn.bytes_received),
        typha_written,
        typha_written_per_client: typha_written as f64 / config.clients.max(1) as f64,
    };
    report.processes = processes;
    if !stack.is_external() {
        report.snapshot = Some(snapshot_figures(&ending.scrapes));
    }
    report.events = event_figures(&ending.scrapes, ending.counters, config.clients);
    report
}
