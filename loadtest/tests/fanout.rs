//! The spine end to end over real mutual TLS on loopback: typha fed through its upstream
//! channel, hundreds of felix-client sync clients, checked against an oracle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod metrics_support;
mod sync_support;
mod upstream_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edge::tls::PeerIdentity;
use loadtest::harness::{Harness, TyphaSpec};
use loadtest::model;
use metrics_support::Metrics;
use netmodel::UpstreamEvent;
use sync_support::{hello_message, open_sync};
use typha::server::ServerConfig;
use typha_proto::frame::ServerFrame;
use typha_proto::pb;
use typha_proto::{Revision, Update};
use upstream_support::{apply, hashes, mirror_model};

const LIMIT: Duration = Duration::from_secs(120);

/// 500 clients receive the snapshot and 1,000 later updates; all end with the server's
/// state and digest, and each delta batch was encoded once however many clients got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_converge_on_snapshot_and_updates() {
    let harness = Harness::start(TyphaSpec::default()).await.unwrap();
    let mut oracle = BTreeMap::new();
    let initial = model::cluster(50, 20, 10, 2);
    initial.iter().for_each(|u| apply(&mut oracle, u));
    harness.load(initial).await.unwrap();

    let clients = harness.spawn_clients(500).unwrap();
    let start = harness.typha.hub.revision();
    clients.wait_all(start, LIMIT).await.unwrap();
    let encoded_before = harness.typha.hub.stats().delta_frames_encoded;

    // 1,000 updates in 100 batches: label changes, deletes and new pods.
    let mut batches = 0;
    for b in 0..100u32 {
        let mut batch = Vec::new();
        for i in 0..10u32 {
            let index = b * 10 + i;
            let (ns, pod) = model::pod_of(index, 10);
            batch.push(match index % 5 {
                0 => model::delete_endpoint(&ns, &pod),
                1 => model::endpoint(&ns, &format!("new-{index}"), "node-1", 100_000 + index, 0),
                _ => model::endpoint(&ns, &pod, &format!("node-{}", index / 20), index, b + 1),
            });
        }
        batch.iter().for_each(|u| apply(&mut oracle, u));
        harness.send(UpstreamEvent::Updates(batch)).await.unwrap();
        batches += 1;
    }
    let hub = &harness.typha.hub;
    // The hub applies asynchronously: wait for it through a client, then for everyone.
    let target = Revision(start.0 + batches);
    clients.wait_all(target, LIMIT).await.unwrap();
    assert_eq!(hub.revision(), target);
    assert_eq!(hub.stats().delta_frames_encoded - encoded_before, batches);

    let delivered: u64 = clients
        .clients
        .iter()
        .map(|c| c.status.batches.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let digest = hub.digest();
    let mirrors = clients.stop().await.unwrap();
    assert!(delivered >= 500, "every client received deltas");
    for mirror in &mirrors {
        assert_eq!(mirror.digest(), digest);
        assert_eq!(mirror.revision(), target);
        assert_eq!(mirror.len(), oracle.len());
    }
    // The compact mirror keeps each key's entry hash: compare with the oracle's.
    assert_eq!(mirror_model(&mirrors[0]), hashes(&oracle));
}

/// With clients kept in step, every client receives every batch, yet each batch is
/// encoded exactly once: the frames are shared, not re-encoded per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delta_is_encoded_once_for_all_clients() {
    let mut metrics = Metrics::install();
    let harness = Harness::start(TyphaSpec::default()).await.unwrap();
    harness.load(model::cluster(5, 10, 2, 1)).await.unwrap();
    let clients = harness.spawn_clients(40).unwrap();
    let mut revision = harness.typha.hub.revision();
    clients.wait_all(revision, LIMIT).await.unwrap();
    let encoded_before = harness.typha.hub.stats().delta_frames_encoded;
    for generation in 1..=20u32 {
        let update = model::endpoint("ns-0", "pod-0", "node-0", 0, generation);
        harness
            .send(UpstreamEvent::Updates(vec![update]))
            .await
            .unwrap();
        revision = revision.next();
        clients.wait_all(revision, LIMIT).await.unwrap();
    }
    let encoded = harness.typha.hub.stats().delta_frames_encoded - encoded_before;
    assert_eq!(encoded, 20);
    assert_eq!(metrics.get("typha_deltas_coalesced_total", ""), 0.0);
    let per_client: Vec<u64> = clients
        .clients
        .iter()
        .map(|c| c.status.batches.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert!(per_client.iter().all(|b| *b == 20), "{per_client:?}");
    clients.stop().await.unwrap();
}

async fn raw_session(
    harness: &Harness,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> (
    tokio::sync::mpsc::Sender<pb::ClientMessage>,
    Result<tonic::Streaming<ServerFrame>, tonic::Status>,
) {
    let channel = felix_client::connect::connect(
        &harness.typha.grpc_addr.to_string(),
        tls,
        Duration::from_secs(10),
    )
    .await;
    let Ok(channel) = channel else {
        let (tx, _) = tokio::sync::mpsc::channel(4);
        return (tx, Err(tonic::Status::unavailable("connect failed")));
    };
    open_sync(channel, hello_message("raw")).await
}

/// Reads frames until the stream ends; returns how many were state (snapshot or deltas).
async fn state_frames(stream: Result<tonic::Streaming<ServerFrame>, tonic::Status>) -> usize {
    let Ok(mut stream) = stream else { return 0 };
    let mut n = 0;
    while let Ok(Ok(Some(frame))) =
        tokio::time::timeout(Duration::from_secs(5), stream.message()).await
    {
        if matches!(
            frame,
            ServerFrame::SnapshotChunk(_) | ServerFrame::InSync(_) | ServerFrame::Deltas(_)
        ) {
            n += 1;
        }
    }
    n
}

fn no_client_cert(harness: &Harness) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls_pemfile::certs(&mut harness.pki.ca.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// No certificate, another CA's certificate, the wrong CN: nothing of the cluster's
/// state is received, and each refusal is counted with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_failing_tls_checks_receive_nothing_and_are_counted() {
    let mut metrics = Metrics::install();
    let harness = Harness::start(TyphaSpec::default()).await.unwrap();
    harness.load(model::cluster(2, 5, 1, 1)).await.unwrap();
    let server_identity = PeerIdentity::with_cn(edge::certs::DEFAULT_SERVER_CN);

    // No client certificate at all.
    let (_tx, stream) = raw_session(&harness, Some(no_client_cert(&harness))).await;
    assert_eq!(state_frames(stream).await, 0);

    // A certificate from another CA.
    let other = edge::certs::DevPki::generate().unwrap();
    let mut material = other.client_material();
    material.ca_pem = harness.pki.ca.cert_pem.clone().into_bytes();
    let tls = edge::tls::client_config(&material, &server_identity).unwrap();
    let (_tx, stream) = raw_session(&harness, Some(tls)).await;
    assert_eq!(state_frames(stream).await, 0);

    // The right CA, the wrong identity.
    let wrong = harness
        .pki
        .issue(&edge::certs::CertSpec::new("intruder", false))
        .unwrap();
    let tls = edge::tls::client_config(&harness.pki.material(&wrong), &server_identity).unwrap();
    let (_tx, stream) = raw_session(&harness, Some(tls)).await;
    assert_eq!(state_frames(stream).await, 0);

    // A legitimate raw client does receive state, so the checks above can fail.
    let (_tx, stream) = raw_session(&harness, harness.client_tls().unwrap()).await;
    let mut stream = stream.unwrap();
    let first_state = loop {
        match stream.message().await.unwrap().unwrap() {
            ServerFrame::Hello(_) => continue,
            other => break other,
        }
    };
    assert!(matches!(first_state, ServerFrame::SnapshotChunk(_)));

    // tonic's channel may redial once after the refusal, so each case counts at least once.
    for reason in ["tls_no_certificate", "tls_unknown_ca", "tls_bad_identity"] {
        let refused = metrics.dropped(reason);
        assert!(refused >= 1, "{reason} not counted: {metrics:?}");
    }
}

/// A client that stops reading is dropped after the write timeout, while the others
/// keep receiving every update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_others_continue() {
    let mut metrics = Metrics::install();
    let spec = TyphaSpec {
        server: ServerConfig {
            write_timeout: Duration::from_millis(500),
            out_buffer_frames: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    let harness = Harness::start(spec).await.unwrap();
    harness.load(model::cluster(2, 5, 1, 1)).await.unwrap();
    let clients = harness.spawn_clients(20).unwrap();
    clients
        .wait_all(harness.typha.hub.revision(), LIMIT)
        .await
        .unwrap();

    // The stalled client reads its hello and snapshot, then nothing more.
    let mut ends = harness.typha.session_ends.subscribe();
    let (_tx, stream) = raw_session(&harness, harness.client_tls().unwrap()).await;
    let mut stalled = stream.unwrap();
    loop {
        if let ServerFrame::InSync(_) = stalled.message().await.unwrap().unwrap() {
            break;
        }
    }
    // Distinct keys (coalescing cannot shrink them), ~10 MB in all: more than HTTP/2's
    // stream window (2 MiB in hyper's client), the server's send buffer and the queue.
    let mut revision = harness.typha.hub.revision();
    for round in 0..300u32 {
        let batch: Vec<Update> = (0..100u32)
            .map(|i| {
                model::endpoint(
                    "ns-0",
                    &format!("bulk-{round}-{i}"),
                    "node-0",
                    500_000 + round * 100 + i,
                    1,
                )
            })
            .collect();
        harness.send(UpstreamEvent::Updates(batch)).await.unwrap();
        revision = revision.next();
    }
    clients.wait_all(revision, LIMIT).await.unwrap();
    let digest = harness.typha.hub.digest();

    // The stalled client's session (node "raw") ends with a write timeout.
    let dropped = async {
        loop {
            let ended = ends.recv().await.expect("session ends broadcast");
            if ended.node == "raw" {
                return ended.reason;
            }
        }
    };
    let reason = tokio::time::timeout(LIMIT, dropped)
        .await
        .expect("stalled client never dropped");
    assert_eq!(reason, typha::server::DropReason::WriteTimeout);
    // Counted too (busy in-process sync clients may also hit the short timeout, and then
    // reconnect and resume: they are checked below by their digests).
    let timeouts = metrics.dropped("write_timeout");
    assert!(timeouts >= 1, "write timeouts not counted");
    // Its connection was killed: after whatever was already buffered, the stream ends in
    // an error. (A live session would instead keep the stream open with pings forever.)
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(30), stalled.message()).await {
            Err(_) => break false,
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None) | Err(_)) => break true,
        }
    };
    assert!(ended, "the stalled client's stream is still open");
    for mirror in clients.stop().await.unwrap() {
        assert_eq!(mirror.digest(), digest);
    }
}
