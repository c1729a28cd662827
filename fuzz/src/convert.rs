//! Fuzz targets `convert_json` and `convert_structured`: Kubernetes objects and Calico
//! resources through typha's conversion into the model.
//!
//! `convert_json`: the first byte picks the watched kind, the rest is the object's JSON,
//! decoded with serde_json straight into the typed object as the watch does.
//! `convert_structured`: the bytes choose the fields of a Pod, a NetworkPolicy or a Calico
//! (Global)NetworkPolicy from small vocabularies of valid and invalid values, so the
//! fuzzer explores conversion logic instead of JSON syntax.
//!
//! Checked for every object that deserializes: no panic; conversion is deterministic;
//! the update's key is the delete's key and is of the resource's kind; the update's wire
//! form decodes back to the same update; a rejection's withdrawal deletes its key.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use netmodel::crd::{self, CalicoObject};
use netmodel::{ToModel, convert, convert_delete};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use typha_proto::Update;

use super::dice::Dice;

/// Fuzz target `convert_json` (see the module docs).
pub fn convert_json(data: &[u8]) {
    let Some((&kind, json)) = data.split_first() else {
        return;
    };
    match kind % 13 {
        0 => from_slice::<Pod>(json),
        1 => from_slice::<Namespace>(json),
        2 => from_slice::<ServiceAccount>(json),
        3 => from_slice::<Node>(json),
        4 => from_slice::<K8sNetworkPolicy>(json),
        5 => from_slice::<CalicoObject<crd::NetworkPolicy>>(json),
        6 => from_slice::<CalicoObject<crd::GlobalNetworkPolicy>>(json),
        7 => from_slice::<CalicoObject<crd::GlobalNetworkSet>>(json),
        8 => from_slice::<CalicoObject<crd::NetworkSet>>(json),
        9 => from_slice::<CalicoObject<crd::HostEndpoint>>(json),
        10 => from_slice::<CalicoObject<crd::IPPool>>(json),
        11 => from_slice::<CalicoObject<crd::FelixConfiguration>>(json),
        _ => from_slice::<CalicoObject<crd::ClusterInformation>>(json),
    }
}

/// Fuzz target `convert_structured` (see the module docs).
pub fn convert_structured(data: &[u8]) {
    let mut dice = Dice::new(data);
    match dice.below(4) {
        0 => from_value::<Pod>(pod(&mut dice)),
        1 => from_value::<K8sNetworkPolicy>(k8s_policy(&mut dice)),
        2 => from_value::<CalicoObject<crd::NetworkPolicy>>(calico_policy(&mut dice, true)),
        _ => from_value::<CalicoObject<crd::GlobalNetworkPolicy>>(calico_policy(&mut dice, false)),
    }
}

fn from_slice<T: ToModel + kube::Resource + DeserializeOwned>(json: &[u8]) {
    if let Ok(object) = serde_json::from_slice::<T>(json) {
        check(&object);
    }
}

fn from_value<T: ToModel + kube::Resource + DeserializeOwned>(value: Value) {
    if let Ok(object) = serde_json::from_value::<T>(value) {
        check(&object);
    }
}

fn check<T: ToModel + kube::Resource>(object: &T) {
    let update = convert(object);
    assert_eq!(update, convert(object), "conversion is not deterministic");
    let delete = convert_delete(object);
    match (&update, &delete) {
        (Ok(update), Ok(delete)) => {
            assert_eq!(update.key, delete.key, "update and delete keys differ");
            assert_eq!(update.key.kind(), T::RESOURCE.model_kind());
            let wire = Update::decode(&update.encode());
            assert_eq!(wire.as_ref().ok(), Some(update), "wire round trip");
        }
        (Err(rejection), _) => {
            let _ = rejection.to_string();
            if let Some(withdraw) = rejection.to_delete() {
                assert!(withdraw.value.is_none());
                assert_eq!(
                    Some(withdraw.key),
                    delete.as_ref().ok().map(|d| d.key.clone())
                );
            }
        }
        (Ok(update), Err(rejection)) => {
            panic!("{update:?} converts but not its delete: {rejection}")
        }
    }
}

const NAMES: &[&str] = &[
    "a",
    "x",
    "web-1",
    "",
    "UPPER",
    "a.b",
    "a/b",
    "-x",
    "kube-system",
];
const LABEL_KEYS: &[&str] = &[
    "app",
    "tier",
    "projectcalico.org/namespace",
    "example.com/role",
    "",
    "a b",
    "k'\"",
];
const LABEL_VALUES: &[&str] = &["web", "db", "", "it's", "say \"hi\"", "'\"", "ünï"];
const IPS: &[&str] = &[
    "10.0.0.1",
    "fd00::1",
    "10.0.0.1/32",
    "300.1.1.1",
    "",
    "::ffff:10.0.0.1",
    "10.0.0.0/8",
    "not-an-ip",
];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.2.3/33",
    "fd00::/64",
    "0.0.0.0/0",
    "10.0.0.1",
    "x",
];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP", "ICMP", "tcp", ""];
const OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "Near"];
const SELECTORS: &[&str] = &[
    "all()",
    "app == 'web'",
    "has(tier) && !has(x)",
    "a in { 'x', \"y\" } || global()",
    "",
    "app ==",
    "k starts with 'p'",
    "projectcalico.org/namespace == 'x'",
];
const ACTIONS: &[&str] = &["Allow", "Deny", "Pass", "Log", "allow", ""];

fn name(dice: &mut Dice) -> Value {
    json!(dice.pick(NAMES))
}

fn labels(dice: &mut Dice) -> Value {
    let mut map = Map::new();
    for _ in 0..dice.below(4) {
        map.insert(dice.pick(LABEL_KEYS).into(), json!(dice.pick(LABEL_VALUES)));
    }
    Value::Object(map)
}

fn metadata(dice: &mut Dice, namespaced: bool) -> Value {
    let mut meta = json!({ "name": name(dice), "labels": labels(dice) });
    if namespaced && let Some(object) = meta.as_object_mut() {
        object.insert("namespace".into(), name(dice));
    }
    meta
}

fn port(dice: &mut Dice) -> Value {
    match dice.below(4) {
        0 => json!(dice.pick(&[80i64, 0, 65535, 65536, -1, 443])),
        1 => json!(dice.pick(&["http", "80", "1:2", "2:1", "0:5", "a:b", "", "x-"])),
        2 => json!(dice.pick(&["dns-tcp", "very-long-port-name-x", "HTTP"])),
        _ => Value::Null,
    }
}

fn pod(dice: &mut Dice) -> Value {
    let containers = dice.many(2, |d| {
        let ports = d.many(3, |d| {
            json!({
                "name": d.maybe(&["http", "dns", "", "UP", "a-"]),
                "containerPort": d.pick(&[80, 0, 65535, 65536, -5]),
                "protocol": d.maybe(PROTOCOLS),
            })
        });
        json!({ "name": "c", "ports": ports })
    });
    let pod_ips = dice.many(2, |d| json!({ "ip": d.pick(IPS) }));
    json!({
        "metadata": metadata(dice, true),
        "spec": {
            "containers": containers,
            "nodeName": dice.maybe(&["node-1", ""]),
            "hostNetwork": dice.maybe(&[true, false]),
            "serviceAccountName": dice.maybe(&["default", "", "sa.x"]),
        },
        "status": {
            "podIP": dice.maybe(IPS),
            "podIPs": pod_ips,
            "phase": dice.maybe(&["Running", "Succeeded", "Failed", "Pending"]),
        },
    })
}

fn label_selector(dice: &mut Dice) -> Value {
    let expressions = dice.many(2, |d| {
        json!({
            "key": d.pick(LABEL_KEYS),
            "operator": d.pick(OPERATORS),
            "values": d.many(2, |d| json!(d.pick(LABEL_VALUES))),
        })
    });
    json!({ "matchLabels": labels(dice), "matchExpressions": expressions })
}

fn k8s_rule(dice: &mut Dice, peer_field: &str) -> Value {
    let peers = dice.many(2, |d| match d.below(3) {
        0 => json!({ "ipBlock": { "cidr": d.pick(CIDRS), "except": d.many(2, |d| json!(d.pick(CIDRS))) } }),
        1 => json!({ "podSelector": label_selector(d) }),
        _ => json!({ "namespaceSelector": label_selector(d), "podSelector": label_selector(d) }),
    });
    let ports = dice.many(3, |d| {
        json!({ "port": port(d), "endPort": d.maybe(&[90, 70, 65536]), "protocol": d.maybe(PROTOCOLS) })
    });
    json!({ peer_field: peers, "ports": ports })
}

fn k8s_policy(dice: &mut Dice) -> Value {
    json!({
        "metadata": metadata(dice, true),
        "spec": {
            "podSelector": label_selector(dice),
            "ingress": dice.many(2, |d| k8s_rule(d, "from")),
            "egress": dice.many(2, |d| k8s_rule(d, "to")),
            "policyTypes": dice.many(2, |d| json!(d.pick(&["Ingress", "Egress", "Other"]))),
        },
    })
}

fn entity(dice: &mut Dice) -> Value {
    json!({
        "selector": dice.maybe(SELECTORS),
        "notSelector": dice.maybe(SELECTORS),
        "namespaceSelector": dice.maybe(SELECTORS),
        "nets": dice.many(2, |d| json!(d.pick(CIDRS))),
        "notNets": dice.many(1, |d| json!(d.pick(CIDRS))),
        "ports": dice.many(2, port),
        "notPorts": dice.many(1, port),
    })
}

fn calico_rule(dice: &mut Dice) -> Value {
    let protocol = match dice.below(3) {
        0 => json!(dice.pick(&["TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite", "bogus"])),
        1 => json!(dice.pick(&[6, 17, 0, 255, 256, -1])),
        _ => Value::Null,
    };
    let mut rule = json!({
        "action": dice.pick(ACTIONS),
        "protocol": protocol,
        "source": entity(dice),
        "destination": entity(dice),
    });
    if dice.flag()
        && let Some(object) = rule.as_object_mut()
    {
        object.insert(
            "icmp".into(),
            json!({ "type": dice.maybe(&[8, 0, 255, 256]), "code": dice.maybe(&[0, 255, 256]) }),
        );
    }
    rule
}

fn calico_policy(dice: &mut Dice, namespaced: bool) -> Value {
    json!({
        "metadata": metadata(dice, namespaced),
        "spec": {
            "order": dice.maybe(&[100.0, -1.0, 0.5, 1e300]),
            "selector": dice.maybe(SELECTORS),
            "namespaceSelector": dice.maybe(SELECTORS),
            "types": dice.many(2, |d| json!(d.pick(&["Ingress", "Egress", "Sideways"]))),
            "ingress": dice.many(2, calico_rule),
            "egress": dice.many(2, calico_rule),
            "doNotTrack": dice.flag(),
            "preDNAT": dice.flag(),
            "applyOnForward": dice.flag(),
        },
    })
}
