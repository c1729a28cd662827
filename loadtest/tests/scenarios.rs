//! Every load-test scenario end to end through the real binary, on a configuration small
//! enough for CI: kube-sim and typha run as child processes of `loadtest`, the clients in
//! it. Asserts convergence, equal digests and the report's shape (every field present),
//! never the figures themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-it-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `loadtest --scenario <scenario>` on a tiny cluster; returns the JSON report and
/// the SVG plot.
fn run(scenario: &str, extra: &[&str]) -> (Value, String) {
    let (json, svg, _) = run_in(scenario, extra);
    (json, svg)
}

/// [`run`], also returning stdout (the table).
fn run_in(scenario: &str, extra: &[&str]) -> (Value, String, String) {
    let dir = scratch(scenario);
    let report = dir.join("report.json");
    let plot = dir.join("plot.svg");
    // Defaults for CI; a flag in `extra` replaces its default.
    let defaults = [
        ("--scenario", scenario),
        ("--clients", "12"),
        ("--nodes", "6"),
        ("--pods-per-node", "4"),
        ("--namespaces", "3"),
        ("--policies", "1"),
        ("--cold-nodes", "10"),
        ("--cold-pods-per-node", "5"),
        ("--rate", "40"),
        ("--duration", "2s"),
        ("--slow-share", "0.25"),
        ("--slow-pause", "100ms"),
        ("--slow-write-timeout", "1s"),
    ];
    let mut args: Vec<String> = Vec::new();
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--report".to_string(), report.display().to_string()]);
    args.extend(["--plot".to_string(), plot.display().to_string()]);
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadtest {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("goals:"), "the table is printed: {stdout}");
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let svg = std::fs::read_to_string(&plot).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (json, svg, stdout.into_owned())
}

const SCENARIO_FIELDS: [&str; 26] = [
    "latency_cdf",
    "typha_share",
    "generator",
    "soak",
    "digests_differ",
    "name",
    "clients",
    "replicas",
    "api_objects",
    "wall_seconds",
    "initial_sync_seconds",
    "converge_seconds",
    "converged",
    "digests_equal",
    "digests_total",
    "churn",
    "latency_ms",
    "slow_latency_ms",
    "snapshot",
    "typha_memory",
    "bytes",
    "events",
    "restart",
    "raw_baseline",
    "processes",
    "series",
];

fn assert_fields(value: &Value, fields: &[&str], what: &str) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {value}"));
    for field in fields {
        assert!(object.contains_key(*field), "{what} lacks {field}: {value}");
    }
}

/// The shape every scenario report has, and convergence.
fn check_scenario(s: &Value, typha: bool) {
    let name = s["name"].as_str().unwrap().to_string();
    assert_fields(s, &SCENARIO_FIELDS, &name);
    assert_eq!(s["converged"], true, "{name} converged");
    assert_eq!(
        s["digests_equal"], s["digests_total"],
        "{name}: every digest equals the replica's"
    );
    assert_fields(
        &s["churn"],
        &[
            "operations",
            "creates",
            "deletes",
            "label_changes",
            "policy_edits",
            "errors",
            "achieved_rate",
            "write_ms",
        ],
        "churn",
    );
    assert_fields(
        &s["latency_ms"],
        &["count", "p50", "p99", "max"],
        "latency_ms",
    );
    assert_fields(
        &s["bytes"],
        &[
            "api_sent_total",
            "api_sent_to_writer",
            "api_sent_to_watchers",
            "typha_written",
            "typha_written_per_client",
        ],
        "bytes",
    );
    assert_fields(
        &s["events"],
        &["drops", "server_resumes", "coalesced", "fleet", "resyncs"],
        "events",
    );
    assert_fields(
        &s["events"]["fleet"],
        &[
            "reconnects",
            "snapshots",
            "resumes",
            "digest_mismatches",
            "batches",
        ],
        "fleet",
    );
    assert_fields(&s["series"], &["latency", "connections", "marks"], "series");
    let processes = s["processes"].as_array().unwrap();
    let names: Vec<&str> = processes
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"kube-sim") && names.contains(&"client-process"),
        "{names:?}"
    );
    for p in processes {
        assert_fields(
            p,
            &[
                "name",
                "pid",
                "cpu_seconds",
                "peak_rss_bytes",
                "rss_bytes",
                "bytes_written",
                "bytes_read",
            ],
            "process",
        );
        assert!(
            p["peak_rss_bytes"].as_u64().unwrap() > 0,
            "{p}: measured from /proc"
        );
    }
    if typha {
        assert!(
            s["digests_total"].as_u64().unwrap() > s["clients"].as_u64().unwrap(),
            "clients and reference clients compared"
        );
        assert!(names.iter().any(|n| n.starts_with("typha-")), "{names:?}");
        assert_fields(
            &s["snapshot"],
            &[
                "keys",
                "builds",
                "build_seconds_mean",
                "raw_bytes",
                "compressed_bytes",
                "ratio",
            ],
            "snapshot",
        );
        assert!(
            s["snapshot"]["builds"].as_f64().unwrap() >= 1.0,
            "scraped from typha's /metrics"
        );
        assert_fields(
            &s["typha_memory"],
            &["base_rss_bytes", "loaded_rss_bytes", "per_client_bytes"],
            "typha_memory",
        );
        assert!(!s["series"]["connections"].as_array().unwrap().is_empty());
    }
}

fn check_report(json: &Value) {
    assert_fields(
        json,
        &["config", "environment", "scenarios", "comparison", "goals"],
        "report",
    );
    assert_fields(
        &json["environment"],
        &[
            "version",
            "git_commit",
            "cpus",
            "kernel",
            "typha_cpus",
            "agent_cpus",
            "isolated",
        ],
        "environment",
    );
    assert!(json["environment"]["cpus"].as_u64().unwrap() >= 1);
    assert!(!json["environment"]["kernel"].as_str().unwrap().is_empty());
    assert_fields(
        &json["config"],
        &[
            "scenarios",
            "clients",
            "nodes",
            "pods_per_node",
            "rate",
            "duration_seconds",
            "replicas",
            "restart_mode",
            "slow_share",
            "typha_cpus",
            "agent_cpus",
            "command",
        ],
        "config",
    );
    let goals = json["goals"].as_array().unwrap();
    assert_eq!(goals.len(), 6);
    for g in goals {
        assert_fields(g, &["goal", "target", "measured", "met", "verdict"], "goal");
        // CI runs are far below the goals' configuration: nothing is judged.
        assert_eq!(g["met"], Value::Null, "{g}");
        assert!(
            g["verdict"].as_str().unwrap().starts_with("not measured"),
            "{g}"
        );
    }
}

#[test]
fn steady_converges_and_reports_everything() {
    let (json, svg) = run("steady", &[]);
    check_report(&json);
    let s = &json["scenarios"][0];
    check_scenario(s, true);
    assert!(s["churn"]["operations"].as_u64().unwrap() > 0);
    assert!(
        s["latency_ms"]["count"].as_u64().unwrap() > 0,
        "stamps were detected by clients"
    );
    assert_fields(
        &s["raw_baseline"],
        &["raw", "typha_cpu_seconds", "typha_bytes", "ratio"],
        "raw_baseline",
    );
    assert!(s["raw_baseline"]["raw"]["bytes"].as_u64().unwrap() > 0);
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
}

/// typha and kube-sim on CPU 0, 200 agents in two worker processes on CPU 1, through
/// steady churn and a reconnect storm: every digest equal, and the report records the
/// pinning (each worker says where it ran), typha's own share, the generator's cost over
/// both workers, each scenario's latency percentiles and CDF, and resumes vs snapshots.
#[test]
fn two_pinned_workers_carry_200_agents_through_steady_and_storm() {
    let (json, _) = run(
        "steady,storm",
        &[
            "--clients",
            "200",
            "--agent-workers",
            "2",
            "--typha-cpus",
            "0",
            "--agent-cpus",
            "1",
            "--no-raw-baseline",
            "--check",
        ],
    );
    check_report(&json);
    assert_eq!(json["config"]["agent_workers"], 2);
    let e = &json["environment"];
    assert_eq!(e["typha_cpus"], serde_json::json!([0]));
    assert_eq!(e["agent_cpus"], serde_json::json!([1]));
    assert_eq!(e["isolated"], true);
    let scenarios = json["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 2);
    for s in scenarios {
        check_scenario(s, true);
        assert_eq!(
            s["digests_total"].as_u64().unwrap(),
            200 + s["replicas"].as_u64().unwrap(),
            "200 agents and one reference client per replica"
        );
        check_shares(s, 200);
        let fleet = &s["events"]["fleet"];
        assert!(fleet["snapshots"].as_u64().unwrap() >= 200, "{fleet}");
        assert_eq!(fleet["digest_mismatches"], 0);
        assert!(s["latency_ms"]["count"].as_u64().unwrap() > 0);
        assert!(!s["latency_cdf"].as_array().unwrap().is_empty());
    }
    let storm = &scenarios[1]["restart"];
    assert_eq!(
        storm["clients_disconnected"], 200,
        "every agent was on typha-0"
    );
    let counted = &storm["storm"];
    assert_eq!(
        counted["snapshots"], 0,
        "every agent resumed on typha-1 (discovered, its history covering them): {storm}"
    );
    assert!(counted["resumes"].as_u64().unwrap() >= 200, "{storm}");
    assert_eq!(storm["clients_by_replica"]["typha-1"], 200, "{storm}");
}

/// typha's own share and the generator's cost: `agents` agents in two workers pinned
/// to CPU 1, each reporting its CPU.
fn check_shares(s: &Value, agents: u64) {
    assert_fields(
        &s["typha_share"],
        &[
            "cpu_seconds",
            "bytes_written",
            "cpu_us_per_kib",
            "fanout_latency_mean_ms",
            "client_lag_batches_mean",
            "coalesced",
        ],
        "typha_share",
    );
    assert!(s["typha_share"]["bytes_written"].as_u64().unwrap() > 0);
    let g = &s["generator"];
    assert_fields(
        g,
        &[
            "cpu_seconds",
            "agents",
            "writes",
            "cpu_us_per_agent_per_write",
            "processes",
            "harness_cpu_seconds",
        ],
        "generator",
    );
    assert_eq!(g["agents"], agents);
    assert_eq!(g["processes"], 2);
    assert!(g["cpu_us_per_agent_per_write"].as_f64().unwrap() > 0.0);
    let workers: Vec<&Value> = s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with("agent-worker-"))
        .collect();
    assert_eq!(workers.len(), 2, "{}", s["processes"]);
    let cpu: f64 = workers
        .iter()
        .map(|w| w["cpu_seconds"].as_f64().unwrap())
        .sum();
    // serde_json's default float parsing may differ in the last bit.
    let generator = g["cpu_seconds"].as_f64().unwrap();
    assert!(
        (generator - cpu).abs() < 1e-9,
        "the sum over the workers: {g}"
    );
    for w in workers {
        assert_eq!(
            w["cpus"],
            serde_json::json!([1]),
            "pinned to the agent CPUs: {w}"
        );
    }
}

/// Every client on one replica (the only one published while they connect), killed
/// mid-churn: through the Service they find typha-1, whose history covers them, and all
/// resume there (0 snapshots; going back to the fresh typha-0 would snapshot).
#[test]
fn storm_brings_every_client_back() {
    let (json, _) = run("storm", &[]);
    let s = &json["scenarios"][0];
    check_scenario(s, true);
    assert_eq!(s["replicas"], 2);
    let r = &s["restart"];
    assert_eq!(r["replica"], "typha-0");
    assert_eq!(r["clients_disconnected"], 12, "every client was on typha-0");
    let storm = &r["storm"];
    assert!(storm["reconnects"].as_u64().unwrap() >= 12, "{storm}");
    assert_eq!(storm["snapshots"], 0, "{r}");
    assert!(storm["resumes"].as_u64().unwrap() >= 12, "{r}");
    assert_eq!(r["clients_by_replica"]["typha-0"], 0, "{r}");
    assert_eq!(r["clients_by_replica"]["typha-1"], 12, "{r}");
}

#[test]
fn cold_start_converges() {
    let (json, _) = run("cold-start", &[]);
    check_report(&json);
    let s = &json["scenarios"][0];
    check_scenario(s, true);
    assert_eq!(s["churn"]["operations"], 0, "no churn in a cold start");
}

#[test]
fn restart_kill_reconnects_every_client() {
    let (json, _) = run("restart", &["--restart-mode", "kill"]);
    let s = &json["scenarios"][0];
    check_scenario(s, true);
    assert_eq!(s["replicas"], 2);
    let r = &s["restart"];
    assert_fields(
        r,
        &[
            "mode",
            "replica",
            "clients_disconnected",
            "replica_back_seconds",
            "reconverge_seconds",
            "storm",
            "clients_by_replica",
        ],
        "restart",
    );
    assert_eq!(r["mode"], "kill");
    let storm = &r["storm"];
    // Every disconnected client came back with either a snapshot or a resume.
    let disconnected = r["clients_disconnected"].as_u64().unwrap();
    assert!(disconnected > 0, "{r}");
    assert!(storm["reconnects"].as_u64().unwrap() >= disconnected, "{r}");
    assert!(
        storm["snapshots"].as_u64().unwrap() + storm["resumes"].as_u64().unwrap() >= disconnected,
        "{r}"
    );
}

#[test]
fn restart_roll_reconnects_every_client() {
    let (json, _) = run("restart", &["--restart-mode", "roll"]);
    let s = &json["scenarios"][0];
    check_scenario(s, true);
    assert_eq!(s["restart"]["mode"], "roll");
    assert!(s["restart"]["storm"]["reconnects"].as_u64().unwrap() > 0);
}

/// Slow and stalled clients lag (their latency is measured apart) and still converge.
/// Whether typha cuts them off depends on how much the HTTP/2 window (2 MiB in the
/// client) and the socket buffers absorb, so the test does not insist on drops.
#[test]
fn slow_clients_lag_and_recover() {
    let (json, _) = run("slow", &[]);
    let s = &json["scenarios"][0];
    check_scenario(s, true);
    assert!(
        s["slow_latency_ms"]["count"].as_u64().unwrap() > 0,
        "slow clients' latency is measured apart"
    );
    assert!(s["latency_ms"]["count"].as_u64().unwrap() > 0);
}

/// Steady and direct in one invocation: the comparison of API-server bytes and CPU.
#[test]
fn direct_baseline_compares_with_steady() {
    let (json, svg) = run("steady,direct", &["--no-raw-baseline"]);
    check_report(&json);
    let names: Vec<&str> = json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["steady", "direct"]);
    check_scenario(&json["scenarios"][0], true);
    let s = &json["scenarios"][1];
    check_scenario(s, false);
    assert!(s["bytes"]["api_sent_to_watchers"].as_u64().unwrap() > 0);
    assert!(
        s["latency_ms"]["count"].as_u64().unwrap() > 0,
        "direct clients detect stamps too"
    );
    let c = &json["comparison"];
    assert_fields(
        c,
        &[
            "api_bytes_with_typha",
            "api_bytes_direct",
            "bytes_ratio",
            "api_cpu_with_typha",
            "api_cpu_direct",
        ],
        "comparison",
    );
    assert!(c["api_bytes_direct"].as_u64().unwrap() > c["api_bytes_with_typha"].as_u64().unwrap());
    assert_eq!(svg.matches("connections per replica").count(), 2);
}

#[test]
fn multi_call_runs_the_embedded_binaries() {
    let typha = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["typha", "serve", "--help"])
        .output()
        .unwrap();
    assert!(typha.status.success());
    assert!(String::from_utf8_lossy(&typha.stdout).contains("--client-cn"));
    let sim = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["kube-sim", "--help"])
        .output()
        .unwrap();
    assert!(sim.status.success());
    assert!(String::from_utf8_lossy(&sim.stdout).contains("--pods-per-node"));
    let bad = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--clients", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// The soak, two short rounds: a replica is killed, then rolled, churn runs throughout,
/// and after each round every client's live digest equals a fresh reference client's.
#[test]
fn soak_kills_and_rolls_and_keeps_every_digest() {
    let (json, svg, table) = run_in(
        "soak",
        &[
            "--duration",
            "4s",
            "--soak-kill-interval",
            "2s",
            "--no-raw-baseline",
        ],
    );
    check_report(&json);
    assert_eq!(json["config"]["soak_kill_interval_seconds"], 2.0);
    let s = &json["scenarios"][0];
    check_scenario(s, true);
    assert_eq!(s["name"], "soak");
    assert_eq!(s["replicas"], 2, "the soak needs a second replica");
    let k = &s["soak"];
    assert_fields(
        k,
        &[
            "rounds",
            "discovery",
            "nodes",
            "replica_counters",
            "kill_interval_seconds",
            "digest_mismatches",
            "client_digest_mismatches",
            "reconnects",
            "resumes",
            "snapshots",
            "max_reconverge_seconds",
            "max_barrier_seconds",
            "typha_rss_start_bytes",
            "typha_rss_end_bytes",
            "typha_rss_by_round",
            "per_round",
        ],
        "soak",
    );
    assert_eq!(k["rounds"], 2);
    assert_eq!(
        k["discovery"], "service calico-system/calico-typha (EndpointSlices)",
        "the soak's agents discover the replicas as real agents do"
    );
    assert_eq!(k["nodes"], 12, "one Node per agent: the rebalancer's share");
    assert_eq!(k["digest_mismatches"], 0, "{k}");
    assert_eq!(k["client_digest_mismatches"], 0, "{k}");
    assert!(k["reconnects"].as_u64().unwrap() > 0, "{k}");
    assert!(k["typha_rss_start_bytes"].as_u64().unwrap() > 0, "{k}");
    assert!(k["typha_rss_end_bytes"].as_u64().unwrap() > 0, "{k}");
    let rounds = k["per_round"].as_array().unwrap();
    let modes: Vec<&str> = rounds
        .iter()
        .map(|r| r["restart"]["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["kill", "roll"], "kill and roll alternate");
    let clients = s["clients"].as_u64().unwrap();
    for r in rounds {
        assert_fields(
            r,
            &[
                "round",
                "restart",
                "barrier_seconds",
                "digests_compared",
                "digests_differ",
                "t",
            ],
            "round",
        );
        assert_eq!(
            r["digests_compared"].as_u64().unwrap(),
            clients + 2,
            "every client and the two pinned references: {r}"
        );
        assert_eq!(r["digests_differ"].as_array().unwrap().len(), 0, "{r}");
    }
    assert_eq!(k["typha_rss_by_round"].as_array().unwrap().len(), 2);
    assert!(svg.contains("round 1: digests equal") && svg.contains("round 2: digests equal"));
    assert!(
        table.contains("soak") && table.contains("round 2"),
        "{table}"
    );
}

/// Runs loadtest with `args`, asserting it refuses them with a message containing `why`.
fn assert_refused(args: &[&str], why: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?}: {stderr}");
    assert!(stderr.contains(why), "{args:?}: {stderr}");
}

/// Scenarios that kill replicas refuse external ones before starting anything,
/// --typha-addr without an API server to churn and a --churn-namespace that is no
/// namespace name are refused.
#[test]
fn external_replicas_refuse_the_killing_scenarios() {
    for scenario in ["restart", "soak", "all"] {
        assert_refused(
            &[
                "--scenario",
                scenario,
                "--kubeconfig",
                "/nonexistent",
                "--typha-addr",
                "127.0.0.1:1",
                "--insecure-plaintext",
            ],
            "cannot do to the running ones",
        );
    }
    assert_refused(
        &["--scenario", "steady", "--typha-addr", "127.0.0.1:1"],
        "needs --kubeconfig",
    );
    // The API server's rule: a label ends with a letter or digit.
    assert_refused(
        &["--kubeconfig", "/nonexistent", "--churn-namespace=churn-"],
        "is not a namespace name",
    );
    let help = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--kubeconfig",
        "--typha-addr",
        "--churn-namespace",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--typha-cn",
        "--typha-uri-san",
        "--insecure-plaintext",
        "--soak-kill-interval",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
}

/// A child of the test, killed by PID when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `loadtest <args>` with its output piped, and returns it once a line of its
/// output contains `marker`, with the text that follows the marker on that line
/// (colour codes removed).
fn spawn_until(args: &[&str], marker: &str) -> (Guard, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    for pipe in [out, err] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let guard = Guard(child);
    let mut seen = Vec::new();
    for line in rx.iter() {
        let plain = strip_ansi(&line);
        if let Some((_, rest)) = plain.split_once(marker) {
            return (guard, rest.to_string());
        }
        seen.push(plain);
    }
    panic!(
        "loadtest {args:?} ended without {marker:?}:\n{}",
        seen.join("\n")
    );
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Real-cluster mode end to end: an API server and a typha replica that the load test
/// did not start (kube-sim and `typha serve` as separate processes here), reached with
/// --kubeconfig and --typha-addr and the operator's TLS files. Churn writes service
/// accounts in --churn-namespace (created), clients see the stamps through typha's
/// Profiles, converge and agree on the digest; typha's own figures are not claimed.
#[test]
fn steady_against_an_existing_cluster_and_typha() {
    let dir = scratch("real-cluster");
    edge::certs::DevPki::generate()
        .unwrap()
        .write_to_dir(&dir, true)
        .unwrap();
    let (_kube, url) = spawn_until(
        &[
            "kube-sim",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            "3",
            "--namespaces",
            "2",
        ],
        "kube-sim serving on ",
    );
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kube_sim::kubeconfig(url.trim())).unwrap();
    let (_typha, started) = spawn_until(
        &[
            "typha",
            "serve",
            "--kubeconfig",
            &path(&kubeconfig),
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--tls-ca",
            &path(&dir.join("ca.crt")),
            "--tls-cert",
            &path(&dir.join("typha.crt")),
            "--tls-key",
            &path(&dir.join("typha.key")),
            "--client-cn",
            edge::certs::DEFAULT_CLIENT_CN,
            "--log",
            "info",
        ],
        "grpc_addr=",
    );
    let grpc = started.split_whitespace().next().unwrap().to_string();
    let (json, _, table) = run_in(
        "steady",
        &[
            "--kubeconfig",
            &path(&kubeconfig),
            "--typha-addr",
            &grpc,
            "--churn-namespace",
            "lt-real",
            "--tls-ca",
            &path(&dir.join("ca.crt")),
            "--tls-cert",
            &path(&dir.join("felix.crt")),
            "--tls-key",
            &path(&dir.join("felix.key")),
            "--typha-cn",
            edge::certs::DEFAULT_SERVER_CN,
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    check_report(&json);
    assert_eq!(json["config"]["typha_addrs"][0], grpc.as_str());
    assert_eq!(json["config"]["churn_namespace"], "lt-real");
    assert!(json["config"]["kubeconfig"].is_string());
    let s = &json["scenarios"][0];
    assert_fields(s, &SCENARIO_FIELDS, "steady");
    assert_eq!(s["converged"], true, "{table}");
    assert_eq!(s["digests_equal"], s["digests_total"], "{table}");
    assert!(
        s["digests_total"].as_u64().unwrap() > s["clients"].as_u64().unwrap(),
        "clients and the pinned reference client compared"
    );
    assert!(s["churn"]["operations"].as_u64().unwrap() > 0);
    assert_eq!(
        s["churn"]["errors"], 0,
        "every write accepted: {}",
        s["churn"]
    );
    assert!(
        s["latency_ms"]["count"].as_u64().unwrap() > 0,
        "stamps on service accounts reach the clients as Profiles"
    );
    assert_eq!(s["replicas"], 0, "no replica started here");
    assert!(s["snapshot"].is_null() && s["typha_memory"].is_null());
    assert!(s["raw_baseline"].is_null());
    let names: Vec<&str> = s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"client-process"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| *n == "client-process" || n.starts_with("agent-worker-")),
        "only what this run started is measured: {names:?}"
    );
}
