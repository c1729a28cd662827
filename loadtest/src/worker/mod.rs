//! Agents in worker processes: `loadtest agent-worker --spec FILE` runs M agents (each a
//! real mutual-TLS HTTP/2 sync client that decodes frames, keeps the compact mirror and
//! verifies the digest at every in-sync, see [`crate::fleet`]), and the scenarios start
//! N such workers instead of running every agent in the loadtest process, so that the
//! load generator uses as many cores as it is given and one worker's agents never wait
//! behind another's (each worker is its own process on a single-threaded runtime).
//!
//! The channel is the worker's stdin and stdout, one JSON object per line:
//! - parent -> worker ([`ToWorker`]): deletions as churn registers them (a deletion is
//!   timed by the pod's name, see [`crate::probe`]), release of stalled agents, a request
//!   for every live digest, stop (also when stdin closes: the parent is gone).
//! - worker -> parent ([`FromWorker`]): per-agent in-sync and barrier changes with the
//!   worker's summed counters (reconnects, snapshots, resumes, digest mismatches,
//!   batches), latency samples as sparse histogram deltas (the stamps are timed against
//!   the parent's CLOCK_MONOTONIC epoch, given in the spec), live digests on request,
//!   and at the end every agent's final mirror digest, its errors and the worker's own
//!   CPU and memory ([`crate::procs::ProcStats`]).
//!
//! Invariant: counters are read before the agents' states in every state message, and
//! a sync client marks itself out of sync before it counts the reconnect (on the same
//! thread: the worker's runtime is single-threaded), so a parent that sees a reconnect
//! counted also sees that agent's in-sync flag drop.

use edge::tls::TransportChoice;
use serde::{Deserialize, Serialize};
use typha_proto::Digest;

use crate::fleet::FleetCounters;
use crate::latency::SeriesDelta;
use crate::pinning::CpuList;
use crate::procs::ProcStats;
use crate::stack::TyphaTargets;

mod agents;
mod handle;

pub use agents::worker_main;
pub use handle::{AgentCell, Worker, WorkerPlan};

/// The agents per worker above which the default adds workers beyond one per CPU.
pub const AGENTS_PER_WORKER: usize = 1000;

/// The default number of workers: one per CPU the agents may use, and at least one per
/// [`AGENTS_PER_WORKER`] agents (so one worker's backlog is bounded), never more than
/// there are agents.
pub fn default_workers(agents: usize, agent_cpus: usize) -> usize {
    agent_cpus
        .max(1)
        .max(agents.div_ceil(AGENTS_PER_WORKER))
        .min(agents.max(1))
}

/// How an agent reads its events (the serializable form of [`crate::fleet::Behaviour`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentBehaviour {
    /// Reads at once.
    Normal,
    /// Pauses this many milliseconds after every event.
    Slow(u64),
    /// Reads nothing until released ([`ToWorker::Release`]).
    Stall,
    /// Reads at once and records no latency.
    Reference,
}

/// One agent of a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Node name.
    pub name: String,
    /// How it reads.
    pub behaviour: AgentBehaviour,
}

/// Everything a worker runs (written to a file; the command line names it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// The agents.
    pub agents: Vec<AgentSpec>,
    /// Where they find the replicas.
    pub typha: TyphaTargets,
    /// How they reach them.
    pub transport: TransportChoice,
    /// The parent probe's epoch (CLOCK_MONOTONIC nanoseconds).
    pub epoch_ns: u64,
    /// Seconds of the per-second latency series.
    pub latency_seconds: usize,
}

/// A message from the parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Churn registered the deletion of this pod, stamped so.
    Deleted(String, u64),
    /// Release the stalled agents.
    Release,
    /// Send every agent's live digest.
    Digests,
    /// Stop every agent and report the final digests.
    Stop,
}

/// A message to the parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Agents whose state changed, as (index, in sync, barrier), and the counters summed
    /// over the worker's agents (read before the states).
    State(Vec<(u32, bool, u64)>, FleetCounters),
    /// Latency samples since the last message: normal and slow agents.
    Latency(SeriesDelta, SeriesDelta),
    /// Every agent's live digest, in agent order (hex).
    Digests(Vec<String>),
    /// Stopped: every agent's final digest (hex) or its error, the worker's own
    /// figures over its life, and the CPUs it was allowed to run on.
    Stopped(Vec<Result<String, String>>, ProcStats, CpuList),
}

/// Parses a digest written by [`Digest`]'s `Display` (32 hex digits).
pub fn parse_digest(hex: &str) -> anyhow::Result<Digest> {
    let n = u128::from_str_radix(hex, 16).map_err(|e| anyhow::anyhow!("digest {hex:?}: {e}"))?;
    Digest::from_bytes(&n.to_be_bytes()).ok_or_else(|| anyhow::anyhow!("digest {hex:?}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_cpus_and_agents() {
        assert_eq!(default_workers(500, 2), 2);
        assert_eq!(default_workers(5000, 1), 5);
        assert_eq!(default_workers(200, 1), 1);
        assert_eq!(default_workers(1, 8), 1);
        assert_eq!(default_workers(0, 0), 1);
    }

    #[test]
    fn digests_round_trip_and_messages_are_lines() {
        let mut d = Digest::EMPTY;
        d.add(typha_proto::digest::EntryHash::of(b"x"));
        assert_eq!(parse_digest(&d.to_string()).unwrap(), d);
        assert!(parse_digest("zz").is_err());
        let msg = FromWorker::State(vec![(3, true, 7)], FleetCounters::default());
        let line = serde_json::to_string(&msg).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<FromWorker>(&line).unwrap(), msg);
    }
}
