//! The client fleet: thousands of real felix-client [`SyncClient`]s (mutual TLS, own
//! mirror, digest verified at every in-sync), each with a consumer of its events that
//! detects stamps (see [`crate::probe`]). A fleet's agents run in agent worker processes
//! ([`crate::worker`], the scenarios' fleets) or in this process ([`FleetClient`]: the
//! reference clients, and each worker's own agents); either way the fleet reads them as
//! [`AgentView`]s, so waits and counters do not care where an agent runs.
//!
//! A consumer can be slow (it pauses after every event) or stalled (it reads nothing
//! until released): the sync client then stops reading its stream, exactly what a slow
//! agent does to typha. Clients are stopped with their cancellation tokens and return
//! their mirrors, whose digests the scenario compares.
//! A running client's digest is its sync client's published one
//! ([`SyncStatus::digest`]): the soak compares it at every barrier without stopping it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use felix_client::discovery::TyphaSource;
use felix_client::{Mirror, SyncClient, SyncConfig, SyncEvent, SyncStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use typha_proto::Digest;

use crate::probe::{Probe, mark_of};
use crate::worker::{AgentBehaviour, AgentSpec, Worker, WorkerPlan};

/// A sync client's configuration for `node` with the candidates of `typha` (backoff up
/// to 5 s, as an agent under load would).
pub fn agent_config(
    node: String,
    typha: TyphaSource,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> SyncConfig {
    let mut config = SyncConfig::with_source(node, typha);
    config.tls = tls;
    config.backoff_max = Duration::from_secs(5);
    config
}

/// One agent's state as the fleet sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentView {
    /// Its mirror equals the server's state.
    pub in_sync: bool,
    /// The last barrier it applied.
    pub barrier: u64,
}

impl AgentView {
    /// In sync and at or past `barrier`.
    pub fn converged(&self, barrier: u64) -> bool {
        self.in_sync && self.barrier >= barrier
    }
}

/// How a client's consumer reads its events.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Reads at once.
    Normal,
    /// Pauses this long after every event.
    Slow(Duration),
    /// Reads nothing until the token is cancelled, then reads normally.
    Stall(CancellationToken),
    /// Reads at once but records no latency: a reference client that joins late (its
    /// catch-up after the first in-sync is not propagation).
    Reference,
}

impl Behaviour {
    fn is_normal(&self) -> bool {
        matches!(self, Behaviour::Normal)
    }

    /// The form a worker is told (a stalled agent there waits for the worker's release).
    pub fn spec(&self) -> AgentBehaviour {
        match self {
            Behaviour::Normal => AgentBehaviour::Normal,
            Behaviour::Slow(pause) => AgentBehaviour::Slow(pause.as_millis() as u64),
            Behaviour::Stall(_) => AgentBehaviour::Stall,
            Behaviour::Reference => AgentBehaviour::Reference,
        }
    }
}

/// One client of the fleet.
pub struct FleetClient {
    /// The sync client's live counters.
    pub status: Arc<SyncStatus>,
    /// The last barrier this client applied.
    pub barrier: Arc<AtomicU64>,
    /// How its consumer reads.
    pub behaviour: Behaviour,
    /// Its node name.
    pub name: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<Mirror, felix_client::SyncError>>,
}

impl FleetClient {
    /// Starts a client with `config`, reporting to `probe`.
    pub fn spawn(config: SyncConfig, probe: Arc<Probe>, behaviour: Behaviour) -> FleetClient {
        let name = config.node_name.clone();
        let client = SyncClient::new(config);
        let status = client.status();
        let shutdown = CancellationToken::new();
        let barrier = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(64);
        let consumer = Consumer {
            probe,
            behaviour: behaviour.clone(),
            barrier: barrier.clone(),
        };
        tokio::spawn(consumer.run(rx));
        let task = tokio::spawn(client.run(tx, shutdown.clone()));
        FleetClient {
            status,
            barrier,
            behaviour,
            name,
            shutdown,
            task,
        }
    }

    /// Its state now.
    pub fn view(&self) -> AgentView {
        AgentView {
            in_sync: self.status.in_sync.load(Ordering::Relaxed),
            barrier: self.barrier.load(Ordering::Relaxed),
        }
    }

    /// The client's mirror digest now.
    pub fn digest(&self) -> Digest {
        *self.status.digest.borrow()
    }

    /// Stops the client and returns its mirror.
    pub async fn stop(self) -> anyhow::Result<Mirror> {
        self.shutdown.cancel();
        Ok(self.task.await??)
    }
}

/// Reads one client's events: records latency and follows the barrier.
struct Consumer {
    probe: Arc<Probe>,
    behaviour: Behaviour,
    barrier: Arc<AtomicU64>,
}

impl Consumer {
    async fn run(self, mut rx: mpsc::Receiver<SyncEvent>) {
        let Consumer {
            probe,
            behaviour,
            barrier,
        } = self;
        if let Behaviour::Stall(release) = &behaviour {
            release.cancelled().await;
        }
        let slow = !behaviour.is_normal();
        let record = !matches!(behaviour, Behaviour::Reference);
        // Changes reported by the first snapshot are the whole cluster, not propagation.
        let mut synced_once = false;
        while let Some(event) = rx.recv().await {
            match event {
                SyncEvent::Changes { updates, .. } if synced_once && record => {
                    for update in &updates {
                        let Some(mark) = mark_of(update) else {
                            continue;
                        };
                        if let Some(n) = probe.observe_mark(&mark, slow) {
                            barrier.fetch_max(n, Ordering::Relaxed);
                            probe.changed.notify_one();
                            probe.barrier_reached.notify_waiters();
                        }
                    }
                }
                SyncEvent::Changes { updates, .. } => {
                    // Only the barrier: the first snapshot, or a reference client.
                    for update in &updates {
                        if let Some(crate::probe::Mark::Barrier(n)) = mark_of(update) {
                            barrier.fetch_max(n, Ordering::Relaxed);
                            probe.changed.notify_one();
                            probe.barrier_reached.notify_waiters();
                        }
                    }
                }
                SyncEvent::InSync { .. } => {
                    synced_once = true;
                    probe.changed.notify_one();
                    probe.barrier_reached.notify_waiters();
                }
                _ => {}
            }
            if let Behaviour::Slow(pause) = behaviour {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Counters summed over the fleet.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FleetCounters {
    /// Sessions that ended and were retried.
    pub reconnects: u64,
    /// Snapshots received (the first connection's included).
    pub snapshots: u64,
    /// Sessions resumed without a snapshot.
    pub resumes: u64,
    /// Digest mismatches detected by clients.
    pub digest_mismatches: u64,
    /// Delta batches applied.
    pub batches: u64,
}

impl std::ops::AddAssign for FleetCounters {
    fn add_assign(&mut self, other: FleetCounters) {
        self.reconnects += other.reconnects;
        self.snapshots += other.snapshots;
        self.resumes += other.resumes;
        self.digest_mismatches += other.digest_mismatches;
        self.batches += other.batches;
    }
}

impl FleetCounters {
    /// One sync client's counters now.
    pub fn of(status: &SyncStatus) -> FleetCounters {
        FleetCounters {
            reconnects: status.reconnects.load(Ordering::Relaxed),
            snapshots: status.snapshots.load(Ordering::Relaxed),
            resumes: status.resumes.load(Ordering::Relaxed),
            digest_mismatches: status.digest_mismatches.load(Ordering::Relaxed),
            batches: status.batches.load(Ordering::Relaxed),
        }
    }

    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &FleetCounters) -> FleetCounters {
        FleetCounters {
            reconnects: self.reconnects - earlier.reconnects.min(self.reconnects),
            snapshots: self.snapshots - earlier.snapshots.min(self.snapshots),
            resumes: self.resumes - earlier.resumes.min(self.resumes),
            digest_mismatches: self.digest_mismatches
                - earlier.digest_mismatches.min(self.digest_mismatches),
            batches: self.batches - earlier.batches.min(self.batches),
        }
    }
}

/// Many agents: in worker processes, or in this process.
#[derive(Default)]
pub struct Fleet {
    /// Agents in this process, in start order.
    pub clients: Vec<FleetClient>,
    workers: Vec<Worker>,
}

/// What a stopped fleet leaves: every agent's final digest, and each worker's name, PID
/// and figures over its life.
pub struct Stopped {
    /// (node name, digest), clients in this process first.
    pub digests: Vec<(String, Digest)>,
    /// The workers' own figures.
    pub workers: Vec<crate::report::ProcessFigures>,
}

impl Fleet {
    /// Starts `agents` over `workers` worker processes (contiguous shares, as even as
    /// they divide), reporting into `probe`.
    pub fn spawn_workers(
        agents: Vec<AgentSpec>,
        workers: usize,
        plan: &WorkerPlan<'_>,
        probe: &Arc<Probe>,
    ) -> anyhow::Result<Fleet> {
        let n = agents.len();
        let workers = workers.clamp(1, n.max(1));
        let mut fleet = Fleet::default();
        let mut agents = agents.into_iter();
        for k in 0..workers {
            let share = (k + 1) * n / workers - k * n / workers;
            let mine: Vec<AgentSpec> = agents.by_ref().take(share).collect();
            fleet.workers.push(Worker::spawn(k, mine, plan, probe)?);
        }
        Ok(fleet)
    }

    /// Agents, wherever they run.
    pub fn len(&self) -> usize {
        self.clients.len() + self.workers.iter().map(|w| w.agents().len()).sum::<usize>()
    }

    /// Whether the fleet has no agents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every agent's state, clients in this process first.
    pub fn views(&self) -> impl Iterator<Item = AgentView> + '_ {
        let remote = self
            .workers
            .iter()
            .flat_map(|w| w.agents().iter().map(|a| a.view()));
        self.clients.iter().map(FleetClient::view).chain(remote)
    }

    /// Agents in sync now.
    pub fn in_sync(&self) -> usize {
        self.views().filter(|v| v.in_sync).count()
    }

    /// Sums the agents' counters.
    pub fn counters(&self) -> FleetCounters {
        let mut sum = FleetCounters::default();
        for c in &self.clients {
            sum += FleetCounters::of(&c.status);
        }
        for w in &self.workers {
            sum += w.counters();
        }
        sum
    }

    /// Waits until every agent satisfies `done`, re-checking on every barrier/in-sync
    /// notification and at least every 50 ms (in-sync flags change without one). Fails
    /// at once if a worker died. Returns the time taken.
    pub async fn wait_until(
        &self,
        probe: &Probe,
        limit: Duration,
        done: impl Fn(&AgentView) -> bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let notified = probe.barrier_reached.notified();
            for w in &self.workers {
                w.check()?;
            }
            let ready = self.views().filter(|v| done(v)).count();
            if ready == self.len() {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "{} of {} clients not there after {limit:?}",
                self.len() - ready,
                self.len()
            );
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Every agent's live digest, without stopping it.
    pub async fn live_digests(&self) -> anyhow::Result<Vec<(String, Digest)>> {
        let mut digests: Vec<_> = self
            .clients
            .iter()
            .map(|c| (c.name.clone(), c.digest()))
            .collect();
        for w in &self.workers {
            digests.extend(w.digests().await?);
        }
        Ok(digests)
    }

    /// Stops every agent; returns their names and final digests, and the workers' figures.
    pub async fn stop(self) -> anyhow::Result<Stopped> {
        for c in &self.clients {
            c.shutdown.cancel();
        }
        let mut stopped = Stopped {
            digests: Vec::with_capacity(self.len()),
            workers: Vec::new(),
        };
        for c in self.clients {
            let name = c.name.clone();
            stopped.digests.push((name, c.stop().await?.digest()));
        }
        let ends = futures::future::join_all(self.workers.into_iter().map(Worker::stop)).await;
        for end in ends {
            let (digests, figures) = end?;
            stopped.digests.extend(digests);
            stopped.workers.push(figures);
        }
        Ok(stopped)
    }
}
