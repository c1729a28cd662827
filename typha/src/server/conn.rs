//! An accepted connection as tonic sees it: the (TLS) stream, who the peer is, a kill
//! switch, and the count of `Sync` streams open on it.
//!
//! Invariants: a connection holds one [`ConnGuard`] slot from accept until it is dropped
//! (`typha_connections_open` is the number of slots taken, whatever phase they are in:
//! TLS handshake, waiting for a stream, or streaming); [`OpenStreams`] counts the
//! sessions running on it and never exceeds the per-connection limit.
//!
//! A session that drops a client (write timeout, ping timeout, protocol error) must free
//! the connection even when the peer stopped reading: then hyper is parked on a write
//! that will never complete and dropping the response stream is not enough. The kill
//! switch makes the next read fail; hyper always has a read pending on an HTTP/2
//! connection, and the read registers its waker with the switch, so killing wakes it
//! and hyper tears the connection (and every buffer it holds) down. Writes check the
//! switch too (a wake-up may poll the parked write first). Both checks are atomics (an
//! `AtomicWaker` for the reader, a flag), not the cancellation token's lock: the
//! connection task reads on every poll, and polling a cancellation future there took
//! 2.5% of typha's CPU under steady churn.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::server::Connected;

/// What a session knows about its peer; a request extension.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The TCP peer address.
    pub addr: Option<SocketAddr>,
    /// The verified client identity (e.g. "CN=typha-client"), or "plaintext".
    pub identity: Arc<str>,
    /// Killing closes the connection.
    pub kill: KillSwitch,
    /// The `Sync` streams open on this connection.
    pub streams: OpenStreams,
}

/// Closes a connection from the outside (see the module docs). Clones share the switch.
#[derive(Clone, Debug, Default)]
pub struct KillSwitch(Arc<KillState>);

#[derive(Debug, Default)]
struct KillState {
    killed: AtomicBool,
    token: CancellationToken,
    /// The connection's pending read, woken by a kill.
    reader: AtomicWaker,
}

impl KillSwitch {
    /// Kills the connection: its next read and write fail, and a parked read is woken.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::Release);
        self.0.token.cancel();
        self.0.reader.wake();
    }

    /// Whether the connection was killed (one atomic load: the write path asks per write).
    pub fn is_killed(&self) -> bool {
        self.0.killed.load(Ordering::Acquire)
    }

    /// Completes once the connection is killed.
    pub async fn killed(&self) {
        self.0.token.cancelled().await
    }

    /// Whether the connection was killed; if not, a kill wakes `cx`'s task.
    fn poll_killed(&self, cx: &Context<'_>) -> bool {
        // Registered before the check: a kill in between still wakes the reader.
        self.0.reader.register(cx.waker());
        self.is_killed()
    }
}

/// How many `Sync` streams (sessions) are open on one connection; the server refuses
/// streams beyond its per-connection limit and closes connections that stay without a
/// stream (see `server::refusal`).
#[derive(Clone, Debug)]
pub struct OpenStreams {
    open: Arc<watch::Sender<usize>>,
    stats: ConnStats,
}

impl OpenStreams {
    /// No stream open yet; streams are also counted in `stats` (all connections).
    pub fn new(stats: ConnStats) -> OpenStreams {
        OpenStreams {
            open: Arc::new(watch::Sender::new(0)),
            stats,
        }
    }

    /// Opens a stream if fewer than `limit` are open; the stream counts until the guard
    /// is dropped.
    pub fn try_open(&self, limit: usize) -> Option<StreamGuard> {
        let opened = self.open.send_if_modified(|open| {
            let room = *open < limit;
            if room {
                *open += 1;
            }
            room
        });
        if opened {
            self.stats.0.send_modify(|counts| counts.streams += 1);
        }
        opened.then(|| StreamGuard(self.clone()))
    }

    /// How many streams are open now.
    pub fn count(&self) -> usize {
        *self.open.borrow()
    }

    /// Follows the count.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.open.subscribe()
    }
}

/// One open stream of an [`OpenStreams`]; dropping it closes the stream's slot.
#[derive(Debug)]
pub struct StreamGuard(OpenStreams);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        streams
            .open
            .send_modify(|open| *open = open.saturating_sub(1));
        streams
            .stats
            .0
            .send_modify(|counts| counts.streams = counts.streams.saturating_sub(1));
    }
}

/// What one server's accept path has seen: the connections holding a slot now, and the
/// connections it refused or closed before a session, by reason (the same counts as
/// `typha_connections_open` and the accept-path part of
/// `typha_connections_dropped_total`, per server, to await in tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnCounts {
    /// Connections holding a slot (handshaking, waiting for a stream, or streaming).
    pub open: usize,
    /// `Sync` streams open, over all connections (a session's stream counts until its
    /// session task has finished).
    pub streams: usize,
    /// Refusals by reason label.
    pub refused: BTreeMap<&'static str, u64>,
}

impl ConnCounts {
    /// Refusals with this reason so far.
    pub fn refused(&self, reason: &str) -> u64 {
        self.refused.get(reason).copied().unwrap_or(0)
    }
}

/// The live [`ConnCounts`] of one server.
#[derive(Clone, Debug, Default)]
pub struct ConnStats(Arc<watch::Sender<ConnCounts>>);

impl ConnStats {
    /// Nothing open, nothing refused.
    pub fn new() -> ConnStats {
        ConnStats::default()
    }

    /// The counts now.
    pub fn counts(&self) -> ConnCounts {
        self.0.borrow().clone()
    }

    /// Follows the counts (e.g. `wait_for(|c| c.refused("tls_timeout") >= 1)`).
    pub fn subscribe(&self) -> watch::Receiver<ConnCounts> {
        self.0.subscribe()
    }

    /// Counts one refusal here and in `typha_connections_dropped_total{reason}`.
    pub(super) fn refuse(&self, reason: &'static str) {
        // Counted under the watch's lock, like the gauge: see `ConnGuard::try_acquire`.
        self.0.send_modify(|counts| {
            *counts.refused.entry(reason).or_default() += 1;
            metrics::counter!("typha_connections_dropped_total", "reason" => reason).increment(1);
        });
    }
}

/// Holds one connection slot (and one `typha_connections_open`); dropping it frees the
/// slot.
#[derive(Debug)]
pub struct ConnGuard {
    stats: ConnStats,
}

impl ConnGuard {
    /// Takes a slot if fewer than `limit` connections are open.
    pub fn try_acquire(stats: &ConnStats, limit: usize) -> Option<ConnGuard> {
        // The gauge moves under the watch's lock, before watchers are woken, so both
        // always agree for whoever awaits the counts.
        let taken = stats.0.send_if_modified(|counts| {
            let room = counts.open < limit;
            if room {
                counts.open += 1;
                metrics::gauge!("typha_connections_open").increment(1.0);
            }
            room
        });
        taken.then(|| ConnGuard {
            stats: stats.clone(),
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.stats.0.send_modify(|counts| {
            counts.open = counts.open.saturating_sub(1);
            metrics::gauge!("typha_connections_open").decrement(1.0);
        });
    }
}

/// An accepted, handshaken connection.
pub struct Conn<S> {
    io: S,
    info: PeerInfo,
    _guard: ConnGuard,
    _closed: DropGuard,
}

impl<S> Conn<S> {
    /// Wraps `io`; `info.kill` closes it; `closed` fires when the connection is dropped
    /// (watchers of the connection end with it).
    pub fn new(io: S, info: PeerInfo, guard: ConnGuard, closed: CancellationToken) -> Conn<S> {
        Conn {
            io,
            info,
            _guard: guard,
            _closed: closed.drop_guard(),
        }
    }
}

/// The error reads and writes of a killed connection return.
fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by typha",
    )
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.info.kill.poll_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.info.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.info.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// hyper parks a read on every connection: killing must wake it and fail it, and
    /// writes fail from then on.
    #[tokio::test]
    async fn killing_wakes_a_parked_read_and_fails_writes() {
        let stats = ConnStats::new();
        let (io, _peer) = tokio::io::duplex(64);
        let info = PeerInfo {
            addr: None,
            identity: Arc::from("test"),
            kill: KillSwitch::default(),
            streams: OpenStreams::new(stats.clone()),
        };
        let kill = info.kill.clone();
        let guard = ConnGuard::try_acquire(&stats, 1).unwrap();
        let mut conn = Conn::new(io, info, guard, CancellationToken::new());
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let result = conn.read(&mut buf).await;
            (result, conn)
        });
        // The read is parked (nothing to read) before the kill.
        tokio::task::yield_now().await;
        kill.kill();
        let (result, mut conn) = read.await.unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        let written = tokio::io::AsyncWriteExt::write(&mut conn, b"x").await;
        assert_eq!(
            written.unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
    }
}
