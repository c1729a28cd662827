//! Host endpoints end to end (root only), on the whole path of `common`: HostEndpoint
//! and GlobalNetworkPolicy objects written to kube-sim, converted by typha, folded by
//! each node's calc and programmed in the node's namespace. Connections are real TCP
//! between node namespaces (and from a host outside the cluster on the nodes' segment).
//! - a policy on node 0's `eth0` admits one port and not another; failsafe ports stay
//!   open; outbound, without egress policy or default-allow profile, only failsafe; under a deny-all host policy (both directions) the inbound and outbound
//!   failsafe ports still work and nothing else does; pod traffic through the node is
//!   untouched (forwarded, no `applyOnForward`);
//! - `applyOnForward`: a host outside the cluster reaches a pod on node 1 through node
//!   0 (both directions routed via node 0, so node 0 forwards between two hosts on its
//!   `eth0`); a host policy denying one port on node 0's endpoint leaves that forwarded
//!   connection alone until the policy says `applyOnForward: true`;
//! - the typha-port component, loaded from k8s/components/typha-host-policy (its
//!   GlobalNetworkPolicy and its felix-client settings): node addresses reach 5473,
//!   a host outside the cluster does not, and other ports stay open to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use common::{Rig, RigConfig};
use felix_client::calc::hosts::{HostConfig, parse_failsafe};
use netlab::flow::Flow;
use serde_json::{Value as Json, json};

/// A host outside the cluster, on the nodes' segment (in the switch namespace).
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 200);
/// Bound on a connection attempt that should fail (a dropped SYN).
const SHORT: Duration = Duration::from_millis(700);

fn hep_json(name: &str, node: &str, iface: &str, ip: Ipv4Addr) -> Json {
    json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "HostEndpoint",
           "metadata": {"name": name, "labels": {"role": "node"}},
           "spec": {"node": node, "interfaceName": iface, "expectedIPs": [ip.to_string()]}})
}

fn gnp_json(name: &str, spec: Json) -> Json {
    json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
           "metadata": {"name": name}, "spec": spec})
}

/// Whether a TCP connection from namespace `from` to `ip` on `port` is established and
/// exchanges (the listener is opened in namespace `to` for the attempt).
async fn reaches(from: &str, to: &str, ip: impl Into<IpAddr>, port: u16) -> bool {
    match Flow::open(from, to, ip, port, SHORT).await {
        Ok(mut flow) => flow.exchange(SHORT).await.is_ok(),
        Err(_) => false,
    }
}

/// Whether namespace `from` [`reaches`] node `to`'s address on `port`.
async fn connects(rig: &Rig, from: &str, to: usize, port: u16) -> bool {
    let node = &rig.topo.nodes()[to];
    reaches(from, &node.netns, node.ip, port).await
}

/// Writes `objects` and waits until every agent applied them.
async fn put(rig: &Rig, objects: Vec<Json>) {
    for obj in objects {
        rig.write(Some(obj), None).await;
    }
    rig.converge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_policy_on_eth0_with_failsafe_ports() {
    let rig = Rig::start(RigConfig::default()).await;
    let (n0, n1) = (&rig.topo.nodes()[0], &rig.topo.nodes()[1]);
    let (from1, from0) = (n1.netns.clone(), n0.netns.clone());
    let allow_8081 = json!({"order": 10, "selector": "role == 'node'", "types": ["Ingress"],
        "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [8081]}}]});
    put(
        &rig,
        vec![
            hep_json("node-0-eth0", &n0.name, "eth0", n0.ip),
            gnp_json("host-8081", allow_8081),
        ],
    )
    .await;
    assert!(connects(&rig, &from1, 0, 8081).await, "allowed port");
    assert!(
        !connects(&rig, &from1, 0, 8082).await,
        "port no rule allows"
    );
    assert!(connects(&rig, &from1, 0, 22).await, "failsafe ssh");
    // No egress policy and no default-allow profile: Calico's default deny outbound.
    assert!(
        !connects(&rig, &from0, 1, 8082).await,
        "outbound default deny"
    );
    assert!(connects(&rig, &from0, 1, 6443).await, "outbound failsafe");
    let mut failures: Vec<String> = rig
        .check("host policy on node 0")
        .await
        .into_iter()
        .collect();

    // Deny all, both directions: only the failsafe ports are left.
    let deny_all =
        json!({"order": 1, "selector": "role == 'node'", "types": ["Ingress", "Egress"]});
    put(&rig, vec![gnp_json("host-8081", deny_all)]).await;
    assert!(!connects(&rig, &from1, 0, 8081).await, "deny-all inbound");
    for port in [22, 6443, 2379] {
        assert!(
            connects(&rig, &from1, 0, port).await,
            "inbound failsafe {port}"
        );
    }
    assert!(!connects(&rig, &from0, 1, 8081).await, "deny-all outbound");
    for port in [6443, 5473] {
        assert!(
            connects(&rig, &from0, 1, port).await,
            "outbound failsafe {port}"
        );
    }
    failures.extend(rig.check("deny-all host policy on node 0").await);
    rig.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn component_file(name: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s/components/typha-host-policy");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// The component's felix-client settings, from its DaemonSet patch.
fn component_hosts() -> HostConfig {
    let patch: Json =
        serde_yaml::from_str(&component_file("felix-client-host-endpoints.yaml")).unwrap();
    let env: BTreeMap<String, String> = patch["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(env.len(), 2, "settings this test does not model: {env:?}");
    HostConfig {
        failsafe_inbound: parse_failsafe(&env["FELIX_FAILSAFE_INBOUND_HOST_PORTS"]).unwrap(),
        auto_host_endpoints: env["FELIX_AUTO_HOST_ENDPOINTS"] == "true",
        ..HostConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typha_port_component_admits_nodes_only() {
    let rig = Rig::start(RigConfig {
        hosts: component_hosts(),
        ..RigConfig::default()
    })
    .await;
    rig.topo.add_external_address(EXTERNAL).await.unwrap();
    let policy: Json = serde_yaml::from_str(&component_file("policy.yaml")).unwrap();
    put(&rig, vec![policy]).await;
    let (from1, outside) = (
        rig.topo.nodes()[1].netns.clone(),
        rig.topo.switch_netns().to_string(),
    );
    assert!(
        connects(&rig, &from1, 0, 5473).await,
        "a node reaches typha's port"
    );
    assert!(
        !connects(&rig, &outside, 0, 5473).await,
        "a host outside the cluster does not"
    );
    assert!(
        connects(&rig, &outside, 0, 8080).await,
        "other ports stay open"
    );
    assert!(connects(&rig, &outside, 0, 22).await, "failsafe ssh");
    let failure = rig.check("typha-port component").await;
    rig.stop().await;
    assert!(failure.is_none(), "{}", failure.unwrap_or_default());
}

/// Routes traffic between [`EXTERNAL`] and node 1's pods through node 0, both ways
/// (no ICMP redirects from node 0, so nobody learns the shortcut).
async fn route_external_via_node0(rig: &Rig) {
    let (n0, n1) = (&rig.topo.nodes()[0], &rig.topo.nodes()[1]);
    let via = n0.ip.to_string();
    let sw = rig.topo.switch_netns();
    netlab::cmd::ip_in(sw, &["route", "add", &n1.pod_cidr, "via", &via])
        .await
        .unwrap();
    let external = format!("{EXTERNAL}/32");
    netlab::cmd::ip_in(&n1.netns, &["route", "add", &external, "via", &via])
        .await
        .unwrap();
    for conf in ["all", "eth0"] {
        let key = format!("net.ipv4.conf.{conf}.send_redirects");
        netlab::cmd::sysctl_in(&n0.netns, &key, "0").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_on_forward_governs_traffic_the_node_forwards() {
    let rig = Rig::start(RigConfig::default()).await;
    rig.topo.add_external_address(EXTERNAL).await.unwrap();
    route_external_via_node0(&rig).await;
    let n0 = &rig.topo.nodes()[0];
    let pod = rig.topo.pods().iter().find(|p| p.node == 1).unwrap();
    let outside = rig.topo.switch_netns().to_string();
    let reach = |port| reaches(&outside, &pod.netns, pod.ip, port);
    let mut hep = hep_json("node-0-eth0", &n0.name, "eth0", n0.ip);
    hep["spec"]["profiles"] = json!(["projectcalico-default-allow"]);
    let policy = |forward: bool| {
        gnp_json(
            "deny-9000",
            json!({"order": 10, "selector": "role == 'node'",
            "types": ["Ingress"], "applyOnForward": forward,
            "ingress": [{"action": "Deny", "protocol": "TCP", "destination": {"ports": [9000]}},
                        {"action": "Allow"}]}),
        )
    };
    put(&rig, vec![hep, policy(false)]).await;
    assert!(
        reach(9000).await,
        "not applied on forward: the forwarded flow passes"
    );
    assert!(
        !connects(&rig, &outside, 0, 9000).await,
        "to the host it applies"
    );
    put(&rig, vec![policy(true)]).await;
    assert!(
        !reach(9000).await,
        "applyOnForward: the forwarded flow is denied"
    );
    assert!(reach(9001).await, "another port still passes");
    let failure = rig.check("applyOnForward host policy on node 0").await;
    rig.stop().await;
    assert!(failure.is_none(), "{}", failure.unwrap_or_default());
}
