//! Replica restart: churn runs while, a third of the way in, a replica is killed
//! (SIGKILL) or rolled (SIGTERM, drain), started again on the same ports, and the time
//! until every client is in sync again is measured with the storm's reconnects,
//! snapshots and resumes. Runs at least two replicas, so clients have somewhere to go.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fleet::Fleet;
use crate::probe::Probe;
use crate::report::{RestartFigures, RunConfig};
use crate::stack::{RestartMode, Stack, StackConfig};

use super::common::SYNC_LIMIT;
use super::{Findings, Phase, Progress, Target, TyphaScenario, default_setup};

/// A replica is killed or rolled while churn runs.
pub struct Restart;

impl TyphaScenario for Restart {
    fn name(&self) -> &'static str {
        "restart"
    }

    fn setup(&self, config: &RunConfig, target: &Target) -> StackConfig {
        default_setup(config, target, config.replicas.max(2))
    }

    async fn run(&self, mut phase: Phase<'_>) -> anyhow::Result<Findings> {
        let mode = phase.config.restart_mode;
        churn_with_outage(&mut phase, (0, mode)).await
    }
}

/// Churns for the configured duration while `replica` goes down a third of the way in.
pub(super) async fn churn_with_outage(
    phase: &mut Phase<'_>,
    replica: (usize, RestartMode),
) -> anyhow::Result<Findings> {
    let Phase {
        config,
        stack,
        fleet,
        probe,
        churn,
        progress,
        marks,
        ..
    } = phase;
    let (config, progress) = (*config, *progress);
    progress.set(format!(
        "churn {}/s for {:.0}s",
        config.rate, config.duration_seconds
    ));
    marks.push((progress.t(), "churn start".to_string()));
    let duration = Duration::from_secs_f64(config.duration_seconds);
    let mut outage = Outage {
        stack,
        fleet,
        probe,
        progress,
        marks,
    };
    let churning = churn.run(config.rate, duration);
    let storm = outage.restart(replica, duration / 3);
    let (churned, stormed) = tokio::join!(churning, storm);
    churned?;
    let restart = stormed?;
    outage.marks.push((progress.t(), "churn end".to_string()));
    Ok(Findings {
        restart: Some(restart),
        soak: None,
    })
}

/// What taking a replica down works with.
pub(super) struct Outage<'a> {
    pub(super) stack: &'a mut Stack,
    pub(super) fleet: &'a Fleet,
    pub(super) probe: &'a Probe,
    pub(super) progress: &'a Progress,
    pub(super) marks: &'a mut Vec<(f64, String)>,
}

impl Outage<'_> {
    /// Takes replica `i` down after `delay` (kill or roll), brings it back, and measures
    /// how long until every client is in sync again.
    pub(super) async fn restart(
        &mut self,
        (i, mode): (usize, RestartMode),
        delay: Duration,
    ) -> anyhow::Result<RestartFigures> {
        tokio::time::sleep(delay).await;
        let replica = format!("typha-{i}");
        // The clients about to lose their replica (less its pinned reference client).
        let on_replica = self.clients_on(i).await.unwrap_or(0);
        let before = self.fleet.counters();
        self.progress.set(format!("restart: {mode:?} {replica}"));
        self.mark(format!("{mode:?} {replica}").to_lowercase());
        let signalled = Instant::now();
        let back = self.stack.restart_replica(i, mode).await?;
        self.mark(format!("{replica} back"));
        self.reconverged(&before, on_replica, signalled).await?;
        let reconverge = signalled.elapsed();
        self.mark("all in sync again".to_string());
        let storm = self.fleet.counters().since(&before);
        Ok(RestartFigures {
            mode,
            replica,
            clients_disconnected: on_replica as usize,
            replica_back_seconds: back.as_secs_f64(),
            reconverge_seconds: reconverge.as_secs_f64(),
            storm,
            clients_by_replica: self.clients_by_replica().await,
        })
    }

    /// Replica `i`'s clients: its connections less its pinned reference client (`None`
    /// when it does not answer).
    async fn clients_on(&self, i: usize) -> Option<u64> {
        let scrape = self.stack.scrape(i).await.ok()?;
        Some((scrape.sum("typha_connections_active") as u64).saturating_sub(1))
    }

    /// Each answering local replica's [`Outage::clients_on`]. A replica that does not
    /// answer is left out, not counted as 0 (which would read as "no clients there").
    async fn clients_by_replica(&self) -> BTreeMap<String, u64> {
        let mut by_replica = BTreeMap::new();
        for (i, replica) in self.stack.replicas.iter().enumerate() {
            if let Some(clients) = self.clients_on(i).await {
                by_replica.insert(replica.name.clone(), clients);
            }
        }
        by_replica
    }

    fn mark(&mut self, what: String) {
        self.marks.push((self.progress.t(), what));
    }

    /// Converged again once every one of them has reconnected and every client is in
    /// sync (a client may not have noticed the loss yet when the replica is back).
    async fn reconverged(
        &self,
        before: &crate::fleet::FleetCounters,
        on_replica: u64,
        signalled: Instant,
    ) -> anyhow::Result<()> {
        let fleet = self.fleet;
        loop {
            let notified = self.probe.barrier_reached.notified();
            let reconnected = fleet.counters().since(before).reconnects;
            if reconnected >= on_replica && fleet.in_sync() == fleet.len() {
                return Ok(());
            }
            anyhow::ensure!(
                signalled.elapsed() < SYNC_LIMIT,
                "{reconnected} of {on_replica} clients reconnected, {} of {} in sync after {SYNC_LIMIT:?}",
                fleet.in_sync(),
                fleet.len()
            );
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}
