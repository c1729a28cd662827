//! Wiring: the parts of one typha process, started together and stopped together.
//! The binary, the integration tests and the load test all start typha through
//! [`start`], so what is tested is what runs.
//!
//! Upstream events pass through a small tap on their way to the hub: it marks the
//! upstream fresh and counts the Node objects (the rebalancer's `nodes`). Two ways to
//! stop: [`Running::shutdown`] at once (every client told goodbye together; tests, the
//! load test) and [`Running::drain`] gracefully (what SIGTERM does in the binary).

use std::collections::HashSet;
use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use typha_proto::Kind;

use crate::drain::{self, DrainConfig, DrainReport};
use crate::health::{self, Freshness, Health, HealthConfig};
use crate::hub::{Hub, HubConfig};
use crate::rebalance::{self, RebalanceConfig};
use crate::server::{self, ServerConfig, ServerError, ServerHandle, SessionEnds, Transport};
use netmodel::{UpstreamConfig, UpstreamEvent};

/// Upstream batches (up to `batch_max` decoded updates each) queued between the watch,
/// the tap and the hub. Two keep the stages overlapped; the 64 there were let the
/// initial list of a large cluster queue up to 128,000 decoded values ahead of the hub.
const UPSTREAM_QUEUE: usize = 2;

/// The owned tasks of one typha; [`Running::join`] waits for them all.
type Tasks = JoinSet<Result<(), ServerError>>;

/// Where the state comes from.
pub enum Upstream {
    /// Watch a Kubernetes API server.
    Kube {
        /// The API client.
        client: kube::Client,
        /// Watch tuning.
        config: UpstreamConfig,
    },
    /// Events fed by the caller (tests, benchmarks).
    Channel(mpsc::Receiver<UpstreamEvent>),
}

/// The operations tuning around the server: each part's configuration lives with the
/// part ([`crate::drain`], [`crate::rebalance`], [`crate::health`]); this only groups them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpsConfig {
    /// Load spreading across replicas.
    pub rebalance: RebalanceConfig,
    /// Graceful shutdown.
    pub drain: DrainConfig,
    /// Readiness.
    pub health: HealthConfig,
}

/// Everything [`start`] needs.
pub struct TyphaOptions {
    /// gRPC listen address (port 0 picks one).
    pub listen: SocketAddr,
    /// /livez, /readyz and /metrics listen address, if any.
    pub health_listen: Option<SocketAddr>,
    /// TLS or plaintext.
    pub transport: Transport,
    /// Session tuning.
    pub server: ServerConfig,
    /// Rebalance, drain and readiness tuning.
    pub ops: OpsConfig,
    /// Cache tuning.
    pub hub: HubConfig,
    /// The state's source.
    pub upstream: Upstream,
    /// Renders /metrics, when a Prometheus recorder is installed.
    pub metrics: Option<PrometheusHandle>,
}

/// Errors starting typha.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The health listener could not be bound.
    #[error("binding health listener {addr}: {source}")]
    HealthBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A started typha.
pub struct Running {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound health address.
    pub health_addr: Option<SocketAddr>,
    /// The hub, for tests and the load test to observe.
    pub hub: Hub,
    /// Every session's end, with its reason.
    pub session_ends: SessionEnds,
    /// Readiness (and the upstream's freshness).
    pub health: Health,
    /// The live sessions and the listener.
    pub server: ServerHandle,
    /// The number of Node objects in the state.
    pub nodes: watch::Receiver<usize>,
    ops: OpsConfig,
    shutdown: CancellationToken,
    tasks: Tasks,
}

impl Running {
    /// The token that stops everything.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops typha at once: every client gets goodbye(shutdown) together; waits for
    /// every task.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// The first, immediate steps of a drain: not ready from now on, and the listener
    /// closes (await [`ServerHandle::accept_closed`] to know it is closed). Idempotent.
    pub fn begin_drain(&self) {
        self.health.set_draining();
        self.server.stop_accepting();
    }

    /// Graceful shutdown: [`Running::begin_drain`], then goodbye(shutdown) to every
    /// client spread over the drain duration, then stops everything and waits.
    pub async fn drain(mut self) -> Result<DrainReport, ServerError> {
        tracing::info!("draining");
        self.begin_drain();
        self.server.accept_closed().await;
        let report = drain::drain_sessions(&self.server.sessions, &self.ops.drain).await;
        tracing::info!(goodbyes = report.goodbyes, "drained; stopping");
        self.shutdown.cancel();
        self.join().await?;
        Ok(report)
    }

    /// Starts load spreading: `replicas` is the live number of ready typha replicas
    /// (see [`edge::discovery::Discovery::replicas`]). An owned task.
    pub fn start_rebalancing(&mut self, replicas: watch::Receiver<usize>) {
        self.tasks.spawn({
            let run = rebalance::run(
                self.server.sessions.clone(),
                self.hub.in_sync_watch(),
                self.nodes.clone(),
                replicas,
                self.ops.rebalance.clone(),
                self.shutdown.clone(),
            );
            async move {
                run.await;
                Ok(())
            }
        });
    }

    /// Creates the default IPPool (if `cluster_cidr` is set and no pool exists) and marks
    /// ClusterInformation ready, once the upstream is in sync; an owned task.
    pub fn spawn_bootstrap(
        &mut self,
        client: kube::Client,
        cluster_cidr: Option<netmodel::bootstrap::ClusterCidr>,
    ) {
        let in_sync = self.hub.in_sync_watch();
        let in_sync = async move { in_sync.wait().await };
        let token = self.shutdown.clone();
        self.tasks.spawn(async move {
            netmodel::bootstrap::run(client, in_sync, cluster_cidr, token).await;
            Ok(())
        });
    }

    /// Waits until typha stops (after the shutdown token fires).
    pub async fn join(&mut self) -> Result<(), ServerError> {
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(Err(e)) => result = Err(e),
                Err(e) if e.is_panic() => tracing::error!(error = %e, "typha task panicked"),
                _ => {}
            }
        }
        result
    }
}

/// Starts the upstream, the hub, the gRPC server and the health server.
pub async fn start(options: TyphaOptions) -> Result<Running, AppError> {
    health::register_metrics();
    crate::metrics::describe();
    let shutdown = CancellationToken::new();
    let hub = Hub::new(options.hub);
    let mut tasks = JoinSet::new();
    let freshness = Freshness::new();
    let raw_events = spawn_upstream(options.upstream, &freshness, &mut tasks, &shutdown);
    let nodes = spawn_tap_and_hub(raw_events, &hub, &freshness, &mut tasks, &shutdown);
    let listener = server::bind(options.listen).await?;
    let grpc_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: options.listen,
        source,
    })?;
    let session_ends = SessionEnds::new(4096);
    let server_handle = ServerHandle::new(&shutdown);
    let health = Health::new(hub.in_sync_watch(), freshness, &options.ops.health);
    tasks.spawn(server::serve(
        listener,
        hub.clone(),
        options.server,
        options.transport,
        session_ends.clone(),
        server_handle.clone(),
        shutdown.clone(),
    ));
    let health_addr = match options.health_listen {
        None => None,
        Some(addr) => {
            let app = health::router(health.clone(), options.metrics);
            Some(spawn_health(addr, app, &mut tasks, &shutdown).await?)
        }
    };
    tracing::info!(%grpc_addr, ?health_addr, "typha started");
    Ok(Running {
        grpc_addr,
        health_addr,
        hub,
        session_ends,
        health,
        server: server_handle,
        nodes,
        ops: options.ops,
        shutdown,
        tasks,
    })
}

/// The upstream's raw events: the caller's channel, or a Kubernetes watch started as an
/// owned task (its API calls observed for the upstream's freshness).
fn spawn_upstream(
    upstream: Upstream,
    freshness: &Freshness,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> mpsc::Receiver<UpstreamEvent> {
    match upstream {
        Upstream::Channel(rx) => rx,
        Upstream::Kube { client, config } => {
            let client = health::observe_kube(client, freshness.clone());
            let (tx, rx) = mpsc::channel(UPSTREAM_QUEUE);
            let token = shutdown.clone();
            tasks.spawn(async move {
                if let Err(error) = netmodel::run(client, config, tx, token).await {
                    tracing::error!(%error, "upstream stopped");
                }
                Ok(())
            });
            rx
        }
    }
}

/// Starts the tap ([`tap_upstream`]) and the hub fed by it, as owned tasks; returns the
/// tap's count of Node objects.
fn spawn_tap_and_hub(
    raw_events: mpsc::Receiver<UpstreamEvent>,
    hub: &Hub,
    freshness: &Freshness,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> watch::Receiver<usize> {
    let (events_tx, events) = mpsc::channel(UPSTREAM_QUEUE);
    let (nodes_tx, nodes) = watch::channel(0);
    tasks.spawn({
        let tap = tap_upstream(raw_events, events_tx, freshness.clone(), nodes_tx);
        let token = shutdown.clone();
        async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tap => {}
            }
            Ok(())
        }
    });
    tasks.spawn({
        let (hub, token) = (hub.clone(), shutdown.clone());
        async move {
            hub.run(events, token).await;
            Ok(())
        }
    });
    nodes
}

async fn spawn_health(
    addr: SocketAddr,
    app: axum::Router,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> Result<SocketAddr, AppError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::HealthBind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AppError::HealthBind { addr, source })?;
    let token = shutdown.clone();
    tasks.spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
        if let Err(error) = serve.await {
            tracing::error!(%error, "health server failed");
        }
        Ok(())
    });
    Ok(bound)
}

/// Forwards upstream events to the hub, marking the upstream fresh and counting the
/// Node objects on the way (the same updates the cache applies, so the same count).
async fn tap_upstream(
    mut from: mpsc::Receiver<UpstreamEvent>,
    to: mpsc::Sender<UpstreamEvent>,
    freshness: Freshness,
    nodes: watch::Sender<usize>,
) {
    let mut names: HashSet<String> = HashSet::new();
    while let Some(event) = from.recv().await {
        freshness.touch();
        // InSync passes through: the hub marks itself (and the gauge) in sync on it.
        if let UpstreamEvent::Updates(updates) | UpstreamEvent::Marked { updates, .. } = &event {
            for update in updates.iter().filter(|u| u.key.kind() == Kind::Node) {
                if update.value.is_some() {
                    names.insert(update.key.name().to_string());
                } else {
                    names.remove(update.key.name());
                }
            }
            let count = names.len();
            nodes.send_if_modified(|old| std::mem::replace(old, count) != count);
        }
        if to.send(event).await.is_err() {
            return;
        }
    }
}
