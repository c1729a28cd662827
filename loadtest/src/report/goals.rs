//! The goals of the load-test issues and how a run did against each, honestly: a goal
//! is "met" or "missed" only when the run's configuration is the goal's (5,000 clients
//! for the 5,000-client goals, 1,000 for the API-bytes goal); otherwise it reads
//! "not measured (ran N)", whatever the figures say. `--check` fails the run when a
//! measured goal is missed ([`Report::missed`]).
//!
//! Per-client memory is only a figure when the RSS difference it divides is far above
//! the noise of RSS sampling ([`MEMORY_NOISE_BYTES`]).

use serde::Serialize;

use super::{Comparison, Report, ScenarioReport};

/// The client count of the headline goals.
pub const GOAL_CLIENTS: usize = 5_000;
/// The client count of the API-bytes goal.
pub const API_GOAL_CLIENTS: usize = 1_000;
/// Below this RSS difference (loaded - base, all replicas) per-client memory is noise:
/// allocator arenas and page-granular RSS move by a few MiB on their own.
pub const MEMORY_NOISE_BYTES: f64 = 16.0 * 1024.0 * 1024.0;

const MIB: f64 = 1024.0 * 1024.0;

/// One goal and how the run did.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    /// The goal.
    pub goal: String,
    /// The target, in words.
    pub target: String,
    /// What was measured (or why nothing was).
    pub measured: String,
    /// Met, missed, or null when the run did not measure it at the goal's configuration.
    pub met: Option<bool>,
    /// "met", "MISSED", or "not measured (...)".
    pub verdict: String,
}

impl Goal {
    fn measured(goal: &str, target: &str, measured: String, met: bool) -> Goal {
        Goal {
            goal: goal.into(),
            target: target.into(),
            measured,
            met: Some(met),
            verdict: if met { "met" } else { "MISSED" }.into(),
        }
    }

    fn not_measured(goal: &str, target: &str, why: String, measured: String) -> Goal {
        Goal {
            goal: goal.into(),
            target: target.into(),
            measured,
            met: None,
            verdict: format!("not measured ({why})"),
        }
    }
}

/// Whether `s` ran at least `want` clients; the reason it does not count otherwise.
fn at_scale(s: &ScenarioReport, want: usize) -> Result<(), String> {
    if s.clients >= want {
        Ok(())
    } else {
        Err(format!("ran {}", s.clients))
    }
}

/// A goal measured by `scenario` if it ran at `want` clients.
fn judged(
    goal: &str,
    target: &str,
    scenario: Option<&ScenarioReport>,
    want: usize,
    measure: impl FnOnce(&ScenarioReport) -> Option<(String, bool)>,
) -> Goal {
    let Some(s) = scenario else {
        return Goal::not_measured(goal, target, "not in this run".into(), String::new());
    };
    match (at_scale(s, want), measure(s)) {
        (Ok(()), Some((measured, met))) => Goal::measured(goal, target, measured, met),
        (Ok(()), None) => {
            let why = format!("{} measured nothing", s.name);
            Goal::not_measured(goal, target, why, String::new())
        }
        (Err(why), measured) => {
            let measured = measured.map(|(m, _)| m).unwrap_or_default();
            Goal::not_measured(goal, target, why, measured)
        }
    }
}

impl Report {
    /// Fills in the comparison and the goals from the scenarios.
    pub fn finish(&mut self) {
        self.comparison = comparison(&self.scenarios);
        let find = |name: &str| self.scenarios.iter().find(|s| s.name == name);
        let steady = find("steady");
        let storm = find("storm").or(find("restart"));
        let mut goals = vec![
            memory_goal(steady.or(find("cold-start"))),
            peak_rss_goal(&self.scenarios),
            latency_goal(steady),
            storm_goal(storm),
        ];
        goals.push(api_bytes_goal(
            steady,
            find("direct"),
            self.comparison.as_ref(),
        ));
        goals.push(fanout_goal(steady));
        self.goals = goals;
    }

    /// The goals measured at their configuration and missed.
    pub fn missed(&self) -> Vec<&Goal> {
        self.goals.iter().filter(|g| g.met == Some(false)).collect()
    }

    /// What `--check` decides: an error naming every measured goal that was missed.
    pub fn check(&self) -> Result<(), String> {
        let missed = self.missed();
        if missed.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = missed
            .iter()
            .map(|g| format!("{} ({}; target {})", g.goal, g.measured, g.target))
            .collect();
        Err(format!("goals missed: {}", names.join("; ")))
    }
}

fn comparison(scenarios: &[ScenarioReport]) -> Option<Comparison> {
    let find = |name: &str| scenarios.iter().find(|s| s.name == name);
    let kube_cpu = |s: &ScenarioReport| {
        s.processes
            .iter()
            .find(|p| p.name == "kube-sim")
            .map_or(0.0, |p| p.cpu_seconds)
    };
    let (steady, direct) = (find("steady")?, find("direct")?);
    Some(Comparison {
        api_bytes_with_typha: steady.bytes.api_sent_to_watchers,
        api_bytes_direct: direct.bytes.api_sent_to_watchers,
        bytes_ratio: steady.bytes.api_sent_to_watchers as f64
            / direct.bytes.api_sent_to_watchers.max(1) as f64,
        api_cpu_with_typha: kube_cpu(steady),
        api_cpu_direct: kube_cpu(direct),
    })
}

/// typha's RSS per idle client, when the difference is far above noise.
pub fn per_client_memory(s: &ScenarioReport) -> Option<f64> {
    let m = s.typha_memory.as_ref()?;
    let difference = m.loaded_rss_bytes as f64 - m.base_rss_bytes as f64;
    (difference >= MEMORY_NOISE_BYTES).then_some(m.per_client_bytes)
}

fn memory_goal(s: Option<&ScenarioReport>) -> Goal {
    let (goal, target) = ("typha RSS per idle client", "<= 40 KiB at 5,000 clients");
    if let Some(s) = s
        && s.typha_memory.is_some()
        && at_scale(s, GOAL_CLIENTS).is_ok()
        && per_client_memory(s).is_none()
    {
        let why = format!(
            "RSS difference below {:.0} MiB noise",
            MEMORY_NOISE_BYTES / MIB
        );
        return Goal::not_measured(goal, target, why, format!("{} clients", s.clients));
    }
    judged(goal, target, s, GOAL_CLIENTS, |s| {
        let per = per_client_memory(s)?;
        Some((
            format!(
                "{:.1} KiB ({} clients, {})",
                per / 1024.0,
                s.clients,
                s.name
            ),
            per <= 40.0 * 1024.0,
        ))
    })
}

fn peak_rss_goal(scenarios: &[ScenarioReport]) -> Goal {
    let peak = scenarios
        .iter()
        .flat_map(|s| {
            s.processes
                .iter()
                .filter(|p| p.name.starts_with("typha"))
                .map(move |p| (s, p.peak_rss_bytes))
        })
        .max_by_key(|(_, rss)| *rss);
    judged(
        "typha RSS in all",
        "<= 512 MiB at 5,000 clients",
        peak.map(|(s, _)| s),
        GOAL_CLIENTS,
        |s| {
            let (_, rss) = peak?;
            Some((
                format!(
                    "{:.0} MiB peak ({} clients, {} objects, {})",
                    rss as f64 / MIB,
                    s.clients,
                    s.api_objects,
                    s.name
                ),
                rss as f64 <= 512.0 * MIB,
            ))
        },
    )
}

fn latency_goal(steady: Option<&ScenarioReport>) -> Goal {
    let goal = "p99 propagation at 50 writes/s to 5,000 clients";
    judged(goal, "<= 100 ms", steady, GOAL_CLIENTS, |s| {
        (s.latency_ms.count > 0 && s.churn.achieved_rate >= 45.0).then(|| {
            (
                format!(
                    "p99 {:.1} ms (p50 {:.1}, max {:.1}) at {:.1} writes/s to {} clients",
                    s.latency_ms.p99,
                    s.latency_ms.p50,
                    s.latency_ms.max,
                    s.churn.achieved_rate,
                    s.clients
                ),
                s.latency_ms.p99 <= 100.0,
            )
        })
    })
}

fn storm_goal(s: Option<&ScenarioReport>) -> Goal {
    let goal = "reconnect storm converged, 0 snapshots";
    judged(goal, "<= 10 s for 5,000 clients", s, GOAL_CLIENTS, |s| {
        let r = s.restart.as_ref()?;
        Some((
            format!(
                "{:.2} s for {} disconnected of {} clients ({:?}, {}); {} resumes, {} snapshots",
                r.reconverge_seconds,
                r.clients_disconnected,
                s.clients,
                r.mode,
                s.name,
                r.storm.resumes,
                r.storm.snapshots
            ),
            r.reconverge_seconds <= 10.0 && r.storm.snapshots == 0,
        ))
    })
}

fn api_bytes_goal(
    steady: Option<&ScenarioReport>,
    direct: Option<&ScenarioReport>,
    comparison: Option<&Comparison>,
) -> Goal {
    let goal = "API-server bytes with typha vs direct";
    let target = "<= 1/100 at 1,000 clients";
    if let (Some(s), Some(d)) = (steady, direct)
        && d.clients < s.clients
    {
        return Goal::not_measured(goal, target, format!("ran {}", d.clients), String::new());
    }
    judged(goal, target, steady.and(direct), API_GOAL_CLIENTS, |_| {
        let c = comparison?;
        Some((
            format!(
                "1/{:.0} ({} vs {} bytes)",
                1.0 / c.bytes_ratio.max(1e-12),
                c.api_bytes_with_typha,
                c.api_bytes_direct
            ),
            c.bytes_ratio <= 0.01,
        ))
    })
}

fn fanout_goal(steady: Option<&ScenarioReport>) -> Goal {
    let goal = "fan-out cost vs raw loopback writes";
    judged(goal, "<= 2x at 5,000 clients", steady, GOAL_CLIENTS, |s| {
        let r = s.raw_baseline.as_ref()?;
        Some((
            format!(
                "{:.1}x ({:.2} s typha CPU vs {:.2} s raw for {} bytes)",
                r.ratio, r.typha_cpu_seconds, r.raw.cpu_seconds, r.raw.bytes
            ),
            r.ratio <= 2.0,
        ))
    })
}

#[cfg(test)]
mod tests;
