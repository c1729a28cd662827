//! The kube crate (kube 5 / k8s-openapi) against kube-sim: lists with pagination,
//! selectors, watchers in both initial-list modes, 410 recovery, conflicts, patches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube_sim::{Config, KubeSim};
use serde_json::json;

async fn start(calico: bool) -> (KubeSim, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = KubeSim::start(Config {
        calico_crds: calico,
        ..Config::default()
    })
    .await
    .unwrap();
    let config = kube::Config::new(sim.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    (sim, client)
}

/// Stores [`pod`] `ns/name` in `sim`.
fn add_pod(sim: &KubeSim, ns: &str, name: &str, node: &str, app: &str) {
    sim.store().create_object(pod(ns, name, node, app)).unwrap();
}

fn pod(ns: &str, name: &str, node: &str, app: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

/// Next watcher event; a generous guard so a broken server fails instead of hanging.
async fn next<S: Stream<Item = watcher::Result<Event<Pod>>> + Unpin>(
    s: &mut S,
) -> watcher::Result<Event<Pod>> {
    tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("watcher produced no event")
        .expect("watcher stream ended")
}

/// Consumes Init..InitDone and returns the initial object names.
async fn initial<S: Stream<Item = watcher::Result<Event<Pod>>> + Unpin>(s: &mut S) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match next(s).await.unwrap() {
            Event::Init => seen.clear(),
            Event::InitApply(p) => seen.push(p.metadata.name.unwrap()),
            Event::InitDone => return seen,
            other => panic!("unexpected event during init: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_paginates_with_continue_tokens() {
    let (sim, client) = start(true).await;
    for i in 0..7 {
        add_pod(&sim, "ns", &format!("p{i}"), "n1", "a");
    }
    let api: Api<Pod> = Api::all(client);
    let mut lp = ListParams::default().limit(3);
    let mut all = Vec::new();
    let mut rvs = Vec::new();
    loop {
        let page = api.list(&lp).await.unwrap();
        all.extend(names(&page.items));
        rvs.push(page.metadata.resource_version.clone().unwrap());
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
        // A write between pages must not leak into the paginated snapshot.
        add_pod(&sim, "ns", &format!("late{}", rvs.len()), "n1", "a");
    }
    assert_eq!(all, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]);
    assert!(rvs.iter().all(|rv| rv == &rvs[0]), "{rvs:?}");
    let m = sim.metrics().snapshot();
    assert_eq!(m.list_requests, 3);
    assert_eq!(m.continue_requests, 2);
    assert!(m.response_bytes > 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_node_name_selectors() {
    let (sim, client) = start(true).await;
    add_pod(&sim, "a", "x", "n1", "web");
    add_pod(&sim, "a", "y", "n2", "web");
    add_pod(&sim, "b", "z", "n1", "db");
    let api: Api<Pod> = Api::all(client.clone());
    let on_n1 = api
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    assert_eq!(names(&on_n1.items), ["x", "z"]);
    let web = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(names(&web.items), ["x", "y"]);
    let not_web_in_a = Api::<Pod>::namespaced(client, "a")
        .list(&ListParams::default().labels("app notin (web)"))
        .await
        .unwrap();
    assert!(not_web_in_a.items.is_empty());
    let err = api
        .list(&ListParams::default().labels("app in web"))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 400));
    sim.shutdown().await;
}

async fn watcher_sees_changes(streaming: bool) {
    let (sim, client) = start(true).await;
    let store = sim.store().clone();
    store.create_object(pod("ns", "a", "n1", "web")).unwrap();
    store.create_object(pod("ns", "b", "n1", "web")).unwrap();
    let api: Api<Pod> = Api::namespaced(client, "ns");
    let mut cfg = watcher::Config::default().page_size(1);
    if streaming {
        cfg = cfg.streaming_lists();
    }
    let mut events = watcher::watcher(api, cfg).boxed();
    assert_eq!(initial(&mut events).await, ["a", "b"]);

    store.create_object(pod("ns", "c", "n2", "web")).unwrap();
    let mut c = store.get_object("v1", "Pod", "ns", "c").unwrap();
    c["metadata"]["labels"]["version"] = json!("v2");
    store.replace_object(c).unwrap();
    store.delete_object("v1", "Pod", "ns", "a").unwrap();
    match next(&mut events).await.unwrap() {
        Event::Apply(p) => assert_eq!(p.metadata.name.as_deref(), Some("c")),
        other => panic!("expected added c, got {other:?}"),
    }
    match next(&mut events).await.unwrap() {
        Event::Apply(p) => assert_eq!(p.labels().get("version").map(String::as_str), Some("v2")),
        other => panic!("expected modified c, got {other:?}"),
    }
    match next(&mut events).await.unwrap() {
        Event::Delete(p) => assert_eq!(p.metadata.name.as_deref(), Some("a")),
        other => panic!("expected deleted a, got {other:?}"),
    }
    let m = sim.metrics().snapshot();
    assert!(
        m.watch_requests >= 1 && m.watch_events >= 3 && m.watch_bytes > 0,
        "{m:?}"
    );
    if streaming {
        assert_eq!(m.list_requests, 0, "streaming lists must not LIST");
    } else {
        assert_eq!(m.list_requests, 2, "two pages of one pod");
    }
    drop(events);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_list_then_watch() {
    watcher_sees_changes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_streaming_lists() {
    watcher_sees_changes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_expiry_makes_the_watcher_relist() {
    let (sim, client) = start(true).await;
    add_pod(&sim, "ns", "a", "n1", "web");
    let api: Api<Pod> = Api::namespaced(client, "ns");
    let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
    assert_eq!(initial(&mut events).await, ["a"]);

    sim.compact();
    add_pod(&sim, "ns", "after", "n1", "web");
    sim.disconnect_watches();
    // The resumed watch hits 410 Expired, the watcher reports it and relists.
    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 watch error, got {other:?}"),
    }
    assert_eq!(initial(&mut events).await, ["a", "after"]);
    // And it keeps watching from the new list.
    sim.store().delete_object("v1", "Pod", "ns", "a").unwrap();
    match next(&mut events).await.unwrap() {
        Event::Delete(p) => assert_eq!(p.metadata.name.as_deref(), Some("a")),
        other => panic!("expected delete, got {other:?}"),
    }
    drop(events);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_update_is_a_conflict_and_patches_work() {
    let (sim, client) = start(true).await;
    let api: Api<Pod> = Api::namespaced(client, "ns");
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod("ns", "p", "n1", "web")).unwrap(),
        )
        .await
        .unwrap();
    let mut newer = created.clone();
    newer
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("v".into(), "2".into());
    api.replace("p", &PostParams::default(), &newer)
        .await
        .unwrap();
    let err = api
        .replace("p", &PostParams::default(), &newer)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );
    let err = api
        .create(&PostParams::default(), &created)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
    let err = api.get("missing").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{err:?}"
    );

    let status = Patch::Merge(json!({"status": {"podIP": "10.0.0.5"}}));
    let p = api
        .patch_status("p", &PatchParams::default(), &status)
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some("10.0.0.5"));
    let strategic =
        Patch::Strategic(json!({"spec": {"containers": [{"name": "c", "image": "j"}]}}));
    let p = api
        .patch("p", &PatchParams::default(), &strategic)
        .await
        .unwrap();
    assert_eq!(p.spec.unwrap().containers[0].image.as_deref(), Some("j"));
    let apply = Patch::Apply(pod("ns", "q", "n2", "ssa"));
    let q = api
        .patch("q", &PatchParams::apply("test").force(), &apply)
        .await
        .unwrap();
    assert_eq!(q.labels().get("app").map(String::as_str), Some("ssa"));
    let deleted = api.delete("q", &Default::default()).await.unwrap();
    assert!(deleted.left().is_some());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calico_kinds_can_be_absent() {
    let ar = ApiResource {
        group: "crd.projectcalico.org".into(),
        version: "v1".into(),
        api_version: "crd.projectcalico.org/v1".into(),
        kind: "GlobalNetworkPolicy".into(),
        plural: "globalnetworkpolicies".into(),
    };
    let (sim, client) = start(false).await;
    let err = Api::<DynamicObject>::all_with(client, &ar)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
    sim.store()
        .set_served("crd.projectcalico.org", "globalnetworkpolicies", true);
    sim.shutdown().await;

    let (sim, client) = start(true).await;
    let api = Api::<DynamicObject>::all_with(client, &ar);
    let gnp: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "crd.projectcalico.org/v1",
        "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"}, "spec": {"selector": "all()"}}))
        .unwrap();
    api.create(&PostParams::default(), &gnp).await.unwrap();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    sim.shutdown().await;
}
