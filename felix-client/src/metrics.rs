//! The agent's observability flags (log filter and format, the metrics-only listener),
//! HELP text for every `felix_*` family, the build-info gauge, and the recorder the
//! binary installs (histograms with buckets).
//!
//! Invariant: a family added anywhere in felix-client gets a line in [`FAMILIES`]; the
//! ops_metrics test scrapes `/metrics` and fails on any family without HELP.

use edge::cli::ObserveEnv;
use metrics_exporter_prometheus::PrometheusHandle;

/// Logging and metrics flags (flattened into the command line; /metrics is also on
/// --health-listen).
pub type ObserveArgs = edge::cli::ObserveArgs<FelixEnv>;

/// felix-client's environment variables for the logging and metrics flags.
#[derive(Debug)]
pub struct FelixEnv;

impl ObserveEnv for FelixEnv {
    const LOG: &'static str = "FELIX_LOG";
    const LOG_FORMAT: &'static str = "FELIX_LOG_FORMAT";
    const METRICS_LISTEN: &'static str = "FELIX_METRICS_LISTEN";
    const METRICS_PORT: u16 = 9091;
}

/// Every felix-client family and its HELP text, by type.
pub const COUNTERS: &[(&str, &str)] = &[
    (
        "felix_sync_digest_mismatches_total",
        "Frames refused because the state digest did not match",
    ),
    (
        "felix_sync_reconnects_total",
        "Sessions that ended and were retried, by reason",
    ),
    (
        "felix_dataplane_iptables_restore_total",
        "iptables-restore runs",
    ),
    ("felix_dataplane_ipset_restore_total", "ipset restore runs"),
    (
        "felix_dataplane_route_changes_total",
        "Routes added, replaced or removed",
    ),
    (
        "felix_dataplane_kernel_reads_total",
        "Full reads of the kernel's iptables, ipsets and routes",
    ),
    (
        "felix_dataplane_errors_total",
        "Dataplane operations that failed (retried), by stage",
    ),
];

/// Gauges and their HELP text.
pub const GAUGES: &[(&str, &str)] = &[
    (
        "felix_sync_in_sync",
        "1 while the mirror equals its source's state",
    ),
    ("felix_sync_keys", "Keys in the mirror"),
    (
        "felix_sync_typha_candidates",
        "typha endpoints the client may connect to",
    ),
];

/// Histograms (latencies, seconds) and their HELP text.
pub const HISTOGRAMS: &[(&str, &str)] = &[(
    "felix_dataplane_apply_seconds",
    "Time to compute and program one dataplane pass",
)];

/// Describes every family (the upstream watch's too: local mode runs it) and sets
/// `felix_build_info`.
pub fn describe() {
    netmodel::metrics::describe();
    for &(name, help) in COUNTERS {
        metrics::describe_counter!(name, help);
    }
    for &(name, help) in GAUGES {
        metrics::describe_gauge!(name, help);
    }
    for &(name, help) in HISTOGRAMS {
        metrics::describe_histogram!(name, help);
    }
    edge::metrics::register_build_info(
        "felix",
        env!("CARGO_PKG_VERSION"),
        option_env!("GIT_COMMIT"),
    );
}

/// Describes the `felix_sync_*` families and creates each series at zero, so a scrape
/// shows them all before anything happened (idempotent; the sync client calls it).
pub fn register_sync_series() {
    let sync = |&&(name, _): &&(&str, &str)| name.starts_with("felix_sync_");
    for &(name, help) in COUNTERS.iter().filter(sync) {
        metrics::describe_counter!(name, help);
    }
    for &(name, help) in GAUGES.iter().filter(sync) {
        metrics::describe_gauge!(name, help);
        metrics::gauge!(name).increment(0.0);
    }
    metrics::counter!("felix_sync_digest_mismatches_total").increment(0);
    for reason in crate::reconnect::RECONNECT_REASONS {
        metrics::counter!("felix_sync_reconnects_total", "reason" => *reason).increment(0);
    }
}

/// Installs the process-global recorder (histograms with buckets, `process_*` metrics)
/// and describes every family.
pub fn install() -> Result<PrometheusHandle, edge::metrics::MetricsError> {
    let handle = edge::metrics::install(&[])?;
    describe();
    Ok(handle)
}
