//! Fault injection through the real HTTP front end, seen by the kube crate: injected
//! 5xx/429 Status responses, 410 on a watch (an ERROR event, as a watch cache sends it),
//! repeated watch cuts, and a restart on the same port with a fresh (lower)
//! resourceVersion history answering an old position with 504 "Too large resource version".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube_sim::{Config, FaultKind, KubeSim, Target};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

async fn start() -> (KubeSim, Api<Pod>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = KubeSim::start(Config::default()).await.unwrap();
    for i in 0..3 {
        sim.store()
            .create_object(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": "default"},
                "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]}}))
            .unwrap();
    }
    let api = Api::namespaced(client(&sim), "default");
    (sim, api)
}

/// A client without kube's own retry layer, so each injected failure is seen as is.
fn client(sim: &KubeSim) -> kube::Client {
    let mut config = kube::Config::new(sim.url().parse().unwrap());
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn injected_statuses_reach_the_client_as_kubernetes_errors() {
    let (sim, api) = start().await;
    let faults = sim.faults();
    faults.fail_next(1, Target::Lists, FaultKind::InternalError);
    faults.fail_next(1, Target::Lists, FaultKind::ServiceUnavailable);
    faults.fail_next(
        1,
        Target::Lists,
        FaultKind::TooManyRequests {
            retry_after_secs: 1,
        },
    );
    let lp = ListParams::default();
    assert_eq!(
        api_code(api.list(&lp).await.unwrap_err()),
        (500, "InternalError".into())
    );
    assert_eq!(
        api_code(api.list(&lp).await.unwrap_err()),
        (503, "ServiceUnavailable".into())
    );
    assert_eq!(
        api_code(api.list(&lp).await.unwrap_err()),
        (429, "TooManyRequests".into())
    );
    assert_eq!(api.list(&lp).await.unwrap().items.len(), 3);
    // Writes were not targeted and nothing changed in the store.
    assert!(api.get("p0").await.is_ok());
    assert_eq!(sim.metrics().snapshot().faults_injected, 3);

    // 410 only hits a list that names a version; a list from "0" is served.
    faults.fail_all(Target::Reads, vec![FaultKind::Gone]);
    assert_eq!(
        api.list(&lp.clone().match_any()).await.unwrap().items.len(),
        3
    );
    let rv = sim.store().resource_version().to_string();
    let exact = lp
        .clone()
        .at(&rv)
        .matching(kube::api::VersionMatch::NotOlderThan);
    assert_eq!(api_code(api.list(&exact).await.unwrap_err()).0, 410);
    // A watch from a position gets 200 and one ERROR event (Expired).
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(LIMIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    faults.heal();
    assert_eq!(faults.active_rules(), 0);
    assert_eq!(api.list(&exact).await.unwrap().items.len(), 3);
    assert_eq!(sim.metrics().snapshot().faults_injected, 5);
}

#[tokio::test]
async fn watches_are_cut_repeatedly_and_counted() {
    let (sim, api) = start().await;
    for round in 0..3u64 {
        let rv = sim.store().resource_version().to_string();
        let mut stream = api
            .watch(&WatchParams::default(), &rv)
            .await
            .unwrap()
            .boxed();
        sim.metrics().wait_until(|m| m.open_watches == 1).await;
        sim.faults().cut_watches();
        let end = tokio::time::timeout(LIMIT, stream.next()).await.unwrap();
        assert!(end.is_none(), "round {round}: stream not cut: {end:?}");
        assert_eq!(sim.metrics().snapshot().watch_cuts, round + 1);
    }
}

#[tokio::test]
async fn restart_with_fresh_history_refuses_old_positions() {
    let (sim, _) = start().await;
    let addr = sim.addr();
    let old_rv = sim.store().resource_version();
    let fresh = Arc::new(sim.fresh_store());
    assert!(fresh.resource_version() < old_rv);
    let sim = sim.restart_with(fresh).await.unwrap();
    assert_eq!(sim.addr(), addr, "restarted on the same port");
    let api: Api<Pod> = Api::namespaced(client(&sim), "default");
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 3);
    let new_rv: u64 = listed.metadata.resource_version.unwrap().parse().unwrap();
    assert!(new_rv < old_rv);
    // The old server's position is one this server never issued.
    let err = api
        .watch(&WatchParams::default(), &old_rv.to_string())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(api_code(err), (504, "Timeout".into()));
    assert_eq!(sim.metrics().snapshot().too_large_versions, 1);
    // A position of the new history works.
    let mut stream = api
        .watch(&WatchParams::default(), &new_rv.to_string())
        .await
        .unwrap()
        .boxed();
    sim.store()
        .delete_object("v1", "Pod", "default", "p1")
        .unwrap();
    match tokio::time::timeout(LIMIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Deleted(p))) => assert_eq!(p.metadata.name.as_deref(), Some("p1")),
        other => panic!("expected the delete, got {other:?}"),
    }
}
