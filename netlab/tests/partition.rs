//! Partition end-to-end test (root only), on the whole path of `common` with every
//! agent's connection to typha crossing its node's namespace (`typha_via_nodes`):
//! node 0 is cut off from typha by DROP rules inside its own namespace (never the root
//! namespace's) and held there until its agent noticed (the session ended on the read
//! timeout, short here, and a reconnect attempt failed too); meanwhile a policy changes
//! in the API. While cut off, node 0 keeps enforcing what it had and writes nothing,
//! node 1 enforces the change. After healing, the agent resumes (no snapshot), its
//! mirror's digest equals typha's, the probes match the oracle for the changed policy,
//! and nothing was flushed: the iptables-restores are exactly one per table whose agent
//! rules differ (as many as the never-cut node 1 needed for the same change), the
//! packet counters of every chain the change did not touch only grew, and an
//! established connection through node 0 exchanged data throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Agent, LIMIT, Rig, RigConfig, agent_rules, allow_from, pump_between};
use netlab::LabelSelector as Sel;

/// The tables the agent writes, as (save program, table).
const TABLES: [(&str, &str); 4] = [
    ("iptables-save", "filter"),
    ("iptables-save", "nat"),
    ("ip6tables-save", "filter"),
    ("ip6tables-save", "nat"),
];

/// One table's agent rules by chain, in order, each with its packet counter: every
/// `-A` line naming a `cali` chain (so built-in chains hold only the agent's hooks).
type Chains = BTreeMap<String, Vec<(String, u64)>>;

async fn chains(rig: &Rig, n: usize, program: &str, table: &str) -> Chains {
    let mut chains = Chains::new();
    for (rule, packets) in agent_rules(rig, n, program, table).await {
        let chain = rule.split_whitespace().nth(1).unwrap().to_string();
        chains.entry(chain).or_default().push((rule, packets));
    }
    chains
}

async fn tables(rig: &Rig, n: usize) -> Vec<Chains> {
    let mut out = Vec::new();
    for (program, table) in TABLES {
        out.push(chains(rig, n, program, table).await);
    }
    out
}

fn rules(chain: &[(String, u64)]) -> Vec<&str> {
    chain.iter().map(|(r, _)| r.as_str()).collect()
}

fn minus(a: (u64, u64, u64), b: (u64, u64, u64)) -> (u64, u64, u64) {
    (a.0 - b.0, a.1 - b.1, a.2 - b.2)
}

/// Waits until `agent`'s sync client counted `n` failed sessions or connection
/// attempts in total (each end of a session or attempt is published on `endpoint`).
async fn failures_reach(agent: &Agent, n: u64) {
    let mut ended = agent.sync.endpoint.subscribe();
    let wait = async {
        while agent.sync.failures.load(Ordering::Relaxed) < n {
            ended.changed().await.unwrap();
        }
    };
    assert!(
        tokio::time::timeout(LIMIT, wait).await.is_ok(),
        "{}: {} failures, waited for {n}",
        agent.name,
        agent.sync.failures.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_resumes_and_applies_only_the_change() {
    let mut rig = Rig::start(RigConfig {
        typha_via_nodes: true,
        ping_interval: Duration::from_millis(100),
        read_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..RigConfig::default()
    })
    .await;
    let (cut, other) = (0, 1);
    rig.set_policies(vec![allow_from("x", "from-y", Sel::all(), &["y"])])
        .await;
    let mut failures: Vec<String> = rig
        .check("before the partition")
        .await
        .into_iter()
        .collect();
    // y/a (node 1) -> x/a (node 0): allowed before and after the change, and through
    // node 0's policy chains.
    let pump = pump_between(&rig, ("y", "a"), ("x", "a")).await;
    let before = tables(&rig, cut).await;
    let writes: Vec<_> = rig.agents().map(|a| a.dataplane.writes()).collect();
    let agent = rig.agent(cut);
    let (snapshots, resumes) = (
        agent.sync.snapshots.load(Ordering::Relaxed),
        agent.sync.resumes.load(Ordering::Relaxed),
    );
    let sync_failures = agent.sync.failures.load(Ordering::Relaxed);
    let in_syncs = agent.tapped.borrow().in_syncs;

    rig.partition(cut).await;
    let old = rig.expected();
    rig.put_policies(vec![allow_from("x", "from-y", Sel::all(), &["y", "z"])])
        .await;
    let changed = rig.revision();
    rig.agent(other).reached(changed).await;
    // Held until node 0's agent noticed: its session ended, then an attempt failed.
    failures_reach(rig.agent(cut), sync_failures + 2).await;
    let agent = rig.agent(cut);
    assert_eq!(*agent.sync.endpoint.borrow(), None, "still connected");
    assert!(
        agent.tapped.borrow().revision < changed,
        "the change reached the cut-off node"
    );
    assert_eq!(
        agent.dataplane.writes(),
        writes[cut],
        "the cut-off node wrote"
    );
    // Ingress policy: node 0's pods keep the old rules, node 1's have the new ones.
    let mut partitioned = old;
    for (key, reachable) in rig.expected().iter() {
        let (ns, pod) = key.to.split_once('/').unwrap();
        if rig.topo.pod(ns, pod).unwrap().node == other {
            partitioned.insert(key.clone(), reachable);
        }
    }
    failures.extend(rig.check_against("partitioned", &partitioned).await);
    pump.advance(3, LIMIT).await.unwrap();

    rig.heal(cut).await;
    let agent = rig.agent(cut);
    agent.synced(in_syncs + 1).await;
    agent.reached(changed).await;
    assert_eq!(
        (
            agent.sync.snapshots.load(Ordering::Relaxed),
            agent.sync.resumes.load(Ordering::Relaxed)
        ),
        (snapshots, resumes + 1),
        "(snapshots, resumes): the reconnect did not resume"
    );
    pump.advance(3, LIMIT).await.unwrap();
    let after = tables(&rig, cut).await;

    // Writes: one restore per table whose agent rules differ, as on node 1.
    let needed = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| {
            b.iter().map(|(c, r)| (c, rules(r))).collect::<Vec<_>>()
                != a.iter().map(|(c, r)| (c, rules(r))).collect::<Vec<_>>()
        })
        .count() as u64;
    assert!(needed > 0, "the change changed no rule on node {cut}");
    let spent: Vec<_> = rig
        .agents()
        .zip(&writes)
        .map(|(a, w)| minus(a.dataplane.writes(), *w))
        .collect();
    assert_eq!(
        spent[cut].0, needed,
        "iptables-restores for {needed} changed table(s)"
    );
    assert_eq!(spent[cut].2, 0, "route changes");
    assert_eq!(
        spent[cut], spent[other],
        "(iptables, ipset, route) writes: the healed node vs the never-cut one"
    );

    // No flush: only the policy's chains changed; every other chain kept its counters.
    let mut touched = Vec::new();
    let mut counted = 0;
    for ((b, a), (program, table)) in before.iter().zip(&after).zip(TABLES) {
        for chain in a.keys().filter(|c| !b.contains_key(*c)) {
            touched.push(format!("{program} {table} {chain}"));
        }
        for (chain, old_rules) in b {
            let new_rules = a.get(chain).map(Vec::as_slice).unwrap_or_default();
            if rules(old_rules) != rules(new_rules) {
                touched.push(format!("{program} {table} {chain}"));
                continue;
            }
            for ((rule, old), (_, new)) in old_rules.iter().zip(new_rules) {
                assert!(
                    new >= old,
                    "{table}: counter went down ({old} -> {new}): {rule}"
                );
                counted += u64::from(*old > 0);
            }
        }
    }
    assert!(
        counted > 0,
        "no unchanged rule counted a packet: the counter check proves nothing"
    );
    assert!(
        !touched.is_empty() && touched.iter().all(|c| c.contains(" cali-pi-")),
        "chains changed beyond the policy's: {touched:?}"
    );

    failures.extend(rig.check("after healing").await);
    let flow = pump.stop().await.unwrap();
    assert!(flow.exchanges() >= 12);
    let hub = rig.typha.as_ref().unwrap().hub.clone();
    let target = hub.revision();
    rig.agent(cut).reached(target).await;
    let mirror = rig.stop_agent(cut).await;
    // Bookmarks may have moved the hub on by empty (progress) batches since; nothing
    // writes, so the digest cannot have moved.
    assert!(
        (target..=hub.revision()).contains(&mirror.revision()),
        "the healed mirror at {:?}, the hub at {target:?} then {:?}",
        mirror.revision(),
        hub.revision()
    );
    assert_eq!(mirror.digest(), hub.digest(), "the healed mirror differs");
    rig.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
