//! Snapshot cache benchmark: applies 150,000 realistic WorkloadEndpoint updates in batches
//! of 1,000 into a fresh cache, builds the raw snapshot and compresses it, for zstd levels
//! 1 and 3, and prints wall times and sizes. A report, not an assertion.
//!
//! The data is varied the way a real cluster is: namespaces of deployments and
//! statefulsets with skewed replica counts, pod names with ReplicaSet hashes and random
//! suffixes, pods spread over 1,500 nodes with per-node /24 pod CIDRs, interface names
//! from sha1("ns.pod"), 4-6 pod labels plus Calico's namespace/serviceaccount labels,
//! two profiles and one or two named ports. Seeded, so every run measures the same data.
//!
//! Run with `cargo bench -p typha --bench snapshot`.
// A benchmark measures wall time on a real clock; the paused-clock ban does not apply.
#![allow(clippy::disallowed_types)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sha1::{Digest as _, Sha1};
use snapshot_cache::{CacheConfig, SnapshotCache, compress};
use typha_proto::{Key, Kind, Update, Value, pb};

const ENDPOINTS: usize = 150_000;
const BATCH: usize = 1_000;
const NODES: usize = 1_500;
const ROUNDS: usize = 5;

/// Kubernetes' alphabet for generated name suffixes (no vowels, no confusable digits).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const WORDS: &[&str] = testkit::APP_NAMES;
const ROLES: &[&str] = &[
    "api",
    "web",
    "worker",
    "consumer",
    "scheduler",
    "cache",
    "proxy",
    "db",
    "indexer",
    "frontend",
    "backend",
    "cron",
    "sidecar",
    "exporter",
    "grpc",
];
const ENVS: &[&str] = &["prod", "staging", "dev", "qa"];
const TIERS: &[&str] = &["frontend", "backend", "data", "platform"];
const PORTS: &[(&str, u32)] = &[
    ("http", 8080),
    ("grpc", 9090),
    ("metrics", 9102),
    ("http-api", 8000),
    ("https", 8443),
    ("admin", 9901),
];

fn random_name(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| *ALPHABET.choose(rng).unwrap_or(&b'x') as char)
        .collect()
}

fn interface_name(namespace: &str, pod: &str) -> String {
    let hash = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let mut name = String::from("cali");
    for byte in hash.iter().take(6) {
        let _ = write!(name, "{byte:02x}");
    }
    name.truncate(15);
    name
}

/// A workload: its pods share labels, service account and ports.
struct Workload {
    name: String,
    hash: Option<String>,
    labels: Vec<(String, String)>,
    service_account: String,
    ports: Vec<pb::NamedPort>,
    replicas: usize,
}

fn workload(rng: &mut StdRng, app: &str, env: &str) -> Workload {
    let role = ROLES.choose(rng).unwrap_or(&"api");
    let name = format!(
        "{app}-{role}{}",
        if rng.random_bool(0.3) { "-v2" } else { "" }
    );
    let statefulset = rng.random_bool(0.1);
    let hash = (!statefulset).then(|| random_name(rng, 10));
    let mut labels = vec![
        ("app".to_string(), name.clone()),
        ("app.kubernetes.io/part-of".to_string(), app.to_string()),
    ];
    match &hash {
        Some(hash) => labels.push(("pod-template-hash".into(), hash.clone())),
        None => labels.push((
            "controller-revision-hash".into(),
            format!("{name}-{}", random_name(rng, 10)),
        )),
    }
    let extra: [(&str, String); 4] = [
        ("tier", TIERS.choose(rng).unwrap_or(&"backend").to_string()),
        ("environment", env.to_string()),
        (
            "version",
            format!(
                "v{}.{}.{}",
                rng.random_range(1..4),
                rng.random_range(0..30),
                rng.random_range(0..12)
            ),
        ),
        ("team", WORDS.choose(rng).unwrap_or(&"ml").to_string()),
    ];
    let wanted = rng.random_range(1..=3);
    labels.extend(
        extra
            .into_iter()
            .take(wanted)
            .map(|(k, v)| (k.to_string(), v)),
    );
    let port_count = rng.random_range(1..=2);
    let ports = PORTS
        .choose_multiple(rng, port_count)
        .map(|(name, port)| pb::NamedPort {
            name: (*name).into(),
            protocol: pb::Protocol::Tcp as i32,
            port: *port,
        })
        .collect();
    let service_account = if rng.random_bool(0.3) {
        "default".into()
    } else {
        name.clone()
    };
    // Skewed: most workloads are small, a few are large.
    let replicas = match rng.random_range(0..100) {
        0..60 => rng.random_range(1..=4),
        60..90 => rng.random_range(5..=20),
        _ => rng.random_range(21..=150),
    };
    Workload {
        name,
        hash,
        labels,
        service_account,
        ports,
        replicas,
    }
}

fn endpoints() -> Vec<Update> {
    let mut rng = StdRng::seed_from_u64(0x7e7a);
    let nodes: Vec<String> = (0..NODES)
        .map(|n| {
            format!(
                "ip-10-{}-{}-{}.us-west-2.compute.internal",
                20 + n / 65_536,
                (n / 256) % 256,
                n % 256
            )
        })
        .collect();
    let mut next_host = vec![2u32; NODES];
    let mut updates = Vec::with_capacity(ENDPOINTS);
    'fill: for namespace_index in 0.. {
        let app = *WORDS.choose(&mut rng).unwrap_or(&"ml");
        let env = *ENVS.choose(&mut rng).unwrap_or(&"prod");
        let namespace = format!("{app}-{env}-{namespace_index}");
        let mut names = std::collections::HashSet::new();
        for _ in 0..rng.random_range(3..25) {
            let w = workload(&mut rng, app, env);
            if !names.insert(w.name.clone()) {
                continue; // one workload per name in a namespace
            }
            for ordinal in 0..w.replicas {
                if updates.len() == ENDPOINTS {
                    break 'fill;
                }
                let pod = match &w.hash {
                    Some(hash) => format!("{}-{hash}-{}", w.name, random_name(&mut rng, 5)),
                    None => format!("{}-{ordinal}", w.name),
                };
                let n = rng.random_range(0..NODES);
                let host = next_host[n];
                next_host[n] += 1;
                let ip = format!("10.{}.{}.{}/32", 64 + n / 256, n % 256, host % 254 + 1);
                let mut labels: std::collections::BTreeMap<String, String> =
                    w.labels.iter().cloned().collect();
                labels.insert("projectcalico.org/namespace".into(), namespace.clone());
                labels.insert(
                    "projectcalico.org/serviceaccount".into(),
                    w.service_account.clone(),
                );
                let value = Value::WorkloadEndpoint(pb::WorkloadEndpoint {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                    node: nodes[n].clone(),
                    interface_name: interface_name(&namespace, &pod),
                    ip_nets: vec![ip],
                    labels,
                    profile_ids: vec![
                        format!("kns.{namespace}"),
                        format!("ksa.{namespace}.{}", w.service_account),
                    ],
                    ports: w.ports.clone(),
                    service_account: w.service_account.clone(),
                    mac: String::new(),
                });
                let Ok(key) = Key::new(Kind::WorkloadEndpoint, namespace.clone(), pod) else {
                    continue;
                };
                if let Ok(update) = Update::new(key, Some(value)) {
                    updates.push(update);
                }
            }
        }
    }
    updates
}

/// Time this thread has spent on a CPU, from the scheduler's own accounting (Linux):
/// with other processes competing for the two cores, wall time alone overstates the cost.
fn on_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

fn ms(d: Duration) -> String {
    format!("{:6.1} ms", d.as_secs_f64() * 1e3)
}

/// Wall and on-CPU time of one phase.
#[derive(Clone, Copy, Default)]
struct Phase {
    wall: Duration,
    cpu: Duration,
}

impl Phase {
    fn show(self) -> String {
        format!("{} (cpu {})", ms(self.wall), ms(self.cpu))
    }
}

/// One run: apply, build, compress, total, then a relist (every update again, unchanged:
/// all no-ops, not part of the total); and the sizes.
struct Run {
    phases: [Phase; 5],
    keys: usize,
    raw: u64,
    compressed: u64,
    chunks: usize,
}

fn run(updates: &[Update], level: i32) -> Option<Run> {
    let (updates, relist) = (updates.to_vec(), updates.to_vec());
    let config = CacheConfig {
        zstd_level: level,
        ..CacheConfig::default()
    };
    let mut cache = SnapshotCache::new(config);
    let mut marks = vec![(Instant::now(), on_cpu())];
    let mut batches = updates.into_iter().peekable();
    while batches.peek().is_some() {
        cache.apply(batches.by_ref().take(BATCH));
    }
    marks.push((Instant::now(), on_cpu()));
    let raw = cache.build_snapshot();
    marks.push((Instant::now(), on_cpu()));
    let encoded = compress(&raw, level).ok()?;
    marks.push((Instant::now(), on_cpu()));
    let mut relist = relist.into_iter().peekable();
    while relist.peek().is_some() {
        let crumb = cache.apply(relist.by_ref().take(BATCH));
        assert!(
            crumb.is_none(),
            "a relist of unchanged objects changes nothing"
        );
    }
    marks.push((Instant::now(), on_cpu()));
    let phase = |from: usize, to: usize| Phase {
        wall: marks[to].0 - marks[from].0,
        cpu: marks[to].1.saturating_sub(marks[from].1),
    };
    let run = Run {
        phases: [
            phase(0, 1),
            phase(1, 2),
            phase(2, 3),
            phase(0, 3),
            phase(3, 4),
        ],
        keys: cache.len(),
        raw: encoded.raw_bytes,
        compressed: encoded.compressed_bytes,
        chunks: encoded.chunk_frames.len(),
    };
    // Dropping 150k entries is not part of the measured path: keep it out of the marks.
    drop((cache, raw, encoded));
    Some(run)
}

fn main() {
    let updates = endpoints();
    println!(
        "snapshot bench: {} WorkloadEndpoint updates, batches of {BATCH}, best of {ROUNDS} rounds per level",
        updates.len()
    );
    for level in [1, 3] {
        let mut best: Option<Run> = None;
        for _ in 0..ROUNDS {
            let Some(run) = run(&updates, level) else {
                eprintln!("compress failed at level {level}");
                return;
            };
            if best
                .as_ref()
                .is_none_or(|b| run.phases[3].wall < b.phases[3].wall)
            {
                best = Some(run);
            }
        }
        let Some(Run {
            phases: [apply, build, compress, total, relist],
            keys,
            raw,
            compressed,
            chunks,
        }) = best
        else {
            return;
        };
        println!("zstd level {level}:");
        println!("  apply    {}", apply.show());
        println!("  build    {}", build.show());
        println!("  compress {}", compress.show());
        println!("  total    {}", total.show());
        println!(
            "  relist   {} (150k unchanged updates, all dropped)",
            relist.show()
        );
        println!(
            "  {keys} keys; raw {:.1} MiB ({} B/entry), compressed {:.2} MiB in {chunks} chunks; ratio {:.2}:1",
            raw as f64 / (1 << 20) as f64,
            raw / keys.max(1) as u64,
            compressed as f64 / (1 << 20) as f64,
            raw as f64 / compressed.max(1) as f64,
        );
    }
}
