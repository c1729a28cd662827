//! WATCH details through the kube client's raw watch API: selector transitions,
//! bookmarks, initial-events-end, timeoutSeconds, and 410 for expired versions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, WatchEvent, WatchParams};
use kube_sim::{Config, KubeSim};
use serde_json::json;

async fn start() -> (KubeSim, Api<Pod>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = Config {
        bookmark_interval: Duration::from_millis(50),
        ..Config::default()
    };
    let sim = KubeSim::start(cfg).await.unwrap();
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    (sim, Api::namespaced(client, "ns"))
}

fn pod(name: &str, app: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}}})
}

async fn next<S: Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin>(
    s: &mut S,
) -> Option<WatchEvent<Pod>> {
    tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("no watch event")
        .map(|r| r.unwrap())
}

/// Next event that is not a periodic bookmark.
async fn next_change<S: Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin>(
    s: &mut S,
) -> WatchEvent<Pod> {
    loop {
        match next(s).await.expect("stream ended") {
            WatchEvent::Bookmark(_) => continue,
            other => return other,
        }
    }
}

/// Next non-bookmark event, or None when the stream ends.
async fn next_or_end<S: Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin>(
    s: &mut S,
) -> Option<WatchEvent<Pod>> {
    loop {
        match next(s).await {
            Some(WatchEvent::Bookmark(_)) => continue,
            other => return other,
        }
    }
}

fn name(p: &Pod) -> &str {
    p.metadata.name.as_deref().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_turns_modifications_into_adds_and_deletes() {
    let (sim, api) = start().await;
    let store = sim.store();
    store.create_object(pod("a", "web")).unwrap();
    let rv = store.resource_version().to_string();
    let wp = WatchParams::default().labels("app=web");
    let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
    let mut a = store.get_object("v1", "Pod", "ns", "a").unwrap();
    a["metadata"]["labels"]["app"] = json!("db");
    let a = store.replace_object(a).unwrap();
    store.create_object(pod("other", "db")).unwrap();
    let mut back = a.clone();
    back["metadata"]["labels"]["app"] = json!("web");
    store.replace_object(back).unwrap();
    match next_change(&mut events).await {
        WatchEvent::Deleted(p) => assert_eq!(name(&p), "a"),
        other => panic!("leaving the selector must be DELETED, got {other:?}"),
    }
    match next_change(&mut events).await {
        WatchEvent::Added(p) => assert_eq!(name(&p), "a"),
        other => panic!("entering the selector must be ADDED, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_ends_with_initial_events_bookmark_and_bookmarks_follow() {
    let (sim, api) = start().await;
    sim.store().create_object(pod("a", "web")).unwrap();
    let wp = WatchParams::default().initial_events();
    let mut events = api.watch(&wp, "0").await.unwrap().boxed();
    match next(&mut events).await.unwrap() {
        WatchEvent::Added(p) => assert_eq!(name(&p), "a"),
        other => panic!("expected initial ADDED, got {other:?}"),
    }
    match next(&mut events).await.unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
            assert_eq!(
                b.metadata.resource_version,
                sim.store().resource_version().to_string()
            );
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
    // Idle streams get periodic bookmarks without the annotation.
    match next(&mut events).await.unwrap() {
        WatchEvent::Bookmark(b) => assert!(b.metadata.annotations.is_empty()),
        other => panic!("expected a periodic bookmark, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_disconnect_end_streams() {
    let (sim, api) = start().await;
    let rv = sim.store().resource_version().to_string();
    let mut timed = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(
        next_or_end(&mut timed).await.is_none(),
        "the server closes the stream after timeoutSeconds"
    );
    let mut cut = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    sim.disconnect_watches();
    assert!(next_or_end(&mut cut).await.is_none());
    assert_eq!(sim.metrics().snapshot().watch_requests, 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_version_gets_410_error_event() {
    let (sim, api) = start().await;
    sim.store().create_object(pod("a", "web")).unwrap();
    let old = sim.store().resource_version().to_string();
    sim.compact();
    let mut events = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next(&mut events).await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(next(&mut events).await.is_none());
    sim.shutdown().await;
}
