//! Unit tests of the model types (keys, values, updates, version vectors).

use super::*;

fn wep(ns: &str, pod: &str) -> Update {
    let key = Key::new(Kind::WorkloadEndpoint, ns, pod).unwrap();
    let value = Value::WorkloadEndpoint(pb::WorkloadEndpoint {
        namespace: ns.into(),
        pod: pod.into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        ..Default::default()
    });
    Update::new(key, Some(value)).unwrap()
}

#[test]
fn version_vectors_only_rise_and_round_trip() {
    let mut v = VersionVector::new();
    assert!(v.advance("pods", 5));
    assert!(!v.advance("pods", 3));
    assert!(!v.advance("nodes", 0));
    assert_eq!((v.get("pods"), v.get("nodes")), (5, 0));
    let wire = v.to_pb();
    assert_eq!(VersionVector::from_pb(&wire), v);
    let dup = [
        pb::ResourceVersion {
            resource: "pods".into(),
            version: 9,
        },
        pb::ResourceVersion {
            resource: "pods".into(),
            version: 7,
        },
    ];
    let mut w = VersionVector::from_pb(&dup);
    assert_eq!(w.get("pods"), 9);
    // A batch's entries replace the held ones, downwards too (a restored datastore).
    let mut m = w.clone();
    m.merge(&dup[1..]);
    assert_eq!(m.get("pods"), 7);
    assert!(m.set("pods", 0));
    assert!(!m.set("pods", 0));
    assert!(m.is_empty());
    assert_eq!(w.first_above(&v), Some("pods"));
    assert_eq!(v.first_above(&w), None);
    assert_eq!(w.to_string(), "{pods:9}");
    assert_eq!(w.take().get("pods"), 9);
    assert!(w.is_empty());
}

#[test]
fn key_scope_is_validated() {
    assert!(Key::new(Kind::WorkloadEndpoint, "", "a").is_err());
    assert!(Key::new(Kind::Node, "ns", "a").is_err());
    assert!(Key::new(Kind::Node, "", "").is_err());
    assert!(Key::cluster(Kind::Node, "n1").is_ok());
}

#[test]
fn value_must_match_kind() {
    let key = Key::cluster(Kind::Node, "n1").unwrap();
    let err = Update::new(key, Some(Value::Profile(pb::Profile::default()))).unwrap_err();
    assert!(matches!(
        err,
        ModelError::KindMismatch {
            kind: Kind::Node,
            ..
        }
    ));
}

#[test]
fn encode_decode_round_trip_and_is_deterministic() {
    let u = wep("x", "a");
    let bytes = u.encode();
    assert_eq!(Update::decode(&bytes).unwrap(), u);
    assert_eq!(u.clone().encode(), bytes);
    let del = Update::delete(u.key.clone());
    assert_eq!(Update::decode(&del.encode()).unwrap(), del);
}

#[test]
fn unknown_kind_and_missing_fields_are_errors() {
    let wire = pb::KeyValue {
        key: Some(pb::Key {
            kind: 99,
            namespace: String::new(),
            name: "a".into(),
        }),
        value: None,
    };
    assert!(matches!(
        Update::try_from(wire),
        Err(ModelError::UnknownEnum { .. })
    ));
    assert_eq!(
        Update::try_from(pb::KeyValue::default()),
        Err(ModelError::Missing("KeyValue.key"))
    );
    assert!(Kind::try_from(0).is_err());
    for kind in Kind::ALL {
        assert_eq!(Kind::try_from(pb::Kind::from(kind) as i32), Ok(kind));
    }
}
