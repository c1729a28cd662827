//! The session's behaviour without sockets: a real `Hub` as the history, an mpsc channel
//! as the client's inbound stream, the stream's body polled directly as hyper would
//! (only while the test "reads"), and a paused tokio clock, so timeouts of a minute take
//! microseconds and nothing depends on timing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Body as _;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, GoodbyeReason, client_message};
use typha_proto::{Key, Kind, PROTOCOL_VERSION, Update, Value};

use super::super::outbound::{self, SyncBody};
use super::{DropReason, Session};
use crate::fixtures::node;
use crate::hub::{Hub, HubConfig};
use crate::server::{
    ConnStats, KillSwitch, OpenStreams, PeerInfo, ServerConfig, SessionEnded, SessionEnds,
};
use snapshot_cache::CacheConfig;
use typha_proto::frame::GRPC_PREFIX_LEN;

/// A hub in sync holding one node, keeping at most `history` batches.
fn hub(history: usize) -> Hub {
    let hub = Hub::new(HubConfig {
        cache: CacheConfig {
            max_log_batches: history,
            ..CacheConfig::default()
        },
        ..HubConfig::default()
    });
    hub.apply(vec![node("first")]).unwrap();
    hub.set_in_sync(true);
    hub
}

/// The node "moving" at address `address`: every call with a new address changes it.
fn moving(address: usize) -> Update {
    let key = Key::new(Kind::Node, "", "moving").unwrap();
    let value = Value::Node(pb::Node {
        name: "moving".to_string(),
        addresses: vec![format!("10.0.0.{address}")],
        ..Default::default()
    });
    Update::new(key, Some(value)).unwrap()
}

fn hello() -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(client_message::Msg::Hello(pb::ClientHello {
            node_name: "node-1".into(),
            syncer_type: pb::SyncerType::Felix as i32,
            protocol_version: PROTOCOL_VERSION,
            capabilities: vec![pb::Capability::SnapshotZstd as i32],
            ..Default::default()
        })),
    }
}

fn ping(nonce: u64) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(client_message::Msg::Ping(pb::Ping {
            nonce,
            sent_unix_nanos: 0,
        })),
    }
}

fn pong(nonce: u64) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(client_message::Msg::Pong(pb::Pong {
            nonce,
            ping_sent_unix_nanos: 0,
        })),
    }
}

/// Reads a stream's body the way hyper does, one frame per poll: each gRPC message's
/// frame (its prefix checked and cut off, the bytes still the shared ones), the final
/// status when it is not OK, then the end.
struct Reader {
    body: Option<SyncBody<Hub>>,
}

impl Reader {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match std::task::ready!(Pin::new(body).poll_frame(cx)) {
            None => {
                self.body = None;
                return Poll::Ready(None);
            }
            Some(frame) => frame.unwrap(),
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let len = u32::from_be_bytes(data[1..GRPC_PREFIX_LEN].try_into().unwrap());
                assert_eq!(data[0], 0, "not compressed");
                assert_eq!(len as usize, data.len() - GRPC_PREFIX_LEN);
                return Poll::Ready(Some(Ok(data.split_off(GRPC_PREFIX_LEN))));
            }
            Err(frame) => frame,
        };
        let trailers = frame.into_trailers().unwrap();
        self.body = None;
        let status = Status::from_header_map(&trailers).unwrap();
        if status.code() == tonic::Code::Ok {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Err(status)))
    }

    /// The next message or status; `None` at the end of the stream.
    async fn recv(&mut self) -> Option<Result<Bytes, Status>> {
        poll_fn(|cx| self.poll(cx)).await
    }

    /// The next message or status if there is one now.
    fn try_recv(&mut self) -> Result<Option<Result<Bytes, Status>>, ()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll(&mut cx) {
            Poll::Ready(next) => Ok(next),
            Poll::Pending => Err(()),
        }
    }
}

/// The client's side of one session.
struct Client {
    inbound: mpsc::Sender<Result<pb::ClientMessage, Status>>,
    out: Reader,
    ends: broadcast::Receiver<SessionEnded>,
    kill: KillSwitch,
    farewell: watch::Sender<Option<GoodbyeReason>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    /// The size of the session's future (what its task holds).
    future_bytes: usize,
}

impl Client {
    fn start(hub: &Hub, config: ServerConfig) -> Client {
        let (inbound, inbound_rx) = mpsc::channel(16);
        let (outlet, body) = outbound::pair(
            hub.clone(),
            config.out_buffer_frames,
            config.max_uncoalesced,
        );
        let out = Reader { body: Some(body) };
        let ends = SessionEnds::new(8);
        let kill = KillSwitch::default();
        let (farewell, farewell_rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let session = Session {
            hub: hub.clone(),
            config: Arc::new(config),
            outlet,
            inbound: ReceiverStream::new(inbound_rx),
            peer: PeerInfo {
                addr: None,
                identity: Arc::from("test"),
                kill: kill.clone(),
                streams: OpenStreams::new(ConnStats::new()),
            },
            shutdown: shutdown.clone(),
            ends: ends.clone(),
            farewell: farewell_rx,
            node: String::new(),
            refusal_unsent: false,
        };
        let ends = ends.subscribe();
        let run = session.run();
        let future_bytes = std::mem::size_of_val(&run);
        let task = tokio::spawn(run);
        Client {
            inbound,
            out,
            ends,
            kill,
            farewell,
            shutdown,
            task,
            future_bytes,
        }
    }

    async fn send(&self, message: pb::ClientMessage) {
        self.inbound.send(Ok(message)).await.unwrap();
    }

    /// The next frame; panics on a status or the end of the stream.
    async fn frame(&mut self) -> ServerFrame {
        let bytes = self.out.recv().await.expect("stream ended").unwrap();
        ServerFrame::decode(bytes).unwrap()
    }

    /// Says hello and reads through the snapshot; returns the in-sync revision.
    async fn sync(&mut self) -> u64 {
        self.send(hello()).await;
        assert!(matches!(self.frame().await, ServerFrame::Hello(_)));
        loop {
            match self.frame().await {
                ServerFrame::SnapshotChunk(_) => {}
                ServerFrame::InSync(in_sync) => return in_sync.revision,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The goodbye the session sent, then the end of the stream.
    async fn goodbye(&mut self) -> GoodbyeReason {
        let ServerFrame::Goodbye(goodbye) = self.frame().await else {
            panic!("expected a goodbye");
        };
        assert!(
            self.out.recv().await.is_none(),
            "the stream ends after a goodbye"
        );
        goodbye.reason()
    }

    /// The status the session ended the stream with, then the end of the stream.
    async fn refused(&mut self) -> Status {
        let status = self
            .out
            .recv()
            .await
            .expect("stream ended")
            .expect_err("expected a status");
        assert!(
            self.out.recv().await.is_none(),
            "the stream ends after a status"
        );
        status
    }

    /// Why the session ended (after its task finished).
    async fn ended(mut self) -> (DropReason, KillSwitch) {
        let ended = self.ends.recv().await.unwrap();
        self.task.await.unwrap();
        (ended.reason, self.kill)
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_close_behind_gets_the_shared_frames_in_order() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let hub = hub(1024);
    let mut client = Client::start(&hub, ServerConfig::default());
    let synced = client.sync().await;
    let crumbs: Vec<_> = (0..3)
        .map(|i| hub.apply(vec![node(&format!("n{i}"))]).unwrap())
        .collect();
    for (i, crumb) in crumbs.iter().enumerate() {
        // All three leave in the body's first wake-up: the later ones are there without
        // waiting (one flush for several pending revisions).
        let bytes = match i {
            0 => client.out.recv().await,
            _ => client.out.try_recv().expect("ready in the same wake-up"),
        };
        let bytes = bytes.unwrap().unwrap();
        // The very frame the hub encoded once for everybody, behind its gRPC prefix in
        // the same buffer: nothing re-encoded, nothing copied.
        assert_eq!(bytes.as_ptr(), crumb.frame.as_ptr());
        assert_eq!(crumb.wire[GRPC_PREFIX_LEN..].as_ptr(), crumb.frame.as_ptr());
    }
    assert_eq!(crumbs[0].from.0, synced);
    assert_eq!(
        fanout_samples(&snap),
        3,
        "one fan-out sample per shared frame"
    );
    // The client closes its side.
    drop(std::mem::replace(&mut client.inbound, mpsc::channel(1).0));
    let (reason, kill) = client.ended().await;
    assert_eq!(reason, DropReason::ClientClosed);
    assert!(
        !kill.is_killed(),
        "a client that left cleanly keeps its connection"
    );
}

/// A client resuming behind the hub gets what was published before its session started
/// at once, without waiting for another revision.
#[tokio::test(start_paused = true)]
async fn a_resuming_client_gets_what_was_published_before_it_came() {
    let hub = hub(1024);
    let position = pb::ResumePosition {
        epoch: hub.epoch().to_string(),
        revision: hub.revision().0,
        digest: hub.digest().to_bytes().to_vec(),
        ..Default::default()
    };
    let missed = hub.apply(vec![node("while-away")]).unwrap();
    let mut client = Client::start(&hub, ServerConfig::default());
    let mut resume = hello();
    if let Some(client_message::Msg::Hello(h)) = resume.msg.as_mut() {
        h.capabilities.push(pb::Capability::Resume as i32);
        h.resume = Some(position);
    }
    client.send(resume).await;
    let ServerFrame::Hello(server_hello) = client.frame().await else {
        panic!("expected a hello");
    };
    assert!(server_hello.resumed);
    let bytes = client.out.recv().await.unwrap().unwrap();
    assert_eq!(bytes.as_ptr(), missed.frame.as_ptr());
}

/// Every idle client holds one session task for its whole life, as large as the largest
/// await point of `Session::run`: the rare phases are boxed so that this stays small
/// (2,368 bytes before they were, 1,664 after, with this test's inbound stream).
#[tokio::test]
async fn the_session_task_stays_small() {
    let hub = hub(4);
    let client = Client::start(&hub, ServerConfig::default());
    assert!(
        client.future_bytes <= 2048,
        "the session future is {} bytes",
        client.future_bytes
    );
}

/// Samples of `typha_fanout_latency_seconds` recorded so far.
fn fanout_samples(snap: &Snapshotter) -> usize {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "typha_fanout_latency_seconds")
        .map(|(.., value)| match value {
            DebugValue::Histogram(samples) => samples.len(),
            _ => 0,
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn a_slow_client_gets_one_coalesced_batch() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let hub = hub(1024);
    let config = ServerConfig::default();
    let many = config.max_uncoalesced + 5;
    let mut client = Client::start(&hub, config);
    let synced = client.sync().await;
    // All published before the session runs again: it is `many` batches behind.
    for i in 0..many {
        hub.apply(vec![node(&format!("n{i}")), moving(i)]).unwrap();
    }
    let ServerFrame::Deltas(batch) = client.frame().await else {
        panic!("expected deltas");
    };
    assert_eq!(batch.from_revision, synced);
    assert_eq!(batch.revision, hub.revision().0);
    // Latest value per key: the key touched by every batch appears once.
    assert_eq!(batch.updates.len(), many + 1);
    assert!(client.out.try_recv().is_err(), "one batch, not {many}");
    assert_eq!(
        fanout_samples(&snap),
        0,
        "a coalesced batch is not a shared frame"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_behind_the_history_is_told_to_resync() {
    let hub = hub(4);
    let mut client = Client::start(&hub, ServerConfig::default());
    client.sync().await;
    for i in 0..10 {
        hub.apply(vec![node(&format!("n{i}"))]).unwrap();
    }
    assert_eq!(client.goodbye().await, GoodbyeReason::Resync);
    let (reason, kill) = client.ended().await;
    assert_eq!(reason, DropReason::TooFarBehind);
    assert!(!kill.is_killed());
}

/// The body falls behind while holding frames the client has not read; the client then
/// reads again, gets what the body held and then hears why its stream ends, instead of
/// a stream ending without a reason.
#[tokio::test(start_paused = true)]
async fn a_client_behind_the_history_with_frames_held_still_hears_resync() {
    let hub = hub(4);
    let config = ServerConfig {
        max_uncoalesced: 100,
        ..ServerConfig::default()
    };
    let mut client = Client::start(&hub, config);
    client.sync().await;
    for i in 0..4 {
        hub.apply(vec![node(&format!("held-{i}"))]).unwrap();
    }
    // One frame read: the body took all four and holds three.
    assert!(matches!(client.frame().await, ServerFrame::Deltas(_)));
    for i in 0..10 {
        hub.apply(vec![node(&format!("n{i}"))]).unwrap();
    }
    let mut deltas = 1;
    let reason = loop {
        match client.frame().await {
            ServerFrame::Deltas(_) => deltas += 1,
            ServerFrame::Goodbye(goodbye) => break goodbye.reason(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(reason, GoodbyeReason::Resync);
    assert_eq!(deltas, 4, "what the body held, then the goodbye");
    assert!(client.out.recv().await.is_none(), "the stream ends");
    let (reason, _) = client.ended().await;
    assert_eq!(reason, DropReason::TooFarBehind);
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_then_dropped_and_its_connection_killed() {
    let hub = hub(1024);
    let config = ServerConfig::default();
    let expected_pings = config.ping_timeout.as_secs() / config.ping_interval.as_secs();
    let mut client = Client::start(&hub, config);
    client.sync().await;
    let mut pings = 0;
    while let Some(frame) = client.out.recv().await {
        match ServerFrame::decode(frame.unwrap()).unwrap() {
            ServerFrame::Ping(ping) => {
                pings += 1;
                assert_eq!(ping.nonce, pings);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pings, expected_pings);
    let (reason, kill) = client.ended().await;
    assert_eq!(reason, DropReason::PingTimeout);
    assert!(
        kill.is_killed(),
        "a client that went silent may not be reading"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_stays_and_gets_pongs() {
    let hub = hub(1024);
    let config = ServerConfig::default();
    let rounds = 3 * config.ping_timeout.as_secs() / config.ping_interval.as_secs();
    let mut client = Client::start(&hub, config);
    client.sync().await;
    for _ in 0..rounds {
        let ServerFrame::Ping(ping) = client.frame().await else {
            panic!("expected a ping");
        };
        client.send(pong(ping.nonce)).await;
    }
    client.send(ping(77)).await;
    let ServerFrame::Pong(answer) = client.frame().await else {
        panic!("expected a pong");
    };
    assert_eq!(answer.nonce, 77);
    assert!(
        client.ends.try_recv().is_err(),
        "the session is still running"
    );
}

/// A message tonic could not decode (our codec's error) or that was over the size limit
/// (tonic's `OUT_OF_RANGE`), or a bad compression flag: each ends this stream with a
/// status saying so, under its own reason, and leaves the connection (and its other
/// streams) alone.
#[tokio::test(start_paused = true)]
async fn a_malformed_or_oversized_message_ends_only_its_stream_with_a_status() {
    let cases = [
        (
            Status::invalid_argument("malformed ClientMessage: buffer underflow"),
            DropReason::MalformedMessage,
            tonic::Code::InvalidArgument,
        ),
        (
            Status::out_of_range("Error, decoded message length too large"),
            DropReason::OversizedMessage,
            tonic::Code::ResourceExhausted,
        ),
        (
            Status::internal("protocol error: received message with invalid compression flag"),
            DropReason::MalformedMessage,
            tonic::Code::InvalidArgument,
        ),
    ];
    let hub = hub(1024);
    for (inbound, reason, code) in cases {
        let mut client = Client::start(&hub, ServerConfig::default());
        client.sync().await;
        client.inbound.send(Err(inbound)).await.unwrap();
        assert_eq!(client.refused().await.code(), code, "{reason:?}");
        let (ended, kill) = client.ended().await;
        assert_eq!(ended, reason);
        assert!(
            !kill.is_killed(),
            "{reason:?} must not close the connection"
        );
    }
}

/// A malformed message from a client that does not read this stream: the status is not
/// taken by the stream's body (hyper does not poll it), so the connection is closed
/// instead (as for a write timeout).
#[tokio::test(start_paused = true)]
async fn a_malformed_message_from_a_client_not_reading_closes_the_connection() {
    let hub = hub(1024);
    let config = ServerConfig {
        out_buffer_frames: 1,
        ..ServerConfig::default()
    };
    let mut client = Client::start(&hub, config);
    client.sync().await;
    // A batch is owed, and nobody reads the stream from now on.
    hub.apply(vec![node("unread")]).unwrap();
    client
        .inbound
        .send(Err(Status::invalid_argument("failed to decode")))
        .await
        .unwrap();
    let (ended, kill) = client.ended().await;
    assert_eq!(ended, DropReason::MalformedMessage);
    assert!(kill.is_killed());
}

/// A stream whose connection another stream's session killed (say, a write timeout
/// there) ends as `connection_closed`, not as if its client had left.
#[tokio::test(start_paused = true)]
async fn a_stream_ended_by_a_sibling_killing_the_connection_is_counted_as_such() {
    let hub = hub(1024);
    let mut client = Client::start(&hub, ServerConfig::default());
    client.sync().await;
    client.kill.kill();
    // What the connection's teardown does to this stream: its inbound side fails.
    client
        .inbound
        .send(Err(Status::unknown("connection aborted")))
        .await
        .unwrap();
    let (ended, _) = client.ended().await;
    assert_eq!(ended, DropReason::ConnectionClosed);
}

#[tokio::test(start_paused = true)]
async fn the_first_message_must_be_a_valid_hello() {
    let hub = hub(1024);
    let mut client = Client::start(&hub, ServerConfig::default());
    client.send(ping(1)).await;
    assert_eq!(client.refused().await.code(), tonic::Code::InvalidArgument);
    assert_eq!(client.ended().await.0, DropReason::BadHello);

    let mut client = Client::start(&hub, ServerConfig::default());
    let mut bad = hello();
    if let Some(client_message::Msg::Hello(h)) = bad.msg.as_mut() {
        h.node_name = "no spaces allowed".into();
    }
    client.send(bad).await;
    let status = client.refused().await;
    assert!(status.message().contains("node_name"), "{status}");
    assert_eq!(client.ended().await.0, DropReason::BadHello);
}

#[tokio::test(start_paused = true)]
async fn a_second_hello_ends_the_session() {
    let hub = hub(1024);
    let mut client = Client::start(&hub, ServerConfig::default());
    client.sync().await;
    client.send(hello()).await;
    assert_eq!(client.refused().await.code(), tonic::Code::InvalidArgument);
    assert_eq!(client.ended().await.0, DropReason::BadHello);
}

/// The stream ends with `DEADLINE_EXCEEDED`; the connection stays (its idle watchdog
/// closes it if no other stream is open, see `server::refusal`).
#[tokio::test(start_paused = true)]
async fn no_hello_within_the_handshake_timeout_ends_the_stream() {
    let hub = hub(1024);
    let mut client = Client::start(&hub, ServerConfig::default());
    assert_eq!(client.refused().await.code(), tonic::Code::DeadlineExceeded);
    let (reason, kill) = client.ended().await;
    assert_eq!(reason, DropReason::HandshakeTimeout);
    assert!(!kill.is_killed());
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let hub = hub(1024);
    let config = ServerConfig {
        out_buffer_frames: 1,
        ..ServerConfig::default()
    };
    let client = Client::start(&hub, config);
    // Hello, then never read: the queue of one frame fills with the ServerHello.
    client.send(hello()).await;
    let (reason, kill) = client.ended().await;
    assert_eq!(reason, DropReason::WriteTimeout);
    assert!(kill.is_killed());
}

/// A client in sync that stops reading while deltas are published: its body is not
/// polled (as when its HTTP/2 window is full), and the session drops it after the write
/// timeout although its own queue is empty.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_deltas_is_dropped_after_the_write_timeout() {
    let hub = hub(1024);
    // A client that goes silent is dropped for that after the ping timeout: not here.
    let config = ServerConfig {
        ping_timeout: Duration::from_secs(3600),
        ..ServerConfig::default()
    };
    let write_timeout = config.write_timeout;
    let mut client = Client::start(&hub, config);
    client.sync().await;
    let crumb = hub.apply(vec![node("read")]).unwrap();
    let bytes = client.out.recv().await.unwrap().unwrap();
    assert_eq!(bytes.as_ptr(), crumb.frame.as_ptr());
    let stopped = tokio::time::Instant::now();
    hub.apply(vec![node("unread")]).unwrap();
    let (reason, kill) = client.ended().await;
    assert_eq!(reason, DropReason::WriteTimeout);
    assert!(kill.is_killed());
    assert!(
        stopped.elapsed() >= write_timeout,
        "not before the write timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rebalance_farewell_says_goodbye_rebalance() {
    let hub = hub(1024);
    let mut client = Client::start(&hub, ServerConfig::default());
    client.sync().await;
    client.farewell.send_replace(Some(GoodbyeReason::Rebalance));
    assert_eq!(client.goodbye().await, GoodbyeReason::Rebalance);
    let (reason, kill) = client.ended().await;
    assert_eq!(reason, DropReason::Rebalance);
    assert!(!kill.is_killed());
}

#[tokio::test(start_paused = true)]
async fn drain_and_shutdown_say_goodbye_shutdown() {
    let hub = hub(1024);
    // Drain tells sessions through the registry.
    let mut client = Client::start(&hub, ServerConfig::default());
    client.sync().await;
    client.farewell.send_replace(Some(GoodbyeReason::Shutdown));
    assert_eq!(client.goodbye().await, GoodbyeReason::Shutdown);
    assert_eq!(client.ended().await.0, DropReason::Shutdown);
    // A registry that went away means the server is going away.
    let mut client = Client::start(&hub, ServerConfig::default());
    client.sync().await;
    let farewell = std::mem::replace(&mut client.farewell, watch::channel(None).0);
    drop(farewell);
    assert_eq!(client.goodbye().await, GoodbyeReason::Shutdown);
    assert_eq!(client.ended().await.0, DropReason::Shutdown);
    // The server's shutdown.
    let mut client = Client::start(&hub, ServerConfig::default());
    client.sync().await;
    client.shutdown.cancel();
    assert_eq!(client.goodbye().await, GoodbyeReason::Shutdown);
    assert_eq!(client.ended().await.0, DropReason::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn a_session_waits_for_the_upstream_before_the_snapshot() {
    let hub = Hub::new(HubConfig::default());
    let mut client = Client::start(&hub, ServerConfig::default());
    client.send(hello()).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        client.out.try_recv().is_err(),
        "nothing before the upstream is in sync"
    );
    hub.apply(vec![node("a")]).unwrap();
    hub.set_in_sync(true);
    assert!(matches!(client.frame().await, ServerFrame::Hello(_)));
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_bad_first_message_is_refused_before_any_state() {
    let hub = hub(1024);
    let bad_hello = |edit: fn(&mut pb::ClientHello)| {
        let mut message = hello();
        if let Some(client_message::Msg::Hello(h)) = message.msg.as_mut() {
            edit(h);
        }
        message
    };
    let cases = [
        ("a ping first", ping(1)),
        ("no oneof member", pb::ClientMessage { msg: None }),
        ("a pong first", pong(1)),
        (
            "path-like node name",
            bad_hello(|h| h.node_name = "../../etc/passwd".into()),
        ),
        (
            "300-byte node name",
            bad_hello(|h| h.node_name = "n".repeat(300)),
        ),
        ("empty node name", bad_hello(|h| h.node_name.clear())),
        ("unknown syncer type", bad_hello(|h| h.syncer_type = 99)),
        ("protocol version 0", bad_hello(|h| h.protocol_version = 0)),
        ("no zstd", bad_hello(|h| h.capabilities.clear())),
    ];
    for (name, first) in cases {
        let mut client = Client::start(&hub, ServerConfig::default());
        client.send(first).await;
        let status = client.refused().await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
        let (reason, kill) = client.ended().await;
        assert_eq!(reason, DropReason::BadHello, "{name}");
        assert!(
            !kill.is_killed(),
            "{name}: a refused stream keeps its connection"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn pongs_and_unknown_messages_mid_stream_are_ignored() {
    let hub = hub(1024);
    let mut client = Client::start(&hub, ServerConfig::default());
    client.sync().await;
    client.send(pb::ClientMessage { msg: None }).await;
    client.send(pong(5)).await;
    let crumb = hub.apply(vec![node("after")]).unwrap();
    let bytes = client.out.recv().await.unwrap().unwrap();
    assert_eq!(bytes, crumb.frame, "the stream goes on");
    assert!(client.ends.try_recv().is_err());
}
