//! Wiring: the parts of one typha process, started together and stopped together.
//! The binary, the integration tests and the load test all start typha through
//! [`start`], so what is tested is what runs.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, HubConfig};
use crate::server::{self, ServerConfig, ServerError, SessionEnds, Transport};
use crate::upstream::{self, UpstreamConfig, UpstreamEvent};

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
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), ServerError>>,
}

impl Running {
    /// The token that stops everything.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops typha: clients get goodbye(shutdown); waits for every task.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.join().await
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
    let shutdown = CancellationToken::new();
    let hub = Hub::new(options.hub);
    let mut tasks = JoinSet::new();
    let events = match options.upstream {
        Upstream::Channel(rx) => rx,
        Upstream::Kube { client, config } => {
            let (tx, rx) = mpsc::channel(64);
            let token = shutdown.clone();
            tasks.spawn(async move {
                if let Err(error) = upstream::run(client, config, tx, token).await {
                    tracing::error!(%error, "upstream stopped");
                }
                Ok(())
            });
            rx
        }
    };
    tasks.spawn({
        let (hub, token) = (hub.clone(), shutdown.clone());
        async move {
            hub.run(events, token).await;
            Ok(())
        }
    });
    let listener = server::bind(options.listen).await?;
    let grpc_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: options.listen,
        source,
    })?;
    let session_ends = SessionEnds::new(4096);
    tasks.spawn(server::serve(
        listener,
        hub.clone(),
        options.server,
        options.transport,
        session_ends.clone(),
        shutdown.clone(),
    ));
    let health_addr = match options.health_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::HealthBind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| AppError::HealthBind { addr, source })?;
            let app = health_router(hub.clone(), options.metrics);
            let token = shutdown.clone();
            tasks.spawn(async move {
                let serve =
                    axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
                if let Err(error) = serve.await {
                    tracing::error!(%error, "health server failed");
                }
                Ok(())
            });
            Some(bound)
        }
    };
    tracing::info!(%grpc_addr, ?health_addr, "typha started");
    Ok(Running {
        grpc_addr,
        health_addr,
        hub,
        session_ends,
        shutdown,
        tasks,
    })
}

#[derive(Clone)]
struct HealthState {
    hub: Hub,
    metrics: Option<PrometheusHandle>,
}

fn health_router(hub: Hub, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(HealthState { hub, metrics })
}

async fn readyz(State(state): State<HealthState>) -> (StatusCode, &'static str) {
    if state.hub.is_in_sync() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "upstream not in sync\n")
    }
}

async fn render_metrics(State(state): State<HealthState>) -> (StatusCode, String) {
    match state.metrics {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder installed\n".to_string(),
        ),
    }
}

/// Cancels `token` on SIGTERM or SIGINT: both binaries drain the same way.
pub async fn stop_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: stopping"),
    }
    token.cancel();
}
