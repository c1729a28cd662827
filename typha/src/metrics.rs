//! HELP text for every metric family typha exports (its own here, including
//! `typha_upstream_in_sync`, which the hub sets; the upstream watch's other
//! `typha_upstream_*` from [`netmodel::metrics`]), the build-info gauge, and the recorder typha
//! installs (histograms with buckets: `typha_client_lag_batches` counts batches, the
//! rest are latencies in seconds).
//!
//! Invariant: a family added anywhere in typha or netmodel gets a line in [`FAMILIES`];
//! the ops_metrics test scrapes `/metrics` and fails on any family without HELP.

use metrics_exporter_prometheus::PrometheusHandle;

/// Histograms whose names end so count things, not seconds (bucketed accordingly).
pub const COUNT_SUFFIXES: [&str; 1] = ["_batches"];

/// Every family of typha's own, its type and its HELP text.
pub const FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "typha_connections_accepted_total",
        Kind::Counter,
        "Agent connections accepted",
    ),
    (
        "typha_connections_dropped_total",
        Kind::Counter,
        "Agent connections ended, by reason",
    ),
    (
        "typha_connections_active",
        Kind::Gauge,
        "Agent sessions currently streaming",
    ),
    (
        "typha_connections_open",
        Kind::Gauge,
        "TCP connections currently open (sessions plus handshakes)",
    ),
    (
        "typha_upstream_in_sync",
        Kind::Gauge,
        "1 once every watched resource completed its initial list (set by the hub only)",
    ),
    (
        "typha_resource_version",
        Kind::Gauge,
        "Newest resourceVersion this replica has of each resource (events and bookmarks), as in its clients' version vectors",
    ),
    (
        "typha_resume_floor",
        Kind::Gauge,
        "Oldest resourceVersion of each resource from which a client of another replica is resumed here; a client below it gets a snapshot",
    ),
    (
        "typha_connections_target",
        Kind::Gauge,
        "Connections this replica keeps (0: no target, rebalancing off)",
    ),
    (
        "typha_snapshots_sent_total",
        Kind::Counter,
        "Snapshots sent to agents",
    ),
    (
        "typha_snapshots_built_total",
        Kind::Counter,
        "Snapshots encoded (shared by every agent that starts at that revision)",
    ),
    (
        "typha_snapshot_build_seconds",
        Kind::Histogram,
        "Time to encode and compress one snapshot",
    ),
    (
        "typha_snapshot_keys",
        Kind::Gauge,
        "Keys in the latest snapshot",
    ),
    (
        "typha_cache_held_bytes",
        Kind::Gauge,
        "Bytes the snapshot cache holds by its own accounting: encoded entries, keys, breadcrumb frames",
    ),
    (
        "typha_snapshot_raw_bytes",
        Kind::Gauge,
        "Encoded size of the latest snapshot before compression",
    ),
    (
        "typha_snapshot_compressed_bytes",
        Kind::Gauge,
        "Compressed size of the latest snapshot",
    ),
    (
        "typha_resumes_total",
        Kind::Counter,
        "Agents resumed from their revision without a snapshot",
    ),
    (
        "typha_resume_refusals_total",
        Kind::Counter,
        "Resume requests answered with a snapshot instead, by reason",
    ),
    (
        "typha_delta_batches_total",
        Kind::Counter,
        "Delta batches published by the hub",
    ),
    (
        "typha_delta_updates_total",
        Kind::Counter,
        "Updates in published delta batches",
    ),
    (
        "typha_deltas_coalesced_total",
        Kind::Counter,
        "Updates folded into a later update of the same key before publication",
    ),
    (
        "typha_client_lag_batches",
        Kind::Histogram,
        "Batches an agent's stream is behind the hub when a batch is sent",
    ),
    (
        "typha_fanout_latency_seconds",
        Kind::Histogram,
        "From a batch's publication by the hub to its frame being handed to a client's stream",
    ),
    (
        "typha_rebalance_goodbyes_total",
        Kind::Counter,
        "Clients told to move to another replica",
    ),
    (
        "typha_shutdown_goodbyes_total",
        Kind::Counter,
        "Clients told goodbye while draining",
    ),
    (
        "typha_tls_reloads_total",
        Kind::Counter,
        "TLS material reloads applied",
    ),
    (
        "typha_tls_reload_errors_total",
        Kind::Counter,
        "TLS material changes rejected (the previous material stays)",
    ),
];

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, exported with buckets.
    Histogram,
}

/// Describes every family in [`FAMILIES`] and netmodel's, and sets `typha_build_info`.
pub fn describe() {
    netmodel::metrics::describe();
    for &(name, kind, help) in FAMILIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
    edge::metrics::register_build_info(
        "typha",
        env!("CARGO_PKG_VERSION"),
        option_env!("GIT_COMMIT"),
    );
}

/// Installs the process-global recorder typha's binary uses (histograms with buckets,
/// `process_*` metrics).
pub fn install() -> Result<PrometheusHandle, edge::metrics::MetricsError> {
    edge::metrics::install(&COUNT_SUFFIXES)
}
