//! Model fixtures: realistic endpoints, profiles, policies and nodes, built the same way
//! everywhere (tests, demo, load test) so no fixture is copy-pasted.

use std::collections::BTreeMap;

use typha_proto::{Key, Kind, Update, Value, pb};

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// A workload endpoint for pod `pod` in `ns` on `node`, with IP `10.<a>.<b>.<c>` from
/// `index`. `generation` varies the labels so updates are real changes.
pub fn endpoint(ns: &str, pod: &str, node: &str, index: u32, generation: u32) -> Update {
    let ip = format!(
        "10.{}.{}.{}/32",
        (index >> 16) & 0xff,
        (index >> 8) & 0xff,
        index & 0xff
    );
    let app = format!("app-{}", index % 50);
    let value = pb::WorkloadEndpoint {
        namespace: ns.to_string(),
        pod: pod.to_string(),
        node: node.to_string(),
        interface_name: format!(
            "cali{:011x}",
            u64::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20
        ),
        ip_nets: vec![ip],
        labels: labels(&[
            ("app", app),
            (
                "tier",
                ["web", "api", "db"][(index % 3) as usize].to_string(),
            ),
            ("version", format!("v{generation}")),
            (
                "pod-template-hash",
                format!("{:08x}", index.wrapping_mul(2_654_435_761)),
            ),
            ("projectcalico.org/namespace", ns.to_string()),
            ("projectcalico.org/orchestrator", "k8s".to_string()),
        ]),
        profile_ids: vec![format!("kns.{ns}"), format!("ksa.{ns}.default")],
        ports: vec![pb::NamedPort {
            name: "http".into(),
            protocol: pb::Protocol::Tcp as i32,
            port: 8080,
        }],
        service_account: "default".to_string(),
        mac: String::new(),
    };
    upsert(
        Kind::WorkloadEndpoint,
        ns,
        pod,
        Value::WorkloadEndpoint(value),
    )
}

/// A namespace profile `kns.<ns>`.
pub fn namespace_profile(ns: &str, team: &str) -> Update {
    let value = pb::Profile {
        labels: labels(&[
            ("pcns.projectcalico.org/name", ns.to_string()),
            ("pcns.team", team.to_string()),
        ]),
    };
    upsert(
        Kind::Profile,
        "",
        &format!("kns.{ns}"),
        Value::Profile(value),
    )
}

/// A node with a /24 pod CIDR.
pub fn node(index: u32) -> Update {
    let name = format!("node-{index}");
    let value = pb::Node {
        name: name.clone(),
        addresses: vec![format!("192.168.{}.{}", index / 250, index % 250 + 1)],
        pod_cidrs: vec![format!("10.{}.{}.0/24", (index >> 8) & 0xff, index & 0xff)],
        labels: labels(&[("kubernetes.io/hostname", name.clone())]),
        ipv4_address: format!("192.168.{}.{}", index / 250, index % 250 + 1),
    };
    upsert(Kind::Node, "", &name, Value::Node(value))
}

/// A namespaced Kubernetes network policy allowing `app` from the same namespace.
pub fn policy(ns: &str, name: &str, app: &str, port: u32) -> Update {
    let rule = pb::Rule {
        action: pb::Action::Allow as i32,
        protocol: pb::Protocol::Tcp as i32,
        source: Some(pb::EntityRule {
            selector: format!("projectcalico.org/namespace == '{ns}'"),
            ..Default::default()
        }),
        destination: Some(pb::EntityRule {
            ports: vec![pb::PortRange {
                first: port,
                last: port,
                name: String::new(),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = pb::Policy {
        namespace: ns.to_string(),
        order: 1000.0,
        has_order: true,
        selector: format!("projectcalico.org/namespace == '{ns}' && app == '{app}'"),
        inbound_rules: vec![rule],
        types: vec![pb::PolicyType::Ingress as i32],
        ..Default::default()
    };
    upsert(
        Kind::K8sNetworkPolicy,
        ns,
        &format!("knp.default.{name}"),
        Value::Policy(value),
    )
}

/// A deletion of the endpoint of `pod` in `ns`.
pub fn delete_endpoint(ns: &str, pod: &str) -> Update {
    Update::delete(key(Kind::WorkloadEndpoint, ns, pod))
}

fn key(kind: Kind, ns: &str, name: &str) -> Key {
    #[allow(clippy::expect_used)] // invariant: fixtures build keys of the right scope
    Key::new(kind, ns, name).expect("invariant: fixture keys are valid")
}

fn upsert(kind: Kind, ns: &str, name: &str, value: Value) -> Update {
    #[allow(clippy::expect_used)] // invariant: fixtures pair each kind with its value type
    Update::new(key(kind, ns, name), Some(value)).expect("invariant: fixture values match kinds")
}

/// A synthetic cluster: `nodes` nodes, `pods_per_node` endpoints each over `namespaces`
/// namespaces, a profile per namespace and `policies_per_namespace` policies.
pub fn cluster(
    nodes: u32,
    pods_per_node: u32,
    namespaces: u32,
    policies_per_namespace: u32,
) -> Vec<Update> {
    let mut updates = Vec::new();
    for ns in 0..namespaces {
        let name = format!("ns-{ns}");
        updates.push(namespace_profile(&name, &format!("team-{}", ns % 7)));
        for p in 0..policies_per_namespace {
            updates.push(policy(
                &name,
                &format!("allow-{p}"),
                &format!("app-{p}"),
                8080 + p,
            ));
        }
    }
    for n in 0..nodes {
        updates.push(node(n));
        for p in 0..pods_per_node {
            let index = n * pods_per_node + p;
            let ns = format!("ns-{}", index % namespaces.max(1));
            updates.push(endpoint(
                &ns,
                &format!("pod-{index}"),
                &format!("node-{n}"),
                index,
                0,
            ));
        }
    }
    updates
}

/// The pod name and namespace of endpoint `index` in [`cluster`].
pub fn pod_of(index: u32, namespaces: u32) -> (String, String) {
    (
        format!("ns-{}", index % namespaces.max(1)),
        format!("pod-{index}"),
    )
}
