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
use crate::procs::ProcStats;
use crate::rawnet::RawResult;
use crate::stack::RestartMode;

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
    /// The command line.
    pub command: String,
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
    /// Per-process CPU, memory and bytes.
    pub processes: Vec<ProcessFigures>,
    /// Time series.
    pub series: Series,
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

/// One goal of the issue and how the run did.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    /// The goal.
    pub goal: String,
    /// The target, in words.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met, missed, or null when the run did not measure it.
    pub met: Option<bool>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Configuration.
    pub config: RunConfig,
    /// Scenarios in run order.
    pub scenarios: Vec<ScenarioReport>,
    /// typha vs direct, when both ran.
    pub comparison: Option<Comparison>,
    /// The goals.
    pub goals: Vec<Goal>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Report {
    /// Fills in the comparison and the goals from the scenarios.
    pub fn finish(&mut self) {
        let find = |name: &str| self.scenarios.iter().find(|s| s.name == name);
        let kube_cpu = |s: &ScenarioReport| {
            s.processes
                .iter()
                .find(|p| p.name == "kube-sim")
                .map_or(0.0, |p| p.cpu_seconds)
        };
        self.comparison = match (find("steady"), find("direct")) {
            (Some(steady), Some(direct)) => Some(Comparison {
                api_bytes_with_typha: steady.bytes.api_sent_to_watchers,
                api_bytes_direct: direct.bytes.api_sent_to_watchers,
                bytes_ratio: steady.bytes.api_sent_to_watchers as f64
                    / direct.bytes.api_sent_to_watchers.max(1) as f64,
                api_cpu_with_typha: kube_cpu(steady),
                api_cpu_direct: kube_cpu(direct),
            }),
            _ => None,
        };
        let mut goals = Vec::new();
        let memory = find("steady").or(find("cold-start"));
        goals.push(
            match memory.and_then(|s| s.typha_memory.as_ref().map(|m| (s, m))) {
                Some((s, m)) => Goal {
                    goal: "typha RSS per idle client".into(),
                    target: "<= 40 KiB".into(),
                    measured: format!(
                        "{:.1} KiB ({} clients, {})",
                        m.per_client_bytes / 1024.0,
                        s.clients,
                        s.name
                    ),
                    met: Some(m.per_client_bytes <= 40.0 * 1024.0),
                },
                None => unmeasured("typha RSS per idle client", "<= 40 KiB"),
            },
        );
        let peak = self
            .scenarios
            .iter()
            .flat_map(|s| {
                s.processes
                    .iter()
                    .filter(|p| p.name.starts_with("typha"))
                    .map(move |p| (s, p))
            })
            .max_by_key(|(_, p)| p.peak_rss_bytes);
        goals.push(match peak {
            Some((s, p)) => Goal {
                goal: "typha RSS in all".into(),
                target: "<= 512 MiB".into(),
                measured: format!(
                    "{:.0} MiB peak ({} clients, {} objects, {})",
                    p.peak_rss_bytes as f64 / MIB,
                    s.clients,
                    s.api_objects,
                    s.name
                ),
                met: Some(p.peak_rss_bytes as f64 <= 512.0 * MIB),
            },
            None => unmeasured("typha RSS in all", "<= 512 MiB"),
        });
        goals.push(match find("steady") {
            Some(s) if s.latency_ms.count > 0 => Goal {
                goal: "p99 propagation at 50 updates/s to 5,000 clients".into(),
                target: "<= 100 ms".into(),
                measured: format!(
                    "p99 {:.1} ms (p50 {:.1}, max {:.1}) at {:.1} writes/s to {} clients",
                    s.latency_ms.p99,
                    s.latency_ms.p50,
                    s.latency_ms.max,
                    s.churn.achieved_rate,
                    s.clients
                ),
                met: Some(s.latency_ms.p99 <= 100.0),
            },
            _ => unmeasured("p99 propagation", "<= 100 ms"),
        });
        goals.push(
            match find("restart").and_then(|s| s.restart.as_ref().map(|r| (s, r))) {
                Some((s, r)) => Goal {
                    goal: "reconnect storm converged".into(),
                    target: "<= 10 s for 5,000 clients".into(),
                    measured: format!(
                        "{:.2} s for {} disconnected of {} clients ({:?})",
                        r.reconverge_seconds, r.clients_disconnected, s.clients, r.mode
                    ),
                    met: Some(r.reconverge_seconds <= 10.0),
                },
                None => unmeasured("reconnect storm converged", "<= 10 s"),
            },
        );
        goals.push(match &self.comparison {
            Some(c) => Goal {
                goal: "API-server bytes with typha vs direct".into(),
                target: "<= 1/100 at 1,000 clients".into(),
                measured: format!(
                    "1/{:.0} ({} vs {} bytes)",
                    1.0 / c.bytes_ratio.max(1e-12),
                    c.api_bytes_with_typha,
                    c.api_bytes_direct
                ),
                met: Some(c.bytes_ratio <= 0.01),
            },
            None => unmeasured("API-server bytes with typha vs direct", "<= 1/100"),
        });
        goals.push(match find("steady").and_then(|s| s.raw_baseline.as_ref()) {
            Some(r) => Goal {
                goal: "fan-out cost vs raw loopback writes".into(),
                target: "<= 2x".into(),
                measured: format!(
                    "{:.1}x ({:.2} s typha CPU vs {:.2} s raw for {} bytes)",
                    r.ratio, r.typha_cpu_seconds, r.raw.cpu_seconds, r.raw.bytes
                ),
                met: Some(r.ratio <= 2.0),
            },
            None => unmeasured("fan-out cost vs raw loopback writes", "<= 2x"),
        });
        self.goals = goals;
    }

    /// Prints the tables.
    pub fn print(&self) {
        for s in &self.scenarios {
            print_scenario(s);
        }
        if let Some(c) = &self.comparison {
            println!("\ntypha vs direct (API server):");
            row(
                "bytes sent to watchers",
                format!(
                    "{} vs {} ({:.4}x)",
                    c.api_bytes_with_typha, c.api_bytes_direct, c.bytes_ratio
                ),
            );
            row(
                "CPU seconds",
                format!("{:.2} vs {:.2}", c.api_cpu_with_typha, c.api_cpu_direct),
            );
        }
        println!("\ngoals:");
        for g in &self.goals {
            let verdict = match g.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            };
            println!(
                "  {:<52} {:<12} {:<26} {}",
                g.goal, verdict, g.target, g.measured
            );
        }
    }
}

fn unmeasured(goal: &str, target: &str) -> Goal {
    Goal {
        goal: goal.into(),
        target: target.into(),
        measured: "not in this run".into(),
        met: None,
    }
}

fn row(label: &str, value: String) {
    println!("  {label:<34} {value}");
}

fn print_scenario(s: &ScenarioReport) {
    println!(
        "\n{}: {} clients, {} replicas, {} API objects, {:.1} s",
        s.name, s.clients, s.replicas, s.api_objects, s.wall_seconds
    );
    row(
        "initial sync of all clients",
        format!("{:.2} s", s.initial_sync_seconds),
    );
    row(
        "converged (barrier + digests)",
        format!(
            "{} in {:.2} s; digests {} of {} equal",
            if s.converged { "yes" } else { "NO" },
            s.converge_seconds,
            s.digests_equal,
            s.digests_total
        ),
    );
    if !s.digests_differ.is_empty() {
        row("DIGEST DIFFERS for", s.digests_differ.join(", "));
    }
    let c = &s.churn;
    if c.operations > 0 {
        row(
            "churn",
            format!(
                "{} writes at {:.1}/s (+{} -{} labels {} policies {}, {} refused); write p50 {:.1} ms",
                c.operations,
                c.achieved_rate,
                c.creates,
                c.deletes,
                c.label_changes,
                c.policy_edits,
                c.errors,
                c.write_ms.p50
            ),
        );
    }
    let l = &s.latency_ms;
    row(
        "propagation write -> client",
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            l.p50, l.p99, l.max, l.count
        ),
    );
    if s.slow_latency_ms.count > 0 {
        let l = &s.slow_latency_ms;
        row(
            "  slow clients",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
                l.p50, l.p99, l.max, l.count
            ),
        );
    }
    if let Some(snap) = &s.snapshot {
        row(
            "snapshot",
            format!(
                "{:.0} keys, {:.0} B raw / {:.0} B zstd ({:.1}:1), built {:.0}x in {:.1} ms avg",
                snap.keys,
                snap.raw_bytes,
                snap.compressed_bytes,
                snap.ratio,
                snap.builds,
                snap.build_seconds_mean * 1000.0
            ),
        );
    }
    if let Some(m) = &s.typha_memory {
        row(
            "typha memory per idle client",
            format!(
                "{:.1} KiB ({:.0} -> {:.0} MiB)",
                m.per_client_bytes / 1024.0,
                m.base_rss_bytes as f64 / MIB,
                m.loaded_rss_bytes as f64 / MIB
            ),
        );
    }
    let b = &s.bytes;
    row(
        "API server bytes to watchers",
        format!(
            "{} (writer got {})",
            b.api_sent_to_watchers, b.api_sent_to_writer
        ),
    );
    if s.replicas > 0 {
        row(
            "typha bytes written",
            format!(
                "{} ({:.0} per client)",
                b.typha_written, b.typha_written_per_client
            ),
        );
        let e = &s.events;
        let drops: Vec<String> = e.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        row(
            "drops / resyncs / resumes",
            format!(
                "drops [{}], resyncs {}, resumes {} (server {}), reconnects {}, coalesced {}, digest mismatches {}",
                drops.join(" "),
                e.resyncs,
                e.fleet.resumes,
                e.server_resumes,
                e.fleet.reconnects,
                e.coalesced,
                e.fleet.digest_mismatches
            ),
        );
    }
    if let Some(r) = &s.restart {
        row(
            "restart",
            format!(
                "{:?} {}: {} clients disconnected, replica back in {:.2} s, all in sync after {:.2} s; {} reconnects, {} snapshots, {} resumes",
                r.mode,
                r.replica,
                r.clients_disconnected,
                r.replica_back_seconds,
                r.reconverge_seconds,
                r.storm.reconnects,
                r.storm.snapshots,
                r.storm.resumes
            ),
        );
    }
    if let Some(k) = &s.soak {
        print_soak(k);
    }
    if let Some(r) = &s.raw_baseline {
        row(
            "fan-out vs raw loopback",
            format!(
                "{:.1}x: typha {:.2} s CPU, raw {:.2} s CPU ({:.2} s wall) for {} B in {} B writes to {} sockets",
                r.ratio,
                r.typha_cpu_seconds,
                r.raw.cpu_seconds,
                r.raw.wall_seconds,
                r.raw.bytes,
                r.raw.write_bytes,
                r.raw.connections
            ),
        );
    }
    println!(
        "  {:<34} {:>9} {:>10} {:>10} {:>14}",
        "process", "CPU s", "peak MiB", "end MiB", "bytes written"
    );
    for p in &s.processes {
        println!(
            "  {:<34} {:>9.2} {:>10.1} {:>10.1} {:>14}",
            p.name,
            p.cpu_seconds,
            p.peak_rss_bytes as f64 / MIB,
            p.rss_bytes as f64 / MIB,
            p.bytes_written
        );
    }
}

fn print_soak(k: &SoakFigures) {
    row(
        "soak",
        format!(
            "{} rounds (a replica down every {:.0} s, kill and roll alternately)",
            k.rounds, k.kill_interval_seconds
        ),
    );
    row(
        "  digests differing at barriers",
        format!(
            "{} (clients' own mismatches {})",
            k.digest_mismatches, k.client_digest_mismatches
        ),
    );
    row(
        "  reconnects / resumes / snapshots",
        format!("{} / {} / {}", k.reconnects, k.resumes, k.snapshots),
    );
    row(
        "  max reconvergence / barrier",
        format!(
            "{:.2} s / {:.2} s",
            k.max_reconverge_seconds, k.max_barrier_seconds
        ),
    );
    row(
        "  typha RSS start -> end",
        format!(
            "{:.1} -> {:.1} MiB",
            k.typha_rss_start_bytes as f64 / MIB,
            k.typha_rss_end_bytes as f64 / MIB
        ),
    );
    for r in &k.per_round {
        row(
            &format!("  round {}", r.round),
            format!(
                "{:?} {}: {} disconnected, back {:.2} s, in sync {:.2} s, barrier {:.2} s, digests {}/{} equal",
                r.restart.mode,
                r.restart.replica,
                r.restart.clients_disconnected,
                r.restart.replica_back_seconds,
                r.restart.reconverge_seconds,
                r.barrier_seconds,
                r.digests_compared - r.digests_differ.len(),
                r.digests_compared
            ),
        );
    }
}
