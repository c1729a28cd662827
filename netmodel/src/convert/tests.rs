//! Conversion tests: real k8s-openapi objects and Calico CR JSON in, model updates out.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodIP,
    PodSpec, PodStatus, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use typha_proto::{Key, Kind, Update, Value, pb};

use super::*;
use crate::crd::{self, CalicoObject};

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..Default::default()
    }
}

/// A running, scheduled pod with one IPv4 address and service account "sa".
fn pod(ns: &str, name: &str) -> Pod {
    Pod {
        metadata: meta(Some(ns), name, &[("app", "web")]),
        spec: Some(PodSpec {
            node_name: Some("node-1".into()),
            service_account_name: Some("sa".into()),
            containers: vec![Container {
                name: "c".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.5".into()),
            pod_ips: Some(vec![PodIP {
                ip: "10.0.0.5".into(),
            }]),
            ..Default::default()
        }),
    }
}

fn wep(update: &Update) -> &pb::WorkloadEndpoint {
    match &update.value {
        Some(Value::WorkloadEndpoint(w)) => w,
        other => panic!("expected an endpoint, got {other:?}"),
    }
}

fn policy(update: &Update) -> &pb::Policy {
    match &update.value {
        Some(Value::Policy(p)) => p,
        other => panic!("expected a policy, got {other:?}"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        ..Default::default()
    }
}

fn knp(spec: NetworkPolicySpec) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(Some("x"), "np", &[]),
        spec: Some(spec),
    }
}

fn ingress(from: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> NetworkPolicySpec {
    NetworkPolicySpec {
        pod_selector: Some(labels(&[("app", "db")])),
        ingress: Some(vec![NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(ports),
        }]),
        ..Default::default()
    }
}

fn calico<K>(ns: Option<&str>, name: &str, spec: serde_json::Value) -> CalicoObject<K> {
    CalicoObject::new(meta(ns, name, &[("role", "x")]), spec)
}

fn types(p: &pb::Policy) -> Vec<pb::PolicyType> {
    p.types
        .iter()
        .map(|t| pb::PolicyType::try_from(*t).unwrap())
        .collect()
}

const POD_SEL: &str = "projectcalico.org/orchestrator == 'k8s'";

// ---------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------

#[test]
fn interface_name_is_cali_plus_sha1_prefix() {
    // `printf x.a | sha1sum` = 456b416f2bf83c71893c409798ad8b7d688a679e
    assert_eq!(interface_name("x", "a"), "cali456b416f2bf");
    // `printf default.nginx | sha1sum` = c440f455693b69cdd48a37aa5ecd78038f50413d
    assert_eq!(interface_name("default", "nginx"), "calic440f455693");
    let u = convert(&pod("x", "a")).unwrap();
    assert_eq!(wep(&u).interface_name, "cali456b416f2bf");
    assert_eq!(interface_name("x", "a").len(), 15, "fits IFNAMSIZ");
}

#[test]
fn other_prefixes_keep_the_hash_and_fit_ifnamsiz() {
    let eni = ConvertOptions {
        interface_prefix: "eni".into(),
    };
    let u = convert_with(&pod("x", "a"), &eni).unwrap();
    assert_eq!(wep(&u).interface_name, "eni456b416f2bf");
    assert_eq!(prefixed_interface_name("veth", "x", "a"), "veth456b416f2bf");
    // A long prefix shortens the hash instead of passing 15 characters.
    assert_eq!(
        prefixed_interface_name("longprefix", "x", "a"),
        "longprefix456b4"
    );
}

#[test]
fn pod_labels_profiles_and_fields() {
    let u = convert(&pod("x", "a")).unwrap();
    assert_eq!(u.key, Key::new(Kind::WorkloadEndpoint, "x", "a").unwrap());
    let w = wep(&u);
    assert_eq!((w.namespace.as_str(), w.pod.as_str()), ("x", "a"));
    assert_eq!(w.node, "node-1");
    assert_eq!(w.ip_nets, vec!["10.0.0.5/32"]);
    assert_eq!(w.service_account, "sa");
    assert_eq!(w.profile_ids, vec!["kns.x", "ksa.x.sa"]);
    let want: std::collections::BTreeMap<String, String> = [
        ("app", "web"),
        ("projectcalico.org/namespace", "x"),
        ("projectcalico.org/orchestrator", "k8s"),
        ("projectcalico.org/serviceaccount", "sa"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(w.labels, want);

    // Without a service account: no ksa profile, no serviceaccount label.
    let mut p = pod("x", "a");
    p.spec.as_mut().unwrap().service_account_name = None;
    let u = convert(&p).unwrap();
    assert_eq!(wep(&u).profile_ids, vec!["kns.x"]);
    assert!(
        !wep(&u)
            .labels
            .contains_key("projectcalico.org/serviceaccount")
    );
}

#[test]
fn pods_that_are_not_endpoints_give_a_delete() {
    let mut host = pod("x", "a");
    host.spec.as_mut().unwrap().host_network = Some(true);
    let mut unscheduled = pod("x", "a");
    unscheduled.spec.as_mut().unwrap().node_name = None;
    let mut no_ip = pod("x", "a");
    no_ip.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    let mut succeeded = pod("x", "a");
    succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let mut failed = pod("x", "a");
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    let key = Key::new(Kind::WorkloadEndpoint, "x", "a").unwrap();
    for (what, p) in [
        ("host network", host),
        ("unscheduled", unscheduled),
        ("no IP", no_ip),
        ("succeeded", succeeded),
        ("failed", failed),
    ] {
        assert_eq!(convert(&p).unwrap(), Update::delete(key.clone()), "{what}");
    }
}

#[test]
fn named_ports_with_protocol_default() {
    let mut p = pod("x", "a");
    p.spec.as_mut().unwrap().containers = vec![
        Container {
            name: "web".into(),
            ports: Some(vec![
                ContainerPort {
                    name: Some("http".into()),
                    container_port: 80,
                    ..Default::default()
                },
                ContainerPort {
                    container_port: 9090, // unnamed: not a named port
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        Container {
            name: "dns".into(),
            ports: Some(vec![ContainerPort {
                name: Some("dns".into()),
                container_port: 53,
                protocol: Some("UDP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        },
    ];
    let u = convert(&p).unwrap();
    assert_eq!(
        wep(&u).ports,
        vec![
            pb::NamedPort {
                name: "http".into(),
                protocol: pb::Protocol::Tcp as i32,
                port: 80
            },
            pb::NamedPort {
                name: "dns".into(),
                protocol: pb::Protocol::Udp as i32,
                port: 53
            },
        ]
    );
}

#[test]
fn ipv6_and_dual_stack_pods() {
    let mut p = pod("x", "a");
    let status = p.status.as_mut().unwrap();
    status.pod_ips = Some(vec![
        PodIP {
            ip: "10.0.0.5".into(),
        },
        PodIP {
            ip: "fd00:0::0005".into(),
        },
    ]);
    assert_eq!(
        wep(&convert(&p).unwrap()).ip_nets,
        vec!["10.0.0.5/32", "fd00::5/128"]
    );
    // An IPv6-primary pod keeps its order.
    p.status
        .as_mut()
        .unwrap()
        .pod_ips
        .as_mut()
        .unwrap()
        .reverse();
    assert_eq!(
        wep(&convert(&p).unwrap()).ip_nets,
        vec!["fd00::5/128", "10.0.0.5/32"]
    );
    // podIP alone (no podIPs) is used too.
    let status = p.status.as_mut().unwrap();
    status.pod_ips = None;
    status.pod_ip = Some("fd00::7".into());
    assert_eq!(wep(&convert(&p).unwrap()).ip_nets, vec!["fd00::7/128"]);
}

// ---------------------------------------------------------------------------------
// Profiles
// ---------------------------------------------------------------------------------

#[test]
fn namespace_and_service_account_profiles() {
    let ns = Namespace {
        metadata: meta(None, "x", &[("team", "blue")]),
        ..Default::default()
    };
    let u = convert(&ns).unwrap();
    assert_eq!(u.key, Key::cluster(Kind::Profile, "kns.x").unwrap());
    let Some(Value::Profile(p)) = &u.value else {
        panic!("not a profile")
    };
    assert_eq!(p.labels.get("pcns.team").map(String::as_str), Some("blue"));
    assert_eq!(
        p.labels
            .get("pcns.projectcalico.org/name")
            .map(String::as_str),
        Some("x")
    );
    assert_eq!(p.labels.len(), 2);

    let sa = ServiceAccount {
        metadata: meta(Some("x"), "sa", &[("tier", "api")]),
        ..Default::default()
    };
    let u = convert(&sa).unwrap();
    assert_eq!(u.key, Key::cluster(Kind::Profile, "ksa.x.sa").unwrap());
    let Some(Value::Profile(p)) = &u.value else {
        panic!("not a profile")
    };
    assert_eq!(p.labels.get("pcsa.tier").map(String::as_str), Some("api"));
    assert_eq!(
        p.labels
            .get("pcsa.projectcalico.org/name")
            .map(String::as_str),
        Some("sa")
    );
    assert_eq!(convert_delete(&sa).unwrap(), Update::delete(u.key));
}

// ---------------------------------------------------------------------------------
// Kubernetes NetworkPolicy
// ---------------------------------------------------------------------------------

#[test]
fn k8s_policy_key_selector_order_and_types_default() {
    let np = knp(NetworkPolicySpec {
        pod_selector: Some(labels(&[("app", "db")])),
        ..Default::default()
    });
    let u = convert(&np).unwrap();
    assert_eq!(
        u.key,
        Key::new(Kind::K8sNetworkPolicy, "x", "knp.default.np").unwrap()
    );
    let p = policy(&u);
    assert_eq!(
        p.selector,
        format!("projectcalico.org/namespace == 'x' && {POD_SEL} && app == 'db'")
    );
    assert_eq!((p.order, p.has_order), (1000.0, true));
    assert_eq!(p.namespace, "x");
    assert_eq!(types(p), vec![pb::PolicyType::Ingress]);
    assert!(p.inbound_rules.is_empty(), "no rules: deny all ingress");

    // Egress rules present, no policyTypes: Ingress + Egress.
    let np = knp(NetworkPolicySpec {
        egress: Some(vec![NetworkPolicyEgressRule::default()]),
        ..Default::default()
    });
    let u = convert(&np).unwrap();
    let p = policy(&u);
    assert_eq!(
        types(p),
        vec![pb::PolicyType::Ingress, pb::PolicyType::Egress]
    );
    // Empty podSelector: every pod of the namespace.
    assert_eq!(
        p.selector,
        format!("projectcalico.org/namespace == 'x' && {POD_SEL}")
    );

    // Listed types are taken as they are.
    let np = knp(NetworkPolicySpec {
        policy_types: Some(vec!["Egress".into()]),
        ..Default::default()
    });
    assert_eq!(
        types(policy(&convert(&np).unwrap())),
        vec![pb::PolicyType::Egress]
    );
}

#[test]
fn empty_rule_allows_everything() {
    let np = knp(NetworkPolicySpec {
        ingress: Some(vec![NetworkPolicyIngressRule::default()]),
        ..Default::default()
    });
    let u = convert(&np).unwrap();
    let p = policy(&u);
    assert_eq!(
        p.inbound_rules,
        vec![pb::Rule {
            action: pb::Action::Allow as i32,
            protocol: pb::Protocol::Unspecified as i32,
            source: Some(pb::EntityRule::default()),
            destination: Some(pb::EntityRule::default()),
            ..Default::default()
        }]
    );
}

#[test]
fn ingress_peers_pod_namespace_both_and_ipblock() {
    let peers = vec![
        NetworkPolicyPeer {
            pod_selector: Some(labels(&[("app", "web")])),
            ..Default::default()
        },
        NetworkPolicyPeer {
            namespace_selector: Some(labels(&[("team", "blue")])),
            ..Default::default()
        },
        NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "role".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.0.0.0/8".into(),
                except: Some(vec!["10.1.0.0/16".into()]),
            }),
            ..Default::default()
        },
    ];
    let u = convert(&knp(ingress(peers, vec![tcp(80)]))).unwrap();
    let rules = &policy(&u).inbound_rules;
    assert_eq!(rules.len(), 4, "one rule per peer");
    let sources: Vec<&pb::EntityRule> = rules.iter().map(|r| r.source.as_ref().unwrap()).collect();
    assert_eq!(
        sources[0].selector,
        format!("projectcalico.org/namespace == 'x' && {POD_SEL} && app == 'web'")
    );
    assert_eq!(sources[0].namespace_selector, "");
    assert_eq!(sources[1].selector, POD_SEL);
    assert_eq!(sources[1].namespace_selector, "pcns.team == 'blue'");
    assert_eq!(
        sources[2].selector,
        format!("{POD_SEL} && role in {{ 'a', 'b' }}")
    );
    assert_eq!(
        sources[2].namespace_selector,
        "has(pcns.projectcalico.org/name)"
    );
    assert_eq!(sources[3].nets, vec!["10.0.0.0/8"]);
    assert_eq!(sources[3].not_nets, vec!["10.1.0.0/16"]);
    assert_eq!(sources[3].selector, "");
    for r in rules {
        assert_eq!(r.action, pb::Action::Allow as i32);
        assert_eq!(r.protocol, pb::Protocol::Tcp as i32);
        let dst = r.destination.as_ref().unwrap();
        assert_eq!(dst.ports, vec![port_range(80, 80)]);
        assert_eq!(dst.selector, "", "ingress constrains the source only");
    }
}

#[test]
fn egress_peers_go_to_the_destination() {
    let np = knp(NetworkPolicySpec {
        policy_types: Some(vec!["Egress".into()]),
        egress: Some(vec![NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "fd00::1/64".into(),
                    except: None,
                }),
                ..Default::default()
            }]),
            ports: Some(vec![tcp(443)]),
        }]),
        ..Default::default()
    });
    let u = convert(&np).unwrap();
    let p = policy(&u);
    assert_eq!(types(p), vec![pb::PolicyType::Egress]);
    let r = &p.outbound_rules[0];
    assert_eq!(r.source, Some(pb::EntityRule::default()));
    let dst = r.destination.as_ref().unwrap();
    assert_eq!(dst.nets, vec!["fd00::/64"]);
    assert_eq!(dst.ports, vec![port_range(443, 443)]);
}

#[test]
fn ports_end_port_named_and_one_rule_per_protocol() {
    let ports = vec![
        NetworkPolicyPort {
            port: Some(IntOrString::Int(8000)),
            end_port: Some(8080),
            ..Default::default()
        },
        NetworkPolicyPort {
            port: Some(IntOrString::String("metrics".into())),
            ..Default::default()
        },
        tcp(8081), // merges with 8000-8080
        NetworkPolicyPort {
            protocol: Some("UDP".into()),
            port: Some(IntOrString::Int(53)),
            ..Default::default()
        },
    ];
    let peers = vec![
        NetworkPolicyPeer {
            pod_selector: Some(labels(&[("a", "1")])),
            ..Default::default()
        },
        NetworkPolicyPeer {
            pod_selector: Some(labels(&[("b", "2")])),
            ..Default::default()
        },
    ];
    let u = convert(&knp(ingress(peers, ports))).unwrap();
    let rules = &policy(&u).inbound_rules;
    // Two protocols x two peers; protocols in name order (TCP before UDP).
    assert_eq!(rules.len(), 4);
    let protos: Vec<i32> = rules.iter().map(|r| r.protocol).collect();
    let (t, d) = (pb::Protocol::Tcp as i32, pb::Protocol::Udp as i32);
    assert_eq!(protos, vec![t, t, d, d]);
    let tcp_ports = &rules[0].destination.as_ref().unwrap().ports;
    assert_eq!(
        tcp_ports,
        &vec![port_range(8000, 8081), named_port("metrics").unwrap()]
    );
    assert_eq!(
        rules[2].destination.as_ref().unwrap().ports,
        vec![port_range(53, 53)]
    );

    // A port entry without a port: all ports of its protocol (TCP by default).
    let u = convert(&knp(ingress(
        vec![],
        vec![NetworkPolicyPort::default(), tcp(80)],
    )))
    .unwrap();
    let rules = &policy(&u).inbound_rules;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].protocol, t);
    assert!(rules[0].destination.as_ref().unwrap().ports.is_empty());
}

// ---------------------------------------------------------------------------------
// Calico policies
// ---------------------------------------------------------------------------------

#[test]
fn calico_global_network_policy() {
    let gnp: CalicoObject<crd::GlobalNetworkPolicy> = calico(
        None,
        "deny-db",
        json!({
            "order": 10.5,
            "selector": "role=='db'",
            "namespaceSelector": "env == 'prod'",
            "types": ["Ingress", "Egress"],
            "ingress": [
                {"action": "Allow", "protocol": "TCP",
                 "source": {"selector": "role == 'web'", "namespaceSelector": "all()",
                            "notNets": ["10.0.0.0/8"]},
                 "destination": {"ports": [5432, "6000:6010", "metrics"]}},
                {"action": "Deny"}
            ],
            "egress": [
                {"action": "Allow", "protocol": 1, "icmp": {"type": 8},
                 "destination": {"nets": ["192.168.1.7"]}}
            ],
            "doNotTrack": false, "applyOnForward": true
        }),
    );
    let u = convert(&gnp).unwrap();
    assert_eq!(
        u.key,
        Key::cluster(Kind::GlobalNetworkPolicy, "deny-db").unwrap()
    );
    let p = policy(&u);
    assert_eq!((p.order, p.has_order), (10.5, true));
    assert_eq!(p.namespace, "");
    assert_eq!(p.selector, "role == 'db' && pcns.env == 'prod'");
    assert_eq!(
        types(p),
        vec![pb::PolicyType::Ingress, pb::PolicyType::Egress]
    );
    assert!(p.apply_on_forward);
    assert_eq!(p.tier, "default");
    let r0 = &p.inbound_rules[0];
    assert_eq!(r0.action, pb::Action::Allow as i32);
    assert_eq!(r0.protocol, pb::Protocol::Tcp as i32);
    let src = r0.source.as_ref().unwrap();
    assert_eq!(src.selector, "role == 'web'");
    assert_eq!(src.namespace_selector, "has(pcns.projectcalico.org/name)");
    assert_eq!(src.not_nets, vec!["10.0.0.0/8"]);
    assert_eq!(
        r0.destination.as_ref().unwrap().ports,
        vec![
            port_range(5432, 5432),
            port_range(6000, 6010),
            named_port("metrics").unwrap()
        ]
    );
    let r1 = &p.inbound_rules[1];
    assert_eq!(r1.action, pb::Action::Deny as i32);
    assert_eq!(r1.protocol, pb::Protocol::Unspecified as i32);
    let e0 = &p.outbound_rules[0];
    assert_eq!(e0.protocol, pb::Protocol::Icmp as i32);
    assert!(e0.has_icmp);
    assert_eq!((e0.icmp_type, e0.icmp_code), (8, -1));
    assert_eq!(
        e0.destination.as_ref().unwrap().nets,
        vec!["192.168.1.7/32"]
    );
}

#[test]
fn calico_network_policy_is_namespace_scoped() {
    let np: CalicoObject<crd::NetworkPolicy> = calico(
        Some("x"),
        "allow-web",
        json!({
            "selector": "app == 'db'",
            "ingress": [
                {"action": "Allow", "source": {"selector": "app == 'web'"}},
                {"action": "Allow", "source": {"selector": "app == 'mon'", "namespaceSelector": "team == 'ops'"}},
                {"action": "Allow", "source": {"nets": ["10.0.0.0/24"]}}
            ],
            "egress": [{"action": "Pass"}]
        }),
    );
    let u = convert(&np).unwrap();
    assert_eq!(
        u.key,
        Key::new(Kind::NetworkPolicy, "x", "allow-web").unwrap()
    );
    let p = policy(&u);
    assert_eq!(
        p.selector,
        "projectcalico.org/namespace == 'x' && app == 'db'"
    );
    assert!(!p.has_order);
    // No types listed, both rule lists present: both types.
    assert_eq!(
        types(p),
        vec![pb::PolicyType::Ingress, pb::PolicyType::Egress]
    );
    let src = |i: usize| p.inbound_rules[i].source.clone().unwrap();
    assert_eq!(
        src(0).selector,
        "projectcalico.org/namespace == 'x' && app == 'web'"
    );
    assert_eq!(src(1).selector, "app == 'mon'");
    assert_eq!(src(1).namespace_selector, "pcns.team == 'ops'");
    assert_eq!(src(2).selector, "", "nets alone are not namespace scoped");
    assert_eq!(p.outbound_rules[0].action, pb::Action::Pass as i32);

    // Egress rules only: Egress only.
    let np: CalicoObject<crd::NetworkPolicy> =
        calico(Some("x"), "e", json!({"egress": [{"action": "Deny"}]}));
    assert_eq!(
        types(policy(&convert(&np).unwrap())),
        vec![pb::PolicyType::Egress]
    );
    // Empty selector in a namespaced policy: every endpoint of the namespace.
    assert_eq!(
        policy(&convert(&np).unwrap()).selector,
        "projectcalico.org/namespace == 'x'"
    );
}

// ---------------------------------------------------------------------------------
// Nodes and other Calico resources
// ---------------------------------------------------------------------------------

#[test]
fn node_addresses_cidrs_and_labels() {
    let addr = |t: &str, a: &str| NodeAddress {
        type_: t.into(),
        address: a.into(),
    };
    let node = Node {
        metadata: meta(None, "node-1", &[("zone", "a")]),
        spec: Some(NodeSpec {
            pod_cidr: Some("10.244.1.0/24".into()),
            pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00:1::/64".into()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                addr("Hostname", "node-1"),
                addr("ExternalIP", "2001:db8::4"),
                addr("InternalIP", "fd00::10"),
                addr("InternalIP", "192.168.0.10"),
                addr("ExternalIP", "203.0.113.4"),
                addr("InternalIP", "192.168.0.10"),
            ]),
            ..Default::default()
        }),
    };
    let u = convert(&node).unwrap();
    assert_eq!(u.key, Key::cluster(Kind::Node, "node-1").unwrap());
    let Some(Value::Node(n)) = &u.value else {
        panic!("not a node")
    };
    assert_eq!(n.name, "node-1");
    // Internal addresses first (routes use a family's first), then external ones.
    assert_eq!(
        n.addresses,
        vec!["fd00::10", "192.168.0.10", "2001:db8::4", "203.0.113.4"]
    );
    assert_eq!(n.ipv4_address, "192.168.0.10");
    assert_eq!(n.pod_cidrs, vec!["10.244.1.0/24", "fd00:1::/64"]);
    assert_eq!(n.labels.get("zone").map(String::as_str), Some("a"));

    // podCIDR alone.
    let mut single = node.clone();
    single.spec.as_mut().unwrap().pod_cidrs = None;
    let Some(Value::Node(n)) = convert(&single).unwrap().value else {
        panic!("not a node")
    };
    assert_eq!(n.pod_cidrs, vec!["10.244.1.0/24"]);
}

#[test]
fn ip_pool_nat_outgoing_and_defaults() {
    let pool: CalicoObject<crd::IPPool> = calico(
        None,
        "default-ipv4",
        json!({"cidr": "10.244.0.0/16", "natOutgoing": true, "vxlanMode": "CrossSubnet"}),
    );
    let u = convert(&pool).unwrap();
    assert_eq!(u.key, Key::cluster(Kind::IpPool, "default-ipv4").unwrap());
    assert_eq!(
        u.value,
        Some(Value::IpPool(pb::IpPool {
            cidr: "10.244.0.0/16".into(),
            nat_outgoing: true,
            disabled: false,
            ipip_mode: "Never".into(),
            vxlan_mode: "CrossSubnet".into(),
            block_size: 26,
            node_selector: "all()".into(),
        }))
    );
    let v6: CalicoObject<crd::IPPool> = calico(None, "v6", json!({"cidr": "fd00::/48"}));
    let Some(Value::IpPool(p)) = convert(&v6).unwrap().value else {
        panic!("not a pool")
    };
    assert_eq!((p.block_size, p.nat_outgoing), (122, false));
}

#[test]
fn network_sets_host_endpoints_felix_config_cluster_info() {
    let ns: CalicoObject<crd::NetworkSet> =
        calico(Some("x"), "ext", json!({"nets": ["1.2.3.4", "10.0.0.0/8"]}));
    let u = convert(&ns).unwrap();
    assert_eq!(u.key, Key::new(Kind::NetworkSet, "x", "ext").unwrap());
    let Some(Value::NetworkSet(s)) = &u.value else {
        panic!()
    };
    assert_eq!(s.nets, vec!["1.2.3.4/32", "10.0.0.0/8"]);
    assert_eq!(s.labels.get("role").map(String::as_str), Some("x"));

    let gns: CalicoObject<crd::GlobalNetworkSet> = calico(None, "g", json!({"nets": []}));
    assert_eq!(
        convert(&gns).unwrap().key,
        Key::cluster(Kind::GlobalNetworkSet, "g").unwrap()
    );

    let hep: CalicoObject<crd::HostEndpoint> = calico(
        None,
        "n1-eth0",
        json!({"node": "n1", "interfaceName": "eth0", "expectedIPs": ["192.168.0.1"],
               "profiles": ["p1"], "ports": [{"name": "ssh", "port": 22}]}),
    );
    let Some(Value::HostEndpoint(h)) = convert(&hep).unwrap().value else {
        panic!()
    };
    assert_eq!((h.node.as_str(), h.interface_name.as_str()), ("n1", "eth0"));
    assert_eq!(h.expected_ips, vec!["192.168.0.1"]);
    assert_eq!(h.profile_ids, vec!["p1"]);
    assert_eq!(h.ports[0].protocol, pb::Protocol::Tcp as i32);

    let fc: CalicoObject<crd::FelixConfiguration> = calico(
        None,
        "default",
        json!({"logSeverityScreen": "Info", "bpfEnabled": false, "reportingInterval": "0s",
               "failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22}], "unset": null}),
    );
    let Some(Value::FelixConfiguration(f)) = convert(&fc).unwrap().value else {
        panic!()
    };
    let keys: Vec<&str> = f.settings.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "bpfEnabled",
            "failsafeInboundHostPorts",
            "logSeverityScreen",
            "reportingInterval"
        ]
    );
    assert_eq!(f.settings["bpfEnabled"], "false");
    assert_eq!(f.settings["logSeverityScreen"], "Info");
    assert_eq!(
        f.settings["failsafeInboundHostPorts"],
        r#"[{"port":22,"protocol":"tcp"}]"#
    );

    let ci: CalicoObject<crd::ClusterInformation> = calico(
        None,
        "default",
        json!({"clusterGUID": "abc", "clusterType": "k8s,kdd", "calicoVersion": "v3.30",
               "datastoreReady": true}),
    );
    assert_eq!(
        convert(&ci).unwrap().value,
        Some(Value::ClusterInformation(pb::ClusterInformation {
            cluster_guid: "abc".into(),
            cluster_type: "k8s,kdd".into(),
            calico_version: "v3.30".into(),
            datastore_ready: true,
        }))
    );
}

// ---------------------------------------------------------------------------------
// Invalid objects
// ---------------------------------------------------------------------------------

fn rejected<T: ToModel + kube::Resource>(obj: &T) -> Box<Rejection> {
    convert(obj).expect_err("should be rejected")
}

#[test]
fn invalid_objects_are_rejected_with_typed_errors_and_keys() {
    // Unparsable CIDR in an ipBlock.
    let np = knp(ingress(
        vec![NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.0.0.0/33".into(),
                except: None,
            }),
            ..Default::default()
        }],
        vec![],
    ));
    let r = rejected(&np);
    assert_eq!(r.error, ConvertError::BadCidr("10.0.0.0/33".into()));
    assert_eq!(r.resource, crate::Resource::KubernetesNetworkPolicies);
    let key = Key::new(Kind::K8sNetworkPolicy, "x", "knp.default.np").unwrap();
    assert_eq!(r.to_delete(), Some(Update::delete(key)));
    assert_eq!(r.object, "x/np");

    // A port out of range, and an endPort before its port.
    let np = knp(ingress(vec![], vec![tcp(70000)]));
    assert!(matches!(
        rejected(&np).error,
        ConvertError::PortOutOfRange(_)
    ));
    let np = knp(ingress(
        vec![],
        vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(90)),
            end_port: Some(80),
            ..Default::default()
        }],
    ));
    assert!(matches!(
        rejected(&np).error,
        ConvertError::PortOutOfRange(_)
    ));

    // A selector that cannot be expressed: an unknown operator.
    let np = knp(NetworkPolicySpec {
        pod_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Gt".into(),
                values: Some(vec!["1".into()]),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(matches!(rejected(&np).error, ConvertError::BadSelector(_)));
    assert_eq!(rejected(&np).error.reason(), "bad_selector");

    // Calico policy: unparsable selector, bad port, unsupported negation, bad spec type.
    for (spec, what) in [
        (json!({"selector": "app = 'x'"}), "selector"),
        (
            json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [0]}}]}),
            "port 0",
        ),
        (
            json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}}]}),
            "reversed range",
        ),
        (
            json!({"ingress": [{"action": "Allow", "notProtocol": "TCP"}]}),
            "notProtocol",
        ),
        (json!({"ingress": [{"action": "Jump"}]}), "action"),
        (
            json!({"ingress": [{"action": "Allow", "destination": {"ports": [80]}}]}),
            "ports without protocol",
        ),
        (json!({"order": "first"}), "spec type"),
    ] {
        let gnp: CalicoObject<crd::GlobalNetworkPolicy> = calico(None, "g", spec);
        let r = rejected(&gnp);
        assert_eq!(
            r.key,
            Some(Key::cluster(Kind::GlobalNetworkPolicy, "g").unwrap()),
            "{what}"
        );
    }

    // Missing required fields: an IPPool without a CIDR; a pod without a name has no key.
    let pool: CalicoObject<crd::IPPool> = calico(None, "p", json!({"natOutgoing": true}));
    assert_eq!(rejected(&pool).error, ConvertError::Missing("spec.cidr"));
    let mut nameless = pod("x", "a");
    nameless.metadata.name = None;
    let r = rejected(&nameless);
    assert_eq!(r.error, ConvertError::Missing("metadata.name"));
    assert_eq!(r.to_delete(), None);

    // A pod with a garbage IP.
    let mut p = pod("x", "a");
    p.status.as_mut().unwrap().pod_ips = Some(vec![PodIP {
        ip: "10.0.0".into(),
    }]);
    assert_eq!(rejected(&p).error, ConvertError::BadCidr("10.0.0".into()));

    // A node with an unparsable pod CIDR.
    let node = Node {
        metadata: meta(None, "n", &[]),
        spec: Some(NodeSpec {
            pod_cidr: Some("10.244.1.0/40".into()),
            ..Default::default()
        }),
        status: None,
    };
    assert!(matches!(rejected(&node).error, ConvertError::BadCidr(_)));
}

#[test]
fn equal_objects_convert_to_equal_updates() {
    // The cache relies on this to drop no-op updates (e.g. after a relist).
    let a = convert(&knp(ingress(vec![], vec![tcp(80), tcp(81)]))).unwrap();
    let b = convert(&knp(ingress(vec![], vec![tcp(80), tcp(81)]))).unwrap();
    assert_eq!(a.encode(), b.encode());
}

#[test]
fn unparsable_rule_selectors_reject_only_their_policy() {
    // A rule selector that does not parse rejects its policy with reason bad_selector
    // (the metric label an operator sees); a valid policy next to it converts.
    let bad: CalicoObject<crd::GlobalNetworkPolicy> = calico(
        None,
        "bad",
        json!({"selector": "all()", "ingress": [{"action": "Deny", "source": {"selector": "app in {"}}]}),
    );
    let r = rejected(&bad);
    assert_eq!(r.error.reason(), "bad_selector");
    assert!(r.to_string().contains("bad"), "{r}");
    let good: CalicoObject<crd::GlobalNetworkPolicy> = calico(
        None,
        "good",
        json!({"selector": "all()", "ingress": [{"action": "Deny", "source": {"selector": "app == 'x'"}}]}),
    );
    assert!(convert(&good).is_ok());
}

#[test]
fn node_ipv4_annotation_carries_the_subnet() {
    let node = |annotation: &str| -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n", "annotations": {"projectcalico.org/IPv4Address": annotation}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.99.0.1"}]}
        }))
        .unwrap()
    };
    let Some(Value::Node(n)) = convert(&node("10.99.0.1/24")).unwrap().value else {
        panic!("not a node")
    };
    assert_eq!(n.ipv4_address, "10.99.0.1/24");
    assert_eq!(n.addresses, vec!["10.99.0.1"]);
    for bad in ["10.99.0.1", "10.99.0.1/33", "x/24"] {
        assert!(
            matches!(rejected(&node(bad)).error, ConvertError::BadCidr(_)),
            "{bad}"
        );
    }
}

// ---------------------------------------------------------------------------------
// The kind checklist: every resource converts, every kind comes from a resource
// ---------------------------------------------------------------------------------

/// A small valid object of `resource`, converted. The match has no catch-all arm: a new
/// [`crate::Resource`] does not compile here until it has a sample (and so a conversion
/// test), which is item 3 of "Adding a kind" in docs/architecture.md.
fn convert_sample(resource: crate::Resource) -> Update {
    use crate::Resource as R;
    let none = json!({});
    let converted = match resource {
        R::Pods => convert(&pod("x", "p")),
        R::Namespaces => convert(&Namespace {
            metadata: meta(None, "x", &[]),
            ..Default::default()
        }),
        R::ServiceAccounts => convert(&ServiceAccount {
            metadata: meta(Some("x"), "sa", &[]),
            ..Default::default()
        }),
        R::Nodes => convert(&Node {
            metadata: meta(None, "n1", &[]),
            ..Default::default()
        }),
        R::KubernetesNetworkPolicies => convert(&knp(ingress(vec![], vec![]))),
        R::NetworkPolicies => convert(&calico::<crd::NetworkPolicy>(Some("x"), "p", none)),
        R::GlobalNetworkPolicies => convert(&calico::<crd::GlobalNetworkPolicy>(None, "p", none)),
        R::GlobalNetworkSets => convert(&calico::<crd::GlobalNetworkSet>(None, "s", none)),
        R::NetworkSets => convert(&calico::<crd::NetworkSet>(Some("x"), "s", none)),
        R::HostEndpoints => convert(&calico::<crd::HostEndpoint>(
            None,
            "n1-eth0",
            json!({"node": "n1", "interfaceName": "eth0"}),
        )),
        R::IpPools => convert(&calico::<crd::IPPool>(
            None,
            "pool",
            json!({"cidr": "10.0.0.0/16"}),
        )),
        R::FelixConfigurations => {
            convert(&calico::<crd::FelixConfiguration>(None, "default", none))
        }
        R::ClusterInformations => {
            convert(&calico::<crd::ClusterInformation>(None, "default", none))
        }
    };
    converted.unwrap_or_else(|e| panic!("{resource:?}: {e}"))
}

#[test]
fn every_resource_converts_to_its_kind_and_every_kind_has_a_resource() {
    for resource in crate::Resource::ALL {
        let update = convert_sample(resource);
        assert_eq!(update.key.kind(), resource.model_kind(), "{resource:?}");
        assert!(
            update.value.is_some(),
            "{resource:?}: the sample gives a value"
        );
    }
    for kind in Kind::ALL {
        assert!(
            crate::Resource::ALL.iter().any(|r| r.model_kind() == kind),
            "{kind:?}: no watched resource converts into it (see \"Adding a kind\" in \
             docs/architecture.md)"
        );
    }
}

#[test]
fn dns_labels_and_port_names_are_checked() {
    let longest = "a".repeat(63);
    for good in ["a", "default", "kube-system", "0ab", longest.as_str()] {
        assert!(super::is_dns_label(good), "{good}");
    }
    let too_long = "a".repeat(64);
    for bad in ["", "-a", "a-", "Ab", "a.b", "a_b", too_long.as_str()] {
        assert!(!super::is_dns_label(bad), "{bad}");
    }
    assert!(super::is_port_name("http-alt"));
    for bad in ["8080", "sixteen-chars-xx", "-http"] {
        assert!(!super::is_port_name(bad), "{bad}");
    }
}
