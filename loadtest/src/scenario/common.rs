//! What every scenario shares: progress printing, the connections sampler, client
//! configuration, and the figures scraped from typha's /metrics and /proc.
//!
//! Nothing here decides what a scenario does; the scenario modules and the driver
//! ([`super::driver`]) call these helpers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use felix_client::SyncConfig;
use felix_client::discovery::TyphaSource;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Target;
use crate::churn::Layout;
use crate::fleet::{Behaviour, Fleet, FleetClient, FleetCounters, agent_config};
use crate::http1::{self, Scrape};
use crate::probe::Probe;
use crate::procs::ProcStats;
use crate::report::{
    ConnectionPoint, EventFigures, GeneratorFigures, ProcessFigures, RunConfig, ScenarioReport,
    SnapshotFigures, TyphaShare,
};
use crate::stack::Stack;

/// Bounds on waits, so that a broken run fails instead of hanging.
pub const SYNC_LIMIT: Duration = Duration::from_secs(600);

/// Shared progress state: the sampler prints it about once a second.
pub struct Progress {
    scenario: &'static str,
    phase: Mutex<String>,
    started: Instant,
}

impl Progress {
    /// Progress of `scenario`, starting now in `phase`.
    pub fn new(scenario: &'static str, phase: &str) -> Arc<Progress> {
        Arc::new(Progress {
            scenario,
            phase: Mutex::new(phase.to_string()),
            started: Instant::now(),
        })
    }

    /// The phase the scenario is in now.
    pub fn set(&self, phase: impl Into<String>) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.into();
        }
    }

    /// The scenario's name.
    pub fn scenario(&self) -> &'static str {
        self.scenario
    }

    /// Seconds since the scenario started.
    pub fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn phase(&self) -> String {
        self.phase.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// How many clients are in sync now (read by the sampler).
pub type InSync = Arc<dyn Fn() -> usize + Send + Sync>;

/// Samples connections per replica (and prints progress) until stopped.
pub struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<Vec<ConnectionPoint>>,
}

impl Sampler {
    /// Starts sampling the replicas behind `health` every 500 ms.
    pub fn start(
        health: Vec<std::net::SocketAddr>,
        probe: Arc<Probe>,
        progress: Arc<Progress>,
        in_sync: InSync,
    ) -> Sampler {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut points = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return points,
                    _ = tick.tick() => {}
                }
                let per_replica = connections(&health).await;
                if points.len() % 2 == 1 {
                    print_progress(&progress, &probe, &per_replica, in_sync());
                }
                points.push(ConnectionPoint {
                    t: progress.t(),
                    per_replica,
                });
            }
        });
        Sampler { stop, task }
    }

    /// Stops sampling and returns the points.
    pub async fn finish(self) -> Vec<ConnectionPoint> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn connections(health: &[std::net::SocketAddr]) -> Vec<Option<f64>> {
    let mut per_replica = Vec::with_capacity(health.len());
    for addr in health {
        let scrape = http1::get_text(*addr, "/metrics")
            .await
            .ok()
            .map(|t| Scrape::parse(&t));
        per_replica.push(scrape.map(|s| s.sum("typha_connections_active")));
    }
    per_replica
}

fn print_progress(progress: &Progress, probe: &Probe, per_replica: &[Option<f64>], in_sync: usize) {
    let l = probe.normal.total.percentiles();
    let conns: Vec<String> = per_replica
        .iter()
        .map(|c| c.map_or("down".to_string(), |c| format!("{c:.0}")))
        .collect();
    eprintln!(
        "[{} {:>6.1}s] {:<28} in sync {:>6}  conns [{}]  samples {:>9}  p99 {:>7.1} ms",
        progress.scenario,
        progress.t(),
        progress.phase(),
        in_sync,
        conns.join(","),
        l.count,
        l.p99
    );
}

/// What churn writes: pods of the synthetic cluster, or service accounts in a real one.
pub fn layout(config: &RunConfig, target: &Target) -> Layout {
    match target.kubeconfig {
        Some(_) => Layout::Namespace(target.churn_namespace.clone()),
        None => Layout::Synthetic {
            nodes: config.nodes,
            namespaces: config.namespaces,
        },
    }
}

/// A sync client's configuration for `node` against `addresses` of `stack`.
pub fn sync_config(stack: &Stack, node: String, addresses: Vec<String>) -> SyncConfig {
    agent_config(node, TyphaSource::fixed(addresses), stack.client_tls())
}

/// This process's figures since `before`.
pub fn self_figures(before: &ProcStats) -> ProcessFigures {
    let now = ProcStats::this_process().unwrap_or_default();
    ProcessFigures::new("client-process", std::process::id(), &now.since(before))
}

/// Every reachable replica's /metrics.
pub async fn scrape_all(stack: &Stack) -> Vec<Scrape> {
    let mut out = Vec::new();
    for i in 0..stack.replicas.len() {
        if let Ok(s) = stack.scrape(i).await {
            out.push(s);
        }
    }
    out
}

/// Snapshot figures over the replicas.
pub fn snapshot_figures(scrapes: &[Scrape]) -> SnapshotFigures {
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

/// Drops, resumes and coalescing over the replicas, with the fleet's counters.
pub fn event_figures(scrapes: &[Scrape], fleet: FleetCounters, clients: usize) -> EventFigures {
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

/// RSS of every replica, summed.
pub fn typha_rss(stack: &mut Stack) -> u64 {
    stack
        .replica_stats()
        .iter()
        .map(|(_, _, s)| s.rss_bytes)
        .sum()
}

/// Each replica's counters now.
pub fn replica_counters(stack: &mut Stack) -> Vec<ProcStats> {
    stack
        .replica_stats()
        .into_iter()
        .map(|(_, _, s)| s)
        .collect()
}

/// kube-sim's process figures (none against an external API server) and the bytes it
/// wrote.
pub fn kube_figures(stack: &mut Stack) -> (Vec<ProcessFigures>, u64) {
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
pub async fn reference_digest(
    stack: &Stack,
    probe: &Arc<Probe>,
    barrier: u64,
) -> anyhow::Result<typha_proto::Digest> {
    let mut fleet = Fleet::default();
    fleet.clients.push(FleetClient::spawn(
        sync_config(stack, "reference".into(), stack.addresses()),
        probe.clone(),
        Behaviour::Reference,
    ));
    fleet
        .wait_until(probe, SYNC_LIMIT, |c| c.converged(barrier))
        .await
        .context("the reference client")?;
    fleet
        .stop()
        .await?
        .digests
        .first()
        .map(|(_, digest)| *digest)
        .context("no reference digest")
}

/// typha's own share over the run phase: replica counters `before` and `after` it, and
/// the histograms scraped at the end.
pub fn typha_share(before: &[ProcStats], after: &[ProcStats], scrapes: &[Scrape]) -> TyphaShare {
    let (mut cpu_seconds, mut bytes_written) = (0.0, 0);
    for (b, a) in before.iter().zip(after) {
        let d = a.since(b);
        cpu_seconds += d.cpu_seconds;
        bytes_written += d.bytes_written;
    }
    let sum = |name: &str| scrapes.iter().map(|s| s.sum(name)).sum::<f64>();
    let mean = |name: &str| sum(&format!("{name}_sum")) / sum(&format!("{name}_count")).max(1.0);
    TyphaShare {
        cpu_seconds,
        bytes_written,
        cpu_us_per_kib: cpu_seconds * 1e6 / (bytes_written as f64 / 1024.0).max(1.0),
        fanout_latency_mean_ms: mean("typha_fanout_latency_seconds") * 1000.0,
        client_lag_batches_mean: mean("typha_client_lag_batches"),
        coalesced: sum("typha_deltas_coalesced_total"),
    }
}

/// The load generator's CPU per agent per write (summed over the agent workers), from
/// the report's process figures.
pub fn generator_figures(report: &ScenarioReport) -> GeneratorFigures {
    let workers: Vec<_> = report
        .processes
        .iter()
        .filter(|p| p.name.starts_with("agent-worker"))
        .collect();
    let cpu_seconds: f64 = workers.iter().map(|p| p.cpu_seconds).sum();
    let writes = report.churn.operations;
    GeneratorFigures {
        cpu_seconds,
        agents: report.clients,
        writes,
        cpu_us_per_agent_per_write: cpu_seconds * 1e6
            / (report.clients.max(1) as f64 * writes.max(1) as f64),
        processes: workers.len(),
        harness_cpu_seconds: report
            .processes
            .iter()
            .filter(|p| p.name == "client-process")
            .map(|p| p.cpu_seconds)
            .sum(),
    }
}
