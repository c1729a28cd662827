//! The load test's report: every figure of every scenario plus the configuration, as
//! JSON (`--report`), a readable table on stdout, and the goals of the load-test issue
//! with how far each measured figure is from its target.
//!
//! Every field is always present (null where a scenario does not measure it), so that
//! consumers and the tests can rely on the shape.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::churn::ChurnStats;
use crate::fleet::FleetCounters;
use crate::latency::{Percentiles, SecondPoint};
use crate::pinning::CpuList;
use crate::procs::ProcStats;
use crate::rawnet::RawResult;
use crate::stack::RestartMode;

mod goals;
mod print;

pub use goals::{API_GOAL_CLIENTS, GOAL_CLIENTS, Goal, MEMORY_NOISE_BYTES, per_client_memory};

/// The run's configuration (what the flags resolved to).
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    /// Scenarios run, in order.
    pub scenarios: Vec<String>,
    /// Clients per scenario.
    pub clients: usize,
    /// Nodes of the synthetic cluster.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// NetworkPolicies per namespace.
    pub policies: usize,
    /// Nodes of the cold-start cluster.
    pub cold_nodes: usize,
    /// Pods per node of the cold-start cluster.
    pub cold_pods_per_node: usize,
    /// Churn writes per second.
    pub rate: u32,
    /// Churn duration, seconds.
    pub duration_seconds: f64,
    /// typha replicas (the restart scenario uses at least 2).
    pub replicas: usize,
    /// How the restart scenario takes a replica down.
    pub restart_mode: RestartMode,
    /// Share of clients that are slow or stalled in the slow scenario.
    pub slow_share: f64,
    /// Pause of slow clients after each event, ms.
    pub slow_pause_ms: u64,
    /// typha's --write-timeout in the slow scenario, seconds.
    pub slow_write_timeout_seconds: f64,
    /// Whether the raw loopback baseline ran after steady.
    pub raw_baseline: bool,
    /// The soak takes a replica down this often, seconds.
    pub soak_kill_interval_seconds: f64,
    /// An existing API server's kubeconfig instead of kube-sim (real-cluster mode).
    pub kubeconfig: Option<String>,
    /// Running typha replicas used instead of local ones.
    pub typha_addrs: Vec<String>,
    /// The namespace churn writes service accounts in, against an existing API server.
    pub churn_namespace: Option<String>,
    /// CPUs kube-sim, the replicas and the raw writer were pinned to (empty: not pinned).
    pub typha_cpus: CpuList,
    /// CPUs the load generator was pinned to (empty: not pinned).
    pub agent_cpus: CpuList,
    /// Worker processes the agents ran in.
    pub agent_workers: usize,
    /// The command line.
    pub command: String,
}

/// Where and with what the run was made, so that figures can be compared across runs.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    /// The loadtest (workspace) version.
    pub version: String,
    /// The git commit of the source tree, if it could be read.
    pub git_commit: Option<String>,
    /// CPUs online.
    pub cpus: usize,
    /// The kernel release.
    pub kernel: String,
    /// CPUs typha and kube-sim were pinned to (empty: not pinned).
    pub typha_cpus: CpuList,
    /// CPUs the load generator runs on (its affinity when the run started).
    pub agent_cpus: CpuList,
    /// Whether typha and the generator ran on disjoint CPU sets.
    pub isolated: bool,
}

impl Environment {
    /// This machine and process, for a run configured as `config`.
    pub fn of_this_run(config: &RunConfig) -> Environment {
        let agents = crate::pinning::current();
        let isolated = !config.typha_cpus.is_empty()
            && !config.agent_cpus.is_empty()
            && config.typha_cpus.0.iter().all(|c| !agents.0.contains(c));
        Environment {
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: git_commit(),
            cpus: crate::pinning::online(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_string())
                .unwrap_or_default(),
            typha_cpus: config.typha_cpus.clone(),
            agent_cpus: agents,
            isolated,
        }
    }
}

/// The commit of the tree this binary was built from (asked of git at run time, in the
/// crate's source directory).
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// typha's own share over a scenario's run phase (all local replicas): its CPU against
/// the bytes it delivered, and how far behind its sessions ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TyphaShare {
    /// typha CPU seconds over the run phase.
    pub cpu_seconds: f64,
    /// Bytes typha wrote over the run phase (TLS to clients, requests upstream).
    pub bytes_written: u64,
    /// CPU microseconds per KiB delivered.
    pub cpu_us_per_kib: f64,
    /// Mean time from a revision to a client's stream (typha_fanout_latency_seconds), ms.
    pub fanout_latency_mean_ms: f64,
    /// Mean batches a session was behind when it wrote (typha_client_lag_batches).
    pub client_lag_batches_mean: f64,
    /// Deltas coalesced for sessions that fell behind, over the scenario.
    pub coalesced: f64,
}

/// The load generator's own cost: what simulating the agents took.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GeneratorFigures {
    /// CPU seconds of the agent worker processes over the whole scenario (their lives:
    /// TLS handshakes, snapshots, every write), summed over the workers.
    pub cpu_seconds: f64,
    /// Agents (clients).
    pub agents: usize,
    /// Writes churn made.
    pub writes: u64,
    /// Worker CPU microseconds per agent per write.
    pub cpu_us_per_agent_per_write: f64,
    /// Worker processes the agents ran in.
    pub processes: usize,
    /// CPU seconds of the loadtest process itself over the scenario (churn writer,
    /// reference clients, sampling), not counted above.
    pub harness_cpu_seconds: f64,
}

/// One process's figures over a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessFigures {
    /// `kube-sim`, `typha-<i>` or `client-process`.
    pub name: String,
    /// Its PID (the last incarnation's, for restarted replicas).
    pub pid: u32,
    /// CPU seconds (user + system) over the scenario.
    pub cpu_seconds: f64,
    /// Peak RSS, bytes.
    pub peak_rss_bytes: u64,
    /// RSS at the end, bytes.
    pub rss_bytes: u64,
    /// Bytes written (all write syscalls: sockets, logs).
    pub bytes_written: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// The CPUs it was allowed to run on, where it reported them (agent workers).
    pub cpus: CpuList,
}

impl ProcessFigures {
    /// From counters.
    pub fn new(name: &str, pid: u32, stats: &ProcStats) -> ProcessFigures {
        ProcessFigures {
            name: name.to_string(),
            pid,
            cpu_seconds: stats.cpu_seconds,
            peak_rss_bytes: stats.peak_rss_bytes,
            rss_bytes: stats.rss_bytes,
            bytes_written: stats.bytes_written,
            bytes_read: stats.bytes_read,
            cpus: CpuList::default(),
        }
    }
}

/// Snapshot figures scraped from typha's /metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotFigures {
    /// Keys in the snapshot.
    pub keys: f64,
    /// Snapshots built (all replicas).
    pub builds: f64,
    /// Mean build time, seconds.
    pub build_seconds_mean: f64,
    /// Raw bytes of the latest snapshot.
    pub raw_bytes: f64,
    /// Compressed bytes of the latest snapshot.
    pub compressed_bytes: f64,
    /// raw / compressed.
    pub ratio: f64,
}

/// typha's memory per connected client.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TyphaMemory {
    /// RSS of all replicas with one reference client each (snapshot built), bytes.
    pub base_rss_bytes: u64,
    /// RSS with every client connected, in sync and idle, bytes.
    pub loaded_rss_bytes: u64,
    /// (loaded - base) / clients, bytes.
    pub per_client_bytes: f64,
}

/// Bytes on the wire.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ByteFigures {
    /// Everything kube-sim wrote.
    pub api_sent_total: u64,
    /// What kube-sim sent to the load test's churn writer.
    pub api_sent_to_writer: u64,
    /// What kube-sim sent to its watchers (typha, or the direct clients): total - writer.
    pub api_sent_to_watchers: u64,
    /// What the typha replicas wrote (TLS to clients, requests upstream).
    pub typha_written: u64,
    /// typha bytes written per client over the scenario.
    pub typha_written_per_client: f64,
}

/// Drops, resyncs and resumes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EventFigures {
    /// typha's dropped connections by reason (all replicas).
    pub drops: BTreeMap<String, f64>,
    /// typha's resumed sessions (all replicas).
    pub server_resumes: f64,
    /// typha's coalesced deltas (slow clients catching up).
    pub coalesced: f64,
    /// The fleet's counters since it started.
    pub fleet: FleetCounters,
    /// Snapshots beyond each client's first.
    pub resyncs: u64,
}

/// The restart scenario's figures.
#[derive(Clone, Debug, Serialize)]
pub struct RestartFigures {
    /// Kill or roll.
    pub mode: RestartMode,
    /// The replica taken down.
    pub replica: String,
    /// Clients that lost their connection.
    pub clients_disconnected: usize,
    /// From the signal until the replica was ready again, seconds.
    pub replica_back_seconds: f64,
    /// From the signal until every client was in sync again, seconds.
    pub reconverge_seconds: f64,
    /// Reconnects, snapshots and resumes during the storm.
    pub storm: FleetCounters,
    /// Where the clients were once all were in sync again: each local replica's
    /// connections, less its pinned reference client (a replica that did not answer is
    /// absent).
    pub clients_by_replica: BTreeMap<String, u64>,
}

/// One soak round: a replica taken down while churn runs, then a barrier and every
/// client's digest compared with a fresh reference client's.
#[derive(Clone, Debug, Serialize)]
pub struct SoakRound {
    /// 1-based.
    pub round: usize,
    /// The replica's outage (mode, clients disconnected, reconvergence, storm counters).
    pub restart: RestartFigures,
    /// From the barrier write until every client had it, seconds.
    pub barrier_seconds: f64,
    /// Digests compared (clients and pinned reference clients).
    pub digests_compared: usize,
    /// Clients whose digest differed from the fresh reference client's.
    pub digests_differ: Vec<String>,
    /// Seconds since the scenario started, at the end of the round.
    pub t: f64,
}

/// The soak scenario's figures.
#[derive(Clone, Debug, Serialize)]
pub struct SoakFigures {
    /// Rounds completed.
    pub rounds: usize,
    /// Where the agents found the replicas (the Service's EndpointSlices, or addresses).
    pub discovery: String,
    /// Nodes of the soak's cluster: one per agent (typha's rebalancer sizes each
    /// replica's share from the Node count), the configured pods spread over them.
    pub nodes: usize,
    /// The replicas' session starts over the soak, summed over replicas and their
    /// incarnations (`typha_resumes_total{kind}`, `typha_resume_refusals_total{reason}`,
    /// `typha_snapshots_sent_total`; series that did not move are left out).
    pub replica_counters: std::collections::BTreeMap<String, f64>,
    /// How often a replica was taken down, seconds.
    pub kill_interval_seconds: f64,
    /// Client digests that differed from the round's reference, summed over rounds
    /// (the goal is zero).
    pub digest_mismatches: usize,
    /// Digest mismatches the clients detected themselves (their counters), over the soak.
    pub client_digest_mismatches: u64,
    /// Reconnects over the soak.
    pub reconnects: u64,
    /// Sessions resumed without a snapshot over the soak.
    pub resumes: u64,
    /// Snapshots received over the soak.
    pub snapshots: u64,
    /// The slowest round's reconvergence after its outage, seconds.
    pub max_reconverge_seconds: f64,
    /// The slowest round's barrier convergence, seconds.
    pub max_barrier_seconds: f64,
    /// typha RSS (all replicas) when the soak started, bytes.
    pub typha_rss_start_bytes: u64,
    /// typha RSS (all replicas) when it ended, bytes. Replicas restart during the soak:
    /// compare with the per-round figures, not as one process's growth.
    pub typha_rss_end_bytes: u64,
    /// typha RSS after each round, bytes.
    pub typha_rss_by_round: Vec<u64>,
    /// Every round.
    pub per_round: Vec<SoakRound>,
}

/// The raw loopback baseline.
#[derive(Clone, Debug, Serialize)]
pub struct RawFigures {
    /// What the raw writer did.
    pub raw: RawResult,
    /// typha CPU seconds during churn (the fan-out being compared).
    pub typha_cpu_seconds: f64,
    /// typha bytes written during churn.
    pub typha_bytes: u64,
    /// typha CPU / raw CPU.
    pub ratio: f64,
}

/// Connections per replica at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionPoint {
    /// Seconds since the scenario started.
    pub t: f64,
    /// typha_connections_active per replica (null while a replica is down).
    pub per_replica: Vec<Option<f64>>,
}

/// Time series for the plot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// Latency by the second the change was written.
    pub latency: Vec<SecondPoint>,
    /// Connections per replica about twice a second.
    pub connections: Vec<ConnectionPoint>,
    /// Seconds at which notable things happened (churn start/end, kill, ...).
    pub marks: Vec<(f64, String)>,
}

/// One scenario's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    /// steady, cold-start, restart, slow or direct.
    pub name: String,
    /// Clients.
    pub clients: usize,
    /// typha replicas (0 for direct).
    pub replicas: usize,
    /// Objects kube-sim seeded.
    pub api_objects: u64,
    /// Wall seconds of the whole scenario (setup included).
    pub wall_seconds: f64,
    /// From starting the clients until every one was in sync (typha) or watching every
    /// collection (direct), seconds.
    pub initial_sync_seconds: f64,
    /// From the end of churn (or the initial sync) until every client had the barrier.
    pub converge_seconds: f64,
    /// Whether every client converged.
    pub converged: bool,
    /// Client digests equal to the replica's (a fresh client's verified snapshot).
    pub digests_equal: usize,
    /// Digests compared.
    pub digests_total: usize,
    /// Clients whose digest differed from the replica's (node names).
    pub digests_differ: Vec<String>,
    /// Churn.
    pub churn: ChurnStats,
    /// Propagation latency of normal clients, ms.
    pub latency_ms: Percentiles,
    /// Propagation latency of slow clients, ms.
    pub slow_latency_ms: Percentiles,
    /// The latency distribution of normal clients: (ms, share of samples at or below),
    /// one point per non-empty histogram bucket (the CDF plot).
    pub latency_cdf: Vec<(f64, f64)>,
    /// Snapshot figures.
    pub snapshot: Option<SnapshotFigures>,
    /// typha memory per client.
    pub typha_memory: Option<TyphaMemory>,
    /// Bytes.
    pub bytes: ByteFigures,
    /// Drops, resyncs, resumes.
    pub events: EventFigures,
    /// Restart figures.
    pub restart: Option<RestartFigures>,
    /// Soak figures.
    pub soak: Option<SoakFigures>,
    /// Raw loopback baseline.
    pub raw_baseline: Option<RawFigures>,
    /// typha's own CPU per delivered byte and lag over the run phase (local replicas).
    pub typha_share: Option<TyphaShare>,
    /// The load generator's own CPU per agent per write.
    pub generator: GeneratorFigures,
    /// Per-process CPU, memory and bytes.
    pub processes: Vec<ProcessFigures>,
    /// Time series.
    pub series: Series,
}

impl ScenarioReport {
    /// A report of `clients` clients with nothing measured yet (the scenario fills it in).
    pub fn empty(clients: usize) -> ScenarioReport {
        ScenarioReport {
            name: String::new(),
            clients,
            replicas: 0,
            api_objects: 0,
            wall_seconds: 0.0,
            initial_sync_seconds: 0.0,
            converge_seconds: 0.0,
            converged: false,
            digests_equal: 0,
            digests_total: 0,
            digests_differ: Vec::new(),
            churn: ChurnStats::default(),
            latency_ms: Percentiles::default(),
            slow_latency_ms: Percentiles::default(),
            latency_cdf: Vec::new(),
            snapshot: None,
            typha_memory: None,
            bytes: ByteFigures::default(),
            events: EventFigures::default(),
            restart: None,
            soak: None,
            raw_baseline: None,
            typha_share: None,
            generator: GeneratorFigures::default(),
            processes: Vec::new(),
            series: Series::default(),
        }
    }
}

/// typha against the direct baseline (both in this run).
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// API bytes to watchers with typha (steady).
    pub api_bytes_with_typha: u64,
    /// API bytes to watchers without (direct).
    pub api_bytes_direct: u64,
    /// with / direct.
    pub bytes_ratio: f64,
    /// kube-sim CPU seconds with typha (steady).
    pub api_cpu_with_typha: f64,
    /// kube-sim CPU seconds without (direct).
    pub api_cpu_direct: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Configuration.
    pub config: RunConfig,
    /// Version, commit, machine and CPU pinning.
    pub environment: Environment,
    /// Scenarios in run order.
    pub scenarios: Vec<ScenarioReport>,
    /// typha vs direct, when both ran.
    pub comparison: Option<Comparison>,
    /// The goals.
    pub goals: Vec<Goal>,
}
