//! The health endpoint over a real socket: /livez, /readyz following the sync status
//! (not ready before the first in-sync, ready after), and /metrics naming every
//! felix_sync_* series, from the recorder the binary installs: every family (the local
//! upstream watch's too) has HELP text, histograms have buckets, `process_*` and
//! `felix_build_info` are there, and the metrics-only listener serves the same. Local mode against kube-sim brings the status in sync, so the
//! test does not depend on a typha. One test per process: the recorder is global.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use felix_client::health::{self, sync_ready};
use felix_client::local::run_local;
use felix_client::{SyncEvent, SyncStatus};
use kube_sim::KubeSim;
use netmodel::UpstreamConfig;
use testkit::http_get;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

fn assert_series(metrics: &str) {
    for name in [
        "felix_sync_in_sync",
        "felix_sync_keys",
        "felix_sync_digest_mismatches_total",
        "felix_sync_reconnects_total{reason=\"goodbye_rebalance\"}",
        "felix_sync_reconnects_total{reason=\"goodbye_shutdown\"}",
        "felix_sync_reconnects_total{reason=\"goodbye_resync\"}",
        "felix_sync_reconnects_total{reason=\"error\"}",
        "felix_sync_reconnects_total{reason=\"connect_error\"}",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn readyz_follows_the_sync_and_metrics_name_every_series() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let handle = health::install_recorder().unwrap();
    let status = Arc::new(SyncStatus::default());
    let shutdown = CancellationToken::new();
    let server = health::serve(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        sync_ready(status.clone()),
        Some(handle.clone()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let addr = server.addr;

    assert_eq!(http_get(addr, "/livez").await, (200, "ok\n".to_string()));
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!((code, body.as_str()), (503, "not in sync yet\n"));
    let (code, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert_series(&metrics);
    assert!(metrics.contains("felix_sync_in_sync 0"), "{metrics}");

    // Local mode against an empty cluster: in sync once every resource is listed.
    let sim = KubeSim::start(kube_sim::Config::default()).await.unwrap();
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    let (tx, mut events) = mpsc::channel(64);
    let local = tokio::spawn(run_local(
        client,
        UpstreamConfig::default(),
        tx,
        status.clone(),
        shutdown.child_token(),
    ));
    let in_sync = async {
        while let Some(event) = events.recv().await {
            if matches!(event, SyncEvent::InSync { .. }) {
                return;
            }
        }
        panic!("local mode stopped before in-sync");
    };
    tokio::time::timeout(LIMIT, in_sync)
        .await
        .expect("never in sync");

    assert_eq!(
        http_get(addr, "/readyz").await,
        (200, "ready\n".to_string())
    );
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert_series(&metrics);
    assert!(metrics.contains("felix_sync_in_sync 1"), "{metrics}");
    for name in [
        "felix_build_info{version=\"",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_max_fds ",
        "typha_upstream_events_total{",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert_eq!(
        edge::metrics::lint(&metrics),
        Vec::<String>::new(),
        "{metrics}"
    );
    // The metrics-only listener (--metrics-listen) serves the same families.
    let scrape = edge::metrics::serve(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        handle.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let (code, scraped) = http_get(scrape.addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(scraped.contains("felix_sync_in_sync 1"), "{scraped}");
    assert_eq!(edge::metrics::lint(&scraped), Vec::<String>::new());
    assert_eq!(
        http_get(scrape.addr, "/readyz").await.0,
        404,
        "metrics only"
    );

    // Stopped: no longer in sync, so not ready.
    shutdown.cancel();
    local.await.unwrap().unwrap();
    assert!(!status.in_sync.load(std::sync::atomic::Ordering::Relaxed));
    server.join().await;
    let ready = sync_ready(status);
    assert_eq!(ready(), Err("reconnecting to typha\n".to_string()));
}
