//! The servers of a scenario as child processes: kube-sim seeded with a synthetic
//! cluster, and typha replicas watching it, each on unique loopback ports with
//! development certificates written to a scratch directory.
//!
//! Real-cluster mode replaces either part: `kubeconfig` names an existing API server
//! (no kube-sim; the local replicas watch that one), and `external` names typha replicas
//! that already run (none are started; clients reach them with the operator's TLS files).
//!
//! Invariants: every process here is a child of this one and is killed by PID when the
//! [`Stack`] drops; a replica restarted after a kill or a roll gets the same ports, so
//! clients find it where it was. External replicas are never signalled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use edge::certs::{DEFAULT_CLIENT_CN, DEFAULT_SERVER_CN, DevPki};
use edge::tls::{PeerIdentity, TlsFiles, TransportChoice};

use crate::api::Api;
use crate::http1::{self, Scrape};
use crate::procs::{ChildProc, ProcStats, ScratchDir, free_port};

mod service;

use service::namespace_object;
pub use service::{SERVICE_NAME, SERVICE_NAMESPACE, TyphaTargets};

/// typha replicas that already run, outside the load test's control.
#[derive(Clone, Debug)]
pub struct ExternalTypha {
    /// Their gRPC addresses (HOST:PORT).
    pub addresses: Vec<String>,
    /// How clients reach them (mutual TLS from files, or plaintext for development).
    pub transport: TransportChoice,
}

/// The synthetic cluster and the replicas.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Kubernetes NetworkPolicies per namespace.
    pub policies: usize,
    /// typha replicas (0: kube-sim only, for the direct baseline).
    pub replicas: usize,
    /// Extra `typha serve` flags (e.g. a short --write-timeout for the slow scenario).
    pub typha_args: Vec<String>,
    /// An existing API server instead of kube-sim (nothing is seeded then).
    pub kubeconfig: Option<PathBuf>,
    /// Running typha replicas instead of `replicas` local ones.
    pub external: Option<ExternalTypha>,
    /// Publish local replicas as a Service's EndpointSlices in kube-sim (ready while
    /// they serve) and have the agents discover them there (as real agents'
    /// `--typha-service` does). Only with kube-sim and local replicas; otherwise agents
    /// get the fixed address list.
    pub service: bool,
    /// With `service`: start the replicas with `--service-namespace/--service-name`, so
    /// they rebalance agents within the Service (the soak). Without, a replica keeps
    /// every agent that chose it (the storm).
    pub rebalance: bool,
    /// With `service`: publish only typha-0 when the stack starts; the others' slices
    /// are held back until [`Stack::publish_held`] (the storm's agents all start on
    /// typha-0).
    pub hold_back: bool,
}

/// How a replica goes away in the restart scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// SIGKILL: connections vanish without a goodbye.
    Kill,
    /// SIGTERM: the replica drains (goodbye to every client) and exits.
    Roll,
}

/// Starts kube-sim seeded with the synthetic cluster; returns it, its address and the
/// objects it seeded.
async fn start_kube_sim(
    config: &StackConfig,
    dir: &Path,
) -> anyhow::Result<(ChildProc, SocketAddr, u64)> {
    let kube_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let args: Vec<String> = [
        "kube-sim".to_string(),
        "--listen".into(),
        kube_addr.to_string(),
        "--nodes".into(),
        config.nodes.to_string(),
        "--pods-per-node".into(),
        config.pods_per_node.to_string(),
        "--namespaces".into(),
        config.namespaces.to_string(),
        "--policies".into(),
        config.policies.to_string(),
        "--history".into(),
        "100000".into(),
        // Bookmarks every second: replicas' version vectors follow the datastore within
        // a second, inside typha's 2 s resume catch-up, so a client whose replica saw
        // a newer bookmark is still resumed elsewhere.
        "--bookmark-secs".into(),
        "1".into(),
    ]
    .into();
    let mut kube = ChildProc::spawn("kube-sim", &args, dir)?;
    wait_ready(kube_addr, "/readyz", &mut kube, Duration::from_secs(300)).await?;
    let log = std::fs::read_to_string(dir.join("kube-sim.log")).unwrap_or_default();
    let seeded_objects = log
        .split("seeded ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((kube, kube_addr, seeded_objects))
}

/// One typha replica.
pub struct Replica {
    /// Its name (`typha-<i>`).
    pub name: String,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// /readyz and /metrics address.
    pub health: SocketAddr,
    args: Vec<String>,
    proc: ChildProc,
    /// CPU and bytes of earlier incarnations (before restarts), so totals span them.
    retired: ProcStats,
    /// [`TALLIED`] counters of earlier incarnations, scraped just before each went down.
    retired_counters: BTreeMap<String, f64>,
}

/// The replica counters summed over incarnations ([`Stack::counter_totals`]): how
/// sessions started and why resumes were refused.
pub const TALLIED: [&str; 3] = [
    "typha_resumes_total",
    "typha_resume_refusals_total",
    "typha_snapshots_sent_total",
];

/// `scrape`'s [`TALLIED`] series, keyed `name{labels}` (or `name` when unlabelled).
fn tallied(scrape: &Scrape) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for name in TALLIED {
        for (labels, value) in scrape.by_label(name) {
            let key = if labels.is_empty() {
                name.to_string()
            } else {
                format!("{name}{{{labels}}}")
            };
            *out.entry(key).or_default() += value;
        }
    }
    out
}

/// Whether a replica scraped as `serving` is at or past the resume floor of the
/// replica scraped as `newcomer` (`typha_resource_version` at least `typha_resume_floor`
/// for every resource), so that `serving`'s clients would be resumed on `newcomer`; else
/// what is not yet (no floor, or the first resource below it).
pub fn passed_floor(serving: &Scrape, newcomer: &Scrape) -> Result<(), String> {
    let floor = newcomer.per_resource("typha_resume_floor");
    if floor.is_empty() {
        return Err("no resume floor yet".to_string());
    }
    let versions = serving.per_resource("typha_resource_version");
    for (resource, at) in floor {
        let version = versions.get(&resource).copied().unwrap_or(0.0);
        if version < at {
            return Err(format!("{resource} at {version}, below the floor {at}"));
        }
    }
    Ok(())
}

/// kube-sim and the replicas.
pub struct Stack {
    /// Scratch directory (certificates, kubeconfig, logs).
    pub dir: ScratchDir,
    /// kube-sim (`None` against an existing API server).
    pub kube: Option<ChildProc>,
    /// The API server.
    pub api: Api,
    /// Local replicas in index order (none with external ones).
    pub replicas: Vec<Replica>,
    /// External replicas' addresses (empty with local ones).
    pub external: Vec<String>,
    /// Objects kube-sim seeded (0 against an existing API server).
    pub seeded_objects: u64,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    client_transport: TransportChoice,
    /// kube-sim's address when the replicas are published as a Service.
    service_api: Option<SocketAddr>,
    /// Replicas whose slices stay withdrawn until [`Stack::publish_held`].
    held: BTreeSet<usize>,
}

/// Polls `http://addr/path` until it answers 2xx; fails as soon as `proc` exits, or after
/// `limit`, with the tail of its log.
pub async fn wait_ready(
    addr: SocketAddr,
    path: &str,
    proc: &mut ChildProc,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if http1::get_text(addr, path).await.is_ok() {
            return Ok(());
        }
        proc.check_alive()?;
        anyhow::ensure!(
            started.elapsed() < limit,
            "{} not ready on {addr}{path} after {limit:?}; log:\n{}",
            proc.name(),
            proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Stack {
    /// Starts kube-sim (seeded) and the replicas, or uses the existing ones the config
    /// names; returns once all local ones are ready.
    pub async fn start(config: &StackConfig, tag: &str) -> anyhow::Result<Stack> {
        let dir = ScratchDir::create(tag)?;
        let pki = DevPki::generate().context("generating certificates")?;
        pki.write_to_dir(dir.path(), true)
            .context("writing certificates")?;
        let (kube, api, seeded_objects, kubeconfig) = start_api(config, dir.path()).await?;
        let (external, client_transport) = client_side(config, dir.path());
        let client_tls = client_transport.client_config()?;
        let service_api = match &stack_api_sim(&api) {
            Some(addr) if config.service && config.external.is_none() => Some(*addr),
            _ => None,
        };
        let mut stack = Stack {
            dir,
            kube,
            api,
            replicas: Vec::new(),
            external,
            seeded_objects,
            client_tls,
            client_transport,
            service_api,
            held: BTreeSet::new(),
        };
        if config.external.is_none() {
            stack.spawn_replicas(config, &kubeconfig).await?;
        }
        if config.hold_back {
            stack.held.extend(1..stack.replicas.len());
        }
        for i in 0..stack.replicas.len() {
            stack.wait_replica(i).await?;
            stack.publish(i, true).await?;
        }
        Ok(stack)
    }

    /// Starts the config's local replicas (with the Service's flags when they
    /// rebalance, and its namespace created when the stack publishes one).
    async fn spawn_replicas(
        &mut self,
        config: &StackConfig,
        kubeconfig: &Path,
    ) -> anyhow::Result<()> {
        let mut extra = config.typha_args.clone();
        if self.service_api.is_some() {
            // 409: it exists already.
            self.api_write("POST", "/api/v1/namespaces", &namespace_object(), &[409])
                .await?;
        }
        if self.service_api.is_some() && config.rebalance {
            extra.extend(
                [
                    "--service-namespace",
                    SERVICE_NAMESPACE,
                    "--service-name",
                    SERVICE_NAME,
                ]
                .map(String::from),
            );
        }
        for i in 0..config.replicas {
            let replica = self.spawn_replica(i, kubeconfig, &extra)?;
            self.replicas.push(replica);
        }
        Ok(())
    }

    /// Where the agents find the replicas: the Service when published, else the
    /// addresses.
    pub fn targets(&self) -> TyphaTargets {
        match self.service_api {
            Some(addr) => TyphaTargets::Service {
                api: format!("http://{addr}"),
                namespace: SERVICE_NAMESPACE.into(),
                name: SERVICE_NAME.into(),
            },
            None => TyphaTargets::Addresses(self.addresses()),
        }
    }

    /// One write to the API server that must succeed (2xx, or a status in `also`).
    async fn api_write(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
        also: &[u16],
    ) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(body)?;
        let body = (!body.is_null()).then_some(("application/json", bytes.as_slice()));
        let response = self.api.request(method, path, body).await?;
        anyhow::ensure!(
            (200..300).contains(&response.status) || also.contains(&response.status),
            "{method} {path}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        Ok(())
    }

    /// Whether the replicas run outside the load test (nothing can be restarted).
    pub fn is_external(&self) -> bool {
        !self.external.is_empty()
    }

    fn spawn_replica(
        &self,
        i: usize,
        kubeconfig: &Path,
        extra: &[String],
    ) -> anyhow::Result<Replica> {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args = replica_args(i, self.dir.path(), kubeconfig, grpc, health);
        args.extend(extra.iter().cloned());
        let name = format!("typha-{i}");
        let proc = ChildProc::spawn(&name, &args, self.dir.path())?;
        Ok(Replica {
            name,
            grpc,
            health,
            args,
            proc,
            retired: ProcStats::default(),
            retired_counters: BTreeMap::new(),
        })
    }

    async fn wait_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let replica = self.replicas.get_mut(i).context("no such replica")?;
        wait_ready(
            replica.health,
            "/readyz",
            &mut replica.proc,
            Duration::from_secs(300),
        )
        .await
    }

    /// Kills (SIGKILL) or rolls (SIGTERM, drain) replica `i`, its slice withdrawn first,
    /// then starts it again on the same ports, waits until it is ready and publishes it
    /// again (unless held: [`Stack::hold`]). Returns how long it was gone.
    pub async fn restart_replica(
        &mut self,
        i: usize,
        mode: RestartMode,
    ) -> anyhow::Result<Duration> {
        let dir = self.dir.path().to_path_buf();
        self.publish(i, false).await?;
        // Increments between this scrape and the signal are lost (milliseconds).
        let last_counters = self
            .scrape(i)
            .await
            .map(|s| tallied(&s))
            .unwrap_or_default();
        let replica = self.replicas.get_mut(i).context("no such replica")?;
        for (key, value) in last_counters {
            *replica.retired_counters.entry(key).or_default() += value;
        }
        let before = replica.proc.stats();
        let started = Instant::now();
        match mode {
            RestartMode::Kill => replica.proc.kill(),
            RestartMode::Roll => replica.proc.terminate(Duration::from_secs(30)).await,
        }
        let last = replica.proc.stats();
        let last = if last.cpu_seconds >= before.cpu_seconds {
            last
        } else {
            before
        };
        replica.retired.cpu_seconds += last.cpu_seconds;
        replica.retired.bytes_written += last.bytes_written;
        replica.retired.bytes_read += last.bytes_read;
        replica.retired.write_calls += last.write_calls;
        replica.retired.peak_rss_bytes = replica.retired.peak_rss_bytes.max(last.peak_rss_bytes);
        let generation = started.elapsed().as_nanos();
        let name = format!("{}-restart-{generation}", replica.name);
        replica.proc = ChildProc::spawn(&name, &replica.args, &dir)?;
        self.wait_replica(i).await?;
        self.publish(i, true).await?;
        Ok(started.elapsed())
    }

    /// Each replica's counters, summed over its incarnations.
    pub fn replica_stats(&mut self) -> Vec<(String, u32, ProcStats)> {
        self.replicas
            .iter_mut()
            .map(|r| {
                let now = r.proc.stats();
                let total = ProcStats {
                    cpu_seconds: now.cpu_seconds + r.retired.cpu_seconds,
                    rss_bytes: now.rss_bytes,
                    peak_rss_bytes: now.peak_rss_bytes.max(r.retired.peak_rss_bytes),
                    bytes_written: now.bytes_written + r.retired.bytes_written,
                    bytes_read: now.bytes_read + r.retired.bytes_read,
                    write_calls: now.write_calls + r.retired.write_calls,
                };
                (r.name.clone(), r.proc.pid(), total)
            })
            .collect()
    }

    /// The [`TALLIED`] counters summed over every local replica and its incarnations
    /// (a replica that does not answer adds only its retired counts).
    pub async fn counter_totals(&self) -> BTreeMap<String, f64> {
        let mut totals = BTreeMap::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            let live = self
                .scrape(i)
                .await
                .map(|s| tallied(&s))
                .unwrap_or_default();
            for (key, value) in replica.retired_counters.iter().chain(live.iter()) {
                *totals.entry(key.clone()).or_default() += *value;
            }
        }
        totals
    }

    /// Scrapes replica `i`'s /metrics.
    pub async fn scrape(&self, i: usize) -> anyhow::Result<Scrape> {
        let replica = self.replicas.get(i).context("no such replica")?;
        Ok(Scrape::parse(
            &http1::get_text(replica.health, "/metrics").await?,
        ))
    }

    /// The replicas' gRPC addresses (local or external).
    pub fn addresses(&self) -> Vec<String> {
        if self.is_external() {
            return self.external.clone();
        }
        self.replicas.iter().map(|r| r.grpc.to_string()).collect()
    }

    /// The TLS configuration of a legitimate client (`None`: plaintext, development).
    pub fn client_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.client_tls.clone()
    }

    /// How a legitimate client reaches the replicas (agent workers build their TLS
    /// configuration from it).
    pub fn client_transport(&self) -> TransportChoice {
        self.client_transport.clone()
    }

    /// Where child logs are.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// The API server: the config's kubeconfig, or kube-sim started (and seeded) in `dir`
/// with a kubeconfig written for it. Returns kube-sim's process, the API, the objects
/// seeded and the kubeconfig's path.
async fn start_api(
    config: &StackConfig,
    dir: &Path,
) -> anyhow::Result<(Option<ChildProc>, Api, u64, PathBuf)> {
    match &config.kubeconfig {
        Some(path) => {
            let path = std::path::absolute(path)
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            let api = Api::from_kubeconfig(&path).await?;
            Ok((None, api, 0, path))
        }
        None => {
            let (kube, addr, seeded) = start_kube_sim(config, dir).await?;
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, kube_sim::kubeconfig(&format!("http://{addr}")))?;
            Ok((Some(kube), Api::Sim(addr), seeded, kubeconfig))
        }
    }
}

/// The external replicas' addresses and how clients reach them, or (local replicas)
/// no addresses and mutual TLS with the development PKI in `dir`.
fn client_side(config: &StackConfig, dir: &Path) -> (Vec<String>, TransportChoice) {
    match &config.external {
        Some(external) => (external.addresses.clone(), external.transport.clone()),
        None => {
            let file = |name: &str| dir.join(name);
            let files = TlsFiles {
                ca: file("ca.crt"),
                cert: file("felix.crt"),
                key: file("felix.key"),
            };
            let identity = PeerIdentity::with_cn(DEFAULT_SERVER_CN);
            (Vec::new(), TransportChoice::Tls(files, identity))
        }
    }
}

/// The command line (after the binary) of typha replica `i` (`typha serve`, server id
/// `typha-<i>`): listening on `grpc` and `health`, watching the API of `kubeconfig`, with
/// the development PKI of `dir` (ca.crt, typha.crt, typha.key) and the default client CN.
pub fn replica_args(
    i: usize,
    dir: &Path,
    kubeconfig: &Path,
    grpc: SocketAddr,
    health: SocketAddr,
) -> Vec<String> {
    let file = |name: &str| -> String { dir.join(name).display().to_string() };
    vec![
        "typha".into(),
        "serve".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--listen".into(),
        grpc.to_string(),
        "--health-listen".into(),
        health.to_string(),
        "--tls-ca".into(),
        file("ca.crt"),
        "--tls-cert".into(),
        file("typha.crt"),
        "--tls-key".into(),
        file("typha.key"),
        "--client-cn".into(),
        DEFAULT_CLIENT_CN.into(),
        "--server-id".into(),
        format!("typha-{i}"),
        "--log".into(),
        "warn".into(),
    ]
}

/// kube-sim's address, if the API server is the stack's own kube-sim.
fn stack_api_sim(api: &Api) -> Option<SocketAddr> {
    match api {
        Api::Sim(addr) => Some(*addr),
        Api::Cluster(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_passed_a_floor_only_when_at_or_above_it_for_every_resource() {
        let newcomer = Scrape::parse(
            "typha_resume_floor{resource=\"pods\"} 10\ntypha_resume_floor{resource=\"nodes\"} 5\n",
        );
        let serving = |pods: u32, nodes: u32| {
            Scrape::parse(&format!(
                "typha_resource_version{{resource=\"pods\"}} {pods}\n\
                 typha_resource_version{{resource=\"nodes\"}} {nodes}\n"
            ))
        };
        assert_eq!(passed_floor(&serving(10, 5), &newcomer), Ok(()));
        assert_eq!(passed_floor(&serving(12, 9), &newcomer), Ok(()));
        let behind = passed_floor(&serving(12, 4), &newcomer).unwrap_err();
        assert!(behind.starts_with("nodes at 4"), "{behind}");
        let missing = Scrape::parse("typha_resource_version{resource=\"nodes\"} 9\n");
        assert!(passed_floor(&missing, &newcomer).is_err());
        assert!(passed_floor(&serving(12, 9), &Scrape::parse("")).is_err());
    }
}
