//! The bench itself, without a dataplane (root only): namespaces, veths, listeners and
//! probes work, routes are absent until the test-only helper adds them, a firewall drop
//! shows up as exactly the probes it should block, and the drop guard removes every
//! namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use netlab::{IpFamily, Matrix, PodSpec, ProbeKey, Protocol, Topology};

const SERVICES: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
];
const LIMIT: Duration = Duration::from_millis(300);

async fn small_bench() -> Topology {
    let mut builder = Topology::builder().nodes(2).listen(&[80, 81]);
    for (i, (ns, pod)) in [("x", "a"), ("x", "b"), ("y", "a"), ("y", "b")]
        .into_iter()
        .enumerate()
    {
        builder = builder.pod(PodSpec::new(ns, pod, i % 2).serve_ports(&[80, 81]));
    }
    builder.build().await.unwrap()
}

fn netns_names() -> String {
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap()
}

fn all_open(topo: &Topology) -> Matrix {
    netlab::expected(&topo.cluster(), &[], &SERVICES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_routes_probes_and_cleanup() {
    let topo = small_bench().await;
    let id = topo.id().to_string();
    assert_eq!(
        netns_names().matches(format!("{id}-").as_str()).count(),
        1 + 2 + 4
    );
    let a = topo.pod("x", "a").unwrap();
    assert_eq!(a.iface, netmodel::interface_name("x", "a"));
    assert_eq!(a.iface, "cali456b416f2bf");

    // No routes to pods yet: only loopback probes connect.
    let seen = topo.probe(&SERVICES, LIMIT).await.unwrap();
    assert_eq!(seen.len(), 4 * 4 * 4);
    let loopback = seen.iter().filter(|(k, _)| k.from == k.to).count();
    assert_eq!(
        seen.reachable(),
        loopback,
        "{}",
        all_open(&topo).render_diff(&seen)
    );

    // With the dataplane's routes (test-only helper) everything connects.
    topo.install_test_routes().await.unwrap();
    let want = all_open(&topo);
    let seen = topo.probe(&SERVICES, LIMIT).await.unwrap();
    assert!(
        want.mismatches(&seen).is_empty(),
        "{}",
        want.render_diff(&seen)
    );

    // A drop of new UDP flows to y/b on its node blocks exactly the UDP probes from the
    // other pods to it (echo replies to y/b belong to its own flows and pass).
    let yb = topo.pod("y", "b").unwrap();
    let node = &topo.nodes()[yb.node];
    let dst = format!("{}/32", yb.ip);
    netlab::cmd::exec_in(
        &node.netns,
        "iptables",
        &[
            "-A",
            "FORWARD",
            "-p",
            "udp",
            "-d",
            &dst,
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            "DROP",
        ],
    )
    .await
    .unwrap();
    let mut want = all_open(&topo);
    for from in topo.pods().iter().filter(|p| p.id() != "y/b") {
        for port in [80, 81] {
            let key = ProbeKey {
                from: from.id(),
                to: "y/b".into(),
                protocol: Protocol::Udp,
                port,
                family: IpFamily::V4,
            };
            want.insert(key, false);
        }
    }
    let seen = topo.probe(&SERVICES, LIMIT).await.unwrap();
    assert!(
        want.mismatches(&seen).is_empty(),
        "{}",
        want.render_diff(&seen)
    );
    assert_eq!(seen.reachable(), 64 - 3 * 2);

    drop(topo);
    assert_eq!(netns_names().matches(format!("{id}-").as_str()).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_still_deletes_the_bench() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let topo = small_bench().await;
        let _ = tx.send(topo.id().to_string());
        panic!("test body fails");
    });
    let id = rx.await.unwrap();
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(netns_names().matches(format!("{id}-").as_str()).count(), 0);
}

#[tokio::test]
async fn an_invalid_spec_is_refused() {
    let err = Topology::builder()
        .nodes(1)
        .pod(PodSpec::new("x", "a", 3))
        .build()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("invalid topology"), "{err}");
}
