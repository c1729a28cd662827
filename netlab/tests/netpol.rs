//! End-to-end NetworkPolicy tests (root only): the whole path with real traffic.
//!
//! kube-sim holds namespaces x, y, z and pods a, b, c in each (spread over two nodes,
//! their IPs the bench's); typha watches it and serves two felix-client agents over
//! mutual TLS; each agent's calc (networking mode) and dataplane program its node's
//! namespace. Every case writes policies into the API, waits until typha has them and
//! both dataplanes have applied that revision (watches, no sleeps), probes TCP and UDP
//! 80/81 between every pod pair, and compares with the oracle ([`netlab::expected`]),
//! which knows nothing of calc. Routes come only from the dataplane: the baseline
//! (no policy, everything reachable) proves them. The rig is `common` (shared with the
//! lifecycle and mode tests). The same cases run again over IPv6-only pods and over
//! dual-stack pods (every pair probed over both families: an allowed flow must work over
//! IPv4 and IPv6, a denied one fail over both, and ipBlocks admit their own family).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cases::run_cases;
use common::{Rig, RigConfig, SERVICES};
use netlab::{IpFamily, LabelSelector as Sel, Peer, Policy, Rule, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_match_the_oracle() {
    let mut rig = Rig::start(RigConfig::default()).await;
    // Baseline (routes come from the dataplane), then every case.
    let mut failures = run_cases(&mut rig).await;
    // Apply, change and delete one policy: the probes follow each step.
    let deny = Policy::new("y", "web", Sel::all());
    rig.set_policies(vec![deny.clone()]).await;
    if let Some(f) = rig.check("converge: deny ingress to y").await {
        failures.push(f);
    }
    let allow_x = deny.ingress(Rule::from_peers(vec![Peer::namespaces(Sel::label(
        "ns", "x",
    ))]));
    rig.set_policies(vec![allow_x]).await;
    if let Some(f) = rig.check("converge: changed to allow from x").await {
        failures.push(f);
    }
    rig.set_policies(Vec::new()).await;
    if let Some(f) = rig.check("converge: deleted").await {
        failures.push(f);
    }
    // A namespace label change moves a namespace into a policy's peers.
    let team = Policy::new("y", "from-team-blue", Sel::all()).ingress(Rule::from_peers(vec![
        Peer::namespaces(Sel::label("team", "blue")),
    ]));
    rig.set_policies(vec![team]).await;
    if let Some(f) = rig.check("namespace selector before relabel").await {
        failures.push(f);
    }
    rig.label_namespace("z", "team", "blue").await;
    if let Some(f) = rig.check("namespace z relabelled team=blue").await {
        failures.push(f);
    }
    finish(rig, failures).await;
}

/// Stops the rig, then fails with every case's report if any failed.
async fn finish(rig: Rig, failures: Vec<String>) {
    let total = failures.len();
    rig.stop().await;
    assert!(
        total == 0,
        "{total} case(s) failed:\n{}",
        failures.join("\n")
    );
}

/// Runs every case on a bench of `stack` and asserts the matrices cover exactly the
/// bench's families.
async fn cases_over(stack: Stack) {
    let mut rig = Rig::start(RigConfig {
        stack,
        ..RigConfig::default()
    })
    .await;
    let want = rig.expected();
    for family in [IpFamily::V4, IpFamily::V6] {
        let probes = want.iter().filter(|(k, _)| k.family == family).count();
        let pods = rig.topo.pods().len();
        let per_family = if stack.has(family) {
            pods * pods * SERVICES.len()
        } else {
            0
        };
        assert_eq!(probes, per_family, "{family} probes on a {stack:?} bench");
    }
    let failures = run_cases(&mut rig).await;
    finish(rig, failures).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_match_the_oracle_over_ipv6_only_pods() {
    cases_over(Stack::V6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_match_the_oracle_over_dual_stack_pods() {
    cases_over(Stack::Dual).await;
}
