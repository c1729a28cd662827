//! Child processes of the load test and per-process measurements from /proc.
//!
//! kube-sim, every typha replica and the raw-loopback writer run as subcommands of this
//! same binary (multi-call), so each has its own CPU time, RSS and byte counters. A
//! [`ChildProc`] kills its process by PID when dropped (also while unwinding from a
//! panic), so a failed run never leaves servers behind. Only processes this binary
//! started are ever signalled.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::pinning::CpuList;

/// Linux reports utime/stime in USER_HZ ticks, fixed at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU, memory and I/O counters of one process at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcStats {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident set size now, bytes.
    pub rss_bytes: u64,
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Bytes passed to write-like syscalls (sockets, pipes, files): `wchar`.
    pub bytes_written: u64,
    /// Bytes returned by read-like syscalls: `rchar`.
    pub bytes_read: u64,
    /// Write-like syscalls: `syscw`.
    pub write_calls: u64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/{stat,status,io}`; `None` once the process is gone.
    pub fn read(pid: u32) -> Option<ProcStats> {
        ProcStats::read_dir(&PathBuf::from(format!("/proc/{pid}")))
    }

    /// The calling process (the client process of the load test).
    pub fn this_process() -> Option<ProcStats> {
        ProcStats::read_dir(Path::new("/proc/self"))
    }

    fn read_dir(dir: &Path) -> Option<ProcStats> {
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        // After the name: state is field 3 (index 0 here), utime 14, stime 15.
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let cpu_seconds = (ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SECOND;
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let kb = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| v * 1024)
                .unwrap_or(0)
        };
        let io = std::fs::read_to_string(dir.join("io")).unwrap_or_default();
        let io_field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(ProcStats {
            cpu_seconds,
            rss_bytes: kb("VmRSS:"),
            peak_rss_bytes: kb("VmHWM:"),
            bytes_written: io_field("wchar:"),
            bytes_read: io_field("rchar:"),
            write_calls: io_field("syscw:"),
        })
    }

    /// Counters accumulated between `earlier` and `self` (RSS figures are `self`'s).
    pub fn since(&self, earlier: &ProcStats) -> ProcStats {
        ProcStats {
            cpu_seconds: (self.cpu_seconds - earlier.cpu_seconds).max(0.0),
            rss_bytes: self.rss_bytes,
            peak_rss_bytes: self.peak_rss_bytes,
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
            bytes_read: self.bytes_read.saturating_sub(earlier.bytes_read),
            write_calls: self.write_calls.saturating_sub(earlier.write_calls),
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit. `main` calls it
/// first in every mode, so the children (typha with thousands of agents' connections,
/// the agent workers with one socket per agent) inherit the raised limit too.
pub fn raise_open_files() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    }
    Ok(())
}

/// Resets this process's peak RSS (VmHWM) so the next scenario measures its own peak.
/// Best effort: older kernels refuse, and then the peak is the process's lifetime peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A child process running one of this binary's subcommands; killed by PID on drop.
pub struct ChildProc {
    name: String,
    child: Child,
    log: PathBuf,
    last: ProcStats,
}

impl ChildProc {
    /// Runs `current_exe <args>` with stdout and stderr going to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, args: &[String], log_dir: &Path) -> anyhow::Result<ChildProc> {
        let exe = std::env::current_exe().context("locating the loadtest binary")?;
        ChildProc::spawn_exe(&exe, name, args, log_dir)
    }

    /// As [`ChildProc::spawn`], running `exe` (tests name the `loadtest` binary here).
    pub fn spawn_exe(
        exe: &Path,
        name: &str,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<ChildProc> {
        let pin = crate::pinning::server_cpus();
        ChildProc::start(exe, name, args, log_dir, (pin, false))
    }

    /// An agent worker: `current_exe <args>` pinned to `cpus` (none: this process's
    /// set, inherited), stdin and stdout piped (its channel to this process), stderr
    /// to `<log_dir>/<name>.log`. Returns the pipes.
    pub fn spawn_worker(
        name: &str,
        args: &[String],
        log_dir: &Path,
        cpus: &CpuList,
    ) -> anyhow::Result<(ChildProc, ChildStdin, ChildStdout)> {
        let exe = std::env::current_exe().context("locating the loadtest binary")?;
        let pin = Some(cpus).filter(|c| !c.is_empty());
        let mut proc = ChildProc::start(&exe, name, args, log_dir, (pin, true))?;
        let pipes = proc.child.stdin.take().zip(proc.child.stdout.take());
        let (stdin, stdout) = pipes.context("the worker's pipes")?;
        Ok((proc, stdin, stdout))
    }

    /// Starts `exe <args>` pinned to `pin` (through [`crate::pinning::PIN_ENV`]), with
    /// stdin/stdout piped or not.
    fn start(
        exe: &Path,
        name: &str,
        args: &[String],
        log_dir: &Path,
        (pin, piped): (Option<&CpuList>, bool),
    ) -> anyhow::Result<ChildProc> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(exe);
        if let Some(cpus) = pin {
            command.env(crate::pinning::PIN_ENV, cpus.to_string());
        }
        let (stdin, stdout) = if piped {
            (Stdio::piped(), Stdio::piped())
        } else {
            (Stdio::null(), Stdio::from(out.try_clone()?))
        };
        let child = command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(ChildProc {
            name: name.to_string(),
            child,
            log,
            last: ProcStats::default(),
        })
    }

    /// The child's name (for reports).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Current counters (the last ones read if the process has exited).
    pub fn stats(&mut self) -> ProcStats {
        if let Some(stats) = ProcStats::read(self.pid()) {
            self.last = stats;
        }
        self.last
    }

    /// Fails with the tail of the child's log if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// The last lines of the child's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits up to `limit` for the child to exit on its own; kills it after that.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
        None
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.stats();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (through kill(1), by PID; the workspace forbids unsafe code, so no libc).
    pub fn signal_term(&mut self) {
        self.stats();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL.
    pub async fn terminate(&mut self, grace: Duration) {
        self.signal_term();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scratch directory (certificates, kubeconfig, child logs), removed on drop unless
/// the run failed and `keep` was set.
pub struct ScratchDir {
    path: PathBuf,
    /// Keep the directory (for a failed run's logs).
    pub keep: bool,
}

impl ScratchDir {
    /// Creates `$TMPDIR/loadtest-<pid>-<tag>`.
    pub fn create(tag: &str) -> anyhow::Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!("loadtest-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir { path, keep: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A free loopback port (bound and released; the child binds it right after).
///
/// One process never hands out the same port twice: the kernel may offer a port it just
/// released again, and two listeners told the same port collide (CI once saw typha's
/// health and metrics listeners given one port, and typha refused to start).
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..64 {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
        let port = listener.local_addr()?.port();
        let mut given = GIVEN
            .lock()
            .map_err(|_| anyhow::anyhow!("free_port: a thread panicked holding the port set"))?;
        if given.insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no loopback port that was not handed out before, after 64 tries")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(256), hard).unwrap();
        raise_open_files().unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }

    #[test]
    fn reads_this_process() {
        let stats = ProcStats::this_process().unwrap();
        assert!(stats.rss_bytes > 0);
        assert!(stats.peak_rss_bytes >= stats.rss_bytes);
        let later = ProcStats::this_process().unwrap();
        assert!(later.since(&stats).cpu_seconds >= 0.0);
    }

    #[test]
    fn child_is_killed_on_drop() {
        let dir = ScratchDir::create("procs-test").unwrap();
        // `current_exe` is the test binary: any argument it does not know makes it idle
        // in libtest's listing mode, so use a harmless filter that matches nothing and
        // check only that the PID is gone after drop.
        let child = ChildProc::spawn("idle", &["--list".into()], dir.path()).unwrap();
        let pid = child.pid();
        drop(child);
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty(), "process {pid} still present: {state}");
    }
}
