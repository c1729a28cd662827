//! The fan-out server: accepts connections (mutual TLS by default), completes TLS
//! handshakes concurrently and under a timeout, and runs one [`session`] per `Sync`
//! stream.
//!
//! This is the only module that knows `tonic::Status`. Every connection that is refused
//! is counted in `typha_connections_dropped_total{reason}` before a byte of cluster state
//! could reach it: TLS failures (no certificate, unknown CA, wrong identity, expired,
//! TLS 1.2) are refused by the handshake, which completes before tonic sees the stream.

mod conn;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use typha_proto::pb;
use typha_proto::server::typha_server::{Typha, TyphaServer};

pub use conn::{Conn, ConnGuard, PeerInfo};
pub use session::DropReason;

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
use crate::tls::{HandshakeFailure, peer_summary};

/// Server tuning. Defaults suit thousands of clients per replica.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This replica's id, sent in ServerHello.
    pub server_id: String,
    /// TLS handshake plus ClientHello must complete within this.
    pub handshake_timeout: Duration,
    /// A client whose buffer stays full this long is dropped (it stopped reading).
    pub write_timeout: Duration,
    /// How often the server pings each client.
    pub ping_interval: Duration,
    /// A client that sends nothing (no pong) for this long is dropped.
    pub ping_timeout: Duration,
    /// A client this many batches behind gets one coalesced batch instead.
    pub max_uncoalesced: usize,
    /// Frames queued per client between the session and the HTTP/2 stream.
    pub out_buffer_frames: usize,
    /// Connections beyond this are refused at accept.
    pub max_connections: usize,
    /// ClientMessages larger than this close the stream.
    pub max_client_message_bytes: usize,
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

/// Serves `Sync` streams from `hub` on `listener` until `shutdown` fires, then tells
/// every client goodbye(shutdown) and waits for the sessions to finish.
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    config: ServerConfig,
    transport: Transport,
    ends: SessionEnds,
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
    let accept = tokio::spawn(accept_loop(
        listener,
        transport,
        config.clone(),
        conn_tx,
        shutdown.clone(),
    ));
    let service = SyncService {
        hub,
        ends,
        config: config.clone(),
        sessions: sessions.clone(),
        shutdown: shutdown.clone(),
    };
    let grpc = TyphaServer::new(service).max_decoding_message_size(config.max_client_message_bytes);
    let incoming = ReceiverStream::new(conn_rx);
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(grpc)
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
    conns: mpsc::Sender<Connection>,
    shutdown: CancellationToken,
) {
    let open = Arc::new(AtomicUsize::new(0));
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
        let Some(guard) = ConnGuard::try_acquire(&open, config.max_connections) else {
            drop_connection(Some(addr), "too_many_connections");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (transport, config, conns) = (transport.clone(), config.clone(), conns.clone());
        tokio::spawn(async move {
            if let Some(conn) = handshake(tcp, addr, transport, &config, guard).await {
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
    guard: ConnGuard,
) -> Option<Connection> {
    let kill = CancellationToken::new();
    match transport {
        Transport::Plaintext => {
            let info = PeerInfo {
                addr: Some(addr),
                identity: Arc::from("plaintext"),
                kill,
            };
            Some(Conn::new(Box::new(tcp) as Box<dyn IoStream>, info, guard))
        }
        Transport::Tls(tls) => {
            let accepted =
                tokio::time::timeout(config.handshake_timeout, TlsAcceptor::from(tls).accept(tcp))
                    .await;
            let stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    let failure = HandshakeFailure::classify(&error);
                    tracing::info!(peer = %addr, reason = failure.as_str(), %error, "TLS handshake refused");
                    drop_connection(Some(addr), failure.as_str());
                    return None;
                }
                Err(_) => {
                    drop_connection(Some(addr), HandshakeFailure::Timeout.as_str());
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
            let info = PeerInfo {
                addr: Some(addr),
                identity: Arc::from(identity),
                kill,
            };
            Some(Conn::new(
                Box::new(stream) as Box<dyn IoStream>,
                info,
                guard,
            ))
        }
    }
}

fn drop_connection(addr: Option<SocketAddr>, reason: &'static str) {
    tracing::debug!(peer = ?addr, reason, "connection dropped");
    metrics::counter!("typha_connections_dropped_total", "reason" => reason).increment(1);
}

struct SyncService {
    hub: Hub,
    ends: SessionEnds,
    config: Arc<ServerConfig>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
}

#[tonic::async_trait]
impl Typha for SyncService {
    type SyncStream = ReceiverStream<Result<Bytes, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or_else(|| PeerInfo {
                addr: None,
                identity: Arc::from("unknown"),
                kill: CancellationToken::new(),
            });
        let (tx, rx) = mpsc::channel(self.config.out_buffer_frames.max(1));
        metrics::counter!("typha_connections_accepted_total").increment(1);
        let session = session::Session {
            hub: self.hub.clone(),
            config: self.config.clone(),
            out: tx,
            inbound: request.into_inner(),
            peer,
            shutdown: self.shutdown.clone(),
            ends: self.ends.clone(),
            node: String::new(),
        };
        self.sessions.spawn(session.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
