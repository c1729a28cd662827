//! The reconnect storm: every client on one replica (typha-0), which is killed (SIGKILL)
//! a third of the way through churn; measured is the time until every client is back in
//! sync, with the storm's resumes and snapshots counted. At 5,000 clients this is the
//! "reconnect storm converged in at most 10 s with 0 snapshots" goal.
//!
//! The agents find typha as real ones do, through the Service's EndpointSlices, and the
//! replicas do not rebalance (started without the Service's flags). Only typha-0 is
//! published until every agent is in sync on it; then the others are, and the storm
//! waits until the agents' positions passed their resume floors (a replica that listed
//! later has a higher floor, issue 17) before it kills typha-0. Its slice is withdrawn
//! just before the kill and published again only once every agent is back in sync
//! elsewhere, so the agents resume on the replicas whose history covers them instead of
//! snapshotting from a fresh typha-0.
//!
//! Against an existing API server (no kube-sim to publish slices in) the agents get
//! typha-0's address alone, as before discovery, and can only come back to it.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::report::RunConfig;
use crate::stack::{RestartMode, Stack, StackConfig, TyphaTargets, passed_floor};

use super::common::SYNC_LIMIT;
use super::restart::churn_with_outage;
use super::{Findings, Phase, Target, TyphaScenario, default_setup};

/// Every client on one replica, which is killed.
pub struct Storm;

impl TyphaScenario for Storm {
    fn name(&self) -> &'static str {
        "storm"
    }

    fn setup(&self, config: &RunConfig, target: &Target) -> StackConfig {
        StackConfig {
            service: true,
            rebalance: false,
            hold_back: true,
            ..default_setup(config, target, config.replicas.max(2))
        }
    }

    fn targets(&self, stack: &Stack) -> TyphaTargets {
        match stack.targets() {
            service @ TyphaTargets::Service { .. } => service,
            TyphaTargets::Addresses(addresses) => {
                TyphaTargets::Addresses(addresses.into_iter().take(1).collect())
            }
        }
    }

    async fn run(&self, mut phase: Phase<'_>) -> anyhow::Result<Findings> {
        phase.progress.set("publishing the other replicas");
        phase.stack.publish_held().await?;
        wait_covered(&mut phase).await?;
        phase.stack.hold(0);
        let findings = churn_with_outage(&mut phase, (0, RestartMode::Kill)).await?;
        phase.stack.publish_held().await?;
        Ok(findings)
    }
}

/// Waits until the clients on typha-0 would be resumed on every other replica: each
/// one's resume floor at or below typha-0's version for every resource (bookmarks carry
/// typha-0 past the floors), then a barrier every client has, which proves they applied
/// that progress too (a replica publishes in order).
async fn wait_covered(phase: &mut Phase<'_>) -> anyhow::Result<()> {
    phase
        .progress
        .set("waiting until the other replicas' history covers the clients");
    let started = Instant::now();
    while let Err(why) = covered(phase.stack).await {
        anyhow::ensure!(
            started.elapsed() < SYNC_LIMIT,
            "the other replicas' resume floors stayed above typha-0 for {SYNC_LIMIT:?}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let barrier = phase.churn.barrier().await?;
    phase
        .fleet
        .wait_until(phase.probe, SYNC_LIMIT, |c| c.converged(barrier))
        .await
        .context("the clients at the barrier before the storm")?;
    phase
        .marks
        .push((phase.progress.t(), "others cover the clients".to_string()));
    Ok(())
}

/// Whether typha-0 is past every other replica's resume floor (else what is not yet).
async fn covered(stack: &Stack) -> Result<(), String> {
    let scrape = |i: usize| async move {
        stack
            .scrape(i)
            .await
            .map_err(|e| format!("typha-{i} does not answer: {e:#}"))
    };
    let serving = scrape(0).await?;
    for i in 1..stack.replicas.len() {
        passed_floor(&serving, &scrape(i).await?).map_err(|why| format!("typha-{i}: {why}"))?;
    }
    Ok(())
}
