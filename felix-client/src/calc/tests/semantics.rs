//! Semantic cases: Kubernetes NetworkPolicy behaviour checked by walking packets.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use typha_proto::{Key, Kind, Update, Value, pb};

use super::sim::{self, Packet, Verdict};
use super::*;
use crate::calc::{Family, IpSetKind, Route, RouteTarget};

const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// Every (from, to) pair allowed on tcp/`port`, as a sorted list.
fn matrix(c: &Cluster, port: u16) -> BTreeSet<(String, String)> {
    let d = c.calc.desired();
    let mut out = BTreeSet::new();
    for from in PODS {
        for to in PODS {
            if from != to && can(&d, from, to, "tcp", port) {
                out.insert((from.to_string(), to.to_string()));
            }
        }
    }
    out
}

fn is_local(pod: &str) -> bool {
    !pod.ends_with("/c")
}

/// Every pair except those `denied` says this node's ingress policy (destination local)
/// or egress policy (source local) drops: remote endpoints are enforced elsewhere.
fn pairs(
    denied_in: impl Fn(&str, &str) -> bool,
    denied_out: impl Fn(&str, &str) -> bool,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for from in PODS {
        for to in PODS {
            let dropped =
                (is_local(to) && denied_in(from, to)) || (is_local(from) && denied_out(from, to));
            if from != to && !dropped {
                out.insert((from.to_string(), to.to_string()));
            }
        }
    }
    out
}

fn all_pairs_except(denied_in: impl Fn(&str, &str) -> bool) -> BTreeSet<(String, String)> {
    pairs(denied_in, |_, _| false)
}

#[test]
fn unselected_endpoints_are_open_and_root_chains_exist() {
    let c = Cluster::new();
    assert_eq!(matrix(&c, 80), all_pairs_except(|_, _| false));
    let d = c.calc.desired();
    for chain in ["cali-FORWARD", "cali-INPUT", "cali-OUTPUT"] {
        assert!(d.v4.filter.contains_key(chain) && d.v6.filter.contains_key(chain));
    }
    assert!(d.v4.nat.contains_key("cali-POSTROUTING"));
    // An unknown cali interface is dropped, a non-cali one is not ours.
    let stray = packet("10.0.0.1", "10.0.0.2", "cali0000000000f", "eth0", 80);
    assert_eq!(sim::run(&d, "cali-FORWARD", &stray), Verdict::Drop);
    let other = packet("10.9.0.1", "10.9.0.2", "eth0", "eth1", 80);
    assert_eq!(sim::run(&d, "cali-FORWARD", &other), Verdict::Continue);
}

#[test]
fn default_deny_ingress() {
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    assert_eq!(
        matrix(&c, 80),
        all_pairs_except(|_, to| to.starts_with("x/"))
    );
    // Kubernetes: traffic between a pod and its own node is always allowed.
    let d = c.calc.desired();
    let xa = netmodel::interface_name("x", "a");
    let host_to_pod = packet("192.168.0.1", "10.0.0.1", "lo", &xa, 80);
    assert_eq!(sim::run(&d, "cali-OUTPUT", &host_to_pod), Verdict::Accept);
    let pod_to_host = packet("10.0.0.1", "192.168.0.1", &xa, "lo", 80);
    assert_eq!(sim::run(&d, "cali-INPUT", &pod_to_host), Verdict::Accept);
}

#[test]
fn default_deny_egress() {
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "y",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )]);
    assert_eq!(
        matrix(&c, 80),
        pairs(|_, _| false, |from, _| from.starts_with("y/"))
    );
    let d = c.calc.desired();
    let ya = netmodel::interface_name("y", "a");
    // Kubernetes: traffic between a pod and its own node is always allowed.
    let pod_to_host = packet("10.0.1.1", "192.168.0.1", &ya, "lo", 80);
    assert_eq!(sim::run(&d, "cali-INPUT", &pod_to_host), Verdict::Accept);
}

#[test]
fn pod_selector_same_namespace_and_port() {
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "x",
        "allow-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                            "ports": [{"port": 80}]}]}),
    )]);
    let expected = all_pairs_except(|from, to| to == "x/a" && from != "x/b");
    assert_eq!(matrix(&c, 80), expected);
    assert!(!c.can("x/b", "x/a", "tcp", 81), "other port");
    assert!(!c.can("x/b", "x/a", "udp", 80), "other protocol");
    assert!(
        !c.can("y/b", "x/a", "tcp", 80),
        "same labels, other namespace"
    );
}

#[test]
fn namespace_selector_and_vs_or_peers() {
    // One peer with both selectors: pods b in namespaces labelled ns=y (AND).
    let mut and = Cluster::new();
    and.apply(&[netpol(
        "x",
        "and",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    assert_eq!(
        matrix(&and, 80),
        all_pairs_except(|from, to| to == "x/a" && from != "y/b")
    );
    // Two peers: everything in ns=y, or pods b of x (OR).
    let mut or = Cluster::new();
    or.apply(&[netpol(
        "x",
        "or",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                     {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    assert_eq!(
        matrix(&or, 80),
        all_pairs_except(|from, to| to == "x/a" && !(from.starts_with("y/") || from == "x/b"))
    );
}

#[test]
fn peers_or_and_ports_or_combine_with_and() {
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "z",
        "mix",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                                     {"namespaceSelector": {"matchLabels": {"ns": "x"}},
                                      "podSelector": {"matchLabels": {"pod": "c"}}}],
                            "ports": [{"port": 80}, {"port": 443}, {"protocol": "UDP", "port": 53}]}]}),
    )]);
    for (from, proto, port, ok) in [
        ("z/b", "tcp", 80, true),
        ("z/b", "tcp", 443, true),
        ("z/b", "udp", 53, true),
        ("z/b", "tcp", 53, false),
        ("x/c", "tcp", 443, true),
        ("x/c", "udp", 53, true),
        ("x/c", "tcp", 8080, false),
        ("x/b", "tcp", 80, false),
        ("y/c", "tcp", 80, false),
    ] {
        assert_eq!(c.can(from, "z/a", proto, port), ok, "{from} {proto}/{port}");
    }
}

#[test]
fn named_ports_and_end_port() {
    let mut c = Cluster::new();
    c.apply(&[
        netpol(
            "x",
            "named",
            json!({"podSelector": {},
                   "ingress": [{"ports": [{"port": "serve"}]}]}),
        ),
        netpol(
            "y",
            "range",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                   "ingress": [{"ports": [{"port": 8000, "endPort": 8010}]}],
                   "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve"}]}]}),
        ),
    ]);
    // x/a serves on 80, x/b on 81: each only on its own named port.
    assert!(c.can("z/c", "x/a", "tcp", 80));
    assert!(!c.can("z/c", "x/a", "tcp", 81));
    assert!(c.can("z/c", "x/b", "tcp", 81));
    assert!(!c.can("z/c", "x/b", "tcp", 80));
    assert!(!c.can("z/c", "x/a", "udp", 80), "named port is tcp");
    // endPort: an inclusive range.
    for (port, ok) in [
        (7999, false),
        (8000, true),
        (8005, true),
        (8010, true),
        (8011, false),
    ] {
        assert_eq!(c.can("z/a", "y/b", "tcp", port), ok, "port {port}");
    }
    // Egress to a named port of the destination pod (any namespace).
    assert!(c.can("y/a", "z/b", "tcp", 81));
    assert!(!c.can("y/a", "z/b", "tcp", 80));
    assert!(c.can("y/b", "z/a", "tcp", 80));
    // Numeric OR named in one rule, and more ports than one multiport match holds.
    let many: Vec<_> = (0..20).map(|i| json!({"port": 9000 + 2 * i})).collect();
    let mut ports = vec![json!({"port": 8080}), json!({"port": "serve"})];
    ports.extend(many);
    c.apply(&[netpol(
        "z",
        "mixed",
        json!({"podSelector": {}, "ingress": [{"ports": ports}]}),
    )]);
    for (to, port, ok) in [
        ("z/b", 8080, true),
        ("z/b", 81, true),
        ("z/b", 80, false),
        ("z/a", 80, true),
        ("z/a", 81, false),
        ("z/a", 9000, true),
        ("z/a", 9038, true),
        ("z/a", 9039, false),
        ("z/a", 9040, false),
    ] {
        assert_eq!(c.can("x/c", to, "tcp", port), ok, "{to}:{port}");
    }
    let d = c.calc.desired();
    let ip_port: Vec<_> = d
        .ipsets
        .values()
        .filter(|s| s.kind == IpSetKind::IpPort)
        .collect();
    assert!(
        ip_port
            .iter()
            .any(|s| s.members.contains("10.0.0.1,tcp:80"))
    );
}

#[test]
fn ip_block_with_except() {
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "x",
        "egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}},
                                   {"ipBlock": {"cidr": "172.16.0.0/12"}}]}]}),
    )]);
    let d = c.calc.desired();
    let xa = netmodel::interface_name("x", "a");
    for (dst, ok) in [
        ("10.0.2.1", true),
        ("10.0.1.1", false),
        ("10.1.0.1", false),
        ("172.20.0.1", true),
        ("8.8.8.8", false),
    ] {
        assert_eq!(
            verdict(&d, &packet("10.0.0.1", dst, &xa, "eth0", 80)),
            ok,
            "{dst}"
        );
    }
    // Egress to 0.0.0.0/0 except one range.
    c.apply(&[netpol(
        "x",
        "egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]}),
    )]);
    let d = c.calc.desired();
    assert!(verdict(&d, &packet("10.0.0.1", "8.8.8.8", &xa, "eth0", 80)));
    assert!(!verdict(
        &d,
        &packet("10.0.0.1", "10.0.2.1", &xa, "eth0", 80)
    ));
}

fn allow_all_rule() -> pb::Rule {
    pb::Rule {
        action: pb::Action::Allow as i32,
        ..Default::default()
    }
}

fn from_ns(action: pb::Action, ns: &str) -> pb::Rule {
    pb::Rule {
        action: action as i32,
        source: Some(pb::EntityRule {
            namespace_selector: format!("pcns.ns == '{ns}'"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn gnp(order: f64, inbound: Vec<pb::Rule>) -> pb::Policy {
    pb::Policy {
        order,
        has_order: true,
        selector: "pod == 'a'".into(),
        inbound_rules: inbound,
        types: vec![pb::PolicyType::Ingress as i32],
        tier: "default".into(),
        ..Default::default()
    }
}

#[test]
fn order_and_pass() {
    let mut c = Cluster::new();
    // Order 10 denies from y; order 20 allows everything: y is denied.
    c.apply(&[
        global_policy("deny-y", gnp(10.0, vec![from_ns(pb::Action::Deny, "y")])),
        global_policy("allow", gnp(20.0, vec![allow_all_rule()])),
    ]);
    assert!(!c.can("y/b", "x/a", "tcp", 80));
    assert!(c.can("z/b", "x/a", "tcp", 80));
    // Swap the order: the allow comes first.
    c.apply(&[global_policy(
        "deny-y",
        gnp(30.0, vec![from_ns(pb::Action::Deny, "y")]),
    )]);
    assert!(c.can("y/b", "x/a", "tcp", 80));
    // Pass from z at order 1 skips the rest of the tier: z falls through to the profile
    // (allowed) even when a later policy denies it; a later deny still applies to y.
    c.apply(&[
        global_policy("pass-z", gnp(1.0, vec![from_ns(pb::Action::Pass, "z")])),
        global_policy("allow", gnp(20.0, vec![from_ns(pb::Action::Deny, "z")])),
    ]);
    assert!(c.can("z/b", "x/a", "tcp", 80), "passed");
    assert!(
        !c.can("y/b", "x/a", "tcp", 80),
        "no policy allowed: end of tier drops"
    );
    assert!(!c.can("x/b", "x/a", "tcp", 80));
    // Same order: sorted by name ("a-..." before "b-...").
    let mut c = Cluster::new();
    c.apply(&[
        global_policy("b-allow", gnp(5.0, vec![allow_all_rule()])),
        global_policy("a-deny", gnp(5.0, vec![from_ns(pb::Action::Deny, "y")])),
    ]);
    assert!(!c.can("y/b", "x/a", "tcp", 80));
}

#[test]
fn policy_types_defaulting() {
    // No policyTypes, egress rules present: Ingress and Egress both apply.
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "x",
        "both",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    assert!(
        !c.can("x/b", "x/a", "tcp", 80),
        "ingress defaulted on, no rules"
    );
    assert!(c.can("x/a", "x/b", "tcp", 81));
    assert!(!c.can("x/a", "y/b", "tcp", 81), "egress applies");
    // Only ingress rules: egress stays open.
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "x",
        "in",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {}}]}]}),
    )]);
    assert!(c.can("x/a", "z/b", "tcp", 81));
    assert!(c.can("x/b", "x/a", "tcp", 80));
    assert!(!c.can("y/b", "x/a", "tcp", 80));
}

fn set_with(d: &Desired, member: &str) -> Vec<String> {
    d.ipsets
        .iter()
        .filter(|(_, s)| s.members.contains(member))
        .map(|(n, _)| n.clone())
        .collect()
}

#[test]
fn membership_follows_pod_and_namespace_labels() {
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "x",
        "from-y-web",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]}]}),
    )]);
    assert!(!c.can("y/c", "x/a", "tcp", 80));
    // Namespace y gains the label: its pods (a remote one included) join the set.
    c.apply(&[namespace("y", json!({"ns": "y", "team": "web"}))]);
    assert!(c.can("y/c", "x/a", "tcp", 80));
    assert!(!set_with(&c.calc.desired(), "10.0.1.3/32").is_empty());
    c.apply(&[namespace("y", json!({"ns": "y"}))]);
    assert!(!c.can("y/c", "x/a", "tcp", 80));
    assert!(set_with(&c.calc.desired(), "10.0.1.3/32").is_empty());

    // Pod label change moves a pod in and out of a pod-selector set.
    c.apply(&[netpol(
        "z",
        "from-role",
        json!({"podSelector": {},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    )]);
    assert!(!c.can("z/c", "z/a", "tcp", 80));
    let relabel = pod(
        "z",
        "c",
        "n2",
        &["10.0.2.3"],
        json!({"pod": "c", "role": "client"}),
        &[],
    );
    c.apply(&[relabel]);
    assert!(c.can("z/c", "z/a", "tcp", 80));
    // The pod moves IP: the member follows.
    let moved = pod(
        "z",
        "c",
        "n2",
        &["10.0.2.9"],
        json!({"pod": "c", "role": "client"}),
        &[],
    );
    c.apply(std::slice::from_ref(&moved));
    let d = c.calc.desired();
    assert!(set_with(&d, "10.0.2.3/32").is_empty());
    assert_eq!(set_with(&d, "10.0.2.9/32").len(), 1);
    c.apply(&[delete(&moved)]);
    assert!(set_with(&c.calc.desired(), "10.0.2.9/32").is_empty());
}

#[test]
fn network_sets_join_selector_sets() {
    let mut c = Cluster::new();
    let mut policy = gnp(1.0, Vec::new());
    policy.types = vec![pb::PolicyType::Egress as i32];
    policy.outbound_rules = vec![pb::Rule {
        action: pb::Action::Allow as i32,
        destination: Some(pb::EntityRule {
            selector: "kind == 'dns'".into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    c.apply(&[
        global_policy("to-dns", policy),
        global_net_set(
            "dns",
            &["8.8.8.8/32", "0.0.0.0/0", "fd00::/64"],
            &[("kind", "dns")],
        ),
    ]);
    let d = c.calc.desired();
    let xa = netmodel::interface_name("x", "a");
    assert!(verdict(&d, &packet("10.0.0.1", "1.2.3.4", &xa, "eth0", 53)));
    let v4: Vec<_> = d
        .ipsets
        .values()
        .filter(|s| s.family == Family::V4 && s.members.contains("8.8.8.8/32"))
        .collect();
    assert_eq!(v4.len(), 1);
    assert!(v4[0].members.contains("0.0.0.0/1") && v4[0].members.contains("128.0.0.0/1"));
    assert!(
        d.ipsets
            .values()
            .any(|s| s.family == Family::V6 && s.members.contains("fd00::/64"))
    );
    c.apply(&[global_net_set("dns", &["8.8.8.8/32"], &[("kind", "other")])]);
    let d = c.calc.desired();
    assert!(!verdict(
        &d,
        &packet("10.0.0.1", "8.8.8.8", &xa, "eth0", 53)
    ));
}

#[test]
fn inactive_policies_keep_no_selectors() {
    let mut c = Cluster::new();
    // Selects nothing on this node (pod c is remote everywhere): no sets, no selectors.
    c.apply(&[netpol(
        "x",
        "c-only",
        json!({"podSelector": {"matchLabels": {"pod": "c"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    assert_eq!(c.calc.active_selectors(), 0);
    assert!(c.calc.desired().ipsets.is_empty());
    // The same rules on a local pod: one selector, one set.
    c.apply(&[netpol(
        "x",
        "c-only",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    assert_eq!(c.calc.active_selectors(), 1);
    // One set per family, from the one selector.
    assert_eq!(c.calc.desired().ipsets.len(), 2);
    c.apply(&[delete(&netpol("x", "c-only", json!({})))]);
    assert_eq!(c.calc.active_selectors(), 0);
    assert!(c.calc.desired().ipsets.is_empty());
}

#[test]
fn unchanged_sets_keep_their_arc() {
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "x",
        "p",
        json!({"podSelector": {},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                                     {"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
    )]);
    let before = c.calc.desired();
    // A pod in y changes: neither set can change.
    c.apply(&[pod(
        "y",
        "a",
        "n2",
        &["10.0.1.1"],
        json!({"pod": "a", "v": "2"}),
        &[],
    )]);
    let after = c.calc.desired();
    assert_eq!(before.ipsets.len(), 4, "two selectors, two families");
    for (name, set) in &before.ipsets {
        assert!(
            Arc::ptr_eq(&set.members, &after.ipsets[name].members),
            "{name}"
        );
    }
    // A pod in z changes IP: that set changes (and gets a new Arc), the other does not.
    c.apply(&[pod("z", "a", NODE, &["10.0.2.7"], json!({"pod": "a"}), &[])]);
    let third = c.calc.desired();
    let changed: Vec<_> = before
        .ipsets
        .iter()
        .filter(|(n, s)| !Arc::ptr_eq(&s.members, &third.ipsets[*n].members))
        .collect();
    assert_eq!(changed.len(), 1);
    assert!(third.ipsets[changed[0].0].members.contains("10.0.2.7/32"));
    assert_ne!(before.ipsets, third.ipsets);
}

#[test]
fn routes_and_nat_in_networking_mode() {
    let node = |name: &str, ip: &str, cidr: &str| {
        Update::new(
            Key::cluster(Kind::Node, name).unwrap(),
            Some(Value::Node(pb::Node {
                name: name.into(),
                addresses: vec![ip.into()],
                pod_cidrs: vec![cidr.into()],
                ipv4_address: ip.into(),
                ..Default::default()
            })),
        )
        .unwrap()
    };
    let pool = |name: &str, cidr: &str, nat: bool, disabled: bool| {
        Update::new(
            Key::cluster(Kind::IpPool, name).unwrap(),
            Some(Value::IpPool(pb::IpPool {
                cidr: cidr.into(),
                nat_outgoing: nat,
                disabled,
                ..Default::default()
            })),
        )
        .unwrap()
    };
    let extra = [
        node(NODE, "192.168.0.1", "10.0.0.0/24"),
        node("n2", "192.168.0.2", "10.0.1.0/24"),
        pool("default", "10.0.0.0/16", true, false),
        pool("off", "10.1.0.0/16", true, true),
    ];
    let mut updates = cluster_updates();
    updates.extend(extra.iter().cloned());
    let mut net = Calc::new(config(CalcMode::Networking));
    net.apply(&updates);
    let d = net.desired();
    let xa = netmodel::interface_name("x", "a");
    assert!(d.routes.contains(&Route {
        dst: "10.0.0.1/32".into(),
        target: RouteTarget::Interface(xa.clone()),
    }));
    assert!(d.routes.contains(&Route {
        dst: "10.0.1.0/24".into(),
        target: RouteTarget::Gateway("192.168.0.2".parse().unwrap()),
    }));
    assert!(!d.routes.iter().any(|r| r.dst == "10.0.0.0/24"), "own node");
    assert!(
        !d.routes.iter().any(|r| r.dst == "10.0.2.3/32"),
        "remote pod"
    );
    assert_eq!(
        d.v4.nat["cali-POSTROUTING"],
        vec![
            "-m set --match-set cali4-masq-pools src -m set ! --match-set cali4-all-pools dst -j MASQUERADE"
        ]
    );
    let masq = &d.ipsets["cali4-masq-pools"].members;
    assert_eq!(masq.iter().collect::<Vec<_>>(), vec!["10.0.0.0/16"]);
    let all = &d.ipsets["cali4-all-pools"].members;
    assert_eq!(
        all.iter().collect::<Vec<_>>(),
        vec!["10.0.0.0/16", "10.1.0.0/16", "10.96.0.0/12"]
    );
    assert!(d.v6.nat["cali-POSTROUTING"].is_empty());
    // Policy-only: local routes only, no NAT.
    let mut po = Calc::new(config(CalcMode::PolicyOnly));
    po.apply(&updates);
    let d = po.desired();
    assert!(
        d.routes
            .iter()
            .all(|r| matches!(r.target, RouteTarget::Interface(_)))
    );
    assert_eq!(d.routes.len(), 6);
    assert!(d.v4.nat["cali-POSTROUTING"].is_empty());
    assert!(!d.ipsets.contains_key("cali4-masq-pools"));
    // A node going away takes its route along.
    net.apply(&[delete(&extra[1])]);
    assert!(!net.desired().routes.iter().any(|r| r.dst == "10.0.1.0/24"));
}

#[test]
fn ipv6_endpoints_get_v6_rules_and_sets() {
    let mut c = Calc::new(config(CalcMode::PolicyOnly));
    c.apply(&[
        namespace("x", json!({"ns": "x"})),
        pod(
            "x",
            "a",
            NODE,
            &["10.0.0.1", "fd00::1"],
            json!({"pod": "a"}),
            &[],
        ),
        pod(
            "x",
            "b",
            "n2",
            &["10.0.0.2", "fd00::2"],
            json!({"pod": "b"}),
            &[],
        ),
        pod(
            "x",
            "c",
            "n2",
            &["10.0.0.3", "fd00::3"],
            json!({"pod": "c"}),
            &[],
        ),
        netpol(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                                          {"ipBlock": {"cidr": "fd00:1::/64"}}]}]}),
        ),
    ]);
    let d = c.desired();
    let xa = netmodel::interface_name("x", "a");
    let v6 = |src: &str| {
        let p = Packet {
            proto: "tcp",
            ..packet(src, "fd00::1", "eth0", &xa, 80)
        };
        verdict(&d, &p)
    };
    assert!(v6("fd00::2"));
    assert!(!v6("fd00::3"));
    assert!(v6("fd00:1::5"));
    assert!(verdict(
        &d,
        &packet("10.0.0.2", "10.0.0.1", "eth0", &xa, 80)
    ));
    assert!(!verdict(
        &d,
        &packet("10.0.0.3", "10.0.0.1", "eth0", &xa, 80)
    ));
    assert!(d.routes.contains(&Route {
        dst: "fd00::1/128".into(),
        target: RouteTarget::Interface(xa.clone()),
    }));
    let v6_sets: Vec<_> = d
        .ipsets
        .values()
        .filter(|s| s.family == Family::V6)
        .collect();
    assert_eq!(v6_sets.len(), 1);
    assert_eq!(
        v6_sets[0].members.iter().collect::<Vec<_>>(),
        vec!["fd00::2/128"]
    );
    // The v4 table never mentions the v6 block; the v6 one never the v4 sets.
    let text = |t: &crate::calc::Tables| format!("{:?}", t.filter);
    assert!(!text(&d.v4).contains("fd00"));
    for tag in ["cali4s-", "cali4n-", "cali4p-"] {
        assert!(!text(&d.v6).contains(tag));
    }
}

#[test]
fn names_fit_the_kernel_limits() {
    let mut c = Cluster::new();
    c.apply(&[netpol(
        "x",
        "a-policy-with-a-really-quite-long-name-indeed",
        json!({"podSelector": {},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                            "ports": [{"port": "serve"}]}]}),
    )]);
    let d = c.calc.desired();
    for t in [&d.v4, &d.v6] {
        for name in t.filter.keys().chain(t.nat.keys()) {
            assert!(name.starts_with("cali-") && name.len() <= 28, "{name}");
        }
    }
    for name in d.ipsets.keys() {
        assert!(name.starts_with("cali") && name.len() <= 31, "{name}");
    }
}

#[test]
fn namespace_selector_scan_sees_own_inherited_labels() {
    // Calico's inheritance lets an endpoint's own label shadow its profile's; the
    // namespace-restricted scan of a new selector must agree with evaluation.
    let spoof = pod(
        "z",
        "s",
        "n2",
        &["10.0.2.9"],
        json!({"pcns.team": "web"}),
        &[],
    );
    let policy = netpol(
        "x",
        "from-web",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]}]}),
    );
    for order in [[spoof.clone(), policy.clone()], [policy, spoof]] {
        let mut c = Cluster::new();
        c.apply(&order);
        assert_eq!(set_with(&c.calc.desired(), "10.0.2.9/32").len(), 1);
    }
}
