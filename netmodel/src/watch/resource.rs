//! One resource's stream into the watch loop: list-then-watch ([`list_watch`]) with
//! kube's default backoff, conversion to model inputs (rejected objects become deletes
//! of their key, logged once per object and error), and error handling: a missing CRD
//! is reported as [`Signal::NotInstalled`] and retried every `crd_retry`, a refused
//! resourceVersion forces a fresh list, anything else is retried with backoff while the
//! API server's reachability is logged by its state changes ([`crate::outage`]).
//!
//! Invariant: the stream never ends and never fails; everything it knows reaches the
//! loop as [`Signal`]s tagged with the resource.

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use super::{BoxedSignals, Signal, StreamSettings};
use crate::convert::{ConvertOptions, ToModel, convert_delete, convert_with, object_name};
use crate::crd::{
    CalicoObject, ClusterInformation, FelixConfiguration, GlobalNetworkPolicy, GlobalNetworkSet,
    HostEndpoint, IPPool, NetworkPolicy, NetworkSet,
};
use crate::listwatch::{ListMode, Step, list_watch};
use crate::state::{EventVersion, Input};
use crate::{Rejection, Resource};

/// A Calico custom resource as the watch decodes it.
type Crd<T> = CalicoObject<T>;

pub(super) fn stream_for(
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
pub(super) struct RejectionLog {
    pub(super) seen: HashMap<String, String>,
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

/// Converts one step into its loop input, if any (a rejection becomes a delete of its
/// key; a rejected delete is no input). One step is at most one input, so the per-object
/// path allocates nothing here.
pub(super) fn inputs<K>(
    event: Step<K>,
    log: &mut RejectionLog,
    options: &ConvertOptions,
) -> Option<Input>
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
        Step::Applied(obj) => applied(&obj, false),
        Step::Listed(obj) => applied(&obj, true),
        Step::Deleted(obj) => match convert_delete(&obj) {
            Ok(u) => Some(Input::Delete(u.key)),
            Err(r) => {
                log.note(&r);
                None
            }
        },
        Step::Init => Some(Input::Init),
        Step::ListDone(_) => Some(Input::InitDone),
        Step::Progress(_) => Some(Input::Progress),
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
    Box::pin(async_stream::stream! {
        let mut log = RejectionLog { seen: HashMap::new() };
        let mut monitor = StreamMonitor::new(resource, crd_retry);
        loop {
            let mut events = std::pin::pin!(list_watch(api.clone(), wc).default_backoff());
            let mut absent = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        monitor.step(&event);
                        let version = event_version(&event);
                        if let Some(input) = inputs(event, &mut log, &convert) {
                            yield (resource, Signal::Input(input, version));
                        }
                    }
                    Err(e) => match monitor.error(&e) {
                        AfterError::Retry => {}
                        AfterError::Relist => break,
                        AfterError::NotInstalled => {
                            absent = true;
                            break;
                        }
                    },
                }
            }
            if absent {
                yield (resource, Signal::NotInstalled);
                tokio::time::sleep(crd_retry).await;
            }
        }
    })
}

/// What a resource's stream does after an error.
enum AfterError {
    /// Go on: kube's backoff retries.
    Retry,
    /// Start over with a fresh list.
    Relist,
    /// The CRD is not installed: report it and retry after `crd_retry`.
    NotInstalled,
}

/// What one resource's stream logs and counts as events and errors pass: a missing CRD
/// once (not per retry), an unreachable API server by its state changes, and the
/// per-event metrics (handles registered once, not looked up per object of a large
/// list).
struct StreamMonitor {
    resource: Resource,
    crd_retry: Duration,
    reported_absent: bool,
    outage: crate::outage::Outage,
    events_total: metrics::Counter,
    last_event: metrics::Gauge,
}

impl StreamMonitor {
    fn new(resource: Resource, crd_retry: Duration) -> Self {
        let name = resource.as_str();
        metrics::gauge!("typha_upstream_api_reachable", "resource" => name).set(1.0);
        StreamMonitor {
            resource,
            crd_retry,
            reported_absent: false,
            outage: crate::outage::Outage::default(),
            events_total: metrics::counter!("typha_upstream_events_total", "resource" => name),
            last_event: metrics::gauge!(
                "typha_upstream_last_event_timestamp_seconds",
                "resource" => name
            ),
        }
    }

    /// Notes one step of the list-watch.
    fn step<K>(&mut self, event: &Step<K>) {
        let name = self.resource.as_str();
        // The stream yields `Init` as it starts a list, before asking the API anything:
        // only what the API answered proves it reachable (otherwise every retry of an
        // outage logged "back" then "down").
        if !matches!(event, Step::Init)
            && let Some(change) = self.outage.success(tokio::time::Instant::now())
        {
            crate::outage::report(name, change, None);
        }
        if self.reported_absent && matches!(event, Step::Init) {
            tracing::info!(resource = name, "CRD installed; watching");
            self.reported_absent = false;
        }
        self.events_total.increment(1);
        self.last_event.set(unix_now());
    }

    /// Classifies, logs and counts one error.
    fn error(&mut self, e: &watcher::Error) -> AfterError {
        let name = self.resource.as_str();
        if self.resource.is_crd() && is_not_found(e) {
            if !self.reported_absent {
                tracing::info!(resource = name, retry = ?self.crd_retry, "CRD not installed; skipping");
            }
            self.reported_absent = true;
            return AfterError::NotInstalled;
        }
        metrics::counter!("typha_upstream_watch_errors_total", "resource" => name).increment(1);
        if position_refused(e) {
            // A refused position fails forever; only a fresh list gets a valid one.
            metrics::counter!("typha_upstream_forced_relists_total", "resource" => name)
                .increment(1);
            tracing::warn!(resource = name, error = %e, "resourceVersion refused by the API server; relisting");
            return AfterError::Relist;
        }
        match self.outage.failure(tokio::time::Instant::now()) {
            Some(change) => crate::outage::report(name, change, Some(e)),
            None => {
                tracing::debug!(resource = name, error = %e, "watch error; retrying with backoff")
            }
        }
        AfterError::Retry
    }
}
