//! Connecting and speaking: mutual TLS 1.3 (rustls, ring) with ALPN h2, one HTTP/2
//! connection per [`connect`], and `Sync` streams over it ([`SyncStream`]) through
//! tonic's generic client with a pass-through codec: what goes up is encoded here, what
//! comes down is kept as the bytes received (the digest hashes them).
//!
//! [`SyncStream::sync`] runs the specification's sequence: hello, `ServerHello`, then the
//! snapshot up to a verified `InSync`, the rebase batch of a cross-replica resume, or
//! nothing for a same-replica resume. [`SyncStream::next_batch`] answers pings, applies
//! and verifies the next batch, and turns a `Goodbye` into an error.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use hyper_util::rt::TokioIo;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::mirror::Mirror;
use crate::{ConformanceError, pb, violation};

/// The one RPC.
pub const SYNC_PATH: &str = "/typha.sync.v1.Typha/Sync";

fn pem_error(path: &Path, e: impl std::fmt::Display) -> ConformanceError {
    ConformanceError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A client TLS configuration trusting `ca` and presenting `identity` (certificate and
/// key files), or no certificate at all.
pub fn tls_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, ConformanceError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_error(ca, e))? {
        roots.add(cert.map_err(|e| pem_error(ca, e))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_error(cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(cert, e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One HTTP/2 connection to `addr` over TLS, verifying the server as `localhost`.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, ConformanceError> {
    connect_with_window(addr, tls, None).await
}

/// [`connect`] with the connection's and every stream's HTTP/2 receive window set to
/// `window` bytes (`None`: the transport's default). A small window makes a client that
/// stops reading hold the server back soon.
pub async fn connect_with_window(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    window: Option<u32>,
) -> Result<Channel, ConformanceError> {
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(Endpoint::from_static("http://localhost")
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect_with_connector(connector)
        .await?)
}

/// A `ClientHello` from `node` speaking `version` and offering `capabilities`.
pub fn hello(node: &str, version: u32, capabilities: &[pb::Capability]) -> pb::ClientHello {
    pb::ClientHello {
        node_name: node.to_string(),
        syncer_type: pb::SyncerType::Felix as i32,
        protocol_version: version,
        capabilities: capabilities.iter().map(|c| *c as i32).collect(),
        resume: None,
        client_version: "conformance".to_string(),
    }
}

/// Bytes up, bytes down: messages are encoded and decoded by the caller.
#[derive(Clone, Copy, Debug, Default)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> PassThrough {
        PassThrough
    }

    fn decoder(&mut self) -> PassThrough {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One `Sync` stream: message bodies up, frames (as received) down.
pub struct SyncStream {
    up: Option<mpsc::Sender<Bytes>>,
    down: tonic::Streaming<Bytes>,
}

/// A stream past its handshake.
pub struct Synced {
    /// The server's hello.
    pub hello: pb::ServerHello,
    /// The mirror, verified.
    pub mirror: Mirror,
    /// The stream, for the batches that follow.
    pub stream: SyncStream,
}

impl SyncStream {
    /// Opens a stream on `channel` with extra request `headers`; `Err` when the server
    /// refuses the call itself.
    pub async fn open_with(
        channel: &Channel,
        headers: &[(&'static str, &'static str)],
    ) -> Result<SyncStream, tonic::Status> {
        SyncStream::open_at(channel, SYNC_PATH, headers).await
    }

    /// Opens a bidirectional stream to the method at `path` (a method the server may
    /// not have), sending `headers` as request metadata.
    pub async fn open_at(
        channel: &Channel,
        path: &'static str,
        headers: &[(&'static str, &'static str)],
    ) -> Result<SyncStream, tonic::Status> {
        let (up, rx) = mpsc::channel(8);
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        for (name, value) in headers {
            request
                .metadata_mut()
                .insert(*name, tonic::metadata::MetadataValue::from_static(value));
        }
        let path = PathAndQuery::from_static(path);
        let down = grpc
            .streaming(request, path, PassThrough)
            .await?
            .into_inner();
        Ok(SyncStream { up: Some(up), down })
    }

    /// Opens a stream on `channel`.
    pub async fn open(channel: &Channel) -> Result<SyncStream, tonic::Status> {
        SyncStream::open_with(channel, &[]).await
    }

    /// Sends any bytes as one message body.
    pub async fn send_raw(&self, body: Bytes) -> Result<(), ConformanceError> {
        let up = self.up.as_ref().ok_or(ConformanceError::Ended)?;
        up.send(body).await.map_err(|_| ConformanceError::Ended)
    }

    /// Sends one `ClientMessage`.
    pub async fn send(&self, msg: pb::client_message::Msg) -> Result<(), ConformanceError> {
        let message = pb::ClientMessage { msg: Some(msg) };
        self.send_raw(Bytes::from(message.encode_to_vec())).await
    }

    /// Ends the client's side of the stream (the server then ends the session).
    pub fn close_up(&mut self) {
        self.up = None;
    }

    /// The next frame as received; `Ok(None)` when the stream ended with status OK.
    pub async fn frame(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        self.down.message().await
    }

    /// The next frame decoded, with its bytes; a clean end is [`ConformanceError::Ended`].
    pub async fn next_message(
        &mut self,
    ) -> Result<(pb::server_message::Msg, Bytes), ConformanceError> {
        loop {
            let raw = self.frame().await?.ok_or(ConformanceError::Ended)?;
            // An unknown member (a newer server's frame) decodes to None: ignored.
            if let Some(msg) = pb::ServerMessage::decode(raw.as_ref())?.msg {
                return Ok((msg, raw));
            }
        }
    }

    /// Sends `hello` and runs the handshake (see the module docs). `prior`: the mirror
    /// the hello's resume position came from.
    pub async fn sync(
        mut self,
        hello: pb::ClientHello,
        prior: Option<Mirror>,
    ) -> Result<Synced, ConformanceError> {
        self.send(pb::client_message::Msg::Hello(hello)).await?;
        let server = match self.next_message().await? {
            (pb::server_message::Msg::Hello(server), _) => server,
            (other, _) => return Err(violation(format!("{other:?} before ServerHello"))),
        };
        let mirror = match (server.resumed, prior) {
            (true, Some(mirror)) if mirror.epoch == server.epoch => mirror,
            (true, Some(mut mirror)) => {
                let (msg, raw) = self.next_message().await?;
                if !matches!(msg, pb::server_message::Msg::Deltas(_)) {
                    return Err(violation("a cross-replica resume without a rebase batch"));
                }
                mirror.apply_batch(&raw, true)?;
                mirror.epoch = server.epoch.clone();
                mirror
            }
            (true, None) => return Err(violation("resumed without a resume position")),
            (false, _) => self.snapshot(&server.epoch).await?,
        };
        Ok(Synced {
            hello: server,
            mirror,
            stream: self,
        })
    }

    async fn snapshot(&mut self, epoch: &str) -> Result<Mirror, ConformanceError> {
        let mut mirror = Mirror::new(epoch);
        loop {
            match self.next_message().await?.0 {
                pb::server_message::Msg::SnapshotChunk(chunk) => mirror.apply_chunk(&chunk)?,
                pb::server_message::Msg::InSync(in_sync) => {
                    mirror.complete(&in_sync)?;
                    return Ok(mirror);
                }
                other => return Err(violation(format!("{other:?} inside a snapshot"))),
            }
        }
    }

    /// Answers pings until the next batch, applies it to `mirror` (verifying revision and
    /// digest) and returns it. A goodbye is [`ConformanceError::Goodbye`].
    pub async fn next_batch(
        &mut self,
        mirror: &mut Mirror,
    ) -> Result<pb::DeltaBatch, ConformanceError> {
        loop {
            match self.next_message().await? {
                (pb::server_message::Msg::Deltas(_), raw) => {
                    return mirror.apply_batch(&raw, false);
                }
                (pb::server_message::Msg::Ping(ping), _) => {
                    let pong = pb::Pong {
                        nonce: ping.nonce,
                        ping_sent_unix_nanos: ping.sent_unix_nanos,
                    };
                    self.send(pb::client_message::Msg::Pong(pong)).await?;
                }
                (pb::server_message::Msg::Goodbye(bye), _) => {
                    return Err(ConformanceError::Goodbye(bye.reason, bye.message));
                }
                (other, _) => return Err(violation(format!("{other:?} while streaming"))),
            }
        }
    }
}
