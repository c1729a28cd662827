//! One sync session with one typha: connect, ClientHello (with the mirror's resume
//! position), then each server frame applied to the mirror and passed on as
//! [`SyncEvent`]s until the stream ends, the server says goodbye, or shutdown.
//!
//! Invariant: a session never returns an error for what the server did; every ending is
//! a [`SessionEnd`] (only connecting can fail with a [`ConnectError`]), so the reconnect
//! policy sees all of them.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use typha_proto::PROTOCOL_VERSION;
use typha_proto::client::typha_client::TyphaClient;
use typha_proto::frame::RawDeltaBatch;
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, client_message};

use super::{SyncClient, SyncEvent};
use crate::connect::{ConnectError, connect};
use crate::mirror::MirrorError;

/// How a session ended.
#[derive(Debug)]
pub(super) enum SessionEnd {
    /// Shutdown requested.
    Shutdown,
    /// The server said goodbye: reconnect at once (to another replica for rebalance).
    Goodbye(pb::GoodbyeReason, String),
    /// Failure: back off, then reconnect.
    Failed(String),
}

impl SyncClient {
    /// One session with `addr`, until it ends.
    pub(super) async fn session(
        &mut self,
        addr: &str,
        events: &mpsc::Sender<SyncEvent>,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, ConnectError> {
        self.current = addr.to_string();
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            channel = connect(addr, self.config.tls.clone(), self.config.connect_timeout) => channel?,
        };
        let (up, up_rx) = mpsc::channel(4);
        let _ = up
            .send(pb::ClientMessage {
                msg: Some(client_message::Msg::Hello(self.hello())),
            })
            .await;
        let mut client = TyphaClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        let call = timeout(
            self.config.connect_timeout,
            client.sync(ReceiverStream::new(up_rx)),
        );
        let mut frames = match call.await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Ok(SessionEnd::Failed(format!("sync refused: {status}"))),
            Err(_) => {
                return Ok(SessionEnd::Failed(
                    "timed out waiting for the server".into(),
                ));
            }
        };
        loop {
            let frame = match self.next_frame(&mut frames, shutdown).await {
                Ok(frame) => frame,
                Err(end) => return Ok(end),
            };
            match self.handle(frame, &up, events).await {
                Ok(None) => {}
                Ok(Some(end)) => return Ok(end),
                Err(error) => {
                    if self.status.refused(&error) {
                        self.mirror.forget_position();
                    }
                    return Ok(SessionEnd::Failed(error.to_string()));
                }
            }
        }
    }

    /// This client's ClientHello.
    fn hello(&self) -> pb::ClientHello {
        pb::ClientHello {
            node_name: self.config.node_name.clone(),
            syncer_type: pb::SyncerType::Felix as i32,
            protocol_version: PROTOCOL_VERSION,
            capabilities: [
                pb::Capability::SnapshotZstd,
                pb::Capability::Resume,
                pb::Capability::Digest,
                pb::Capability::ResourceVersions,
            ]
            .iter()
            .map(|c| *c as i32)
            .collect(),
            resume: self.mirror.resume_position(),
            client_version: concat!("felix-client/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    /// The next frame, or how the session ends without one (shutdown, silence past the
    /// read timeout, a stream error, the stream's end).
    async fn next_frame(
        &self,
        frames: &mut tonic::Streaming<ServerFrame>,
        shutdown: &CancellationToken,
    ) -> Result<ServerFrame, SessionEnd> {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
            frame = timeout(self.config.read_timeout, frames.message()) => frame,
        };
        match frame {
            Err(_) => Err(SessionEnd::Failed(
                "server silent past the read timeout".into(),
            )),
            Ok(Err(status)) => Err(SessionEnd::Failed(format!("stream error: {status}"))),
            Ok(Ok(None)) => Err(SessionEnd::Failed("server closed the stream".into())),
            Ok(Ok(Some(frame))) => Ok(frame),
        }
    }

    /// Applies one frame; `Some` when it ends the session.
    async fn handle(
        &mut self,
        frame: ServerFrame,
        up: &mpsc::Sender<pb::ClientMessage>,
        events: &mpsc::Sender<SyncEvent>,
    ) -> Result<Option<SessionEnd>, MirrorError> {
        match frame {
            ServerFrame::Hello(hello) => self.on_hello(&hello, events).await,
            ServerFrame::SnapshotChunk(chunk) => self.mirror.apply_chunk(chunk)?,
            ServerFrame::InSync(in_sync) => self.on_in_sync(&in_sync, events).await?,
            ServerFrame::Deltas(batch) => self.on_deltas(batch, events).await?,
            ServerFrame::Ping(ping) => {
                let pong = pb::Pong {
                    nonce: ping.nonce,
                    ping_sent_unix_nanos: ping.sent_unix_nanos,
                };
                let _ = up.try_send(pb::ClientMessage {
                    msg: Some(client_message::Msg::Pong(pong)),
                });
            }
            ServerFrame::Goodbye(goodbye) => {
                let reason = pb::GoodbyeReason::try_from(goodbye.reason).unwrap_or_default();
                return Ok(Some(SessionEnd::Goodbye(reason, goodbye.message)));
            }
            // Pongs need no answer; unknown frames come from newer servers.
            ServerFrame::Pong(_) | ServerFrame::Unknown(_) => {}
        }
        Ok(None)
    }

    async fn on_hello(&mut self, hello: &pb::ServerHello, events: &mpsc::Sender<SyncEvent>) {
        self.mirror.accept_hello(hello);
        self.status
            .endpoint
            .send_replace(Some(self.current.clone()));
        tracing::info!(
            server = hello.server_id,
            resumed = hello.resumed,
            "connected to typha"
        );
        if hello.resumed {
            self.status.resumes.fetch_add(1, Ordering::Relaxed);
            // Resumed by another replica: in sync once its rebase batch applied.
            if !self.mirror.is_rebasing() {
                self.in_sync(events).await;
            }
        }
    }

    async fn on_in_sync(
        &mut self,
        in_sync: &pb::InSync,
        events: &mpsc::Sender<SyncEvent>,
    ) -> Result<(), MirrorError> {
        let changes = self.mirror.finish_snapshot(in_sync)?;
        self.status.snapshots.fetch_add(1, Ordering::Relaxed);
        // One event per staged chunk: a snapshot's values are never all decoded at once.
        let revision = self.mirror.revision();
        for updates in changes.filter(|batch| !batch.is_empty()) {
            let _ = events.send(SyncEvent::Changes { revision, updates }).await;
        }
        self.in_sync(events).await;
        Ok(())
    }

    async fn on_deltas(
        &mut self,
        batch: RawDeltaBatch,
        events: &mpsc::Sender<SyncEvent>,
    ) -> Result<(), MirrorError> {
        let rebased = self.mirror.is_rebasing();
        let changes = self.mirror.apply_deltas(batch)?;
        self.status.batch_applied(&self.mirror);
        // Sent even when empty, so that consumers can follow the revision.
        let revision = self.mirror.revision();
        let _ = events
            .send(SyncEvent::Changes {
                revision,
                updates: changes,
            })
            .await;
        if rebased {
            self.in_sync(events).await;
        }
        Ok(())
    }

    async fn in_sync(&self, events: &mpsc::Sender<SyncEvent>) {
        let _ = events.send(self.status.in_sync(&self.mirror)).await;
    }
}
