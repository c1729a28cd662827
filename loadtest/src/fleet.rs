//! The client fleet: thousands of real felix-client [`SyncClient`]s (mutual TLS, own
//! mirror, digest verified at every in-sync) in this process, each with a consumer of its
//! events that detects stamps (see [`crate::probe`]).
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

use felix_client::{Mirror, SyncClient, SyncConfig, SyncEvent, SyncStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use typha_proto::Digest;

use crate::probe::{Probe, mark_of};

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

    /// In sync and at or past `barrier`.
    pub fn converged(&self, barrier: u64) -> bool {
        self.status.in_sync.load(Ordering::Relaxed)
            && self.barrier.load(Ordering::Relaxed) >= barrier
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
                            probe.barrier_reached.notify_waiters();
                        }
                    }
                }
                SyncEvent::Changes { updates, .. } => {
                    // Only the barrier: the first snapshot, or a reference client.
                    for update in &updates {
                        if let Some(crate::probe::Mark::Barrier(n)) = mark_of(update) {
                            barrier.fetch_max(n, Ordering::Relaxed);
                            probe.barrier_reached.notify_waiters();
                        }
                    }
                }
                SyncEvent::InSync { .. } => {
                    synced_once = true;
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
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
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

impl FleetCounters {
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

/// Many clients.
#[derive(Default)]
pub struct Fleet {
    /// The clients, in start order.
    pub clients: Vec<FleetClient>,
}

impl Fleet {
    /// Clients in sync now.
    pub fn in_sync(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.status.in_sync.load(Ordering::Relaxed))
            .count()
    }

    /// Sums the clients' counters.
    pub fn counters(&self) -> FleetCounters {
        let mut sum = FleetCounters::default();
        for c in &self.clients {
            let s = &c.status;
            sum.reconnects += s.reconnects.load(Ordering::Relaxed);
            sum.snapshots += s.snapshots.load(Ordering::Relaxed);
            sum.resumes += s.resumes.load(Ordering::Relaxed);
            sum.digest_mismatches += s.digest_mismatches.load(Ordering::Relaxed);
            sum.batches += s.batches.load(Ordering::Relaxed);
        }
        sum
    }

    /// Waits until every client satisfies `done`, re-checking on every barrier/in-sync
    /// notification and at least every 50 ms (in-sync flags change without one);
    /// `progress` is called about once a second. Returns the time taken.
    pub async fn wait_until(
        &self,
        probe: &Probe,
        limit: Duration,
        done: impl Fn(&FleetClient) -> bool,
        mut progress: impl FnMut(usize),
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut last_progress = Instant::now();
        loop {
            let notified = probe.barrier_reached.notified();
            let ready = self.clients.iter().filter(|c| done(c)).count();
            if ready == self.clients.len() {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "{} of {} clients not there after {limit:?}",
                self.clients.len() - ready,
                self.clients.len()
            );
            if last_progress.elapsed() >= Duration::from_secs(1) {
                progress(ready);
                last_progress = Instant::now();
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Stops every client and returns their names and digests.
    pub async fn stop(self) -> anyhow::Result<Vec<(String, Digest)>> {
        for c in &self.clients {
            c.shutdown.cancel();
        }
        let mut digests = Vec::with_capacity(self.clients.len());
        for c in self.clients {
            let name = c.name.clone();
            digests.push((name, c.stop().await?.digest()));
        }
        Ok(digests)
    }
}
