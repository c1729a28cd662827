//! Hostile clients on the gRPC stream and at the door: oversized, malformed and
//! out-of-order client messages, an unusable resume position, too many streams on one
//! connection, a flood of quick connections, and idle connections beyond the connection
//! limit. Each is ended or refused with a counted reason, and a well-behaved client
//! connected throughout is untouched (see `hostile_support`). A client that stops reading
//! is covered by fanout.rs (`a_client_that_stops_reading_is_dropped_and_others_continue`);
//! the session's behaviours without the wire (bad hellos, messages mid-stream, pings,
//! goodbyes) are tested in typha with a paused clock (`server::session::tests`).
//! Run with nextest (one process, hence one metrics recorder, per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hostile_support;
mod metrics_support;
mod sync_support;

use bytes::Bytes;
use futures::future::join_all;
use hostile_support::{
    Ending, LIMIT, Metrics, World, encode, ending, hello, raw_sync, rss_kib, until_frame,
    until_in_sync,
};
use loadtest::harness::ClientHandle;
use sync_support::{hello_message, next_frame};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use typha::server::{DropReason, ServerConfig, TOO_MANY_CONNECTIONS, TOO_MANY_STREAMS};
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, client_message};

/// What one hostile stream sends first, and how its session must end.
struct Case {
    name: &'static str,
    first: Bytes,
    reason: DropReason,
}

fn first_message_cases() -> Vec<Case> {
    let hello_bytes = hello("truncated");
    let bad_hello = |edit: fn(&mut pb::ClientHello)| {
        let mut message = hello_message("bad-hello");
        edit(&mut message);
        encode(client_message::Msg::Hello(message))
    };
    vec![
        Case {
            name: "1 MiB first message (limit 64 KiB)",
            first: Bytes::from(vec![0x0a; 1 << 20]),
            reason: DropReason::OversizedMessage,
        },
        Case {
            name: "garbage bytes (not protobuf)",
            first: Bytes::from_static(&[0xff; 16]),
            reason: DropReason::MalformedMessage,
        },
        Case {
            name: "truncated ClientHello",
            first: hello_bytes.slice(..hello_bytes.len() / 2),
            reason: DropReason::MalformedMessage,
        },
        Case {
            name: "invalid node name",
            first: bad_hello(|h| h.node_name = "../../etc/passwd".to_string()),
            reason: DropReason::BadHello,
        },
    ]
}

/// 4. Each malformed first message ends only its own session, with the expected counted
/// reason, before any state is sent; the well-behaved client is untouched. Only what
/// needs the wire is here (tonic's decoding and size limit, and one refused hello end to
/// end); the other bad hellos, bad messages mid-stream, second hellos and ignored unknown
/// messages are the session's own tests (typha/src/server/session/tests.rs, in-memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_first_messages_end_only_their_stream_and_are_counted() {
    let mut metrics = Metrics::install();
    let mut world = World::start(ServerConfig::default()).await;
    let cases = first_message_cases();
    for case in &cases {
        let channel = world.channel(world.good_tls()).await;
        let (tx, stream) = raw_sync(channel).await;
        let mut stream = stream.unwrap();
        tx.send(case.first.clone()).await.unwrap();
        let ended = world.next_hostile_end().await;
        assert_eq!(ended.reason, case.reason, "{}", case.name);
        let (end, state) = ending(&mut stream).await;
        assert_eq!(state, 0, "{}: state frames sent", case.name);
        let want = match case.reason {
            DropReason::OversizedMessage => tonic::Code::ResourceExhausted,
            _ => tonic::Code::InvalidArgument,
        };
        assert_eq!(end, Ending::Status(want), "{}", case.name);
        println!(
            "{}: session ended {:?}, client saw {end:?}",
            case.name, ended.reason
        );
        drop(tx);
    }
    for reason in [
        DropReason::MalformedMessage,
        DropReason::OversizedMessage,
        DropReason::BadHello,
    ] {
        let want = cases.iter().filter(|c| c.reason == reason).count() as u64;
        assert_eq!(metrics.dropped(reason.as_str()), want, "{reason:?}");
    }
    world.assert_unaffected().await;
}

/// A malformed and then an oversized message on one stream of a connection that carries
/// another, in-sync stream: each ends only its own stream with its status, the sibling
/// keeps receiving deltas on the same connection, and nothing is counted as
/// `client_closed` or `connection_closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_ends_only_its_stream_and_the_sibling_stream_continues() {
    let mut metrics = Metrics::install();
    let mut world = World::start(ServerConfig::default()).await;
    let channel = world.channel(world.good_tls()).await;
    let (sibling_tx, sibling) = raw_sync(channel.clone()).await;
    let mut sibling = sibling.unwrap();
    sibling_tx.send(hello("sibling")).await.unwrap();
    until_in_sync(&mut sibling).await;
    for (node, bad, reason, code) in [
        (
            "garbage",
            Bytes::from_static(&[0xff; 16]),
            DropReason::MalformedMessage,
            tonic::Code::InvalidArgument,
        ),
        (
            "oversized",
            Bytes::from(vec![0x0a; 1 << 20]),
            DropReason::OversizedMessage,
            tonic::Code::ResourceExhausted,
        ),
    ] {
        let (tx, stream) = raw_sync(channel.clone()).await;
        let mut stream = stream.unwrap();
        tx.send(hello(node)).await.unwrap();
        until_in_sync(&mut stream).await;
        tx.send(bad).await.unwrap();
        let ended = world.next_hostile_end().await;
        assert_eq!((ended.node.as_str(), ended.reason), (node, reason));
        assert_eq!(ending(&mut stream).await.0, Ending::Status(code), "{node}");
        // The sibling on the same connection still receives what happens next.
        let revision = world.deliver().await;
        until_frame(
            &mut sibling,
            "the sibling's delta",
            |frame| matches!(frame, ServerFrame::Deltas(batch) if batch.revision == revision.0),
        )
        .await;
    }
    assert_eq!(
        world.counts().open,
        2,
        "the good client's and this connection"
    );
    assert_eq!(metrics.dropped("client_closed"), 0);
    assert_eq!(metrics.dropped("connection_closed"), 0);
    world.assert_unaffected().await;
}

/// 4. An unusable resume position (foreign epoch, impossible revision, a 3-byte digest,
/// 500 made-up resource versions) is not trusted: the client gets a full snapshot whose
/// digest is the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resume_position_gets_a_snapshot() {
    let _metrics = Metrics::install();
    let world = World::start(ServerConfig::default()).await;
    let mut message = hello_message("bad-resume");
    message.protocol_version = 2;
    message.capabilities = vec![
        pb::Capability::SnapshotZstd as i32,
        pb::Capability::Resume as i32,
        pb::Capability::Digest as i32,
        pb::Capability::ResourceVersions as i32,
    ];
    message.resume = Some(pb::ResumePosition {
        epoch: "not-an-epoch\u{0}".to_string(),
        revision: u64::MAX,
        digest: vec![1, 2, 3],
        versions: (0..500)
            .map(|i| pb::ResourceVersion {
                resource: format!("made-up-{i}"),
                version: u64::MAX - i,
            })
            .collect(),
    });
    let (tx, stream) = raw_sync(world.channel(world.good_tls()).await).await;
    let mut stream = stream.unwrap();
    tx.send(encode(client_message::Msg::Hello(message)))
        .await
        .unwrap();
    let mut resumed = None;
    let in_sync = loop {
        match next_frame(&mut stream, "no answer to a bad resume").await {
            ServerFrame::Hello(h) => resumed = Some(h.resumed),
            ServerFrame::InSync(in_sync) => break in_sync,
            _ => {}
        }
    };
    assert_eq!(resumed, Some(false));
    let digest = world.harness.typha.hub.digest().to_bytes();
    assert_eq!(&in_sync.digest[..], &digest[..]);
    drop(tx);
    world.assert_unaffected().await;
}

/// A connection may carry `max_streams_per_connection` sessions; one more is refused
/// with RESOURCE_EXHAUSTED and counted, and the slot frees when a session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_per_connection_limit_are_refused_and_counted() {
    let mut metrics = Metrics::install();
    let mut world = World::start(ServerConfig {
        max_streams_per_connection: 2,
        ..Default::default()
    })
    .await;
    let channel = world.channel(world.good_tls()).await;
    let mut open = Vec::new();
    for node in ["multi-0", "multi-1"] {
        let (tx, stream) = raw_sync(channel.clone()).await;
        let mut stream = stream.unwrap();
        tx.send(hello(node)).await.unwrap();
        until_in_sync(&mut stream).await;
        open.push((tx, stream));
    }
    let (_tx, refused) = raw_sync(channel.clone()).await;
    let Err(status) = refused else {
        panic!("a third stream on one connection was accepted");
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let counts = world
        .wait_counts("too many streams", |c| c.refused(TOO_MANY_STREAMS) == 1)
        .await;
    assert_eq!(
        counts.open, 2,
        "one connection for the good client, one here"
    );
    assert_eq!(metrics.dropped(TOO_MANY_STREAMS), 1);

    assert_eq!(counts.streams, 3, "the good client's and two here");

    // One session leaves; once its stream is closed, a new one fits again.
    drop(open.remove(0));
    let ended = world.next_hostile_end().await;
    assert_eq!(ended.node, "multi-0");
    world.wait_counts("stream closed", |c| c.streams == 2).await;
    let (tx, stream) = raw_sync(channel.clone()).await;
    let mut stream = stream.unwrap();
    tx.send(hello("multi-2")).await.unwrap();
    until_in_sync(&mut stream).await;
    world.assert_unaffected().await;
}

/// 5. 2,000 connections opened and closed at once: each is counted, none stays open,
/// and the well-behaved client never notices. RSS before and after is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_quick_connections_is_counted_and_leaves_nothing_open() {
    const ATTEMPTS: u64 = 2_000;
    let mut metrics = Metrics::install();
    let world = World::start(ServerConfig::default()).await;
    let addr = world.harness.typha.grpc_addr;
    let rss_before = rss_kib();
    for _ in 0..ATTEMPTS / 50 {
        join_all((0..50).map(|_| async move {
            drop(TcpStream::connect(addr).await.unwrap());
        }))
        .await;
    }
    let counts = world
        .wait_counts("every attempt refused", |c| {
            c.refused.values().sum::<u64>() == ATTEMPTS && c.open == 1
        })
        .await;
    let rss_after = rss_kib();
    println!(
        "flood of {ATTEMPTS}: refused {:?}; RSS {rss_before} KiB -> {rss_after} KiB",
        counts.refused
    );
    let counted: u64 = counts
        .refused
        .keys()
        .map(|reason| metrics.dropped(reason))
        .sum();
    assert_eq!(counted, ATTEMPTS);
    assert_eq!(metrics.open(), 1);
    world.assert_unaffected().await;
}

/// 5. 100 idle TCP connections against a limit of 20: the limit holds (19 admitted
/// beside the well-behaved client, 81 closed at once and counted), the well-behaved
/// client keeps receiving, and the slots come back when the idle connections leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_limit_are_refused_and_the_limit_holds() {
    const LIMIT_CONNS: usize = 20;
    const IDLE: usize = 100;
    let mut metrics = Metrics::install();
    let world = World::start(ServerConfig {
        max_connections: LIMIT_CONNS,
        ..Default::default()
    })
    .await;
    let addr = world.harness.typha.grpc_addr;
    let rss_before = rss_kib();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let refused = (IDLE - (LIMIT_CONNS - 1)) as u64;
    let counts = world
        .wait_counts("limit reached", |c| {
            c.open == LIMIT_CONNS && c.refused(TOO_MANY_CONNECTIONS) == refused
        })
        .await;
    assert_eq!(counts.refused.values().sum::<u64>(), refused, "{counts:?}");
    assert_eq!(metrics.dropped(TOO_MANY_CONNECTIONS), refused);
    assert_eq!(metrics.open(), LIMIT_CONNS as u64);
    // The listener accepts in arrival order: the first 19 took the free slots, the rest
    // were closed by the server at once (their reads end).
    for stream in &mut idle[LIMIT_CONNS - 1..] {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("a refused connection is still open");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    world.deliver().await;
    let rss_full = rss_kib();

    drop(idle);
    world.wait_counts("slots freed", |c| c.open == 1).await;
    let late = ClientHandle::spawn(world.harness.sync_config("late-node").unwrap());
    tokio::time::timeout(LIMIT, late.wait_for(world.harness.typha.hub.revision()))
        .await
        .expect("a new client connects once the idle connections left");
    println!(
        "{IDLE} idle connections, limit {LIMIT_CONNS}: RSS {rss_before} KiB -> {rss_full} KiB \
         while held, {} KiB after",
        rss_kib()
    );
    late.stop().await.unwrap();
    world.assert_unaffected().await;
}
