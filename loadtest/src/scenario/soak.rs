//! The soak (never part of `all`): the restart scenario's outage, repeated for a long
//! time. Each round churns for the kill interval while a replica goes down halfway
//! (SIGKILL and roll alternately, each replica in turn), then writes a barrier and
//! compares every client's live digest with a fresh reference client's.

use std::time::Duration;

use anyhow::Context;

use crate::report::{RunConfig, SoakFigures, SoakRound};
use crate::stack::{RestartMode, StackConfig};

use super::common::{SYNC_LIMIT, reference_digest, typha_rss};
use super::restart::Outage;
use super::{Findings, Phase, Target, TyphaScenario, default_setup};

/// Churn with a replica killed or rolled every kill interval.
pub struct Soak;

impl TyphaScenario for Soak {
    fn name(&self) -> &'static str {
        "soak"
    }

    fn setup(&self, config: &RunConfig, target: &Target) -> StackConfig {
        // The replicas are a Service the agents discover, so they rebalance during the
        // soak (and the agents of a killed replica find the others through it). typha's
        // rebalancer sizes each replica's share from the Node count (one agent per node),
        // so the cluster has one Node per agent, the configured pods spread over them.
        let nodes = soak_nodes(config);
        StackConfig {
            service: true,
            rebalance: true,
            nodes,
            pods_per_node: (config.nodes * config.pods_per_node).div_ceil(nodes),
            ..default_setup(config, target, config.replicas.max(2))
        }
    }

    async fn run(&self, mut phase: Phase<'_>) -> anyhow::Result<Findings> {
        phase
            .marks
            .push((phase.progress.t(), "soak start".to_string()));
        let soak = soak_rounds(&mut phase).await?;
        phase
            .marks
            .push((phase.progress.t(), "soak end".to_string()));
        Ok(Findings {
            restart: None,
            soak: Some(soak),
        })
    }
}

/// The soak cluster's Nodes: one per agent.
fn soak_nodes(config: &RunConfig) -> usize {
    config.clients.max(1)
}

/// The soak's rounds, and the figures over them.
async fn soak_rounds(phase: &mut Phase<'_>) -> anyhow::Result<SoakFigures> {
    let config = phase.config;
    let interval = Duration::from_secs_f64(config.soak_kill_interval_seconds);
    let rounds =
        ((config.duration_seconds / config.soak_kill_interval_seconds).round() as usize).max(1);
    let typha_rss_start_bytes = typha_rss(phase.stack);
    let counters_before = phase.stack.counter_totals().await;
    let before = phase.fleet.counters();
    let operations_before = phase.churn.stats.operations;
    let mut per_round: Vec<SoakRound> = Vec::with_capacity(rounds);
    let mut typha_rss_by_round = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        per_round.push(soak_round(phase, round, rounds, interval).await?);
        typha_rss_by_round.push(typha_rss(phase.stack));
    }
    let churned = phase.churn.stats.operations - operations_before;
    phase.churn.stats.achieved_rate = churned as f64 / (interval.as_secs_f64() * rounds as f64);
    let over = phase.fleet.counters().since(&before);
    let mut replica_counters = phase.stack.counter_totals().await;
    for (key, value) in replica_counters.iter_mut() {
        *value -= counters_before.get(key).copied().unwrap_or(0.0);
    }
    replica_counters.retain(|_, v| *v != 0.0);
    let max = |f: fn(&SoakRound) -> f64| per_round.iter().map(f).fold(0.0, f64::max);
    Ok(SoakFigures {
        rounds: per_round.len(),
        discovery: phase.stack.targets().to_string(),
        nodes: soak_nodes(config),
        replica_counters,
        kill_interval_seconds: interval.as_secs_f64(),
        digest_mismatches: per_round.iter().map(|r| r.digests_differ.len()).sum(),
        client_digest_mismatches: over.digest_mismatches,
        reconnects: over.reconnects,
        resumes: over.resumes,
        snapshots: over.snapshots,
        max_reconverge_seconds: max(|r| r.restart.reconverge_seconds),
        max_barrier_seconds: max(|r| r.barrier_seconds),
        typha_rss_start_bytes,
        typha_rss_end_bytes: typha_rss(phase.stack),
        typha_rss_by_round,
        per_round,
    })
}

/// One round: churn with an outage halfway, a barrier, and the digests compared.
async fn soak_round(
    phase: &mut Phase<'_>,
    round: usize,
    rounds: usize,
    interval: Duration,
) -> anyhow::Result<SoakRound> {
    // Kill then roll the same replica, then the next replica.
    let mode = if round % 2 == 1 {
        RestartMode::Kill
    } else {
        RestartMode::Roll
    };
    let replica = ((round - 1) / 2) % phase.stack.replicas.len().max(1);
    let (fleet, probe, progress) = (phase.fleet, phase.probe, phase.progress);
    progress.set(format!("soak round {round}/{rounds}: churn"));
    let churning = phase.churn.run(phase.config.rate, interval);
    let mut outage = Outage {
        stack: phase.stack,
        fleet,
        probe,
        progress,
        marks: phase.marks,
    };
    let (churned, stormed) = tokio::join!(churning, outage.restart((replica, mode), interval / 2));
    churned?;
    let restart = stormed?;
    progress.set(format!("soak round {round}/{rounds}: barrier and digests"));
    let (barrier, barrier_seconds) = barrier(phase, round).await?;
    let (digests_compared, digests_differ) = compare_live(phase, barrier).await?;
    let verdict = if digests_differ.is_empty() {
        "digests equal".to_string()
    } else {
        format!("{} DIGESTS DIFFER", digests_differ.len())
    };
    phase
        .marks
        .push((progress.t(), format!("round {round}: {verdict}")));
    eprintln!(
        "[soak {:>6.1}s] round {round}/{rounds}: {mode:?} typha-{replica}, in sync again after {:.2} s, barrier {:.2} s, {verdict}",
        progress.t(),
        restart.reconverge_seconds,
        barrier_seconds
    );
    Ok(SoakRound {
        round,
        restart,
        barrier_seconds,
        digests_compared,
        digests_differ,
        t: progress.t(),
    })
}

/// A barrier, and how long until every client (and the pinned reference clients) had it.
async fn barrier(phase: &mut Phase<'_>, round: usize) -> anyhow::Result<(u64, f64)> {
    let barrier = phase.churn.barrier().await?;
    let barrier_seconds = phase
        .fleet
        .wait_until(phase.probe, SYNC_LIMIT, |c| c.converged(barrier))
        .await
        .with_context(|| format!("soak round {round}: the clients at barrier {barrier}"))?
        .as_secs_f64();
    phase
        .refs
        .wait_until(phase.probe, SYNC_LIMIT, |c| c.converged(barrier))
        .await
        .with_context(|| format!("soak round {round}: the pinned reference clients"))?;
    Ok((barrier, barrier_seconds))
}

/// Every live client's digest (clients and pinned reference clients) against a fresh
/// reference client's at `barrier`: how many were compared, and who differed.
async fn compare_live(phase: &Phase<'_>, barrier: u64) -> anyhow::Result<(usize, Vec<String>)> {
    let reference = reference_digest(phase.stack, phase.probe, barrier).await?;
    let mut live = phase.fleet.live_digests().await?;
    live.extend(phase.refs.live_digests().await?);
    let differ = live
        .iter()
        .filter(|(_, d)| *d != reference)
        .map(|(name, _)| name.clone())
        .collect();
    Ok((live.len(), differ))
}
