//! The raw loopback baseline: the bytes typha wrote, in writes of typha's average size,
//! to as many plain TCP sockets as it had clients, by a child process doing nothing
//! else. typha's CPU time over the writer's is the fan-out cost relative to what the
//! machine can do at all (TLS, HTTP/2 framing and scheduling are the difference).
//!
//! The writer (`loadtest raw-writer`) connects to sinks in this process, writes
//! round-robin (one write per socket per round, like one delta frame to every client),
//! and prints its own CPU and wall time as JSON before exiting.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::procs::{ChildProc, ProcStats};

/// What the writer measured about itself.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RawResult {
    /// Bytes written in total.
    pub bytes: u64,
    /// Sockets written to.
    pub connections: u64,
    /// Bytes per write.
    pub write_bytes: u64,
    /// The writer's user + system CPU seconds for the writes.
    pub cpu_seconds: f64,
    /// Wall seconds for the writes.
    pub wall_seconds: f64,
}

/// `loadtest raw-writer ADDR CONNECTIONS TOTAL_BYTES WRITE_BYTES`: the child side.
pub fn writer_main(args: &[String]) -> ExitCode {
    match writer(args) {
        Ok(result) => match serde_json::to_string(&result) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("raw-writer: {error}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("raw-writer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn writer(args: &[String]) -> anyhow::Result<RawResult> {
    let [addr, conns, total, size] = args else {
        anyhow::bail!("usage: loadtest raw-writer ADDR CONNECTIONS TOTAL_BYTES WRITE_BYTES");
    };
    let addr: SocketAddr = addr.parse()?;
    let conns: u64 = conns.parse()?;
    let total: u64 = total.parse()?;
    let size: u64 = size.parse::<u64>()?.max(1);
    let mut sockets = Vec::with_capacity(conns as usize);
    for _ in 0..conns {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        sockets.push(s);
    }
    let payload = vec![0x5au8; size as usize];
    let before = ProcStats::this_process().context("reading /proc/self")?;
    let started = Instant::now();
    let mut written = 0u64;
    while written < total {
        for s in &mut sockets {
            s.write_all(&payload)?;
            written += size;
            if written >= total {
                break;
            }
        }
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let after = ProcStats::this_process().context("reading /proc/self")?;
    Ok(RawResult {
        bytes: written,
        connections: conns,
        write_bytes: size,
        cpu_seconds: after.since(&before).cpu_seconds,
        wall_seconds,
    })
}

/// Runs the baseline: sinks here, the writer as a child. `write_bytes` is clamped to at
/// least 1 and `bytes` to at least one write per connection.
pub async fn run(
    connections: u64,
    bytes: u64,
    write_bytes: u64,
    log_dir: &std::path::Path,
) -> anyhow::Result<RawResult> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let write_bytes = write_bytes.max(1);
    let bytes = bytes.max(write_bytes * connections.max(1));
    let args: Vec<String> = vec![
        "raw-writer".into(),
        addr.to_string(),
        connections.to_string(),
        bytes.to_string(),
        write_bytes.to_string(),
    ];
    let mut child = ChildProc::spawn("raw-writer", &args, log_dir)?;
    let mut sinks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (mut socket, _) = listener.accept().await?;
        sinks.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            got
        });
    }
    let mut received = 0;
    while let Some(got) = sinks.join_next().await {
        received += got.unwrap_or(0);
    }
    let status = child.wait_exit(std::time::Duration::from_secs(30)).await;
    anyhow::ensure!(
        status.is_some_and(|s| s.success()),
        "raw-writer failed: {}",
        child.log_tail()
    );
    let log = std::fs::read_to_string(log_dir.join("raw-writer.log")).unwrap_or_default();
    let result: RawResult = log
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("raw-writer printed no result: {log}"))?;
    anyhow::ensure!(
        received == result.bytes,
        "sinks got {received} of {} bytes",
        result.bytes
    );
    Ok(result)
}
