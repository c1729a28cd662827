//! The Prometheus side both binaries share: one recorder builder (histograms with
//! buckets, so latencies aggregate across replicas and nodes), `process_*` metrics read
//! from /proc/self at each scrape, a `<prefix>_build_info` gauge, and a `/metrics`-only
//! listener (`--metrics-listen`; Calico scrapes typha on 9093 and felix on 9091).
//!
//! Invariants: every histogram renders as a Prometheus histogram (`_bucket{le=..}`),
//! never as a summary; process metrics are refreshed on every [`render`]; the listener
//! serves nothing but `/metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bucket bounds (seconds) for every latency histogram: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// Bucket bounds for histograms counting things (batches of lag, keys): 0 to 10,000.
pub const COUNT_BUCKETS: [f64; 13] = [
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
];

/// Errors setting up metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built or installed (another one already is).
    #[error("installing the metrics recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
    /// The metrics listener could not be bound. Not retryable: wrong or taken address.
    #[error("binding metrics listener {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A recorder builder whose histograms have buckets: [`LATENCY_BUCKETS`] for every
/// histogram, [`COUNT_BUCKETS`] for histograms whose name ends in one of `count_suffixes`
/// (e.g. `_batches`).
pub fn builder(count_suffixes: &[&str]) -> Result<PrometheusBuilder, MetricsError> {
    let mut builder = PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS)?;
    for suffix in count_suffixes {
        builder = builder
            .set_buckets_for_metric(Matcher::Suffix((*suffix).to_string()), &COUNT_BUCKETS)?;
    }
    Ok(builder)
}

/// Installs the process-global recorder from [`builder`] and describes the `process_*`
/// metrics.
pub fn install(count_suffixes: &[&str]) -> Result<PrometheusHandle, MetricsError> {
    let handle = builder(count_suffixes)?.install_recorder()?;
    describe_process_metrics();
    Ok(handle)
}

/// Sets `<prefix>_build_info{version, commit} 1` (commit "unknown" when the build did
/// not say: set `GIT_COMMIT` when building a release).
pub fn register_build_info(prefix: &str, version: &'static str, commit: Option<&'static str>) {
    let name = format!("{prefix}_build_info");
    metrics::describe_gauge!(
        name.clone(),
        "Always 1; the labels say which build is running"
    );
    metrics::gauge!(name, "version" => version, "commit" => commit.unwrap_or("unknown")).set(1.0);
}

/// Refreshes the process metrics, then renders the Prometheus text.
pub fn render(handle: &PrometheusHandle) -> String {
    crate::process::record();
    handle.render()
}

fn describe_process_metrics() {
    use crate::process::NAMES;
    for (name, help) in NAMES {
        metrics::describe_gauge!(name, help);
    }
    crate::process::record();
}

/// A running `/metrics` listener; it stops when its shutdown token fires.
#[derive(Debug)]
pub struct MetricsServer {
    /// The bound address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Waits for the listener to stop.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves `/metrics` from `handle` until `shutdown` fires.
pub async fn serve(
    listen: SocketAddr,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<MetricsServer, MetricsError> {
    let bind = |source| MetricsError::Bind {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(handle);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(error) = serve.await {
            tracing::error!(%error, "metrics listener failed");
        }
    });
    tracing::info!(%addr, "metrics listening");
    Ok(MetricsServer { addr, task })
}

async fn scrape(State(handle): State<PrometheusHandle>) -> String {
    render(&handle)
}

/// A listen flag's value: an IP:PORT, or `none` / `off` / empty for no listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = std::net::AddrParseError;

    fn from_str(value: &str) -> Result<Listen, Self::Err> {
        match value.trim() {
            "" | "none" | "off" => Ok(Listen(None)),
            addr => addr.parse().map(|addr| Listen(Some(addr))),
        }
    }
}

/// What an operator's scrape must satisfy, checked on Prometheus text: every family has
/// HELP text, no histogram renders as a summary (quantiles do not aggregate across
/// replicas), and every histogram has buckets up to `+Inf`. Returns the problems found.
pub fn lint(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            problems.push(format!("malformed TYPE line: {line}"));
            continue;
        };
        if !text.contains(&format!("# HELP {name} ")) {
            problems.push(format!("{name}: no HELP text"));
        }
        match kind {
            "summary" => problems.push(format!("{name}: a summary, not a histogram")),
            "histogram"
                if !text.lines().any(|l| {
                    l.starts_with(&format!("{name}_bucket{{")) && l.contains("le=\"+Inf\"")
                }) =>
            {
                problems.push(format!("{name}: a histogram without buckets"));
            }
            _ => {}
        }
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_with_buckets_and_process_metrics_are_there() {
        let recorder = builder(&["_batches"]).unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_process_metrics();
            metrics::describe_histogram!("x_latency_seconds", "a latency");
            metrics::describe_histogram!("x_lag_batches", "a lag");
            metrics::histogram!("x_latency_seconds").record(0.003);
            metrics::histogram!("x_lag_batches").record(3.0);
            register_build_info("x", "1.2.3", Some("abc"));
        });
        let text = render_local(&recorder, &handle);
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("x_lag_batches_bucket{le=\"5\"} 1"), "{text}");
        assert!(!text.contains("quantile"), "{text}");
        assert!(
            text.contains("x_build_info{version=\"1.2.3\",commit=\"abc\"} 1"),
            "{text}"
        );
        for (name, _) in crate::process::NAMES {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
        }
        assert!(
            !text.contains("process_resident_memory_bytes 0\n"),
            "{text}"
        );
        assert_eq!(lint(&text), Vec::<String>::new(), "{text}");
        // The lint catches what it is for.
        let bad = "# TYPE a counter\na 1\n# HELP b x\n# TYPE b summary\nb{quantile=\"0.5\"} 1\n";
        assert_eq!(
            lint(bad),
            ["a: no HELP text", "b: a summary, not a histogram"]
        );
        let bare = "# HELP h x\n# TYPE h histogram\nh_sum 1\nh_count 1\n";
        assert_eq!(lint(bare), ["h: a histogram without buckets"]);
    }

    fn render_local(
        recorder: &metrics_exporter_prometheus::PrometheusRecorder,
        handle: &PrometheusHandle,
    ) -> String {
        metrics::with_local_recorder(recorder, crate::process::record);
        handle.render()
    }

    #[test]
    fn listen_flags_parse() {
        assert_eq!("none".parse::<Listen>().unwrap(), Listen(None));
        assert_eq!(
            "0.0.0.0:9091".parse::<Listen>().unwrap(),
            Listen(Some("0.0.0.0:9091".parse().unwrap()))
        );
        assert!("9091".parse::<Listen>().is_err());
    }
}
