//! The hub: owns the one [`SnapshotCache`], feeds it from the upstream event stream and
//! publishes its history to every client session.
//!
//! Sessions never copy the state. They hold a revision cursor, wait on a `watch` channel
//! for a newer revision, and read shared breadcrumbs (pre-encoded frames) from the cache
//! under a short read lock. Snapshots are built from the cache, compressed once on a
//! blocking thread, memoized, and shared by every client that needs one until the cache
//! history no longer covers them or they are older than `snapshot_max_age`.
//!
//! Cross-replica resume: the hub marks the cache's base when the upstream is first in
//! sync, and answers a client's version vector with a [`Rebase`] (waiting a bounded time
//! when the client is ahead of this replica). Per-hub session counters
//! ([`SessionStats`]) let tests tell replicas in one process apart, which the global
//! metrics cannot.
//!
//! Invariants: the published revision only grows; a memoized snapshot's revision is never
//! newer than the cache's; nothing here blocks the runtime for longer than one batch
//! apply or one raw snapshot concatenation (compression runs off the runtime).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use typha_proto::{Digest, Revision, Update, VersionVector};

use netmodel::UpstreamEvent;
use snapshot_cache::{
    self, Breadcrumb, CacheConfig, CacheError, CacheStats, DeltasSince, EncodedSnapshot, Rebase,
    RebaseRefusal, ResourceMark, SnapshotCache,
};

/// Tuning for the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The cache's history and chunking bounds.
    pub cache: CacheConfig,
    /// A memoized snapshot older than this is rebuilt for the next client that asks
    /// (clients that get an older one catch up through deltas).
    pub snapshot_max_age: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            // No session starts before the upstream is in sync, so the initial list's
            // breadcrumbs (a second copy of the whole state as frames) are not kept.
            cache: CacheConfig {
                history_before_sync: false,
                ..CacheConfig::default()
            },
            snapshot_max_age: Duration::from_secs(10),
        }
    }
}

/// Errors from the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Building or compressing a snapshot failed. Retryable (the next client rebuilds).
    #[error("building snapshot: {0}")]
    Snapshot(#[from] CacheError),
    /// The blocking compression task panicked or was cancelled. Retryable.
    #[error("snapshot task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How the sessions of one hub started: snapshots and resumes (the metrics count the
/// same, process-wide).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Snapshots sent.
    pub snapshots_sent: u64,
    /// Resumes of clients that followed this hub's own history.
    pub resumes_same_replica: u64,
    /// Resumes of clients that followed another replica (one rebase batch each).
    pub resumes_cross_replica: u64,
    /// Clients that sent a resume position and got a snapshot.
    pub resume_refusals: u64,
}

#[derive(Default)]
struct SessionCounters {
    snapshots_sent: AtomicU64,
    resumes_same_replica: AtomicU64,
    resumes_cross_replica: AtomicU64,
    resume_refusals: AtomicU64,
}

/// How a session started, for [`Hub::count_session_start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStart {
    /// A snapshot was sent.
    Snapshot,
    /// Resumed on this hub's own history.
    SameReplica,
    /// Resumed from a version vector with one rebase batch.
    CrossReplica,
}

struct Memo {
    snapshot: Arc<EncodedSnapshot>,
    built_at: Instant,
}

struct Shared {
    cache: RwLock<SnapshotCache>,
    epoch: String,
    revision: watch::Sender<Revision>,
    /// The cache's counters after every batch, changed or not: what a no-op batch did is
    /// observable (tests and the load test await it rather than poll).
    stats: watch::Sender<CacheStats>,
    in_sync: watch::Sender<bool>,
    memo: Mutex<Option<Memo>>,
    config: HubConfig,
    sessions: SessionCounters,
}

/// Where this replica stands per resource, for the `typha_resource_version` and
/// `typha_resume_floor` gauges: an operator (or a test) compares one replica's floor with
/// the others' versions to know whether their clients would be resumed there.
struct Positions {
    versions: VersionVector,
    /// `None` until every resource's floor is known.
    floor: Option<VersionVector>,
}

impl Positions {
    fn of(cache: &SnapshotCache) -> Positions {
        let (floor, unknown) = cache.version_floor();
        Positions {
            versions: cache.versions().clone(),
            floor: unknown.is_empty().then(|| floor.clone()),
        }
    }

    /// Sets the gauges (outside the cache's lock: the recorder takes its own).
    fn publish(&self) {
        for (resource, version) in self.versions.iter() {
            metrics::gauge!("typha_resource_version", "resource" => resource.to_string())
                .set(version as f64);
        }
        for (resource, version) in self.floor.iter().flat_map(|f| f.iter()) {
            metrics::gauge!("typha_resume_floor", "resource" => resource.to_string())
                .set(version as f64);
        }
    }
}

/// A read-only view of whether the upstream is in sync: what readiness, the rebalancer
/// and the bootstrap need from the hub, and no more. Clones share the flag.
#[derive(Clone, Debug)]
pub struct InSyncWatch(watch::Receiver<bool>);

impl InSyncWatch {
    /// Whether the upstream has been in sync.
    pub fn is_in_sync(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the upstream is in sync.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An Err means the hub is gone; nothing will change any more.
        let _ = rx.wait_for(|in_sync| *in_sync).await;
    }
}

/// A cheap, clonable handle to the one cache and its publication channels.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl Hub {
    /// An empty hub, not yet in sync.
    pub fn new(config: HubConfig) -> Hub {
        let cache = SnapshotCache::new(config.cache.clone());
        let epoch = cache.epoch().to_string();
        let (revision, _) = watch::channel(cache.revision());
        let (stats, _) = watch::channel(cache.stats());
        let (in_sync, _) = watch::channel(false);
        Hub {
            shared: Arc::new(Shared {
                cache: RwLock::new(cache),
                epoch,
                revision,
                stats,
                in_sync,
                memo: Mutex::new(None),
                config,
                sessions: SessionCounters::default(),
            }),
        }
    }

    /// The identity of this hub's history; resume positions from another epoch are
    /// answered with a snapshot.
    pub fn epoch(&self) -> &str {
        &self.shared.epoch
    }

    /// Applies one batch without resourceVersions (see [`SnapshotCache::apply`]) and
    /// publishes the new revision, if anything changed.
    pub fn apply(&self, updates: Vec<Update>) -> Option<Arc<Breadcrumb>> {
        self.apply_marked(updates, &[])
    }

    /// Applies one batch with the resourceVersions it stands for (see
    /// [`SnapshotCache::apply_marked`]) and publishes the new revision, if anything
    /// changed.
    pub fn apply_marked(
        &self,
        updates: Vec<Update>,
        marks: &[ResourceMark],
    ) -> Option<Arc<Breadcrumb>> {
        self.apply_upstream(updates, marks, false)
    }

    /// Applies one upstream batch, which may hold bookmarks (see
    /// [`SnapshotCache::apply_upstream`]), and publishes the new revision, if there is
    /// one.
    pub fn apply_upstream(
        &self,
        updates: Vec<Update>,
        marks: &[ResourceMark],
        progress: bool,
    ) -> Option<Arc<Breadcrumb>> {
        let (crumb, keys, held, stats, positions) = {
            let mut cache = self.shared.cache.write();
            let crumb = cache.apply_upstream(updates, marks, progress);
            // Marks move the versions (even in a batch that makes no breadcrumb); a new
            // breadcrumb may trim the history, which moves the floor.
            let positions = (crumb.is_some() || !marks.is_empty()).then(|| Positions::of(&cache));
            (
                crumb,
                cache.len(),
                cache.held_bytes(),
                cache.stats(),
                positions,
            )
        };
        self.shared.stats.send_replace(stats);
        if let Some(positions) = positions {
            positions.publish();
        }
        let crumb = crumb?;
        metrics::gauge!("typha_snapshot_keys").set(keys as f64);
        metrics::gauge!("typha_cache_held_bytes").set(held as f64);
        metrics::counter!("typha_delta_batches_total").increment(1);
        metrics::counter!("typha_delta_updates_total").increment(crumb.updates.len() as u64);
        self.shared.revision.send_replace(crumb.revision);
        Some(crumb)
    }

    /// Marks the upstream as in sync (every kind listed): sessions may start streaming,
    /// and (the first time) the state now is the base of cross-replica resumes.
    ///
    /// The only writer of `typha_upstream_in_sync`: the gauge follows the flag readiness
    /// reads, so the two cannot disagree.
    pub fn set_in_sync(&self, in_sync: bool) {
        if in_sync {
            let mut cache = self.shared.cache.write();
            cache.mark_in_sync();
            let positions = Positions::of(&cache);
            drop(cache);
            positions.publish();
        }
        self.shared.in_sync.send_replace(in_sync);
        metrics::gauge!("typha_upstream_in_sync").set(if in_sync { 1.0 } else { 0.0 });
    }

    /// Whether the upstream has been in sync.
    pub fn is_in_sync(&self) -> bool {
        *self.shared.in_sync.borrow()
    }

    /// Waits until the upstream is in sync.
    pub async fn wait_in_sync(&self) {
        self.in_sync_watch().wait().await;
    }

    /// The read-only in-sync flag, for parts that need nothing else of the hub.
    pub fn in_sync_watch(&self) -> InSyncWatch {
        InSyncWatch(self.shared.in_sync.subscribe())
    }

    /// A receiver of the latest revision, for sessions to wait on.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.shared.revision.subscribe()
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        *self.shared.revision.borrow()
    }

    /// The current digest.
    pub fn digest(&self) -> Digest {
        self.shared.cache.read().digest()
    }

    /// The number of keys in the state.
    pub fn len(&self) -> usize {
        self.shared.cache.read().len()
    }

    /// The bytes the cache holds by its own accounting (see
    /// [`SnapshotCache::held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.shared.cache.read().held_bytes()
    }

    /// Whether the state is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The current version vector.
    pub fn versions(&self) -> VersionVector {
        self.shared.cache.read().versions().clone()
    }

    /// The history's floor for cross-replica resumes: a client at or above it for every
    /// resource (and not above [`Self::versions`]) is resumed; `None` while some
    /// resource's floor is unknown (see [`SnapshotCache::version_floor`]).
    pub fn version_floor(&self) -> Option<VersionVector> {
        let cache = self.shared.cache.read();
        let (floor, unknown) = cache.version_floor();
        unknown.is_empty().then(|| floor.clone())
    }

    /// The rebase of a client that followed another replica, at vector `client` (see
    /// [`SnapshotCache::rebase`]). A client ahead of this replica is given up to
    /// `catch_up` for this replica to get there; past that, or for any other refusal,
    /// the refusal.
    pub async fn rebase(
        &self,
        client: &VersionVector,
        catch_up: Duration,
    ) -> Result<Rebase, RebaseRefusal> {
        let mut batches = self.shared.stats.subscribe();
        let deadline = tokio::time::Instant::now() + catch_up;
        loop {
            batches.mark_unchanged();
            match self.shared.cache.read().rebase(client) {
                Err(RebaseRefusal::Ahead(resource)) => {
                    tracing::debug!(resource, "client ahead of this replica; waiting");
                }
                done => return done,
            }
            // Every applied batch (changed or not) is published on the stats watch.
            match tokio::time::timeout_at(deadline, batches.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.shared.cache.read().rebase(client),
            }
        }
    }

    /// Counts how a session started (per hub, besides the global metrics).
    pub fn count_session_start(&self, start: SessionStart) {
        let counter = match start {
            SessionStart::Snapshot => &self.shared.sessions.snapshots_sent,
            SessionStart::SameReplica => &self.shared.sessions.resumes_same_replica,
            SessionStart::CrossReplica => &self.shared.sessions.resumes_cross_replica,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client whose resume position was refused.
    pub fn count_resume_refusal(&self) {
        self.shared
            .sessions
            .resume_refusals
            .fetch_add(1, Ordering::Relaxed);
    }

    /// This hub's session counters.
    pub fn session_stats(&self) -> SessionStats {
        let s = &self.shared.sessions;
        SessionStats {
            snapshots_sent: s.snapshots_sent.load(Ordering::Relaxed),
            resumes_same_replica: s.resumes_same_replica.load(Ordering::Relaxed),
            resumes_cross_replica: s.resumes_cross_replica.load(Ordering::Relaxed),
            resume_refusals: s.resume_refusals.load(Ordering::Relaxed),
        }
    }

    /// Whether the history still covers a client at `since` (see [`SnapshotCache::covers`]).
    pub fn covers(&self, since: Revision) -> bool {
        self.shared.cache.read().covers(since)
    }

    /// The breadcrumbs after `since`.
    pub fn deltas_since(&self, since: Revision) -> DeltasSince {
        self.shared.cache.read().deltas_since(since)
    }

    /// Waits until the cache's counters satisfy `done` (checked now and after every
    /// batch the hub applies, including batches that changed nothing).
    pub async fn wait_stats(&self, done: impl Fn(&CacheStats) -> bool) {
        let mut rx = self.shared.stats.subscribe();
        // An Err means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|stats| done(stats)).await;
    }

    /// The cache's counters.
    pub fn stats(&self) -> CacheStats {
        self.shared.cache.read().stats()
    }

    /// A snapshot for a new client: the memoized one while it is fresh and the history
    /// still covers it, else a new one (built once, however many clients wait for it).
    pub async fn snapshot(&self) -> Result<Arc<EncodedSnapshot>, HubError> {
        let mut memo = self.shared.memo.lock().await;
        if let Some(m) = memo.as_ref() {
            let fresh = m.built_at.elapsed() <= self.shared.config.snapshot_max_age;
            let covered = self.covers(m.snapshot.revision);
            if fresh && covered {
                return Ok(m.snapshot.clone());
            }
        }
        let started = Instant::now();
        let raw = self.shared.cache.read().build_snapshot();
        let level = self.shared.config.cache.zstd_level;
        let encoded =
            tokio::task::spawn_blocking(move || snapshot_cache::compress(&raw, level)).await??;
        let snapshot = Arc::new(encoded);
        metrics::histogram!("typha_snapshot_build_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("typha_snapshot_raw_bytes").set(snapshot.raw_bytes as f64);
        metrics::gauge!("typha_snapshot_compressed_bytes").set(snapshot.compressed_bytes as f64);
        metrics::counter!("typha_snapshots_built_total").increment(1);
        *memo = Some(Memo {
            snapshot: snapshot.clone(),
            built_at: Instant::now(),
        });
        Ok(snapshot)
    }

    /// Consumes upstream events until the channel closes or `shutdown` fires.
    pub async fn run(self, mut events: mpsc::Receiver<UpstreamEvent>, shutdown: CancellationToken) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Some(UpstreamEvent::Updates(updates)) => {
                    self.apply(updates);
                }
                Some(UpstreamEvent::Marked {
                    updates,
                    marks,
                    progress,
                }) => {
                    self.apply_upstream(updates, &marks, progress);
                }
                Some(UpstreamEvent::InSync) => {
                    tracing::info!(revision = %self.revision(), keys = self.len(), "upstream in sync");
                    self.set_in_sync(true);
                }
                None => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// The gauge and the flag readiness reads move together, and the read-only view
    /// sees what the hub sets.
    #[tokio::test]
    async fn in_sync_sets_the_flag_the_view_and_the_gauge() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let hub = Hub::new(HubConfig::default());
        let view = hub.in_sync_watch();
        assert!(!view.is_in_sync());
        hub.set_in_sync(true);
        view.wait().await;
        assert!(view.is_in_sync() && hub.is_in_sync());
        let gauge = snap
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(k, ..)| k.key().name() == "typha_upstream_in_sync")
            .map(|(.., v)| v);
        assert_eq!(gauge, Some(DebugValue::Gauge(1.0.into())));
    }

    /// Every per-resource gauge: (name, resource) -> value. One snapshot per call (the
    /// debugging recorder's snapshot takes the values).
    fn per_resource(
        snap: &metrics_util::debugging::Snapshotter,
    ) -> std::collections::BTreeMap<(String, String), f64> {
        snap.snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(k, _, _, v)| {
                let resource = k.key().labels().find(|l| l.key() == "resource")?;
                let name = k.key().name().to_string();
                match v {
                    DebugValue::Gauge(g) => {
                        Some(((name, resource.value().to_string()), g.into_inner()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// The list's resourceVersion is the floor; events and bookmarks move the version,
    /// and a history trimmed past the list moves the floor.
    #[tokio::test]
    async fn versions_and_the_resume_floor_are_gauges_per_resource() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let hub = Hub::new(HubConfig {
            cache: CacheConfig {
                max_log_batches: 2,
                ..HubConfig::default().cache
            },
            ..HubConfig::default()
        });
        let node = |name: &str| {
            let key = typha_proto::Key::new(typha_proto::Kind::Node, "", name).unwrap();
            let value = typha_proto::Value::Node(typha_proto::pb::Node {
                name: name.to_string(),
                ..Default::default()
            });
            Update::new(key, Some(value)).unwrap()
        };
        hub.apply_marked(vec![node("a")], &[ResourceMark::listed("nodes", Some(10))]);
        hub.set_in_sync(true);
        let at = |name: &str| (name.to_string(), "nodes".to_string());
        let gauges = per_resource(&snap);
        assert_eq!(gauges[&at("typha_resource_version")], 10.0);
        assert_eq!(gauges[&at("typha_resume_floor")], 10.0);

        hub.apply_upstream(vec![], &[ResourceMark::watched("nodes", 12)], true);
        let gauges = per_resource(&snap);
        assert_eq!(gauges[&at("typha_resource_version")], 12.0);
        assert_eq!(gauges[&at("typha_resume_floor")], 10.0);

        for (i, rv) in [13, 14, 15].into_iter().enumerate() {
            let name = format!("n{i}");
            hub.apply_marked(vec![node(&name)], &[ResourceMark::watched("nodes", rv)]);
        }
        let gauges = per_resource(&snap);
        assert_eq!(gauges[&at("typha_resource_version")], 15.0);
        let floor = gauges[&at("typha_resume_floor")];
        assert!(floor > 10.0, "a trimmed history moves the floor: {floor}");

        // A watched event that changes nothing makes no breadcrumb, but the version moves.
        assert!(
            hub.apply_marked(vec![], &[ResourceMark::watched("nodes", 20)])
                .is_none()
        );
        assert_eq!(per_resource(&snap)[&at("typha_resource_version")], 20.0);
    }
}
