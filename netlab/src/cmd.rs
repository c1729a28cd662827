//! Running `ip` (iproute2) and friends: async for building the bench, blocking for the
//! drop guard (which cannot await). Every failure carries the command line and stderr.

use std::process::Output;

/// Errors of the bench.
#[derive(Debug, thiserror::Error)]
pub enum NetlabError {
    /// A command could not be started (not installed, not root).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command exited non-zero.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// Entering a namespace or creating a socket in it failed.
    #[error("in namespace {netns}: {what}: {source}")]
    Netns {
        /// The namespace.
        netns: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The bench was described inconsistently (a pod on a missing node, a duplicate).
    #[error("invalid topology: {0}")]
    Spec(String),
}

fn line(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn check(command: String, output: std::io::Result<Output>) -> Result<String, NetlabError> {
    let output = output.map_err(|source| NetlabError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(NetlabError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `program args...` and returns its standard output.
pub async fn run(program: &str, args: &[&str]) -> Result<String, NetlabError> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await;
    check(line(program, args), output)
}

/// Runs `ip args...`.
pub async fn ip(args: &[&str]) -> Result<String, NetlabError> {
    run("ip", args).await
}

/// Runs `ip -n <netns> args...`.
pub async fn ip_in(netns: &str, args: &[&str]) -> Result<String, NetlabError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all).await
}

/// Sets a sysctl inside `netns` (`ip netns exec <netns> sysctl -qw key=value`).
pub async fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<(), NetlabError> {
    let setting = format!("{key}={value}");
    run("ip", &["netns", "exec", netns, "sysctl", "-qw", &setting]).await?;
    Ok(())
}

/// Runs a program inside `netns` (`ip netns exec <netns> program args...`), for
/// diagnostics such as `iptables-save`.
pub async fn exec_in(netns: &str, program: &str, args: &[&str]) -> Result<String, NetlabError> {
    let mut all = vec!["netns", "exec", netns, program];
    all.extend_from_slice(args);
    run("ip", &all).await
}

/// Blocking `ip args...` for drop guards.
pub fn ip_blocking(args: &[&str]) -> Result<String, NetlabError> {
    let output = std::process::Command::new("ip").args(args).output();
    check(line("ip", args), output)
}
