//! Cold start: every client connects at once to a larger cluster (the cold-start
//! cluster size); nothing churns, the figures are the initial sync's.

use crate::report::RunConfig;
use crate::stack::StackConfig;

use super::{Findings, Phase, Target, TyphaScenario, default_setup};

/// Every client connects at once to a larger cluster.
pub struct ColdStart;

impl TyphaScenario for ColdStart {
    fn name(&self) -> &'static str {
        "cold-start"
    }

    fn setup(&self, config: &RunConfig, target: &Target) -> StackConfig {
        StackConfig {
            nodes: config.cold_nodes,
            pods_per_node: config.cold_pods_per_node,
            ..default_setup(config, target, config.replicas.max(1))
        }
    }

    async fn run(&self, _phase: Phase<'_>) -> anyhow::Result<Findings> {
        Ok(Findings::default())
    }
}
