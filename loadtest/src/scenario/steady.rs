//! Steady churn: every client in sync, churn at the configured rate for the configured
//! duration, then the raw loopback baseline (what the same bytes cost typha's machine
//! written straight to sockets) when asked for and the replicas are local.

use crate::procs::ProcStats;
use crate::rawnet;
use crate::report::{RawFigures, ScenarioReport};

use super::{Done, Findings, Phase, TyphaScenario, churn_for_duration};

/// Churn at a steady rate.
pub struct Steady;

impl TyphaScenario for Steady {
    fn name(&self) -> &'static str {
        "steady"
    }

    async fn run(&self, mut phase: Phase<'_>) -> anyhow::Result<Findings> {
        churn_for_duration(&mut phase).await?;
        Ok(Findings::default())
    }

    async fn report(&self, done: Done<'_>, report: &mut ScenarioReport) -> anyhow::Result<()> {
        if !done.config.raw_baseline || done.stack.is_external() {
            return Ok(());
        }
        done.progress.set("raw loopback baseline");
        report.raw_baseline = Some(
            raw_baseline(
                done.before_run,
                done.after_run,
                done.config.clients + done.stack.replicas.len(),
                &done.stack.log_dir(),
            )
            .await?,
        );
        Ok(())
    }
}

/// Writes the bytes the replicas wrote during churn, in writes of their mean size, to
/// `connections` loopback sockets, and compares the CPU.
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
