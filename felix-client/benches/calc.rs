//! calc benchmark: a 150,000-endpoint cluster (50 namespaces of skewed size, realistic
//! labels and named ports, 1,500 nodes, 100 endpoints on this node, three Kubernetes
//! NetworkPolicies per namespace plus a few cross-namespace ones). Measures the initial
//! load, then the latency of "one update applied -> desired() computed" for policy
//! changes (ports, peer selectors never seen before, create/delete) and for remote and
//! local endpoint churn, holding the previous Desired as the dataplane does. Prints p50,
//! p99 and max. A report, not an assertion.
//!
//! Run with `cargo bench -p felix-client --bench calc`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use felix_client::calc::{Calc, CalcConfig, CalcMode, Desired};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use typha_proto::{Key, Kind, Update, Value, pb};

const ENDPOINTS: usize = 150_000;
const NAMESPACES: usize = 50;
const NODES: usize = 1_500;
const LOCAL: usize = 100;
const NODE: &str = "node-0000";
const CHANGES: usize = 400;

const APPS: &[&str] = testkit::APP_NAMES.split_at(16).0;
const ROLES: &[&str] = &["api", "web", "worker", "frontend", "db", "cache"];

fn namespace_name(i: usize) -> String {
    format!("{}-{}", APPS[i % APPS.len()], i)
}

fn namespace(i: usize) -> Update {
    let obj: Namespace = serde_json::from_value(json!({"metadata": {
        "name": namespace_name(i),
        "labels": {"team": APPS[i % APPS.len()], "env": if i.is_multiple_of(5) { "prod" } else { "dev" },
                   "kubernetes.io/metadata.name": namespace_name(i)}}}))
    .unwrap();
    netmodel::convert(&obj).unwrap()
}

fn endpoint(rng: &mut StdRng, i: usize, ns: usize, node: usize) -> Update {
    let ns_name = namespace_name(ns);
    let app = APPS[ns % APPS.len()];
    let role = *ROLES.choose(rng).unwrap();
    let pod = format!("{app}-{role}-{:08x}-{i}", rng.random::<u32>());
    let ip = format!("10.{}.{}.{}", 1 + i / 65_536, (i / 256) % 256, i % 256);
    let labels = [
        ("app", app.to_string()),
        ("role", role.to_string()),
        ("version", format!("v{}", rng.random_range(1..4))),
        ("pod-template-hash", format!("{:08x}", rng.random::<u32>())),
        ("projectcalico.org/namespace", ns_name.clone()),
        ("projectcalico.org/orchestrator", "k8s".to_string()),
        ("projectcalico.org/serviceaccount", "default".to_string()),
    ];
    let mut ports = vec![pb::NamedPort {
        name: "http".into(),
        protocol: pb::Protocol::Tcp as i32,
        port: 8080,
    }];
    if role == "api" {
        ports.push(pb::NamedPort {
            name: "grpc".into(),
            protocol: pb::Protocol::Tcp as i32,
            port: 9090,
        });
    }
    let wep = pb::WorkloadEndpoint {
        namespace: ns_name.clone(),
        pod: pod.clone(),
        node: format!("node-{node:04}"),
        interface_name: netmodel::interface_name(&ns_name, &pod),
        ip_nets: vec![format!("{ip}/32")],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        profile_ids: vec![format!("kns.{ns_name}"), format!("ksa.{ns_name}.default")],
        ports,
        service_account: "default".into(),
        mac: String::new(),
    };
    Update::new(
        Key::new(Kind::WorkloadEndpoint, ns_name, pod).unwrap(),
        Some(Value::WorkloadEndpoint(wep)),
    )
    .unwrap()
}

fn netpol(ns: usize, name: &str, spec: serde_json::Value) -> Update {
    let obj: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace_name(ns)}, "spec": spec}))
    .unwrap();
    netmodel::convert(&obj).unwrap()
}

fn policies(ns: usize, variant: usize) -> Vec<Update> {
    let team = APPS[(ns + 1) % APPS.len()];
    vec![
        netpol(
            ns,
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        netpol(
            ns,
            "frontend-to-api",
            json!({"podSelector": {"matchLabels": {"role": "api"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                                "ports": [{"port": 8080 + variant as i32}, {"port": "grpc"}]}]}),
        ),
        netpol(
            ns,
            "from-team",
            json!({"podSelector": {"matchLabels": {"role": "web"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}}},
                                         {"namespaceSelector": {"matchLabels": {"env": "prod"}},
                                          "podSelector": {"matchLabels": {"role": "frontend"}}}],
                                "ports": [{"port": "http"}]}]}),
        ),
    ]
}

fn nodes() -> Vec<Update> {
    (0..NODES)
        .map(|n| {
            let name = format!("node-{n:04}");
            Update::new(
                Key::cluster(Kind::Node, &name).unwrap(),
                Some(Value::Node(pb::Node {
                    name: name.clone(),
                    addresses: vec![format!("192.168.{}.{}", n / 256, n % 256)],
                    pod_cidrs: vec![format!("100.{}.{}.0/24", 64 + n / 256, n % 256)],
                    ipv4_address: format!("192.168.{}.{}", n / 256, n % 256),
                    ..Default::default()
                })),
            )
            .unwrap()
        })
        .collect()
}

struct Stats(Vec<Duration>);

impl Stats {
    fn report(mut self, what: &str) {
        self.0.sort();
        let at = |q: f64| self.0[((self.0.len() - 1) as f64 * q) as usize];
        println!(
            "{what:<44} n={:<4} p50={:>9.3?} p99={:>9.3?} max={:>9.3?}",
            self.0.len(),
            at(0.5),
            at(0.99),
            self.0[self.0.len() - 1]
        );
    }
}

fn measure(calc: &mut Calc, held: &mut Desired, updates: &[Update]) -> Duration {
    let start = Instant::now();
    calc.apply(updates);
    let desired = calc.desired();
    let took = start.elapsed();
    *held = desired;
    took
}

/// Measures each batch of `changes` applied in turn, and reports them as `what`.
fn measure_each(
    calc: &mut Calc,
    held: &mut Desired,
    what: &str,
    changes: impl IntoIterator<Item = Vec<Update>>,
) {
    let mut s = Stats(Vec::new());
    for updates in changes {
        s.0.push(measure(calc, held, &updates));
    }
    s.report(what);
}

/// Change `i` of frontend-to-api: peer selectors never seen before.
fn new_selectors(i: usize) -> Update {
    let spec = json!({"podSelector": {"matchLabels": {"role": "api"}},
       "ingress": [{"from": [{"podSelector": {"matchLabels": {"version": format!("v{i}")}}},
                             {"namespaceSelector": {"matchLabels": {"team": format!("t{i}")}}}],
                    "ports": [{"port": "grpc"}]}]});
    netpol(i % NAMESPACES, "frontend-to-api", spec)
}

/// Change `i` of the policy "extra": created on even `i`, deleted on odd.
fn created_or_deleted(i: usize) -> Update {
    let spec = json!({"podSelector": {"matchLabels": {"role": "db"}},
       "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "api"}}}],
                    "ports": [{"port": 5432}]}]});
    let u = netpol(i % NAMESPACES, "extra", spec);
    if i.is_multiple_of(2) {
        u
    } else {
        Update::delete(u.key)
    }
}

fn main() {
    let mut rng = StdRng::seed_from_u64(7);
    // Skewed namespace sizes: weights 1..=50 shuffled.
    let weights: Vec<usize> = (1..=NAMESPACES).collect();
    let total: usize = weights.iter().sum();
    let mut updates: Vec<Update> = (0..NAMESPACES).map(namespace).collect();
    updates.extend(nodes());
    let mut endpoints = Vec::with_capacity(ENDPOINTS);
    let mut local_count = 0;
    for (ns, w) in weights.iter().enumerate() {
        let count = ENDPOINTS * w / total;
        for _ in 0..count {
            let local = local_count < LOCAL && rng.random_range(0..ENDPOINTS / LOCAL) == 0;
            let node = if local {
                local_count += 1;
                0
            } else {
                rng.random_range(1..NODES)
            };
            let i = endpoints.len();
            endpoints.push(endpoint(&mut rng, i, ns, node));
        }
    }
    // Top up the local endpoints to exactly LOCAL.
    while local_count < LOCAL {
        let i = endpoints.len();
        endpoints.push(endpoint(&mut rng, i, local_count % NAMESPACES, 0));
        local_count += 1;
    }
    updates.extend(endpoints.iter().cloned());
    for ns in 0..NAMESPACES {
        updates.extend(policies(ns, 0));
    }
    let config = CalcConfig {
        node_name: NODE.into(),
        mode: CalcMode::Networking,
        cluster_cidrs: vec!["10.96.0.0/12".into()],
        interface_prefixes: Default::default(),
    };
    let mut calc = Calc::new(config);
    let start = Instant::now();
    for chunk in updates.chunks(1_000) {
        calc.apply(chunk);
    }
    let mut held = calc.desired();
    let load = start.elapsed();
    let rules: usize = held.v4.filter.values().map(Vec::len).sum();
    let members: usize = held.ipsets.values().map(|s| s.members.len()).sum();
    println!(
        "cluster: {} endpoints, {NAMESPACES} namespaces, {NODES} nodes, {} policies; initial load + desired(): {load:.2?}",
        endpoints.len(),
        NAMESPACES * 3
    );
    println!(
        "desired: {} v4 filter chains, {rules} v4 rules, {} ipsets ({members} members), {} routes; {} active selectors",
        held.v4.filter.len(),
        held.ipsets.len(),
        held.routes.len(),
        calc.active_selectors()
    );

    let (calc, held) = (&mut calc, &mut held);
    let ports = (0..CHANGES).map(|i| policies(i % NAMESPACES, 1 + i % 3)[1..2].to_vec());
    measure_each(calc, held, "policy change: ports", ports);
    let selectors = (0..CHANGES).map(|i| vec![new_selectors(i)]);
    measure_each(
        calc,
        held,
        "policy change: new selectors (ns + cluster scan)",
        selectors,
    );
    let created = (0..CHANGES).map(|i| vec![created_or_deleted(i)]);
    measure_each(calc, held, "policy create/delete", created);

    let remote = (0..CHANGES * 5).filter_map(|_| {
        let mut u = endpoints[rng.random_range(0..endpoints.len())].clone();
        if let Some(Value::WorkloadEndpoint(w)) = &mut u.value {
            if w.node == NODE {
                return None;
            }
            let role = *ROLES.choose(&mut rng).unwrap();
            w.labels.insert("role".into(), role.into());
        }
        Some(vec![u])
    });
    measure_each(calc, held, "remote endpoint relabel", remote);

    let locals: Vec<&Update> = endpoints
        .iter()
        .filter(|u| matches!(&u.value, Some(Value::WorkloadEndpoint(w)) if w.node == NODE))
        .collect();
    let local = (0..CHANGES).map(|i| {
        let mut u = locals[i % locals.len()].clone();
        if let Some(Value::WorkloadEndpoint(w)) = &mut u.value {
            let role = ROLES[i % ROLES.len()];
            w.labels.insert("role".into(), role.into());
        }
        vec![u]
    });
    measure_each(calc, held, "local endpoint relabel", local);

    let mut s = Stats(Vec::new());
    for _ in 0..CHANGES {
        let start = Instant::now();
        let desired = calc.desired();
        s.0.push(start.elapsed());
        *held = desired;
    }
    s.report("desired() alone");
}
