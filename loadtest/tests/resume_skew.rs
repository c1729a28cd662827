//! Protocol version skew (docs/protocol.md, "Compatibility rules"): a version 1 client
//! against this (version 2) server, this client against a server configured to speak
//! only version 1, and a future "version 3" client offering an unknown capability. Each
//! syncs, follows a change, and ends with the hub's digest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sync_support;

use std::time::Duration;

use felix_client::Mirror;
use loadtest::harness::{Harness, TyphaSpec};
use loadtest::model;
use netmodel::UpstreamEvent;
use sync_support::{apply_frame, next_frame, open_sync};
use typha::server::{ProtocolOffer, ServerConfig};
use typha_proto::frame::ServerFrame;
use typha_proto::pb;
use typha_proto::{PROTOCOL_VERSION, Revision};

const LIMIT: Duration = Duration::from_secs(60);

async fn harness(protocol: ProtocolOffer) -> Harness {
    let spec = TyphaSpec {
        tls: false,
        server: ServerConfig {
            protocol,
            ..ServerConfig::default()
        },
        ..TyphaSpec::default()
    };
    let harness = Harness::start(spec).await.unwrap();
    harness.load(model::cluster(2, 3, 2, 2)).await.unwrap();
    harness
}

/// A raw session: sends `hello`, applies frames to a mirror until it reaches
/// `until`; returns the ServerHello and the mirror.
async fn raw_session(
    harness: &Harness,
    hello: pb::ClientHello,
    until: Revision,
) -> (pb::ServerHello, Mirror) {
    let addr = harness.typha.grpc_addr.to_string();
    let channel = felix_client::connect::connect(&addr, None, LIMIT)
        .await
        .unwrap();
    let (_up, frames) = open_sync(channel, hello).await;
    let mut frames = frames.unwrap();
    let mut mirror = Mirror::new();
    let mut server_hello = None;
    loop {
        let frame = next_frame(&mut frames, "server silent").await;
        if let ServerFrame::Hello(hello) = &frame {
            server_hello = Some(hello.clone());
        }
        apply_frame(&mut mirror, frame);
        if mirror.has_synced() && mirror.revision() >= until {
            return (server_hello.unwrap(), mirror);
        }
    }
}

fn hello(version: u32, capabilities: Vec<i32>) -> pb::ClientHello {
    pb::ClientHello {
        node_name: format!("client-v{version}"),
        syncer_type: pb::SyncerType::Felix as i32,
        protocol_version: version,
        capabilities,
        resume: None,
        client_version: format!("test/v{version}"),
    }
}

/// Sends one change through the harness and returns the hub's revision after it.
async fn change(harness: &Harness) -> Revision {
    let before = harness.typha.hub.revision();
    harness
        .send(UpstreamEvent::Updates(vec![model::node(99)]))
        .await
        .unwrap();
    let mut rx = harness.typha.hub.subscribe();
    tokio::time::timeout(LIMIT, rx.wait_for(|r| *r > before))
        .await
        .unwrap()
        .unwrap();
    harness.typha.hub.revision()
}

/// A version 1 client (the old hello: no resource-version capability) syncs against a
/// version 2 server, which speaks version 1 to it and grants nothing it did not offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_client_syncs_with_a_v2_server() {
    let harness = harness(ProtocolOffer::default()).await;
    let target = change(&harness).await;
    let (server_hello, mirror) = raw_session(&harness, hello(1, vec![1, 2, 3]), target).await;
    assert_eq!(server_hello.protocol_version, 1);
    assert_eq!(server_hello.capabilities, vec![1, 2, 3]);
    assert!(mirror.versions().is_none());
    assert_eq!(mirror.digest(), harness.typha.hub.digest());
}

/// This build's client against a server configured to speak only version 1: it syncs
/// through the real SyncClient, keeps no version vector, and ends with the hub's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_client_syncs_with_a_v1_server() {
    let harness = harness(ProtocolOffer::v1()).await;
    let clients = harness.spawn_clients(3).unwrap();
    clients
        .wait_all(harness.typha.hub.revision(), LIMIT)
        .await
        .unwrap();
    let target = change(&harness).await;
    clients.wait_all(target, LIMIT).await.unwrap();
    for mirror in clients.stop().await.unwrap() {
        assert_eq!(mirror.digest(), harness.typha.hub.digest());
        assert!(
            mirror.versions().is_none(),
            "versions kept though not granted"
        );
        assert!(mirror.resume_position().unwrap().versions.is_empty());
    }
    // And the raw view of the handshake.
    let (server_hello, _) =
        raw_session(&harness, hello(PROTOCOL_VERSION, vec![1, 2, 3, 4]), target).await;
    assert_eq!(server_hello.protocol_version, 1);
    assert!(
        !server_hello
            .capabilities
            .contains(&(pb::Capability::ResourceVersions as i32))
    );
}

/// A "version 3" client offering an unknown capability: the server speaks its own
/// version 2, grants only what it knows, and the client syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v3_client_with_an_unknown_capability_syncs() {
    let harness = harness(ProtocolOffer::default()).await;
    let target = change(&harness).await;
    let (server_hello, mirror) =
        raw_session(&harness, hello(3, vec![1, 2, 3, 4, 99]), target).await;
    assert_eq!(server_hello.protocol_version, 2);
    assert_eq!(server_hello.capabilities, vec![1, 2, 3, 4]);
    assert_eq!(mirror.digest(), harness.typha.hub.digest());
}
