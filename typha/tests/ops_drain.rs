//! Graceful shutdown (what SIGTERM runs): readiness turns false at once, the listener
//! closes, every client receives Goodbye(SHUTDOWN) and a clean end of stream (no error),
//! and the drain reports them all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::time::Duration;

use ops_support::{Ending, RawClient, http_get, nodes, start};
use typha::app::OpsConfig;
use typha::drain::{DrainConfig, DrainReport};
use typha_proto::pb::GoodbyeReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_the_listener_and_says_goodbye_to_everyone() {
    let ops = OpsConfig {
        drain: DrainConfig {
            duration: Duration::from_millis(400),
            max_interval: Duration::from_millis(100),
        },
        ..OpsConfig::default()
    };
    let typha = start(ops).await;
    typha.load(nodes(3)).await;
    let addr = typha.running.grpc_addr;
    let port = typha.health_port();
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(RawClient::connect(addr, &format!("agent-{i}"), None).await);
    }
    assert_eq!(http_get(port, "/readyz").await.0, 200);

    typha.running.begin_drain();
    let (status, body) = http_get(port, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "draining: shutting down\n"));
    assert_eq!(http_get(port, "/livez").await.0, 200);
    typha.running.server.accept_closed().await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert_eq!(
        refused.map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // Open sessions still get updates while they wait for their turn.
    let revision = typha.update(vec![ops_support::node(50)]).await;
    for client in &mut clients {
        client.wait_delta(revision).await;
    }

    let drain = tokio::spawn(typha.running.drain());
    ops_support::expect_endings(&mut clients, Ending::Goodbye(GoodbyeReason::Shutdown)).await;
    let report = drain.await.unwrap().unwrap();
    assert_eq!(
        report,
        DrainReport {
            goodbyes: 5,
            lingering: 0
        }
    );
}
