//! The policy gaps of issue 18: an unparsable selector in the model never turns a policy
//! (or anything else) into a DROP, and a log rule logs each packet once.

use super::sim::{self, Verdict};
use super::*;

fn rule(action: pb::Action, source_selector: &str) -> pb::Rule {
    pb::Rule {
        action: action as i32,
        source: Some(pb::EntityRule {
            selector: source_selector.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn on_a(inbound: Vec<pb::Rule>) -> pb::Policy {
    pb::Policy {
        order: 10.0,
        has_order: true,
        selector: "pod == 'a'".into(),
        inbound_rules: inbound,
        types: vec![pb::PolicyType::Ingress as i32],
        tier: "default".into(),
        ..Default::default()
    }
}

#[test]
fn unparsable_rule_selector_skips_only_that_rule() {
    let mut c = Cluster::new();
    // Deny from y (bad selector: skipped), then allow from pod b: b reaches x/a, c does
    // not (no rule allows it: the policy's end of tier), and nothing else changed.
    c.apply(&[global_policy(
        "p",
        on_a(vec![
            rule(pb::Action::Deny, "pcns.ns in {"),
            rule(pb::Action::Allow, "pod == 'b'"),
        ]),
    )]);
    assert!(
        c.can("y/b", "x/a", "tcp", 80),
        "the bad deny rule matches nothing"
    );
    assert!(c.can("x/b", "x/a", "tcp", 80));
    assert!(!c.can("z/c", "x/a", "tcp", 80), "the policy still applies");
    assert!(c.can("y/c", "x/b", "tcp", 81), "unselected pods unaffected");
    // No chain fails closed (a bare DROP).
    let d = c.calc.desired();
    assert!(d.v4.filter.values().all(|rules| rules != &["-j DROP"]));
}

#[test]
fn unparsable_policy_selector_selects_nothing() {
    let mut c = Cluster::new();
    let mut p = on_a(vec![]);
    p.selector = "pod ==".into();
    c.apply(&[global_policy("bad", p)]);
    assert!(c.can("y/b", "x/a", "tcp", 80));
    assert!(c.can("z/c", "y/a", "tcp", 80));
}

#[test]
fn invalid_selectors_are_counted() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut c = Cluster::new();
        let mut bad_policy = on_a(vec![]);
        bad_policy.selector = "pod ==".into();
        c.apply(&[
            global_policy("bad-rule", on_a(vec![rule(pb::Action::Deny, "a in {")])),
            global_policy("bad-policy", bad_policy),
        ]);
    });
    let counts: Vec<(String, u64)> = snap
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "felix_calc_invalid_selectors_total")
        .map(|(k, _, _, v)| {
            let place = k.key().labels().next().unwrap().value().to_string();
            let metrics_util::debugging::DebugValue::Counter(n) = v else {
                panic!("not a counter")
            };
            (place, n)
        })
        .collect();
    let mut counts = counts;
    counts.sort();
    // Each bad rule once (not once per family).
    assert_eq!(counts, vec![("policy".into(), 1), ("rule".into(), 1)]);
}

#[test]
fn a_log_rule_logs_each_packet_once() {
    let mut c = Cluster::new();
    // Ports 80 and the named port "serve" (80 on the a pods): a packet to x/a:80 matches
    // both alternatives of the log rule.
    let ports = vec![
        pb::PortRange {
            first: 80,
            last: 80,
            name: String::new(),
        },
        pb::PortRange {
            first: 0,
            last: 0,
            name: "serve".into(),
        },
    ];
    let log = pb::Rule {
        action: pb::Action::Log as i32,
        protocol: pb::Protocol::Tcp as i32,
        destination: Some(pb::EntityRule {
            ports,
            ..Default::default()
        }),
        ..Default::default()
    };
    let allow = pb::Rule {
        action: pb::Action::Allow as i32,
        ..Default::default()
    };
    c.apply(&[global_policy("log", on_a(vec![log, allow]))]);
    let d = c.calc.desired();
    let to_a = |dport| sim::Packet {
        src: pod_ip("y", "b").parse().unwrap(),
        dst: pod_ip("x", "a").parse().unwrap(),
        proto: "tcp",
        sport: 40000,
        dport,
        icmp: (0, 0),
        iif: Some(netmodel::interface_name("y", "b")),
        oif: Some(netmodel::interface_name("x", "a")),
    };
    assert_eq!(
        sim::run_logged(&d, "cali-FORWARD", &to_a(80)),
        (Verdict::Accept, 1)
    );
    assert_eq!(
        sim::run_logged(&d, "cali-FORWARD", &to_a(81)),
        (Verdict::Accept, 0)
    );
}
