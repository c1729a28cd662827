//! typha's first-start bootstrap (`netmodel::bootstrap`) against kube-sim: the
//! default IPPool only when no pool exists and only with a cluster CIDR, never a change to
//! an existing pool, races between replicas, and ClusterInformation readiness (an
//! operator's explicit `false` respected).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube_sim::{Config as SimConfig, KubeSim};
use netmodel::bootstrap::{ClusterCidr, InfoOutcome, Outcome, PoolOutcome, ensure_defaults};
use serde_json::{Value as Json, json};

const CRD: &str = "crd.projectcalico.org/v1";

async fn sim() -> (KubeSim, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = KubeSim::start(SimConfig::default()).await.unwrap();
    let config = kube::Config::new(sim.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    (sim, client)
}

/// [`sim`] holding one Calico object of `kind`.
async fn sim_holding(kind: &str, name: &str, spec: Json) -> (KubeSim, kube::Client) {
    let (sim, client) = sim().await;
    sim.store()
        .create_object(json!({
            "apiVersion": CRD, "kind": kind, "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
    (sim, client)
}

fn pools(sim: &KubeSim) -> Vec<Json> {
    sim.store().list_objects(CRD, "IPPool")
}

fn cluster_information(sim: &KubeSim) -> Vec<Json> {
    sim.store().list_objects(CRD, "ClusterInformation")
}

fn cidr(text: &str) -> ClusterCidr {
    text.parse().unwrap()
}

#[tokio::test]
async fn empty_datastore_gets_the_default_pool_and_a_ready_cluster() {
    let (sim, client) = sim().await;
    let configured = cidr("10.244.0.0/16");
    let outcome = ensure_defaults(&client, Some(&configured)).await.unwrap();
    assert_eq!(
        outcome,
        Outcome {
            pool: PoolOutcome::Created,
            cluster_information: InfoOutcome::Created,
        }
    );
    let pools = pools(&sim);
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0]["metadata"]["name"], "default-ipv4-ippool");
    assert_eq!(pools[0]["spec"]["cidr"], "10.244.0.0/16");
    assert_eq!(pools[0]["spec"]["natOutgoing"], true);
    // The pool converts: typha's own upstream accepts what its bootstrap writes.
    let typed: netmodel::crd::CalicoObject<netmodel::crd::IPPool> =
        serde_json::from_value(pools[0].clone()).unwrap();
    netmodel::convert(&typed).unwrap();
    let info = cluster_information(&sim);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0]["metadata"]["name"], "default");
    assert_eq!(info[0]["spec"]["datastoreReady"], true);
    let guid = info[0]["spec"]["clusterGUID"].as_str().unwrap();
    assert_eq!(guid.len(), 32);

    // A restart with another CIDR changes nothing: the pool exists.
    let outcome = ensure_defaults(&client, Some(&cidr("172.16.0.0/12")))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome {
            pool: PoolOutcome::Existing(vec!["default-ipv4-ippool".into()]),
            cluster_information: InfoOutcome::AlreadyReady,
        }
    );
    let after = self::pools(&sim);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["spec"]["cidr"], "10.244.0.0/16");
    assert_eq!(
        after[0]["metadata"]["resourceVersion"], pools[0]["metadata"]["resourceVersion"],
        "the existing pool was not written"
    );
    assert_eq!(
        cluster_information(&sim)[0]["spec"]["clusterGUID"],
        guid,
        "ClusterInformation kept"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn no_cluster_cidr_creates_no_pool() {
    let (sim, client) = sim().await;
    let outcome = ensure_defaults(&client, None).await.unwrap();
    assert_eq!(outcome.pool, PoolOutcome::NotConfigured);
    assert_eq!(outcome.cluster_information, InfoOutcome::Created);
    assert!(pools(&sim).is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn an_existing_pool_of_any_name_prevents_the_default() {
    let spec = json!({"cidr": "10.50.0.0/16", "disabled": true});
    let (sim, client) = sim_holding("IPPool", "operators-pool", spec).await;
    let outcome = ensure_defaults(&client, Some(&cidr("10.244.0.0/16")))
        .await
        .unwrap();
    assert_eq!(
        outcome.pool,
        PoolOutcome::Existing(vec!["operators-pool".into()])
    );
    let pools = pools(&sim);
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0]["spec"]["cidr"], "10.50.0.0/16");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_on_an_empty_datastore_create_one_pool_and_all_succeed() {
    let (sim, client) = sim().await;
    let configured = cidr("10.244.0.0/16");
    let passes = (0..8).map(|_| {
        let client = client.clone();
        async move { ensure_defaults(&client, Some(&configured)).await }
    });
    let outcomes: Vec<Outcome> = futures::future::join_all(passes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let created = outcomes
        .iter()
        .filter(|o| o.pool == PoolOutcome::Created)
        .count();
    assert_eq!(created, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o.pool,
            PoolOutcome::Created | PoolOutcome::LostRace | PoolOutcome::Existing(_)
        )),
        "{outcomes:?}"
    );
    let info_created = outcomes
        .iter()
        .filter(|o| o.cluster_information == InfoOutcome::Created)
        .count();
    assert_eq!(info_created, 1, "{outcomes:?}");
    assert_eq!(pools(&sim).len(), 1);
    assert_eq!(cluster_information(&sim).len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn cluster_information_without_the_flag_is_marked_ready_but_a_lock_is_kept() {
    let spec = json!({"clusterGUID": "abc", "calicoVersion": "v3.29"});
    let (sim, client) = sim_holding("ClusterInformation", "default", spec).await;
    let outcome = ensure_defaults(&client, None).await.unwrap();
    assert_eq!(outcome.cluster_information, InfoOutcome::MarkedReady);
    let info = &cluster_information(&sim)[0];
    assert_eq!(info["spec"]["datastoreReady"], true);
    assert_eq!(info["spec"]["clusterGUID"], "abc", "other fields kept");
    assert_eq!(info["spec"]["calicoVersion"], "v3.29");

    // An operator locks the datastore: typha leaves it locked.
    let mut locked = info.clone();
    locked["spec"]["datastoreReady"] = json!(false);
    sim.store().replace_object(locked).unwrap();
    let outcome = ensure_defaults(&client, None).await.unwrap();
    assert_eq!(outcome.cluster_information, InfoOutcome::Locked);
    assert_eq!(
        cluster_information(&sim)[0]["spec"]["datastoreReady"],
        false
    );
    sim.shutdown().await;
}
