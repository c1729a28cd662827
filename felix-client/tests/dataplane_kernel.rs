//! Root-only tests of the dataplane against a real kernel: each test runs in its own
//! network namespace `fdp-<pid>-<n>` (removed by a guard even when the test fails) and
//! checks iptables-save, ipset and route state plus the write counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dataplane_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dataplane_support::{Netns, node, root, rules, scratch, scratch_dataplane};
use felix_client::calc::{Desired, Route, RouteTarget};
use felix_client::dataplane::{DataplaneStatus, DesiredSource, run};
use felix_client::sync::SyncEvent;
use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use typha_proto::{Digest, Revision, Update};

#[tokio::test]
async fn apply_programs_the_kernel_and_a_second_apply_writes_nothing() {
    let Some((ns, mut dp)) = scratch_dataplane(3).await else {
        return;
    };
    let desired = node(3, true);
    let report = dp.apply(&desired).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // v4 filter, v4 nat, v6 filter (v6 nat has nothing to do); one ipset restore; 4 routes.
    assert_eq!(
        (
            report.iptables_restores,
            report.ipset_restores,
            report.route_changes
        ),
        (3, 1, 4)
    );

    let filter = ns.save("iptables-save", "filter");
    for (builtin, target) in [
        ("INPUT", "cali-INPUT"),
        ("FORWARD", "cali-FORWARD"),
        ("OUTPUT", "cali-OUTPUT"),
    ] {
        let first = filter
            .iter()
            .find(|l| l.starts_with(&format!("-A {builtin} ")))
            .unwrap();
        assert!(first.ends_with(&format!("-j {target}")), "{first}");
    }
    assert!(filter.contains(&":cali-tw-ep2 - [0:0]".to_string()));
    let ep0: Vec<_> = filter
        .iter()
        .filter(|l| l.starts_with("-A cali-tw-ep0 "))
        .collect();
    assert_eq!(ep0.len(), 3);
    assert!(ep0.iter().all(|l| l.contains("--comment \"cali:")));
    let nat = ns.save("iptables-save", "nat");
    assert!(
        nat.iter()
            .any(|l| l.starts_with("-A POSTROUTING ") && l.ends_with("-j cali-POSTROUTING"))
    );
    assert!(
        nat.iter()
            .any(|l| l.starts_with("-A cali-POSTROUTING ") && l.contains("MASQUERADE"))
    );
    let v6 = ns.save("ip6tables-save", "filter");
    assert!(
        v6.iter()
            .any(|l| l.starts_with("-A cali-INPUT ") && l.contains("cali60s"))
    );

    assert_eq!(ns.set_members("cali40s1").len(), 5);
    assert!(ns.set_members("cali40p2").contains("10.244.0.2,tcp:80"));
    assert_eq!(
        ns.set_members("cali60s"),
        BTreeSet::from(["fd00::1".to_string()])
    );
    let routes = ns.agent_routes();
    assert_eq!(routes.len(), 4, "{routes:?}");
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("10.244.0.1 dev d0") && r.contains("scope link"))
    );
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("10.245.0.0/24 via 192.168.50.2 dev d0"))
    );

    let again = dp.apply(&desired).await;
    assert!(again.errors.is_empty(), "{:?}", again.errors);
    assert!(again.wrote_nothing(), "{again:?}");
    assert_eq!(dp.status().writes(), (3, 1, 4));
}

#[tokio::test]
async fn a_restarted_dataplane_with_the_same_desired_state_writes_nothing() {
    let Some(ns) = scratch(2) else { return };
    let desired = node(2, true);
    let first = ns.dataplane().await.apply(&desired).await;
    assert!(first.errors.is_empty() && !first.wrote_nothing());
    let mut restarted = ns.dataplane().await;
    let report = restarted.apply(&desired).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(restarted.status().writes(), (0, 0, 0));
}

#[tokio::test]
async fn a_changed_rule_is_rewritten_and_earlier_rules_keep_their_counters() {
    let Some((ns, mut dp)) = scratch_dataplane(0).await else {
        return;
    };
    let mut desired = Desired::default();
    let output = |ports: [u16; 3]| {
        ports
            .iter()
            .map(|p| format!("-p udp --dport {p}"))
            .collect::<Vec<_>>()
    };
    desired
        .v4
        .filter
        .insert("cali-OUTPUT".into(), output([5001, 5002, 5003]));
    desired
        .v4
        .filter
        .insert("cali-INPUT".into(), rules(&["-p udp --dport 5001"]));
    assert!(dp.apply(&desired).await.errors.is_empty());
    for port in [5001, 5002, 5003] {
        ns.send_udp(port, 3);
    }
    let before = ns.counters("cali-OUTPUT");
    assert_eq!(
        before.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [3, 3, 3]
    );

    // Changing the last rule rewrites only that rule.
    desired
        .v4
        .filter
        .insert("cali-OUTPUT".into(), output([5001, 5002, 5004]));
    let report = dp.apply(&desired).await;
    assert_eq!((report.iptables_restores, report.ipset_restores), (1, 0));
    let after = ns.counters("cali-OUTPUT");
    assert_eq!(after[..2], before[..2], "rules 1-2 untouched");
    assert_eq!(after[2].0, 0);
    assert!(after[2].1.contains("--dport 5004"));

    // Changing the middle rule rewrites it and (hashes are chained) the one after it.
    desired
        .v4
        .filter
        .insert("cali-OUTPUT".into(), output([5001, 5005, 5004]));
    dp.apply(&desired).await;
    let after = ns.counters("cali-OUTPUT");
    assert_eq!(after[0], before[0], "rule 1 untouched");
    assert_eq!((after[1].0, after[2].0), (0, 0));
    assert_eq!(ns.counters("cali-INPUT")[0].0, 3, "other chains untouched");
}

#[tokio::test]
async fn foreign_chains_rules_sets_and_routes_are_untouched() {
    let Some(ns) = scratch(1) else { return };
    ns.exec("iptables", &["-N", "mine"]);
    ns.exec(
        "iptables",
        &["-A", "mine", "-s", "1.2.3.4/32", "-j", "DROP"],
    );
    ns.exec("iptables", &["-A", "INPUT", "-j", "mine"]);
    ns.exec(
        "iptables",
        &["-A", "FORWARD", "-s", "5.6.7.8/32", "-j", "DROP"],
    );
    ns.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "d0",
            "-j",
            "MASQUERADE",
        ],
    );
    ns.exec("ipset", &["create", "other", "hash:net"]);
    ns.exec("ipset", &["add", "other", "10.9.9.0/24"]);
    ns.ip(&[
        "route",
        "add",
        "10.99.0.0/24",
        "dev",
        "d0",
        "proto",
        "static",
    ]);
    let foreign = |ns: &Netns| {
        let filter: Vec<String> = ns
            .save("iptables-save", "filter")
            .into_iter()
            .chain(ns.save("iptables-save", "nat"))
            .filter(|l| !l.contains("cali"))
            .collect();
        (
            filter,
            ns.set_members("other"),
            ns.ip(&["route", "show", "proto", "static"]),
        )
    };
    let untouched = foreign(&ns);

    let mut dp = ns.dataplane().await;
    let desired = node(1, true);
    assert!(dp.apply(&desired).await.errors.is_empty());
    assert_eq!(foreign(&ns), untouched);
    let input: Vec<String> = ns
        .save("iptables-save", "filter")
        .into_iter()
        .filter(|l| l.starts_with("-A INPUT "))
        .collect();
    assert!(
        input[0].ends_with("-j cali-INPUT") && input[1] == "-A INPUT -j mine",
        "{input:?}"
    );

    // Removing everything of the agent's leaves only the foreign state.
    let report = dp.apply(&Desired::default()).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(foreign(&ns), untouched);
    let all = [
        ns.save("iptables-save", "filter"),
        ns.save("iptables-save", "nat"),
        ns.save("ip6tables-save", "filter"),
    ]
    .concat();
    assert!(all.iter().all(|l| !l.contains("cali")), "{all:?}");
    assert_eq!(ns.sets(), BTreeSet::from(["other".to_string()]));
    assert!(ns.agent_routes().is_empty());
}

#[tokio::test]
async fn repair_restores_deleted_rules_members_routes_and_hooks() {
    let Some((ns, mut dp)) = scratch_dataplane(2).await else {
        return;
    };
    let desired = node(2, true);
    assert!(dp.apply(&desired).await.errors.is_empty());
    let (filter, sets, routes) = (
        ns.save("iptables-save", "filter"),
        ns.exec("ipset", &["save"]),
        ns.agent_routes(),
    );

    ns.exec("iptables", &["-D", "cali-tw-ep1", "2"]);
    ns.exec("iptables", &["-D", "INPUT", "1"]);
    ns.exec("ipset", &["del", "cali40s0", "10.0.3.0/24"]);
    ns.ip(&["route", "del", "10.244.0.2/32"]);
    assert_ne!(ns.save("iptables-save", "filter"), filter);

    let report = dp.repair().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        (
            report.iptables_restores,
            report.ipset_restores,
            report.route_changes
        ),
        (1, 1, 1)
    );
    assert_eq!(ns.save("iptables-save", "filter"), filter);
    assert_eq!(ns.exec("ipset", &["save"]), sets);
    assert_eq!(ns.agent_routes(), routes);
}

#[tokio::test]
async fn removed_endpoints_lose_their_chains_sets_and_routes() {
    let Some((ns, mut dp)) = scratch_dataplane(3).await else {
        return;
    };
    assert!(dp.apply(&node(3, true)).await.errors.is_empty());
    let report = dp.apply(&node(1, true)).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // One ipset restore creates nothing new; the second destroys the old sets.
    assert_eq!(report.ipset_restores, 1);
    let filter = ns.save("iptables-save", "filter").join("\n");
    assert!(
        filter.contains("cali-tw-ep0")
            && !filter.contains("cali-tw-ep1")
            && !filter.contains("cali-fw-ep2")
    );
    let sets = ns.sets();
    assert!(
        sets.contains("cali40s0") && !sets.contains("cali40s1") && !sets.contains("cali40p2"),
        "{sets:?}"
    );
    assert_eq!(ns.agent_routes().len(), 2);
}

#[tokio::test]
async fn a_missing_interface_fails_only_its_route_until_it_appears() {
    let Some((ns, mut dp)) = scratch_dataplane(1).await else {
        return;
    };
    let mut desired = node(1, true);
    desired.routes.insert(Route {
        dst: "10.244.9.9/32".into(),
        target: RouteTarget::Interface("late0".into()),
    });
    let report = dp.apply(&desired).await;
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.route_changes, 2);
    assert_eq!(dp.status().errors.load(Ordering::Relaxed), 1);
    // The endpoint without its interface is counted (the gauge behind the warning).
    assert_eq!(*dp.status().endpoints_without_interface.borrow(), 1);
    assert!(
        ns.save("iptables-save", "filter")
            .iter()
            .any(|l| l.contains("cali-tw-ep0"))
    );

    ns.add_link("late0");
    let report = dp.repair().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(*dp.status().endpoints_without_interface.borrow(), 0);
    assert_eq!(report.route_changes, 1);
    assert!(
        ns.agent_routes()
            .iter()
            .any(|r| r.starts_with("10.244.9.9 dev late0"))
    );
}

/// A calculation that yields a fixed desired state and counts folds.
struct Fixed(Desired, Arc<AtomicUsize>);

impl DesiredSource for Fixed {
    fn apply(&mut self, updates: &[Update]) {
        self.1.fetch_add(1 + updates.len(), Ordering::Relaxed);
    }
    fn desired(&self) -> Desired {
        self.0.clone()
    }
}

#[tokio::test]
async fn run_writes_nothing_before_in_sync_and_repairs_on_request() {
    if !root() {
        return;
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let ns = Netns::new(2);
    let status = Arc::new(DataplaneStatus::default());
    let (tx, rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let folds = Arc::new(AtomicUsize::new(0));
    let calc = Fixed(node(2, true), folds.clone());
    let task = tokio::spawn(run(ns.config(), calc, rx, status.clone(), shutdown.clone()));

    let mut folded = status.folded.subscribe();
    tx.send(SyncEvent::Changes {
        revision: Revision(5),
        updates: vec![],
    })
    .await
    .unwrap();
    folded.wait_for(|r| *r == Revision(5)).await.unwrap();
    assert_eq!(folds.load(Ordering::Relaxed), 1);
    assert_eq!(status.writes(), (0, 0, 0));
    assert!(
        ns.save("iptables-save", "filter")
            .iter()
            .all(|l| !l.contains("cali"))
    );
    assert!(ns.sets().is_empty());

    let mut applied = status.applied.subscribe();
    tx.send(SyncEvent::InSync {
        revision: Revision(6),
        digest: Digest::default(),
        keys: 0,
    })
    .await
    .unwrap();
    applied.wait_for(|r| *r == Revision(6)).await.unwrap();
    let writes = status.writes();
    assert_eq!(status.errors.load(Ordering::Relaxed), 0);
    assert_eq!(writes, (3, 1, 3));
    let reads = status.kernel_reads.load(Ordering::Relaxed);
    assert!(reads > 0, "the first pass reads the kernel");

    // A change-driven pass trusts the cache: no read, and (same state) no write.
    tx.send(SyncEvent::Changes {
        revision: Revision(7),
        updates: vec![],
    })
    .await
    .unwrap();
    applied.wait_for(|r| *r == Revision(7)).await.unwrap();
    assert_eq!(status.kernel_reads.load(Ordering::Relaxed), reads);
    assert_eq!(status.writes(), writes);
    assert!(
        ns.save("iptables-save", "filter")
            .iter()
            .any(|l| l.contains("cali-tw-ep1"))
    );

    // Disconnected keeps the dataplane; a requested repair brings a deleted rule back.
    tx.send(SyncEvent::Disconnected {
        reason: "test".into(),
    })
    .await
    .unwrap();
    ns.exec("iptables", &["-D", "cali-tw-ep0", "1"]);
    let mut passes = status.passes.subscribe();
    let done = *passes.borrow_and_update();
    status.request_repair();
    passes.wait_for(|p| *p > done).await.unwrap();
    assert_eq!(status.writes(), (writes.0 + 1, writes.1, writes.2));
    assert!(
        status.kernel_reads.load(Ordering::Relaxed) > reads,
        "repair re-reads"
    );
    assert_eq!(ns.counters("cali-tw-ep0").len(), 3);

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// The value of metric `name` (with label `label` when given) in a snapshot.
fn metric<'a>(
    snap: &'a [(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)],
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<&'a DebugValue> {
    snap.iter()
        .find(|(k, ..)| {
            k.key().name() == name
                && label
                    .is_none_or(|(n, v)| k.key().labels().any(|l| l.key() == n && l.value() == v))
        })
        .map(|(.., v)| v)
}

#[tokio::test]
async fn passes_restores_and_failures_are_metrics() {
    if !root() {
        return;
    }
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let ns = Netns::new(0);
    let mut dp = ns.dataplane().await;
    let mut desired = node(1, false);
    // A rule the kernel refuses fails its whole table (v4 filter), nothing else.
    desired
        .v4
        .filter
        .insert("cali-bad".into(), rules(&["-m no-such-match -j ACCEPT"]));
    let report = dp.apply(&desired).await;
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(
        !ns.save("iptables-save", "filter")
            .iter()
            .any(|l| l.contains("cali"))
    );
    assert!(
        ns.save("iptables-save", "nat")
            .iter()
            .any(|l| l.contains("cali-POSTROUTING"))
    );
    // Counters are reset by a snapshot: take one.
    let snap = snap.snapshot().into_vec();
    assert_eq!(
        metric(
            &snap,
            "felix_dataplane_errors_total",
            Some(("stage", "iptables"))
        ),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        metric(&snap, "felix_dataplane_iptables_restore_total", None),
        Some(&DebugValue::Counter(3))
    );
    assert_eq!(
        metric(&snap, "felix_dataplane_ipset_restore_total", None),
        Some(&DebugValue::Counter(1))
    );
    match metric(&snap, "felix_dataplane_apply_seconds", None) {
        Some(DebugValue::Histogram(values)) => assert_eq!(values.len(), 1),
        other => panic!("no apply histogram: {other:?}"),
    }
}
