//! dataplane benchmark (root): a node with 100 local pods in a 150,000-pod cluster.
//!
//! The cluster is kube-sim's synthetic one (1,500 nodes x 100 pods, 50 namespaces, 3
//! NetworkPolicies each, no host-network pods), seeded in-process and converted to the
//! model exactly as typha does (`netmodel::convert`). Part 1 feeds it to a
//! [`Calc`] for `node-00000` and programs a private network namespace (with a veth per
//! local pod) through [`Dataplane`]; then it measures, per change, the time from the
//! update entering the calculation to iptables and ipsets applied, with a per-stage
//! breakdown: policy edits (ports, a peer selector added / removed) and remote pod
//! relabels. Part 2 runs the real `felix-client` binary against the same cluster served
//! over HTTP (local mode, and through an in-process typha) and reads its peak and
//! current RSS once it is in sync.
//!
//! A report, not an assertion. Run with `cargo bench -p felix-client --bench dataplane`
//! (as root; every namespace is removed by a guard).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use felix_client::calc::{Calc, CalcConfig, CalcMode};
use felix_client::dataplane::{ApplyReport, Dataplane, DataplaneConfig, DataplaneStatus};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube_sim::{KubeSim, SeedConfig, Store};
use serde_json::{Value, json};
use typha_proto::{Update, Value as ModelValue};

const NODE: &str = "node-00000";
const NODES: usize = 1_500;
const PODS_PER_NODE: usize = 100;
const NAMESPACES: usize = 50;
const POLICIES: usize = 3;
const CHANGES: usize = 200;

/// A network namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let ns = Netns(format!("fdpb-{}-{tag}", std::process::id()));
        run("ip", &["netns", "add", &ns.0], None);
        run("ip", &["-n", &ns.0, "link", "set", "lo", "up"], None);
        ns
    }

    /// A veth pair per name (the host side carries the name), all up, in one batch.
    fn add_links(&self, names: &[String]) {
        let mut batch = String::new();
        for (i, name) in names.iter().enumerate() {
            batch += &format!("link add {name} type veth peer name bp{i}\n");
            batch += &format!("link set {name} up\nlink set bp{i} up\n");
        }
        run("ip", &["-n", &self.0, "-batch", "-"], Some(&batch));
    }

    fn exec(&self, program: &str, args: &[&str]) -> String {
        let net = format!("--net=/var/run/netns/{}", self.0);
        let mut all = vec![net.as_str(), "--", program];
        all.extend_from_slice(args);
        run("nsenter", &all, None)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Durations with quantiles.
#[derive(Default)]
struct Stats(Vec<Duration>);

impl Stats {
    fn at(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn line(&self, what: &str) -> String {
        format!(
            "  {what:<34} p50 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
            self.at(0.5),
            self.at(0.99),
            self.at(1.0)
        )
    }
}

/// Per-stage timings of a series of changes.
#[derive(Default)]
struct Series {
    total: Stats,
    effective: Stats,
    calc: Stats,
    desired: Stats,
    read: Stats,
    plan: Stats,
    write: Stats,
    writes: usize,
    reads: u64,
}

impl Series {
    fn print(&self, what: &str) {
        println!(
            "{what}: n={} (passes that wrote: {}, kernel reads: {})",
            self.total.0.len(),
            self.writes,
            self.reads
        );
        println!(
            "{}",
            self.effective.line("change -> in effect in the kernel")
        );
        println!("{}", self.total.line("change -> pass done (+ set cleanup)"));
        println!("{}", self.calc.line("  calc.apply"));
        println!("{}", self.desired.line("  calc.desired"));
        println!("{}", self.plan.line("  dataplane plan (CPU)"));
        println!("{}", self.write.line("  dataplane writes (sum)"));
        println!("{}", self.read.line("  dataplane kernel reads"));
    }
}

/// Applies one change and records how long each stage took.
async fn measure(calc: &mut Calc, dp: &mut Dataplane, update: Update, series: &mut Series) {
    let start = Instant::now();
    calc.apply(&[update]);
    let calc_done = start.elapsed();
    let desired = calc.desired();
    let desired_done = start.elapsed();
    let report: ApplyReport = dp.apply(&desired).await;
    drop(desired);
    series.total.0.push(start.elapsed());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    series.effective.0.push(desired_done + report.effective);
    series.calc.0.push(calc_done);
    series.desired.0.push(desired_done - calc_done);
    series.read.0.push(report.timings.read);
    series.plan.0.push(report.timings.plan);
    series.write.0.push(report.timings.write);
    series.writes += usize::from(!report.wrote_nothing());
    series.reads += report.kernel_reads;
}

/// Every model update of the seeded cluster, converted as typha converts.
fn model(store: &Store) -> Vec<Update> {
    fn convert<T>(store: &Store, api: &str, kind: &str, out: &mut Vec<Update>)
    where
        T: k8s_openapi::serde::de::DeserializeOwned + netmodel::ToModel + kube::Resource,
    {
        for v in store.list_objects(api, kind) {
            let obj: T = serde_json::from_value(v).unwrap();
            if let Ok(u) = netmodel::convert(&obj) {
                out.push(u);
            }
        }
    }
    let mut out = Vec::new();
    convert::<Namespace>(store, "v1", "Namespace", &mut out);
    convert::<ServiceAccount>(store, "v1", "ServiceAccount", &mut out);
    convert::<Node>(store, "v1", "Node", &mut out);
    convert::<Pod>(store, "v1", "Pod", &mut out);
    convert::<NetworkPolicy>(store, "networking.k8s.io/v1", "NetworkPolicy", &mut out);
    out
}

/// Seeded policy `app` of namespace `ns`, with `ports` and optionally one more peer.
fn policy(ns: usize, app: usize, port: i32, extra_peer: Option<Value>) -> Update {
    let mut from = vec![
        json!({"podSelector": {"matchLabels": {"tier": "frontend"}}}),
        json!({"namespaceSelector": {"matchLabels": {"team": format!("team-{}", app % 5)}}}),
    ];
    from.extend(extra_peer);
    let obj: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": format!("allow-app-{app}-{app}"), "namespace": format!("ns-{ns}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{app}")}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": from, "ports": [{"protocol": "TCP", "port": port}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.255.0.0/16"]}}]}],
        }
    }))
    .unwrap();
    netmodel::convert(&obj).unwrap()
}

/// The i-th policy change: a port edit, a peer selector added, or removed again.
/// The policies of app-0 and app-1 select this node's pods (the others do not).
fn policy_change(i: usize) -> Update {
    let (ns, app) = (i % NAMESPACES, (i / NAMESPACES) % 2);
    match i % 3 {
        0 => policy(ns, app, 8081 + (i % 7) as i32, None),
        1 => {
            let peer = json!({"podSelector": {
                "matchLabels": {"version": format!("v{}", 1 + i % 3)},
                "matchExpressions": [{"key": "app", "operator": "In",
                                      "values": [format!("app-{}", i % 10)]}]}});
            policy(ns, app, 8080, Some(peer))
        }
        _ => policy(ns, app, 8080, None),
    }
}

/// A remote pod whose `tier` label flips (frontend <-> backend): it enters or leaves
/// the members of the "tier=frontend" ipsets.
fn relabel(pods: &[Value], i: usize) -> Update {
    let mut pod = pods[(i * 7_919) % pods.len()].clone();
    let labels = &mut pod["metadata"]["labels"];
    let tier = if labels["tier"] == "frontend" {
        "backend"
    } else {
        "frontend"
    };
    labels["tier"] = json!(tier);
    let pod: Pod = serde_json::from_value(pod).unwrap();
    netmodel::convert(&pod).unwrap()
}

fn local_interfaces(updates: &[Update]) -> Vec<String> {
    updates
        .iter()
        .filter_map(|u| match &u.value {
            Some(ModelValue::WorkloadEndpoint(w)) if w.node == NODE => {
                Some(w.interface_name.clone())
            }
            _ => None,
        })
        .collect()
}

async fn latency(store: &Store) {
    let started = Instant::now();
    let updates = model(store);
    println!(
        "model: {} updates converted in {:.2?}",
        updates.len(),
        started.elapsed()
    );
    let ns = Netns::new("lat");
    let ifaces = local_interfaces(&updates);
    ns.add_links(&ifaces);
    let mut calc = Calc::new(CalcConfig {
        node_name: NODE.into(),
        mode: CalcMode::PolicyOnly,
        cluster_cidrs: vec!["10.0.0.0/8".into()],
    });
    let started = Instant::now();
    for chunk in updates.chunks(1_000) {
        calc.apply(chunk);
    }
    let desired = calc.desired();
    println!("calc: initial load {:.2?}", started.elapsed());
    let rules: usize = desired.v4.filter.values().map(Vec::len).sum();
    let members: usize = desired.ipsets.values().map(|s| s.members.len()).sum();
    println!(
        "node {NODE}: {} local pods, {} v4 filter chains, {rules} rules, {} ipsets ({members} members), {} routes",
        ifaces.len(),
        desired.v4.filter.len(),
        desired.ipsets.len(),
        desired.routes.len()
    );
    let config = DataplaneConfig {
        netns: Some(ns.0.clone()),
        ..DataplaneConfig::default()
    };
    let mut dp = Dataplane::new(config, Arc::new(DataplaneStatus::default()))
        .await
        .unwrap();
    let started = Instant::now();
    let first = dp.apply(&desired).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    println!(
        "first pass (cold cache, empty kernel): {:.2?} ({:?})",
        started.elapsed(),
        first.timings
    );
    let started = Instant::now();
    let noop = dp.apply(&desired).await;
    assert!(noop.wrote_nothing());
    println!(
        "no-op pass (warm cache): {:.2?}, kernel reads {}",
        started.elapsed(),
        noop.kernel_reads
    );
    for _ in 0..3 {
        let started = Instant::now();
        let resync = dp.resync(&desired).await;
        assert!(resync.wrote_nothing());
        println!(
            "refresh pass (re-reads the kernel, writes nothing): {:.2?} (read {:.2?}, plan {:.2?}, {} reads)",
            started.elapsed(),
            resync.timings.read,
            resync.timings.plan,
            resync.kernel_reads
        );
    }
    drop(desired);

    let mut series = Series::default();
    for i in 0..CHANGES {
        measure(&mut calc, &mut dp, policy_change(i), &mut series).await;
    }
    series.print("policy changes (port edit / peer selector added / removed)");

    let pods: Vec<Value> = store
        .list_objects("v1", "Pod")
        .into_iter()
        .filter(|p| p["spec"]["nodeName"] != NODE)
        .collect();
    let mut series = Series::default();
    for i in 0..CHANGES {
        measure(&mut calc, &mut dp, relabel(&pods, i), &mut series).await;
    }
    series.print("remote pod relabels (ipset members)");
    let filter = ns.exec("iptables-save", &["-t", "filter"]);
    println!(
        "kernel: {} v4 filter rules of the agent",
        filter.lines().filter(|l| l.contains("cali:")).count()
    );
}

/// The felix-client process's (VmHWM, VmRSS) in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The HTTP status of GET `path` on 127.0.0.1:`port`, 0 when nothing answers.
fn http_status(port: u16, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ready` (4 times a second; a benchmark harness, not a test) for at most 15 min.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs felix-client with `args` until in sync (and, with a netns, programmed), then
/// reports its memory.
fn felix_rss(label: &str, args: &[&str], programmed: Option<&Netns>) {
    let health = free_port();
    let listen = format!("127.0.0.1:{health}");
    let mut all = vec![
        "--node-name",
        NODE,
        "--health-listen",
        &listen,
        "--log",
        "warn",
    ];
    all.extend_from_slice(args);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_felix-client"))
        .args(&all)
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("in sync", || http_status(health, "/readyz") == 200);
    let synced = started.elapsed();
    if let Some(ns) = programmed {
        wait_until("iptables programmed", || {
            ns.exec("iptables-save", &["-t", "filter"])
                .contains("cali:hook-cali-FORWARD")
        });
    }
    let (hwm, now) = rss(child.id());
    println!(
        "felix-client {label}: in sync after {synced:.1?}; VmHWM {:.1} MiB, VmRSS {:.1} MiB",
        hwm as f64 / 1024.0,
        now as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn kubeconfig(url: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("fdpb-{}.kubeconfig", std::process::id()));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {url}\n\
         users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: sim\n    user: u\n\
         current-context: c\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn memory(store: Arc<Store>) {
    let sim = KubeSim::start_with_store(kube_sim::Config::default(), store)
        .await
        .unwrap();
    let path = kubeconfig(&sim.url());
    let kubeconfig = path.to_str().unwrap().to_owned();
    let local = ["--kubeconfig", kubeconfig.as_str()];
    tokio::task::block_in_place(|| {
        felix_rss(
            "local mode, --dataplane none (upstream + cache + mirror)",
            &[&local[..], &["--dataplane", "none"]].concat(),
            None,
        );
        // Through typha: only the mirror (and the calc) live in felix-client.
        let (port, typha_health) = (free_port(), free_port());
        let typha_args: Vec<String> = [
            "typha",
            "serve",
            "--insecure-plaintext",
            "--log",
            "warn",
            "--kubeconfig",
            &kubeconfig,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--health-listen".into(),
            format!("127.0.0.1:{typha_health}"),
        ])
        .collect();
        // felix-client does not depend on typha: the bench runs the typha binary built
        // beside this one (`cargo build --release -p typha` first).
        let typha_bin =
            std::path::Path::new(env!("CARGO_BIN_EXE_felix-client")).with_file_name("typha");
        assert!(
            typha_bin.exists(),
            "{} is missing: run `cargo build --release -p typha` first",
            typha_bin.display()
        );
        let mut typha_proc = Command::new(&typha_bin)
            .args(&typha_args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("typha ready", || {
            http_status(typha_health, "/readyz") == 200
        });
        let addr = format!("127.0.0.1:{port}");
        let typha = ["--typha-addr", addr.as_str(), "--insecure-plaintext"];
        felix_rss(
            "via typha, --dataplane none (mirror)",
            &[&typha[..], &["--dataplane", "none"]].concat(),
            None,
        );
        let ns = Netns::new("rss");
        let updates = model(sim.store());
        ns.add_links(&local_interfaces(&updates));
        drop(updates);
        felix_rss(
            "via typha, --dataplane iptables (mirror + calc + dataplane)",
            &[&typha[..], &["--dataplane", "iptables", "--netns", &ns.0]].concat(),
            Some(&ns),
        );
        let _ = typha_proc.kill();
        let _ = typha_proc.wait();
    });
    let _ = std::fs::remove_file(&path);
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("SKIPPED: the dataplane benchmark needs root");
        return;
    }
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let store = Arc::new(Store::new(10_000, true));
    let seeded = kube_sim::seed(
        &store,
        &SeedConfig {
            nodes: NODES,
            pods_per_node: PODS_PER_NODE,
            namespaces: NAMESPACES,
            policies_per_namespace: POLICIES,
            host_network_every: 0,
        },
    )
    .unwrap();
    println!(
        "cluster: {} pods on {NODES} nodes, {NAMESPACES} namespaces x {POLICIES} policies (seeded in {:.2?})",
        seeded.pods, seeded.elapsed
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if only.as_deref().is_none_or(|o| o == "latency") {
        runtime.block_on(latency(&store));
    }
    if only.as_deref().is_none_or(|o| o == "memory") {
        runtime.block_on(memory(store));
    }
}
