//! Conformance through the wire, part 2: how streams end. Every refusal of the spec's
//! table gets its gRPC status and no state (while a well-behaved stream on the same
//! connection carries on), unauthenticated clients get nothing, pings are answered and a
//! silent client is dropped, and SIGTERM says `Goodbye(SHUTDOWN)` before a clean end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use conformance::pb::{self, Capability, client_message::Msg};
use conformance::{ConformanceError, SyncStream, hello};
use support::{ALL, LIMIT, World, batches_until, pod, within};
use tonic::Code;

/// Reads a refused stream to its end: the status code, and whether any state came.
async fn refusal(stream: &mut SyncStream) -> (Code, bool) {
    let mut state = false;
    loop {
        match within(stream.next_message()).await {
            Ok((pb::server_message::Msg::Hello(_), _)) => {}
            Ok(_) => state = true,
            Err(ConformanceError::Status(status)) => return (status.code(), state),
            Err(other) => panic!("the stream ended without an error status: {other}"),
        }
    }
}

/// One stream that sends `first` and then `then` (raw message bodies).
async fn refused_after(channel: &tonic::transport::Channel, messages: &[Bytes]) -> (Code, bool) {
    let mut stream = SyncStream::open(channel).await.unwrap();
    for m in messages {
        // The server may end the stream before it reads everything.
        let _ = stream.send_raw(m.clone()).await;
    }
    refusal(&mut stream).await
}

fn encoded(msg: Msg) -> Bytes {
    use prost::Message;
    Bytes::from(pb::ClientMessage { msg: Some(msg) }.encode_to_vec())
}

fn bad_hello(edit: fn(&mut pb::ClientHello)) -> Bytes {
    let mut h = hello("bad", 2, &ALL);
    edit(&mut h);
    encoded(Msg::Hello(h))
}

/// Every per-stream refusal ends only its stream, with the specified status and before
/// any state; a well-behaved stream on the same connection keeps receiving batches.
#[tokio::test]
async fn every_refusal_gets_its_status_and_no_state_and_spares_the_sibling_stream() {
    let world = World::start("refusals").await;
    let typha = world.typha("typha-a", &["--handshake-timeout", "2s"]).await;
    let channel = conformance::connect(typha.grpc, world.tls()).await.unwrap();
    let sibling = SyncStream::open(&channel).await.unwrap();
    let mut sibling = within(sibling.sync(hello("sibling", 2, &ALL), None))
        .await
        .unwrap();

    let ping = encoded(Msg::Ping(pb::Ping {
        nonce: 1,
        sent_unix_nanos: 0,
    }));
    let cases: Vec<(&str, Vec<Bytes>, Code)> = vec![
        (
            "protocol version 0",
            vec![bad_hello(|h| h.protocol_version = 0)],
            Code::InvalidArgument,
        ),
        (
            "no zstd offered",
            vec![bad_hello(|h| {
                h.capabilities = vec![Capability::Resume as i32]
            })],
            Code::InvalidArgument,
        ),
        (
            "no syncer type",
            vec![bad_hello(|h| h.syncer_type = 0)],
            Code::InvalidArgument,
        ),
        (
            "bad node name",
            vec![bad_hello(|h| h.node_name = "a b".into())],
            Code::InvalidArgument,
        ),
        ("a ping first", vec![ping], Code::InvalidArgument),
        (
            "an empty message first",
            vec![Bytes::new()],
            Code::InvalidArgument,
        ),
        (
            "not protobuf",
            vec![Bytes::from_static(&[0xff; 16])],
            Code::InvalidArgument,
        ),
        (
            "1 MiB message",
            vec![Bytes::from(vec![0x0a; 1 << 20])],
            Code::ResourceExhausted,
        ),
        (
            "no hello within the handshake timeout",
            vec![],
            Code::DeadlineExceeded,
        ),
    ];
    for (name, messages, code) in cases {
        assert_eq!(
            refused_after(&channel, &messages).await,
            (code, false),
            "{name}"
        );
    }

    // A second hello after the snapshot.
    let synced = within(
        SyncStream::open(&channel)
            .await
            .unwrap()
            .sync(hello("twice", 2, &ALL), None),
    )
    .await
    .unwrap();
    let mut stream = synced.stream;
    stream
        .send(Msg::Hello(hello("twice", 2, &ALL)))
        .await
        .unwrap();
    assert_eq!(
        refusal(&mut stream).await.0,
        Code::InvalidArgument,
        "second hello"
    );

    // gRPC message compression is not accepted.
    let compressed = SyncStream::open_with(&channel, &[("grpc-encoding", "gzip")]).await;
    let code = match compressed {
        Err(status) => status.code(),
        Ok(mut stream) => refusal(&mut stream).await.0,
    };
    assert_eq!(code, Code::Unimplemented, "compressed messages");

    // A method the service does not have.
    let unknown = SyncStream::open_at(&channel, "/typha.sync.v1.Typha/Watch", &[]).await;
    let code = match unknown {
        Err(status) => status.code(),
        Ok(mut stream) => refusal(&mut stream).await.0,
    };
    assert_eq!(code, Code::Unimplemented, "an unknown method");

    // A fifth stream on one connection (the sibling and three more are open).
    let mut open = Vec::new();
    for i in 0..3 {
        let s = SyncStream::open(&channel).await.unwrap();
        open.push(
            within(s.sync(hello(&format!("extra-{i}"), 2, &ALL), None))
                .await
                .unwrap(),
        );
    }
    let fifth = match SyncStream::open(&channel).await {
        Err(status) => status.code(),
        Ok(mut stream) => refusal(&mut stream).await.0,
    };
    assert_eq!(fifth, Code::ResourceExhausted, "a fifth stream");

    world.put(pod("ns-0", "after-refusals", "node-00000", "10.0.0.210"));
    batches_until(&mut sibling, |m| {
        m.get(pb::Kind::WorkloadEndpoint, "ns-0", "after-refusals")
            .is_some()
    })
    .await
    .unwrap_or_else(|e| panic!("the sibling stream suffered: {e}\n{}", typha.log_tail()));
}

/// A client without a certificate, or with one from another CA, receives no
/// `ServerHello`: the TLS handshake or its first call fails.
#[tokio::test]
async fn unauthenticated_clients_receive_nothing() {
    let world = World::start("unauthenticated").await;
    let typha = world.typha("typha-a", &[]).await;
    let other = world.dir().join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    support::certs(&other);
    let ca = world.dir().join("ca.crt");
    let configs = [
        (
            "no certificate",
            conformance::tls_config(&ca, None).unwrap(),
        ),
        (
            "another CA's certificate",
            conformance::tls_config(
                &ca,
                Some((&other.join("felix.crt"), &other.join("felix.key"))),
            )
            .unwrap(),
        ),
    ];
    for (name, tls) in configs {
        let outcome = async {
            let channel = conformance::connect(typha.grpc, tls).await?;
            let stream = SyncStream::open(&channel).await?;
            stream.sync(hello("intruder", 2, &ALL), None).await
        };
        match within(outcome).await {
            Ok(_) => panic!("{name}: synced"),
            Err(ConformanceError::Connect(_)) => {}
            // The first call fails on the refused connection.
            Err(ConformanceError::Status(status)) => assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Cancelled | Code::Unknown
                ),
                "{name}: {status}"
            ),
            Err(other) => panic!("{name}: unexpected {other}"),
        }
    }
}

/// The server pings; a client's ping is answered with its nonce; a client that stops
/// answering is dropped (the connection closes) after the ping timeout.
#[tokio::test]
async fn pings_are_answered_and_a_silent_client_is_dropped() {
    let world = World::start("pings").await;
    let args = ["--ping-interval", "200ms", "--ping-timeout", "1s"];
    let typha = world.typha("typha-a", &args).await;
    let mut synced = typha.sync(&world, hello("pinger", 2, &ALL), None).await;
    let stream = &mut synced.stream;
    for _ in 0..3 {
        let (msg, _) = within(stream.next_message()).await.unwrap();
        let pb::server_message::Msg::Ping(ping) = msg else {
            panic!("expected a ping, got {msg:?}");
        };
        let pong = pb::Pong {
            nonce: ping.nonce,
            ping_sent_unix_nanos: ping.sent_unix_nanos,
        };
        stream.send(Msg::Pong(pong)).await.unwrap();
    }
    stream
        .send(Msg::Ping(pb::Ping {
            nonce: 4242,
            sent_unix_nanos: 7,
        }))
        .await
        .unwrap();
    let pong = loop {
        match within(stream.next_message()).await.unwrap().0 {
            pb::server_message::Msg::Pong(pong) => break pong,
            pb::server_message::Msg::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((pong.nonce, pong.ping_sent_unix_nanos), (4242, 7));
    // Now silent: the server drops the connection within the ping timeout.
    let ended = tokio::time::timeout(LIMIT, async {
        loop {
            match stream.next_message().await {
                Ok((pb::server_message::Msg::Ping(_), _)) => {}
                Ok((other, _)) => panic!("unexpected {other:?}"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("a silent client was not dropped");
    assert!(matches!(ended, ConformanceError::Status(_)), "{ended}");
}

/// SIGTERM: every client gets `Goodbye(SHUTDOWN)`, then the stream ends with status OK,
/// and the process exits.
#[tokio::test]
async fn sigterm_says_goodbye_shutdown_then_ends_the_stream_cleanly() {
    let world = World::start("shutdown").await;
    let mut typha = world.typha("typha-a", &["--drain-duration", "500ms"]).await;
    let mut synced = typha.sync(&world, hello("leaving", 2, &ALL), None).await;
    typha.terminate();
    match within(synced.stream.next_batch(&mut synced.mirror)).await {
        Err(ConformanceError::Goodbye(reason, _)) => {
            assert_eq!(reason, pb::GoodbyeReason::Shutdown as i32)
        }
        other => panic!("expected a goodbye, got {other:?}"),
    }
    assert!(
        matches!(within(synced.stream.frame()).await, Ok(None)),
        "status OK after the goodbye"
    );
    assert!(typha.wait_exit().await.success());
}

/// With its Service's EndpointSlice listing two ready replicas, two nodes and no
/// headroom, a replica's share is one client: the newer of two clients is told
/// `Goodbye(REBALANCE)`, then its stream ends cleanly; the other stays.
#[tokio::test]
async fn a_replica_over_its_share_says_goodbye_rebalance() {
    let world = World::start("rebalance").await;
    world.put(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "calico-system"}}));
    world.put(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "calico-system", "name": "calico-typha-x",
                     "labels": {"kubernetes.io/service-name": "calico-typha"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.9.0.1"], "conditions": {"ready": true}},
                      {"addresses": ["10.9.0.2"], "conditions": {"ready": true}}],
        "ports": [{"name": "calico-typha", "port": 5473, "protocol": "TCP"}]
    }));
    let args = [
        "--service-namespace",
        "calico-system",
        "--service-name",
        "calico-typha",
        "--rebalance-headroom",
        "0",
        "--rebalance-rate",
        "100",
    ];
    let typha = world.typha("typha-a", &args).await;
    let mut stays = typha.sync(&world, hello("node-1", 2, &ALL), None).await;
    let mut moves = typha.sync(&world, hello("node-2", 2, &ALL), None).await;
    match within(moves.stream.next_batch(&mut moves.mirror)).await {
        Err(ConformanceError::Goodbye(reason, _)) => {
            assert_eq!(reason, pb::GoodbyeReason::Rebalance as i32)
        }
        other => panic!("expected a goodbye, got {other:?}\n{}", typha.log_tail()),
    }
    assert!(
        matches!(within(moves.stream.frame()).await, Ok(None)),
        "status OK after the goodbye"
    );
    world.put(pod("ns-0", "after-rebalance", "node-00000", "10.0.0.220"));
    batches_until(&mut stays, |m| {
        m.get(pb::Kind::WorkloadEndpoint, "ns-0", "after-rebalance")
            .is_some()
    })
    .await
    .unwrap();
}
