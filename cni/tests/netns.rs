//! End-to-end tests of the CNI plugin (root only), run as a container runtime runs it:
//! inside a node's namespace, `CNI_*` environment, config on stdin, Debian's host-local
//! (`/usr/lib/cni`) for IPAM on the node's pod CIDR.
//!
//! - policy: netlab's bench with every pod created by ADD; the pods get their IPs from
//!   their node's pod CIDR and `cali` interfaces named like the model's endpoints; the
//!   bench's pods go into kube-sim, through typha to one felix-client agent per node, and
//!   every NetworkPolicy case of netlab's suite holds with real probes;
//! - lifecycle: CHECK verifies (and notices a missing route), DEL removes the veth and
//!   releases the address, a repeated DEL and a DEL after the pod's namespace is gone
//!   succeed;
//! - errors: a malformed config, a config without IPAM, a missing IPAM plugin and an
//!   exhausted range each give a CNI error result with its code, and leave no
//!   interface, address or IPAM reservation behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../netlab/tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use common::cases::run_cases;
use common::{Rig, RigConfig};
use netlab::cni::CniWiring;
use netlab::{NodeInfo, PodInfo, PodSpec, Topology};
use serde_json::{Value as Json, json};
use testkit::Scratch;

/// The network name (host-local keeps its reservations under `<dataDir>/<name>`).
const NETWORK: &str = "k8s-pod-network";

/// A node's network config: `prefix` interfaces, host-local on the node's pod CIDR
/// (or `range` within it: `(first, last)` host octets).
fn node_config(prefix: &str, state: &Path, node: &NodeInfo, range: Option<(u8, u8)>) -> Json {
    let mut subnet = json!({"subnet": node.pod_cidr});
    if let Some((first, last)) = range {
        let base = node.pod_cidr.trim_end_matches(".0/24");
        subnet["rangeStart"] = json!(format!("{base}.{first}"));
        subnet["rangeEnd"] = json!(format!("{base}.{last}"));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "felix-cni",
        "interfacePrefix": prefix,
        "logFile": state.join("cni.log"),
        "ipam": {
            "type": "host-local",
            "ranges": [[subnet]],
            "dataDir": state.join(&node.name),
        },
    })
}

fn wiring(prefix: &str, state: &Path, range: Option<(u8, u8)>) -> CniWiring {
    let (prefix, state) = (prefix.to_string(), state.to_path_buf());
    CniWiring {
        plugin: env!("CARGO_BIN_EXE_felix-cni").into(),
        cni_path: "/usr/lib/cni:/opt/cni/bin".into(),
        config: Arc::new(move |node| node_config(&prefix, &state, node, range)),
    }
}

fn in_pod_cidr(ip: IpAddr, node: &NodeInfo) -> bool {
    let base = node.pod_cidr.trim_end_matches(".0/24");
    ip.to_string().rsplit_once('.').map(|(net, _)| net) == Some(base)
}

/// Runs every NetworkPolicy case on a bench wired by the plugin with `prefix`.
async fn policies_hold_with_prefix(prefix: &str) {
    let state = Scratch::new(&format!("felix-cni-policy-{prefix}"));
    let config = RigConfig {
        cni: Some(wiring(prefix, state.path(), None)),
        interface_prefixes: prefix.parse().unwrap(),
        ..RigConfig::default()
    };
    let mut rig = Rig::start(config).await;
    for pod in rig.topo.pods() {
        let node = &rig.topo.nodes()[pod.node];
        assert!(
            in_pod_cidr(pod.ip, node),
            "{} got {} outside {}",
            pod.id(),
            pod.ip,
            node.pod_cidr
        );
        let want = netmodel::prefixed_interface_name(prefix, &pod.namespace, &pod.name);
        assert_eq!(pod.iface, want, "{}", pod.id());
    }
    let failures = run_cases(&mut rig).await;
    rig.stop().await;
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_added_by_the_plugin_get_network_policy() {
    policies_hold_with_prefix("cali").await;
}

/// The same cases with `veth` interfaces: typha names the endpoints `veth...`, the
/// agents dispatch `veth+`, the plugin creates `veth...` (as another CNI's would be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_default_interface_prefix_gets_the_same_policy() {
    policies_hold_with_prefix("veth").await;
}

/// The links of a namespace, by name.
async fn links(netns: &str) -> Vec<String> {
    let out = netlab::cmd::ip_in(netns, &["-o", "link", "show"])
        .await
        .unwrap();
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

/// host-local's reservations (one file per address) of `node`.
fn reservations(state: &Path, node: &NodeInfo) -> Vec<String> {
    let dir = state.join(&node.name).join(NETWORK);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ips: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.parse::<Ipv4Addr>().is_ok())
        .collect();
    ips.sort();
    ips
}

fn with_prev_result(mut config: Json, ip: IpAddr) -> Json {
    config["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": format!("{ip}/32")}]});
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verifies_and_del_is_idempotent() {
    common::init();
    let state = Scratch::new("felix-cni-lifecycle");
    let topo = Topology::builder()
        .nodes(1)
        .pod(PodSpec::new("x", "a", 0))
        .pod(PodSpec::new("x", "b", 0))
        .wiring(wiring("cali", state.path(), None))
        .build()
        .await
        .unwrap();
    let node = topo.nodes()[0].clone();
    let (a, b) = (
        topo.pod("x", "a").unwrap().clone(),
        topo.pod("x", "b").unwrap().clone(),
    );
    assert_eq!(
        reservations(state.path(), &node),
        [a.ip.to_string(), b.ip.to_string()]
    );
    let prev = with_prev_result(node_config("cali", state.path(), &node, None), a.ip);
    let check = topo.cni_call(&a, "CHECK", Some(&prev)).await.unwrap();
    assert!(check.success, "CHECK after ADD: {}", check.raw);
    // A route gone by hand: CHECK says so.
    let dst = format!("{}/32", a.ip);
    netlab::cmd::ip_in(&node.netns, &["route", "del", &dst])
        .await
        .unwrap();
    let check = topo.cni_call(&a, "CHECK", Some(&prev)).await.unwrap();
    assert_eq!(check.error_code(), Some(103), "{}", check.raw);

    for attempt in ["DEL", "repeated DEL"] {
        let del = topo.cni_call(&a, "DEL", None).await.unwrap();
        assert!(del.success, "{attempt}: {}", del.raw);
        assert!(
            !links(&node.netns).await.contains(&a.iface),
            "{attempt}: host side left"
        );
        assert_eq!(links(&a.netns).await, ["lo"], "{attempt}: pod side left");
        assert_eq!(
            reservations(state.path(), &node),
            [b.ip.to_string()],
            "{attempt}"
        );
    }
    // The pod's namespace is gone (its veth with it): DEL still releases the address.
    netlab::cmd::ip(&["netns", "del", &b.netns]).await.unwrap();
    let del = topo.cni_call(&b, "DEL", None).await.unwrap();
    assert!(del.success, "DEL without a namespace: {}", del.raw);
    assert!(reservations(state.path(), &node).is_empty());
    assert!(!links(&node.netns).await.contains(&b.iface));
}

/// A pod the test wires itself (no ADD yet).
async fn scratch_pod(topo: &mut Topology, name: &str) -> PodInfo {
    let netns = topo.add_scratch_netns(name).await.unwrap();
    PodInfo {
        namespace: "x".into(),
        name: name.into(),
        node: 0,
        labels: Default::default(),
        ports: Vec::new(),
        ip: Ipv4Addr::UNSPECIFIED.into(),
        ips: Vec::new(),
        netns,
        iface: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_adds_answer_cni_errors_and_leave_nothing_behind() {
    common::init();
    let state = Scratch::new("felix-cni-errors");
    // host-local may hand out exactly one address on this node.
    let mut topo = Topology::builder()
        .nodes(1)
        .wiring(wiring("cali", state.path(), Some((10, 10))))
        .build()
        .await
        .unwrap();
    let node = topo.nodes()[0].clone();
    let node_links = links(&node.netns).await;
    let good = node_config("cali", state.path(), &node, Some((10, 10)));
    let mut no_ipam = good.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    let mut missing_plugin = good.clone();
    missing_plugin["ipam"]["type"] = json!("no-such-ipam");
    let first = scratch_pod(&mut topo, "first").await;
    let cases = [
        (
            "malformed config",
            Json::String("{\"cniVersion\": ".into()),
            6,
        ),
        ("no ipam section", no_ipam, 7),
        ("missing IPAM plugin", missing_plugin, 100),
    ];
    for (case, config, code) in cases {
        let out = topo.cni_call(&first, "ADD", Some(&config)).await.unwrap();
        assert!(!out.success, "{case}");
        assert_eq!(out.error_code(), Some(code), "{case}: {}", out.raw);
        assert!(
            out.stdout["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}"
        );
        assert_eq!(links(&node.netns).await, node_links, "{case}: host links");
        assert_eq!(links(&first.netns).await, ["lo"], "{case}: pod links");
        assert!(
            reservations(state.path(), &node).is_empty(),
            "{case}: reservations"
        );
    }
    let added = topo.cni_call(&first, "ADD", None).await.unwrap();
    let (ip, iface) = netlab::cni::parse_add(&added).unwrap();
    assert_eq!(ip.octets()[3], 10);
    // The range is exhausted: host-local's error comes back as ours, nothing is left.
    let second = scratch_pod(&mut topo, "second").await;
    let out = topo.cni_call(&second, "ADD", None).await.unwrap();
    assert!(!out.success && out.error_code().is_some(), "{}", out.raw);
    assert!(out.raw.contains("no IP addresses available"), "{}", out.raw);
    let mut want_links = node_links.clone();
    want_links.push(iface);
    assert_eq!(
        links(&node.netns).await,
        want_links,
        "host links after exhaustion"
    );
    assert_eq!(links(&second.netns).await, ["lo"]);
    assert_eq!(reservations(state.path(), &node), [ip.to_string()]);
}

#[tokio::test]
async fn version_lists_the_supported_versions() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_felix-cni"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0"))
    );
}
