//! The NetworkPolicy cases every end-to-end policy test runs (netlab's netpol test, the
//! CNI plugin's tests with both interface prefixes), in the spirit of the upstream e2e
//! suite, and the loop that runs them against the oracle. ipBlock cases name one block
//! per IP family of the bench (the same shape in each family), so they run unchanged over
//! IPv4, IPv6 and dual-stack pods; a dual-stack bench adds a case with a block of one
//! family only.

use std::net::IpAddr;

use netlab::stack::CLUSTER_CIDR_V6;
use netlab::topology::CLUSTER_CIDR;
use netlab::{
    IpFamily, LabelSelector as Sel, Operator, Peer, Policy, PolicyPort as Port, PolicyType,
    Protocol::{Tcp, Udp},
    Rule, Stack,
};

use super::{Rig, SERVICES};

/// Namespaces by name, through the label only the API server sets (the bench's
/// namespace objects do not carry it).
fn ns_named(op: Operator, names: &[&str]) -> Sel {
    Sel::all().and_expr("kubernetes.io/metadata.name", op, names)
}

/// `ip` as a host network.
fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// One ipBlock peer per family of the bench, from `block(family)` = (cidr, excepts).
fn ip_blocks(rig: &Rig, block: impl Fn(IpFamily) -> (String, Vec<String>)) -> Vec<Peer> {
    let families = rig.topo.stack().families();
    families
        .iter()
        .map(|family| {
            let (cidr, except) = block(*family);
            let except: Vec<&str> = except.iter().map(String::as_str).collect();
            Peer::ip_block(&cidr, &except)
        })
        .collect()
}

/// The policy cases: (name, policies), in the spirit of the upstream e2e suite.
pub fn cases(rig: &Rig) -> Vec<(&'static str, Vec<Policy>)> {
    let zc = rig.topo.pod("z", "c").unwrap();
    let zc = |family| host_cidr(zc.ip_of(family).unwrap());
    let nodes = rig.topo.nodes();
    let pod_cidr = |n: usize, family| nodes[n].pod_cidr_of(family).unwrap();
    let cluster = |family| match family {
        IpFamily::V4 => CLUSTER_CIDR.to_string(),
        IpFamily::V6 => CLUSTER_CIDR_V6.to_string(),
    };
    let pod = |name: &str| Sel::label("pod", name);
    let mut cases = vec![
        (
            "default deny ingress",
            vec![Policy::new("x", "deny-ingress", Sel::all())],
        ),
        (
            "default deny egress",
            vec![Policy::new("x", "deny-egress", Sel::all()).types(&[PolicyType::Egress])],
        ),
        (
            "pod selector",
            vec![
                Policy::new("x", "allow-b-to-a", pod("a"))
                    .ingress(Rule::from_peers(vec![Peer::pods(pod("b"))])),
            ],
        ),
        (
            "namespace selector",
            vec![
                Policy::new("x", "allow-ns-y", pod("a")).ingress(Rule::from_peers(vec![
                    Peer::namespaces(ns_named(Operator::In, &["y"])),
                ])),
            ],
        ),
        (
            "namespace selector on the metadata.name label with NotIn",
            vec![
                Policy::new("y", "not-from-x-or-z", Sel::all()).ingress(Rule::from_peers(vec![
                    Peer::namespaces(ns_named(Operator::NotIn, &["x", "z"])),
                ])),
                Policy::new("z", "egress-not-to-y", pod("b"))
                    .types(&[PolicyType::Egress])
                    .egress(Rule::from_peers(vec![Peer::namespaces(ns_named(
                        Operator::NotIn,
                        &["y"],
                    ))])),
            ],
        ),
        (
            "namespace selector on the metadata.name label with In over two names",
            vec![
                Policy::new("x", "from-y-and-z", pod("b")).ingress(Rule::from_peers(vec![
                    Peer::pods_in(ns_named(Operator::In, &["y", "z"]), pod("c")),
                ])),
            ],
        ),
        (
            "namespace AND pod selector in one peer",
            vec![
                Policy::new("x", "allow-y-b", pod("a")).ingress(Rule::from_peers(vec![
                    Peer::pods_in(Sel::label("ns", "y"), pod("b")),
                ])),
            ],
        ),
        (
            "namespace OR pod selector as two peers",
            vec![
                Policy::new("x", "allow-y-or-b", pod("a")).ingress(Rule::from_peers(vec![
                    Peer::namespaces(Sel::label("ns", "y")),
                    Peer::pods(pod("b")),
                ])),
            ],
        ),
        (
            "numeric and named ports",
            vec![
                Policy::new("x", "ports", pod("a")).ingress(Rule::allow_all().with_ports(vec![
                    Port::number(Tcp, 81),
                    Port::named(Udp, "serve-80-udp"),
                ])),
            ],
        ),
        (
            "endPort ranges",
            vec![
                Policy::new("x", "ranges", Sel::all()).ingress(
                    Rule::from_peers(vec![Peer::namespaces(Sel::all().and_expr(
                        "ns",
                        Operator::NotIn,
                        &["x"],
                    ))])
                    .with_ports(vec![Port::range(Tcp, 79, 80), Port::range(Udp, 81, 90)]),
                ),
            ],
        ),
        (
            "ipBlock with except",
            vec![
                Policy::new("x", "ipblock", pod("a"))
                    .ingress(Rule::from_peers(ip_blocks(rig, |f| {
                        (cluster(f), vec![pod_cidr(1, f), zc(f)])
                    }))),
            ],
        ),
        (
            "egress to an ipBlock with except",
            vec![
                Policy::new("y", "egress-block", Sel::all())
                    .types(&[PolicyType::Egress])
                    .egress(Rule::from_peers(ip_blocks(rig, |f| {
                        (pod_cidr(0, f), vec![zc(f)])
                    }))),
            ],
        ),
        (
            "egress deny against an ingress allow",
            vec![
                Policy::new("x", "deny-egress-a", pod("a")).types(&[PolicyType::Egress]),
                Policy::new("y", "allow-all-ingress", Sel::all()).ingress(Rule::allow_all()),
            ],
        ),
        (
            "egress to a namespace on a named port",
            vec![
                Policy::new("x", "egress-named", pod("a")).egress(
                    Rule::from_peers(vec![Peer::namespaces(Sel::label("ns", "y"))])
                        .with_ports(vec![Port::named(Tcp, "serve-81-tcp")]),
                ),
            ],
        ),
        (
            "deny all both ways plus a pod-to-pod allow across namespaces",
            vec![
                Policy::new("x", "deny-all", Sel::all())
                    .types(&[PolicyType::Ingress, PolicyType::Egress]),
                Policy::new("x", "a-to-z-b", pod("a"))
                    .types(&[PolicyType::Egress])
                    .egress(Rule::from_peers(vec![Peer::pods_in(
                        Sel::label("ns", "z"),
                        pod("b"),
                    )])),
                Policy::new("z", "deny-all-in", Sel::all()),
                Policy::new("z", "b-from-x-a", pod("b")).ingress(Rule::from_peers(vec![
                    Peer::pods_in(
                        Sel::label("ns", "x"),
                        Sel::all().and_expr("pod", Operator::In, &["a"]),
                    ),
                ])),
            ],
        ),
    ];
    if rig.topo.stack() == Stack::Dual {
        // A block of one family admits that family only: the same pods are allowed over
        // IPv4 and denied over IPv6.
        cases.push((
            "ipBlock of IPv4 only on dual-stack pods",
            vec![
                Policy::new("x", "v4-block", pod("a"))
                    .ingress(Rule::from_peers(vec![Peer::ip_block(CLUSTER_CIDR, &[])])),
            ],
        ));
    }
    cases
}

/// Probes the baseline (no policy: everything reachable), then every case against the
/// oracle; returns the failure reports. Panics on a case that blocks nothing (it would
/// test nothing).
pub async fn run_cases(rig: &mut Rig) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(f) = rig.check("no policy").await {
        failures.push(f);
    }
    let cluster = rig.topo.cluster();
    for (case, policies) in cases(rig) {
        let want = netlab::expected(&cluster, &policies, &SERVICES);
        assert!(want.reachable() < want.len(), "case {case} blocks nothing");
        rig.set_policies(policies).await;
        if let Some(f) = rig.check(case).await {
            failures.push(f);
        }
    }
    failures
}
