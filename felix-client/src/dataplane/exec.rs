//! exec: runs the dataplane's helper programs (iptables-save/-restore, ipset) through
//! tokio::process, optionally inside a named network namespace.
//!
//! Why a wrapper: every command of the dataplane must run in the same namespace (the
//! node's in production, a test's `fdp-...` namespace in tests), and every failure must
//! carry the program, exit status and stderr. Invariant: with `netns: Some(name)` no
//! command ever runs in the caller's namespace; it runs under
//! `nsenter --net=/var/run/netns/<name>`, which fails when the namespace is missing.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::DataplaneError;

/// Where network namespaces named by `ip netns add` live.
pub(crate) const NETNS_DIR: &str = "/var/run/netns";

/// Runs commands in the dataplane's namespace.
#[derive(Clone, Debug)]
pub(crate) struct Runner {
    netns: Option<String>,
    /// The iptables programs (see [`super::backend`]); plain `iptables-*` until resolved.
    pub(crate) iptables: super::backend::Programs,
}

impl Runner {
    /// A runner for `netns` (`None`: the current namespace).
    pub(crate) fn new(netns: Option<String>) -> Runner {
        Runner {
            netns,
            iptables: super::backend::Programs::Plain,
        }
    }

    /// Runs `program args..`, feeding `stdin` when given, and returns its stdout.
    /// A non-zero exit is [`DataplaneError::CommandFailed`].
    pub(crate) async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, DataplaneError> {
        let mut command = match &self.netns {
            Some(name) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={NETNS_DIR}/{name}"))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_error = |source| DataplaneError::Spawn {
            program: program.to_owned(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        let pipe = child.stdin.take();
        let feed = async move {
            if let (Some(mut pipe), Some(input)) = (pipe, stdin) {
                pipe.write_all(input.as_bytes()).await?;
                pipe.shutdown().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(spawn_error)?;
        if !output.status.success() {
            return Err(DataplaneError::CommandFailed {
                program: program.to_owned(),
                code: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        // A failed write with a successful exit means the program did not need all of
        // its input, which none of ours does: treat it as a failure too.
        fed.map_err(spawn_error)?;
        String::from_utf8(output.stdout).map_err(|_| DataplaneError::Parse {
            what: "command output",
            line: format!("{program}: output is not UTF-8"),
        })
    }
}
