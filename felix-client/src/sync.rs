//! The sync client: keeps a [`Mirror`] of typha's state current across connections.
//!
//! One session per connection: ClientHello (with a resume position once synced), then
//! ServerHello, a snapshot or a resumption, InSync, and delta batches. The rest of the
//! agent consumes [`SyncEvent`]s. On connection loss the mirror is kept; the client
//! reconnects with jittered exponential backoff (immediately after a goodbye), resumes
//! where the server's history allows, and otherwise receives a snapshot of which only
//! the real differences are reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use typha_proto::client::typha_client::TyphaClient;
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, client_message};
use typha_proto::{Digest, PROTOCOL_VERSION, Revision, Update};

use crate::connect::{ConnectError, connect};
use crate::mirror::{Mirror, MirrorError};

/// What the sync client tells the rest of the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncEvent {
    /// Changes to the mirror, in order. Deletions have `value: None`.
    Changes {
        /// The mirror's revision after these changes.
        revision: Revision,
        /// The changes; deletions have `value: None`.
        updates: Vec<Update>,
    },
    /// The mirror equals the server's state at `revision` (after a snapshot or resume).
    InSync {
        /// The server revision.
        revision: Revision,
        /// The verified digest.
        digest: Digest,
        /// The number of keys.
        keys: usize,
    },
    /// The connection was lost; the mirror is kept and the client reconnects.
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
}

/// Sync client settings.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// This node's name, sent in ClientHello.
    pub node_name: String,
    /// Typha addresses (HOST:PORT), tried in a shuffled rotation.
    pub addresses: Vec<String>,
    /// The TLS client configuration; `None` for plaintext (development only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bound on TCP + TLS + HTTP/2 setup and on the wait for ServerHello.
    pub connect_timeout: Duration,
    /// Silence from the server for this long ends the session (it pings every 10 s).
    pub read_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
}

impl SyncConfig {
    /// Defaults for `node_name` and `addresses`.
    pub fn new(node_name: impl Into<String>, addresses: Vec<String>) -> SyncConfig {
        SyncConfig {
            node_name: node_name.into(),
            addresses,
            tls: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(90),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Live counters of one sync client (also exported as `felix_sync_*` metrics).
#[derive(Debug)]
pub struct SyncStatus {
    /// The revision the mirror is at, published after every applied snapshot or batch
    /// (tests and the load test await it instead of polling).
    pub applied: watch::Sender<Revision>,
    /// Whether the mirror currently equals the server's state (false while disconnected).
    pub in_sync: AtomicBool,
    /// Keys in the mirror.
    pub keys: AtomicU64,
    /// Sessions that ended and were retried.
    pub reconnects: AtomicU64,
    /// Snapshots received.
    pub snapshots: AtomicU64,
    /// Sessions resumed without a snapshot.
    pub resumes: AtomicU64,
    /// Digest mismatches detected.
    pub digest_mismatches: AtomicU64,
    /// Delta batches applied.
    pub batches: AtomicU64,
}

impl Default for SyncStatus {
    fn default() -> Self {
        SyncStatus {
            applied: watch::Sender::new(Revision::default()),
            in_sync: AtomicBool::default(),
            keys: AtomicU64::default(),
            reconnects: AtomicU64::default(),
            snapshots: AtomicU64::default(),
            resumes: AtomicU64::default(),
            digest_mismatches: AtomicU64::default(),
            batches: AtomicU64::default(),
        }
    }
}

impl SyncStatus {
    /// The mirror equals its source's state: publishes that and returns the event.
    pub(crate) fn in_sync(&self, mirror: &Mirror) -> SyncEvent {
        let keys = mirror.len();
        self.in_sync.store(true, Ordering::Relaxed);
        metrics::gauge!("felix_sync_in_sync").set(1.0);
        self.publish(mirror);
        SyncEvent::InSync {
            revision: mirror.revision(),
            digest: mirror.digest(),
            keys,
        }
    }

    /// A delta batch was applied to `mirror`.
    pub(crate) fn batch_applied(&self, mirror: &Mirror) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.publish(mirror);
    }

    /// The mirror no longer follows its source (disconnected or stopped).
    pub(crate) fn out_of_sync(&self) {
        self.in_sync.store(false, Ordering::Relaxed);
        metrics::gauge!("felix_sync_in_sync").set(0.0);
    }

    /// A frame was refused; counts it when it was a digest mismatch, and says so.
    pub(crate) fn refused(&self, error: &MirrorError) -> bool {
        let mismatch = matches!(error, MirrorError::DigestMismatch { .. });
        if mismatch {
            self.digest_mismatches.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("felix_sync_digest_mismatches_total").increment(1);
        }
        mismatch
    }

    fn publish(&self, mirror: &Mirror) {
        let keys = mirror.len();
        self.keys.store(keys as u64, Ordering::Relaxed);
        metrics::gauge!("felix_sync_keys").set(keys as f64);
        self.applied.send_replace(mirror.revision());
    }
}

/// Errors that stop the client for good.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No addresses configured.
    #[error("no typha addresses configured")]
    NoAddresses,
    /// An address is malformed.
    #[error(transparent)]
    Config(ConnectError),
}

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// Shutdown requested.
    Shutdown,
    /// The server said goodbye: reconnect at once (to another replica for rebalance).
    Goodbye(pb::GoodbyeReason, String),
    /// Failure: back off, then reconnect.
    Failed(String),
}

/// The sync client (see the module docs).
pub struct SyncClient {
    config: SyncConfig,
    mirror: Mirror,
    status: Arc<SyncStatus>,
}

impl SyncClient {
    /// A client with an empty mirror.
    pub fn new(config: SyncConfig) -> SyncClient {
        SyncClient {
            config,
            mirror: Mirror::new(),
            status: Arc::new(SyncStatus::default()),
        }
    }

    /// The live counters.
    pub fn status(&self) -> Arc<SyncStatus> {
        self.status.clone()
    }

    /// Runs until `shutdown` fires; returns the mirror as it stands then.
    pub async fn run(
        mut self,
        events: mpsc::Sender<SyncEvent>,
        shutdown: CancellationToken,
    ) -> Result<Mirror, SyncError> {
        if self.config.addresses.is_empty() {
            return Err(SyncError::NoAddresses);
        }
        let mut order: Vec<usize> = (0..self.config.addresses.len()).collect();
        shuffle(&mut order);
        let mut attempt: u32 = 0;
        let mut next = 0usize;
        loop {
            let addr = self.config.addresses[order[next % order.len()]].clone();
            next += 1;
            let end = self.session(&addr, &events, &shutdown).await;
            self.status.out_of_sync();
            let delay = match end {
                Ok(SessionEnd::Shutdown) => return Ok(self.mirror),
                Err(e @ ConnectError::BadAddress { .. }) => return Err(SyncError::Config(e)),
                Ok(SessionEnd::Goodbye(reason, message)) => {
                    tracing::info!(%addr, ?reason, message, "typha said goodbye; reconnecting");
                    attempt = 0;
                    if reason == pb::GoodbyeReason::Resync {
                        self.mirror.forget_position();
                    }
                    jitter(self.config.backoff_min)
                }
                Ok(SessionEnd::Failed(reason)) => {
                    tracing::warn!(%addr, reason, "sync session failed");
                    let _ = events.send(SyncEvent::Disconnected { reason }).await;
                    attempt = attempt.saturating_add(1);
                    backoff(&self.config, attempt)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to typha");
                    attempt = attempt.saturating_add(1);
                    backoff(&self.config, attempt)
                }
            };
            self.status.reconnects.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("felix_sync_reconnects_total").increment(1);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(self.mirror),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &mut self,
        addr: &str,
        events: &mpsc::Sender<SyncEvent>,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, ConnectError> {
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            channel = connect(addr, self.config.tls.clone(), self.config.connect_timeout) => channel?,
        };
        let (up, up_rx) = mpsc::channel(4);
        let hello = pb::ClientHello {
            node_name: self.config.node_name.clone(),
            syncer_type: pb::SyncerType::Felix as i32,
            protocol_version: PROTOCOL_VERSION,
            capabilities: [
                pb::Capability::SnapshotZstd,
                pb::Capability::Resume,
                pb::Capability::Digest,
            ]
            .iter()
            .map(|c| *c as i32)
            .collect(),
            resume: self.mirror.resume_position(),
            client_version: concat!("felix-client/", env!("CARGO_PKG_VERSION")).to_string(),
        };
        let _ = up
            .send(pb::ClientMessage {
                msg: Some(client_message::Msg::Hello(hello)),
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
            let frame = tokio::select! {
                _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                frame = timeout(self.config.read_timeout, frames.message()) => frame,
            };
            let frame = match frame {
                Err(_) => {
                    return Ok(SessionEnd::Failed(
                        "server silent past the read timeout".into(),
                    ));
                }
                Ok(Err(status)) => {
                    return Ok(SessionEnd::Failed(format!("stream error: {status}")));
                }
                Ok(Ok(None)) => return Ok(SessionEnd::Failed("server closed the stream".into())),
                Ok(Ok(Some(frame))) => frame,
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

    async fn handle(
        &mut self,
        frame: ServerFrame,
        up: &mpsc::Sender<pb::ClientMessage>,
        events: &mpsc::Sender<SyncEvent>,
    ) -> Result<Option<SessionEnd>, MirrorError> {
        match frame {
            ServerFrame::Hello(hello) => {
                self.mirror.start_session(&hello.epoch, hello.resumed);
                tracing::info!(
                    server = hello.server_id,
                    resumed = hello.resumed,
                    "connected to typha"
                );
                if hello.resumed {
                    self.status.resumes.fetch_add(1, Ordering::Relaxed);
                    self.in_sync(events).await;
                }
            }
            ServerFrame::SnapshotChunk(chunk) => self.mirror.apply_chunk(chunk)?,
            ServerFrame::InSync(in_sync) => {
                let changes = self.mirror.finish_snapshot(&in_sync)?;
                self.status.snapshots.fetch_add(1, Ordering::Relaxed);
                if !changes.is_empty() {
                    let revision = self.mirror.revision();
                    let _ = events
                        .send(SyncEvent::Changes {
                            revision,
                            updates: changes,
                        })
                        .await;
                }
                self.in_sync(events).await;
            }
            ServerFrame::Deltas(batch) => {
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
            }
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

    async fn in_sync(&self, events: &mpsc::Sender<SyncEvent>) {
        let _ = events.send(self.status.in_sync(&self.mirror)).await;
    }
}

/// Exponential backoff with full jitter between 50% and 100% of the step.
fn backoff(config: &SyncConfig, attempt: u32) -> Duration {
    let step = config
        .backoff_min
        .saturating_mul(1u32 << attempt.min(16))
        .min(config.backoff_max);
    jitter(step)
}

fn jitter(step: Duration) -> Duration {
    step.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn shuffle(order: &mut [usize]) {
    let mut rng = rand::rng();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let config = SyncConfig::new("n", vec!["a:1".into()]);
        for attempt in 0..40 {
            let d = backoff(&config, attempt);
            let step = config
                .backoff_min
                .saturating_mul(1u32 << attempt.min(16))
                .min(config.backoff_max);
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} vs {step:?}"
            );
        }
        assert!(backoff(&config, 30) >= config.backoff_max / 2);
    }
}
