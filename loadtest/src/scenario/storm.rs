//! The reconnect storm: every client connects to one replica (typha-0; other replicas
//! hold only their reference clients), which is killed (SIGKILL) a third of the way
//! through churn and started again; measured is the time until every client is back in
//! sync, with the storm's resumes and snapshots counted. At 5,000 clients this is the
//! "reconnect storm converged in at most 10 s with 0 snapshots" goal.

use crate::report::RunConfig;
use crate::stack::{RestartMode, Stack, StackConfig, TyphaTargets};

use super::restart::churn_with_outage;
use super::{Findings, Phase, Target, TyphaScenario, default_setup};

/// Every client on one replica, which is killed.
pub struct Storm;

impl TyphaScenario for Storm {
    fn name(&self) -> &'static str {
        "storm"
    }

    fn setup(&self, config: &RunConfig, target: &Target) -> StackConfig {
        default_setup(config, target, config.replicas.max(1))
    }

    fn targets(&self, stack: &Stack) -> TyphaTargets {
        TyphaTargets::Addresses(stack.addresses().into_iter().take(1).collect())
    }

    async fn run(&self, phase: Phase<'_>) -> anyhow::Result<Findings> {
        churn_with_outage(phase, (0, RestartMode::Kill)).await
    }
}
