//! The steady scenario (the embedded demo): kube-sim seeded with a synthetic cluster,
//! typha watching it over HTTP, N felix-client sync clients over mutual TLS, and churn
//! written through the API. Every figure in the report is measured in this run.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value as Json, json};
use typha::app::Upstream;
use typha::upstream::UpstreamConfig;

use crate::harness::{ClientSet, Harness, TyphaSpec};

/// The scenario's parameters.
#[derive(Clone, Debug, Serialize)]
pub struct SteadyConfig {
    /// Sync clients.
    pub clients: usize,
    /// Nodes in the synthetic cluster.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Churn operations per second.
    pub rate: u32,
    /// How long churn runs.
    #[serde(with = "humantime_serde_secs")]
    pub duration: Duration,
}

mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// What the run measured.
#[derive(Debug, Serialize)]
pub struct SteadyReport {
    /// The configuration.
    pub config: SteadyConfig,
    /// Objects in kube-sim after seeding.
    pub api_objects: usize,
    /// Keys in typha's snapshot.
    pub snapshot_keys: usize,
    /// Seconds from starting the clients until every one was in sync.
    pub initial_sync_seconds: f64,
    /// Churn operations written.
    pub operations: usize,
    /// Propagation latency (API write accepted -> client applied), milliseconds.
    pub latency_ms: Percentiles,
    /// Client mirrors whose digest equals typha's at the end.
    pub digests_equal: usize,
    /// Delta batches typha encoded (each once, for all clients).
    pub delta_frames_encoded: u64,
    /// Bytes kube-sim sent (lists and watches): typha's whole upstream cost.
    pub api_bytes_sent: u64,
    /// Snapshot size, raw and compressed, bytes.
    pub snapshot_raw_bytes: u64,
    /// Compressed snapshot bytes.
    pub snapshot_compressed_bytes: u64,
}

/// p50 / p99 / max of a sample.
#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            count: samples.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Runs the scenario.
pub async fn run(config: SteadyConfig) -> anyhow::Result<SteadyReport> {
    let sim = kube_sim::KubeSim::start(kube_sim::Config::default()).await?;
    let seed = kube_sim::SeedConfig {
        nodes: config.nodes,
        pods_per_node: config.pods_per_node,
        namespaces: config.namespaces,
        ..kube_sim::SeedConfig::default()
    };
    let stats = kube_sim::seed(sim.store(), &seed)?;
    eprintln!(
        "kube-sim: {} objects ({} pods) seeded in {:?} at {}",
        stats.objects,
        stats.pods,
        stats.elapsed,
        sim.url()
    );

    let kube_config = kube::Config::new(sim.url().parse().context("kube-sim url")?);
    let client = kube::Client::try_from(kube_config)?;
    let harness = Harness::start_with(
        TyphaSpec::default(),
        Upstream::Kube {
            client,
            config: UpstreamConfig::default(),
        },
    )
    .await?;
    harness.typha.hub.wait_in_sync().await;
    let snapshot = harness.typha.hub.snapshot().await?;
    eprintln!(
        "typha: in sync, {} keys, snapshot {} bytes raw / {} compressed",
        snapshot.key_count, snapshot.raw_bytes, snapshot.compressed_bytes
    );

    let started = Instant::now();
    let clients = harness.spawn_clients(config.clients)?;
    clients
        .wait_all(harness.typha.hub.revision(), Duration::from_secs(300))
        .await?;
    let initial_sync_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "clients: {} in sync after {:.2}s",
        config.clients, initial_sync_seconds
    );

    let pods = sim.store().list_objects("v1", "Pod");
    let (latencies, operations) = churn(&sim, &harness, &clients, &pods, &config).await?;
    let hub = &harness.typha.hub;
    let digest = hub.digest();
    let delta_frames_encoded = hub.stats().delta_frames_encoded;
    let snapshot_keys = hub.len();
    let mirrors = clients.stop().await?;
    let digests_equal = mirrors.iter().filter(|m| m.digest() == digest).count();
    let api_bytes_sent =
        sim.metrics().snapshot().response_bytes + sim.metrics().snapshot().watch_bytes;
    harness.typha.shutdown().await?;
    sim.shutdown().await;
    Ok(SteadyReport {
        config,
        api_objects: stats.objects,
        snapshot_keys,
        initial_sync_seconds,
        operations,
        latency_ms: Percentiles::of(latencies),
        digests_equal,
        delta_frames_encoded,
        api_bytes_sent,
        snapshot_raw_bytes: snapshot.raw_bytes,
        snapshot_compressed_bytes: snapshot.compressed_bytes,
    })
}

/// Writes one change at a time at `rate`, and measures for each how long every client
/// took to apply it.
async fn churn(
    sim: &kube_sim::KubeSim,
    harness: &Harness,
    clients: &ClientSet,
    pods: &[Json],
    config: &SteadyConfig,
) -> anyhow::Result<(Vec<f64>, usize)> {
    anyhow::ensure!(
        !pods.is_empty(),
        "the synthetic cluster has no pods to churn"
    );
    let mut latencies = Vec::new();
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(config.rate.max(1))));
    let deadline = Instant::now() + config.duration;
    let mut revisions = harness.typha.hub.subscribe();
    let mut op = 0usize;
    while Instant::now() < deadline {
        tick.tick().await;
        let mut pod = pods[op % pods.len()].clone();
        let written = Instant::now();
        if let Some(labels) = pod
            .pointer_mut("/metadata/labels")
            .and_then(Json::as_object_mut)
        {
            labels.insert("churn".to_string(), json!(op.to_string()));
        }
        if let Some(meta) = pod.get_mut("metadata").and_then(Json::as_object_mut) {
            meta.remove("resourceVersion");
        }
        sim.store().upsert_object(pod)?;
        op += 1;
        // The API accepted the write; wait for typha to publish it, then for every client.
        revisions.changed().await.context("typha stopped")?;
        let revision = *revisions.borrow_and_update();
        let applied = futures::future::join_all(clients.clients.iter().map(|c| async move {
            c.wait_for(revision).await;
            written.elapsed().as_secs_f64() * 1000.0
        }));
        latencies.extend(
            tokio::time::timeout(Duration::from_secs(60), applied)
                .await
                .context("clients stalled")?,
        );
    }
    Ok((latencies, op))
}

/// Prints the report as a table.
pub fn print(report: &SteadyReport) {
    let c = &report.config;
    println!();
    println!(
        "steady: {} clients, {} nodes x {} pods, {} ops/s for {:?}",
        c.clients, c.nodes, c.pods_per_node, c.rate, c.duration
    );
    println!("  {:<38} {}", "API objects", report.api_objects);
    println!("  {:<38} {}", "typha snapshot keys", report.snapshot_keys);
    println!(
        "  {:<38} {} / {} bytes ({:.1}:1)",
        "snapshot raw / compressed",
        report.snapshot_raw_bytes,
        report.snapshot_compressed_bytes,
        report.snapshot_raw_bytes as f64 / report.snapshot_compressed_bytes.max(1) as f64
    );
    println!(
        "  {:<38} {:.2} s",
        "initial sync of all clients", report.initial_sync_seconds
    );
    println!("  {:<38} {}", "churn operations", report.operations);
    let l = &report.latency_ms;
    println!(
        "  {:<38} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        "propagation API write -> client", l.p50, l.p99, l.max, l.count
    );
    println!(
        "  {:<38} {}",
        "delta frames encoded (once each)", report.delta_frames_encoded
    );
    println!(
        "  {:<38} {} bytes",
        "API server bytes sent to typha", report.api_bytes_sent
    );
    println!(
        "  {:<38} {} of {}",
        "client digests equal to typha's", report.digests_equal, c.clients
    );
}
