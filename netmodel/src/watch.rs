//! The watch loop: one list-then-watch per resource, converted, batched, sent.
//!
//! Each resource runs as its own stream (`resource.rs`: [`crate::listwatch::list_watch`],
//! kube's default backoff, conversion); all are merged and drained by one loop that owns
//! every [`ResourceState`], so there is no shared mutable state. A batch is "whatever is
//! ready now" (up to `batch_max`), so an API burst becomes few [`UpstreamEvent::Marked`]
//! messages without adding a timer;
//! within a batch each key appears once: a second change of a key starts a new batch (a
//! client of another replica may hold the value in between, so no change is hidden).
//! Each batch carries one [`ResourceMark`] per resource it observed (its resourceVersion
//! after the batch; see [`VersionTracker`]), so replicas agree on positions; an
//! unparsable resourceVersion is counted (`typha_upstream_unparsable_versions_total`)
//! and logged once, and disables cross-replica resume for that resource's changes. A
//! completed list stands for the list's own resourceVersion (not its newest object's),
//! which makes a replica's resume floor exact, and bookmarks advance a resource's
//! version while it does not change (a batch of only those is sent with `progress`
//! set, so the cache passes the advance on to clients). A list version below the one a
//! resource had is a restored datastore: counted
//! (`typha_upstream_datastore_restores_total{resource}`) and logged.
//!
//! Failure policy: watch errors are logged, counted and retried with backoff, never fatal.
//! A watch start refused for its resourceVersion (410 Gone, or 504 "Too large resource
//! version" after the API's datastore was restored with a lower history) restarts the
//! stream with a fresh list (`typha_upstream_forced_relists_total`): retrying the
//! refused position would fail forever.
//! A Calico CRD that is not installed (404) is skipped, retried every `crd_retry`, and
//! does not hold back [`UpstreamEvent::InSync`]; if it disappears, its keys are deleted.
//! The only error `run` returns is a closed downstream channel.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use typha_proto::{Key, ResourceMark, Update};

use crate::Resource;
use crate::convert::ConvertOptions;
use crate::listwatch::ListMode;
use crate::state::{EventVersion, Input, Observed, ResourceState, VersionTracker};
use resource::stream_for;

mod resource;

/// What the upstream tells its consumer.
#[derive(Clone, Debug, PartialEq)]
pub enum UpstreamEvent {
    /// Model updates in order, without resourceVersions (tests and harnesses feed these;
    /// a cache fed one that changes something cannot resume clients of other replicas).
    Updates(Vec<Update>),
    /// Model updates in order with the resourceVersions they stand for: one mark per
    /// API resource the batch's events came from (what [`run`] sends). Either kind may
    /// contain no-ops (the cache drops them and counts them).
    Marked {
        /// The updates.
        updates: Vec<Update>,
        /// Per resource touched: its version after the batch, and whether the changes
        /// came from a list (see [`ResourceMark`]).
        marks: Vec<ResourceMark>,
        /// The batch holds bookmarks (progress without changes): its version advances
        /// are worth sending to clients even if nothing changed.
        progress: bool,
    },
    /// Every watched resource has completed its initial list at least once (or is a CRD
    /// that is not installed). Sent once; after that, relists are just Updates.
    InSync,
}

/// How to watch.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Use watch-list streaming (`sendInitialEvents`) instead of paginated lists.
    pub streaming_lists: bool,
    /// Page size of paginated lists.
    pub page_size: u32,
    /// How often to retry a Calico CRD that is not installed.
    pub crd_retry: Duration,
    /// Most updates in one [`UpstreamEvent::Updates`].
    pub batch_max: usize,
    /// The resources to watch (default: all of [`Resource::ALL`]).
    pub resources: Vec<Resource>,
    /// The prefix of pods' host-side interface names in WorkloadEndpoints (default
    /// `cali`; the first of `--interface-prefix`).
    pub interface_prefix: String,
}

/// What every resource's stream needs besides its API.
#[derive(Clone, Debug)]
struct StreamSettings {
    crd_retry: Duration,
    convert: ConvertOptions,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            streaming_lists: false,
            page_size: 500,
            crd_retry: Duration::from_secs(30),
            batch_max: 1000,
            resources: Resource::ALL.to_vec(),
            interface_prefix: crate::convert::DEFAULT_INTERFACE_PREFIX.to_string(),
        }
    }
}

/// Why [`run`] stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The receiver of upstream events was dropped. Not retryable: the consumer is gone.
    #[error("upstream event channel closed")]
    ChannelClosed,
}

/// What one resource stream reports to the loop.
// Signals pass one at a time through the merged stream: their size does not add up.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Signal {
    /// A converted event and the resourceVersion of its object.
    Input(Input, EventVersion),
    /// The resource's CRD is not installed (404).
    NotInstalled,
}

type Tagged = (Resource, Signal);
type BoxedSignals = Pin<Box<dyn Stream<Item = Tagged> + Send>>;

/// Runs one watcher per resource (exactly one watch per kind per process, however many
/// clients), converting and forwarding events until `shutdown` is cancelled. Errors from
/// the watcher streams are logged, counted (`typha_upstream_watch_errors_total{resource}`)
/// and retried with backoff, never fatal.
pub async fn run(
    client: kube::Client,
    config: UpstreamConfig,
    tx: mpsc::Sender<UpstreamEvent>,
    shutdown: CancellationToken,
) -> Result<(), UpstreamError> {
    let wc = ListMode {
        streaming: config.streaming_lists,
        page_size: config.page_size.max(1),
    };
    let resources: Vec<Resource> = {
        let mut seen = HashSet::new();
        config
            .resources
            .iter()
            .copied()
            .filter(|r| seen.insert(*r))
            .collect()
    };
    let settings = StreamSettings {
        crd_retry: config.crd_retry,
        convert: ConvertOptions {
            interface_prefix: config.interface_prefix.clone(),
        },
    };
    let streams: Vec<BoxedSignals> = resources
        .iter()
        .map(|r| stream_for(*r, &client, wc, &settings))
        .collect();
    let merged = futures::stream::select_all(streams);
    drive(merged, &resources, config.batch_max, tx, shutdown).await
}

/// Accumulates one batch: the last update per key, in the position of the key's first.
#[derive(Default)]
struct Batch {
    updates: Vec<Update>,
    index: HashMap<Key, usize>,
    /// A bookmark was observed in this batch.
    progress: bool,
}

impl Batch {
    fn push(&mut self, update: Update) {
        match self.index.get(&update.key) {
            Some(&i) => self.updates[i] = update,
            None => {
                self.index.insert(update.key.clone(), self.updates.len());
                self.updates.push(update);
            }
        }
    }

    fn len(&self) -> usize {
        self.updates.len()
    }
}

/// The loop: owns the per-resource states, batches, tracks InSync, sends.
async fn drive<S>(
    mut merged: S,
    resources: &[Resource],
    batch_max: usize,
    tx: mpsc::Sender<UpstreamEvent>,
    shutdown: CancellationToken,
) -> Result<(), UpstreamError>
where
    S: Stream<Item = Tagged> + Unpin,
{
    let mut driver = Driver::new(resources, tx, shutdown);
    loop {
        let first = tokio::select! {
            _ = driver.shutdown.cancelled() => return Ok(()),
            item = merged.next() => item,
        };
        let Some(mut item) = first else {
            return Ok(());
        };
        let mut batch = Batch::default();
        loop {
            driver.apply(item, &mut batch).await?;
            if batch.len() >= batch_max.max(1) {
                break;
            }
            match merged.next().now_or_never() {
                Some(Some(next)) => item = next,
                _ => break,
            }
        }
        driver.flush(batch).await?;
        driver.announce_in_sync().await?;
    }
}

/// What the loop owns: every resource's state and version, which CRDs are absent,
/// whether InSync was sent, and where batches go.
struct Driver<'a> {
    resources: &'a [Resource],
    states: HashMap<Resource, ResourceState>,
    versions: HashMap<Resource, VersionTracker>,
    absent: HashSet<Resource>,
    in_sync: bool,
    /// The updates of the signal being applied (a buffer reused across signals).
    scratch: Vec<Update>,
    tx: mpsc::Sender<UpstreamEvent>,
    shutdown: CancellationToken,
}

impl<'a> Driver<'a> {
    fn new(
        resources: &'a [Resource],
        tx: mpsc::Sender<UpstreamEvent>,
        shutdown: CancellationToken,
    ) -> Self {
        Driver {
            resources,
            states: resources
                .iter()
                .map(|r| (*r, ResourceState::new()))
                .collect(),
            versions: resources
                .iter()
                .map(|r| (*r, VersionTracker::new()))
                .collect(),
            absent: HashSet::new(),
            in_sync: false,
            scratch: Vec::new(),
            tx,
            shutdown,
        }
    }

    /// Applies one signal to its resource's state and adds the resulting updates to
    /// `batch`, sending `batch` first if it already holds one of their keys.
    async fn apply(
        &mut self,
        (resource, signal): Tagged,
        batch: &mut Batch,
    ) -> Result<(), UpstreamError> {
        let state = self.states.entry(resource).or_default();
        let (input, version) = match signal {
            Signal::Input(input, version) => {
                if matches!(input, Input::Init | Input::InitApply(_) | Input::InitDone) {
                    self.absent.remove(&resource);
                }
                (input, version)
            }
            Signal::NotInstalled => {
                self.absent.insert(resource);
                (Input::Gone, EventVersion::NoObject)
            }
        };
        let observed = Observed::of(&input);
        let bookmark = matches!(input, Input::Progress);
        state.apply(input, &mut self.scratch);
        // A key changes at most once per batch: a client of another replica may hold
        // the value in between, which a coalesced batch would hide from the history.
        if self
            .scratch
            .iter()
            .any(|u| batch.index.contains_key(&u.key))
        {
            self.flush(std::mem::take(batch)).await?;
        }
        self.track_version(resource, observed, version);
        batch.progress |= bookmark;
        self.scratch.drain(..).for_each(|u| batch.push(u));
        Ok(())
    }

    /// Moves `resource`'s version past what the applied signal observed, counting an
    /// unparsable version and a restored datastore.
    fn track_version(&mut self, resource: Resource, observed: Observed, version: EventVersion) {
        let tracker = self.versions.entry(resource).or_default();
        let before = tracker.version();
        if tracker.observe(observed, version, self.scratch.len()) {
            unparsable(resource);
        }
        if tracker.version() < before {
            restored(resource, before, tracker.version());
        }
    }

    /// Sends one batch with the marks of the resources observed since the last one.
    async fn flush(&mut self, batch: Batch) -> Result<(), UpstreamError> {
        let versions = &mut self.versions;
        let marks: Vec<ResourceMark> = self
            .resources
            .iter()
            .filter_map(|r| versions.get_mut(r)?.take_mark(r.as_str()))
            .collect();
        if batch.updates.is_empty() && marks.is_empty() {
            return Ok(());
        }
        let event = UpstreamEvent::Marked {
            updates: batch.updates,
            marks,
            progress: batch.progress,
        };
        send(&self.tx, &self.shutdown, event).await
    }

    /// Sends InSync once every resource has listed (or is a CRD that is not installed).
    async fn announce_in_sync(&mut self) -> Result<(), UpstreamError> {
        if self.in_sync
            || !self
                .states
                .iter()
                .all(|(r, s)| s.is_synced() || self.absent.contains(r))
        {
            return Ok(());
        }
        self.in_sync = true;
        tracing::info!("upstream in sync");
        send(&self.tx, &self.shutdown, UpstreamEvent::InSync).await
    }
}

/// Counts (and logs once per stretch) a resourceVersion that does not parse.
fn unparsable(resource: Resource) {
    metrics::counter!("typha_upstream_unparsable_versions_total", "resource" => resource.as_str())
        .increment(1);
    tracing::warn!(
        resource = resource.as_str(),
        "resourceVersion is not an integer: clients of other replicas resume with a snapshot"
    );
}

/// Counts and logs a list whose version is below the resource's: a restored datastore.
fn restored(resource: Resource, before: Option<u64>, now: Option<u64>) {
    metrics::counter!("typha_upstream_datastore_restores_total", "resource" => resource.as_str())
        .increment(1);
    tracing::warn!(
        resource = resource.as_str(),
        ?before,
        ?now,
        "resourceVersion went down (datastore restored): older positions get a snapshot"
    );
}

async fn send(
    tx: &mpsc::Sender<UpstreamEvent>,
    shutdown: &CancellationToken,
    event: UpstreamEvent,
) -> Result<(), UpstreamError> {
    tokio::select! {
        // Shutting down: dropping the event is fine, nobody will read it.
        _ = shutdown.cancelled() => Ok(()),
        sent = tx.send(event) => sent.map_err(|_| UpstreamError::ChannelClosed),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
