//! A typha sync session by hand (the typed gRPC client, no felix-client `SyncClient`):
//! a valid hello, a `Sync` stream opened with it, frames read under a deadline and
//! applied to a mirror as felix-client's sync does. For tests that need to say exactly
//! what a client sends (`fanout.rs`, `resume_*.rs`, the hostile-client tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::time::Duration;

use felix_client::Mirror;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use typha_proto::client::typha_client::TyphaClient;
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, client_message};

/// How long a frame is awaited before the test fails (only turns a hang into a failure).
pub const FRAME_LIMIT: Duration = Duration::from_secs(120);

/// A valid hello from `node`.
pub fn hello_message(node: &str) -> pb::ClientHello {
    pb::ClientHello {
        node_name: node.to_string(),
        syncer_type: pb::SyncerType::Felix as i32,
        protocol_version: 1,
        capabilities: vec![pb::Capability::SnapshotZstd as i32],
        ..Default::default()
    }
}

/// Opens a `Sync` stream on `channel` whose first message is `hello` (queued before the
/// call, as typha answers with response headers before reading it). Returns the sender
/// for further messages (the stream's send side ends when it is dropped) and the
/// server's answer.
pub async fn open_sync(
    channel: tonic::transport::Channel,
    hello: pb::ClientHello,
) -> (
    mpsc::Sender<pb::ClientMessage>,
    Result<tonic::Streaming<ServerFrame>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ClientMessage {
        msg: Some(client_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let response = TyphaClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .sync(ReceiverStream::new(rx))
        .await;
    (tx, response.map(tonic::Response::into_inner))
}

/// The next frame; panics, naming `silent` (what the missing frame means), if none
/// comes within [`FRAME_LIMIT`] or the stream fails or ends first.
pub async fn next_frame(stream: &mut tonic::Streaming<ServerFrame>, silent: &str) -> ServerFrame {
    tokio::time::timeout(FRAME_LIMIT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("{silent}: the stream stalled"))
        .unwrap_or_else(|e| panic!("{silent}: the stream failed: {e}"))
        .unwrap_or_else(|| panic!("{silent}: the stream ended"))
}

/// Applies `frame` to `mirror` as felix-client's sync does (frames that carry no state
/// are ignored).
pub fn apply_frame(mirror: &mut Mirror, frame: ServerFrame) {
    match frame {
        ServerFrame::Hello(hello) => mirror.accept_hello(&hello),
        ServerFrame::SnapshotChunk(chunk) => mirror.apply_chunk(chunk).unwrap(),
        ServerFrame::InSync(in_sync) => {
            mirror.finish_snapshot(&in_sync).unwrap();
        }
        ServerFrame::Deltas(batch) => {
            mirror.apply_deltas(batch).unwrap();
        }
        _ => {}
    }
}
