//! The real felix-client binary's start timeout: with no typha to reach (a Service with
//! zero ready endpoints, or addresses nobody listens on) it exits non-zero, naming what it
//! followed and what it tried, and nothing reached the dataplane.
//!
//! The binary runs with a cleared environment (no FELIX_* or KUBECONFIG leaks in) and a
//! kubeconfig pointing at an in-process kube-sim. The only bound on waiting is a generous
//! deadline that turns a hang into a failure; nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use kube_sim::KubeSim;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);

/// A kubeconfig file for `sim`, removed on drop.
struct Kubeconfig(PathBuf);

impl Kubeconfig {
    fn for_sim(sim: &KubeSim, tag: &str) -> Kubeconfig {
        let path =
            std::env::temp_dir().join(format!("felix-ops-{}-{tag}.kubeconfig", std::process::id()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: sim\n    user: u\n\
             current-context: c\n",
            sim.url()
        );
        std::fs::write(&path, text).unwrap();
        Kubeconfig(path)
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn felix_client(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_felix-client"))
        .args(args)
        .env_clear()
        .env("FELIX_LOG", "info")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(LIMIT, run)
        .await
        .expect("felix-client did not exit")
        .unwrap()
}

/// Nothing was handed to the dataplane and no session got anywhere.
fn assert_untouched(stdout: &str, stderr: &str) {
    for text in [stdout, stderr] {
        assert!(!text.contains("dataplane none: would"), "{text}");
        assert!(!text.contains("connected to typha"), "{text}");
    }
}

#[tokio::test]
async fn service_without_endpoints_times_out_with_a_clear_message() {
    let sim = KubeSim::start(kube_sim::Config::default()).await.unwrap();
    let store = sim.store();
    store
        .upsert_object(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "calico-typha", "namespace": "kube-system"},
            "spec": {"ports": [{"name": "calico-typha", "port": 5473}],
                     "selector": {"k8s-app": "calico-typha"}},
        }))
        .unwrap();
    // What the EndpointSlice controller leaves for a Deployment scaled to zero.
    store
        .upsert_object(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "calico-typha-xyz", "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "calico-typha"}},
            "addressType": "IPv4",
            "ports": [{"name": "calico-typha", "port": 5473, "protocol": "TCP"}],
            "endpoints": [],
        }))
        .unwrap();
    let kubeconfig = Kubeconfig::for_sim(&sim, "zero");
    let out = felix_client(&[
        "--node-name",
        "node-1",
        "--typha-service",
        "kube-system/calico-typha",
        "--kubeconfig",
        kubeconfig.0.to_str().unwrap(),
        "--insecure-plaintext",
        "--typha-start-timeout",
        "2s",
        "--dataplane",
        "none",
        "--health-listen",
        "none",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    for part in [
        "no typha brought this agent in sync within 2s",
        "service kube-system/calico-typha",
        "0 ready endpoint(s) now",
        "tried: nothing",
    ] {
        assert!(stderr.contains(part), "missing {part:?} in: {stderr}");
    }
    assert!(
        !stderr.contains("never listed"),
        "the slices were listed: {stderr}"
    );
    assert_untouched(&stdout, &stderr);
    // The watch really ran against the API.
    assert!(sim.metrics().snapshot().requests > 0);
}

#[tokio::test]
async fn unreachable_addresses_time_out_naming_each_one() {
    // A port nobody listens on: bind, note, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = felix_client(&[
        "--node-name",
        "node-1",
        "--typha-addr",
        &addr,
        "--insecure-plaintext",
        "--typha-start-timeout",
        "1s",
        "--backoff-min",
        "50ms",
        "--dataplane",
        "none",
        "--health-listen",
        "none",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    for part in [
        "no typha brought this agent in sync within 1s".to_string(),
        format!("typha addresses {addr}"),
        format!("tried: {addr} ("),
        "attempt(s), last: connecting to".to_string(),
    ] {
        assert!(stderr.contains(&part), "missing {part:?} in: {stderr}");
    }
    assert_untouched(&stdout, &stderr);
}
