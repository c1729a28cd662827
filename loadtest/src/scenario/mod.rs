//! The scenarios: steady churn, cold start, replica restart, slow clients, the reconnect
//! storm and the soak (typha replicas as child processes, the client fleet in this
//! process), and the direct baseline without typha. Each starts its own servers, so
//! per-process figures belong to one scenario; the client process's CPU is measured as a
//! delta and its peak RSS is reset at the start (where the kernel allows).
//!
//! Every typha scenario is one module implementing [`TyphaScenario`]: its setup (the
//! servers it needs and how each client reads), what it runs between the fleet's initial
//! sync and the final barrier, and what it adds to the report. The shared sequence
//! (reference clients, fleet, initial sync, barrier, digests, figures) is
//! [`driver`]'s; a new scenario is one file plus a variant of [`Scenario`].
//!
//! In real-cluster mode ([`Target`]) the API server and possibly the replicas already
//! exist: churn writes service accounts in one namespace, nothing is seeded, and the
//! scenarios that must kill replicas refuse external ones.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::churn::Churn;
use crate::fleet::{Behaviour, Fleet};
use crate::probe::Probe;
use crate::procs::ProcStats;
use crate::report::{RestartFigures, RunConfig, ScenarioReport, SoakFigures};
use crate::stack::{ExternalTypha, Stack, StackConfig, TyphaTargets};

pub mod common;
pub mod driver;

mod cold_start;
mod direct;
mod restart;
mod slow;
mod soak;
mod steady;
mod storm;

pub use common::Progress;

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
    /// Every client on one replica, which is killed while churn runs: the reconnect
    /// storm, with resumes and snapshots counted (not part of `all`).
    Storm,
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
        matches!(self, Scenario::Restart | Scenario::Soak | Scenario::Storm)
    }

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
            Scenario::Storm => "storm",
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

/// Runs one scenario against kube-sim and local replicas, or what `target` names.
pub async fn run(
    scenario: Scenario,
    config: &RunConfig,
    target: &Target,
) -> anyhow::Result<ScenarioReport> {
    anyhow::ensure!(
        !(scenario.kills_replicas() && target.external.is_some()),
        "the {} scenario kills and restarts replicas, which it cannot do to the running ones of --typha-addr",
        scenario.name()
    );
    match scenario {
        Scenario::Steady => driver::run(&steady::Steady, config, target).await,
        Scenario::ColdStart => driver::run(&cold_start::ColdStart, config, target).await,
        Scenario::Restart => driver::run(&restart::Restart, config, target).await,
        Scenario::Slow => driver::run(&slow::Slow, config, target).await,
        Scenario::Soak => driver::run(&soak::Soak, config, target).await,
        Scenario::Storm => driver::run(&storm::Storm, config, target).await,
        Scenario::Direct => direct::run(config, target).await,
        Scenario::All => anyhow::bail!("expand `all` first"),
    }
}

/// The servers a scenario needs: the run's synthetic cluster and `replicas` replicas
/// (local ones unless `target` names running ones).
pub fn default_setup(config: &RunConfig, target: &Target, replicas: usize) -> StackConfig {
    StackConfig {
        nodes: config.nodes,
        pods_per_node: config.pods_per_node,
        namespaces: config.namespaces,
        policies: config.policies,
        replicas,
        typha_args: Vec::new(),
        kubeconfig: target.kubeconfig.clone(),
        external: target.external.clone(),
        service: false,
        rebalance: false,
        hold_back: false,
    }
}

/// What a scenario's run phase found, for the report.
#[derive(Default)]
pub struct Findings {
    /// A replica's outage and the clients' reconvergence.
    pub restart: Option<RestartFigures>,
    /// The soak's rounds.
    pub soak: Option<SoakFigures>,
}

/// What the run phase works with: everything started, every client in sync.
pub struct Phase<'a> {
    /// The run's configuration.
    pub config: &'a RunConfig,
    /// kube-sim and the replicas.
    pub stack: &'a mut Stack,
    /// The clients.
    pub fleet: &'a Fleet,
    /// One reference client pinned to each replica.
    pub refs: &'a Fleet,
    /// Latency and barrier notifications.
    pub probe: &'a Arc<Probe>,
    /// The writer.
    pub churn: &'a mut Churn,
    /// Progress printing.
    pub progress: &'a Progress,
    /// Notable moments for the plot.
    pub marks: &'a mut Vec<(f64, String)>,
}

/// What the report phase works with: the clients are stopped, their digests compared.
pub struct Done<'a> {
    /// The run's configuration.
    pub config: &'a RunConfig,
    /// kube-sim and the replicas.
    pub stack: &'a mut Stack,
    /// Progress printing.
    pub progress: &'a Progress,
    /// Each replica's counters before the run phase.
    pub before_run: &'a [ProcStats],
    /// Each replica's counters after it.
    pub after_run: &'a [ProcStats],
}

/// One scenario against typha replicas: setup, run, and what to report.
pub trait TyphaScenario {
    /// The name used in reports.
    fn name(&self) -> &'static str;

    /// Setup: the servers this scenario needs (one replica, the run's cluster, unless
    /// overridden).
    fn setup(&self, config: &RunConfig, target: &Target) -> StackConfig {
        default_setup(config, target, config.replicas.max(1))
    }

    /// Setup: how client `i` reads its events (`release` unblocks stalled ones).
    fn behaviour(&self, _i: usize, _config: &RunConfig, _release: &CancellationToken) -> Behaviour {
        Behaviour::Normal
    }

    /// Setup: where the clients find the replicas (the stack's Service when it
    /// publishes one, else all addresses, unless overridden).
    fn targets(&self, stack: &Stack) -> TyphaTargets {
        stack.targets()
    }

    /// Run: what happens between the fleet's initial sync and the final barrier.
    fn run(&self, phase: Phase<'_>) -> impl Future<Output = anyhow::Result<Findings>>;

    /// What to report beyond the shared figures, once the clients are stopped.
    fn report(
        &self,
        _done: Done<'_>,
        _report: &mut ScenarioReport,
    ) -> impl Future<Output = anyhow::Result<()>> {
        async { Ok(()) }
    }
}

/// Churns at the configured rate for the configured duration.
pub async fn churn_for_duration(phase: &mut Phase<'_>) -> anyhow::Result<()> {
    let config = phase.config;
    phase.progress.set(format!(
        "churn {}/s for {:.0}s",
        config.rate, config.duration_seconds
    ));
    phase
        .marks
        .push((phase.progress.t(), "churn start".to_string()));
    phase
        .churn
        .run(
            config.rate,
            std::time::Duration::from_secs_f64(config.duration_seconds),
        )
        .await?;
    phase
        .marks
        .push((phase.progress.t(), "churn end".to_string()));
    Ok(())
}
