//! Conformance through the wire, part 1: the handshake, the snapshot and what its keys
//! are, deltas with their revisions and digests, and resuming on the same and on another
//! replica. Each test runs the typha binary against an in-process kube-sim and checks it
//! with the conformance client only (docs/protocol.md is the reference).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use conformance::hello;
use conformance::pb::{self, Capability, Kind};
use sha1::{Digest, Sha1};
use support::{ALL, World, batches_until, pod};

const RESOURCES: [&str; 13] = [
    "pods",
    "namespaces",
    "serviceaccounts",
    "nodes",
    "networkpolicies.networking.k8s.io",
    "networkpolicies.crd.projectcalico.org",
    "globalnetworkpolicies",
    "globalnetworksets",
    "networksets",
    "hostendpoints",
    "ippools",
    "felixconfigurations",
    "clusterinformations",
];

fn endpoint<'a>(
    mirror: &'a conformance::Mirror,
    ns: &str,
    pod: &str,
) -> Option<&'a pb::WorkloadEndpoint> {
    match mirror.get(Kind::WorkloadEndpoint, ns, pod)?.kind.as_ref()? {
        pb::value::Kind::WorkloadEndpoint(wep) => Some(wep),
        _ => panic!("not an endpoint value"),
    }
}

/// A version 3 client offering every capability and an unknown one gets version 2 and
/// exactly the four known capabilities; the snapshot's digest and key count check out,
/// and its keys are what the spec says the seeded objects become.
#[tokio::test]
async fn the_handshake_negotiates_and_the_snapshot_is_the_specified_model() {
    let world = World::start("handshake").await;
    let typha = world.typha("typha-a", &[]).await;
    let mut offer = hello("node-a", 3, &ALL);
    offer.capabilities.push(99);
    let synced = typha.sync(&world, offer, None).await;
    let server = &synced.hello;
    assert_eq!(server.protocol_version, 2);
    let granted: BTreeSet<i32> = server.capabilities.iter().copied().collect();
    assert_eq!(granted, ALL.iter().map(|c| *c as i32).collect());
    assert!(!server.resumed);
    assert!(!server.epoch.is_empty());
    let mirror = &synced.mirror;

    // 2 nodes x 4 pods, every 4th host-networked: 6 endpoints.
    let pods = world.sim.store().list_objects("v1", "Pod");
    let mut endpoints = 0;
    for p in &pods {
        let (ns, name) = (
            p["metadata"]["namespace"].as_str().unwrap(),
            p["metadata"]["name"].as_str().unwrap(),
        );
        let host = p["spec"]["hostNetwork"].as_bool().unwrap_or(false);
        let Some(wep) = endpoint(mirror, ns, name) else {
            assert!(host, "{ns}/{name} is not an endpoint");
            continue;
        };
        assert!(!host, "{ns}/{name} is host-networked");
        endpoints += 1;
        let sha = Sha1::digest(format!("{ns}.{name}").as_bytes());
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(wep.interface_name, format!("cali{}", &hex[..11]));
        assert_eq!(
            wep.ip_nets,
            vec![format!("{}/32", p["status"]["podIP"].as_str().unwrap())]
        );
        assert_eq!(wep.labels["projectcalico.org/namespace"], ns);
        assert_eq!(wep.labels["projectcalico.org/orchestrator"], "k8s");
        let sa = p["spec"]["serviceAccountName"].as_str().unwrap();
        assert_eq!(
            wep.profile_ids,
            vec![format!("kns.{ns}"), format!("ksa.{ns}.{sa}")]
        );
    }
    assert_eq!(endpoints, 6);
    for ns in ["ns-0", "ns-1"] {
        let Some(pb::value::Kind::Profile(profile)) = mirror
            .get(Kind::Profile, "", &format!("kns.{ns}"))
            .and_then(|v| v.kind.as_ref())
        else {
            panic!("no profile kns.{ns}");
        };
        assert_eq!(profile.labels["pcns.projectcalico.org/name"], ns);
        assert!(
            mirror
                .get(Kind::Profile, "", &format!("ksa.{ns}.default"))
                .is_some()
        );
    }
    for policy in world
        .sim
        .store()
        .list_objects("networking.k8s.io/v1", "NetworkPolicy")
    {
        let (ns, name) = (
            policy["metadata"]["namespace"].as_str().unwrap(),
            policy["metadata"]["name"].as_str().unwrap(),
        );
        let key = format!("knp.default.{name}");
        assert!(
            mirror.get(Kind::K8sNetworkPolicy, ns, &key).is_some(),
            "{key}"
        );
    }
    assert!(mirror.get(Kind::Node, "", "node-00000").is_some());
    assert!(
        mirror
            .get(Kind::IpPool, "", "default-ipv4-ippool")
            .is_some()
    );
    assert!(
        mirror
            .get(Kind::GlobalNetworkPolicy, "", "default.allow-dns")
            .is_some()
    );
    assert!(
        mirror
            .get(Kind::ClusterInformation, "", "default")
            .is_some()
    );
    assert!(mirror.versions.contains_key("pods"));
    for resource in mirror.versions.keys() {
        assert!(
            RESOURCES.contains(&resource.as_str()),
            "unknown resource {resource}"
        );
    }

    // A version 1 client gets version 1 and no vector capability.
    let v1 = typha.sync(&world, hello("node-v1", 1, &ALL), None).await;
    assert_eq!(v1.hello.protocol_version, 1);
    assert!(
        !v1.hello
            .capabilities
            .contains(&(Capability::ResourceVersions as i32))
    );
    assert_eq!(v1.mirror.digest(), mirror.digest());
}

/// Each change arrives as a batch that starts at the client's revision and whose digest
/// the client reproduces; pods follow the endpoint rules (host network, finished, no IP:
/// no endpoint; a deletion timestamp: still one).
#[tokio::test]
async fn deltas_follow_the_revisions_and_digests_and_the_pod_rules() {
    let world = World::start("deltas").await;
    let typha = world.typha("typha-a", &[]).await;
    let mut synced = typha.sync(&world, hello("node-a", 2, &ALL), None).await;
    let start = synced.mirror.revision;
    let pods_version = synced.mirror.versions["pods"];
    let mut probe = pod("ns-0", "probe", "node-00000", "10.0.0.200");
    world.put(probe.clone());
    let batches = batches_until(&mut synced, |m| endpoint(m, "ns-0", "probe").is_some())
        .await
        .unwrap();
    assert_eq!(
        batches[0].from_revision, start,
        "the first batch starts at the snapshot's revision"
    );
    assert!(
        synced.mirror.versions["pods"] > pods_version,
        "the vector advanced"
    );

    for (edit, present) in [
        (serde_json::json!({"spec": {"hostNetwork": true}}), false),
        (serde_json::json!({"spec": {"hostNetwork": false}}), true),
        (serde_json::json!({"status": {"phase": "Succeeded"}}), false),
        (serde_json::json!({"status": {"phase": "Running"}}), true),
        (
            serde_json::json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            true,
        ),
        (
            serde_json::json!({"status": {"podIP": null, "podIPs": null}}),
            false,
        ),
    ] {
        merge(&mut probe, &edit);
        world.put(probe.clone());
        // A no-op for the model may produce an empty batch; a sentinel proves arrival.
        let sentinel = format!("sentinel-{}", synced.mirror.revision);
        world.put(pod("ns-1", &sentinel, "node-00001", "10.0.1.200"));
        batches_until(&mut synced, |m| endpoint(m, "ns-1", &sentinel).is_some())
            .await
            .unwrap();
        assert_eq!(
            endpoint(&synced.mirror, "ns-0", "probe").is_some(),
            present,
            "after {edit}"
        );
    }
    // Deleting a namespace deletes its profile and, with its objects, their keys.
    let store = world.sim.store();
    store.delete_object("v1", "Namespace", "", "ns-1").unwrap();
    batches_until(&mut synced, |m| {
        m.get(Kind::Profile, "", "kns.ns-1").is_none() && m.keys().all(|(_, ns, _)| ns != "ns-1")
    })
    .await
    .unwrap();
}

/// JSON merge (objects merge, null deletes).
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let (Some(target), Some(patch)) = (target.as_object_mut(), patch.as_object()) else {
        *target = patch.clone();
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else if v.is_object() && target.get(k).is_some_and(|t| t.is_object()) {
            merge(target.get_mut(k).unwrap(), v);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
}

/// A client that reconnects with its position resumes (no snapshot) and continues at
/// its revision; a position at the newest revision with a wrong digest, or a client not
/// offering the resume capability, gets a snapshot.
#[tokio::test]
async fn a_client_resumes_on_the_same_replica_after_its_revision() {
    let world = World::start("resume-same").await;
    let typha = world.typha("typha-a", &[]).await;
    let synced = typha.sync(&world, hello("node-a", 2, &ALL), None).await;
    let mirror = synced.mirror;
    drop(synced.stream);
    world.put(pod("ns-0", "while-away", "node-00000", "10.0.0.201"));

    let mut resume = hello("node-a", 2, &ALL);
    resume.resume = Some(mirror.position());
    let mut resumed = typha.sync(&world, resume, Some(mirror.clone())).await;
    assert!(resumed.hello.resumed);
    assert_eq!(resumed.hello.epoch, mirror.epoch);
    let batches = batches_until(&mut resumed, |m| {
        endpoint(m, "ns-0", "while-away").is_some()
    })
    .await
    .unwrap();
    assert_eq!(batches[0].from_revision, mirror.revision);

    // At the newest revision, the digest must match.
    let current = resumed.mirror.clone();
    let mut wrong = current.position();
    wrong.digest = vec![0; 16];
    let mut bad = hello("node-a", 2, &ALL);
    bad.resume = Some(wrong);
    let mut snapshot = typha.sync(&world, bad, Some(current.clone())).await;
    assert!(!snapshot.hello.resumed);
    // The snapshot may be a reused, older one: the batches after it follow at once.
    batches_until(&mut snapshot, |m| m.revision >= current.revision)
        .await
        .unwrap();
    assert_eq!(snapshot.mirror.digest(), current.digest());

    // Without CAPABILITY_RESUME the position is ignored.
    let mut no_cap = hello("node-a", 2, &[Capability::SnapshotZstd, Capability::Digest]);
    no_cap.resume = Some(current.position());
    assert!(
        !typha
            .sync(&world, no_cap, Some(current))
            .await
            .hello
            .resumed
    );
}

/// A client of replica A resumes on replica B from its version vector: B sends one rebase
/// batch (`from_revision == revision`) that the client's digest check accepts, then
/// ordinary batches in B's history. Without the vector capability, a snapshot.
#[tokio::test]
async fn a_client_resumes_on_another_replica_with_one_rebase_batch() {
    let world = World::start("resume-cross").await;
    let a = world.typha("typha-a", &[]).await;
    let b = world.typha("typha-b", &[]).await;
    let on_a = a.sync(&world, hello("node-a", 2, &ALL), None).await;
    let mirror = on_a.mirror;
    drop(on_a.stream);
    drop(a);
    world.put(pod("ns-0", "after-a", "node-00000", "10.0.0.202"));
    // B has the change once a fresh client of B sees it.
    let mut witness = b.sync(&world, hello("witness", 2, &ALL), None).await;
    batches_until(&mut witness, |m| endpoint(m, "ns-0", "after-a").is_some())
        .await
        .ok();
    assert!(endpoint(&witness.mirror, "ns-0", "after-a").is_some());

    let mut resume = hello("node-a", 2, &ALL);
    resume.resume = Some(mirror.position());
    let mut on_b = b.sync(&world, resume, Some(mirror.clone())).await;
    assert!(on_b.hello.resumed, "resumed across replicas");
    assert_ne!(on_b.hello.epoch, mirror.epoch);
    assert_eq!(
        on_b.mirror.epoch, on_b.hello.epoch,
        "the client adopted B's epoch"
    );
    assert!(
        endpoint(&on_b.mirror, "ns-0", "after-a").is_some(),
        "the rebase batch carried it"
    );
    assert_eq!(on_b.mirror.digest(), witness.mirror.digest());
    world.put(pod("ns-0", "after-b", "node-00000", "10.0.0.203"));
    batches_until(&mut on_b, |m| endpoint(m, "ns-0", "after-b").is_some())
        .await
        .unwrap();

    let mut v1 = hello("node-a", 1, &ALL);
    v1.resume = Some(mirror.position());
    let snapshot = b.sync(&world, v1, Some(mirror)).await;
    assert!(!snapshot.hello.resumed, "no vector capability: a snapshot");
}
