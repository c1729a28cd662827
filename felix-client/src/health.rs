//! felix-client's health endpoint (`--health-listen`): `/livez`, `/readyz` and
//! `/metrics` (Prometheus text), like typha's.
//!
//! Readiness is a [`ReadyCheck`], so the agent decides what "ready" means in one place:
//! [`sync_ready`] says ready while the mirror is in sync with its source (typha, or the
//! API in local mode) and not before the first sync, nor while reconnecting; the lead can
//! combine it with the dataplane's own state.
//!
//! Metrics are process-global (the `metrics` facade): right for the binary. Tests that run
//! several clients in one process read per-client counts from `SyncStatus` instead.
//! [`register_sync_metrics`] creates every `felix_sync_*` series at zero, so a scrape
//! shows them all before anything happened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sync::{RECONNECT_REASONS, SyncStatus};

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

/// Ready while `status` says the mirror is in sync with its source.
pub fn sync_ready(status: Arc<SyncStatus>) -> ReadyCheck {
    Arc::new(move || {
        if status.in_sync.load(Ordering::Relaxed) {
            Ok(())
        } else if status.has_synced() {
            Err("reconnecting to typha\n".into())
        } else {
            Err("not in sync yet\n".into())
        }
    })
}

/// Installs the process-global Prometheus recorder and registers the sync metrics.
pub fn install_recorder() -> Result<PrometheusHandle, edge::metrics::MetricsError> {
    let handle = crate::metrics::install()?;
    register_sync_metrics();
    Ok(handle)
}

/// Describes every `felix_sync_*` metric and creates each series at zero (idempotent).
pub fn register_sync_metrics() {
    metrics::describe_gauge!(
        "felix_sync_in_sync",
        "1 while the mirror equals its source's state"
    );
    metrics::describe_gauge!("felix_sync_keys", "keys in the mirror");
    metrics::describe_counter!(
        "felix_sync_digest_mismatches_total",
        "frames refused because the state digest did not match"
    );
    metrics::describe_counter!(
        "felix_sync_reconnects_total",
        "sessions that ended and were retried, by reason"
    );
    metrics::describe_gauge!(
        "felix_sync_typha_candidates",
        "typha endpoints the client may connect to"
    );
    metrics::gauge!("felix_sync_in_sync").increment(0.0);
    metrics::gauge!("felix_sync_keys").increment(0.0);
    metrics::gauge!("felix_sync_typha_candidates").increment(0.0);
    metrics::counter!("felix_sync_digest_mismatches_total").increment(0);
    for reason in RECONNECT_REASONS {
        metrics::counter!("felix_sync_reconnects_total", "reason" => *reason).increment(0);
    }
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
