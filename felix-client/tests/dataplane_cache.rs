//! Root-only tests of the dataplane's kernel cache: change-driven passes read nothing
//! and write only the change, drift is invisible to them and repaired by a resync, and a
//! write that fails because the kernel moved under the cache is re-read and retried in
//! the same pass. Each test runs in its own network namespace (see `dataplane_support`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dataplane_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use dataplane_support::{node, rules, scratch_dataplane, set};
use felix_client::calc::{Desired, Family, IpSetKind, Route, RouteTarget};

/// `count` distinct /32 members, from `10.<base>.0.0` on.
fn members(base: u8, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("10.{base}.{}.{}/32", i / 256, i % 256))
        .collect()
}

#[tokio::test]
async fn change_driven_passes_read_nothing_and_write_only_the_change() {
    let Some((ns, mut dp)) = scratch_dataplane(3).await else {
        return;
    };
    let mut desired = node(3, true);
    let first = dp.apply(&desired).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    // ipset save, 4 tables, route + link dumps: the cold cache reads everything.
    assert_eq!(first.kernel_reads, 7);

    let noop = dp.apply(&desired).await;
    assert!(noop.errors.is_empty() && noop.wrote_nothing(), "{noop:?}");
    assert_eq!(noop.kernel_reads, 0);

    // One rule: one restore of one table, no read.
    desired.v4.filter.get_mut("cali-tw-ep1").unwrap()[2] = "-j REJECT".into();
    let report = dp.apply(&desired).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        (
            report.iptables_restores,
            report.ipset_restores,
            report.route_changes,
            report.kernel_reads
        ),
        (1, 0, 0, 0)
    );
    assert!(
        ns.save("iptables-save", "filter")
            .iter()
            .any(|l| l.starts_with("-A cali-tw-ep1 ") && l.contains("-j REJECT"))
    );

    // One member: one ipset restore, no read; a new route: only the link dump.
    let mut s = desired.ipsets["cali40s0"].members.as_ref().clone();
    s.remove("10.0.4.0/24");
    s.insert("10.0.9.0/24".to_string());
    desired.ipsets.get_mut("cali40s0").unwrap().members = Arc::new(s);
    desired.routes.insert(Route {
        dst: "10.244.1.1/32".into(),
        target: RouteTarget::Interface("d2".into()),
    });
    let report = dp.apply(&desired).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        (
            report.iptables_restores,
            report.ipset_restores,
            report.route_changes,
            report.kernel_reads
        ),
        (0, 1, 1, 1)
    );
    let kernel = ns.set_members("cali40s0");
    assert!(kernel.contains("10.0.9.0/24") && !kernel.contains("10.0.4.0/24"));
    assert!(
        ns.agent_routes()
            .iter()
            .any(|r| r.starts_with("10.244.1.1 dev d2"))
    );
    // What the cache says is what a fresh reader sees: a restart writes nothing.
    let report = ns.dataplane().await.apply(&desired).await;
    assert!(
        report.errors.is_empty() && report.wrote_nothing(),
        "{report:?}"
    );
}

#[tokio::test]
async fn drift_is_left_alone_by_apply_and_repaired_by_resync() {
    let Some((ns, mut dp)) = scratch_dataplane(2).await else {
        return;
    };
    let desired = node(2, true);
    assert!(dp.apply(&desired).await.errors.is_empty());
    let filter = ns.save("iptables-save", "filter");
    ns.exec("iptables", &["-D", "cali-tw-ep0", "1"]);
    ns.exec("ipset", &["del", "cali40s1", "10.1.2.0/24"]);

    // The cache is trusted between refreshes: the drift is not seen.
    let report = dp.apply(&desired).await;
    assert!(
        report.wrote_nothing() && report.kernel_reads == 0,
        "{report:?}"
    );
    assert_ne!(ns.save("iptables-save", "filter"), filter);

    let report = dp.resync(&desired).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.iptables_restores, report.ipset_restores), (1, 1));
    assert_eq!(ns.save("iptables-save", "filter"), filter);
    assert!(ns.set_members("cali40s1").contains("10.1.2.0/24"));
}

#[tokio::test]
async fn a_write_failing_against_a_stale_cache_is_re_read_and_retried() {
    let Some((ns, mut dp)) = scratch_dataplane(0).await else {
        return;
    };
    let mut desired = Desired::default();
    desired
        .v4
        .filter
        .insert("cali-fw".into(), rules(&["-j RETURN", "-j ACCEPT"]));
    // A set no rule references, so that it can be destroyed by hand.
    desired.ipsets.insert(
        "cali40free".into(),
        set(IpSetKind::Net, Family::V4, members(7, 3)),
    );
    assert!(dp.apply(&desired).await.errors.is_empty());

    // Behind the cache's back: the chain loses its second rule, the set disappears.
    ns.exec("iptables", &["-D", "cali-fw", "2"]);
    ns.exec("ipset", &["destroy", "cali40free"]);
    // Replacing rule 2 (cached plan: `-R cali-fw 2`) and adding a member (cached plan:
    // `add cali40free ...`) both fail; each is re-read and planned again.
    desired
        .v4
        .filter
        .insert("cali-fw".into(), rules(&["-j RETURN", "-j DROP"]));
    desired.ipsets.insert(
        "cali40free".into(),
        set(IpSetKind::Net, Family::V4, members(7, 4)),
    );
    let report = dp.apply(&desired).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        (
            report.iptables_restores,
            report.ipset_restores,
            report.kernel_reads
        ),
        (2, 2, 2)
    );
    let chain: Vec<String> = ns
        .counters("cali-fw")
        .into_iter()
        .map(|(_, rule)| rule)
        .collect();
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert!(chain[1].ends_with("-j DROP"), "{chain:?}");
    assert_eq!(ns.set_members("cali40free").len(), 4);
}

#[tokio::test]
async fn a_large_set_changes_by_its_difference_and_an_unchanged_arc_costs_nothing() {
    let Some((ns, mut dp)) = scratch_dataplane(0).await else {
        return;
    };
    let mut desired = node(1, false);
    let big: BTreeSet<String> = members(20, 20_000).into_iter().collect();
    desired.ipsets.insert(
        "cali40big".into(),
        set(IpSetKind::Net, Family::V4, big.clone()),
    );
    assert!(dp.apply(&desired).await.errors.is_empty());
    assert_eq!(ns.set_members("cali40big").len(), 20_000);

    // The same Arc, and an equal set in a new Arc: nothing to write either way.
    assert!(dp.apply(&desired).await.wrote_nothing());
    let mut equal = desired.clone();
    equal.ipsets.get_mut("cali40big").unwrap().members = Arc::new(big.clone());
    assert!(dp.apply(&equal).await.wrote_nothing());

    // Two members swapped: the set is edited, not rewritten (a swap would re-create it).
    let mut changed = big;
    changed.remove("10.20.0.0/32");
    changed.insert("10.21.0.0/32".to_string());
    equal.ipsets.get_mut("cali40big").unwrap().members = Arc::new(changed);
    let report = dp.apply(&equal).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.ipset_restores, report.kernel_reads), (1, 0));
    let kernel = ns.set_members("cali40big");
    assert_eq!(kernel.len(), 20_000);
    assert!(kernel.contains("10.21.0.0") && !kernel.contains("10.20.0.0"));
}
