//! calc tests: fixtures that go through typha's real converters (Kubernetes JSON ->
//! model), a packet-walking interpreter ([`sim`]) to assert reachability, semantic
//! cases, and incremental-vs-scratch properties.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gaps;
mod hosts;
mod incremental;
mod semantics;
mod sim;
mod tunnels;

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value as Json, json};
use typha_proto::{Key, Kind, Update, Value, pb};

use super::{Calc, CalcConfig, CalcMode, Desired};
use sim::{Packet, Verdict};

/// This node.
pub const NODE: &str = "n1";

pub fn config(mode: CalcMode) -> CalcConfig {
    CalcConfig {
        node_name: NODE.into(),
        mode,
        cluster_cidrs: vec!["10.96.0.0/12".into()],
        interface_prefixes: Default::default(),
    }
}

/// A pod through the real converter; `ports` are (name, protocol, number).
pub fn pod(
    ns: &str,
    name: &str,
    node: &str,
    ips: &[&str],
    labels: Json,
    ports: &[(&str, &str, u16)],
) -> Update {
    let ports: Vec<Json> = ports
        .iter()
        .map(|(n, p, c)| json!({"name": n, "protocol": p, "containerPort": c}))
        .collect();
    let ip_list: Vec<Json> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    let obj: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": "default",
                 "containers": [{"name": "c", "ports": ports}]},
        "status": {"podIP": ips[0], "podIPs": ip_list, "phase": "Running"}
    }))
    .unwrap();
    netmodel::convert(&obj).unwrap()
}

pub fn namespace(name: &str, labels: Json) -> Update {
    let obj: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    netmodel::convert(&obj).unwrap()
}

/// A networking.k8s.io NetworkPolicy from its spec.
pub fn netpol(ns: &str, name: &str, spec: Json) -> Update {
    let obj: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
            .unwrap();
    netmodel::convert(&obj).unwrap()
}

pub fn delete(u: &Update) -> Update {
    Update::delete(u.key.clone())
}

/// A Calico GlobalNetworkPolicy value built directly in the model.
pub fn global_policy(name: &str, policy: pb::Policy) -> Update {
    Update::new(
        Key::cluster(Kind::GlobalNetworkPolicy, name).unwrap(),
        Some(Value::Policy(policy)),
    )
    .unwrap()
}

pub fn global_net_set(name: &str, nets: &[&str], labels: &[(&str, &str)]) -> Update {
    Update::new(
        Key::cluster(Kind::GlobalNetworkSet, name).unwrap(),
        Some(Value::NetworkSet(pb::NetworkSet {
            nets: nets.iter().map(|s| s.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })),
    )
    .unwrap()
}

/// A test cluster: namespaces x, y, z (label ns=<name>), pods a, b, c in each with label
/// pod=<name>; a and b of every namespace on this node, c elsewhere. Pod IPs are
/// 10.0.<ns index>.<pod index + 1>; b pods have named port "serve" tcp/81 and a pods
/// "serve" tcp/80.
pub struct Cluster {
    pub calc: Calc,
}

pub fn pod_ip(ns: &str, p: &str) -> String {
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap();
    let i = ["a", "b", "c"].iter().position(|x| *x == p).unwrap();
    format!("10.0.{n}.{}", i + 1)
}

pub fn pod_update(ns: &str, p: &str) -> Update {
    let node = if p == "c" { "n2" } else { NODE };
    let port = if p == "a" { 80 } else { 81 };
    pod(
        ns,
        p,
        node,
        &[&pod_ip(ns, p)],
        json!({"pod": p}),
        &[("serve", "TCP", port)],
    )
}

pub fn cluster_updates() -> Vec<Update> {
    let mut out = Vec::new();
    for ns in ["x", "y", "z"] {
        out.push(namespace(ns, json!({"ns": ns})));
        for p in ["a", "b", "c"] {
            out.push(pod_update(ns, p));
        }
    }
    out
}

impl Cluster {
    pub fn new() -> Cluster {
        let mut calc = Calc::new(config(CalcMode::PolicyOnly));
        calc.apply(&cluster_updates());
        Cluster { calc }
    }

    pub fn apply(&mut self, updates: &[Update]) -> &mut Self {
        self.calc.apply(updates);
        self
    }

    /// Whether `from` ("ns/pod") can open a connection to `to` on `proto`/`port`.
    pub fn can(&self, from: &str, to: &str, proto: &'static str, port: u16) -> bool {
        can(&self.calc.desired(), from, to, proto, port)
    }
}

fn iface(ns: &str, p: &str) -> Option<String> {
    (p != "c").then(|| netmodel::interface_name(ns, p))
}

/// Reachability through `cali-FORWARD` (the path between pods) of the cluster above.
pub fn can(d: &Desired, from: &str, to: &str, proto: &'static str, port: u16) -> bool {
    let (fns, fp) = from.split_once('/').unwrap();
    let (tns, tp) = to.split_once('/').unwrap();
    let packet = Packet {
        src: pod_ip(fns, fp).parse().unwrap(),
        dst: pod_ip(tns, tp).parse().unwrap(),
        proto,
        sport: 40000,
        dport: port,
        icmp: (8, 0),
        iif: Some(iface(fns, fp).unwrap_or_else(|| "eth0".into())),
        oif: Some(iface(tns, tp).unwrap_or_else(|| "eth0".into())),
    };
    verdict(d, &packet)
}

/// FORWARD's verdict: accepted by calc or not ours (falls through) = allowed.
pub fn verdict(d: &Desired, packet: &Packet) -> bool {
    match sim::run(d, "cali-FORWARD", packet) {
        Verdict::Accept | Verdict::Continue => true,
        Verdict::Drop => false,
    }
}

/// A packet between arbitrary addresses and interfaces.
pub fn packet(src: &str, dst: &str, iif: &str, oif: &str, dport: u16) -> Packet {
    Packet {
        src: src.parse::<IpAddr>().unwrap(),
        dst: dst.parse::<IpAddr>().unwrap(),
        proto: "tcp",
        sport: 40000,
        dport,
        icmp: (0, 0),
        iif: Some(iif.into()),
        oif: Some(oif.into()),
    }
}
