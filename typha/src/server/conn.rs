//! An accepted connection as tonic sees it: the (TLS) stream, who the peer is, and a
//! kill switch.
//!
//! A session that drops a client (write timeout, ping timeout, protocol error) must free
//! the connection even when the peer stopped reading: then hyper is parked on a write
//! that will never complete and dropping the response stream is not enough. The kill
//! switch makes the next read fail; hyper always has a read pending on an HTTP/2
//! connection, and the read registers its waker with the switch, so killing wakes it
//! and hyper tears the connection (and every buffer it holds) down.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

/// What a session knows about its peer; a request extension.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The TCP peer address.
    pub addr: Option<SocketAddr>,
    /// The verified client identity (e.g. "CN=typha-client"), or "plaintext".
    pub identity: Arc<str>,
    /// Cancelling closes the connection.
    pub kill: CancellationToken,
}

/// Counts open connections; the count drops when the connection is dropped.
#[derive(Debug)]
pub struct ConnGuard {
    open: Arc<AtomicUsize>,
}

impl ConnGuard {
    /// Takes a slot if fewer than `limit` connections are open.
    pub fn try_acquire(open: &Arc<AtomicUsize>, limit: usize) -> Option<ConnGuard> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| ConnGuard { open: open.clone() })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted, handshaken connection.
pub struct Conn<S> {
    io: S,
    info: PeerInfo,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    _guard: ConnGuard,
}

impl<S> Conn<S> {
    /// Wraps `io`; `info.kill` closes it.
    pub fn new(io: S, info: PeerInfo, guard: ConnGuard) -> Conn<S> {
        let killed = Box::pin(info.kill.clone().cancelled_owned());
        Conn {
            io,
            info,
            killed,
            _guard: guard,
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
        if self.killed.as_mut().poll(cx).is_ready() {
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
        if self.info.kill.is_cancelled() {
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
        if self.info.kill.is_cancelled() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
