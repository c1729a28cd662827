//! Health: `/livez`, `/readyz` and `/metrics`, and the upstream freshness `/readyz` uses.
//!
//! Ready means: the upstream is in sync, it is fresh (something was heard from the API
//! server within `max_staleness`), and the replica is not draining. The body names the
//! first reason that fails, so `kubectl describe` shows why.
//!
//! Freshness: kube's watcher consumes watch bookmarks internally and yields no event for
//! them, so events alone cannot tell a quiet cluster from a dead watch. Instead the kube
//! client is wrapped ([`observe_kube`]) so that every frame of every successful (2xx)
//! API response body touches [`Freshness`]: watch events and bookmarks (the API server
//! sends one about every minute on an idle watch, kube-sim every few seconds) as well as
//! list pages. A watch that hangs or fails sends nothing, and the replica turns unready
//! after `max_staleness`. Upstream events fed by the caller (tests) touch it as well.
//!
//! Invariants: readiness is computed when asked, never cached; `/livez` depends on
//! nothing but the process answering.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;

use crate::hub::InSyncWatch;

/// Tuning for readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// `/readyz` fails when nothing was heard from the upstream for this long.
    pub max_staleness: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_staleness: Duration::from_secs(90),
        }
    }
}

/// When the upstream was last heard from. Clones share the clock.
#[derive(Clone, Debug)]
pub struct Freshness {
    base: Instant,
    /// Nanoseconds after `base` of the last touch, plus one; 0 = never.
    last: Arc<AtomicU64>,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness::new()
    }
}

impl Freshness {
    /// Never heard from.
    pub fn new() -> Freshness {
        Freshness {
            base: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records that the upstream was heard from now.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    /// Records that the upstream was heard from at `at` (never moves the clock back).
    pub fn touch_at(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        let stamp = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        self.last.fetch_max(stamp, Ordering::Relaxed);
    }

    /// How long ago the upstream was last heard from; `None` if never.
    pub fn age(&self) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            stamp => {
                let at = self.base + Duration::from_nanos(stamp - 1);
                Some(Instant::now().saturating_duration_since(at))
            }
        }
    }
}

/// Wraps `client` so that every frame of a successful API response touches `freshness`
/// (see the module docs). Requests and errors pass through unchanged.
pub fn observe_kube(client: kube::Client, freshness: Freshness) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (client, freshness) = (client.clone(), freshness.clone());
        async move {
            let response = client.send(request).await?;
            // An error answer (403, 410, 500) proves the server is there, not that the
            // data flows: it does not count.
            let touch = response.status().is_success().then_some(freshness);
            if let Some(freshness) = &touch {
                freshness.touch();
            }
            Ok::<_, kube::Error>(response.map(move |body| {
                body.map_frame(move |frame| {
                    if let Some(freshness) = &touch {
                        freshness.touch();
                    }
                    frame
                })
            }))
        }
    });
    kube::Client::new(service, namespace)
}

/// Why a replica is not ready (or that it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Serving and fresh.
    Ready,
    /// Shutting down: clients are being moved away.
    Draining,
    /// The upstream has not completed its initial list.
    NotInSync,
    /// Nothing heard from the upstream yet.
    NeverHeard,
    /// Nothing heard from the upstream for this long.
    Stale(Duration),
}

impl Readiness {
    /// Whether `/readyz` answers 200.
    pub fn is_ready(self) -> bool {
        self == Readiness::Ready
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Ready => f.write_str("ready"),
            Readiness::Draining => f.write_str("draining: shutting down"),
            Readiness::NotInSync => f.write_str("upstream not in sync"),
            Readiness::NeverHeard => f.write_str("upstream stale: nothing heard yet"),
            Readiness::Stale(age) => write!(
                f,
                "upstream stale: nothing heard for {}",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
        }
    }
}

/// What `/readyz` looks at. Clones share state.
#[derive(Clone)]
pub struct Health {
    in_sync: InSyncWatch,
    freshness: Freshness,
    max_staleness: Duration,
    draining: Arc<AtomicBool>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("freshness", &self.freshness.age())
            .field("max_staleness", &self.max_staleness)
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Ready when `in_sync` says so and `freshness` is younger than `config.max_staleness`.
    pub fn new(in_sync: InSyncWatch, freshness: Freshness, config: &HealthConfig) -> Health {
        Health {
            in_sync,
            freshness,
            max_staleness: config.max_staleness,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The upstream clock.
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// From now on the replica is not ready (irreversible: a drain ends in exit).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`Health::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The current readiness; also updates `typha_upstream_staleness_seconds`.
    pub fn readiness(&self) -> Readiness {
        let age = self.freshness.age();
        if let Some(age) = age {
            metrics::gauge!("typha_upstream_staleness_seconds").set(age.as_secs_f64());
        }
        if self.is_draining() {
            return Readiness::Draining;
        }
        if !self.in_sync.is_in_sync() {
            return Readiness::NotInSync;
        }
        match age {
            None => Readiness::NeverHeard,
            Some(age) if age > self.max_staleness => Readiness::Stale(age),
            Some(_) => Readiness::Ready,
        }
    }
}

#[derive(Clone)]
struct RouterState {
    health: Health,
    metrics: Option<PrometheusHandle>,
}

/// `/livez`, `/readyz` and `/metrics` (Prometheus text, when a recorder is installed).
pub fn router(health: Health, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(RouterState { health, metrics })
}

async fn readyz(State(state): State<RouterState>) -> (StatusCode, String) {
    let readiness = state.health.readiness();
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{readiness}\n"))
}

async fn render_metrics(State(state): State<RouterState>) -> (StatusCode, String) {
    // Refreshes the staleness gauge for this scrape.
    state.health.readiness();
    match state.metrics {
        Some(handle) => (StatusCode::OK, edge::metrics::render(&handle)),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder installed\n".to_string(),
        ),
    }
}

/// Registers typha's metrics with zero values, so dashboards and alerts see every series
/// from the start (gauges other parts move up and down are left as they are).
pub fn register_metrics() {
    for name in [
        "typha_connections_accepted_total",
        "typha_snapshots_sent_total",
        "typha_snapshots_built_total",
        "typha_resumes_total",
        "typha_delta_batches_total",
        "typha_delta_updates_total",
        "typha_deltas_coalesced_total",
        "typha_rebalance_goodbyes_total",
        "typha_shutdown_goodbyes_total",
        "typha_tls_reloads_total",
        "typha_tls_reload_errors_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in ["client_closed", "shutdown", "rebalance"] {
        metrics::counter!("typha_connections_dropped_total", "reason" => reason).increment(0);
    }
    for name in [
        "typha_connections_active",
        "typha_connections_target",
        "typha_snapshot_keys",
        "typha_snapshot_raw_bytes",
        "typha_snapshot_compressed_bytes",
        "typha_upstream_in_sync",
        "typha_upstream_staleness_seconds",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
    metrics::describe_gauge!(
        "typha_connections_target",
        "Connections this replica keeps (0: no target, rebalancing off)"
    );
    metrics::describe_counter!(
        "typha_rebalance_goodbyes_total",
        "Clients told to move to another replica"
    );
    metrics::describe_counter!(
        "typha_shutdown_goodbyes_total",
        "Clients told goodbye while draining"
    );
    metrics::describe_gauge!(
        "typha_upstream_staleness_seconds",
        "Seconds since the API server was last heard from (event, bookmark or list page)"
    );
    metrics::describe_histogram!(
        "typha_fanout_latency_seconds",
        "From a batch's publication by the hub to its frame being handed to a client's stream"
    );
    metrics::describe_counter!("typha_tls_reloads_total", "TLS material reloads applied");
    metrics::describe_counter!(
        "typha_tls_reload_errors_total",
        "TLS material changes rejected (the previous material stays)"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig};

    #[tokio::test(start_paused = true)]
    async fn ready_needs_sync_freshness_and_no_drain() {
        let hub = Hub::new(HubConfig::default());
        let health = Health::new(
            hub.in_sync_watch(),
            Freshness::new(),
            &HealthConfig::default(),
        );
        assert_eq!(health.readiness(), Readiness::NotInSync);
        hub.set_in_sync(true);
        assert_eq!(health.readiness(), Readiness::NeverHeard);
        health.freshness().touch();
        assert_eq!(health.readiness(), Readiness::Ready);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(health.readiness(), Readiness::Ready, "at the limit: fresh");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            health.readiness(),
            Readiness::Stale(Duration::from_secs(91))
        );
        assert_eq!(
            health.readiness().to_string(),
            "upstream stale: nothing heard for 1m 31s"
        );
        health.freshness().touch();
        assert_eq!(health.readiness(), Readiness::Ready);
        health.set_draining();
        assert_eq!(health.readiness(), Readiness::Draining);
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_never_goes_back() {
        let freshness = Freshness::new();
        assert_eq!(freshness.age(), None);
        freshness.touch();
        let earlier = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        freshness.touch_at(earlier);
        assert_eq!(freshness.age(), Some(Duration::from_secs(5)));
    }
}
