//! Incrementality and determinism: applying updates one at a time (in any batching)
//! gives exactly what a fresh calculation of the final state gives, and the same final
//! state reached in different orders gives byte-identical output.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value as Json, json};
use typha_proto::{Key, Update};

use super::*;

const NAMESPACES: [&str; 2] = ["x", "y"];

fn labels_app(app: u8) -> Json {
    match app {
        0 => json!({}),
        1 => json!({"app": "web"}),
        2 => json!({"app": "db"}),
        // An own label under the namespace-profile prefix (Calico: own labels win).
        _ => json!({"app": "web", "pcns.team": "a"}),
    }
}

fn pod_strategy() -> impl Strategy<Value = Update> {
    (
        0..2usize,
        0..4u8,
        any::<bool>(),
        1..5u8,
        0..3u8,
        0..3u8,
        any::<bool>(),
    )
        .prop_map(|(ns, name, local, ip, app, port, v6)| {
            let ns = NAMESPACES[ns];
            let ip4 = format!("10.0.0.{ip}");
            let ip6 = format!("fd00::{ip}");
            let ips: Vec<&str> = if v6 { vec![&ip4, &ip6] } else { vec![&ip4] };
            let ports: Vec<(&str, &str, u16)> = match port {
                0 => vec![],
                1 => vec![("http", "TCP", 80)],
                _ => vec![("http", "TCP", 8080), ("dns", "UDP", 53)],
            };
            pod(
                ns,
                &format!("p{name}"),
                if local { NODE } else { "n2" },
                &ips,
                labels_app(app),
                &ports,
            )
        })
}

fn namespace_strategy() -> impl Strategy<Value = Update> {
    (0..2usize, 0..3u8).prop_map(|(ns, team)| {
        let labels = match team {
            0 => json!({}),
            1 => json!({"team": "a"}),
            _ => json!({"team": "b"}),
        };
        namespace(NAMESPACES[ns], labels)
    })
}

fn peer(kind: u8) -> Json {
    match kind {
        0 => json!({"podSelector": {"matchLabels": {"app": "web"}}}),
        1 => json!({"namespaceSelector": {"matchLabels": {"team": "a"}}}),
        2 => json!({"namespaceSelector": {"matchLabels": {"team": "b"}},
                    "podSelector": {"matchLabels": {"app": "db"}}}),
        3 => json!({"ipBlock": {"cidr": "10.0.0.0/29", "except": ["10.0.0.2/32"]}}),
        _ => {
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}})
        }
    }
}

fn port(kind: u8) -> Json {
    match kind {
        0 => json!({"port": 80}),
        1 => json!({"port": "http"}),
        2 => json!({"port": 8000, "endPort": 8010}),
        _ => json!({"protocol": "UDP", "port": "dns"}),
    }
}

fn policy_strategy() -> impl Strategy<Value = Update> {
    (
        0..2usize,
        0..3u8,
        0..3u8,
        prop::collection::vec(0..5u8, 0..3),
        prop::collection::vec(0..4u8, 0..3),
        0..3u8,
    )
        .prop_map(|(ns, name, sel, peers, ports, types)| {
            let rule = json!({
                "from": peers.iter().map(|p| peer(*p)).collect::<Vec<_>>(),
                "to": peers.iter().map(|p| peer(*p)).collect::<Vec<_>>(),
                "ports": ports.iter().map(|p| port(*p)).collect::<Vec<_>>(),
            });
            let mut spec = json!({"podSelector": {"matchLabels": labels_app(sel)}});
            match types {
                0 => spec["ingress"] = json!([rule]),
                1 => {
                    spec["egress"] = json!([rule]);
                    spec["policyTypes"] = json!(["Egress"]);
                }
                _ => {
                    spec["ingress"] = json!([rule]);
                    spec["egress"] = json!([rule]);
                }
            }
            netpol(NAMESPACES[ns], &format!("q{name}"), spec)
        })
}

fn net_set_strategy() -> impl Strategy<Value = Update> {
    (0..2u8, 0..3u8, any::<bool>()).prop_map(|(name, nets, web)| {
        let nets: &[&str] = match nets {
            0 => &["10.0.0.4/30"],
            1 => &["10.0.0.1/32", "fd00::/120"],
            _ => &["0.0.0.0/0"],
        };
        let labels: &[(&str, &str)] = if web { &[("app", "web")] } else { &[] };
        global_net_set(&format!("n{name}"), nets, labels)
    })
}

fn update_strategy() -> impl Strategy<Value = Update> {
    let upsert = prop_oneof![
        4 => pod_strategy(),
        2 => namespace_strategy(),
        3 => policy_strategy(),
        1 => net_set_strategy(),
    ];
    (upsert, 0..5u8).prop_map(|(u, d)| if d == 0 { delete(&u) } else { u })
}

/// The final state of a sequence of updates: the last value per key.
fn final_state(updates: &[Update]) -> BTreeMap<Key, Update> {
    let mut state = BTreeMap::new();
    for u in updates {
        match &u.value {
            Some(_) => state.insert(u.key.clone(), u.clone()),
            None => state.remove(&u.key),
        };
    }
    state
}

fn from_scratch(mode: CalcMode, updates: &[Update]) -> Desired {
    let live: Vec<Update> = final_state(updates).into_values().collect();
    let mut calc = Calc::new(config(mode));
    calc.apply(&live);
    calc.desired()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_from_scratch(
        updates in prop::collection::vec(update_strategy(), 1..40),
        batch in 1..6usize,
        networking in any::<bool>(),
    ) {
        let mode = if networking { CalcMode::Networking } else { CalcMode::PolicyOnly };
        let mut calc = Calc::new(config(mode));
        let mut held = Vec::new();
        for chunk in updates.chunks(batch) {
            calc.apply(chunk);
            // Hold every intermediate result, as the dataplane would: copy-on-write must
            // never let a later change leak into an earlier Desired.
            held.push((calc.desired(), chunk.len()));
        }
        let scratch = from_scratch(mode, &updates);
        prop_assert_eq!(&calc.desired(), &scratch);
        // Earlier snapshots still equal a from-scratch run of their prefix.
        let mut prefix = 0;
        for (d, n) in &held {
            prefix += n;
            prop_assert_eq!(d, &from_scratch(mode, &updates[..prefix]));
        }
    }

    #[test]
    fn same_state_in_any_order_is_identical(
        updates in prop::collection::vec(update_strategy(), 1..30),
        seed in any::<u64>(),
    ) {
        let live: Vec<Update> = final_state(&updates).into_values().collect();
        let mut shuffled = live.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut a = Calc::new(config(CalcMode::Networking));
        a.apply(&live);
        let mut b = Calc::new(config(CalcMode::Networking));
        for u in &shuffled {
            b.apply(std::slice::from_ref(u));
        }
        let (da, db) = (a.desired(), b.desired());
        prop_assert_eq!(format!("{da:?}"), format!("{db:?}"));
        prop_assert_eq!(da, db);
    }
}

#[test]
fn cluster_in_reverse_order_is_byte_identical() {
    let mut updates = cluster_updates();
    updates.push(netpol(
        "x",
        "p",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                            "ports": [{"port": "serve"}, {"port": 8000, "endPort": 8010}]}]}),
    ));
    let mut forward = Calc::new(config(CalcMode::Networking));
    forward.apply(&updates);
    let mut backward = Calc::new(config(CalcMode::Networking));
    for u in updates.iter().rev() {
        backward.apply(std::slice::from_ref(u));
    }
    let (a, b) = (forward.desired(), backward.desired());
    assert!(!a.ipsets.is_empty());
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    // Deleting everything returns to the empty calculation's output.
    let deletes: Vec<Update> = updates.iter().map(delete).collect();
    forward.apply(&deletes);
    assert_eq!(
        forward.desired(),
        Calc::new(config(CalcMode::Networking)).desired()
    );
    assert_eq!(forward.active_selectors(), 0);
}
