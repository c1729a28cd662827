#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn chains(list: &[(&str, &[&str])]) -> Chains {
    list.iter()
        .map(|(n, r)| (n.to_string(), r.iter().map(|s| s.to_string()).collect()))
        .collect()
}

/// What iptables-save would print after applying `desired` to an empty table.
fn saved(table: Table, desired: &Chains) -> String {
    let mut s = format!("*{}\n", table.name());
    for (builtin, target) in table.hooks() {
        s += &format!(":{builtin} ACCEPT [0:0]\n");
        if desired.contains_key(*target) {
            s += &format!("-A {builtin} -m comment --comment \"cali:hook-{target}\" -j {target}\n");
        }
    }
    for name in desired.keys() {
        s += &format!(":{name} - [0:0]\n");
    }
    for (name, rules) in desired {
        for (rule, hash) in rules.iter().zip(rule_hashes(name, rules)) {
            s += &format!("-A {name} {rule} -m comment --comment \"cali:{hash}\"\n");
        }
    }
    s + "COMMIT\n"
}

#[test]
fn hashes_chain_and_differ_by_position() {
    let a = rule_hashes("cali-x", &["-j ACCEPT".into(), "-j ACCEPT".into()]);
    assert_ne!(a[0], a[1]);
    let b = rule_hashes("cali-y", &["-j ACCEPT".into()]);
    assert_ne!(a[0], b[0]);
    assert_eq!(a[0].len(), 16);
}

#[test]
fn empty_kernel_gets_chains_rules_and_hooks() {
    let want = chains(&[("cali-INPUT", &["-j cali-fw"]), ("cali-fw", &["-j ACCEPT"])]);
    let plan = plan(Table::Filter, &want, &KernelTable::default()).unwrap();
    assert!(plan.starts_with("*filter\n:cali-INPUT - [0:0]\n:cali-fw - [0:0]\n"));
    assert!(plan.contains("-A cali-fw -m comment --comment \"cali:"));
    assert!(
        plan.contains("-I INPUT 1 -m comment --comment \"cali:hook-cali-INPUT\" -j cali-INPUT")
    );
    assert!(!plan.contains("FORWARD"));
    assert!(plan.ends_with("COMMIT\n"));
}

#[test]
fn unchanged_state_plans_nothing() {
    let want = chains(&[
        ("cali-INPUT", &["-j cali-fw"]),
        ("cali-fw", &["-s 10.0.0.1/32 -j ACCEPT", "-j DROP"]),
    ]);
    let kernel = parse_save(&saved(Table::Filter, &want)).unwrap();
    assert_eq!(plan(Table::Filter, &want, &kernel), None);
}

#[test]
fn changed_rule_is_replaced_and_tail_deleted() {
    let old = chains(&[("cali-fw", &["-j A", "-j B", "-j C", "-j D"])]);
    let kernel = parse_save(&saved(Table::Filter, &old)).unwrap();
    let new = chains(&[("cali-fw", &["-j A", "-j X"])]);
    let plan = plan(Table::Filter, &new, &kernel).unwrap();
    let ops: Vec<&str> = plan.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(ops.len(), 3, "{plan}");
    assert!(ops[0].starts_with("-R cali-fw 2 ") && ops[0].ends_with("-j X"));
    assert_eq!(ops[1..], ["-D cali-fw 4", "-D cali-fw 3"]);
}

#[test]
fn misplaced_hook_moves_to_top_and_foreign_rules_stay() {
    let want = chains(&[("cali-INPUT", &["-j ACCEPT"])]);
    let mut text = saved(Table::Filter, &want);
    text = text.replace(
        "-A INPUT -m comment",
        "-A INPUT -s 1.2.3.4/32 -j DROP\n-A INPUT -m comment",
    );
    let kernel = parse_save(&text).unwrap();
    let plan = plan(Table::Filter, &want, &kernel).unwrap();
    let ops: Vec<&str> = plan.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(ops[0], "-D INPUT 2");
    assert!(ops[1].starts_with("-I INPUT 1 "));
    assert_eq!(ops.len(), 2);
}

#[test]
fn unwanted_chains_are_flushed_then_deleted_unless_foreign_referenced() {
    let old = chains(&[
        ("cali-INPUT", &["-j cali-a"]),
        ("cali-a", &["-j ACCEPT"]),
        ("cali-b", &[]),
    ]);
    let text =
        saved(Table::Filter, &old).replace("COMMIT", ":mine - [0:0]\n-A mine -j cali-b\nCOMMIT");
    let kernel = parse_save(&text).unwrap();
    let plan = plan(Table::Filter, &Chains::new(), &kernel).unwrap();
    let ops: Vec<&str> = plan.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(
        ops,
        [
            "-D INPUT 1",
            "-F cali-INPUT",
            "-F cali-a",
            "-X cali-INPUT",
            "-X cali-a"
        ]
    );
}

#[test]
fn parses_unquoted_comments_and_rejects_garbage() {
    let t =
        parse_save("*filter\n:X - [0:0]\n-A X -m comment --comment cali:abc -j ACCEPT\nCOMMIT\n")
            .unwrap();
    assert_eq!(t.chains["X"][0].tag.as_deref(), Some("abc"));
    assert!(parse_save("-Z what\n").is_err());
}

#[test]
fn ops_applied_to_the_cached_view_leave_nothing_to_do() {
    let old = chains(&[
        ("cali-INPUT", &["-j cali-a"]),
        ("cali-a", &["-j A", "-j B", "-j C"]),
        ("cali-gone", &["-j D"]),
    ]);
    let mut view = parse_save(&saved(Table::Filter, &old)).unwrap();
    let new = chains(&[
        ("cali-INPUT", &["-j cali-a"]),
        ("cali-a", &["-j A", "-j X"]),
        ("cali-new", &["-j E"]),
    ]);
    let ops = plan_ops(Table::Filter, &new, &view, None);
    assert!(!ops.is_empty());
    view.apply(&ops);
    assert_eq!(plan_ops(Table::Filter, &new, &view, None), []);
    assert!(!view.chains.contains_key("cali-gone"));
    // With the applied chains known, unchanged chains are skipped, changed ones not.
    let mut newer = new.clone();
    newer.insert("cali-new".into(), vec!["-j F".into()]);
    let ops = plan_ops(Table::Filter, &newer, &view, Some(&new));
    assert_eq!(ops.len(), 1);
    assert!(matches!(&ops[0], Op::Replace(c, 1, l) if c == "cali-new" && l.ends_with("-j F")));
}
