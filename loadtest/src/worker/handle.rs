//! The parent's side of one agent worker: starts the process (pinned to the agents'
//! CPUs), mirrors what it reports into [`AgentCell`]s and summed counters the fleet reads
//! like its in-process clients', merges its latency samples into the scenario's probe,
//! forwards churn's deletions and the stalled agents' release, and asks for digests.
//!
//! Invariants: the reader task is the only writer of the cells and counters; every state
//! message wakes the probe's barrier waiters; a worker whose channel ends before it
//! reported its stop is marked failed, and the fleet's waits fail with its log tail
//! instead of running into their limit. The process is killed by PID when dropped.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use edge::tls::TransportChoice;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use typha_proto::Digest;

use super::{AgentSpec, FromWorker, ToWorker, WorkerSpec, parse_digest};
use crate::fleet::{AgentView, FleetCounters};
use crate::pinning::CpuList;
use crate::probe::Probe;
use crate::procs::ChildProc;
use crate::report::ProcessFigures;
use crate::stack::TyphaTargets;

/// What the parent knows of one agent in a worker.
pub struct AgentCell {
    /// Node name.
    pub name: String,
    in_sync: AtomicBool,
    barrier: AtomicU64,
}

impl AgentCell {
    /// Its state as last reported.
    pub fn view(&self) -> AgentView {
        AgentView {
            in_sync: self.in_sync.load(Ordering::Relaxed),
            barrier: self.barrier.load(Ordering::Relaxed),
        }
    }
}

/// What every worker of a fleet shares.
pub struct WorkerPlan<'a> {
    /// Where the agents find the replicas.
    pub typha: TyphaTargets,
    /// How they reach them.
    pub transport: TransportChoice,
    /// The agents' CPUs (empty: this process's set, inherited).
    pub cpus: &'a CpuList,
    /// Where the specs and the workers' logs go.
    pub dir: &'a Path,
    /// Cancelled to release stalled agents.
    pub release: CancellationToken,
}

/// What the reader passes on to whoever waits for an answer.
enum Reply {
    Digests(Vec<String>),
    Stopped(Vec<Result<String, String>>, ProcessFigures),
}

/// Shared between the handle and its reader task.
struct Shared {
    agents: Vec<AgentCell>,
    counters: Mutex<FleetCounters>,
    failed: Mutex<Option<String>>,
}

/// One running worker.
pub struct Worker {
    name: String,
    proc: ChildProc,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<ToWorker>,
    replies: tokio::sync::Mutex<mpsc::UnboundedReceiver<Reply>>,
    _tasks: JoinSet<()>,
}

impl Worker {
    /// Starts worker `k` running `agents`, reporting into `probe`.
    pub fn spawn(
        k: usize,
        agents: Vec<AgentSpec>,
        plan: &WorkerPlan<'_>,
        probe: &Arc<Probe>,
    ) -> anyhow::Result<Worker> {
        let name = format!("agent-worker-{k}");
        let spec_path = plan.dir.join(format!("{name}.json"));
        let spec = WorkerSpec {
            agents,
            typha: plan.typha.clone(),
            transport: plan.transport.clone(),
            epoch_ns: probe.epoch_ns(),
            latency_seconds: probe.seconds(),
        };
        std::fs::write(&spec_path, serde_json::to_vec(&spec)?)
            .with_context(|| format!("writing {}", spec_path.display()))?;
        let args = vec![
            "agent-worker".to_string(),
            "--spec".into(),
            spec_path.display().to_string(),
        ];
        let (proc, stdin, stdout) = ChildProc::spawn_worker(&name, &args, plan.dir, plan.cpus)?;
        let shared = Arc::new(Shared {
            agents: spec
                .agents
                .into_iter()
                .map(|a| AgentCell {
                    name: a.name,
                    in_sync: AtomicBool::new(false),
                    barrier: AtomicU64::new(0),
                })
                .collect(),
            counters: Mutex::new(FleetCounters::default()),
            failed: Mutex::new(None),
        });
        let (commands, to_worker) = mpsc::unbounded_channel();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let stdout = tokio::process::ChildStdout::from_std(stdout)?;
        let id = (name.clone(), proc.pid());
        tasks.spawn(read(id, stdout, shared.clone(), probe.clone(), replies_tx));
        tasks.spawn(write(
            tokio::process::ChildStdin::from_std(stdin)?,
            to_worker,
        ));
        tasks.spawn(forward(
            probe.clone(),
            plan.release.clone(),
            commands.clone(),
        ));
        Ok(Worker {
            name,
            proc,
            shared,
            commands,
            replies: tokio::sync::Mutex::new(replies),
            _tasks: tasks,
        })
    }

    /// The agents as last reported.
    pub fn agents(&self) -> &[AgentCell] {
        &self.shared.agents
    }

    /// The counters summed over its agents, as last reported.
    pub fn counters(&self) -> FleetCounters {
        self.shared.counters.lock().map(|c| *c).unwrap_or_default()
    }

    /// Fails if the worker's channel ended before it stopped.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.shared.failed.lock().ok().and_then(|f| f.clone()) {
            None => Ok(()),
            Some(why) => anyhow::bail!("{}: {why}; log:\n{}", self.name, self.proc.log_tail()),
        }
    }

    async fn reply(&self) -> anyhow::Result<Reply> {
        let reply = self.replies.lock().await.recv().await;
        match reply {
            Some(reply) => Ok(reply),
            None => {
                self.check()?;
                anyhow::bail!("{} stopped answering", self.name)
            }
        }
    }

    /// Every agent's live digest.
    pub async fn digests(&self) -> anyhow::Result<Vec<(String, Digest)>> {
        self.commands.send(ToWorker::Digests)?;
        match self.reply().await? {
            Reply::Digests(hex) => self.named(hex.into_iter().map(Ok).collect()),
            Reply::Stopped(..) => anyhow::bail!("{} stopped early", self.name),
        }
    }

    /// Stops every agent; returns their final digests and the worker's own figures
    /// over its life (with the CPUs it ran on).
    pub async fn stop(mut self) -> anyhow::Result<(Vec<(String, Digest)>, ProcessFigures)> {
        self.commands.send(ToWorker::Stop)?;
        let (digests, figures) = loop {
            match self.reply().await? {
                Reply::Stopped(digests, figures) => break (digests, figures),
                Reply::Digests(_) => continue,
            }
        };
        let digests = self.named(digests)?;
        self.proc.wait_exit(Duration::from_secs(30)).await;
        Ok((digests, figures))
    }

    fn named(&self, digests: Vec<Result<String, String>>) -> anyhow::Result<Vec<(String, Digest)>> {
        anyhow::ensure!(
            digests.len() == self.shared.agents.len(),
            "{}: {} digests for {} agents",
            self.name,
            digests.len(),
            self.shared.agents.len()
        );
        let mut named = Vec::with_capacity(digests.len());
        for (agent, digest) in self.shared.agents.iter().zip(digests) {
            let digest = digest.map_err(|e| anyhow::anyhow!("{}: {e}", agent.name))?;
            named.push((agent.name.clone(), parse_digest(&digest)?));
        }
        Ok(named)
    }
}

/// Applies the worker's messages until its stdout ends.
async fn read(
    (name, pid): (String, u32),
    stdout: tokio::process::ChildStdout,
    shared: Arc<Shared>,
    probe: Arc<Probe>,
    replies: mpsc::UnboundedSender<Reply>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let why = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break "its channel closed".to_string(),
            Err(error) => break format!("reading its channel: {error}"),
        };
        let message = match serde_json::from_str::<FromWorker>(&line) {
            Ok(message) => message,
            Err(error) => break format!("bad message {line:?}: {error}"),
        };
        match message {
            FromWorker::State(changed, counters) => {
                if let Ok(mut c) = shared.counters.lock() {
                    *c = counters;
                }
                for (i, in_sync, barrier) in changed {
                    if let Some(cell) = shared.agents.get(i as usize) {
                        cell.in_sync.store(in_sync, Ordering::Relaxed);
                        cell.barrier.store(barrier, Ordering::Relaxed);
                    }
                }
                probe.barrier_reached.notify_waiters();
            }
            FromWorker::Latency(normal, slow) => {
                probe.normal.absorb(&normal);
                probe.slow.absorb(&slow);
            }
            FromWorker::Digests(hex) => {
                let _ = replies.send(Reply::Digests(hex));
            }
            FromWorker::Stopped(digests, stats, cpus) => {
                let mut figures = ProcessFigures::new(&name, pid, &stats);
                figures.cpus = cpus;
                let _ = replies.send(Reply::Stopped(digests, figures));
                return;
            }
        }
    };
    if let Ok(mut failed) = shared.failed.lock() {
        *failed = Some(why);
    }
    probe.barrier_reached.notify_waiters();
}

/// Writes commands to the worker's stdin until every sender is gone.
async fn write(
    mut stdin: tokio::process::ChildStdin,
    mut commands: mpsc::UnboundedReceiver<ToWorker>,
) {
    while let Some(command) = commands.recv().await {
        let Ok(mut line) = serde_json::to_vec(&command) else {
            continue;
        };
        line.push(b'\n');
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

/// Forwards churn's deletions, and the release of stalled agents once it comes.
async fn forward(
    probe: Arc<Probe>,
    release: CancellationToken,
    commands: mpsc::UnboundedSender<ToWorker>,
) {
    let mut deletions = probe.subscribe_deletions();
    let mut released = false;
    loop {
        tokio::select! {
            _ = release.cancelled(), if !released => {
                released = true;
                let _ = commands.send(ToWorker::Release);
            }
            deleted = deletions.recv() => {
                let Some((pod, stamp)) = deleted else { return };
                if commands.send(ToWorker::Deleted(pod, stamp)).is_err() {
                    return;
                }
            }
        }
    }
}
