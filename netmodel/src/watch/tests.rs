//! The watch loop without a server: synthetic resource streams into `drive`, and watcher
//! events through `inputs`.

use futures::channel::mpsc::unbounded;
use k8s_openapi::api::core::v1::{Node, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::runtime::watcher;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use typha_proto::Kind;

use super::resource::{RejectionLog, inputs};
use super::*;
use crate::listwatch::{Step, list_watch};
use crate::state::tests::{key, node};

fn nodes(input: Input) -> Tagged {
    (
        Resource::Nodes,
        Signal::Input(input, EventVersion::NoObject),
    )
}

fn nodes_at(input: Input, version: u64) -> Tagged {
    (
        Resource::Nodes,
        Signal::Input(input, EventVersion::Known(version)),
    )
}

/// Sends a complete list of nodes (`Init`, each update listed, `InitDone`), with no
/// versions.
fn send_node_list(
    signals: &futures::channel::mpsc::UnboundedSender<Tagged>,
    updates: impl IntoIterator<Item = Update>,
) {
    let listed = updates.into_iter().map(Input::InitApply);
    for input in std::iter::once(Input::Init)
        .chain(listed)
        .chain([Input::InitDone])
    {
        signals.unbounded_send(nodes(input)).unwrap();
    }
}

/// The updates of an updates event (`None` for anything else).
fn updates_of(event: Option<UpstreamEvent>) -> Option<Vec<Update>> {
    match event {
        Some(UpstreamEvent::Marked { updates, .. }) | Some(UpstreamEvent::Updates(updates)) => {
            Some(updates)
        }
        _ => None,
    }
}

fn metric(snap: &Snapshotter, name: &str, label: (&str, &str)) -> Option<DebugValue> {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| {
            k.key().name() == name
                && k.key()
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .map(|(.., v)| v)
}

#[tokio::test]
async fn drive_batches_coalesces_and_signals_in_sync_once() {
    let (signals, stream) = unbounded::<Tagged>();
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    // The initial list of nodes is all ready at once: one batch.
    send_node_list(&signals, [node("a", "1"), node("b", "1")]);
    let resources = [Resource::Nodes, Resource::IpPools];
    let driver = drive(stream, &resources, 100, tx, shutdown.clone());
    let test = async {
        assert_eq!(
            updates_of(rx.recv().await),
            Some(vec![node("a", "1"), node("b", "1")])
        );
        // IP pools' CRD is missing: that completes the sync (and nothing else is sent first).
        signals
            .unbounded_send((Resource::IpPools, Signal::NotInstalled))
            .unwrap();
        assert_eq!(rx.recv().await, Some(UpstreamEvent::InSync));

        // A burst is one message, but a key changes at most once per message: its
        // second change starts the next one.
        for input in [
            Input::Apply(node("a", "2")),
            Input::Apply(node("c", "1")),
            Input::Apply(node("a", "3")),
        ] {
            signals.unbounded_send(nodes(input)).unwrap();
        }
        assert_eq!(
            updates_of(rx.recv().await),
            Some(vec![node("a", "2"), node("c", "1")])
        );
        assert_eq!(updates_of(rx.recv().await), Some(vec![node("a", "3")]));

        // A relist after a 410: b and c vanished meanwhile; no second InSync.
        send_node_list(&signals, [node("a", "3")]);
        assert_eq!(
            updates_of(rx.recv().await),
            Some(vec![
                node("a", "3"),
                Update::delete(key("b")),
                Update::delete(key("c")),
            ])
        );
        signals
            .unbounded_send(nodes(Input::Delete(key("a"))))
            .unwrap();
        assert_eq!(
            updates_of(rx.recv().await),
            Some(vec![Update::delete(key("a"))])
        );
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(driver, test);
    assert!(result.is_ok());
}

/// Batches carry the resourceVersions of their events: a list settles at its highest
/// object version, a watch batch at its highest event version, a batch with no change
/// still advances the vector, and an unparsable version is counted and marks the
/// resource unknown.
#[tokio::test]
async fn drive_marks_batches_with_resource_versions() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (signals, stream) = unbounded::<Tagged>();
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    signals.unbounded_send(nodes(Input::Init)).unwrap();
    signals
        .unbounded_send(nodes_at(Input::InitApply(node("a", "1")), 12))
        .unwrap();
    signals
        .unbounded_send(nodes_at(Input::InitApply(node("b", "1")), 5))
        .unwrap();
    signals.unbounded_send(nodes(Input::InitDone)).unwrap();
    let resources = [Resource::Nodes];
    let driver = drive(stream, &resources, 100, tx, shutdown.clone());
    let test = async {
        assert_eq!(
            rx.recv().await,
            Some(UpstreamEvent::Marked {
                updates: vec![node("a", "1"), node("b", "1")],
                marks: vec![ResourceMark::listed("nodes", Some(12))],
                progress: false,
            })
        );
        assert_eq!(rx.recv().await, Some(UpstreamEvent::InSync));
        for (input, version) in [
            (Input::Apply(node("a", "2")), 13),
            (Input::Apply(node("c", "1")), 15),
        ] {
            signals.unbounded_send(nodes_at(input, version)).unwrap();
        }
        assert_eq!(
            rx.recv().await,
            Some(UpstreamEvent::Marked {
                updates: vec![node("a", "2"), node("c", "1")],
                marks: vec![ResourceMark::watched("nodes", 15)],
                progress: false,
            })
        );
        // A bookmark: no change, a version advance, flagged as progress.
        signals
            .unbounded_send((
                Resource::Nodes,
                Signal::Input(Input::Progress, EventVersion::Known(20)),
            ))
            .unwrap();
        assert_eq!(
            rx.recv().await,
            Some(UpstreamEvent::Marked {
                updates: vec![],
                marks: vec![ResourceMark::watched("nodes", 20)],
                progress: true,
            })
        );
        signals
            .unbounded_send((
                Resource::Nodes,
                Signal::Input(Input::Apply(node("c", "2")), EventVersion::Unparsable),
            ))
            .unwrap();
        assert_eq!(
            rx.recv().await,
            Some(UpstreamEvent::Marked {
                updates: vec![node("c", "2")],
                marks: vec![ResourceMark::listed("nodes", None)],
                progress: false,
            })
        );
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(driver, test);
    assert!(result.is_ok());
    assert_eq!(
        metric(
            &snap,
            "typha_upstream_unparsable_versions_total",
            ("resource", "nodes")
        ),
        Some(DebugValue::Counter(1))
    );
}

#[tokio::test]
async fn drive_respects_batch_max_and_waits_for_every_resource() {
    let (signals, stream) = unbounded::<Tagged>();
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    send_node_list(&signals, [node("a", "1"), node("b", "1"), node("c", "1")]);
    let resources = [Resource::Nodes, Resource::Pods];
    let driver = drive(stream, &resources, 2, tx, shutdown.clone());
    let test = async {
        assert_eq!(
            updates_of(rx.recv().await),
            Some(vec![node("a", "1"), node("b", "1")])
        );
        assert_eq!(updates_of(rx.recv().await), Some(vec![node("c", "1")]));
        // Pods have not listed: no InSync until they do (an empty list counts, and its
        // mark says pods are consistently at version 0).
        for input in [Input::Init, Input::InitDone] {
            signals
                .unbounded_send((Resource::Pods, Signal::Input(input, EventVersion::NoObject)))
                .unwrap();
        }
        assert_eq!(
            rx.recv().await,
            Some(UpstreamEvent::Marked {
                updates: vec![],
                marks: vec![ResourceMark::listed("pods", Some(0))],
                progress: false,
            })
        );
        assert_eq!(rx.recv().await, Some(UpstreamEvent::InSync));
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(driver, test);
    assert!(result.is_ok());
}

#[tokio::test]
async fn drive_reports_a_closed_channel() {
    let (signals, stream) = unbounded::<Tagged>();
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    signals
        .unbounded_send(nodes(Input::Apply(node("a", "1"))))
        .unwrap();
    let result = drive(stream, &[Resource::Nodes], 10, tx, CancellationToken::new()).await;
    assert!(matches!(result, Err(UpstreamError::ChannelClosed)));
}

fn pod(ip: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("a".into()),
            namespace: Some("x".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

#[test]
fn watcher_events_become_inputs_and_rejections_deletes() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut log = RejectionLog {
        seen: HashMap::new(),
    };
    let wep = Key::new(Kind::WorkloadEndpoint, "x", "a").unwrap();

    let good = inputs(
        Step::Listed(pod("10.0.0.1")),
        &mut log,
        &ConvertOptions::default(),
    );
    assert!(matches!(&good, Some(Input::InitApply(u)) if u.key == wep && u.value.is_some()));

    // An invalid version withdraws the key and is counted (twice: counted each time,
    // logged once).
    for _ in 0..2 {
        let bad = inputs(
            Step::Applied(pod("not-an-ip")),
            &mut log,
            &ConvertOptions::default(),
        );
        assert_eq!(bad, Some(Input::Apply(Update::delete(wep.clone()))));
    }
    assert_eq!(log.seen.len(), 1);
    // One snapshot (taking one resets the counters): kind and reason labels.
    let rejected: Vec<(Vec<String>, DebugValue)> = snap
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "typha_upstream_rejected_total")
        .map(|(k, .., v)| {
            let labels = k
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()));
            (labels.collect(), v)
        })
        .collect();
    assert_eq!(
        rejected,
        vec![(
            vec!["kind=workload_endpoint".into(), "reason=bad_cidr".into()],
            DebugValue::Counter(2)
        )]
    );
    // A valid version clears the log entry.
    inputs(
        Step::Applied(pod("10.0.0.2")),
        &mut log,
        &ConvertOptions::default(),
    );
    assert!(log.seen.is_empty());

    let deleted = inputs(
        Step::Deleted(pod("not-an-ip")),
        &mut log,
        &ConvertOptions::default(),
    );
    assert_eq!(deleted, Some(Input::Delete(wep)));
    assert_eq!(
        inputs::<Pod>(Step::Init, &mut log, &ConvertOptions::default()),
        Some(Input::Init)
    );
    assert_eq!(
        inputs::<Pod>(
            Step::ListDone("7".into()),
            &mut log,
            &ConvertOptions::default()
        ),
        Some(Input::InitDone)
    );
}

// ---------------------------------------------------------------------------------
// `run` against an in-process fake API server (a tower service, no sockets)
// ---------------------------------------------------------------------------------

mod fake_api {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};

    fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    /// A watch that stays open and never sends anything.
    fn open_watch() -> Response<Body> {
        let pending = futures::stream::pending::<Result<Bytes, Infallible>>();
        Response::builder()
            .status(StatusCode::OK)
            .body(Body::from_stream(pending))
            .unwrap()
    }

    /// Serves nodes and clusterinformations lists; every other CRD is not installed.
    pub fn client(seen: Arc<Mutex<Vec<String>>>) -> kube::Client {
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let seen = seen.clone();
            async move {
                let uri = req.uri().to_string();
                seen.lock().unwrap().push(uri.clone());
                let path = req.uri().path().to_string();
                let watch = uri.contains("watch=true");
                let list = |kind: &str, items: serde_json::Value| {
                    serde_json::json!({
                        "apiVersion": "v1", "kind": kind,
                        "metadata": {"resourceVersion": "5"}, "items": items,
                    })
                };
                let response = match (path.as_str(), watch) {
                    (_, true) if !path.contains("ippools") => open_watch(),
                    ("/api/v1/nodes", false) => json(
                        StatusCode::OK,
                        list(
                            "NodeList",
                            serde_json::json!([
                                {"metadata": {"name": "n1", "resourceVersion": "3"},
                                 "spec": {"podCIDR": "10.244.1.0/24"}},
                                {"metadata": {"name": "bad", "resourceVersion": "4"},
                                 "spec": {"podCIDR": "10.244.1.0/99"}}
                            ]),
                        ),
                    ),
                    ("/apis/crd.projectcalico.org/v1/clusterinformations", false) => json(
                        StatusCode::OK,
                        list(
                            "ClusterInformationList",
                            serde_json::json!([
                                {"apiVersion": "crd.projectcalico.org/v1", "kind": "ClusterInformation",
                                 "metadata": {"name": "default", "resourceVersion": "2"},
                                 "spec": {"datastoreReady": true}}
                            ]),
                        ),
                    ),
                    _ => json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({
                            "apiVersion": "v1", "kind": "Status", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "not found",
                        }),
                    ),
                };
                Ok::<_, Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }
}

/// A fake API whose node list has two pages (the second at resourceVersion 9) and
/// whose watch start always fails with a 500; every request URI is recorded.
fn two_pages_and_a_failing_watch(
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> kube::Client {
    use http::{Request, Response, StatusCode};
    let service = tower::service_fn(move |req: Request<kube::client::Body>| {
        let seen = seen.clone();
        async move {
            let uri = req.uri().to_string();
            seen.lock().unwrap().push(uri.clone());
            let node = |name: &str, rv: &str| serde_json::json!({"metadata": {"name": name, "resourceVersion": rv}});
            let (status, body) = if uri.contains("watch=true") {
                let status = serde_json::json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "reason": "InternalError", "code": 500, "message": "boom",
                });
                (StatusCode::INTERNAL_SERVER_ERROR, status)
            } else if uri.contains("continue=page2") {
                let list = serde_json::json!({"apiVersion": "v1", "kind": "NodeList",
                    "metadata": {"resourceVersion": "9"}, "items": [node("b", "4")]});
                (StatusCode::OK, list)
            } else {
                let list = serde_json::json!({"apiVersion": "v1", "kind": "NodeList",
                    "metadata": {"resourceVersion": "8", "continue": "page2"},
                    "items": [node("a", "3")]});
                (StatusCode::OK, list)
            };
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    kube::Client::new(service, "default")
}

#[tokio::test]
async fn list_watch_pages_reports_the_list_version_and_relists_after_a_failed_watch_start() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let api = Api::<Node>::all(two_pages_and_a_failing_watch(seen.clone()));
    let mode = ListMode {
        streaming: false,
        page_size: 1,
    };
    let steps: Vec<String> = list_watch(api, mode)
        .take(10)
        .map(|step| match step {
            Ok(Step::Init) => "init".to_string(),
            Ok(Step::Listed(n)) => format!("listed {}", n.metadata.name.unwrap_or_default()),
            Ok(Step::ListDone(v)) => format!("done {v}"),
            Ok(other) => format!("unexpected {other:?}"),
            Err(watcher::Error::WatchStartFailed(_)) => "watch start failed".to_string(),
            Err(e) => format!("error {e}"),
        })
        .collect()
        .await;
    let one_round = [
        "init",
        "listed a",
        "listed b",
        "done 9",
        "watch start failed",
    ];
    assert_eq!(steps, [one_round, one_round].concat());
    let uris = seen.lock().unwrap().clone();
    let watches: Vec<&String> = uris.iter().filter(|u| u.contains("watch=true")).collect();
    assert_eq!(watches.len(), 2, "{uris:?}");
    assert!(
        watches.iter().all(|u| u.contains("resourceVersion=9")),
        "the watch starts at the list's own version, not its newest object's: {uris:?}"
    );
    assert_eq!(uris.len(), 6, "each round lists both pages again: {uris:?}");
}

#[tokio::test]
async fn run_lists_converts_skips_missing_crds_and_syncs() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = fake_api::client(seen.clone());
    let config = UpstreamConfig {
        page_size: 7,
        crd_retry: Duration::from_secs(3600),
        resources: vec![
            Resource::Nodes,
            Resource::IpPools,
            Resource::ClusterInformations,
        ],
        ..UpstreamConfig::default()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let runner = run(client, config, tx, shutdown.clone());
    let test = async {
        let mut updates = Vec::new();
        while let UpstreamEvent::Marked { updates: batch, .. } =
            rx.recv().await.expect("run ended early")
        {
            updates.extend(batch);
        }
        updates.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<(Kind, &str, bool)> = updates
            .iter()
            .map(|u| (u.key.kind(), u.key.name(), u.value.is_some()))
            .collect();
        // The invalid node is withdrawn (a delete), not forwarded; the IP pool CRD is
        // missing and did not hold back InSync.
        assert_eq!(
            keys,
            vec![
                (Kind::Node, "bad", false),
                (Kind::Node, "n1", true),
                (Kind::ClusterInformation, "default", true),
            ]
        );
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(runner, test);
    assert!(result.is_ok());

    let uris = seen.lock().unwrap().clone();
    assert!(
        uris.iter()
            .any(|u| u.starts_with("/api/v1/nodes?") && u.contains("limit=7")),
        "paginated list with the configured page size: {uris:?}"
    );
    assert_eq!(
        metric(&snap, "typha_upstream_rejected_total", ("kind", "node")),
        Some(DebugValue::Counter(1))
    );
    assert_eq!(
        metric(
            &snap,
            "typha_upstream_watch_errors_total",
            ("resource", "ippools")
        ),
        None,
        "a missing CRD is skipped, not retried as a watch error"
    );
    assert!(
        metric(
            &snap,
            "typha_upstream_last_event_timestamp_seconds",
            ("resource", "nodes")
        )
        .is_some()
    );
}
