//! The worker process (`loadtest agent-worker --spec FILE`): starts the spec's agents on
//! a single-threaded runtime, answers the parent's commands from stdin and reports on
//! stdout (see the module docs of [`super`] for the protocol).
//!
//! Invariants: the process's open-file limit was raised to its hard limit by `main`
//! before anything else (one socket per agent); state messages go out on every change notification and at least
//! every [`STATE_EVERY`], latency deltas every [`LATENCY_EVERY`]; on stop (or when stdin
//! closes) every agent is stopped and its final digest reported before the process exits.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge::discovery::{Discovery, DiscoveryConfig};
use felix_client::discovery::TyphaSource;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Stdout};
use tokio_util::sync::CancellationToken;

use super::{AgentBehaviour, FromWorker, ToWorker, WorkerSpec};
use crate::fleet::{Behaviour, Fleet, FleetClient, FleetCounters, agent_config};
use crate::probe::Probe;
use crate::procs::ProcStats;
use crate::stack::TyphaTargets;

/// The longest a state change waits to be reported when no notification came (in-sync
/// drops on a disconnect notify nobody).
pub const STATE_EVERY: Duration = Duration::from_millis(50);
/// How often latency samples are shipped.
pub const LATENCY_EVERY: Duration = Duration::from_millis(250);

/// `loadtest agent-worker --spec FILE`.
pub fn worker_main(args: &[String]) -> ExitCode {
    let result = (|| {
        let path = match args {
            [flag, path] if flag == "--spec" => path,
            _ => anyhow::bail!("usage: loadtest agent-worker --spec FILE"),
        };
        let text = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let spec: WorkerSpec = serde_json::from_slice(&text).context("the worker spec")?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(spec))
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadtest agent-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the worker last told the parent.
struct Reporter {
    out: Stdout,
    sent: Vec<(bool, u64)>,
    counters: Option<FleetCounters>,
}

impl Reporter {
    async fn send(&mut self, message: &FromWorker) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        self.out.write_all(&line).await?;
        self.out.flush().await.context("writing to the parent")
    }

    /// Sends the agents whose state changed and the counters, if anything changed.
    async fn state(&mut self, fleet: &Fleet) -> anyhow::Result<()> {
        let counters = fleet.counters();
        let mut changed = Vec::new();
        for (i, (view, sent)) in fleet.views().zip(self.sent.iter_mut()).enumerate() {
            let now = (view.in_sync, view.barrier);
            if now != *sent {
                *sent = now;
                changed.push((i as u32, now.0, now.1));
            }
        }
        if changed.is_empty() && self.counters == Some(counters) {
            return Ok(());
        }
        self.counters = Some(counters);
        self.send(&FromWorker::State(changed, counters)).await
    }

    async fn latency(&mut self, probe: &Probe) -> anyhow::Result<()> {
        let (normal, slow) = (probe.normal.drain(), probe.slow.drain());
        if normal.is_empty() && slow.is_empty() {
            return Ok(());
        }
        self.send(&FromWorker::Latency(normal, slow)).await
    }
}

async fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    let probe = Probe::with_epoch(spec.epoch_ns, spec.latency_seconds);
    let tls = spec.transport.client_config()?;
    let release = CancellationToken::new();
    let stop_discovery = CancellationToken::new();
    let _stop_discovery = stop_discovery.clone().drop_guard();
    let source = typha_source(&spec.typha, &stop_discovery)?;
    let mut fleet = Fleet::default();
    for agent in &spec.agents {
        let config = agent_config(agent.name.clone(), source.clone(), tls.clone());
        let behaviour = match agent.behaviour {
            AgentBehaviour::Normal => Behaviour::Normal,
            AgentBehaviour::Slow(ms) => Behaviour::Slow(Duration::from_millis(ms)),
            AgentBehaviour::Stall => Behaviour::Stall(release.clone()),
            AgentBehaviour::Reference => Behaviour::Reference,
        };
        fleet
            .clients
            .push(FleetClient::spawn(config, probe.clone(), behaviour));
    }
    let mut reporter = Reporter {
        out: tokio::io::stdout(),
        sent: vec![(false, 0); fleet.len()],
        counters: None,
    };
    serve(&fleet, &probe, &release, &mut reporter).await?;
    reporter.state(&fleet).await?;
    reporter.latency(&probe).await?;
    let mut digests = Vec::with_capacity(fleet.len());
    for client in fleet.clients {
        digests.push(match client.stop().await {
            Ok(mirror) => Ok(mirror.digest().to_string()),
            Err(error) => Err(format!("{error:#}")),
        });
    }
    let stats = ProcStats::this_process().unwrap_or_default();
    let cpus = crate::pinning::current();
    reporter
        .send(&FromWorker::Stopped(digests, stats, cpus))
        .await
}

/// The agents' candidates: the fixed list, or one EndpointSlice watch for the whole
/// worker that every agent follows (each real agent runs its own; one per worker keeps
/// the API server's watch count to the workers', which is what is measured here).
fn typha_source(typha: &TyphaTargets, stop: &CancellationToken) -> anyhow::Result<TyphaSource> {
    Ok(match typha {
        TyphaTargets::Addresses(addresses) => TyphaSource::fixed(addresses.clone()),
        TyphaTargets::Service {
            api,
            namespace,
            name,
        } => {
            let url = api
                .parse()
                .with_context(|| format!("API server URL {api:?}"))?;
            let client = kube::Client::try_from(kube::Config::new(url))
                .with_context(|| format!("a client for {api}"))?;
            let config = DiscoveryConfig::new(namespace.clone(), name.clone());
            TyphaSource::discovered(Discovery::spawn(client, config, stop))
        }
    })
}

/// Answers commands and reports until told to stop (or stdin closes).
async fn serve(
    fleet: &Fleet,
    probe: &Arc<Probe>,
    release: &CancellationToken,
    reporter: &mut Reporter,
) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut state_tick = tokio::time::interval(STATE_EVERY);
    let mut latency_tick = tokio::time::interval(LATENCY_EVERY);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line.context("reading from the parent")? else {
                    return Ok(());
                };
                match serde_json::from_str(&line).with_context(|| format!("command {line:?}"))? {
                    ToWorker::Deleted(pod, stamp) => probe.register_delete(&pod, stamp),
                    ToWorker::Release => release.cancel(),
                    ToWorker::Digests => {
                        let digests = fleet.clients.iter().map(|c| c.digest().to_string());
                        reporter.send(&FromWorker::Digests(digests.collect())).await?;
                    }
                    ToWorker::Stop => return Ok(()),
                }
            }
            _ = probe.changed.notified() => reporter.state(fleet).await?,
            _ = state_tick.tick() => reporter.state(fleet).await?,
            _ = latency_tick.tick() => reporter.latency(probe).await?,
        }
    }
}
