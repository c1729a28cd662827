//! Slow clients: a share of the clients read slowly (half) or stall until churn ends
//! (half), against replicas with a short write timeout, so typha coalesces for the slow
//! ones and drops the stalled ones; the rest must not notice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::fleet::Behaviour;
use crate::report::RunConfig;
use crate::stack::StackConfig;

use super::{Findings, Phase, Target, TyphaScenario, churn_for_duration, default_setup};

/// Some clients read slowly or stall.
pub struct Slow;

impl TyphaScenario for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }

    fn setup(&self, config: &RunConfig, target: &Target) -> StackConfig {
        StackConfig {
            typha_args: vec![
                "--write-timeout".to_string(),
                format!("{}ms", (config.slow_write_timeout_seconds * 1000.0) as u64),
            ],
            ..default_setup(config, target, config.replicas.max(1))
        }
    }

    fn behaviour(&self, i: usize, config: &RunConfig, release: &CancellationToken) -> Behaviour {
        let slow = (config.clients as f64 * config.slow_share).round() as usize;
        match i {
            i if i < slow && i.is_multiple_of(2) => {
                Behaviour::Slow(Duration::from_millis(config.slow_pause_ms))
            }
            i if i < slow => Behaviour::Stall(release.clone()),
            _ => Behaviour::Normal,
        }
    }

    async fn run(&self, mut phase: Phase<'_>) -> anyhow::Result<Findings> {
        churn_for_duration(&mut phase).await?;
        Ok(Findings::default())
    }
}
