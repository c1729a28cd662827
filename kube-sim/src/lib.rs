//! kube-sim: an in-memory Kubernetes API server for tests, the demo and load tests.
//!
//! It speaks enough of the real API (discovery, CRUD, merge/strategic/apply patches, the
//! status subresource, paginated LIST, WATCH with bookmarks and streaming lists, 410
//! expiry) that unmodified `kubectl` and the `kube` crate use it as a cluster. It is not
//! a production API server: no authentication or authorization (every request is allowed),
//! protobuf request bodies only for the kinds kubectl's typed commands send, simplified
//! server-side apply. A simulated scheduler, kubelet and Deployment controller (like kwok)
//! give pods nodes, addresses and readiness ([`controllers`]; `simulate_pods`). Start it in-process with [`KubeSim::start`] (binds 127.0.0.1:0 by
//! default), or run the `kube-sim` binary.

pub mod authz;
pub mod cli;
pub mod controllers;
pub mod defaults;
pub mod direct;
pub mod discovery;
pub mod error;
pub mod faults;
pub mod handlers;
pub mod http;
pub mod list;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod protobuf_types;
pub mod resources;
pub mod schemas;
pub mod seed;
pub mod selectors;
pub mod store;
#[cfg(test)]
mod store_tests;
pub mod validate;
pub mod watch;
pub mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use faults::{Budget, FaultKind, FaultRule, Faults, Target};
pub use metrics::{Metrics, MetricsSnapshot};
pub use seed::{SeedConfig, SeedStats, seed};
pub use store::Store;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How many change events are retained for watches and continue tokens.
    pub history_limit: usize,
    /// How often idle watch streams that allow bookmarks receive one.
    pub bookmark_interval: Duration,
    /// Serve Calico's CRD kinds from the start (as if the CRDs were installed).
    pub calico_crds: bool,
    /// Run the simulated scheduler, kubelet and controllers (see [`controllers`]).
    pub simulate_pods: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(5),
            calico_crds: true,
            simulate_pods: true,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding the listen address failed (address in use, permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running server. Dropping it stops the server (without waiting); prefer
/// [`KubeSim::shutdown`].
pub struct KubeSim {
    addr: SocketAddr,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
    config: Config,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    controllers: Option<JoinHandle<()>>,
}

impl KubeSim {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let store = Arc::new(Store::new(config.history_limit, config.calico_crds));
        Self::start_with_store(config, store).await
    }

    /// Serves an existing (for example pre-seeded) store.
    pub async fn start_with_store(config: Config, store: Arc<Store>) -> Result<Self, StartError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics = Arc::new(Metrics::default());
        let faults = Arc::new(Faults::new(store.clone(), metrics.clone()));
        let shutdown = CancellationToken::new();
        let app = http::App {
            store: store.clone(),
            metrics: metrics.clone(),
            faults: faults.clone(),
            watch: watch::WatchContext {
                store: store.clone(),
                metrics: metrics.clone(),
                bookmark_interval: config.bookmark_interval,
                shutdown: shutdown.clone(),
            },
            simulate: config.simulate_pods,
        };
        let controllers = if config.simulate_pods {
            controllers::spawn(store.clone(), shutdown.clone())
        } else {
            None
        };
        let token = shutdown.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, http::router(app))
                .with_graceful_shutdown(token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "kube-sim server stopped with an error");
            }
        });
        tracing::info!(%addr, "kube-sim listening");
        Ok(KubeSim {
            addr,
            store,
            metrics,
            faults,
            config: Config {
                listen: addr,
                ..config
            },
            shutdown,
            server: Some(server),
            controllers,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) that points clients at this server, without credentials.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The object store (in-process reads and writes; see [`direct`]).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Live request and traffic counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Expires all history (see [`Store::compact`]).
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Closes every open watch stream (see [`Store::disconnect_watches`]).
    pub fn disconnect_watches(&self) {
        self.store.disconnect_watches();
    }

    /// Fault injection: failed requests and cut watches (see [`faults`]).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The store a restart with a restored datastore would serve: the same objects with
    /// a fresh, lower resourceVersion history (see [`Store::fresh_copy`]). Write to it,
    /// then pass it to [`KubeSim::restart_with`].
    pub fn fresh_store(&self) -> Store {
        self.store.fresh_copy(self.config.history_limit)
    }

    /// Stops this server and starts a new one on the same address serving `store`
    /// (fresh metrics and faults). Open connections and watches end, as in a restart.
    pub async fn restart_with(self, store: Arc<Store>) -> Result<KubeSim, StartError> {
        let config = self.config.clone();
        self.shutdown().await;
        KubeSim::start_with_store(config, store).await
    }

    /// Stops accepting, ends watch streams and waits for the server task.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(controllers) = self.controllers.take() {
            let _ = controllers.await;
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A kubeconfig (YAML) whose one context points at `server` (a URL), without credentials:
/// what a client of a kube-sim (typha, kubectl, a test) is given.
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: sim, cluster: {{server: \"{server}\"}}}}]\ncontexts: [{{name: sim, context: {{cluster: sim}}}}]\ncurrent-context: sim\n"
    )
}
