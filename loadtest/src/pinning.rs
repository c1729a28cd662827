//! CPU pinning: typha and kube-sim on one CPU set, the agents on another, so that what
//! the load test measures is typha's share of a core and not the load generator's.
//!
//! A child process (the multi-call binary: `loadtest typha ...`, `loadtest kube-sim ...`,
//! `loadtest agent-worker ...`) pins itself from [`PIN_ENV`] in `main`, before its
//! runtime starts a thread, so every thread it ever has inherits the set (pinning a
//! running process from outside would miss threads it already started). The loadtest
//! process pins itself to the agents' set the same way.
//!
//! The servers' set is recorded once per process ([`set_server_cpus`], from the flags in
//! `main`); every child the load test starts ([`crate::procs::ChildProc`]) gets it in its
//! environment, so kube-sim, the replicas (restarted ones too) and the raw-loopback
//! writer share typha's CPUs.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::Context;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The environment variable a child process reads its CPU set from.
pub const PIN_ENV: &str = "LOADTEST_PIN_CPUS";

/// A set of CPUs, written `0`, `0-1` or `0,2-3`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl CpuList {
    /// No pinning.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<CpuList, String> {
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (from, to) = part.split_once('-').unwrap_or((part, part));
            let parse = |n: &str| {
                n.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{part:?} is not a CPU or CPU range"))
            };
            let (from, to) = (parse(from)?, parse(to)?);
            if from > to || to >= CpuSet::count() {
                return Err(format!("{part:?} is not a CPU range of this machine"));
            }
            cpus.extend(from..=to);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl serde::Serialize for CpuList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for CpuList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CpuList, D::Error> {
        Vec::<usize>::deserialize(d).map(CpuList)
    }
}

static SERVER_CPUS: OnceLock<CpuList> = OnceLock::new();

/// Records the CPUs this run's servers (kube-sim, typha, the raw writer) are pinned to;
/// the first call wins.
pub fn set_server_cpus(cpus: CpuList) {
    let _ = SERVER_CPUS.set(cpus);
}

/// The servers' CPUs ([`set_server_cpus`]); empty when they are not pinned.
pub fn server_cpus() -> Option<&'static CpuList> {
    SERVER_CPUS.get().filter(|c| !c.is_empty())
}

/// Pins this process (its calling thread and every thread it starts later) to `cpus`;
/// an empty list leaves it alone.
pub fn pin_self(cpus: &CpuList) -> anyhow::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = CpuSet::new();
    for cpu in &cpus.0 {
        set.set(*cpu).with_context(|| format!("CPU {cpu}"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPUs {cpus}"))
}

/// Pins this process to the set named by [`PIN_ENV`], if any.
pub fn pin_from_env() -> anyhow::Result<()> {
    match std::env::var(PIN_ENV) {
        Ok(list) => pin_self(&list.parse().map_err(anyhow::Error::msg)?),
        Err(_) => Ok(()),
    }
}

/// The CPUs this process may run on now.
pub fn current() -> CpuList {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return CpuList::default();
    };
    CpuList(
        (0..CpuSet::count())
            .filter(|c| set.is_set(*c).unwrap_or(false))
            .collect(),
    )
}

/// CPUs online on this machine.
pub fn online() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse_and_print() {
        assert_eq!("0".parse::<CpuList>(), Ok(CpuList(vec![0])));
        assert_eq!("1,0-1".parse::<CpuList>(), Ok(CpuList(vec![0, 1])));
        assert_eq!("".parse::<CpuList>(), Ok(CpuList(vec![])));
        assert_eq!(CpuList(vec![0, 2]).to_string(), "0,2");
        assert!("x".parse::<CpuList>().is_err());
        assert!("2-1".parse::<CpuList>().is_err());
    }
}
