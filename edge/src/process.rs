//! The standard `process_*` metrics (the names every Prometheus client library exports),
//! read from /proc/self at each scrape: CPU time, resident and virtual memory, open and
//! maximum file descriptors, threads, start time.
//!
//! Invariants: Linux only (elsewhere nothing is recorded); a file that cannot be read
//! leaves its metrics as they were; CPU seconds assume USER_HZ = 100 (the value the
//! kernel's /proc ABI uses on every architecture Linux containers run on).

use std::fs;

/// Every process metric with its HELP text.
pub const NAMES: [(&str, &str); 7] = [
    (
        "process_cpu_seconds_total",
        "User and system CPU time spent, in seconds",
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size, in bytes",
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size, in bytes",
    ),
    ("process_open_fds", "Open file descriptors"),
    ("process_max_fds", "Maximum number of open file descriptors"),
    ("process_threads", "OS threads in the process"),
    (
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds",
    ),
];

const USER_HZ: f64 = 100.0;
const PAGE: f64 = 4096.0;

/// Reads /proc/self and sets the process gauges.
pub fn record() {
    if let Some(stat) = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| Stat::parse(&s))
    {
        metrics::gauge!("process_cpu_seconds_total").set((stat.utime + stat.stime) / USER_HZ);
        metrics::gauge!("process_virtual_memory_bytes").set(stat.vsize);
        metrics::gauge!("process_resident_memory_bytes").set(stat.rss_pages * PAGE);
        metrics::gauge!("process_threads").set(stat.threads);
        if let Some(boot) = boot_time() {
            metrics::gauge!("process_start_time_seconds").set(boot + stat.start_ticks / USER_HZ);
        }
    }
    if let Ok(fds) = fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
    if let Some(max) = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| max_fds(&l))
    {
        metrics::gauge!("process_max_fds").set(max);
    }
}

/// The fields of /proc/self/stat the metrics use.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: f64,
    stime: f64,
    threads: f64,
    start_ticks: f64,
    vsize: f64,
    rss_pages: f64,
}

impl Stat {
    /// Parses the line; the command name (field 2) may hold spaces and parentheses, so
    /// fields are counted after its last ')'.
    fn parse(line: &str) -> Option<Stat> {
        let rest = &line[line.rfind(')')? + 1..];
        // rest[0] is field 3 (state): field n is rest[n - 3].
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

fn boot_time() -> Option<f64> {
    fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_past_a_command_with_spaces() {
        let line = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 7 0 1234 8192 3 rest";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 250.0,
                stime: 50.0,
                threads: 7.0,
                start_ticks: 1234.0,
                vsize: 8192.0,
                rss_pages: 3.0,
            })
        );
        assert_eq!(Stat::parse("garbage"), None);
    }

    #[test]
    fn limits_give_max_fds() {
        let limits = "Limit Soft Hard Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_fds(limits), Some(1024.0));
    }
}
