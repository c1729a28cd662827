//! The goal table is honest: a run smaller than a goal's configuration never reads
//! "met" or "missed", and a missed measured goal fails `--check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::churn::ChurnStats;
use crate::latency::Percentiles;
use crate::pinning::CpuList;
use crate::report::{Environment, RunConfig, TyphaMemory};
use crate::stack::RestartMode;

fn config(clients: usize) -> RunConfig {
    RunConfig {
        scenarios: vec!["steady".into()],
        clients,
        nodes: 100,
        pods_per_node: 10,
        namespaces: 10,
        policies: 2,
        cold_nodes: 200,
        cold_pods_per_node: 10,
        rate: 50,
        duration_seconds: 6.0,
        replicas: 1,
        restart_mode: RestartMode::Kill,
        slow_share: 0.1,
        slow_pause_ms: 50,
        slow_write_timeout_seconds: 3.0,
        raw_baseline: true,
        soak_kill_interval_seconds: 60.0,
        kubeconfig: None,
        typha_addrs: Vec::new(),
        churn_namespace: None,
        typha_cpus: CpuList(vec![0]),
        agent_workers: 1,
        agent_cpus: CpuList(vec![1]),
        command: "loadtest".into(),
    }
}

/// A steady run of `clients` clients with p99 `p99_ms` at 50 writes/s, whose typha grew
/// by `grown` bytes of RSS.
fn steady(clients: usize, p99_ms: f64, grown: u64) -> ScenarioReport {
    let mut s = ScenarioReport::empty(clients);
    s.name = "steady".into();
    s.converged = true;
    s.churn = ChurnStats {
        operations: 300,
        achieved_rate: 50.0,
        ..ChurnStats::default()
    };
    s.latency_ms = Percentiles {
        count: 1_000,
        p50: p99_ms / 4.0,
        p99: p99_ms,
        max: p99_ms * 2.0,
    };
    s.processes = vec![crate::report::ProcessFigures {
        name: "typha-0".into(),
        pid: 1,
        cpu_seconds: 1.0,
        peak_rss_bytes: 100 << 20,
        rss_bytes: 90 << 20,
        bytes_written: 1 << 20,
        bytes_read: 1 << 10,
        cpus: Default::default(),
    }];
    s.typha_memory = Some(TyphaMemory {
        base_rss_bytes: 50 << 20,
        loaded_rss_bytes: (50 << 20) + grown,
        per_client_bytes: grown as f64 / clients as f64,
    });
    s
}

fn report(scenario: ScenarioReport) -> Report {
    let config = config(scenario.clients);
    let mut report = Report {
        environment: Environment::of_this_run(&config),
        config,
        scenarios: vec![scenario],
        comparison: None,
        goals: Vec::new(),
    };
    report.finish();
    report
}

fn goal<'a>(report: &'a Report, name: &str) -> &'a Goal {
    report
        .goals
        .iter()
        .find(|g| g.goal.starts_with(name))
        .unwrap_or_else(|| panic!("no goal {name}: {:?}", report.goals))
}

#[test]
fn a_500_client_run_measures_none_of_the_5000_client_goals() {
    // Figures that would meet every target: still not measured at 500 clients.
    let report = report(steady(500, 20.0, 500 * 30 * 1024));
    for name in [
        "p99 propagation",
        "typha RSS per idle client",
        "typha RSS in all",
    ] {
        let g = goal(&report, name);
        assert_eq!(g.met, None, "{g:?}");
        assert_eq!(g.verdict, "not measured (ran 500)", "{g:?}");
    }
    assert_eq!(goal(&report, "reconnect storm").met, None);
    assert!(report.missed().is_empty());
    assert!(report.check().is_ok());
}

#[test]
fn a_missed_goal_at_5000_clients_fails_the_check() {
    let report = report(steady(5_000, 250.0, 5_000 * 30 * 1024));
    let latency = goal(&report, "p99 propagation");
    assert_eq!(latency.met, Some(false), "{latency:?}");
    assert_eq!(latency.verdict, "MISSED");
    let memory = goal(&report, "typha RSS per idle client");
    assert_eq!(memory.met, Some(true), "{memory:?}");
    let error = report.check().unwrap_err();
    assert!(error.contains("p99 propagation"), "{error}");
}

#[test]
fn a_met_goal_at_5000_clients_passes_the_check() {
    let report = report(steady(5_000, 40.0, 5_000 * 30 * 1024));
    assert_eq!(goal(&report, "p99 propagation").met, Some(true));
    assert!(report.check().is_ok(), "{:?}", report.goals);
}

#[test]
fn per_client_memory_below_noise_is_not_a_figure() {
    // 1 MiB over 5,000 clients is RSS noise, not 0.2 KiB per client.
    let s = steady(5_000, 40.0, 1 << 20);
    assert_eq!(per_client_memory(&s), None);
    let report = report(s);
    let memory = goal(&report, "typha RSS per idle client");
    assert_eq!(memory.met, None);
    assert!(memory.verdict.contains("noise"), "{memory:?}");
}
