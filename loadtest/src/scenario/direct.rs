//! The direct baseline without typha: every client lists and watches the API server
//! itself (what typha saves the API server from). Not a [`super::TyphaScenario`]: there
//! are no replicas, reference clients or digests, only kube-sim's bytes and CPU and the
//! clients' propagation latency.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::churn::Churn;
use crate::direct::{COLLECTIONS, DirectFleet};
use crate::probe::Probe;
use crate::procs::{ProcStats, reset_peak_rss};
use crate::report::{ByteFigures, RunConfig, ScenarioReport};

use super::driver::latency_figures;
use crate::stack::Stack;

use super::common::{
    InSync, Progress, SYNC_LIMIT, Sampler, generator_figures, kube_figures, layout, self_figures,
};
use super::{Target, default_setup};

/// Runs the direct baseline.
pub async fn run(config: &RunConfig, target: &Target) -> anyhow::Result<ScenarioReport> {
    let wall = Instant::now();
    let mut stack_config = default_setup(config, target, 0);
    stack_config.external = None;
    eprintln!(
        "[direct] starting kube-sim ({} nodes x {} pods)",
        config.nodes, config.pods_per_node
    );
    let mut stack = Stack::start(&stack_config, "direct").await?;
    let progress = Progress::new("direct", "starting");
    let probe = Probe::new((config.duration_seconds as usize) * 2 + 600);
    let mut churn = Churn::new(stack.api.clone(), probe.clone(), layout(config, target)).await?;
    reset_peak_rss();
    let self_before = ProcStats::this_process().unwrap_or_default();
    let mut marks = vec![(progress.t(), "clients start".to_string())];
    let fleet = Arc::new(DirectFleet::start(
        stack.api.clone(),
        config.clients,
        probe.clone(),
    ));
    let watching = fleet.clone();
    let in_sync: InSync =
        Arc::new(move || watching.counters.watching.load(Ordering::Relaxed) / COLLECTIONS.len());
    let sampler = Sampler::start(Vec::new(), probe.clone(), progress.clone(), in_sync);
    progress.set(format!("{} clients listing", config.clients));
    let initial_sync_seconds = all_watching(&fleet, &mut stack, config.clients).await?;
    marks.push((progress.t(), "all watching".to_string()));
    churn_phase(config, &mut churn, &progress, &mut marks).await?;
    progress.set("barrier");
    let barrier = churn.barrier().await?;
    let (converged, converge_seconds) = at_barrier(&fleet, &probe, barrier, config.clients).await;
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
    let mut report = ScenarioReport::empty(config.clients);
    report.name = "direct".into();
    report.api_objects = stack.seeded_objects;
    report.wall_seconds = wall.elapsed().as_secs_f64();
    report.initial_sync_seconds = initial_sync_seconds;
    report.converge_seconds = converge_seconds;
    report.converged = converged;
    report.bytes = ByteFigures {
        api_sent_total: api_total,
        api_sent_to_writer: churn.bytes_received,
        api_sent_to_watchers: api_total.saturating_sub(churn.bytes_received),
        ..ByteFigures::default()
    };
    report.churn = churn.stats.clone();
    report.processes = processes;
    latency_figures(&mut report, &probe, connections, marks);
    report.generator = generator_figures(&report);
    Ok(report)
}

/// Churns at the configured rate for the configured duration.
async fn churn_phase(
    config: &RunConfig,
    churn: &mut Churn,
    progress: &Progress,
    marks: &mut Vec<(f64, String)>,
) -> anyhow::Result<()> {
    progress.set(format!(
        "churn {}/s for {:.0}s",
        config.rate, config.duration_seconds
    ));
    marks.push((progress.t(), "churn start".to_string()));
    let duration = Duration::from_secs_f64(config.duration_seconds);
    churn.run(config.rate, duration).await?;
    marks.push((progress.t(), "churn end".to_string()));
    Ok(())
}

/// Waits until every client watches every collection; returns the seconds it took.
async fn all_watching(
    fleet: &DirectFleet,
    stack: &mut Stack,
    clients: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let want = clients * COLLECTIONS.len();
    while fleet.counters.watching.load(Ordering::Relaxed) < want {
        anyhow::ensure!(
            started.elapsed() < SYNC_LIMIT,
            "direct clients did not all list in {SYNC_LIMIT:?}"
        );
        if let Some(kube) = stack.kube.as_mut() {
            kube.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Waits until every client has `barrier`: whether they all did, and how long it took.
async fn at_barrier(
    fleet: &DirectFleet,
    probe: &Probe,
    barrier: u64,
    clients: usize,
) -> (bool, f64) {
    let converging = Instant::now();
    loop {
        let notified = probe.barrier_reached.notified();
        if fleet.at_barrier(barrier) == clients {
            return (true, converging.elapsed().as_secs_f64());
        }
        if converging.elapsed() > SYNC_LIMIT {
            return (false, converging.elapsed().as_secs_f64());
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
