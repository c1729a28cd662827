//! Routes and NAT in both modes (root only), on the whole path of `common`:
//! - networking: each node holds, with the agent's route protocol, a /32 to each local
//!   pod via its `cali` interface and the other node's pod CIDR via that node's IP, and
//!   nothing else of that protocol; cross-node traffic works through them; the nat table
//!   has the natOutgoing MASQUERADE rule, and a pod reaching a host outside the cluster
//!   (an address in the switch namespace, which has no route back to pod IPs) is seen
//!   with its node's address, while pod-to-pod traffic keeps the pod's address;
//! - policy-only: only the local /32s, no route to the other node's pod CIDR and no
//!   MASQUERADE, so cross-node probes fail; with the user's networking (the bench's
//!   test-only node routes, another protocol) they work and policy still applies;
//! - in both, routes the agent does not own survive its passes and a repair.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use common::{LIMIT, Rig, RigConfig, node_exec};
use felix_client::calc::CalcMode;
use felix_client::dataplane::ROUTE_PROTOCOL;
use netlab::flow::Flow;
use netlab::{LabelSelector as Sel, Policy};

/// A host outside the cluster, on the nodes' segment (in the switch namespace).
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 200);
/// A route nobody in the cluster owns, added by hand to node 0.
const FOREIGN: &str = "192.0.2.0/24";

/// Node `n`'s routes of `proto`, as `<dst> dev <if>` or `<dst> via <gw>`.
async fn routes(rig: &Rig, n: usize, proto: &str) -> BTreeSet<String> {
    let netns = &rig.topo.nodes()[n].netns;
    let text = netlab::cmd::ip_in(netns, &["-4", "route", "show", "proto", proto])
        .await
        .unwrap();
    text.lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .copied()
            };
            match after("via") {
                Some(gw) => format!("{} via {gw}", words[0]),
                None => format!("{} dev {}", words[0], after("dev").unwrap_or("?")),
            }
        })
        .collect()
}

/// Node `n`'s routes of the agent's protocol are exactly [`wanted_routes`].
async fn assert_agent_routes(rig: &Rig, n: usize, networking: bool) {
    let proto = ROUTE_PROTOCOL.to_string();
    assert_eq!(
        routes(rig, n, &proto).await,
        wanted_routes(rig, n, networking),
        "node {n}"
    );
}

/// The routes node `n` must hold with the agent's protocol.
fn wanted_routes(rig: &Rig, n: usize, networking: bool) -> BTreeSet<String> {
    let mut want: BTreeSet<String> = rig
        .topo
        .pods()
        .iter()
        .filter(|p| p.node == n)
        .map(|p| format!("{} dev {}", p.ip, p.iface))
        .collect();
    if networking {
        for (m, other) in rig.topo.nodes().iter().enumerate() {
            if m != n {
                want.insert(format!("{} via {}", other.pod_cidr, other.ip));
            }
        }
    }
    want
}

/// The agent's MASQUERADE rules in node `n`'s nat table.
async fn masquerade(rig: &Rig, n: usize) -> Vec<String> {
    let save = node_exec(rig, n, "iptables-save", &["-t", "nat"]).await;
    save.lines()
        .filter(|l| l.starts_with("-A cali-") && l.contains("MASQUERADE"))
        .map(str::to_string)
        .collect()
}

/// Adds a route node 0's agent does not own, asks for a repair (which re-reads the
/// routes), and checks the route is still there.
async fn foreign_route_survives(rig: &Rig) {
    let netns = rig.topo.nodes()[0].netns.clone();
    let via = rig.topo.nodes()[1].ip.to_string();
    netlab::cmd::ip_in(
        &netns,
        &["route", "add", FOREIGN, "via", &via, "proto", "static"],
    )
    .await
    .unwrap();
    let agent = rig.agent(0);
    let mut passes = agent.dataplane.passes.subscribe();
    let before = *passes.borrow_and_update();
    agent.dataplane.request_repair();
    tokio::time::timeout(LIMIT, passes.wait_for(|p| *p > before))
        .await
        .unwrap()
        .unwrap();
    agent.settled().await;
    let statics = routes(rig, 0, "static").await;
    assert!(
        statics.contains(&format!("{FOREIGN} via {via}")),
        "foreign route removed: {statics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networking_mode_routes_and_nat_outgoing() {
    let rig = Rig::start(RigConfig::default()).await;
    for n in 0..2 {
        assert_agent_routes(&rig, n, true).await;
    }
    // Everything reachable, across nodes too, through those routes only.
    let failures: Vec<String> = rig
        .check("networking, no policy")
        .await
        .into_iter()
        .collect();

    // natOutgoing: MASQUERADE from the pool to outside the pool and cluster CIDRs.
    for n in 0..2 {
        let rules = masquerade(&rig, n).await;
        assert_eq!(rules.len(), 1, "node {n}: {rules:?}");
        assert!(
            rules[0].contains("--match-set cali4-masq-pools src")
                && rules[0].contains("! --match-set cali4-all-pools dst"),
            "node {n}: {rules:?}"
        );
    }
    rig.topo.add_external_address(EXTERNAL).await.unwrap();
    for (ns, pod) in [("x", "a"), ("x", "b")] {
        let p = rig.topo.pod(ns, pod).unwrap();
        let node_ip = rig.topo.nodes()[p.node].ip;
        let mut flow = Flow::open(&p.netns, rig.topo.switch_netns(), EXTERNAL, 8080, LIMIT)
            .await
            .unwrap();
        assert_eq!(
            flow.seen_source().ip(),
            IpAddr::V4(node_ip),
            "{ns}/{pod} not masqueraded"
        );
        flow.exchange(LIMIT).await.unwrap();
    }
    // Inside the cluster the source stays the pod's.
    let (ya, xa) = (
        rig.topo.pod("y", "a").unwrap(),
        rig.topo.pod("x", "a").unwrap(),
    );
    let mut flow = Flow::open(&ya.netns, &xa.netns, xa.ip, 8080, LIMIT)
        .await
        .unwrap();
    assert_eq!(flow.seen_source().ip(), ya.ip);
    flow.exchange(LIMIT).await.unwrap();

    foreign_route_survives(&rig).await;
    assert_agent_routes(&rig, 0, true).await;
    rig.finish(failures, "networking, after a repair").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_only_mode_routes_local_pods_only() {
    let mut rig = Rig::start(RigConfig {
        mode: CalcMode::PolicyOnly,
        ..RigConfig::default()
    })
    .await;
    for n in 0..2 {
        assert_agent_routes(&rig, n, false).await;
        assert!(
            masquerade(&rig, n).await.is_empty(),
            "node {n}: NAT in policy-only mode"
        );
        let other = &rig.topo.nodes()[1 - n].pod_cidr;
        let table = netlab::cmd::ip_in(&rig.topo.nodes()[n].netns, &["route", "show", other])
            .await
            .unwrap();
        assert!(table.trim().is_empty(), "node {n} routes {other}: {table}");
    }
    // Without the user's networking, only same-node pairs connect.
    let mut want = rig.expected();
    let node_of = |id: &str| {
        let (ns, name) = id.split_once('/').unwrap();
        rig.topo.pod(ns, name).unwrap().node
    };
    let cross: Vec<_> = want
        .iter()
        .filter(|(k, _)| node_of(&k.from) != node_of(&k.to))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!cross.is_empty());
    for key in cross {
        want.insert(key, false);
    }
    let mut failures: Vec<String> = rig
        .check_against("policy-only, no node routes", &want)
        .await
        .into_iter()
        .collect();

    // The user's networking: routes between nodes of another protocol. Now everything
    // connects, policy applies, and the agent leaves those routes alone.
    rig.topo.install_test_node_routes().await.unwrap();
    failures.extend(rig.check("policy-only with node routes").await);
    rig.set_policies(vec![Policy::new("x", "deny-ingress", Sel::all())])
        .await;
    failures.extend(rig.check("policy-only, deny ingress to x").await);
    foreign_route_survives(&rig).await;
    for n in 0..2 {
        let statics = routes(&rig, n, "static").await;
        let other = &rig.topo.nodes()[1 - n];
        assert!(
            statics.contains(&format!("{} via {}", other.pod_cidr, other.ip)),
            "node {n} lost the user's route: {statics:?}"
        );
        assert_agent_routes(&rig, n, false).await;
    }
    rig.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
