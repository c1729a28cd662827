//! Unit tests of the store: writes, optimistic concurrency, pagination snapshots,
//! resourceVersion matching and history expiry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::list::{Filter, ListOptions, VersionMatch};
use crate::resources::ResourceId;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{EventKind, Store, WriteScope};

fn pod(ns: &str, name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
           "spec": {"nodeName": node}, "status": {"phase": "Running"}})
}

fn pods(store: &Store) -> ResourceId {
    store.resolve_kind("v1", "Pod").unwrap().0
}

fn names(items: &[std::sync::Arc<crate::object::StoredObject>]) -> Vec<String> {
    items.iter().map(|o| o.name.clone()).collect()
}

#[test]
fn create_sets_metadata_and_rejects_duplicates() {
    let s = Store::new(100, true);
    let rid = pods(&s);
    let o = s.create(rid, Some("ns"), pod("", "a", "n1")).unwrap();
    let v = o.value();
    assert_eq!(v["metadata"]["namespace"], "ns");
    assert_eq!(v["metadata"]["generation"], 1);
    assert_eq!(v["metadata"]["resourceVersion"], o.rv.to_string());
    assert!(v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    let err = s.create(rid, Some("ns"), pod("", "a", "n1")).unwrap_err();
    assert!(matches!(err, ApiError::AlreadyExists(_)));
    let err = s
        .create(rid, Some("other"), pod("ns", "b", "n1"))
        .unwrap_err();
    assert_eq!(err.code(), 400);
    let generated = s
        .create(
            rid,
            Some("ns"),
            json!({"metadata": {"generateName": "web-"}}),
        )
        .unwrap();
    assert!(generated.name.starts_with("web-") && generated.name.len() == 9);
}

#[test]
fn stale_update_conflicts_and_state_is_kept() {
    let s = Store::new(100, true);
    let rid = pods(&s);
    let v1 = s
        .create(rid, Some("ns"), pod("ns", "a", "n1"))
        .unwrap()
        .value();
    let mut v2 = v1.clone();
    v2["spec"]["nodeName"] = json!("n2");
    let after = s
        .update(rid, "ns", "a", v2.clone(), WriteScope::Main)
        .unwrap();
    assert_eq!(after.value()["metadata"]["generation"], 2);
    let err = s.update(rid, "ns", "a", v2, WriteScope::Main).unwrap_err();
    assert_eq!(err.code(), 409);
    assert_eq!(s.get(rid, "ns", "a").unwrap().rv, after.rv);
    // Main-resource writes keep the status; status writes change only the status.
    let mut v3 = after.value();
    v3["status"] = json!({"phase": "Failed"});
    v3["spec"]["nodeName"] = json!("n3");
    let main = s
        .update(rid, "ns", "a", v3.clone(), WriteScope::Main)
        .unwrap()
        .value();
    assert_eq!(main["status"]["phase"], "Running");
    v3["metadata"]["resourceVersion"] = main["metadata"]["resourceVersion"].clone();
    let status = s
        .update(rid, "ns", "a", v3, WriteScope::Status)
        .unwrap()
        .value();
    assert_eq!(status["status"]["phase"], "Failed");
    assert_eq!(status["spec"]["nodeName"], "n3");
    assert_eq!(status["metadata"]["generation"], 3);
}

#[test]
fn noop_update_keeps_resource_version() {
    let s = Store::new(100, true);
    let rid = pods(&s);
    let a = s.create(rid, Some("ns"), pod("ns", "a", "n1")).unwrap();
    let b = s
        .update(rid, "ns", "a", a.value(), WriteScope::Main)
        .unwrap();
    assert_eq!(a.rv, b.rv);
    assert_eq!(s.resource_version(), a.rv);
}

#[test]
fn pagination_is_a_consistent_snapshot() {
    let s = Store::new(1000, true);
    let rid = pods(&s);
    for i in 0..5 {
        s.create(rid, Some("ns"), pod("ns", &format!("p{i}"), "n1"))
            .unwrap();
    }
    let mut opts = ListOptions {
        limit: Some(2),
        ..Default::default()
    };
    let page1 = s.list(rid, &opts).unwrap();
    assert_eq!(names(&page1.items), ["p0", "p1"]);
    // Changes after the first page must not show up in later pages.
    s.delete(rid, "ns", "p2", None).unwrap();
    s.create(rid, Some("ns"), pod("ns", "p3a", "n1")).unwrap();
    let mut p4 = s.get(rid, "ns", "p4").unwrap().value();
    p4["metadata"]["labels"]["changed"] = json!("yes");
    s.update(rid, "ns", "p4", p4, WriteScope::Main).unwrap();
    opts.continue_token = page1.continue_token.clone();
    let page2 = s.list(rid, &opts).unwrap();
    assert_eq!(names(&page2.items), ["p2", "p3"]);
    assert_eq!(page2.resource_version, page1.resource_version);
    opts.continue_token = page2.continue_token.clone();
    let page3 = s.list(rid, &opts).unwrap();
    assert_eq!(names(&page3.items), ["p4"]);
    assert!(!page3.items[0].labels.contains_key("changed"));
    assert!(page3.continue_token.is_none());
    // A fresh list sees the new state.
    let fresh = s.list(rid, &ListOptions::default()).unwrap();
    assert_eq!(names(&fresh.items), ["p0", "p1", "p3", "p3a", "p4"]);
}

#[test]
fn selectors_and_namespaces_filter_lists() {
    let s = Store::new(100, true);
    let rid = pods(&s);
    s.create(rid, Some("a"), pod("a", "x", "n1")).unwrap();
    s.create(rid, Some("b"), pod("b", "y", "n2")).unwrap();
    s.create(rid, Some("b"), pod("b", "z", "n1")).unwrap();
    let list = |f: Filter| {
        names(
            &s.list(
                rid,
                &ListOptions {
                    filter: f,
                    ..Default::default()
                },
            )
            .unwrap()
            .items,
        )
    };
    let fields = FieldSelector::parse("spec.nodeName=n1").unwrap();
    assert_eq!(
        list(Filter {
            fields,
            ..Default::default()
        }),
        ["x", "z"]
    );
    assert_eq!(
        list(Filter {
            namespace: Some("b".into()),
            ..Default::default()
        }),
        ["y", "z"]
    );
    let labels = LabelSelector::parse("app in (y,x)").unwrap();
    assert_eq!(
        list(Filter {
            labels,
            ..Default::default()
        }),
        ["x", "y"]
    );
}

#[test]
fn history_is_bounded_and_old_versions_expire() {
    let s = Store::new(3, true);
    let rid = pods(&s);
    let first = s.create(rid, Some("ns"), pod("ns", "p0", "n")).unwrap().rv;
    for i in 1..6 {
        s.create(rid, Some("ns"), pod("ns", &format!("p{i}"), "n"))
            .unwrap();
    }
    let err = s.events_after(first, 100, |_| true).unwrap_err();
    assert_eq!(err.code(), 410);
    let exact = ListOptions {
        resource_version: Some(first.to_string()),
        version_match: VersionMatch::Exact,
        ..Default::default()
    };
    assert_eq!(s.list(rid, &exact).unwrap_err().code(), 410);
    let recent = s.resource_version() - 2;
    let (events, pos) = s.events_after(recent, 100, |_| true).unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.kind == EventKind::Added));
    assert_eq!(pos, s.resource_version());
}

#[test]
fn compact_expires_current_versions_and_continue_tokens() {
    let s = Store::new(100, true);
    let rid = pods(&s);
    for i in 0..3 {
        s.create(rid, Some("ns"), pod("ns", &format!("p{i}"), "n"))
            .unwrap();
    }
    let page = s
        .list(
            rid,
            &ListOptions {
                limit: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    let before = s.resource_version();
    s.compact();
    assert_eq!(
        s.events_after(before, 10, |_| true).unwrap_err().code(),
        410
    );
    let cont = ListOptions {
        limit: Some(1),
        continue_token: page.continue_token,
        ..Default::default()
    };
    assert_eq!(s.list(rid, &cont).unwrap_err().code(), 410);
    // A fresh list gives a version that can be watched from.
    let fresh = s.list(rid, &ListOptions::default()).unwrap();
    assert!(
        s.events_after(fresh.resource_version, 10, |_| true)
            .unwrap()
            .0
            .is_empty()
    );
}

#[test]
fn deleting_a_namespace_deletes_its_objects_and_crds_register_kinds() {
    let s = Store::new(100, true);
    let rid = pods(&s);
    let ns = s.resolve_kind("v1", "Namespace").unwrap().0;
    s.create(ns, None, json!({"metadata": {"name": "gone"}}))
        .unwrap();
    s.create(rid, Some("gone"), pod("gone", "p", "n")).unwrap();
    s.create(rid, Some("kept"), pod("kept", "q", "n")).unwrap();
    s.delete(ns, "", "gone", None).unwrap();
    assert!(s.get(rid, "gone", "p").is_none());
    assert!(s.get(rid, "kept", "q").is_some());

    let crd = s
        .resolve_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        .unwrap()
        .0;
    assert!(s.resolve_path("example.com", "v1", "widgets").is_none());
    s.create(crd, None, json!({"metadata": {"name": "widgets.example.com"}, "spec": {
        "group": "example.com", "scope": "Cluster", "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true}]}}))
        .unwrap();
    s.create_object(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
    )
    .unwrap();
    assert!(s.get_object("example.com/v1", "Widget", "", "w").is_some());
    s.delete(crd, "", "widgets.example.com", None).unwrap();
    assert!(s.resolve_path("example.com", "v1", "widgets").is_none());
}
