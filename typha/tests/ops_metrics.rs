//! /metrics (Prometheus text) carries every metric operators rely on, by its exact name,
//! after a little real traffic (a snapshot, a delta, a running rebalancer), from the
//! recorder the binary installs: every family has HELP text, latencies are histograms
//! with buckets (they aggregate across replicas), `process_*` and `typha_build_info`
//! are there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use ops_support::{RawClient, http_get, nodes, start_with};
use tokio::sync::watch;
use typha::app::OpsConfig;
use typha::server::Transport;

const NAMES: [&str; 24] = [
    "typha_connections_active",
    "typha_connections_accepted_total",
    "typha_connections_dropped_total{reason=",
    "typha_connections_target",
    "typha_snapshots_sent_total",
    "typha_snapshots_built_total",
    "typha_resumes_total",
    "typha_snapshot_keys",
    "typha_snapshot_raw_bytes",
    "typha_snapshot_compressed_bytes",
    "typha_snapshot_build_seconds",
    "typha_delta_batches_total",
    "typha_delta_updates_total",
    "typha_deltas_coalesced_total",
    "typha_client_lag_batches",
    "typha_fanout_latency_seconds",
    "typha_upstream_in_sync",
    "typha_upstream_staleness_seconds",
    "typha_rebalance_goodbyes_total",
    "typha_shutdown_goodbyes_total",
    "typha_tls_reloads_total",
    "typha_tls_reload_errors_total",
    // Samples, not just names: a gauge at its value.
    "typha_upstream_in_sync 1",
    "typha_connections_active 1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_exported_by_name() {
    let handle = typha::metrics::install().unwrap();
    let mut typha = start_with(Transport::Plaintext, OpsConfig::default(), Some(handle)).await;
    typha.load(nodes(5)).await;
    let (_replicas, replicas_rx) = watch::channel(1usize);
    typha.running.start_rebalancing(replicas_rx);
    let mut client = RawClient::connect(typha.running.grpc_addr, "agent-0", None).await;
    let revision = typha.update(vec![ops_support::node(9)]).await;
    client.wait_delta(revision).await;

    let (status, text) = http_get(typha.health_port(), "/metrics").await;
    assert_eq!(status, 200);
    for name in NAMES.iter().chain(&[
        "typha_build_info{version=\"",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "typha_fanout_latency_seconds_bucket{le=\"0.005\"}",
        "typha_client_lag_batches_bucket{le=\"10\"}",
        "typha_snapshot_build_seconds_bucket{le=\"+Inf\"}",
    ]) {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert_eq!(
        edge::metrics::lint(&text),
        Vec::<String>::new(),
        "/metrics:\n{text}"
    );
    typha.running.shutdown().await.unwrap();
}
