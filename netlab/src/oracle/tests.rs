//! Hand-checked cases for the oracle: each asserts a few probes whose answers follow
//! from the Kubernetes API reference, including the surprising ones (policyTypes
//! defaulting, AND within one peer, named ports resolved on the destination).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::policy::{LabelSelector as Sel, PolicyPort as Port, Protocol::*};
use crate::stack::IpFamily::{self, V4};

fn pod(ns: &str, name: &str, ip: [u8; 4]) -> ClusterPod {
    let ports = [(80, Tcp), (80, Udp), (81, Tcp), (81, Udp)]
        .into_iter()
        .map(|(port, protocol)| NamedPort {
            name: format!("serve-{port}-{}", protocol.as_k8s().to_lowercase()),
            protocol,
            port,
        })
        .collect();
    ClusterPod {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::from([("pod".to_string(), name.to_string())]),
        ips: vec![IpAddr::from(ip)],
        ports,
    }
}

/// x/{a,b,c} on 10.244.0.{2,3,4}, y/{a,b} on 10.244.1.{2,3}; namespace x labelled
/// `team: red`. The namespace objects do not list `kubernetes.io/metadata.name`.
fn cluster() -> Cluster {
    let mut namespaces = BTreeMap::new();
    for ns in ["x", "y"] {
        namespaces.insert(
            ns.to_string(),
            BTreeMap::from([("ns".to_string(), ns.to_string())]),
        );
    }
    namespaces
        .get_mut("x")
        .unwrap()
        .insert("team".into(), "red".into());
    Cluster {
        namespaces,
        pods: vec![
            pod("x", "a", [10, 244, 0, 2]),
            pod("x", "b", [10, 244, 0, 3]),
            pod("x", "c", [10, 244, 0, 4]),
            pod("y", "a", [10, 244, 1, 2]),
            pod("y", "b", [10, 244, 1, 3]),
        ],
    }
}

fn can(policies: &[Policy], from: &str, to: &str, protocol: Protocol, port: u16) -> bool {
    let c = cluster();
    let find = |id: &str| c.pods.iter().find(|p| p.id() == id).unwrap().clone();
    allowed(
        &c,
        policies,
        &find(from),
        &find(to),
        (port, protocol),
        IpFamily::V4,
    )
}

#[test]
fn no_policy_allows_everything() {
    let m = expected(&cluster(), &[], &[(Tcp, 80), (Udp, 81)]);
    assert_eq!(m.len(), 5 * 5 * 2);
    assert_eq!(m.reachable(), m.len());
}

#[test]
fn default_deny_ingress_isolates_only_ingress_of_its_namespace() {
    let p = [Policy::new("x", "deny", Sel::all())];
    assert!(!can(&p, "x/a", "x/b", Tcp, 80));
    assert!(!can(&p, "y/a", "x/b", Udp, 81));
    assert!(can(&p, "x/a", "y/a", Tcp, 80), "egress is not isolated");
    assert!(can(&p, "y/b", "y/a", Tcp, 80));
    assert!(can(&p, "x/a", "x/a", Tcp, 80), "loopback");
    let m = expected(&cluster(), &p, &[(Tcp, 80)]);
    // Into x only self-connections survive: 5 sources x 3 x-pods, minus 3 self.
    assert_eq!(m.reachable(), 25 - (15 - 3));
}

#[test]
fn default_deny_egress() {
    let p = [Policy::new("x", "deny", Sel::all()).types(&[PolicyType::Egress])];
    assert!(!can(&p, "x/a", "y/a", Tcp, 80));
    assert!(!can(&p, "x/a", "x/b", Udp, 80));
    assert!(can(&p, "y/a", "x/a", Tcp, 80), "ingress is not isolated");
}

#[test]
fn policy_types_default_to_egress_when_egress_rules_exist() {
    let egress_only_rule = Policy::new("x", "p", Sel::label("pod", "a"))
        .egress(Rule::from_peers(vec![Peer::pods(Sel::label("pod", "b"))]));
    assert_eq!(
        egress_only_rule.effective_types(),
        vec![PolicyType::Ingress, PolicyType::Egress]
    );
    let p = [egress_only_rule];
    assert!(can(&p, "x/a", "x/b", Tcp, 80));
    assert!(!can(&p, "x/a", "x/c", Tcp, 80));
    assert!(
        !can(&p, "x/b", "x/a", Tcp, 80),
        "ingress defaulted in and has no rule"
    );
    // Explicit Egress only: ingress stays open.
    let p = [p[0].clone().types(&[PolicyType::Egress])];
    assert!(can(&p, "x/b", "x/a", Tcp, 80));
}

#[test]
fn pod_selector_peers_are_in_the_policy_namespace() {
    let p = [Policy::new("x", "p", Sel::label("pod", "a"))
        .ingress(Rule::from_peers(vec![Peer::pods(Sel::label("pod", "b"))]))];
    assert!(can(&p, "x/b", "x/a", Tcp, 80));
    assert!(
        !can(&p, "y/b", "x/a", Tcp, 80),
        "y/b is in another namespace"
    );
    assert!(!can(&p, "x/c", "x/a", Tcp, 80));
    assert!(can(&p, "x/c", "x/b", Tcp, 80), "x/b is not selected");
}

#[test]
fn namespace_selector_and_vs_or() {
    // One peer with both selectors: pod b in namespaces labelled ns=y.
    let and = [
        Policy::new("x", "p", Sel::label("pod", "a")).ingress(Rule::from_peers(vec![
            Peer::pods_in(Sel::label("ns", "y"), Sel::label("pod", "b")),
        ])),
    ];
    assert!(can(&and, "y/b", "x/a", Tcp, 80));
    assert!(!can(&and, "y/a", "x/a", Tcp, 80));
    assert!(!can(&and, "x/b", "x/a", Tcp, 80));
    // Two peers: namespaces ns=y OR pod b of x.
    let or = [
        Policy::new("x", "p", Sel::label("pod", "a")).ingress(Rule::from_peers(vec![
            Peer::namespaces(Sel::label("ns", "y")),
            Peer::pods(Sel::label("pod", "b")),
        ])),
    ];
    assert!(can(&or, "y/b", "x/a", Tcp, 80));
    assert!(can(&or, "y/a", "x/a", Tcp, 80));
    assert!(can(&or, "x/b", "x/a", Tcp, 80));
    assert!(!can(&or, "x/c", "x/a", Tcp, 80));
}

#[test]
fn match_expressions() {
    let sel = Sel::all()
        .and_expr("pod", Operator::In, &["b", "c"])
        .and_expr("missing", Operator::DoesNotExist, &[]);
    let p = [
        Policy::new("x", "p", Sel::all()).ingress(Rule::from_peers(vec![Peer::namespaces(
            Sel::all().and_expr("team", Operator::Exists, &[]),
        )])),
    ];
    assert!(can(&p, "x/b", "x/a", Tcp, 80));
    assert!(!can(&p, "y/b", "x/a", Tcp, 80), "y has no team label");
    let labels = |v: &str| BTreeMap::from([("pod".to_string(), v.to_string())]);
    assert!(selects(&sel, &labels("b")));
    assert!(!selects(&sel, &labels("a")));
    let not_in = Sel::all().and_expr("pod", Operator::NotIn, &["a"]);
    assert!(
        selects(&not_in, &BTreeMap::new()),
        "NotIn holds when the label is absent"
    );
    assert!(!selects(&not_in, &labels("a")));
}

#[test]
fn numeric_and_named_ports() {
    let p = [
        Policy::new("x", "p", Sel::label("pod", "a")).ingress(Rule::allow_all().with_ports(vec![
            Port::number(Tcp, 81),
            Port::named(Udp, "serve-80-udp"),
            // A TCP port name used with UDP matches nothing.
            Port::named(Udp, "serve-81-tcp"),
        ])),
    ];
    assert!(can(&p, "y/a", "x/a", Tcp, 81));
    assert!(!can(&p, "y/a", "x/a", Tcp, 80));
    assert!(can(&p, "y/a", "x/a", Udp, 80));
    assert!(!can(&p, "y/a", "x/a", Udp, 81));
    let default_tcp = [
        Policy::new("x", "p", Sel::all()).ingress(Rule::allow_all().with_ports(vec![PolicyPort {
            protocol: None,
            port: Some(PortValue::Number(80)),
            end_port: None,
        }])),
    ];
    assert!(can(&default_tcp, "y/a", "x/a", Tcp, 80));
    assert!(!can(&default_tcp, "y/a", "x/a", Udp, 80));
}

#[test]
fn named_port_in_egress_resolves_on_the_destination() {
    let mut c = cluster();
    // y/b names only 80/tcp.
    c.pods[4]
        .ports
        .retain(|p| p.port == 80 && p.protocol == Tcp);
    let p = [Policy::new("x", "p", Sel::label("pod", "a"))
        .types(&[PolicyType::Egress])
        .egress(Rule::allow_all().with_ports(vec![Port::named(Tcp, "serve-80-tcp")]))];
    let find = |id: &str| c.pods.iter().find(|p| p.id() == id).unwrap().clone();
    assert!(allowed(&c, &p, &find("x/a"), &find("y/b"), (80, Tcp), V4));
    c.pods[4].ports.clear();
    let find = |id: &str| c.pods.iter().find(|p| p.id() == id).unwrap().clone();
    assert!(!allowed(&c, &p, &find("x/a"), &find("y/b"), (80, Tcp), V4));
    assert!(allowed(&c, &p, &find("x/a"), &find("y/a"), (80, Tcp), V4));
}

#[test]
fn end_port_is_an_inclusive_range() {
    let p = [Policy::new("x", "p", Sel::all())
        .ingress(Rule::allow_all().with_ports(vec![Port::range(Tcp, 81, 90)]))];
    assert!(!can(&p, "y/a", "x/a", Tcp, 80));
    assert!(can(&p, "y/a", "x/a", Tcp, 81));
    assert!(!can(&p, "y/a", "x/a", Udp, 81));
    let q = [Policy::new("x", "p", Sel::all())
        .ingress(Rule::allow_all().with_ports(vec![Port::range(Tcp, 79, 80)]))];
    assert!(can(&q, "y/a", "x/a", Tcp, 80));
    assert!(!can(&q, "y/a", "x/a", Tcp, 81));
}

#[test]
fn ip_block_with_except() {
    let p = [
        Policy::new("x", "p", Sel::label("pod", "a")).ingress(Rule::from_peers(vec![
            Peer::ip_block("10.244.0.0/16", &["10.244.1.2/32", "10.244.0.0/30"]),
        ])),
    ];
    assert!(can(&p, "y/b", "x/a", Tcp, 80), "10.244.1.3 is in the block");
    assert!(!can(&p, "y/a", "x/a", Tcp, 80), "10.244.1.2 is excepted");
    assert!(
        !can(&p, "x/b", "x/a", Tcp, 80),
        "10.244.0.3 is in the /30 except"
    );
    assert!(can(&p, "x/c", "x/a", Tcp, 80), "10.244.0.4 is past the /30");
    let block = IpBlock {
        cidr: "0.0.0.0/0".into(),
        except: vec![],
    };
    assert!(ip_block_contains(&block, Ipv4Addr::new(1, 2, 3, 4).into()));
    assert!(
        !ip_block_contains(&block, "fd00::1".parse().unwrap()),
        "an IPv4 block holds no IPv6 address"
    );
}

#[test]
fn egress_deny_wins_over_ingress_allow() {
    let p = [
        Policy::new("x", "deny-egress", Sel::label("pod", "a")).types(&[PolicyType::Egress]),
        Policy::new("y", "allow-all-in", Sel::all()).ingress(Rule::allow_all()),
    ];
    assert!(!can(&p, "x/a", "y/a", Tcp, 80));
    assert!(can(&p, "x/b", "y/a", Tcp, 80));
    assert!(can(&p, "y/a", "x/a", Tcp, 80));
}

#[test]
fn policies_add_up() {
    let p = [
        Policy::new("x", "deny", Sel::all()),
        Policy::new("x", "allow-b", Sel::label("pod", "a"))
            .ingress(Rule::from_peers(vec![Peer::pods(Sel::label("pod", "b"))])),
        Policy::new("x", "allow-y-81", Sel::label("pod", "a")).ingress(
            Rule::from_peers(vec![Peer::namespaces(Sel::label("ns", "y"))])
                .with_ports(vec![Port::number(Udp, 81)]),
        ),
    ];
    assert!(can(&p, "x/b", "x/a", Tcp, 80));
    assert!(can(&p, "y/b", "x/a", Udp, 81));
    assert!(!can(&p, "y/b", "x/a", Tcp, 81));
    assert!(!can(&p, "x/c", "x/b", Tcp, 80));
}

#[test]
fn diff_marks_mismatches() {
    let p = [Policy::new("x", "deny", Sel::all())];
    let want = expected(&cluster(), &p, &[(Tcp, 80)]);
    let mut seen = expected(&cluster(), &[], &[(Tcp, 80)]);
    assert_eq!(want.mismatches(&seen).len(), 12);
    let key = ProbeKey {
        from: "y/a".into(),
        to: "y/b".into(),
        protocol: Tcp,
        port: 80,
        family: IpFamily::V4,
    };
    seen.insert(key.clone(), false);
    let text = want.render_diff(&seen);
    assert!(text.contains("TCP/80"), "{text}");
    assert!(
        text.contains("y/a -> y/b TCP/80 over IPv4: expected reachable, observed blocked"),
        "{text}"
    );
    assert!(text.contains(" R"), "{text}");
    assert!(text.contains(" B"), "{text}");
}

#[test]
fn the_api_servers_namespace_name_label_selects_with_in_and_not_in() {
    let by_name = |op, names: &[&str]| Sel::all().and_expr(NAMESPACE_NAME_LABEL, op, names);
    let only_y = [
        Policy::new("x", "from-y", Sel::all()).ingress(Rule::from_peers(vec![Peer::namespaces(
            by_name(Operator::In, &["y"]),
        )])),
    ];
    assert!(can(&only_y, "y/a", "x/b", Tcp, 80));
    assert!(!can(&only_y, "x/a", "x/b", Tcp, 80));
    let not_x = [
        Policy::new("x", "not-from-x", Sel::all()).ingress(Rule::from_peers(vec![
            Peer::namespaces(by_name(Operator::NotIn, &["x"])),
        ])),
    ];
    assert!(can(&not_x, "y/b", "x/c", Tcp, 80));
    assert!(!can(&not_x, "x/a", "x/c", Tcp, 80));
    // The label cannot be faked: a namespace object claiming another name is ignored.
    let mut c = cluster();
    c.namespaces
        .get_mut("x")
        .unwrap()
        .insert(NAMESPACE_NAME_LABEL.into(), "y".into());
    assert_eq!(c.namespace_labels("x")[NAMESPACE_NAME_LABEL], "x");
}

#[test]
fn dual_stack_pairs_are_judged_per_family() {
    // Every pod also gets fd00:10:244:<n>::<h> for its 10.244.<n>.<h>.
    let mut c = cluster();
    for p in &mut c.pods {
        let IpAddr::V4(v4) = p.ips[0] else { panic!() };
        let [_, _, n, h] = v4.octets();
        p.ips.push(format!("fd00:10:244:{n}::{h}").parse().unwrap());
    }
    let p = [
        Policy::new("x", "mixed", Sel::label("pod", "a")).ingress(Rule::from_peers(vec![
            Peer::pods(Sel::label("pod", "b")),
            Peer::ip_block("10.244.1.0/24", &[]),
            Peer::ip_block("fd00:10:244:1::/64", &["fd00:10:244:1::2/128"]),
        ])),
    ];
    let m = expected(&c, &p, &[(Tcp, 80)]);
    assert_eq!(m.len(), 5 * 5 * 2, "every pair over both families");
    let get = |from: &str, to: &str, family| {
        m.get(&ProbeKey {
            from: from.into(),
            to: to.into(),
            protocol: Tcp,
            port: 80,
            family,
        })
        .unwrap()
    };
    // A selector admits both families.
    assert!(get("x/b", "x/a", V4) && get("x/b", "x/a", IpFamily::V6));
    assert!(!get("x/c", "x/a", V4) && !get("x/c", "x/a", IpFamily::V6));
    // Each block admits only its own family.
    assert!(get("y/a", "x/a", V4), "in the IPv4 block");
    assert!(
        !get("y/a", "x/a", IpFamily::V6),
        "excepted from the IPv6 block"
    );
    assert!(get("y/b", "x/a", V4) && get("y/b", "x/a", IpFamily::V6));
    // An IPv4-only pod is probed over IPv4 only.
    c.pods[0].ips.truncate(1);
    let m = expected(&c, &p, &[(Tcp, 80)]);
    assert_eq!(m.len(), 5 * 5 * 2 - (5 + 4), "no IPv6 probe to or from it");
}
