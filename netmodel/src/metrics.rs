//! HELP text for the upstream watch's metric families (`typha_upstream_*`), exported by
//! whichever binary runs the watch: typha, or felix-client in local mode.
//!
//! Invariant: a family the watch records gets a line here; both binaries' scrape tests
//! fail on a family without HELP.

/// Counters and their HELP text.
pub const COUNTERS: &[(&str, &str)] = &[
    (
        "typha_upstream_events_total",
        "Watch events received from the API server, by resource",
    ),
    (
        "typha_upstream_watch_errors_total",
        "Watch or list errors (each retried with backoff), by resource",
    ),
    (
        "typha_upstream_forced_relists_total",
        "Relists forced by a refused resourceVersion, by resource",
    ),
    (
        "typha_upstream_rejected_total",
        "Objects that failed conversion to the model, by kind",
    ),
    (
        "typha_upstream_unparsable_versions_total",
        "resourceVersions that are not integers, by resource",
    ),
];

/// Gauges and their HELP text.
pub const GAUGES: &[(&str, &str)] = &[
    (
        "typha_upstream_staleness_seconds",
        "Seconds since the API server was last heard from (event, bookmark or list page)",
    ),
    (
        "typha_upstream_last_event_timestamp_seconds",
        "Unix time of the last watch event, by resource",
    ),
    (
        "typha_upstream_api_reachable",
        "1 while the API server answers the watches, 0 during an outage",
    ),
];

/// Describes every upstream family (idempotent).
pub fn describe() {
    for &(name, help) in COUNTERS {
        metrics::describe_counter!(name, help);
    }
    for &(name, help) in GAUGES {
        metrics::describe_gauge!(name, help);
    }
}
