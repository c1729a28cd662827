//! The fan-out server: accepts connections (mutual TLS by default), completes TLS
//! handshakes concurrently and under a timeout, and runs one [`session`] per `Sync`
//! stream.
//!
//! This is the only module that knows `tonic::Status`. Every connection that is refused
//! is counted in `typha_connections_dropped_total{reason}` before a byte of cluster state
//! could reach it: TLS failures (no certificate, unknown CA, wrong identity, expired,
//! TLS 1.2) are refused by the handshake, which completes before tonic sees the stream.
//!
//! Every phase of a connection has a deadline or a bound: the connection limit at
//! accept, `handshake_timeout` for TLS, `handshake_timeout` again for opening a `Sync`
//! stream (and after the last one ended: [`refusal`]), then the session's own hello,
//! write and ping timeouts; at most `max_streams_per_connection` sessions per connection.

mod conn;
mod history;
mod outbound;
mod refusal;
mod registry;
mod resume;
mod route;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Status, Streaming};
use typha_proto::codec::ClientMessageDecoder;

pub use conn::{
    Conn, ConnCounts, ConnGuard, ConnStats, KillSwitch, OpenStreams, PeerInfo, StreamGuard,
};
pub use history::History;
pub use outbound::SyncBody;
pub use refusal::{LOG_BURST, NO_STREAM_TIMEOUT, TOO_MANY_CONNECTIONS, TOO_MANY_STREAMS};
pub use registry::{Farewell, Registration, SessionCounts, Sessions};
pub use resume::{Agreed, ProtocolOffer};
pub use session::{DropReason, validate_hello};

/// A session ended: who and why. Published on [`SessionEnds`] for whoever listens (the
/// load test counts drops and resyncs by reason; tests await a specific drop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEnded {
    /// The client's node name (empty when it never sent a valid hello).
    pub node: String,
    /// Why it ended.
    pub reason: DropReason,
}

/// The broadcast of [`SessionEnded`]; sending never blocks and nobody has to listen.
#[derive(Clone, Debug)]
pub struct SessionEnds(tokio::sync::broadcast::Sender<SessionEnded>);

impl SessionEnds {
    /// A broadcast keeping up to `capacity` ends for slow listeners (older ones are lost
    /// to a listener that falls behind; the metrics still count them).
    pub fn new(capacity: usize) -> SessionEnds {
        SessionEnds(tokio::sync::broadcast::Sender::new(capacity.max(1)))
    }

    /// A listener for ends from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SessionEnded> {
        self.0.subscribe()
    }

    pub(crate) fn publish(&self, ended: SessionEnded) {
        // No listener is fine.
        let _ = self.0.send(ended);
    }
}

use crate::hub::Hub;
use edge::tls::{HandshakeFailure, peer_summary};

/// Server tuning. Defaults suit thousands of clients per replica.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This replica's id, sent in ServerHello.
    pub server_id: String,
    /// Each step of the handshake must complete within this: the TLS handshake, opening
    /// a `Sync` stream on the connection (also after its last stream ended), and sending
    /// the ClientHello on it.
    pub handshake_timeout: Duration,
    /// A client whose buffer stays full this long is dropped (it stopped reading).
    pub write_timeout: Duration,
    /// How often the server pings each client.
    pub ping_interval: Duration,
    /// A client that sends nothing (no pong) for this long is dropped.
    pub ping_timeout: Duration,
    /// A client this many batches behind gets one coalesced batch instead.
    pub max_uncoalesced: usize,
    /// The session's own frames (hello, snapshot chunks, pings, pongs, goodbyes) queued
    /// per client for its stream's body; deltas do not go through this queue.
    pub out_buffer_frames: usize,
    /// Connections beyond this are refused at accept.
    pub max_connections: usize,
    /// ClientMessages larger than this close the stream.
    pub max_client_message_bytes: usize,
    /// `Sync` streams (sessions) one connection may carry at once; more are refused.
    /// A felix-client uses one.
    pub max_streams_per_connection: usize,
    /// The protocol versions and capabilities offered in the handshake (a compatibility
    /// and test knob: `ProtocolOffer::v1()` makes this replica speak like version 1).
    pub protocol: ProtocolOffer,
    /// A client resuming from another replica whose versions are ahead of this one's
    /// waits at most this long for this replica to catch up, then gets a snapshot.
    pub resume_catch_up: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            server_id: "typha".to_string(),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(60),
            max_uncoalesced: 8,
            out_buffer_frames: 16,
            max_connections: 20_000,
            max_client_message_bytes: 64 * 1024,
            max_streams_per_connection: 4,
            protocol: ProtocolOffer::default(),
            resume_catch_up: Duration::from_secs(2),
        }
    }
}

/// How connections are secured.
#[derive(Clone)]
pub enum Transport {
    /// Mutual TLS with the given configuration (client certificate required).
    Tls(Arc<rustls::ServerConfig>),
    /// No TLS. Development only; logged loudly at startup.
    Plaintext,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listen address failed. Not retryable without a config change.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP/2 server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Steers a running server from outside: its live sessions, and closing its listener.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    /// The live sessions (rebalancing and draining tell them goodbye).
    pub sessions: Sessions,
    /// Open connections and the accept path's refusals.
    pub connections: ConnStats,
    stop_accepting: CancellationToken,
    accept_closed: CancellationToken,
}

impl ServerHandle {
    /// A handle for a server stopped by `shutdown` (which also stops accepting).
    pub fn new(shutdown: &CancellationToken) -> ServerHandle {
        ServerHandle {
            sessions: Sessions::new(),
            connections: ConnStats::new(),
            stop_accepting: shutdown.child_token(),
            accept_closed: CancellationToken::new(),
        }
    }

    /// Stops accepting connections and closes the listening socket; open connections
    /// and their sessions carry on.
    pub fn stop_accepting(&self) {
        self.stop_accepting.cancel();
    }

    /// Waits until the listening socket is closed (new connections are refused).
    pub async fn accept_closed(&self) {
        self.accept_closed.cancelled().await;
    }
}

/// Serves `Sync` streams from `hub` on `listener` until `shutdown` fires, then tells
/// every client goodbye(shutdown) and waits for the sessions to finish. `handle` closes
/// the listener earlier and reaches the live sessions.
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    config: ServerConfig,
    transport: Transport,
    ends: SessionEnds,
    handle: ServerHandle,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    if matches!(transport, Transport::Plaintext) {
        tracing::warn!(
            "serving WITHOUT TLS: any client can read the cluster's state; development only"
        );
    }
    let config = Arc::new(config);
    let sessions = TaskTracker::new();
    let (conn_tx, conn_rx) = mpsc::channel(256);
    let accept = tokio::spawn({
        let (config, stop, closed, stats) = (
            config.clone(),
            handle.stop_accepting.clone(),
            handle.accept_closed.clone(),
            handle.connections.clone(),
        );
        async move {
            // Fires when this task ends, returns or is aborted, after the listener (owned
            // by the loop) is closed.
            let _closed = closed.drop_guard();
            accept_loop(listener, transport, config, stats, conn_tx, stop).await;
        }
    });
    let service = route::SyncRoute::new(SyncService {
        hub,
        ends,
        config: config.clone(),
        sessions: sessions.clone(),
        registry: handle.sessions.clone(),
        connections: handle.connections.clone(),
        shutdown: shutdown.clone(),
    });
    let incoming = ReceiverStream::new(conn_rx);
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(service)
        .serve_with_incoming_shutdown(
            futures::StreamExt::map(incoming, Ok::<_, std::io::Error>),
            shutdown.cancelled_owned(),
        )
        .await;
    accept.abort();
    sessions.close();
    sessions.wait().await;
    result.map_err(ServerError::from)
}

type Connection = Conn<Box<dyn IoStream>>;

/// The byte stream under a connection: TLS or plain TCP.
pub trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> IoStream for T {}

async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    config: Arc<ServerConfig>,
    stats: ConnStats,
    conns: mpsc::Sender<Connection>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(guard) = ConnGuard::try_acquire(&stats, config.max_connections) else {
            // Dropping the socket closes it at once: nothing is read, nothing is kept.
            refusal::drop_connection(&stats, Some(addr), refusal::TOO_MANY_CONNECTIONS, None);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (transport, config, conns, stats) = (
            transport.clone(),
            config.clone(),
            conns.clone(),
            stats.clone(),
        );
        tokio::spawn(async move {
            if let Some(conn) = handshake(tcp, addr, transport, &config, &stats, guard).await {
                let _ = conns.send(conn).await;
            }
        });
    }
}

async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    transport: Transport,
    config: &ServerConfig,
    stats: &ConnStats,
    guard: ConnGuard,
) -> Option<Connection> {
    let (io, identity): (Box<dyn IoStream>, String) = match transport {
        Transport::Plaintext => (Box::new(tcp), "plaintext".to_string()),
        Transport::Tls(tls) => {
            let accepted =
                tokio::time::timeout(config.handshake_timeout, TlsAcceptor::from(tls).accept(tcp))
                    .await;
            let stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    let failure = HandshakeFailure::classify(&error);
                    refusal::drop_connection(stats, Some(addr), failure.as_str(), Some(&error));
                    return None;
                }
                Err(_) => {
                    let reason = HandshakeFailure::Timeout.as_str();
                    refusal::drop_connection(stats, Some(addr), reason, None);
                    return None;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(peer_summary)
                .unwrap_or_default();
            (Box::new(stream), identity)
        }
    };
    let info = PeerInfo {
        addr: Some(addr),
        identity: Arc::from(identity),
        kill: KillSwitch::default(),
        streams: OpenStreams::new(stats.clone()),
    };
    // The watchdog ends with the connection: `closed` fires when tonic drops it.
    let closed = CancellationToken::new();
    tokio::spawn(refusal::close_when_idle(
        stats.clone(),
        info.streams.subscribe(),
        config.handshake_timeout,
        info.kill.clone(),
        closed.clone(),
        Some(addr),
    ));
    Some(Conn::new(io, info, guard, closed))
}

struct SyncService {
    hub: Hub,
    ends: SessionEnds,
    config: Arc<ServerConfig>,
    sessions: TaskTracker,
    registry: Sessions,
    connections: ConnStats,
    shutdown: CancellationToken,
}

impl SyncService {
    /// Opens a `Sync` stream: starts its session task and returns its response body.
    /// Refused (too many streams on the connection) with a status.
    fn sync(&self, request: http::Request<tonic::body::Body>) -> Result<SyncBody<Hub>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or_else(|| PeerInfo {
                addr: None,
                identity: Arc::from("unknown"),
                kill: KillSwitch::default(),
                streams: OpenStreams::new(self.connections.clone()),
            });
        let Some(stream) = peer
            .streams
            .try_open(self.config.max_streams_per_connection)
        else {
            refusal::drop_connection(
                &self.connections,
                peer.addr,
                refusal::TOO_MANY_STREAMS,
                None,
            );
            return Err(Status::resource_exhausted(
                "too many Sync streams on this connection",
            ));
        };
        let inbound = Streaming::new_request(
            ClientMessageDecoder,
            request.into_body(),
            None,
            Some(self.config.max_client_message_bytes),
        );
        let (outlet, body) = outbound::pair(
            self.hub.clone(),
            self.config.out_buffer_frames,
            self.config.max_uncoalesced,
        );
        metrics::counter!("typha_connections_accepted_total").increment(1);
        let (registration, farewell) = self.registry.register();
        let session = session::Session {
            hub: self.hub.clone(),
            config: self.config.clone(),
            outlet,
            inbound,
            peer,
            shutdown: self.shutdown.clone(),
            ends: self.ends.clone(),
            farewell,
            node: String::new(),
            refusal_unsent: false,
        };
        self.sessions.spawn(async move {
            // Registered, and counted on its connection, for exactly as long as the
            // session task runs.
            let (_registration, _stream) = (registration, stream);
            session.run().await;
        });
        Ok(body)
    }
}
