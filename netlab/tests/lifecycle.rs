//! Lifecycle end-to-end tests (root only), on the whole path of `common` (kube-sim ->
//! typha over mutual TLS -> one agent per node namespace), with real traffic:
//! - drift repair: a rule and an ipset member deleted by hand break exactly the probes
//!   they carried; a requested repair puts both back and the probes match the oracle;
//! - no-op restart: a fresh agent over an unchanged namespace writes nothing (no
//!   iptables-restore, no ipset restore, no route change), no rule's packet counter goes
//!   down, and an open TCP connection across nodes keeps carrying data both ways;
//! - typha lost and back: while typha is gone the dataplane stays as is (open and new
//!   allowed connections work, denied ones stay denied, nothing is written); after the
//!   clients resync nothing is written; a policy change then takes effect; an open
//!   connection exchanges data throughout and never loses or reorders a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{LIMIT, Rig, RigConfig, agent_rules, allow_from, node_exec, pump_between};
use netlab::{LabelSelector as Sel, Mismatch};

/// The agent's rule lines (`-A <chain> ...`) of one table of node `n`, with their
/// packet counters (`iptables-save -c`): every line that names a `cali` chain or
/// jumps to one.
async fn counters(rig: &Rig, n: usize, table: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (rule, packets) in agent_rules(rig, n, "iptables-save", table).await {
        // Identical rules in one chain would collide; the hash comments make them unique.
        assert!(
            out.insert(rule.clone(), packets).is_none(),
            "duplicate {rule}"
        );
    }
    out
}

/// The rules (`-A` lines) of `chain` in node `n`'s filter table.
async fn chain_rules(rig: &Rig, n: usize, chain: &str) -> Vec<String> {
    let save = node_exec(rig, n, "iptables-save", &["-t", "filter"]).await;
    let prefix = format!("-A {chain} ");
    save.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// The agent's ingress policy chains of node `n`.
async fn policy_chains(rig: &Rig, n: usize) -> Vec<String> {
    let save = node_exec(rig, n, "iptables-save", &["-t", "filter"]).await;
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("cali-pi-"))
        .map(str::to_string)
        .collect()
}

/// The set a rule matches (`--match-set <name> src`).
fn match_set(rule: &str) -> Option<String> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "--match-set" {
            return words.next().map(str::to_string);
        }
    }
    None
}

async fn set_members(rig: &Rig, n: usize, set: &str) -> Vec<String> {
    let list = node_exec(rig, n, "ipset", &["list", set]).await;
    list.lines()
        .skip_while(|l| !l.starts_with("Members:"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

/// Asks node `n`'s dataplane for a repair and waits until that pass finished.
async fn repair(rig: &Rig, n: usize) {
    let agent = rig.agent(n);
    let mut passes = agent.dataplane.passes.subscribe();
    let before = *passes.borrow_and_update();
    agent.dataplane.request_repair();
    tokio::time::timeout(LIMIT, passes.wait_for(|p| *p > before))
        .await
        .expect("no repair pass")
        .unwrap();
    agent.settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired() {
    let mut rig = Rig::start(RigConfig::default()).await;
    // x/a is on node 0, x/b on node 1.
    let (xa, xb) = (
        rig.topo.pod("x", "a").unwrap().clone(),
        rig.topo.pod("x", "b").unwrap().clone(),
    );
    assert_eq!((xa.node, xb.node), (0, 1));
    rig.set_policies(vec![
        allow_from("x", "a-from-y", Sel::label("pod", "a"), &["y"]),
        allow_from("x", "b-from-z", Sel::label("pod", "b"), &["z"]),
    ])
    .await;
    let failures: Vec<String> = rig.check("policies in place").await.into_iter().collect();

    // Drift on node 0: delete the allow rule of x/a's policy chain.
    let chains = policy_chains(&rig, 0).await;
    assert_eq!(chains.len(), 1, "node 0 policy chains: {chains:?}");
    let before_rules = chain_rules(&rig, 0, &chains[0]).await;
    let position = before_rules
        .iter()
        .position(|r| match_set(r).is_some())
        .expect("an allow rule with a set");
    let pos = (position + 1).to_string();
    node_exec(
        &rig,
        0,
        "iptables",
        &["-t", "filter", "-D", &chains[0], &pos],
    )
    .await;
    // Drift on node 1: delete z/a's IP from the set x/b's policy matches.
    let chains1 = policy_chains(&rig, 1).await;
    assert_eq!(chains1.len(), 1, "node 1 policy chains: {chains1:?}");
    let rules1 = chain_rules(&rig, 1, &chains1[0]).await;
    let set = rules1
        .iter()
        .find_map(|r| match_set(r))
        .expect("a set rule");
    let za = rig.topo.pod("z", "a").unwrap().ip;
    let members_before = set_members(&rig, 1, &set).await;
    node_exec(&rig, 1, "ipset", &["del", &set, &za.to_string()]).await;
    assert_eq!(
        set_members(&rig, 1, &set).await.len() + 1,
        members_before.len()
    );

    // The drift breaks exactly what those carried: y -> x/a and z/a -> x/b.
    let want = rig.expected();
    let seen = rig
        .topo
        .probe(&common::SERVICES, common::PROBE_LIMIT)
        .await
        .unwrap();
    let broken: Vec<Mismatch> = want.mismatches(&seen);
    let carried = |m: &Mismatch| {
        m.expected
            && m.observed == Some(false)
            && ((m.key.to == "x/a" && m.key.from.starts_with("y/"))
                || (m.key.to == "x/b" && m.key.from == "z/a"))
    };
    assert_eq!(
        broken.len(),
        3 * 4 + 4,
        "drift effect: {}",
        want.render_diff(&seen)
    );
    assert!(
        broken.iter().all(carried),
        "drift effect: {}",
        want.render_diff(&seen)
    );

    for n in 0..2 {
        repair(&rig, n).await;
    }
    assert_eq!(
        chain_rules(&rig, 0, &chains[0]).await,
        before_rules,
        "rule not restored"
    );
    let mut members_after = set_members(&rig, 1, &set).await;
    let mut members_before = members_before;
    members_after.sort();
    members_before.sort();
    assert_eq!(members_after, members_before, "member not restored");
    rig.finish(failures, "after repair").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_unchanged_state_writes_nothing() {
    let mut rig = Rig::start(RigConfig::default()).await;
    rig.set_policies(vec![allow_from("x", "from-y", Sel::all(), &["y"])])
        .await;
    let failures: Vec<String> = rig.check("before restart").await.into_iter().collect();
    // y/a (node 1) -> x/a (node 0): allowed, through node 0's policy chains.
    let pump = pump_between(&rig, ("y", "a"), ("x", "a")).await;
    let before: Vec<_> = [
        counters(&rig, 0, "filter").await,
        counters(&rig, 0, "nat").await,
    ]
    .into();
    assert!(
        before[0].values().any(|p| *p > 0),
        "no agent rule counted a packet: the counter check would prove nothing"
    );
    rig.stop_agent(0).await;
    pump.advance(3, LIMIT).await.unwrap();
    let fresh = rig.spawn_agent(0);
    fresh.synced(1).await;
    rig.agents[0] = Some(fresh);
    let agent = rig.agent(0);
    assert_eq!(
        agent.dataplane.writes(),
        (0, 0, 0),
        "restart wrote (iptables restores, ipset restores, route changes)"
    );
    assert!(
        agent
            .dataplane
            .kernel_reads
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the fresh agent never read the kernel"
    );
    pump.advance(3, LIMIT).await.unwrap();
    let after = [
        counters(&rig, 0, "filter").await,
        counters(&rig, 0, "nat").await,
    ];
    for (table, (old, new)) in ["filter", "nat"].iter().zip(before.iter().zip(&after)) {
        assert_eq!(
            old.keys().collect::<Vec<_>>(),
            new.keys().collect::<Vec<_>>(),
            "{table}: the agent's rules changed over a no-op restart"
        );
        for (rule, packets) in old {
            assert!(new[rule] >= *packets, "{table}: counter went down: {rule}");
        }
    }
    let flow = pump.stop().await.unwrap();
    assert!(flow.exchanges() >= 9);
    rig.finish(failures, "after restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typha_lost_and_back() {
    let mut rig = Rig::start(RigConfig::default()).await;
    let policy = allow_from("x", "from-y", Sel::all(), &["y"]);
    rig.set_policies(vec![policy.clone()]).await;
    let mut failures: Vec<String> = rig.check("before typha stops").await.into_iter().collect();
    let pump = pump_between(&rig, ("y", "a"), ("x", "a")).await;
    let writes: Vec<_> = rig.agents().map(|a| a.dataplane.writes()).collect();
    let in_syncs: Vec<_> = rig.agents().map(|a| a.tapped.borrow().in_syncs).collect();

    rig.stop_typha().await;
    for agent in rig.agents() {
        let mut endpoint = agent.sync.endpoint.subscribe();
        tokio::time::timeout(LIMIT, endpoint.wait_for(Option::is_none))
            .await
            .expect("the session never ended")
            .unwrap();
    }
    // Typha gone: the open connection, new allowed ones and the denials hold.
    pump.advance(3, LIMIT).await.unwrap();
    failures.extend(rig.check("typha stopped").await);
    pump.advance(3, LIMIT).await.unwrap();
    let now: Vec<_> = rig.agents().map(|a| a.dataplane.writes()).collect();
    assert_eq!(now, writes, "the dataplane wrote while typha was gone");

    rig.restart_typha().await;
    for (agent, n) in rig.agents().zip(&in_syncs) {
        agent.synced(n + 1).await;
    }
    let now: Vec<_> = rig.agents().map(|a| a.dataplane.writes()).collect();
    assert_eq!(now, writes, "the resync after typha came back wrote");
    pump.advance(3, LIMIT).await.unwrap();

    // A change after the resync takes effect; y stays allowed, so the flow goes on.
    rig.set_policies(vec![allow_from("x", "from-y", Sel::all(), &["y", "z"])])
        .await;
    failures.extend(rig.check("policy changed after typha came back").await);
    let now: Vec<_> = rig.agents().map(|a| a.dataplane.writes()).collect();
    assert_ne!(now, writes, "the policy change wrote nothing");
    pump.advance(3, LIMIT).await.unwrap();
    let flow = pump.stop().await.unwrap();
    assert!(flow.exchanges() >= 15);
    rig.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
