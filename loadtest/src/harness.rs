//! The one test harness: typha with real mutual TLS on 127.0.0.1:0, fed either by the
//! caller or by a Kubernetes API (kube-sim), and N in-process felix-client sync clients.
//! Integration tests, the demo and the load test all build on it, so they exercise the
//! same wiring the binaries run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge::certs::DevPki;
use edge::tls::{PeerIdentity, client_config, server_config};
use felix_client::{Mirror, SyncClient, SyncConfig, SyncStatus};
use netmodel::UpstreamEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use typha::app::{self, Running, TyphaOptions, Upstream};
use typha::hub::HubConfig;
use typha::server::{ServerConfig, Transport};
use typha_proto::Revision;

/// How to start typha.
pub struct TyphaSpec {
    /// Session tuning.
    pub server: ServerConfig,
    /// Cache tuning.
    pub hub: HubConfig,
    /// Mutual TLS (true) or plaintext.
    pub tls: bool,
}

impl Default for TyphaSpec {
    fn default() -> Self {
        TyphaSpec {
            server: ServerConfig::default(),
            hub: HubConfig::default(),
            tls: true,
        }
    }
}

/// A running typha plus what clients need to reach it.
pub struct Harness {
    /// The development PKI (CA, server and client certificates).
    pub pki: DevPki,
    /// The running typha.
    pub typha: Running,
    /// Feeds typha when it was started without a Kubernetes upstream.
    pub feed: Option<mpsc::Sender<UpstreamEvent>>,
    tls: bool,
}

impl Harness {
    /// Starts typha fed by the returned channel (`feed`).
    pub async fn start(spec: TyphaSpec) -> anyhow::Result<Harness> {
        let (tx, rx) = mpsc::channel(1024);
        let mut harness = Harness::start_with(spec, Upstream::Channel(rx)).await?;
        harness.feed = Some(tx);
        Ok(harness)
    }

    /// Starts typha with the given upstream.
    pub async fn start_with(spec: TyphaSpec, upstream: Upstream) -> anyhow::Result<Harness> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pki = DevPki::generate().context("generating certificates")?;
        let transport = if spec.tls {
            let identity = PeerIdentity::with_cn(edge::certs::DEFAULT_CLIENT_CN);
            Transport::Tls(server_config(&pki.server_material(), &identity)?)
        } else {
            Transport::Plaintext
        };
        let options = TyphaOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            health_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            transport,
            server: spec.server,
            ops: typha::app::OpsConfig::default(),
            hub: spec.hub,
            upstream,
            metrics: None,
        };
        let typha = app::start(options).await?;
        Ok(Harness {
            pki,
            typha,
            feed: None,
            tls: spec.tls,
        })
    }

    /// Sends one upstream event (panics in tests if typha is gone).
    pub async fn send(&self, event: UpstreamEvent) -> anyhow::Result<()> {
        let feed = self
            .feed
            .as_ref()
            .context("typha was started with a Kubernetes upstream")?;
        feed.send(event)
            .await
            .context("typha's upstream channel closed")
    }

    /// Loads the initial state and marks the upstream in sync; returns once the hub has
    /// applied it (events are applied in order, so in-sync means the state is in).
    pub async fn load(&self, initial: Vec<typha_proto::Update>) -> anyhow::Result<Revision> {
        self.send(UpstreamEvent::Updates(initial)).await?;
        self.send(UpstreamEvent::InSync).await?;
        self.typha.hub.wait_in_sync().await;
        Ok(self.typha.hub.revision())
    }

    /// The TLS config a legitimate client uses (checks the server's CN).
    pub fn client_tls(&self) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        if !self.tls {
            return Ok(None);
        }
        let identity = PeerIdentity::with_cn(edge::certs::DEFAULT_SERVER_CN);
        Ok(Some(client_config(&self.pki.client_material(), &identity)?))
    }

    /// A sync configuration for node `name` pointing at this typha.
    pub fn sync_config(&self, name: &str) -> anyhow::Result<SyncConfig> {
        let mut config = SyncConfig::new(name, vec![self.typha.grpc_addr.to_string()]);
        config.tls = self.client_tls()?;
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_secs(2);
        Ok(config)
    }

    /// Starts `n` sync clients named `node-<i>`.
    pub fn spawn_clients(&self, n: usize) -> anyhow::Result<ClientSet> {
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            clients.push(ClientHandle::spawn(self.sync_config(&format!("node-{i}"))?));
        }
        Ok(ClientSet { clients })
    }
}

/// One in-process sync client.
pub struct ClientHandle {
    /// Its live counters.
    pub status: Arc<SyncStatus>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<Mirror, felix_client::SyncError>>,
}

impl ClientHandle {
    /// Starts a client; its events are drained (the mirror is what tests inspect).
    pub fn spawn(config: SyncConfig) -> ClientHandle {
        let client = SyncClient::new(config);
        let status = client.status();
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let task = tokio::spawn(client.run(tx, shutdown.clone()));
        ClientHandle {
            status,
            shutdown,
            task,
        }
    }

    /// Waits until the client's mirror is at `revision` or later.
    pub async fn wait_for(&self, revision: Revision) {
        let mut rx = self.status.applied.subscribe();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// Stops the client and returns its mirror.
    pub async fn stop(self) -> anyhow::Result<Mirror> {
        self.shutdown.cancel();
        Ok(self.task.await??)
    }
}

/// Many clients.
pub struct ClientSet {
    /// The clients, in spawn order.
    pub clients: Vec<ClientHandle>,
}

impl ClientSet {
    /// Waits until every client's mirror is at `revision` or later, or `limit` passes.
    pub async fn wait_all(&self, revision: Revision, limit: Duration) -> anyhow::Result<()> {
        let all = futures::future::join_all(self.clients.iter().map(|c| c.wait_for(revision)));
        tokio::time::timeout(limit, all).await.map_err(|_| {
            let behind = self
                .clients
                .iter()
                .filter(|c| *c.status.applied.borrow() < revision)
                .count();
            anyhow::anyhow!("{behind} clients still behind revision {revision} after {limit:?}")
        })?;
        Ok(())
    }

    /// Stops every client and returns their mirrors.
    pub async fn stop(self) -> anyhow::Result<Vec<Mirror>> {
        let mut mirrors = Vec::with_capacity(self.clients.len());
        for client in self.clients {
            mirrors.push(client.stop().await?);
        }
        Ok(mirrors)
    }
}
