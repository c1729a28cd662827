//! The scenarios: steady churn, cold start, replica restart, slow clients (all with typha
//! replicas as child processes and the client fleet in this process), and the direct
//! baseline without typha. Each starts its own servers, so per-process figures belong
//! to one scenario; the client process's CPU is measured as a delta and its peak RSS is
//! reset at the start (where the kernel allows).
//!
//! The soak (never part of `all`) repeats the restart scenario's outage for a long time:
//! each round churns for the kill interval while a replica goes down halfway (SIGKILL
//! and roll alternately), then writes a barrier and compares every client's live digest
//! with a fresh reference client's.
//!
//! In real-cluster mode ([`Target`]) the API server and possibly the replicas already
//! exist: churn writes service accounts in one namespace, nothing is seeded, and the
//! scenarios that must kill replicas refuse external ones.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use felix_client::SyncConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::churn::{Churn, Layout};
use crate::direct::{COLLECTIONS, DirectFleet};
use crate::fleet::{Behaviour, Fleet, FleetClient};
use crate::http1::{self, Scrape};
use crate::probe::Probe;
use crate::procs::{ProcStats, reset_peak_rss};
use crate::rawnet;
use crate::report::{
    ByteFigures, ConnectionPoint, EventFigures, ProcessFigures, RawFigures, RestartFigures,
    RunConfig, ScenarioReport, Series, SnapshotFigures, SoakFigures, SoakRound, TyphaMemory,
};
use crate::stack::{ExternalTypha, RestartMode, Stack, StackConfig};

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Churn at a steady rate.
    Steady,
    /// Every client connects at once to a larger cluster.
    ColdStart,
    /// A replica is killed or rolled while churn runs.
    Restart,
    /// Some clients read slowly or stall.
    Slow,
    /// The baseline without typha.
    Direct,
    /// All of the above, in that order.
    All,
    /// Churn for the whole duration with a replica killed or rolled every kill interval
    /// and digests compared after each round (not part of `all`).
    Soak,
}

/// Real-cluster mode: what a run uses instead of starting kube-sim or replicas.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// An existing API server instead of kube-sim.
    pub kubeconfig: Option<PathBuf>,
    /// Running typha replicas instead of local ones.
    pub external: Option<ExternalTypha>,
    /// Where churn writes against an existing API server.
    pub churn_namespace: String,
}

impl Scenario {
    /// Whether the scenario takes replicas down (impossible with external ones).
    pub fn kills_replicas(self) -> bool {
        matches!(self, Scenario::Restart | Scenario::Soak)
    }
}

impl Scenario {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::ColdStart => "cold-start",
            Scenario::Restart => "restart",
            Scenario::Slow => "slow",
            Scenario::Direct => "direct",
            Scenario::All => "all",
            Scenario::Soak => "soak",
        }
    }

    /// The scenarios `self` stands for.
    pub fn expand(self) -> Vec<Scenario> {
        match self {
            Scenario::All => vec![
                Scenario::Steady,
                Scenario::ColdStart,
                Scenario::Restart,
                Scenario::Slow,
                Scenario::Direct,
            ],
            one => vec![one],
        }
    }
}

/// Bounds on waits, so that a broken run fails instead of hanging.
const SYNC_LIMIT: Duration = Duration::from_secs(600);

/// Shared progress state: the sampler prints it about once a second.
struct Progress {
    scenario: &'static str,
    phase: Mutex<String>,
    started: Instant,
}

impl Progress {
    fn set(&self, phase: impl Into<String>) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.into();
        }
    }

    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Samples connections per replica (and prints progress) until stopped.
struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<Vec<ConnectionPoint>>,
}

impl Sampler {
    fn start(
        health: Vec<std::net::SocketAddr>,
        probe: Arc<Probe>,
        progress: Arc<Progress>,
        in_sync: Arc<dyn Fn() -> usize + Send + Sync>,
    ) -> Sampler {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut points = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return points,
                    _ = tick.tick() => {}
                }
                let mut per_replica = Vec::with_capacity(health.len());
                for addr in &health {
                    let scrape = http1::get_text(*addr, "/metrics")
                        .await
                        .ok()
                        .map(|t| Scrape::parse(&t));
                    per_replica.push(scrape.map(|s| s.sum("typha_connections_active")));
                }
                n += 1;
                if n.is_multiple_of(2) {
                    let l = probe.normal.total.percentiles();
                    let conns: Vec<String> = per_replica
                        .iter()
                        .map(|c| c.map_or("down".to_string(), |c| format!("{c:.0}")))
                        .collect();
                    let phase = progress.phase.lock().map(|p| p.clone()).unwrap_or_default();
                    eprintln!(
                        "[{} {:>6.1}s] {:<28} in sync {:>6}  conns [{}]  samples {:>9}  p99 {:>7.1} ms",
                        progress.scenario,
                        progress.t(),
                        phase,
                        in_sync(),
                        conns.join(","),
                        l.count,
                        l.p99
                    );
                }
                points.push(ConnectionPoint {
                    t: progress.t(),
                    per_replica,
                });
            }
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Vec<ConnectionPoint> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// Runs one scenario against kube-sim and local replicas, or what `target` names.
pub async fn run(
    scenario: Scenario,
    config: &RunConfig,
    target: &Target,
) -> anyhow::Result<ScenarioReport> {
    match scenario {
        Scenario::Direct => run_direct(config, target).await,
        Scenario::All => anyhow::bail!("expand `all` first"),
        typha => run_typha(typha, config, target).await,
    }
}

/// What churn writes: pods of the synthetic cluster, or service accounts in a real one.
fn layout(config: &RunConfig, target: &Target) -> Layout {
    match target.kubeconfig {
        Some(_) => Layout::Namespace(target.churn_namespace.clone()),
        None => Layout::Synthetic {
            nodes: config.nodes,
            namespaces: config.namespaces,
        },
    }
}

fn sync_config(stack: &Stack, node: String, addresses: Vec<String>) -> anyhow::Result<SyncConfig> {
    let mut config = SyncConfig::new(node, addresses);
    config.tls = stack.client_tls();
    config.backoff_max = Duration::from_secs(5);
    Ok(config)
}

fn behaviour_of(
    scenario: Scenario,
    i: usize,
    config: &RunConfig,
    release: &CancellationToken,
) -> Behaviour {
    if scenario != Scenario::Slow {
        return Behaviour::Normal;
    }
    let slow = (config.clients as f64 * config.slow_share).round() as usize;
    match i {
        i if i < slow && i.is_multiple_of(2) => {
            Behaviour::Slow(Duration::from_millis(config.slow_pause_ms))
        }
        i if i < slow => Behaviour::Stall(release.clone()),
        _ => Behaviour::Normal,
    }
}

fn self_figures(before: &ProcStats) -> ProcessFigures {
    let now = ProcStats::this_process().unwrap_or_default();
    ProcessFigures::new("client-process", std::process::id(), &now.since(before))
}

async fn scrape_all(stack: &Stack) -> Vec<Scrape> {
    let mut out = Vec::new();
    for i in 0..stack.replicas.len() {
        if let Ok(s) = stack.scrape(i).await {
            out.push(s);
        }
    }
    out
}

fn snapshot_figures(scrapes: &[Scrape]) -> SnapshotFigures {
    let sum = |name: &str| scrapes.iter().map(|s| s.sum(name)).sum::<f64>();
    let max = |name: &str| scrapes.iter().map(|s| s.sum(name)).fold(0.0, f64::max);
    let builds = sum("typha_snapshot_build_seconds_count");
    let raw = max("typha_snapshot_raw_bytes");
    let compressed = max("typha_snapshot_compressed_bytes");
    SnapshotFigures {
        keys: max("typha_snapshot_keys"),
        builds,
        build_seconds_mean: sum("typha_snapshot_build_seconds_sum") / builds.max(1.0),
        raw_bytes: raw,
        compressed_bytes: compressed,
        ratio: raw / compressed.max(1.0),
    }
}

fn event_figures(
    scrapes: &[Scrape],
    fleet: crate::fleet::FleetCounters,
    clients: usize,
) -> EventFigures {
    let mut drops = std::collections::BTreeMap::new();
    for s in scrapes {
        for (labels, v) in s.by_label("typha_connections_dropped_total") {
            let reason = labels
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("unknown")
                .to_string();
            *drops.entry(reason).or_insert(0.0) += v;
        }
    }
    let sum = |name: &str| scrapes.iter().map(|s| s.sum(name)).sum::<f64>();
    EventFigures {
        drops,
        server_resumes: sum("typha_resumes_total"),
        coalesced: sum("typha_deltas_coalesced_total"),
        fleet,
        resyncs: fleet.snapshots.saturating_sub(clients as u64),
    }
}

fn typha_rss(stack: &mut Stack) -> u64 {
    stack
        .replica_stats()
        .iter()
        .map(|(_, _, s)| s.rss_bytes)
        .sum()
}

/// kube-sim's process figures (none against an external API server) and the bytes it
/// wrote.
fn kube_figures(stack: &mut Stack) -> (Vec<ProcessFigures>, u64) {
    match stack.kube.as_mut() {
        Some(kube) => {
            let stats = kube.stats();
            let figures = ProcessFigures::new("kube-sim", kube.pid(), &stats);
            (vec![figures], stats.bytes_written)
        }
        None => (Vec::new(), 0),
    }
}

/// A fresh client's snapshot digest (verified against the server by the protocol).
async fn reference_digest(
    stack: &Stack,
    probe: &Arc<Probe>,
    barrier: u64,
) -> anyhow::Result<typha_proto::Digest> {
    let fleet = Fleet {
        clients: vec![FleetClient::spawn(
            sync_config(stack, "reference".into(), stack.addresses())?,
            probe.clone(),
            Behaviour::Reference,
        )],
    };
    fleet
        .wait_until(probe, SYNC_LIMIT, |c| c.converged(barrier), |_| {})
        .await
        .context("the reference client")?;
    fleet
        .stop()
        .await?
        .first()
        .map(|(_, digest)| *digest)
        .context("no reference digest")
}

async fn run_typha(
    scenario: Scenario,
    config: &RunConfig,
    target: &Target,
) -> anyhow::Result<ScenarioReport> {
    anyhow::ensure!(
        !(scenario.kills_replicas() && target.external.is_some()),
        "the {} scenario kills and restarts replicas, which it cannot do to the running ones of --typha-addr",
        scenario.name()
    );
    let wall = Instant::now();
    let cold = scenario == Scenario::ColdStart;
    let (nodes, pods_per_node) = if cold {
        (config.cold_nodes, config.cold_pods_per_node)
    } else {
        (config.nodes, config.pods_per_node)
    };
    let replicas = if scenario.kills_replicas() {
        config.replicas.max(2)
    } else {
        config.replicas.max(1)
    };
    let typha_args = if scenario == Scenario::Slow {
        vec![
            "--write-timeout".to_string(),
            format!("{}ms", (config.slow_write_timeout_seconds * 1000.0) as u64),
        ]
    } else {
        Vec::new()
    };
    let stack_config = StackConfig {
        nodes,
        pods_per_node,
        namespaces: config.namespaces,
        policies: config.policies,
        replicas,
        typha_args,
        kubeconfig: target.kubeconfig.clone(),
        external: target.external.clone(),
    };
    let progress = Arc::new(Progress {
        scenario: scenario.name(),
        phase: Mutex::new("starting kube-sim and typha".into()),
        started: Instant::now(),
    });
    let api = match &target.kubeconfig {
        Some(path) => format!("the API server of {}", path.display()),
        None => format!("kube-sim ({nodes} nodes x {pods_per_node} pods)"),
    };
    match &target.external {
        Some(external) => eprintln!(
            "[{}] using {api} and typha at {}",
            scenario.name(),
            external.addresses.join(",")
        ),
        None => eprintln!(
            "[{}] starting {api} and {replicas} typha replica(s)",
            scenario.name()
        ),
    }
    let mut stack = Stack::start(&stack_config, scenario.name()).await?;
    let result = typha_body(scenario, config, target, &mut stack, progress, wall).await;
    if result.is_err() {
        stack.dir.keep = true;
        eprintln!(
            "[{}] failed; child logs kept in {}",
            scenario.name(),
            stack.log_dir().display()
        );
    }
    result
}

async fn typha_body(
    scenario: Scenario,
    config: &RunConfig,
    target: &Target,
    stack: &mut Stack,
    progress: Arc<Progress>,
    wall: Instant,
) -> anyhow::Result<ScenarioReport> {
    let seconds = (config.duration_seconds as usize) * 2 + 600;
    let probe = Probe::new(seconds);
    let mut churn = Churn::new(stack.api.clone(), probe.clone(), layout(config, target)).await?;
    let mut marks = Vec::new();
    reset_peak_rss();
    let self_before = ProcStats::this_process().unwrap_or_default();

    // One reference client per replica builds each replica's snapshot, so that the
    // memory measured next is per client, not the snapshot's.
    progress.set("reference clients");
    let mut refs = Fleet::default();
    for (i, addr) in stack.addresses().into_iter().enumerate() {
        let config = sync_config(stack, format!("reference-{i}"), vec![addr])?;
        refs.clients.push(FleetClient::spawn(
            config,
            probe.clone(),
            Behaviour::Reference,
        ));
    }
    refs.wait_until(&probe, SYNC_LIMIT, |c| c.converged(0), |_| {})
        .await?;
    let base_rss = typha_rss(stack);

    let fleet_holder: Arc<Mutex<Option<Arc<Fleet>>>> = Arc::new(Mutex::new(None));
    let counter = fleet_holder.clone();
    let in_sync: Arc<dyn Fn() -> usize + Send + Sync> = Arc::new(move || {
        counter
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(|f| f.in_sync()))
            .unwrap_or(0)
    });
    let health = stack.replicas.iter().map(|r| r.health).collect();
    let sampler = Sampler::start(health, probe.clone(), progress.clone(), in_sync);

    progress.set(format!("connecting {} clients", config.clients));
    marks.push((progress.t(), "clients start".to_string()));
    let release = CancellationToken::new();
    let addresses = stack.addresses();
    let started = Instant::now();
    let mut fleet = Fleet::default();
    for i in 0..config.clients {
        let sync = sync_config(stack, format!("node-{i:05}"), addresses.clone())?;
        fleet.clients.push(FleetClient::spawn(
            sync,
            probe.clone(),
            behaviour_of(scenario, i, config, &release),
        ));
    }
    let fleet = Arc::new(fleet);
    if let Ok(mut holder) = fleet_holder.lock() {
        *holder = Some(fleet.clone());
    }
    let initial_sync = fleet
        .wait_until(
            &probe,
            SYNC_LIMIT,
            |c| c.status.in_sync.load(std::sync::atomic::Ordering::Relaxed),
            |_| {},
        )
        .await?;
    let initial_sync_seconds = started
        .elapsed()
        .as_secs_f64()
        .max(initial_sync.as_secs_f64());
    marks.push((progress.t(), "all in sync".to_string()));
    // Let the storm's buffers drain before calling the clients idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded_rss = typha_rss(stack);
    let typha_memory = TyphaMemory {
        base_rss_bytes: base_rss,
        loaded_rss_bytes: loaded_rss,
        per_client_bytes: (loaded_rss as f64 - base_rss as f64) / config.clients.max(1) as f64,
    };

    let before_churn: Vec<ProcStats> = stack
        .replica_stats()
        .into_iter()
        .map(|(_, _, s)| s)
        .collect();
    let mut restart = None;
    let mut soak = None;
    if scenario == Scenario::Soak {
        marks.push((progress.t(), "soak start".to_string()));
        soak = Some(
            soak_rounds(
                stack, &fleet, &refs, &probe, &mut churn, config, &progress, &mut marks,
            )
            .await?,
        );
        marks.push((progress.t(), "soak end".to_string()));
    } else if !matches!(scenario, Scenario::ColdStart) {
        progress.set(format!(
            "churn {}/s for {:.0}s",
            config.rate, config.duration_seconds
        ));
        marks.push((progress.t(), "churn start".to_string()));
        let duration = Duration::from_secs_f64(config.duration_seconds);
        let churning = churn.run(config.rate, duration);
        if scenario == Scenario::Restart {
            let storm = restart_storm(
                stack,
                &fleet,
                &probe,
                (0, config.restart_mode),
                duration / 3,
                &progress,
                &mut marks,
            );
            let (churned, stormed) = tokio::join!(churning, storm);
            churned?;
            restart = Some(stormed?);
        } else {
            churning.await?;
        }
        marks.push((progress.t(), "churn end".to_string()));
    }
    let after_churn: Vec<ProcStats> = stack
        .replica_stats()
        .into_iter()
        .map(|(_, _, s)| s)
        .collect();
    release.cancel();

    progress.set("barrier: waiting for convergence");
    let barrier = churn.barrier().await?;
    let converge = fleet
        .wait_until(&probe, SYNC_LIMIT, |c| c.converged(barrier), |_| {})
        .await;
    let converged = converge.is_ok();
    let converge_seconds = match converge {
        Ok(d) => d.as_secs_f64(),
        Err(error) => {
            eprintln!("[{}] {error:#}", scenario.name());
            SYNC_LIMIT.as_secs_f64()
        }
    };
    marks.push((progress.t(), "converged".to_string()));
    progress.set("digests");
    // The pinned reference clients follow their replica through a restart too.
    refs.wait_until(&probe, SYNC_LIMIT, |c| c.converged(barrier), |_| {})
        .await
        .context("the pinned reference clients")?;
    let reference = reference_digest(stack, &probe, barrier).await?;
    let scrapes = scrape_all(stack).await;
    let fleet_counters = fleet.counters();
    let connections = sampler.finish().await;
    if let Ok(mut holder) = fleet_holder.lock() {
        *holder = None;
    }
    let fleet = Arc::try_unwrap(fleet).map_err(|_| anyhow::anyhow!("fleet still shared"))?;
    let mut digests = fleet.stop().await?;
    digests.extend(refs.stop().await?);
    // Only once the mirrors are collected: the deletions would reach them.
    if target.kubeconfig.is_some() {
        churn.clean_up().await;
    }
    let digests_equal = digests.iter().filter(|(_, d)| *d == reference).count();
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
    processes.push(self_figures(&self_before));
    let typha_written: u64 = replica_stats.iter().map(|(_, _, s)| s.bytes_written).sum();
    // External replicas are not measured: no figures rather than zeros.
    let local = !stack.is_external();

    let raw_baseline = if scenario == Scenario::Steady && config.raw_baseline && local {
        progress.set("raw loopback baseline");
        Some(
            raw_baseline(
                &before_churn,
                &after_churn,
                config.clients + stack.replicas.len(),
                &stack.log_dir(),
            )
            .await?,
        )
    } else {
        None
    };
    let mut series = Series {
        latency: probe.normal.points(),
        connections,
        marks,
    };
    series.marks.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(ScenarioReport {
        name: scenario.name().to_string(),
        clients: config.clients,
        replicas: stack.replicas.len(),
        api_objects: stack.seeded_objects,
        wall_seconds: wall.elapsed().as_secs_f64(),
        initial_sync_seconds,
        converge_seconds,
        converged,
        digests_equal,
        digests_total: digests.len(),
        digests_differ,
        churn: churn.stats.clone(),
        latency_ms: probe.normal.total.percentiles(),
        slow_latency_ms: probe.slow.total.percentiles(),
        snapshot: local.then(|| snapshot_figures(&scrapes)),
        typha_memory: local.then_some(typha_memory),
        bytes: ByteFigures {
            api_sent_total: api_total,
            api_sent_to_writer: churn.bytes_received,
            api_sent_to_watchers: api_total.saturating_sub(churn.bytes_received),
            typha_written,
            typha_written_per_client: typha_written as f64 / config.clients.max(1) as f64,
        },
        events: event_figures(&scrapes, fleet_counters, config.clients),
        restart,
        soak,
        raw_baseline,
        processes,
        series,
    })
}

/// Takes replica `i` down after `delay` (kill or roll), brings it back, and measures how
/// long until every client is in sync again.
async fn restart_storm(
    stack: &mut Stack,
    fleet: &Fleet,
    probe: &Probe,
    (i, mode): (usize, RestartMode),
    delay: Duration,
    progress: &Progress,
    marks: &mut Vec<(f64, String)>,
) -> anyhow::Result<RestartFigures> {
    tokio::time::sleep(delay).await;
    let replica = format!("typha-{i}");
    // The clients about to lose their replica (less its pinned reference client).
    let on_replica = match stack.scrape(i).await {
        Ok(scrape) => (scrape.sum("typha_connections_active") as u64).saturating_sub(1),
        Err(_) => 0,
    };
    let before = fleet.counters();
    progress.set(format!("restart: {mode:?} {replica}"));
    marks.push((progress.t(), format!("{mode:?} {replica}").to_lowercase()));
    let signalled = Instant::now();
    let back = stack.restart_replica(i, mode).await?;
    marks.push((progress.t(), format!("{replica} back")));
    // Converged again once every one of them has reconnected and every client is in
    // sync (a client may not have noticed the loss yet when the replica is back).
    loop {
        let notified = probe.barrier_reached.notified();
        let reconnected = fleet.counters().since(&before).reconnects;
        if reconnected >= on_replica && fleet.in_sync() == fleet.clients.len() {
            break;
        }
        anyhow::ensure!(
            signalled.elapsed() < SYNC_LIMIT,
            "{reconnected} of {on_replica} clients reconnected, {} of {} in sync after {SYNC_LIMIT:?}",
            fleet.in_sync(),
            fleet.clients.len()
        );
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let reconverge = signalled.elapsed();
    marks.push((progress.t(), "all in sync again".to_string()));
    let storm = fleet.counters().since(&before);
    Ok(RestartFigures {
        mode,
        replica,
        clients_disconnected: on_replica as usize,
        replica_back_seconds: back.as_secs_f64(),
        reconverge_seconds: reconverge.as_secs_f64(),
        storm,
    })
}

/// The soak's rounds: churn for the kill interval while a replica goes down halfway
/// (kill and roll alternately, each replica in turn), then a barrier, and every client's
/// live digest compared with a fresh reference client's.
#[allow(clippy::too_many_arguments)]
async fn soak_rounds(
    stack: &mut Stack,
    fleet: &Fleet,
    refs: &Fleet,
    probe: &Arc<Probe>,
    churn: &mut Churn,
    config: &RunConfig,
    progress: &Progress,
    marks: &mut Vec<(f64, String)>,
) -> anyhow::Result<SoakFigures> {
    let interval = Duration::from_secs_f64(config.soak_kill_interval_seconds);
    let rounds =
        ((config.duration_seconds / config.soak_kill_interval_seconds).round() as usize).max(1);
    let typha_rss_start_bytes = typha_rss(stack);
    let before = fleet.counters();
    let operations_before = churn.stats.operations;
    let mut per_round: Vec<SoakRound> = Vec::with_capacity(rounds);
    let mut typha_rss_by_round = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        // Kill then roll the same replica, then the next replica.
        let mode = if round % 2 == 1 {
            RestartMode::Kill
        } else {
            RestartMode::Roll
        };
        let replica = ((round - 1) / 2) % stack.replicas.len().max(1);
        progress.set(format!("soak round {round}/{rounds}: churn"));
        let churning = churn.run(config.rate, interval);
        let storm = restart_storm(
            stack,
            fleet,
            probe,
            (replica, mode),
            interval / 2,
            progress,
            marks,
        );
        let (churned, stormed) = tokio::join!(churning, storm);
        churned?;
        let restart = stormed?;
        progress.set(format!("soak round {round}/{rounds}: barrier and digests"));
        let barrier = churn.barrier().await?;
        let barrier_seconds = fleet
            .wait_until(probe, SYNC_LIMIT, |c| c.converged(barrier), |_| {})
            .await
            .with_context(|| format!("soak round {round}: the clients at barrier {barrier}"))?
            .as_secs_f64();
        refs.wait_until(probe, SYNC_LIMIT, |c| c.converged(barrier), |_| {})
            .await
            .with_context(|| format!("soak round {round}: the pinned reference clients"))?;
        let reference = reference_digest(stack, probe, barrier).await?;
        let live: Vec<_> = fleet
            .clients
            .iter()
            .chain(&refs.clients)
            .map(|c| (&c.name, c.digest()))
            .collect();
        let digests_differ: Vec<String> = live
            .iter()
            .filter(|(_, d)| *d != reference)
            .map(|(name, _)| (*name).clone())
            .collect();
        let verdict = if digests_differ.is_empty() {
            "digests equal".to_string()
        } else {
            format!("{} DIGESTS DIFFER", digests_differ.len())
        };
        marks.push((progress.t(), format!("round {round}: {verdict}")));
        eprintln!(
            "[soak {:>6.1}s] round {round}/{rounds}: {mode:?} typha-{replica}, in sync again after {:.2} s, barrier {:.2} s, {verdict}",
            progress.t(),
            restart.reconverge_seconds,
            barrier_seconds
        );
        typha_rss_by_round.push(typha_rss(stack));
        per_round.push(SoakRound {
            round,
            restart,
            barrier_seconds,
            digests_compared: live.len(),
            digests_differ,
            t: progress.t(),
        });
    }
    let churned = churn.stats.operations - operations_before;
    churn.stats.achieved_rate = churned as f64 / (interval.as_secs_f64() * rounds as f64);
    let over = fleet.counters().since(&before);
    let max = |f: fn(&SoakRound) -> f64| per_round.iter().map(f).fold(0.0, f64::max);
    Ok(SoakFigures {
        rounds: per_round.len(),
        kill_interval_seconds: interval.as_secs_f64(),
        digest_mismatches: per_round.iter().map(|r| r.digests_differ.len()).sum(),
        client_digest_mismatches: over.digest_mismatches,
        reconnects: over.reconnects,
        resumes: over.resumes,
        snapshots: over.snapshots,
        max_reconverge_seconds: max(|r| r.restart.reconverge_seconds),
        max_barrier_seconds: max(|r| r.barrier_seconds),
        typha_rss_start_bytes,
        typha_rss_end_bytes: typha_rss(stack),
        typha_rss_by_round,
        per_round,
    })
}

async fn raw_baseline(
    before: &[ProcStats],
    after: &[ProcStats],
    connections: usize,
    log_dir: &std::path::Path,
) -> anyhow::Result<RawFigures> {
    let mut cpu = 0.0;
    let mut bytes = 0;
    let mut writes = 0;
    for (b, a) in before.iter().zip(after) {
        let d = a.since(b);
        cpu += d.cpu_seconds;
        bytes += d.bytes_written;
        writes += d.write_calls;
    }
    let write_bytes = bytes / writes.max(1);
    let raw = rawnet::run(connections as u64, bytes, write_bytes, log_dir).await?;
    Ok(RawFigures {
        ratio: cpu / raw.cpu_seconds.max(0.01),
        typha_cpu_seconds: cpu,
        typha_bytes: bytes,
        raw,
    })
}

async fn run_direct(config: &RunConfig, target: &Target) -> anyhow::Result<ScenarioReport> {
    let wall = Instant::now();
    let stack_config = StackConfig {
        nodes: config.nodes,
        pods_per_node: config.pods_per_node,
        namespaces: config.namespaces,
        policies: config.policies,
        replicas: 0,
        typha_args: Vec::new(),
        kubeconfig: target.kubeconfig.clone(),
        external: None,
    };
    eprintln!(
        "[direct] starting kube-sim ({} nodes x {} pods)",
        config.nodes, config.pods_per_node
    );
    let mut stack = Stack::start(&stack_config, "direct").await?;
    let progress = Arc::new(Progress {
        scenario: "direct",
        phase: Mutex::new("starting".into()),
        started: Instant::now(),
    });
    let probe = Probe::new((config.duration_seconds as usize) * 2 + 600);
    let mut churn = Churn::new(stack.api.clone(), probe.clone(), layout(config, target)).await?;
    reset_peak_rss();
    let self_before = ProcStats::this_process().unwrap_or_default();
    let mut marks = vec![(progress.t(), "clients start".to_string())];
    let started = Instant::now();
    let fleet = Arc::new(DirectFleet::start(
        stack.api.clone(),
        config.clients,
        probe.clone(),
    ));
    let watching = fleet.clone();
    let want = config.clients * COLLECTIONS.len();
    let in_sync: Arc<dyn Fn() -> usize + Send + Sync> = Arc::new(move || {
        watching
            .counters
            .watching
            .load(std::sync::atomic::Ordering::Relaxed)
            / COLLECTIONS.len()
    });
    let sampler = Sampler::start(Vec::new(), probe.clone(), progress.clone(), in_sync);
    progress.set(format!("{} clients listing", config.clients));
    while fleet
        .counters
        .watching
        .load(std::sync::atomic::Ordering::Relaxed)
        < want
    {
        anyhow::ensure!(
            started.elapsed() < SYNC_LIMIT,
            "direct clients did not all list in {SYNC_LIMIT:?}"
        );
        if let Some(kube) = stack.kube.as_mut() {
            kube.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let initial_sync_seconds = started.elapsed().as_secs_f64();
    marks.push((progress.t(), "all watching".to_string()));
    progress.set(format!(
        "churn {}/s for {:.0}s",
        config.rate, config.duration_seconds
    ));
    marks.push((progress.t(), "churn start".to_string()));
    churn
        .run(
            config.rate,
            Duration::from_secs_f64(config.duration_seconds),
        )
        .await?;
    marks.push((progress.t(), "churn end".to_string()));
    progress.set("barrier");
    let barrier = churn.barrier().await?;
    let converging = Instant::now();
    let mut converged = true;
    loop {
        let notified = probe.barrier_reached.notified();
        if fleet.at_barrier(barrier) == config.clients {
            break;
        }
        if converging.elapsed() > SYNC_LIMIT {
            converged = false;
            break;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let converge_seconds = converging.elapsed().as_secs_f64();
    marks.push((progress.t(), "converged".to_string()));
    let connections = sampler.finish().await;
    if target.kubeconfig.is_some() {
        churn.clean_up().await;
    }
    let (mut processes, api_total) = kube_figures(&mut stack);
    processes.push(self_figures(&self_before));
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.stop().await;
    }
    Ok(ScenarioReport {
        name: "direct".into(),
        clients: config.clients,
        replicas: 0,
        api_objects: stack.seeded_objects,
        wall_seconds: wall.elapsed().as_secs_f64(),
        initial_sync_seconds,
        converge_seconds,
        converged,
        digests_equal: 0,
        digests_total: 0,
        digests_differ: Vec::new(),
        churn: churn.stats.clone(),
        latency_ms: probe.normal.total.percentiles(),
        slow_latency_ms: probe.slow.total.percentiles(),
        snapshot: None,
        typha_memory: None,
        bytes: ByteFigures {
            api_sent_total: api_total,
            api_sent_to_writer: churn.bytes_received,
            api_sent_to_watchers: api_total.saturating_sub(churn.bytes_received),
            typha_written: 0,
            typha_written_per_client: 0.0,
        },
        events: EventFigures::default(),
        restart: None,
        soak: None,
        raw_baseline: None,
        processes,
        series: Series {
            latency: probe.normal.points(),
            connections,
            marks,
        },
    })
}
