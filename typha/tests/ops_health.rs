//! /readyz over HTTP: not ready before the upstream is in sync, ready when in sync and
//! fresh, not ready (saying why) when stale. The freshness boundary itself is tested on
//! a paused clock in `typha::health`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::time::Duration;

use ops_support::{http_get, nodes, start};
use typha::app::OpsConfig;
use typha::health::HealthConfig;

async fn start_stale_after(max_staleness: Duration) -> ops_support::Typha {
    let health = HealthConfig { max_staleness };
    start(OpsConfig {
        health,
        ..OpsConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_when_in_sync_and_fresh() {
    let typha = start_stale_after(Duration::from_secs(3600)).await;
    let port = typha.health_port();
    assert_eq!(
        http_get(port, "/readyz").await,
        (503, "upstream not in sync\n".to_string())
    );
    assert_eq!(http_get(port, "/livez").await, (200, "ok\n".to_string()));
    typha.load(nodes(2)).await;
    assert_eq!(
        http_get(port, "/readyz").await,
        (200, "ready\n".to_string())
    );
    typha.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_when_stale() {
    // Anything heard is already too old by the time /readyz is asked.
    let typha = start_stale_after(Duration::from_nanos(1)).await;
    let port = typha.health_port();
    typha.load(nodes(2)).await;
    let (status, body) = http_get(port, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("upstream stale: nothing heard for"),
        "{body}"
    );
    typha.running.shutdown().await.unwrap();
}
