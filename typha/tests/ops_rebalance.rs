//! Load spreading end to end: real sessions over loopback, a replica count fed by hand.
//! The excess clients (the newest) are told Goodbye(REBALANCE) and their streams end
//! cleanly; the others stay and keep receiving deltas; the count never goes below the
//! target. (The pacing is proven on a paused clock in `typha::rebalance`'s unit tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use ops_support::{Ending, RawClient, nodes, start};
use tokio::sync::watch;
use typha::app::OpsConfig;
use typha::rebalance::RebalanceConfig;
use typha_proto::pb::GoodbyeReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_clients_are_told_to_move_down_to_exactly_the_target() {
    let ops = OpsConfig {
        rebalance: RebalanceConfig {
            headroom: 0.0,
            rate: 1000.0,
        },
        ..OpsConfig::default()
    };
    let mut typha = start(ops).await;
    typha.load(nodes(10)).await;
    let (replicas, replicas_rx) = watch::channel(0usize);
    typha.running.start_rebalancing(replicas_rx);
    let addr = typha.running.grpc_addr;
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(RawClient::connect(addr, &format!("agent-{i}"), None).await);
    }
    let sessions = typha.running.server.sessions.clone();
    assert_eq!(
        sessions.counts().open,
        8,
        "no replica count yet: nobody shed"
    );

    // 10 nodes over 2 replicas, no headroom: 5 each. The three newest must go.
    replicas.send_replace(2);
    let mut leaving = clients.split_off(5);
    ops_support::expect_endings(&mut leaving, Ending::Goodbye(GoodbyeReason::Rebalance)).await;
    sessions.wait_for(|c| c.open == 5).await;
    let revision = typha.update(vec![ops_support::node(100)]).await;
    for client in &mut clients {
        client.wait_delta(revision).await;
    }
    assert_eq!(sessions.counts().staying, 5);

    // 11 nodes over 4 replicas: ceil(2.75) = 3; two more (again the newest) go.
    replicas.send_replace(4);
    let mut leaving = clients.split_off(3);
    for client in &mut leaving {
        assert_eq!(
            client.ending().await,
            Ending::Goodbye(GoodbyeReason::Rebalance)
        );
    }
    sessions.wait_for(|c| c.open == 3).await;
    let revision = typha.update(vec![ops_support::node(101)]).await;
    for client in &mut clients {
        client.wait_delta(revision).await;
    }
    assert_eq!(sessions.counts().staying, 3);
    typha.running.shutdown().await.unwrap();
}
