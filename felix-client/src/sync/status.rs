//! [`SyncStatus`]: what a running sync client (or local mode) publishes about itself:
//! the applied revision and digest as watches that tests and the load test await, and
//! counters read by health and metrics. Shared and lock-free; written only by the client.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;
use typha_proto::{Digest, Revision};

use super::SyncEvent;
use crate::health::SyncProgress;
use crate::mirror::{Mirror, MirrorError};

/// Live counters of one sync client (also exported as `felix_sync_*` metrics).
#[derive(Debug)]
pub struct SyncStatus {
    /// The revision the mirror is at, published after every applied snapshot or batch
    /// (tests and the load test await it instead of polling).
    pub applied: watch::Sender<Revision>,
    /// The mirror's digest, published with `applied` (lets a caller compare a running
    /// client's state without stopping it).
    pub digest: watch::Sender<Digest>,
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
    /// Whether the mirror has been in sync at least once.
    pub synced_once: AtomicBool,
    /// Reconnects after a goodbye that is not a failure (rebalance, shutdown, resync).
    pub goodbyes: AtomicU64,
    /// Reconnects after a failure (connect error, broken session, protocol goodbye).
    pub failures: AtomicU64,
    /// The typha (HOST:PORT) of the current session once it answered; `None` between
    /// sessions, set after the ended session was counted (tests await it).
    pub endpoint: watch::Sender<Option<String>>,
}

impl Default for SyncStatus {
    fn default() -> Self {
        SyncStatus {
            applied: watch::Sender::new(Revision::default()),
            digest: watch::Sender::new(Digest::default()),
            in_sync: AtomicBool::default(),
            keys: AtomicU64::default(),
            reconnects: AtomicU64::default(),
            snapshots: AtomicU64::default(),
            resumes: AtomicU64::default(),
            digest_mismatches: AtomicU64::default(),
            batches: AtomicU64::default(),
            synced_once: AtomicBool::default(),
            goodbyes: AtomicU64::default(),
            failures: AtomicU64::default(),
            endpoint: watch::Sender::new(None),
        }
    }
}

impl SyncStatus {
    /// The mirror equals its source's state: publishes that and returns the event.
    pub(crate) fn in_sync(&self, mirror: &Mirror) -> SyncEvent {
        let keys = mirror.len();
        self.in_sync.store(true, Ordering::Relaxed);
        self.synced_once.store(true, Ordering::Relaxed);
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

    /// Whether the mirror has been in sync at least once.
    pub fn has_synced(&self) -> bool {
        self.synced_once.load(Ordering::Relaxed)
    }

    /// Snapshots plus resumes: how many times a session reached in-sync.
    pub(super) fn syncs(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed) + self.resumes.load(Ordering::Relaxed)
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
        self.digest.send_replace(mirror.digest());
        self.applied.send_replace(mirror.revision());
    }
}

impl SyncProgress for SyncStatus {
    fn is_in_sync(&self) -> bool {
        self.in_sync.load(Ordering::Relaxed)
    }

    fn has_synced(&self) -> bool {
        SyncStatus::has_synced(self)
    }
}
