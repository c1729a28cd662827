//! Shared pieces of the hostile-client tests (hostile_*.rs): typha with real mutual TLS
//! and one well-behaved felix-client connected throughout, the metrics of the test's
//! process (from `metrics_support`, which each hostile test declares, as `sync_support`),
//! raw TLS and raw-bytes gRPC attackers, and the process RSS.
//!
//! Every hostile test ends with [`World::assert_unaffected`]: the well-behaved client
//! receives a delta made after the attack, never reconnected, never saw a digest
//! mismatch, and its mirror's digest equals the server's.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use loadtest::harness::{ClientHandle, Harness, TyphaSpec};
use loadtest::model;
use netmodel::UpstreamEvent;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Codec;
use tonic::codegen::http::uri::PathAndQuery;
use typha::server::{ConnCounts, DropReason, ServerConfig, SessionEnded};
use typha_proto::codec::{FrameDecoder, FrameEncoder};
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, client_message};
use typha_proto::{Revision, Update};

pub use crate::metrics_support::Metrics;
use crate::sync_support::{hello_message, next_frame};

/// How long anything that should happen is awaited before the test fails.
pub const LIMIT: Duration = Duration::from_secs(60);

/// typha with mutual TLS, a small cluster loaded, and one well-behaved client in sync.
pub struct World {
    pub harness: Harness,
    pub good: ClientHandle,
    ends: tokio::sync::broadcast::Receiver<SessionEnded>,
}

impl World {
    /// Starts typha with `server` and connects the well-behaved client `good-node`.
    pub async fn start(server: ServerConfig) -> World {
        let harness = Harness::start(TyphaSpec {
            server,
            ..Default::default()
        })
        .await
        .unwrap();
        let ends = harness.typha.session_ends.subscribe();
        let revision = harness.load(model::cluster(3, 10, 2, 1)).await.unwrap();
        let good = ClientHandle::spawn(harness.sync_config("good-node").unwrap());
        tokio::time::timeout(LIMIT, good.wait_for(revision))
            .await
            .expect("the well-behaved client syncs");
        World {
            harness,
            good,
            ends,
        }
    }

    /// The accept path's counts now.
    pub fn counts(&self) -> ConnCounts {
        self.harness.typha.server.connections.counts()
    }

    /// Waits until the accept path's counts satisfy `done`; returns them.
    pub async fn wait_counts(&self, what: &str, done: impl Fn(&ConnCounts) -> bool) -> ConnCounts {
        let mut counts = self.harness.typha.server.connections.subscribe();
        let waited = tokio::time::timeout(LIMIT, counts.wait_for(|c| done(c))).await;
        match waited {
            Ok(Ok(c)) => c.clone(),
            _ => panic!("{what}: counts now {:?}", self.counts()),
        }
    }

    /// Waits for the next session to end; it must not be the well-behaved client's.
    pub async fn next_hostile_end(&mut self) -> SessionEnded {
        let ended = tokio::time::timeout(LIMIT, self.ends.recv())
            .await
            .expect("no session ended")
            .expect("session ends broadcast");
        assert_ne!(
            ended.node, "good-node",
            "the well-behaved client's session ended"
        );
        ended
    }

    /// A client TLS config with the legitimate client certificate.
    pub fn good_tls(&self) -> Arc<rustls::ClientConfig> {
        self.harness.client_tls().unwrap().unwrap()
    }

    /// A tonic channel over mutual TLS with `tls`.
    pub async fn channel(&self, tls: Arc<rustls::ClientConfig>) -> tonic::transport::Channel {
        felix_client::connect::connect(&self.harness.typha.grpc_addr.to_string(), Some(tls), LIMIT)
            .await
            .unwrap()
    }

    /// One new update reaches the well-behaved client; returns its revision.
    pub async fn deliver(&self) -> Revision {
        let before = self.harness.typha.hub.revision();
        let name = format!("probe-{}", before.0);
        let update: Update = model::endpoint("ns-0", &name, "node-0", 900_000, 1);
        self.harness
            .send(UpstreamEvent::Updates(vec![update]))
            .await
            .unwrap();
        let target = Revision(before.0 + 1);
        tokio::time::timeout(LIMIT, self.good.wait_for(target))
            .await
            .expect("the well-behaved client received a new delta");
        target
    }

    /// One update after the attack reaches the well-behaved client, which never
    /// reconnected nor saw a digest mismatch, and whose mirror equals the server's state.
    pub async fn assert_unaffected(self) {
        let target = self.deliver().await;
        let status = self.good.status.clone();
        assert_eq!(status.reconnects.load(Ordering::Relaxed), 0, "reconnected");
        assert_eq!(status.snapshots.load(Ordering::Relaxed), 1, "resynced");
        assert_eq!(status.digest_mismatches.load(Ordering::Relaxed), 0);
        let digest = self.harness.typha.hub.digest();
        let mirror = self.good.stop().await.unwrap();
        assert_eq!(mirror.revision(), target);
        assert_eq!(mirror.digest(), digest);
    }
}

/// A gRPC `Sync` call that sends raw message bytes (any length, any content) and reads
/// server frames.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ServerFrame;
    type Encoder = FrameEncoder;
    type Decoder = FrameDecoder;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> FrameDecoder {
        FrameDecoder
    }
}

/// A raw `Sync` stream: `tx` sends message bodies, the result is the server's answer.
pub async fn raw_sync(
    channel: tonic::transport::Channel,
) -> (
    mpsc::Sender<Bytes>,
    Result<tonic::Streaming<ServerFrame>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(4);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // typha answers with response headers before reading the first message.
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static("/typha.sync.v1.Typha/Sync"),
            RawCodec,
        )
        .await;
    (tx, response.map(tonic::Response::into_inner))
}

/// A valid hello from `node`, encoded.
pub fn hello(node: &str) -> Bytes {
    encode(client_message::Msg::Hello(hello_message(node)))
}

/// One ClientMessage, encoded.
pub fn encode(msg: client_message::Msg) -> Bytes {
    use prost::Message;
    Bytes::from(pb::ClientMessage { msg: Some(msg) }.encode_to_vec())
}

/// How a stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// An error status with this code (the connection was torn down, or a refusal).
    Status(tonic::Code),
    /// A clean end of stream.
    Closed,
}

/// Reads until the stream ends; how it ended and how many state frames (snapshot,
/// in-sync, deltas) came before.
pub async fn ending(stream: &mut tonic::Streaming<ServerFrame>) -> (Ending, usize) {
    let mut state = 0;
    loop {
        let message = tokio::time::timeout(LIMIT, stream.message())
            .await
            .expect("stream still open");
        match message {
            Ok(Some(
                ServerFrame::SnapshotChunk(_) | ServerFrame::InSync(_) | ServerFrame::Deltas(_),
            )) => state += 1,
            Ok(Some(_)) => {}
            Ok(None) => return (Ending::Closed, state),
            Err(status) => return (Ending::Status(status.code()), state),
        }
    }
}

/// Reads frames up to InSync (panics on anything else ending the stream).
pub async fn until_in_sync(stream: &mut tonic::Streaming<ServerFrame>) {
    until_frame(stream, "InSync", |f| matches!(f, ServerFrame::InSync(_))).await;
}

/// Reads frames until one satisfies `wanted` (panics, naming `what`, if the stream
/// stalls for [`crate::sync_support::FRAME_LIMIT`], fails or ends first).
pub async fn until_frame(
    stream: &mut tonic::Streaming<ServerFrame>,
    what: &str,
    wanted: impl Fn(&ServerFrame) -> bool,
) {
    let silent = format!("no {what}");
    while !wanted(&next_frame(stream, &silent).await) {}
}

/// The end of a raw TLS connection as its peer sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsEnd {
    /// The handshake failed on the client side.
    HandshakeFailed,
    /// The handshake completed, then the server closed the connection after sending
    /// these bytes (for a refused certificate: none).
    Closed(Vec<u8>),
}

/// Connects with `tls`, sends nothing, and reads until the server closes.
pub async fn tls_attempt(world: &World, tls: Arc<rustls::ClientConfig>) -> TlsEnd {
    use tokio::io::AsyncReadExt;
    let tcp = TcpStream::connect(world.harness.typha.grpc_addr)
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connected = tokio::time::timeout(
        LIMIT,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .expect("handshake neither completed nor failed");
    let Ok(mut stream) = connected else {
        return TlsEnd::HandshakeFailed;
    };
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("the server kept the connection open");
        match read {
            Ok(0) | Err(_) => return TlsEnd::Closed(received),
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether `bytes` are exactly one HTTP/2 SETTINGS frame (the server's preface).
pub fn is_http2_settings_frame(bytes: &[u8]) -> bool {
    const HEADER: usize = 9;
    const SETTINGS: u8 = 0x4;
    bytes.len() >= HEADER && bytes[3] == SETTINGS && {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        bytes.len() == HEADER + len
    }
}

/// Refused by the server's handshake: the client either failed its handshake or was
/// closed without a byte of data.
pub fn assert_no_data(end: &TlsEnd) {
    assert!(
        matches!(end, TlsEnd::HandshakeFailed) || *end == TlsEnd::Closed(Vec::new()),
        "{end:?}"
    );
}

/// The legitimate client TLS config with ALPN h2 but a different certificate.
pub fn tls_with(world: &World, leaf: &edge::certs::CertPair) -> Arc<rustls::ClientConfig> {
    let identity = edge::tls::PeerIdentity::with_cn(edge::certs::DEFAULT_SERVER_CN);
    edge::tls::client_config(&world.harness.pki.material(leaf), &identity).unwrap()
}

/// This process's resident set size in KiB (Linux), for reports; 0 if unknown.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether a session ended for `reason`.
pub fn ended_for(ended: &SessionEnded, reason: DropReason) -> bool {
    ended.reason == reason
}
