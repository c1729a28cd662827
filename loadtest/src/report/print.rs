//! The report as readable tables on stdout: each scenario's figures, typha against the
//! direct baseline, and the goals with their verdicts.

use super::goals::per_client_memory;
use super::{Report, ScenarioReport, SoakFigures, SoakRound};
use crate::latency::Percentiles;

const MIB: f64 = 1024.0 * 1024.0;

impl Report {
    /// Prints the tables.
    pub fn print(&self) {
        let e = &self.environment;
        println!(
            "loadtest {} ({}), {} CPUs, kernel {}; typha CPUs [{}], agent CPUs [{}]{}",
            e.version,
            e.git_commit.as_deref().unwrap_or("commit unknown"),
            e.cpus,
            e.kernel,
            e.typha_cpus,
            e.agent_cpus,
            if e.isolated { "" } else { " (not isolated)" }
        );
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
            println!(
                "  {:<48} {:<28} {:<28} {}",
                g.goal, g.verdict, g.target, g.measured
            );
        }
    }
}

fn row(label: &str, value: String) {
    println!("  {label:<34} {value}");
}

fn print_scenario(s: &ScenarioReport) {
    print_summary(s);
    print_typha(s);
    if let Some(r) = &s.restart {
        print_restart(r);
    }
    if let Some(k) = &s.soak {
        print_soak(k);
    }
    if let Some(r) = &s.raw_baseline {
        print_raw(r);
    }
    print_processes(s);
}

fn print_summary(s: &ScenarioReport) {
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
    row("propagation write -> client", latency(&s.latency_ms));
    if s.slow_latency_ms.count > 0 {
        row("  slow clients", latency(&s.slow_latency_ms));
    }
}

/// `p50 .. ms, p99 .. ms, max .. ms (N samples)`.
fn latency(l: &Percentiles) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        l.p50, l.p99, l.max, l.count
    )
}

/// The snapshot's figures and typha's memory per idle client.
fn print_snapshot_and_memory(s: &ScenarioReport) {
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
        let per = per_client_memory(s).map_or("below noise".to_string(), |per| {
            format!("{:.1} KiB", per / 1024.0)
        });
        row(
            "typha memory per idle client",
            format!(
                "{per} ({:.0} -> {:.0} MiB)",
                m.base_rss_bytes as f64 / MIB,
                m.loaded_rss_bytes as f64 / MIB
            ),
        );
    }
}

fn print_typha(s: &ScenarioReport) {
    print_snapshot_and_memory(s);
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
}

fn print_restart(r: &super::RestartFigures) {
    let on: Vec<String> = r
        .clients_by_replica
        .iter()
        .map(|(replica, clients)| format!("{replica} {clients}"))
        .collect();
    row(
        "restart",
        format!(
            "{:?} {}: {} clients disconnected, replica back in {:.2} s, all in sync after {:.2} s; {} reconnects, {} snapshots, {} resumes; clients then on [{}]",
            r.mode,
            r.replica,
            r.clients_disconnected,
            r.replica_back_seconds,
            r.reconverge_seconds,
            r.storm.reconnects,
            r.storm.snapshots,
            r.storm.resumes,
            on.join(", ")
        ),
    );
}

fn print_raw(r: &super::RawFigures) {
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

fn print_shares(s: &ScenarioReport) {
    if let Some(t) = &s.typha_share {
        row(
            "typha's own share (run phase)",
            format!(
                "{:.2} s CPU for {} B written: {:.1} us CPU per KiB; fan-out latency mean {:.2} ms, lag {:.2} batches, {:.0} coalesced",
                t.cpu_seconds,
                t.bytes_written,
                t.cpu_us_per_kib,
                t.fanout_latency_mean_ms,
                t.client_lag_batches_mean,
                t.coalesced
            ),
        );
    }
    let g = &s.generator;
    if g.processes == 0 {
        // The direct baseline: its watchers run in the harness, not in workers.
        row(
            "load generator's own cost",
            format!("no agent workers; harness {:.2} s", g.harness_cpu_seconds),
        );
        return;
    }
    row(
        "load generator's own cost",
        format!(
            "{:.2} s CPU in {} agent worker(s): {:.2} us per agent per write ({} agents, {} writes); harness {:.2} s",
            g.cpu_seconds,
            g.processes,
            g.cpu_us_per_agent_per_write,
            g.agents,
            g.writes,
            g.harness_cpu_seconds
        ),
    );
}

fn print_processes(s: &ScenarioReport) {
    print_shares(s);
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
        "  agents find typha through",
        format!("{} ({} nodes, one per agent)", k.discovery, k.nodes),
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
    let counters: Vec<String> = k
        .replica_counters
        .iter()
        .map(|(key, value)| format!("{key} {value}"))
        .collect();
    row("  on the replicas", counters.join(", "));
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
        print_round(r);
    }
}

fn print_round(r: &SoakRound) {
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
