#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

fn canon(text: &str) -> String {
    Selector::parse(text).unwrap().unwrap().to_string()
}

#[test]
fn parses_and_prints_canonically() {
    assert_eq!(canon("app=='web'&&has(tier)"), "app == 'web' && has(tier)");
    assert_eq!(
        canon("a in {'x',\"y\"} || !(b != 'c' && c not in {})"),
        "a in { 'x', 'y' } || !(b != 'c' && c not in {})"
    );
    assert_eq!(
        canon("(a == 'x' || b == 'y') && all()"),
        "(a == 'x' || b == 'y') && all()"
    );
    assert_eq!(
        canon("k starts with 'p' && k ends with 's' && k contains \"it's\""),
        "k starts with 'p' && k ends with 's' && k contains \"it's\""
    );
    assert_eq!(Selector::parse("  ").unwrap(), None);
    // Canonical output parses back to the same tree.
    let s = Selector::parse("!has(x) && (a == 'b' || global())")
        .unwrap()
        .unwrap();
    assert_eq!(Selector::parse(&s.to_string()).unwrap().unwrap(), s);
}

#[test]
fn evaluates_with_calico_semantics() {
    let labels: std::collections::BTreeMap<&str, &str> = [
        ("app", "web"),
        ("tier", "front-end"),
        (NAMESPACE_LABEL, "x"),
    ]
    .into();
    let get = |k: &str| labels.get(k).copied();
    let yes = |t: &str| Selector::parse(t).unwrap().unwrap().matches(&get);
    assert!(yes("app == 'web' && has(tier)"));
    assert!(!yes("app == 'db'"));
    assert!(yes("missing != 'x'"), "!= matches an absent label");
    assert!(yes("missing not in { 'a' }"));
    assert!(!yes("missing in { 'a' }"));
    assert!(!yes("app not in { 'web' }"));
    assert!(yes(
        "tier starts with 'front' && tier ends with 'end' && tier contains 't-e'"
    ));
    assert!(!yes("missing starts with ''"));
    assert!(yes("!has(missing) || app == 'no'"));
    assert!(yes("all() && global()"));
    let scoped = Selector::parse("a == 'b' && projectcalico.org/namespace == 'x'")
        .unwrap()
        .unwrap();
    assert_eq!(scoped.required_namespace(), Some("x"));
    let unscoped = Selector::parse("a == 'b' || projectcalico.org/namespace == 'x'")
        .unwrap()
        .unwrap();
    assert_eq!(unscoped.required_namespace(), None);
}

#[test]
fn rejects_garbage() {
    for bad in [
        "app ==",
        "app = 'x'",
        "has(",
        "foo()",
        "a == 'x' b",
        "'x' == a",
        "a == 'x",
    ] {
        assert!(Selector::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn nesting_is_bounded() {
    let nested = |n: usize| format!("{}a == 'x'{}", "(".repeat(n), ")".repeat(n));
    assert!(Selector::parse(&nested(MAX_NESTING - 1)).is_ok());
    assert!(Selector::parse(&"!".repeat(MAX_NESTING - 1)).is_err());
    assert!(Selector::parse(&format!("{}has(a)", "!".repeat(MAX_NESTING - 1))).is_ok());
    // Far beyond the bound: refused, not a stack overflow (test threads have 2 MiB).
    for hostile in [nested(100_000), format!("{}has(a)", "!".repeat(100_000))] {
        let error = Selector::parse(&hostile).unwrap_err();
        assert!(error.reason.contains("nested deeper"), "{}", error.reason);
    }
}

#[test]
fn namespace_scope_prefixes_keys() {
    let s = Selector::parse("team == 'a' && !has(x)").unwrap().unwrap();
    assert_eq!(
        s.into_profile_scope(NAMESPACE_LABEL_PREFIX).to_string(),
        "pcns.team == 'a' && !has(pcns.x)"
    );
    assert_eq!(
        Selector::All.into_profile_scope("pcns.").to_string(),
        "has(pcns.projectcalico.org/name)"
    );
}

#[test]
fn label_selector_translation() {
    let ls = LabelSelector {
        match_labels: Some([("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into()),
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: "c".into(),
                operator: "In".into(),
                values: Some(vec!["x".into(), "y".into()]),
            },
            LabelSelectorRequirement {
                key: "d".into(),
                operator: "NotIn".into(),
                values: Some(vec!["z".into()]),
            },
            LabelSelectorRequirement {
                key: "e".into(),
                operator: "Exists".into(),
                values: None,
            },
            LabelSelectorRequirement {
                key: "f".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
        ]),
    };
    assert_eq!(
        Selector::from_label_selector(&ls)
            .unwrap()
            .unwrap()
            .to_string(),
        "a == '1' && b == '2' && c in { 'x', 'y' } && d not in { 'z' } && has(e) && !has(f)"
    );
    assert_eq!(
        Selector::from_label_selector(&LabelSelector::default()).unwrap(),
        None
    );
    let bad = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "c".into(),
            operator: "Near".into(),
            values: None,
        }]),
        ..Default::default()
    };
    assert!(Selector::from_label_selector(&bad).is_err());
    let bad_key = LabelSelector {
        match_labels: Some([("a b".to_string(), "1".to_string())].into()),
        ..Default::default()
    };
    assert!(Selector::from_label_selector(&bad_key).is_err());
}
