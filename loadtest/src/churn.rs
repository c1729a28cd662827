//! Churn through the Kubernetes API: creates and deletes, label changes and policy edits
//! at a fixed rate, each stamped (see [`crate::probe`]).
//!
//! Against kube-sim the objects are pods of the synthetic cluster ([`Layout::Synthetic`]).
//! Against a real cluster ([`Layout::Namespace`]) they are service accounts in one
//! namespace: nothing gets scheduled or run, yet typha forwards every change (as a
//! Profile), and the setup objects are created or reset, so a run can repeat.
//!
//! Writes are sent on a fixed schedule, concurrently when the API server is slow (the
//! achieved rate and the write round trip are reported). Every byte the API server sends
//! back to the writer is counted, so scenarios can subtract the writer's own traffic
//! from the API server's bytes sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::api::Api;
use crate::latency::{Histogram, Percentiles};
use crate::probe::{BARRIER_LABEL, BARRIER_POD, Probe, STAMP_LABEL};

const MERGE: &str = "application/merge-patch+json";
const JSON: &str = "application/json";
/// The loadtest's own policy, edited by churn.
const POLICY: &str = "lt-policy";
/// The namespace of the barrier pod and the policy in the synthetic cluster.
const HOME_NS: &str = "ns-0";
/// Service accounts whose labels churn changes in a real cluster.
const LABEL_TARGETS: usize = 4;

/// What churn writes, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Pods of kube-sim's synthetic cluster (namespaces `ns-<i>`, its node names).
    Synthetic {
        /// Nodes of the synthetic cluster.
        nodes: usize,
        /// Namespaces of the synthetic cluster.
        namespaces: usize,
    },
    /// Service accounts and one NetworkPolicy in this namespace of a real cluster
    /// (created if missing).
    Namespace(String),
}

/// What churn did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnStats {
    /// Writes sent.
    pub operations: u64,
    /// Pods created.
    pub creates: u64,
    /// Pods deleted.
    pub deletes: u64,
    /// Pod label changes.
    pub label_changes: u64,
    /// Policy edits.
    pub policy_edits: u64,
    /// Writes the API refused.
    pub errors: u64,
    /// Writes per second achieved.
    pub achieved_rate: f64,
    /// Write round trip (sent -> accepted), ms.
    pub write_ms: Percentiles,
}

#[derive(Clone, Copy, Debug)]
enum OpKind {
    Create,
    Delete,
    Label,
    Policy,
}

/// A write ready to send.
struct Planned {
    kind: OpKind,
    method: &'static str,
    path: String,
    body: Option<(&'static str, Vec<u8>)>,
}

/// A write that completed (or failed).
struct Done {
    kind: OpKind,
    result: anyhow::Result<()>,
    bytes: u64,
    elapsed: Duration,
}

impl Planned {
    fn new(
        kind: OpKind,
        method: &'static str,
        path: String,
        body: Option<(&'static str, Json)>,
    ) -> Planned {
        let body = body.map(|(t, b)| (t, b.to_string().into_bytes()));
        Planned {
            kind,
            method,
            path,
            body,
        }
    }

    async fn execute(self, api: Api) -> Done {
        let sent = Instant::now();
        let body = self.body.as_ref().map(|(t, b)| (*t, b.as_slice()));
        let (result, bytes) = match api.request(self.method, &self.path, body).await {
            Ok(r) if (200..300).contains(&r.status) => (Ok(()), r.wire_bytes),
            Ok(r) => (
                Err(anyhow::anyhow!(
                    "{} {}: status {}",
                    self.method,
                    self.path,
                    r.status
                )),
                r.wire_bytes,
            ),
            Err(error) => (Err(error), 0),
        };
        Done {
            kind: self.kind,
            result,
            bytes,
            elapsed: sent.elapsed(),
        }
    }
}

/// The writer.
pub struct Churn {
    api: Api,
    probe: Arc<Probe>,
    layout: Layout,
    /// Objects whose labels churn changes: (namespace, name).
    targets: Vec<(String, String)>,
    /// Objects churn created and has not deleted yet.
    live: VecDeque<(String, String)>,
    /// Makes created names unique across runs against the same cluster.
    tag: String,
    seq: u64,
    barrier: u64,
    write_time: Histogram,
    /// Stats so far.
    pub stats: ChurnStats,
    /// Bytes the API server sent to this writer.
    pub bytes_received: u64,
}

impl Churn {
    /// Prepares churn through `api`: picks label targets (seeded pods, or service
    /// accounts it creates), and creates (or resets) the barrier object and the loadtest
    /// policy, and in a real cluster the namespace.
    pub async fn new(api: Api, probe: Arc<Probe>, layout: Layout) -> anyhow::Result<Churn> {
        let layout = match layout {
            Layout::Synthetic { nodes, namespaces } => Layout::Synthetic {
                nodes: nodes.max(1),
                namespaces: namespaces.max(1),
            },
            other => other,
        };
        let tag = match layout {
            Layout::Synthetic { .. } => String::new(),
            Layout::Namespace(_) => format!("{:x}-", std::process::id()),
        };
        let mut churn = Churn {
            api,
            probe,
            layout,
            targets: Vec::new(),
            live: VecDeque::new(),
            tag,
            seq: 0,
            barrier: 0,
            write_time: Histogram::default(),
            stats: ChurnStats::default(),
            bytes_received: 0,
        };
        churn.find_targets().await?;
        churn.seed_marks().await?;
        Ok(churn)
    }

    /// The objects churn relabels: the synthetic cluster's pods, or service accounts it
    /// creates in its namespace.
    async fn find_targets(&mut self) -> anyhow::Result<()> {
        let home = self.home().to_string();
        match self.layout.clone() {
            Layout::Synthetic { .. } => {
                let list = self.send("GET", "/api/v1/pods?limit=500", None).await?;
                let list: Json = serde_json::from_slice(&list).context("pod list")?;
                for pod in list["items"].as_array().into_iter().flatten() {
                    let meta = &pod["metadata"];
                    if pod["spec"]["hostNetwork"] == true {
                        continue;
                    }
                    if let (Some(ns), Some(name)) =
                        (meta["namespace"].as_str(), meta["name"].as_str())
                    {
                        self.targets.push((ns.to_string(), name.to_string()));
                    }
                }
            }
            Layout::Namespace(ns) => {
                let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": ns}});
                self.upsert("/api/v1/namespaces", &ns, namespace)
                    .await
                    .with_context(|| format!("creating namespace {ns}"))?;
                for k in 0..LABEL_TARGETS {
                    let name = format!("lt-target-{k}");
                    let sa = self.object_json(&name, &home, 0, &[("app", "lt".into())]);
                    let collection = self.collection(&home);
                    self.upsert(&collection, &name, sa).await?;
                    self.targets.push((home.clone(), name));
                }
            }
        }
        Ok(())
    }

    /// The barrier object and the stamped policy.
    async fn seed_marks(&mut self) -> anyhow::Result<()> {
        let home = self.home().to_string();
        let barrier = self.object_json(BARRIER_POD, &home, 0, &[(BARRIER_LABEL, "0".into())]);
        let collection = self.collection(&home);
        self.upsert(&collection, BARRIER_POD, barrier).await?;
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": POLICY, "namespace": home},
            "spec": {"podSelector": {"matchLabels": {STAMP_LABEL: "0"}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"protocol": "TCP", "port": 9000}]}]},
        });
        self.upsert(
            &format!("/apis/networking.k8s.io/v1/namespaces/{home}/networkpolicies"),
            POLICY,
            policy,
        )
        .await?;
        Ok(())
    }

    /// The namespace of the barrier and the policy.
    fn home(&self) -> &str {
        match &self.layout {
            Layout::Synthetic { .. } => HOME_NS,
            Layout::Namespace(ns) => ns,
        }
    }

    /// The collection churned objects live in, in `ns`.
    fn collection(&self, ns: &str) -> String {
        match self.layout {
            Layout::Synthetic { .. } => format!("/api/v1/namespaces/{ns}/pods"),
            Layout::Namespace(_) => format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        }
    }

    /// A churned object: a running pod (synthetic) or a service account (real cluster).
    fn object_json(&self, name: &str, ns: &str, index: u64, labels: &[(&str, String)]) -> Json {
        match self.layout {
            Layout::Synthetic { .. } => self.pod_json(name, ns, index, labels),
            Layout::Namespace(_) => {
                let labels: serde_json::Map<String, Json> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": name, "namespace": ns, "labels": labels}})
            }
        }
    }

    /// Creates `name` in `collection`, or when it exists already (an earlier run against
    /// the same cluster) merges `object` into it.
    async fn upsert(&mut self, collection: &str, name: &str, object: Json) -> anyhow::Result<()> {
        let body = object.to_string().into_bytes();
        let created = self
            .api
            .request("POST", collection, Some((JSON, &body)))
            .await?;
        self.bytes_received += created.wire_bytes;
        if created.status == 409 {
            self.send(
                "PATCH",
                &format!("{collection}/{name}"),
                Some((MERGE, object)),
            )
            .await?;
            return Ok(());
        }
        anyhow::ensure!(
            (200..300).contains(&created.status),
            "POST {collection}: status {}: {}",
            created.status,
            String::from_utf8_lossy(&created.body)
        );
        Ok(())
    }

    /// Deletes what churn created and did not delete (a real cluster keeps no litter).
    pub async fn clean_up(&mut self) {
        while let Some((ns, name)) = self.live.pop_front() {
            let path = format!("{}/{name}", self.collection(&ns));
            if let Err(error) = self.api.request("DELETE", &path, None).await {
                tracing::warn!(%error, path, "churn clean-up");
            }
        }
    }

    fn pod_json(&self, name: &str, ns: &str, index: u64, labels: &[(&str, String)]) -> Json {
        let nodes = match self.layout {
            Layout::Synthetic { nodes, .. } => nodes,
            Layout::Namespace(_) => 1,
        };
        let node = (index as usize) % nodes;
        let ip = format!("10.254.{}.{}", (index / 250) % 256, index % 250 + 2);
        let labels: serde_json::Map<String, Json> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": kube_sim::seed::node_name(node), "serviceAccountName": "default",
                     "containers": [{"name": "main", "image": "registry.example/lt:1"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, Json)>,
    ) -> anyhow::Result<Vec<u8>> {
        let bytes = body.as_ref().map(|(t, b)| (*t, b.to_string().into_bytes()));
        let response = self
            .api
            .request(
                method,
                path,
                bytes.as_ref().map(|(t, b)| (*t, b.as_slice())),
            )
            .await?;
        self.bytes_received += response.wire_bytes;
        anyhow::ensure!(
            (200..300).contains(&response.status),
            "{method} {path}: status {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        Ok(response.body)
    }

    /// Plans the next stamped write; which kind depends on the sequence number. The
    /// stamp is taken here, just before the write is sent.
    fn plan(&mut self) -> Planned {
        self.seq += 1;
        let seq = self.seq;
        // Delete only pods created a while ago: writes run concurrently, and the create
        // of a very recent pod may still be in flight.
        let deletable = self.live.len() > 8;
        match seq % 10 {
            1 | 7 => {
                let name = format!("lt-{}{seq}", self.tag);
                let ns = match &self.layout {
                    Layout::Synthetic { namespaces, .. } => {
                        format!("ns-{}", seq as usize % namespaces)
                    }
                    Layout::Namespace(ns) => ns.clone(),
                };
                let labels = [
                    (STAMP_LABEL, self.probe.stamp().to_string()),
                    ("app", "lt".into()),
                ];
                let object = self.object_json(&name, &ns, seq, &labels);
                let path = self.collection(&ns);
                self.live.push_back((ns, name));
                Planned::new(OpKind::Create, "POST", path, Some((JSON, object)))
            }
            5 | 9 if deletable => {
                let (ns, name) = self.live.pop_front().unwrap_or_default();
                self.probe.stamp_delete(&name);
                let path = format!("{}/{name}", self.collection(&ns));
                Planned::new(OpKind::Delete, "DELETE", path, None)
            }
            3 => {
                let stamp = self.probe.stamp().to_string();
                let patch = json!({"spec": {"podSelector": {"matchLabels": {STAMP_LABEL: stamp}}}});
                let path = format!(
                    "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies/{POLICY}",
                    self.home()
                );
                Planned::new(OpKind::Policy, "PATCH", path, Some((MERGE, patch)))
            }
            _ => {
                let (ns, name) = match self.targets.get(seq as usize % self.targets.len().max(1)) {
                    Some(target) => target.clone(),
                    None => (self.home().to_string(), format!("{BARRIER_POD}-missing")),
                };
                let stamp = self.probe.stamp().to_string();
                let patch = json!({"metadata": {"labels": {STAMP_LABEL: stamp}}});
                let path = format!("{}/{name}", self.collection(&ns));
                Planned::new(OpKind::Label, "PATCH", path, Some((MERGE, patch)))
            }
        }
    }

    fn completed(&mut self, done: Done) {
        self.write_time.record(done.elapsed);
        self.bytes_received += done.bytes;
        self.stats.operations += 1;
        match (&done.result, done.kind) {
            (Err(error), _) => {
                self.stats.errors += 1;
                tracing::warn!(%error, "churn write refused");
            }
            (Ok(()), OpKind::Create) => self.stats.creates += 1,
            (Ok(()), OpKind::Delete) => self.stats.deletes += 1,
            (Ok(()), OpKind::Label) => self.stats.label_changes += 1,
            (Ok(()), OpKind::Policy) => self.stats.policy_edits += 1,
        }
    }

    /// Writes at `rate` per second for `duration` on a fixed schedule: writes are sent
    /// when due even if earlier ones are still in flight (up to 64), so a slow API
    /// server shows up as write latency, not as a lower rate.
    pub async fn run(&mut self, rate: u32, duration: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let before = self.stats.operations;
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut in_flight = FuturesUnordered::new();
        while started.elapsed() < duration {
            tokio::select! {
                _ = interval.tick(), if in_flight.len() < 64 => {
                    in_flight.push(self.plan().execute(self.api.clone()));
                }
                Some(done) = in_flight.next() => self.completed(done),
            }
        }
        while let Some(done) = in_flight.next().await {
            self.completed(done);
        }
        let done = self.stats.operations - before;
        self.stats.achieved_rate = done as f64 / duration.as_secs_f64().max(1e-9);
        self.stats.write_ms = self.write_time.percentiles();
        Ok(())
    }

    /// Moves the barrier forward; returns its new number.
    pub async fn barrier(&mut self) -> anyhow::Result<u64> {
        self.barrier += 1;
        let patch = json!({"metadata": {"labels": {BARRIER_LABEL: self.barrier.to_string()}}});
        let path = format!("{}/{BARRIER_POD}", self.collection(self.home()));
        self.send("PATCH", &path, Some((MERGE, patch))).await?;
        Ok(self.barrier)
    }
}
