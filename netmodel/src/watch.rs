//! The watch loop: one list-then-watch per resource, converted, batched, sent.
//!
//! Each resource runs as its own stream ([`list_watch`] + kube's default backoff +
//! conversion);
//! all are merged and drained by one loop that owns every [`ResourceState`], so there is
//! no shared mutable state. A batch is "whatever is ready now" (up to `batch_max`), so an
//! API burst becomes few [`UpstreamEvent::Marked`] messages without adding a timer;
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
use std::fmt::Debug;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::listwatch::{ListMode, Step, list_watch};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use typha_proto::{Key, Update};

use super::convert::{ConvertOptions, ToModel, convert_delete, convert_with, object_name};
use super::crd::{
    CalicoObject, ClusterInformation, FelixConfiguration, GlobalNetworkPolicy, GlobalNetworkSet,
    HostEndpoint, IPPool, NetworkPolicy, NetworkSet,
};
use super::state::{EventVersion, Input, Observed, ResourceState, VersionTracker};
use super::{Rejection, Resource};
use typha_proto::ResourceMark;

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

/// A Calico custom resource as the watch decodes it.
type Crd<T> = CalicoObject<T>;

fn stream_for(
    resource: Resource,
    c: &kube::Client,
    mode: ListMode,
    s: &StreamSettings,
) -> BoxedSignals {
    match resource {
        Resource::Pods => resource_stream::<Pod>(c, mode, s),
        Resource::Namespaces => resource_stream::<Namespace>(c, mode, s),
        Resource::ServiceAccounts => resource_stream::<ServiceAccount>(c, mode, s),
        Resource::Nodes => resource_stream::<Node>(c, mode, s),
        Resource::KubernetesNetworkPolicies => resource_stream::<K8sNetworkPolicy>(c, mode, s),
        Resource::NetworkPolicies => resource_stream::<Crd<NetworkPolicy>>(c, mode, s),
        Resource::GlobalNetworkPolicies => resource_stream::<Crd<GlobalNetworkPolicy>>(c, mode, s),
        Resource::GlobalNetworkSets => resource_stream::<Crd<GlobalNetworkSet>>(c, mode, s),
        Resource::NetworkSets => resource_stream::<Crd<NetworkSet>>(c, mode, s),
        Resource::HostEndpoints => resource_stream::<Crd<HostEndpoint>>(c, mode, s),
        Resource::IpPools => resource_stream::<Crd<IPPool>>(c, mode, s),
        Resource::FelixConfigurations => resource_stream::<Crd<FelixConfiguration>>(c, mode, s),
        Resource::ClusterInformations => resource_stream::<Crd<ClusterInformation>>(c, mode, s),
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// Whether the API server refused the watcher's resourceVersion in a way kube's watcher
/// does not recover from by itself: 410 Gone at watch start (it retries the same
/// position forever), or 504 "Too large resource version" (a position the server never
/// issued: it was restored with an older history). Both need a fresh list.
fn position_refused(e: &watcher::Error) -> bool {
    let too_large = |s: &kube::core::Status| {
        s.code == 504
            && (s.message.contains("Too large resource version")
                || s.details.as_ref().is_some_and(|d| {
                    d.causes
                        .iter()
                        .any(|c| c.reason == "ResourceVersionTooLarge")
                }))
    };
    match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 410 || too_large(s),
        watcher::Error::WatchError(s) => too_large(s),
        _ => false,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Logs a rejection once per (object, error) and counts every occurrence.
struct RejectionLog {
    seen: HashMap<String, String>,
}

impl RejectionLog {
    fn note(&mut self, r: &Rejection) {
        metrics::counter!(
            "typha_upstream_rejected_total",
            "kind" => r.resource.model_kind().as_str(),
            "reason" => r.error.reason()
        )
        .increment(1);
        let error = r.error.to_string();
        if self.seen.get(&r.object) != Some(&error) {
            tracing::warn!(resource = r.resource.as_str(), object = %r.object, reason = r.error.reason(), %error, "rejected object");
            self.seen.insert(r.object.clone(), error);
        }
    }

    fn clear<K: kube::Resource>(&mut self, obj: &K) {
        if !self.seen.is_empty() {
            self.seen.remove(&object_name(obj));
        }
    }
}

/// The resourceVersion a step stands for: its object's, or the list's own at its end,
/// or a bookmark's.
fn event_version<K: kube::Resource>(step: &Step<K>) -> EventVersion {
    match step {
        Step::Applied(obj) | Step::Listed(obj) | Step::Deleted(obj) => {
            EventVersion::parse(obj.meta().resource_version.as_deref())
        }
        Step::ListDone(version) | Step::Progress(version) => EventVersion::parse(Some(version)),
        Step::Init => EventVersion::NoObject,
    }
}

/// Converts one step into loop inputs (rejections become deletes of their key).
fn inputs<K>(event: Step<K>, log: &mut RejectionLog, options: &ConvertOptions) -> Vec<Input>
where
    K: ToModel + kube::Resource,
{
    let mut applied = |obj: &K, init: bool| -> Option<Input> {
        let update = match convert_with(obj, options) {
            Ok(u) => {
                log.clear(obj);
                u
            }
            Err(r) => {
                log.note(&r);
                r.to_delete()?
            }
        };
        Some(if init {
            Input::InitApply(update)
        } else {
            Input::Apply(update)
        })
    };
    match event {
        Step::Applied(obj) => applied(&obj, false).into_iter().collect(),
        Step::Listed(obj) => applied(&obj, true).into_iter().collect(),
        Step::Deleted(obj) => match convert_delete(&obj) {
            Ok(u) => vec![Input::Delete(u.key)],
            Err(r) => {
                log.note(&r);
                Vec::new()
            }
        },
        Step::Init => vec![Input::Init],
        Step::ListDone(_) => vec![Input::InitDone],
        Step::Progress(_) => vec![Input::Progress],
    }
}

/// One resource: list-then-watch with kube's default backoff, conversion, and the
/// CRD-absent retry.
fn resource_stream<K>(
    client: &kube::Client,
    wc: ListMode,
    settings: &StreamSettings,
) -> BoxedSignals
where
    K: ToModel + kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let api = Api::<K>::all(client.clone());
    let StreamSettings { crd_retry, convert } = settings.clone();
    let resource = K::RESOURCE;
    let name = resource.as_str();
    Box::pin(async_stream::stream! {
        let mut log = RejectionLog { seen: HashMap::new() };
        // Log a missing CRD once, not on every retry.
        let mut reported_absent = false;
        // Log an unreachable API server by state changes, not per retry.
        let mut outage = crate::outage::Outage::default();
        metrics::gauge!("typha_upstream_api_reachable", "resource" => name).set(1.0);
        // Per-event metrics: registered once, not looked up per object of a large list.
        let events_total = metrics::counter!("typha_upstream_events_total", "resource" => name);
        let last_event =
            metrics::gauge!("typha_upstream_last_event_timestamp_seconds", "resource" => name);
        loop {
            let mut events = std::pin::pin!(list_watch(api.clone(), wc).default_backoff());
            let mut absent = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        // The stream yields `Init` as it starts a list, before asking the
                        // API anything: only what the API answered proves it reachable
                        // (otherwise every retry of an outage logged "back" then "down").
                        if !matches!(event, Step::Init)
                            && let Some(change) = outage.success(tokio::time::Instant::now())
                        {
                            crate::outage::report(name, change, None);
                        }
                        if reported_absent && matches!(event, Step::Init) {
                            tracing::info!(resource = name, "CRD installed; watching");
                            reported_absent = false;
                        }
                        events_total.increment(1);
                        last_event.set(unix_now());
                        let version = event_version(&event);
                        for input in inputs(event, &mut log, &convert) {
                            yield (resource, Signal::Input(input, version));
                        }
                    }
                    Err(e) if resource.is_crd() && is_not_found(&e) => {
                        if !reported_absent {
                            tracing::info!(resource = name, retry = ?crd_retry, "CRD not installed; skipping");
                        }
                        reported_absent = true;
                        absent = true;
                        break;
                    }
                    Err(e) if position_refused(&e) => {
                        // A refused position fails forever; only a fresh list gets a
                        // valid one.
                        metrics::counter!("typha_upstream_watch_errors_total", "resource" => name).increment(1);
                        metrics::counter!("typha_upstream_forced_relists_total", "resource" => name).increment(1);
                        tracing::warn!(resource = name, error = %e, "resourceVersion refused by the API server; relisting");
                        break;
                    }
                    Err(e) => {
                        metrics::counter!("typha_upstream_watch_errors_total", "resource" => name).increment(1);
                        match outage.failure(tokio::time::Instant::now()) {
                            Some(change) => crate::outage::report(name, change, Some(&e)),
                            None => tracing::debug!(resource = name, error = %e, "watch error; retrying with backoff"),
                        }
                    }
                }
            }
            if absent {
                yield (resource, Signal::NotInstalled);
                tokio::time::sleep(crd_retry).await;
            }
        }
    })
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
    let mut states: HashMap<Resource, ResourceState> = resources
        .iter()
        .map(|r| (*r, ResourceState::new()))
        .collect();
    let mut versions: HashMap<Resource, VersionTracker> = resources
        .iter()
        .map(|r| (*r, VersionTracker::new()))
        .collect();
    let mut absent: HashSet<Resource> = HashSet::new();
    let mut in_sync = false;
    let mut scratch = Vec::new();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            item = merged.next() => item,
        };
        let Some(mut item) = first else {
            return Ok(());
        };
        let mut batch = Batch::default();
        loop {
            let (resource, signal) = item;
            let state = states.entry(resource).or_default();
            let (input, version) = match signal {
                Signal::Input(input, version) => {
                    if matches!(input, Input::Init | Input::InitApply(_) | Input::InitDone) {
                        absent.remove(&resource);
                    }
                    (input, version)
                }
                Signal::NotInstalled => {
                    absent.insert(resource);
                    (Input::Gone, EventVersion::NoObject)
                }
            };
            let observed = Observed::of(&input);
            let bookmark = matches!(input, Input::Progress);
            state.apply(input, &mut scratch);
            // A key changes at most once per batch: a client of another replica may hold
            // the value in between, which a coalesced batch would hide from the history.
            if scratch.iter().any(|u| batch.index.contains_key(&u.key)) {
                let full = std::mem::take(&mut batch);
                flush(full, resources, &mut versions, &tx, &shutdown).await?;
            }
            let tracker = versions.entry(resource).or_default();
            let before = tracker.version();
            if tracker.observe(observed, version, scratch.len()) {
                unparsable(resource);
            }
            if tracker.version() < before {
                restored(resource, before, tracker.version());
            }
            batch.progress |= bookmark;
            scratch.drain(..).for_each(|u| batch.push(u));
            if batch.len() >= batch_max.max(1) {
                break;
            }
            match merged.next().now_or_never() {
                Some(Some(next)) => item = next,
                _ => break,
            }
        }
        flush(batch, resources, &mut versions, &tx, &shutdown).await?;
        if !in_sync
            && states
                .iter()
                .all(|(r, s)| s.is_synced() || absent.contains(r))
        {
            in_sync = true;
            tracing::info!("upstream in sync");
            send(&tx, &shutdown, UpstreamEvent::InSync).await?;
        }
    }
}

/// Sends one batch with the marks of the resources observed since the last one.
async fn flush(
    batch: Batch,
    resources: &[Resource],
    versions: &mut HashMap<Resource, VersionTracker>,
    tx: &mpsc::Sender<UpstreamEvent>,
    shutdown: &CancellationToken,
) -> Result<(), UpstreamError> {
    let marks: Vec<ResourceMark> = resources
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
    send(tx, shutdown, event).await
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
