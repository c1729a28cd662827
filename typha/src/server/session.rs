//! One client's `Sync` stream: handshake, snapshot or resume, then deltas until one side
//! leaves.
//!
//! The session task runs the handshake and the snapshot (or resume), then reads the
//! client (pings get pongs, a second hello or a bad message ends the stream), pings it,
//! says goodbye on shutdown, drain or rebalance, and decides every drop. It does not
//! carry the deltas: the stream's body ([`super::outbound`], polled by hyper's
//! per-stream task) follows the hub and writes each shared breadcrumb itself, so a new
//! revision does not wake this task at all. The session's own frames go through a small
//! queue the body drains first; the start of the deltas (the client's revision after
//! the snapshot) goes the same way, so nothing overtakes the snapshot.
//!
//! A slow client never delays the others: it gets one coalesced batch when more than
//! `max_uncoalesced` batches behind, a goodbye(RESYNC) when behind the history, and is
//! dropped (its connection killed) when output stays owed to it without the body being
//! polled (hyper polls only while the client's HTTP/2 window is open) for
//! `write_timeout`, or when the session's queue stays full that long. The stall is
//! checked every quarter of `write_timeout`, so a client is dropped between one and one
//! and a half write timeouts after it stopped reading.
//!
//! The session is generic over its inbound stream (tonic's `Streaming` in production, an
//! in-memory channel in tests) and its history, and reads only tokio's clock, so its
//! behaviour is tested without sockets under a paused clock (`session/tests.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;
use typha_proto::pb::{self, client_message, server_message};
use typha_proto::{MIN_PROTOCOL_VERSION, Revision, frame};

use super::history::History;
use super::outbound::{Out, Outlet};
use super::resume;
use super::{PeerInfo, ServerConfig, SessionEnded, SessionEnds};
use crate::hub::SessionStart;

#[cfg(test)]
mod tests;

/// Why a session ended; the `reason` label of `typha_connections_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// No ClientHello within the handshake timeout.
    HandshakeTimeout,
    /// The first message was not a valid ClientHello (or a second hello came).
    BadHello,
    /// A client message could not be decoded; the stream ended with `INVALID_ARGUMENT`.
    MalformedMessage,
    /// A client message was larger than `max_client_message_bytes`; the stream ended with
    /// `RESOURCE_EXHAUSTED`.
    OversizedMessage,
    /// The client closed its side or went away.
    ClientClosed,
    /// The server closed this stream's connection because another stream on it was
    /// dropped (write or ping timeout there); this stream did nothing wrong.
    ConnectionClosed,
    /// Output stayed owed to the client (or its queue full) for the write timeout: it
    /// stopped reading.
    WriteTimeout,
    /// Nothing heard from the client within the ping timeout.
    PingTimeout,
    /// The client fell behind the hub's history; told to resync.
    TooFarBehind,
    /// The server is shutting down.
    Shutdown,
    /// Told to move to another replica (load spreading).
    Rebalance,
    /// Building a snapshot failed.
    Internal,
}

impl DropReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::HandshakeTimeout => "handshake_timeout",
            DropReason::BadHello => "bad_hello",
            DropReason::MalformedMessage => "malformed_message",
            DropReason::OversizedMessage => "oversized_message",
            DropReason::ClientClosed => "client_closed",
            DropReason::ConnectionClosed => "connection_closed",
            DropReason::WriteTimeout => "write_timeout",
            DropReason::PingTimeout => "ping_timeout",
            DropReason::TooFarBehind => "too_far_behind",
            DropReason::Shutdown => "shutdown",
            DropReason::Rebalance => "rebalance",
            DropReason::Internal => "internal",
        }
    }

    /// Whether the connection must be torn down: the peer stopped reading (a graceful
    /// end of stream would never be delivered) or went silent. Every other reason ends
    /// only this stream, with a status when there is something to say, and leaves the
    /// connection's other streams alone.
    fn kills_connection(self) -> bool {
        matches!(self, DropReason::WriteTimeout | DropReason::PingTimeout)
    }
}

/// The stall check's memory: the body's poll count at the last tick, and since when
/// output has been owed without a poll.
#[derive(Default)]
struct Stall {
    polls: u64,
    since: Option<Instant>,
}

/// What happened on the inbound stream while streaming deltas.
enum Heard {
    /// A message to act on.
    Message(pb::ClientMessage),
    /// The stream failed (see [`Session::inbound_failed`]).
    Failed(Status),
    /// The client closed its side.
    Closed,
}

/// One `Sync` stream's session (see the module docs). `H` is the history (the hub), `In`
/// the client's messages (tonic's `Streaming` in production).
pub(super) struct Session<H, In> {
    pub hub: H,
    pub config: Arc<ServerConfig>,
    /// The way to the stream's body.
    pub outlet: Outlet,
    pub inbound: In,
    pub peer: PeerInfo,
    pub shutdown: CancellationToken,
    pub ends: SessionEnds,
    /// Becomes `Some(reason)` when the server asks this session to say goodbye and end.
    pub farewell: super::registry::Farewell,
    /// Set from the hello.
    pub node: String,
    /// A refusal status could not be queued (the client is not reading this stream):
    /// the connection is closed instead, as for a write timeout.
    pub refusal_unsent: bool,
}

impl<H, In> Session<H, In>
where
    H: History,
    In: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin + Send,
{
    pub async fn run(mut self) {
        let span = tracing::info_span!(
            "session",
            node = tracing::field::Empty,
            peer = ?self.peer.addr,
            identity = %self.peer.identity,
        );
        async move {
            let active = metrics::gauge!("typha_connections_active");
            active.increment(1.0);
            let reason = match self.serve().await {
                // Our connection was killed for a sibling stream's sake: say so.
                DropReason::ClientClosed if self.peer.kill.is_killed() => {
                    DropReason::ConnectionClosed
                }
                reason => reason,
            };
            active.decrement(1.0);
            metrics::counter!("typha_connections_dropped_total", "reason" => reason.as_str())
                .increment(1);
            tracing::info!(reason = reason.as_str(), "session ended");
            if reason.kills_connection() || self.refusal_unsent {
                self.peer.kill.kill();
            }
            self.ends.publish(SessionEnded {
                node: std::mem::take(&mut self.node),
                reason,
            });
        }
        .instrument(span)
        .await
    }

    /// The rare phases' futures (handshake, start, answering a message, a ping) are
    /// boxed while they run: a task is as large as its largest await point, and every
    /// idle client's task would otherwise carry their size for its whole life (about
    /// 0.7 KiB per client; `session::tests::the_session_task_stays_small`).
    async fn serve(&mut self) -> DropReason {
        let hello = match Box::pin(self.receive_hello()).await {
            Ok(hello) => hello,
            Err(reason) => return reason,
        };
        tracing::Span::current().record("node", hello.node_name.as_str());
        self.node = hello.node_name.clone();
        tokio::select! {
            _ = self.shutdown.cancelled() => return DropReason::Shutdown,
            _ = self.hub.wait_in_sync() => {}
        }
        let mut revisions = self.hub.subscribe();
        revisions.mark_unchanged();
        let cursor = match Box::pin(self.start(&hello)).await {
            Ok(cursor) => cursor,
            Err(reason) => return reason,
        };
        // The body follows the hub from here; this task keeps a receiver only to read
        // the published revision when checking for a stall.
        let deltas = Out::Deltas {
            cursor,
            revisions: revisions.clone(),
        };
        if let Err(reason) = self.push(deltas).await {
            return reason;
        }
        self.stream_deltas(&revisions).await
    }

    /// Negotiates, sends ServerHello, then the snapshot or the resume's first batch;
    /// returns the revision the client is at.
    async fn start(&mut self, hello: &pb::ClientHello) -> Result<Revision, DropReason> {
        let agreed = self.config.protocol.negotiate(hello);
        let start = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(DropReason::Shutdown),
            start = self.hub.start(hello, &agreed, self.config.resume_catch_up) => start,
        };
        let server_hello = server_message::Msg::Hello(pb::ServerHello {
            server_id: self.config.server_id.clone(),
            protocol_version: agreed.version,
            capabilities: agreed.wire_capabilities(),
            epoch: self.hub.epoch(),
            resumed: start.resumed(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        });
        self.send_msg(server_hello).await?;
        resume::count(&self.hub, &start);
        match start {
            resume::Start::SameReplica(revision) => {
                tracing::info!(%revision, "client resumed");
                Ok(revision)
            }
            resume::Start::CrossReplica(rebase) => {
                tracing::info!(revision = %rebase.revision, keys = rebase.keys, "client of another replica resumed");
                self.send(rebase.wire).await?;
                Ok(rebase.revision)
            }
            resume::Start::Snapshot => self.send_snapshot().await,
        }
    }

    async fn receive_hello(&mut self) -> Result<pb::ClientHello, DropReason> {
        let first = match timeout(self.config.handshake_timeout, self.inbound.next()).await {
            Err(_) => {
                self.refuse(Status::deadline_exceeded(
                    "no ClientHello within the handshake timeout",
                ))
                .await;
                return Err(DropReason::HandshakeTimeout);
            }
            Ok(Some(Err(status))) => return Err(self.inbound_failed(&status).await),
            Ok(None) => return Err(DropReason::ClientClosed),
            Ok(Some(Ok(message))) => message,
        };
        let Some(client_message::Msg::Hello(hello)) = first.msg else {
            self.refuse(Status::invalid_argument(
                "the first message must be a ClientHello",
            ))
            .await;
            return Err(DropReason::BadHello);
        };
        if let Err(problem) = validate_hello(&hello) {
            tracing::info!(problem, "refusing client hello");
            self.refuse(Status::invalid_argument(problem)).await;
            return Err(DropReason::BadHello);
        }
        Ok(hello)
    }

    async fn send_snapshot(&mut self) -> Result<Revision, DropReason> {
        let snapshot = match self.hub.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::error!(%error, "cannot build snapshot");
                self.refuse(Status::unavailable("snapshot unavailable, retry"))
                    .await;
                return Err(DropReason::Internal);
            }
        };
        // The memoized snapshot's gRPC messages, shared by every client it goes to.
        for chunk in &snapshot.chunk_messages {
            self.send(chunk.clone()).await?;
        }
        self.send(snapshot.in_sync_message.clone()).await?;
        metrics::counter!("typha_snapshots_sent_total").increment(1);
        self.hub.count_start(SessionStart::Snapshot);
        tracing::info!(revision = %snapshot.revision, keys = snapshot.key_count, "snapshot sent");
        Ok(snapshot.revision)
    }

    async fn stream_deltas(&mut self, revisions: &watch::Receiver<Revision>) -> DropReason {
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.config.ping_interval,
            self.config.ping_interval,
        );
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stall_period = (self.config.write_timeout / 4).max(Duration::from_millis(1));
        let mut stall_tick = tokio::time::interval_at(Instant::now() + stall_period, stall_period);
        stall_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stall = Stall::default();
        let mut last_heard = Instant::now();
        let mut nonce = 0u64;
        // Pinned once per session, not rebuilt per wake-up: each rebuild registered and
        // removed a waiter under the token's and the watch's locks.
        let shutdown = self.shutdown.clone().cancelled_owned();
        let mut farewell_rx = self.farewell.clone();
        let farewell = async move {
            farewell_rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|r| *r)
        };
        tokio::pin!(shutdown, farewell);
        loop {
            // The pinned futures and the body's end end the session when they complete,
            // so none is polled again after completing.
            let step = tokio::select! {
                _ = &mut shutdown => Err(self.farewell_said(None)),
                farewell = &mut farewell => {
                    // None: the registry entry is gone, which means the server is going away.
                    Err(self.farewell_said(Some(farewell.unwrap_or(pb::GoodbyeReason::Shutdown))))
                }
                // The body ended the stream (resync) or is gone with the stream.
                ended = &mut self.outlet.body_end => Err(ended.unwrap_or(DropReason::ClientClosed)),
                heard = hear(&mut self.inbound) => {
                    last_heard = Instant::now();
                    match heard {
                        Heard::Message(message) => Box::pin(self.answer(message)).await,
                        Heard::Failed(status) => Err(Box::pin(self.inbound_failed(&status)).await),
                        Heard::Closed => Err(DropReason::ClientClosed),
                    }
                }
                _ = ping.tick() => Box::pin(self.send_ping(last_heard, &mut nonce)).await,
                _ = stall_tick.tick() => self.check_stall(*revisions.borrow(), &mut stall),
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// A stall tick: output owed to the client (queued here, held by the body, or
    /// published after what it was sent) while the body was not polled since the last
    /// tick; owed and unpolled for `write_timeout` drops the client.
    fn check_stall(&self, published: Revision, stall: &mut Stall) -> Result<(), DropReason> {
        let polls = self.outlet.progress.polls();
        let queued = self.outlet.out.max_capacity() > self.outlet.out.capacity();
        let owed = queued || self.outlet.progress.owes(published);
        if !owed || polls != stall.polls {
            *stall = Stall { polls, since: None };
            return Ok(());
        }
        let since = *stall.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.config.write_timeout {
            return Err(DropReason::WriteTimeout);
        }
        Ok(())
    }

    /// A ping tick: a client silent for longer than `--ping-timeout` is dropped, any
    /// other is pinged with the next nonce.
    async fn send_ping(&mut self, last_heard: Instant, nonce: &mut u64) -> Result<(), DropReason> {
        if last_heard.elapsed() > self.config.ping_timeout {
            return Err(DropReason::PingTimeout);
        }
        *nonce += 1;
        let ping = pb::Ping {
            nonce: *nonce,
            sent_unix_nanos: unix_nanos(),
        };
        self.send_msg(server_message::Msg::Ping(ping)).await
    }

    /// Says goodbye for a farewell (`None`: the server is shutting down) and returns the
    /// drop reason.
    fn farewell_said(&self, farewell: Option<pb::GoodbyeReason>) -> DropReason {
        if farewell == Some(pb::GoodbyeReason::Rebalance) {
            self.goodbye(
                pb::GoodbyeReason::Rebalance,
                "moving to another replica to spread the load",
            );
            return DropReason::Rebalance;
        }
        self.goodbye(pb::GoodbyeReason::Shutdown, "typha is shutting down");
        DropReason::Shutdown
    }

    /// Answers a client message while streaming: pings get a pong, a second hello ends
    /// the session; pongs only prove liveness and unknown messages are ignored.
    async fn answer(&mut self, message: pb::ClientMessage) -> Result<(), DropReason> {
        match message.msg {
            Some(client_message::Msg::Ping(p)) => {
                let pong = pb::Pong {
                    nonce: p.nonce,
                    ping_sent_unix_nanos: p.sent_unix_nanos,
                };
                self.send_msg(server_message::Msg::Pong(pong)).await
            }
            Some(client_message::Msg::Hello(_)) => {
                self.refuse(Status::invalid_argument("duplicate ClientHello"))
                    .await;
                Err(DropReason::BadHello)
            }
            _ => Ok(()),
        }
    }

    /// Queues a gRPC message (prefix and frame, as the cache and [`frame::encode_grpc`]
    /// build them) for the body; a queue that stays full for the write timeout drops the
    /// client.
    async fn send(&self, message: Bytes) -> Result<(), DropReason> {
        self.push(Out::Message(message)).await
    }

    /// Encodes `msg` as a gRPC message and queues it (see [`Self::send`]).
    async fn send_msg(&self, msg: server_message::Msg) -> Result<(), DropReason> {
        self.send(frame::encode_grpc(msg).wire).await
    }

    /// Queues `item` for the body. The common case (room in the queue) takes no clock
    /// read and arms no timer.
    async fn push(&self, item: Out) -> Result<(), DropReason> {
        let out = &self.outlet.out;
        let item = match out.try_send(item) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(DropReason::ClientClosed),
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        match timeout(self.config.write_timeout, out.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(DropReason::ClientClosed),
            Err(_) => Err(DropReason::WriteTimeout),
        }
    }

    /// Best effort: a drain, rebalance or shutdown goodbye must not wait on a client
    /// that is not reading.
    fn goodbye(&self, reason: pb::GoodbyeReason, message: &str) {
        let _ = self
            .outlet
            .out
            .try_send(Out::Message(goodbye_message(reason, message)));
    }

    /// Ends the stream with an error status the client can log. A status the body does
    /// not take within a second (the client is not reading this stream) marks the
    /// session so that its connection is closed instead.
    async fn refuse(&mut self, status: Status) {
        let (taken, heard) = tokio::sync::oneshot::channel();
        let out = &self.outlet.out;
        let handed = timeout(Duration::from_secs(1), async move {
            // A closed queue or a dropped body means the client is gone already: nothing
            // to close.
            if out.send(Out::End(Box::new(status), taken)).await.is_ok() {
                let _ = heard.await;
            }
        })
        .await;
        self.refusal_unsent = handed.is_err();
    }

    /// Ends the session for an inbound stream error: a message the client sent that
    /// cannot be decoded or is too large ends this stream (and only it) with a status
    /// saying so; anything else is the client (or its connection) going away.
    async fn inbound_failed(&mut self, status: &Status) -> DropReason {
        let reason = inbound_error(status);
        let reply = match reason {
            DropReason::MalformedMessage => Status::invalid_argument(status.message()),
            DropReason::OversizedMessage => Status::resource_exhausted(status.message()),
            _ => return reason,
        };
        tracing::info!(reason = reason.as_str(), error = %status.message(), "bad client message");
        self.refuse(reply).await;
        reason
    }
}

/// A `Goodbye` as a gRPC message (the session's and the body's, see
/// [`super::outbound`]).
pub(super) fn goodbye_message(reason: pb::GoodbyeReason, message: &str) -> Bytes {
    let goodbye = pb::Goodbye {
        reason: reason as i32,
        message: message.to_string(),
    };
    frame::encode_grpc(server_message::Msg::Goodbye(goodbye)).wire
}

/// The next inbound message, or how the inbound stream ended.
async fn hear<In>(inbound: &mut In) -> Heard
where
    In: Stream<Item = Result<pb::ClientMessage, Status>> + Unpin,
{
    match inbound.next().await {
        Some(Ok(message)) => Heard::Message(message),
        Some(Err(status)) => Heard::Failed(status),
        None => Heard::Closed,
    }
}

/// Why an inbound stream error ends the session. tonic reports what the client sent as
/// a status on our side: our codec's decode error (`INVALID_ARGUMENT`), a message over
/// the size limit (`OUT_OF_RANGE`), a bad compression flag or a stream ending inside a
/// message (`INTERNAL`, with these messages). Every other error is the stream or the
/// connection failing under us (a reset, a closed socket).
fn inbound_error(status: &Status) -> DropReason {
    const FRAMING_ERRORS: [&str; 2] = [
        "protocol error: received message with",
        "Unexpected EOF decoding stream",
    ];
    match status.code() {
        tonic::Code::InvalidArgument => DropReason::MalformedMessage,
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => DropReason::OversizedMessage,
        tonic::Code::Internal
            if FRAMING_ERRORS
                .iter()
                .any(|p| status.message().starts_with(p)) =>
        {
            DropReason::MalformedMessage
        }
        _ => DropReason::ClientClosed,
    }
}

fn offers(hello: &pb::ClientHello, capability: pb::Capability) -> bool {
    hello.capabilities.contains(&(capability as i32))
}

/// Checks a ClientHello (node name, version, syncer type, zstd); `Err` says what is
/// wrong. Pure, so it can be fuzzed and tested without a stream.
pub fn validate_hello(hello: &pb::ClientHello) -> Result<(), &'static str> {
    let name = &hello.node_name;
    if name.is_empty() || name.len() > 253 {
        return Err("node_name must be 1 to 253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err("node_name has characters outside [A-Za-z0-9._-]");
    }
    if hello.protocol_version < MIN_PROTOCOL_VERSION {
        return Err("protocol_version must be at least 1");
    }
    if hello.syncer_type != pb::SyncerType::Felix as i32 {
        return Err("unsupported syncer_type");
    }
    if !offers(hello, pb::Capability::SnapshotZstd) {
        return Err("clients must accept zstd snapshots (protocol versions 1 and 2)");
    }
    Ok(())
}

fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
