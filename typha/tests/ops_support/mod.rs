//! Shared helpers of the ops_* integration tests: typha on 127.0.0.1:0 fed by a channel,
//! Node fixtures, raw protocol clients (tonic + typha_proto's codec, optionally over
//! mutual TLS) and a one-shot HTTP GET for the health endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use netmodel::UpstreamEvent;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Uri};
use typha::app::{self, OpsConfig, Running, TyphaOptions, Upstream};
use typha::hub::HubConfig;
use typha::server::{ServerConfig, Transport};
use typha_proto::client::typha_client::TyphaClient;
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, client_message};
use typha_proto::{Key, Kind, Update, Value};

/// How long a test waits for something that should happen at once before failing.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A started typha and its upstream feed.
pub struct Typha {
    pub running: Running,
    pub feed: mpsc::Sender<UpstreamEvent>,
}

/// A plaintext typha with these operations settings and no metrics recorder.
pub async fn start(ops: OpsConfig) -> Typha {
    start_with(Transport::Plaintext, ops, None).await
}

/// A typha with default session settings.
pub async fn start_with(
    transport: Transport,
    ops: OpsConfig,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Typha {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (feed, rx) = mpsc::channel(64);
    let running = app::start(TyphaOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        health_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        transport,
        server: ServerConfig::default(),
        ops,
        hub: HubConfig::default(),
        upstream: Upstream::Channel(rx),
        metrics,
    })
    .await
    .unwrap();
    Typha { running, feed }
}

impl Typha {
    /// Loads `updates`, marks the upstream in sync, waits for the hub to apply both.
    pub async fn load(&self, updates: Vec<Update>) {
        self.feed
            .send(UpstreamEvent::Updates(updates))
            .await
            .unwrap();
        self.feed.send(UpstreamEvent::InSync).await.unwrap();
        self.running.hub.wait_in_sync().await;
    }

    /// Applies one batch and returns the revision it produced.
    pub async fn update(&self, updates: Vec<Update>) -> typha_proto::Revision {
        let before = self.running.hub.revision();
        self.feed
            .send(UpstreamEvent::Updates(updates))
            .await
            .unwrap();
        let mut revisions = self.running.hub.subscribe();
        let r = revisions.wait_for(|r| *r > before).await.unwrap();
        *r
    }

    pub fn health_port(&self) -> u16 {
        self.running.health_addr.unwrap().port()
    }
}

pub fn node(i: usize) -> Update {
    let name = format!("node-{i}");
    let key = Key::new(Kind::Node, "", &name).unwrap();
    let value = Value::Node(pb::Node {
        name,
        ..Default::default()
    });
    Update::new(key, Some(value)).unwrap()
}

pub fn nodes(n: usize) -> Vec<Update> {
    (0..n).map(node).collect()
}

/// A protocol client driven by hand.
pub struct RawClient {
    pub name: String,
    _tx: mpsc::Sender<pb::ClientMessage>,
    pub stream: tonic::Streaming<ServerFrame>,
}

/// How a client's stream ended.
#[derive(Debug, PartialEq)]
pub enum Ending {
    /// A goodbye with this reason, then a clean end of stream.
    Goodbye(pb::GoodbyeReason),
    /// A clean end without goodbye.
    Closed,
    /// An error status.
    Error(tonic::Code),
}

impl RawClient {
    /// Connects (plaintext when `tls` is None), says hello, and reads up to InSync.
    pub async fn connect(
        addr: SocketAddr,
        name: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> RawClient {
        let connector = tower::service_fn(move |uri: Uri| {
            let tls = tls.clone();
            async move {
                let port = uri.port_u16().unwrap();
                let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                let io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some(config) => {
                        let name = ServerName::try_from("localhost").unwrap();
                        Box::new(
                            tokio_rustls::TlsConnector::from(config)
                                .connect(name, tcp)
                                .await?,
                        )
                    }
                };
                Ok::<_, std::io::Error>(TokioIo::new(io))
            }
        });
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(connector)
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        let hello = pb::ClientHello {
            node_name: name.to_string(),
            syncer_type: pb::SyncerType::Felix as i32,
            protocol_version: 1,
            capabilities: vec![pb::Capability::SnapshotZstd as i32],
            ..Default::default()
        };
        tx.send(pb::ClientMessage {
            msg: Some(client_message::Msg::Hello(hello)),
        })
        .await
        .unwrap();
        let stream = TyphaClient::new(channel)
            .sync(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut client = RawClient {
            name: name.to_string(),
            _tx: tx,
            stream,
        };
        loop {
            match client.next().await {
                Some(ServerFrame::InSync(_)) => break,
                Some(_) => continue,
                None => panic!("{name}: stream ended before InSync"),
            }
        }
        client
    }

    /// The next frame other than a ping; None at the end of the stream or on error.
    pub async fn next(&mut self) -> Option<ServerFrame> {
        loop {
            let frame = tokio::time::timeout(LIMIT, self.stream.message())
                .await
                .expect("no frame within the limit")
                .ok()??;
            if !matches!(frame, ServerFrame::Ping(_)) {
                return Some(frame);
            }
        }
    }

    /// Reads until the stream ends; how it ended. Deltas on the way are skipped.
    pub async fn ending(&mut self) -> Ending {
        let mut goodbye = None;
        loop {
            let message = tokio::time::timeout(LIMIT, self.stream.message())
                .await
                .expect("stream did not end within the limit");
            match message {
                Ok(Some(ServerFrame::Goodbye(g))) => {
                    goodbye = Some(pb::GoodbyeReason::try_from(g.reason).unwrap())
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return goodbye.map_or(Ending::Closed, Ending::Goodbye);
                }
                Err(status) => return Ending::Error(status.code()),
            }
        }
    }

    /// Waits for a DeltaBatch reaching `revision`.
    pub async fn wait_delta(&mut self, revision: typha_proto::Revision) {
        loop {
            match self.next().await {
                Some(ServerFrame::Deltas(batch)) if batch.revision >= revision.0 => return,
                Some(ServerFrame::Goodbye(g)) => panic!("{}: unexpected goodbye {g:?}", self.name),
                Some(_) => {}
                None => panic!("{}: stream ended while waiting for a delta", self.name),
            }
        }
    }
}

/// Every client's stream ends as `want` (named in the failure).
pub async fn expect_endings(clients: &mut [RawClient], want: Ending) {
    for client in clients {
        assert_eq!(client.ending().await, want, "{}", client.name);
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// GET `path` on 127.0.0.1:`port` (HTTP/1.1, one request); (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    testkit::http_get(SocketAddr::from(([127, 0, 0, 1], port)), path).await
}
