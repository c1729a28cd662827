//! Host endpoints: policy on this node's named and all-interfaces endpoints (INPUT,
//! OUTPUT, FORWARD with applyOnForward), default deny, the default-allow profile,
//! failsafe ports, automatic host endpoints admitting node addresses, and what is not
//! applied (preDNAT).

use super::sim::{self, Packet, Verdict};
use super::*;
use crate::calc::hosts::{
    DEFAULT_ALLOW_PROFILE, FROM_HOST_DISPATCH, FailsafePort, FailsafeProtocol, HostConfig,
    parse_failsafe,
};

fn hep(name: &str, node: &str, iface: &str, profiles: &[&str]) -> Update {
    Update::new(
        Key::cluster(Kind::HostEndpoint, name).unwrap(),
        Some(Value::HostEndpoint(pb::HostEndpoint {
            node: node.into(),
            interface_name: iface.into(),
            expected_ips: vec!["10.99.0.1".into()],
            labels: [("role".to_string(), "node".to_string())].into(),
            profile_ids: profiles.iter().map(|p| p.to_string()).collect(),
            ports: vec![],
        })),
    )
    .unwrap()
}

fn allow_port(port: u32) -> pb::Rule {
    pb::Rule {
        action: pb::Action::Allow as i32,
        protocol: pb::Protocol::Tcp as i32,
        destination: Some(pb::EntityRule {
            ports: vec![pb::PortRange {
                first: port,
                last: port,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A policy on `role == 'node'` with `inbound` rules (Ingress, plus Egress when
/// `egress`), applied on forward when asked.
fn host_policy(inbound: Vec<pb::Rule>, egress: bool, forward: bool) -> pb::Policy {
    let mut types = vec![pb::PolicyType::Ingress as i32];
    if egress {
        types.push(pb::PolicyType::Egress as i32);
    }
    pb::Policy {
        order: 10.0,
        has_order: true,
        selector: "role == 'node'".into(),
        inbound_rules: inbound,
        types,
        tier: "default".into(),
        apply_on_forward: forward,
        ..Default::default()
    }
}

fn tcp(src: &str, dst: &str, iif: Option<&str>, oif: Option<&str>, dport: u16) -> Packet {
    let mut p = packet(src, dst, "x", "x", dport);
    p.iif = iif.map(Into::into);
    p.oif = oif.map(Into::into);
    p
}

/// Allowed by `root` (accepted, or handed back to the kernel's chain).
fn allowed(d: &Desired, root: &str, p: &Packet) -> bool {
    sim::run(d, root, p) != Verdict::Drop
}

fn to_host(d: &Desired, iif: &str, dport: u16) -> bool {
    allowed(
        d,
        "cali-INPUT",
        &tcp("10.99.0.9", "10.99.0.1", Some(iif), None, dport),
    )
}

fn from_host(d: &Desired, oif: &str, dport: u16) -> bool {
    allowed(
        d,
        "cali-OUTPUT",
        &tcp("10.99.0.1", "10.99.0.9", None, Some(oif), dport),
    )
}

fn forwarded(d: &Desired, dport: u16) -> bool {
    let p = tcp("10.99.0.9", "10.98.0.9", Some("eth0"), Some("eth1"), dport);
    allowed(d, "cali-FORWARD", &p)
}

#[test]
fn no_host_endpoint_no_host_chains() {
    let mut calc = Calc::new(config(CalcMode::PolicyOnly));
    calc.apply(&[hep("other", "n2", "eth0", &[])]);
    calc.apply(&[global_policy("p", host_policy(vec![], true, true))]);
    let d = calc.desired();
    assert!(!d.v4.filter.contains_key(FROM_HOST_DISPATCH));
    assert!(to_host(&d, "eth0", 8082) && from_host(&d, "eth0", 8082) && forwarded(&d, 8082));
}

#[test]
fn named_interface_policy_denies_one_port_allows_another() {
    let mut calc = Calc::new(config(CalcMode::PolicyOnly));
    calc.apply(&[hep("h", NODE, "eth0", &[])]);
    // A host endpoint without policy: default deny, failsafe open.
    let d = calc.desired();
    assert!(!to_host(&d, "eth0", 8081) && !from_host(&d, "eth0", 8081));
    assert!(to_host(&d, "eth0", 22) && to_host(&d, "eth0", 6443));
    assert!(from_host(&d, "eth0", 6443), "outbound failsafe");
    assert!(
        to_host(&d, "eth1", 8081),
        "another interface is not covered"
    );
    calc.apply(&[global_policy(
        "p",
        host_policy(vec![allow_port(8081)], false, false),
    )]);
    let d = calc.desired();
    assert!(to_host(&d, "eth0", 8081));
    assert!(!to_host(&d, "eth0", 8082));
    assert!(to_host(&d, "eth0", 22), "failsafe under policy");
    assert!(
        !from_host(&d, "eth0", 8081),
        "no egress policy: default deny"
    );
    assert!(allowed(
        &d,
        "cali-INPUT",
        &tcp("10.99.0.9", "127.0.0.1", Some("lo"), None, 8082)
    ));
    // Forwarded traffic: no applyOnForward policy, allowed.
    assert!(forwarded(&d, 8082));
    calc.apply(&[delete(&hep("h", NODE, "eth0", &[]))]);
    let d = calc.desired();
    assert!(!d.v4.filter.contains_key(FROM_HOST_DISPATCH));
    assert!(to_host(&d, "eth0", 8082));
}

#[test]
fn apply_on_forward_is_honoured() {
    let mut calc = Calc::new(config(CalcMode::PolicyOnly));
    calc.apply(&[hep("h", NODE, "eth0", &[])]);
    calc.apply(&[global_policy(
        "p",
        host_policy(vec![allow_port(8081)], false, false),
    )]);
    assert!(forwarded(&calc.desired(), 8082), "not applied on forward");
    calc.apply(&[global_policy(
        "p",
        host_policy(vec![allow_port(8081)], false, true),
    )]);
    let d = calc.desired();
    assert!(forwarded(&d, 8081));
    assert!(!forwarded(&d, 8082), "applied on forward");
    assert!(!to_host(&d, "eth0", 8082), "and still to the host");
}

#[test]
fn all_interfaces_with_the_default_allow_profile() {
    let mut calc = Calc::new(config(CalcMode::PolicyOnly));
    calc.apply(&[hep("h", NODE, "*", &[DEFAULT_ALLOW_PROFILE])]);
    let d = calc.desired();
    for iface in ["eth0", "eth1"] {
        assert!(
            to_host(&d, iface, 8082) && from_host(&d, iface, 8082),
            "{iface}"
        );
    }
    let deny = pb::Rule {
        action: pb::Action::Deny as i32,
        ..allow_port(8082)
    };
    calc.apply(&[global_policy("p", host_policy(vec![deny], false, false))]);
    let d = calc.desired();
    for iface in ["eth0", "eth1"] {
        assert!(!to_host(&d, iface, 8082), "{iface}");
        assert!(
            !to_host(&d, iface, 8081),
            "{iface}: the policy applies, its tier ends in deny"
        );
        assert!(
            from_host(&d, iface, 8082),
            "{iface}: egress: the profile allows"
        );
    }
    // Workload traffic is not host traffic.
    let pod = tcp("10.244.0.5", "10.99.0.1", Some("cali12345"), None, 8082);
    assert!(allowed(&d, "cali-INPUT", &pod));
}

#[test]
fn pre_dnat_policies_are_not_applied() {
    let mut calc = Calc::new(config(CalcMode::PolicyOnly));
    calc.apply(&[hep("h", NODE, "*", &[DEFAULT_ALLOW_PROFILE])]);
    let mut p = host_policy(vec![], false, true);
    p.pre_dnat = true;
    calc.apply(&[global_policy("p", p)]);
    assert!(to_host(&calc.desired(), "eth0", 8082));
}

fn node_update(name: &str, ip: &str) -> Update {
    Update::new(
        Key::cluster(Kind::Node, name).unwrap(),
        Some(Value::Node(pb::Node {
            name: name.into(),
            addresses: vec![ip.into()],
            pod_cidrs: vec![],
            labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
            ipv4_address: ip.into(),
        })),
    )
    .unwrap()
}

#[test]
fn auto_host_endpoints_let_rules_select_nodes() {
    let hosts = HostConfig {
        failsafe_inbound: parse_failsafe("tcp:22").unwrap(),
        auto_host_endpoints: true,
        ..HostConfig::default()
    };
    let mut calc = Calc::with_hosts(config(CalcMode::PolicyOnly), hosts);
    calc.apply(&[
        node_update(NODE, "10.99.0.1"),
        node_update("n2", "10.99.0.2"),
    ]);
    let from_nodes = pb::Rule {
        source: Some(pb::EntityRule {
            selector: "has(kubernetes.io/hostname)".into(),
            ..Default::default()
        }),
        ..allow_port(5473)
    };
    let deny = pb::Rule {
        action: pb::Action::Deny as i32,
        ..allow_port(5473)
    };
    let rest = pb::Rule {
        action: pb::Action::Allow as i32,
        ..Default::default()
    };
    let mut policy = host_policy(vec![from_nodes, deny, rest], false, false);
    policy.selector = "has(kubernetes.io/hostname)".into();
    calc.apply(&[global_policy("typha", policy)]);
    let d = calc.desired();
    let to = |src: &str, port| {
        allowed(
            &d,
            "cali-INPUT",
            &tcp(src, "10.99.0.1", Some("eth0"), None, port),
        )
    };
    assert!(to("10.99.0.2", 5473), "a node");
    assert!(!to("10.99.0.200", 5473), "not a node");
    assert!(to("10.99.0.200", 8080), "other ports");
    assert!(
        from_host(&d, "eth0", 8080),
        "egress: the default-allow profile"
    );
    // A node leaving takes its address out of the set.
    calc.apply(&[delete(&node_update("n2", "10.99.0.2"))]);
    let d = calc.desired();
    let p = tcp("10.99.0.2", "10.99.0.1", Some("eth0"), None, 5473);
    assert!(!allowed(&d, "cali-INPUT", &p));
}

#[test]
fn failsafe_lists_parse_like_calico() {
    let tcp22 = FailsafePort {
        protocol: FailsafeProtocol::Tcp,
        port: 22,
    };
    assert_eq!(parse_failsafe("22").unwrap(), vec![tcp22]);
    assert_eq!(parse_failsafe("tcp:22").unwrap(), vec![tcp22]);
    assert_eq!(
        parse_failsafe("UDP:68").unwrap()[0].protocol,
        FailsafeProtocol::Udp
    );
    assert!(parse_failsafe("none").unwrap().is_empty());
    assert!(parse_failsafe("icmp:1").is_err());
    assert!(parse_failsafe("tcp:0").is_err());
    assert!(parse_failsafe("tcp:70000").is_err());
    let defaults = HostConfig::default();
    assert_eq!(defaults.failsafe_inbound.len(), 9);
    assert!(defaults.failsafe_inbound.contains(&tcp22));
    assert_eq!(defaults.failsafe_outbound.len(), 9);
}

#[test]
fn host_endpoint_order_does_not_matter_and_sets_go_with_the_last_selection() {
    let from_nodes = pb::Rule {
        source: Some(pb::EntityRule {
            selector: "role == 'node'".into(),
            ..Default::default()
        }),
        ..allow_port(5473)
    };
    let policy = global_policy("p", host_policy(vec![from_nodes], false, false));
    let endpoint = hep("h", NODE, "eth0", &[]);
    let mut a = Calc::new(config(CalcMode::PolicyOnly));
    a.apply(std::slice::from_ref(&endpoint));
    a.apply(std::slice::from_ref(&policy));
    let mut b = Calc::new(config(CalcMode::PolicyOnly));
    b.apply(std::slice::from_ref(&policy));
    b.apply(std::slice::from_ref(&endpoint));
    assert_eq!(a.desired(), b.desired());
    let sets = |c: &Calc| c.desired().ipsets.len();
    assert!(sets(&a) > 0, "the rule's selector set is held");
    // The endpoint leaves: the policy selects nothing here, its set goes.
    a.apply(&[delete(&endpoint)]);
    assert_eq!(sets(&a), 0, "{:?}", a.desired().ipsets.keys());
    let mut c = Calc::new(config(CalcMode::PolicyOnly));
    c.apply(&[policy]);
    assert_eq!(a.desired(), c.desired(), "as if the endpoint never was");
}
