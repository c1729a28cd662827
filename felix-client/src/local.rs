//! "Without Typha" mode: the agent watches the Kubernetes API itself (Calico's behaviour
//! for small clusters) through exactly the code typha uses.
//!
//! Why this shape: the upstream ([`netmodel::run`]) feeds a local
//! [`SnapshotCache`], and every breadcrumb's pre-encoded `DeltaBatch` frame is decoded and
//! applied to a [`Mirror`], just as the sync client applies frames from the wire. So the
//! rest of the agent sees the same [`SyncEvent`]s and the same mirror in both modes, and
//! the mirror's digest is checked against the cache's after every batch.
//!
//! Invariants:
//! - the mirror starts as [`Mirror::following`] the empty cache at revision 0, and then
//!   moves one breadcrumb at a time: its revision
//!   and digest equal the cache's after every batch (a mismatch is a bug and is fatal);
//! - [`SyncEvent::InSync`] is emitted once, when the upstream has listed every resource;
//!   `status.in_sync` is set then and stays set (relists are just changes);
//! - the upstream task is owned: it stops when `shutdown` fires or this function returns.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use netmodel::{UpstreamConfig, UpstreamError, UpstreamEvent};
use snapshot_cache::{CacheConfig, SnapshotCache};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use typha_proto::frame::ServerFrame;

use crate::mirror::{Mirror, MirrorError};
use crate::sync::{SyncEvent, SyncStatus};

/// Why local mode stopped before shutdown. None is retryable in-process: each means a bug
/// or a dead upstream, and the agent should exit (and be restarted) rather than go stale.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A frame built by the local cache did not decode.
    #[error("decoding a local frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A frame built by the local cache was not of the expected type.
    #[error("local cache produced an unexpected frame: {0}")]
    UnexpectedFrame(&'static str),
    /// The mirror refused a local frame (a digest mismatch here is a bug).
    #[error("applying a local frame: {0}")]
    Mirror(#[from] MirrorError),
    /// The upstream stopped with an error.
    #[error("upstream stopped: {0}")]
    Upstream(#[from] UpstreamError),
    /// The upstream task ended (or panicked) without being asked to.
    #[error("upstream task ended unexpectedly: {0}")]
    UpstreamEnded(String),
}

/// Runs local mode until `shutdown` fires; returns the mirror as it stands then.
///
/// Events and `status` behave as for [`crate::SyncClient::run`]: [`SyncEvent::Changes`]
/// per applied batch, [`SyncEvent::InSync`] once the upstream has listed everything,
/// `status.applied` published after every applied batch.
pub async fn run_local(
    client: kube::Client,
    config: UpstreamConfig,
    events: mpsc::Sender<SyncEvent>,
    status: Arc<SyncStatus>,
    shutdown: CancellationToken,
) -> Result<Mirror, LocalError> {
    let mut local = Local::new(status);
    let token = shutdown.child_token();
    let (tx, mut rx) = mpsc::channel(64);
    let mut upstream = tokio::spawn(netmodel::run(client, config, tx, token.clone()));
    // Stop the upstream whichever way we leave.
    let _stop = token.clone().drop_guard();
    tracing::info!("local mode: watching the Kubernetes API directly (no typha)");
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = rx.recv() => event,
        };
        match event {
            // Local mode follows one cache: resourceVersions are of no use to it.
            Some(UpstreamEvent::Updates(updates) | UpstreamEvent::Marked { updates, .. }) => {
                if let Some(changes) = local.apply(updates)? {
                    let revision = local.mirror.revision();
                    let event = SyncEvent::Changes {
                        revision,
                        updates: changes,
                    };
                    send(&events, &shutdown, event).await;
                }
            }
            Some(UpstreamEvent::InSync) => {
                let event = local.in_sync();
                send(&events, &shutdown, event).await;
            }
            None => {
                // The upstream only stops on its own with an error (or by panicking).
                let reason = match (&mut upstream).await {
                    Ok(Err(error)) => return Err(error.into()),
                    Ok(Ok(())) => "returned".to_string(),
                    Err(join) => join.to_string(),
                };
                if shutdown.is_cancelled() {
                    return Ok(local.finish());
                }
                return Err(LocalError::UpstreamEnded(reason));
            }
        }
    }
    token.cancel();
    let _ = upstream.await;
    Ok(local.finish())
}

/// Sends an event unless shutdown fires first; a dropped receiver is not an error (the
/// mirror and status remain the source of truth), as in the sync client.
async fn send(events: &mpsc::Sender<SyncEvent>, shutdown: &CancellationToken, event: SyncEvent) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = events.send(event) => {}
    }
}

/// The local cache and the mirror it feeds (pure: no I/O).
struct Local {
    cache: SnapshotCache,
    mirror: Mirror,
    status: Arc<SyncStatus>,
}

impl Local {
    /// An empty cache and a mirror following it from revision 0.
    fn new(status: Arc<SyncStatus>) -> Local {
        // Only the newest breadcrumb is ever read: keep no history.
        let config = CacheConfig {
            max_log_batches: 1,
            max_log_bytes: 0,
            ..CacheConfig::default()
        };
        let cache = SnapshotCache::new(config);
        let mirror = Mirror::following(cache.epoch());
        Local {
            cache,
            mirror,
            status,
        }
    }

    /// Applies one upstream batch to the cache and its breadcrumb to the mirror; the
    /// mirror's changes, or `None` when the batch changed nothing.
    fn apply(
        &mut self,
        updates: Vec<typha_proto::Update>,
    ) -> Result<Option<Vec<typha_proto::Update>>, LocalError> {
        let Some(crumb) = self.cache.apply(updates) else {
            return Ok(None);
        };
        let ServerFrame::Deltas(batch) = ServerFrame::decode(crumb.frame.clone())? else {
            return Err(LocalError::UnexpectedFrame("expected a delta batch"));
        };
        let changes = self.mirror.apply_deltas(batch).inspect_err(|error| {
            self.status.refused(error);
        })?;
        self.status.batch_applied(&self.mirror);
        Ok((!changes.is_empty()).then_some(changes))
    }

    /// Stopped: the mirror no longer follows the API.
    fn finish(self) -> Mirror {
        self.status.out_of_sync();
        self.mirror
    }

    /// Marks the mirror in sync and returns the event announcing it.
    fn in_sync(&self) -> SyncEvent {
        self.status.snapshots.fetch_add(1, Ordering::Relaxed);
        tracing::info!(revision = %self.mirror.revision(), keys = self.mirror.len(), "local mode in sync");
        self.status.in_sync(&self.mirror)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use typha_proto::{Key, Kind, Update, Value, pb};

    fn node(name: &str, addr: &str) -> Update {
        let value = pb::Node {
            name: name.into(),
            ipv4_address: addr.into(),
            ..Default::default()
        };
        Update::new(
            Key::cluster(Kind::Node, name).unwrap(),
            Some(Value::Node(value)),
        )
        .unwrap()
    }

    #[test]
    fn mirror_follows_the_cache_with_digests() {
        let status = Arc::new(SyncStatus::default());
        let mut local = Local::new(status.clone());
        assert!(local.mirror.has_synced());
        assert_eq!(local.mirror.revision().0, 0);

        let changes = local
            .apply(vec![node("a", "1.1.1.1"), node("b", "1.1.1.2")])
            .unwrap()
            .unwrap();
        assert_eq!(changes.len(), 2);
        // A no-op batch changes nothing and emits nothing.
        assert!(local.apply(vec![node("a", "1.1.1.1")]).unwrap().is_none());
        let changes = local
            .apply(vec![
                node("a", "1.1.1.9"),
                Update::delete(Key::cluster(Kind::Node, "b").unwrap()),
            ])
            .unwrap()
            .unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(local.mirror.revision(), local.cache.revision());
        assert_eq!(local.mirror.digest(), local.cache.digest());
        assert_eq!(*status.applied.borrow(), local.cache.revision());
        assert_eq!(status.keys.load(Ordering::Relaxed), 1);

        let SyncEvent::InSync {
            revision,
            digest,
            keys,
        } = local.in_sync()
        else {
            panic!()
        };
        assert_eq!((revision.0, digest, keys), (2, local.cache.digest(), 1));
        assert!(status.in_sync.load(Ordering::Relaxed));
    }
}
