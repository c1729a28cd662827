//! The baseline without typha: every client lists and watches the API server itself, as
//! each Felix would. A light raw-HTTP client per resource (list, then watch from the
//! list's resourceVersion; relist when the watch ends), detecting the same stamps as the
//! typha clients so the two modes' latency can be compared too.
//!
//! These clients keep no mirror: the baseline is about what the API server sends, which
//! does not depend on what the receiver keeps.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::probe::{BARRIER_LABEL, BARRIER_POD, Mark, Probe, STAMP_LABEL};

/// What typha (and so every Felix) watches: the same 13 collections.
pub const COLLECTIONS: [&str; 13] = [
    "/api/v1/pods",
    "/api/v1/namespaces",
    "/api/v1/serviceaccounts",
    "/api/v1/nodes",
    "/apis/networking.k8s.io/v1/networkpolicies",
    "/apis/crd.projectcalico.org/v1/networkpolicies",
    "/apis/crd.projectcalico.org/v1/globalnetworkpolicies",
    "/apis/crd.projectcalico.org/v1/globalnetworksets",
    "/apis/crd.projectcalico.org/v1/networksets",
    "/apis/crd.projectcalico.org/v1/hostendpoints",
    "/apis/crd.projectcalico.org/v1/ippools",
    "/apis/crd.projectcalico.org/v1/felixconfigurations",
    "/apis/crd.projectcalico.org/v1/clusterinformations",
];

/// Only the list's resourceVersion is needed; serde skips the items without keeping them.
#[derive(Deserialize)]
struct ListHead {
    metadata: ListMeta,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: EventObject,
}

#[derive(Deserialize)]
struct EventObject {
    #[serde(default)]
    metadata: EventMeta,
    #[serde(default)]
    spec: Option<EventSpec>,
}

#[derive(Deserialize, Default)]
struct EventMeta {
    #[serde(default)]
    name: String,
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
    #[serde(default)]
    labels: HashMap<String, String>,
}

#[derive(Deserialize)]
struct EventSpec {
    #[serde(rename = "podSelector", default)]
    pod_selector: Option<Selector>,
}

#[derive(Deserialize)]
struct Selector {
    #[serde(rename = "matchLabels", default)]
    match_labels: HashMap<String, String>,
}

fn mark_of(event: &WatchEvent) -> Option<Mark> {
    let meta = &event.object.metadata;
    if event.kind == "DELETED" {
        return meta
            .name
            .starts_with("lt-")
            .then(|| Mark::Deleted(meta.name.clone()));
    }
    if meta.name == BARRIER_POD
        && let Some(n) = meta.labels.get(BARRIER_LABEL)
    {
        return n.parse().ok().map(Mark::Barrier);
    }
    let stamp = meta.labels.get(STAMP_LABEL).or_else(|| {
        event
            .object
            .spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| s.match_labels.get(STAMP_LABEL))
    });
    stamp.and_then(|s| s.parse().ok()).map(Mark::Stamp)
}

/// Shared counters of the direct fleet.
#[derive(Default)]
pub struct DirectCounters {
    /// Collections listed and being watched (a client is synced at 13).
    pub watching: AtomicUsize,
    /// Bytes received from the API server.
    pub bytes: AtomicU64,
    /// Lists done (relists included).
    pub lists: AtomicU64,
    /// Watch events received.
    pub events: AtomicU64,
}

/// The direct clients.
pub struct DirectFleet {
    /// Counters.
    pub counters: Arc<DirectCounters>,
    /// The last barrier each client saw on its pod watch.
    pub barriers: Vec<Arc<AtomicU64>>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl DirectFleet {
    /// Starts `n` clients against the API server `api`.
    pub fn start(api: Api, n: usize, probe: Arc<Probe>) -> DirectFleet {
        let counters = Arc::new(DirectCounters::default());
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut barriers = Vec::with_capacity(n);
        for _ in 0..n {
            let barrier = Arc::new(AtomicU64::new(0));
            barriers.push(barrier.clone());
            for path in COLLECTIONS {
                let ctx = WatchTask {
                    api: api.clone(),
                    path,
                    probe: probe.clone(),
                    counters: counters.clone(),
                    barrier: barrier.clone(),
                };
                let token = shutdown.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = ctx.run() => {}
                    }
                });
            }
        }
        DirectFleet {
            counters,
            barriers,
            tasks,
            shutdown,
        }
    }

    /// Clients that reached barrier `n`.
    pub fn at_barrier(&self, n: u64) -> usize {
        self.barriers
            .iter()
            .filter(|b| b.load(Ordering::Relaxed) >= n)
            .count()
    }

    /// Stops every client.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The API server does not serve a collection.
struct Absent;

struct WatchTask {
    api: Api,
    path: &'static str,
    probe: Arc<Probe>,
    counters: Arc<DirectCounters>,
    barrier: Arc<AtomicU64>,
}

impl WatchTask {
    async fn run(self) {
        let mut listed = false;
        loop {
            match self.list_and_watch(&mut listed).await {
                // A real cluster may lack some collections (Calico's CRDs): one less to watch.
                Ok(Absent) => return,
                Err(error) => tracing::debug!(%error, path = self.path, "direct watch ended"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Lists then watches until the watch ends (an error); `Ok` only when the API
    /// server does not serve the collection (counted as watched).
    async fn list_and_watch(&self, listed: &mut bool) -> anyhow::Result<Absent> {
        let list = self.api.request("GET", self.path, None).await?;
        self.counters
            .bytes
            .fetch_add(list.wire_bytes, Ordering::Relaxed);
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        if list.status == 404 && !*listed {
            *listed = true;
            self.counters.watching.fetch_add(1, Ordering::Relaxed);
            return Ok(Absent);
        }
        anyhow::ensure!(
            list.status == 200,
            "list {}: status {}",
            self.path,
            list.status
        );
        let head: ListHead = serde_json::from_slice(&list.body)?;
        if !*listed {
            *listed = true;
            self.counters.watching.fetch_add(1, Ordering::Relaxed);
        }
        let rv = head.metadata.resource_version;
        let watch = format!(
            "{}?watch=true&allowWatchBookmarks=true&resourceVersion={rv}",
            self.path
        );
        let mut stream = self.api.open(&watch).await?;
        anyhow::ensure!(
            stream.status() == 200,
            "watch {}: status {}",
            self.path,
            stream.status()
        );
        self.follow(&mut stream, rv).await
    }

    /// Reads a watch stream until it ends, recording marks.
    async fn follow(
        &self,
        stream: &mut crate::api::ApiStream,
        mut rv: String,
    ) -> anyhow::Result<Absent> {
        let mut counted = stream.wire_bytes();
        self.counters.bytes.fetch_add(counted, Ordering::Relaxed);
        let mut buf = Vec::new();
        loop {
            let more = stream.next_chunk(&mut buf).await?;
            self.counters
                .bytes
                .fetch_add(stream.wire_bytes() - counted, Ordering::Relaxed);
            counted = stream.wire_bytes();
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                self.counters.events.fetch_add(1, Ordering::Relaxed);
                if let Ok(event) = serde_json::from_slice::<WatchEvent>(&line) {
                    if event.kind == "ERROR" {
                        anyhow::bail!("watch {} expired at {rv}", self.path);
                    }
                    if !event.object.metadata.resource_version.is_empty() {
                        rv.clone_from(&event.object.metadata.resource_version);
                    }
                    if let Some(mark) = mark_of(&event)
                        && let Some(n) = self.probe.observe_mark(&mark, false)
                    {
                        self.barrier.fetch_max(n, Ordering::Relaxed);
                        self.probe.barrier_reached.notify_waiters();
                    }
                }
            }
            if !more {
                anyhow::bail!("watch {} closed", self.path);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(line: &str) -> WatchEvent {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn marks_in_watch_events() {
        let modified = r#"{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"a","resourceVersion":"9","labels":{"lt-stamp":"12"}},"spec":{"nodeName":"n"}}}"#;
        assert_eq!(mark_of(&parse(modified)), Some(Mark::Stamp(12)));
        let policy = r#"{"type":"MODIFIED","object":{"metadata":{"name":"lt-policy"},"spec":{"podSelector":{"matchLabels":{"lt-stamp":"5"}}}}}"#;
        assert_eq!(mark_of(&parse(policy)), Some(Mark::Stamp(5)));
        let deleted =
            r#"{"type":"DELETED","object":{"metadata":{"name":"lt-3","labels":{"lt-stamp":"1"}}}}"#;
        assert_eq!(mark_of(&parse(deleted)), Some(Mark::Deleted("lt-3".into())));
        let barrier = r#"{"type":"MODIFIED","object":{"metadata":{"name":"lt-barrier","labels":{"lt-barrier":"2"}}}}"#;
        assert_eq!(mark_of(&parse(barrier)), Some(Mark::Barrier(2)));
        let bookmark = r#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"10"}}}"#;
        assert_eq!(mark_of(&parse(bookmark)), None);
    }
}
