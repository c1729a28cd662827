//! felix-client's health endpoint (`--health-listen`): `/livez`, `/readyz` and
//! `/metrics` (Prometheus text), like typha's.
//!
//! Readiness is a [`ReadyCheck`], so the agent decides what "ready" means in one place:
//! [`sync_ready`] says ready while the mirror is in sync with its source (typha, or the
//! API in local mode) and not before the first sync, nor while reconnecting; the lead can
//! combine it with the dataplane's own state.
//!
//! Readiness reads the sync client through the small [`SyncProgress`] trait, not the
//! client itself (so this module does not depend on `crate::sync`).
//!
//! Metrics are process-global (the `metrics` facade): right for the binary. Tests that run
//! several clients in one process read per-client counts from `SyncStatus` instead.
//! [`install_recorder`] also creates every `felix_sync_*` series at zero
//! (`crate::metrics::register_sync_series`), so a scrape shows them all before anything
//! happened.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Decides readiness: `Ok` when ready, else why not (the `/readyz` body).
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Errors starting the health server. Not retryable: the address is wrong or taken.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The listener could not be bound.
    #[error("binding health listener {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running health server; it stops when its shutdown token fires.
#[derive(Debug)]
pub struct HealthServer {
    /// The bound address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// Waits for the server to stop (after its shutdown token fired).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// What readiness needs to know of a sync source (the sync client's `SyncStatus`, or
/// a test's stand-in), and nothing more.
pub trait SyncProgress: Send + Sync {
    /// Whether the mirror equals its source's state now.
    fn is_in_sync(&self) -> bool;
    /// Whether the mirror has been in sync at least once.
    fn has_synced(&self) -> bool;
}

/// Ready while `progress` says the mirror is in sync with its source.
pub fn sync_ready<P: SyncProgress + 'static>(progress: Arc<P>) -> ReadyCheck {
    Arc::new(move || {
        if progress.is_in_sync() {
            Ok(())
        } else if progress.has_synced() {
            Err("reconnecting to typha\n".into())
        } else {
            Err("not in sync yet\n".into())
        }
    })
}

/// Installs the process-global Prometheus recorder and registers the sync metrics.
pub fn install_recorder() -> Result<PrometheusHandle, edge::metrics::MetricsError> {
    let handle = crate::metrics::install()?;
    crate::metrics::register_sync_series();
    Ok(handle)
}

/// Binds `listen` and serves `/livez`, `/readyz` (from `ready`) and `/metrics` (from
/// `metrics`, 404 without a recorder) until `shutdown` fires.
pub async fn serve(
    listen: SocketAddr,
    ready: ReadyCheck,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<HealthServer, HealthError> {
    let bind = |source| HealthError::Bind {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let app = router(ready, metrics);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(error) = serve.await {
            tracing::error!(%error, "health server failed");
        }
    });
    tracing::info!(%addr, "health endpoint listening");
    Ok(HealthServer { addr, task })
}

#[derive(Clone)]
struct HealthState {
    ready: ReadyCheck,
    metrics: Option<PrometheusHandle>,
}

/// The routes (public for tests that call the service directly).
pub fn router(ready: ReadyCheck, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(HealthState { ready, metrics })
}

async fn readyz(State(state): State<HealthState>) -> (StatusCode, String) {
    match (state.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn render_metrics(State(state): State<HealthState>) -> (StatusCode, String) {
    match state.metrics {
        Some(handle) => (StatusCode::OK, edge::metrics::render(&handle)),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder installed\n".to_string(),
        ),
    }
}
