//! Encapsulation per pool: VXLAN / IPIP modes (Never, Always, CrossSubnet), routes via
//! the tunnel devices, VXLAN peers, MTUs, and mode switches re-routing every node.

use super::*;
use crate::calc::tunnels::{IPIP_DEVICE, VXLAN_DEVICE, node_mac};
use crate::calc::{Route, RouteTarget};

fn node(name: &str, ip: &str, cidr: &str) -> Update {
    Update::new(
        Key::cluster(Kind::Node, name).unwrap(),
        Some(Value::Node(pb::Node {
            name: name.into(),
            addresses: vec![],
            pod_cidrs: vec![cidr.into()],
            labels: Default::default(),
            ipv4_address: ip.into(),
        })),
    )
    .unwrap()
}

fn pool(vxlan: &str, ipip: &str) -> Update {
    Update::new(
        Key::cluster(Kind::IpPool, "default").unwrap(),
        Some(Value::IpPool(pb::IpPool {
            cidr: "10.244.0.0/16".into(),
            vxlan_mode: vxlan.into(),
            ipip_mode: ipip.into(),
            ..Default::default()
        })),
    )
    .unwrap()
}

/// This node on 10.99.0.0/24; n2 on the same subnet, n3 on another.
fn calc_with(vxlan: &str, ipip: &str) -> Calc {
    let mut calc = Calc::new(config(CalcMode::Networking));
    calc.apply(&[
        node(NODE, "10.99.0.1/24", "10.244.1.0/24"),
        node("n2", "10.99.0.2/24", "10.244.2.0/24"),
        node("n3", "10.99.1.3/24", "10.244.3.0/24"),
        pool(vxlan, ipip),
    ]);
    calc
}

fn route(d: &Desired, dst: &str) -> RouteTarget {
    d.routes
        .iter()
        .find(|r| r.dst == dst)
        .map(|r: &Route| r.target.clone())
        .unwrap_or_else(|| panic!("no route to {dst}"))
}

fn vxlan(gateway: &str) -> RouteTarget {
    RouteTarget::Tunnel {
        device: VXLAN_DEVICE.into(),
        gateway: gateway.parse().unwrap(),
    }
}

#[test]
fn vxlan_always_encapsulates_toward_every_node() {
    let d = calc_with("Always", "Never").desired();
    assert_eq!(route(&d, "10.244.2.0/24"), vxlan("10.244.2.0"));
    assert_eq!(route(&d, "10.244.3.0/24"), vxlan("10.244.3.0"));
    let dev = d.tunnels.vxlan.as_ref().expect("a vxlan device");
    assert_eq!((dev.vni, dev.port, dev.mtu), (4096, 4789, 1450));
    assert_eq!(dev.local, "10.99.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(dev.mac, node_mac(NODE));
    let peers: Vec<(String, String, String)> = d
        .tunnels
        .vxlan_peers
        .iter()
        .map(|p| (p.node_ip.to_string(), p.mac.clone(), p.gateway.to_string()))
        .collect();
    assert_eq!(
        peers,
        vec![
            ("10.99.0.2".into(), node_mac("n2"), "10.244.2.0".into()),
            ("10.99.1.3".into(), node_mac("n3"), "10.244.3.0".into()),
        ]
    );
    assert_eq!(d.tunnels.ipip_mtu, None);
    assert_ne!(node_mac("n2"), node_mac("n3"));
}

#[test]
fn cross_subnet_encapsulates_only_outside_the_subnet() {
    let d = calc_with("CrossSubnet", "Never").desired();
    assert_eq!(
        route(&d, "10.244.2.0/24"),
        RouteTarget::Gateway("10.99.0.2".parse().unwrap())
    );
    assert_eq!(route(&d, "10.244.3.0/24"), vxlan("10.244.3.0"));
    assert_eq!(d.tunnels.vxlan_peers.len(), 1);
}

#[test]
fn ipip_routes_via_the_node_address_on_tunl0() {
    let d = calc_with("Never", "Always").desired();
    for (dst, gw) in [
        ("10.244.2.0/24", "10.99.0.2"),
        ("10.244.3.0/24", "10.99.1.3"),
    ] {
        assert_eq!(
            route(&d, dst),
            RouteTarget::Tunnel {
                device: IPIP_DEVICE.into(),
                gateway: gw.parse().unwrap()
            }
        );
    }
    assert_eq!(d.tunnels.ipip_mtu, Some(1480));
    assert!(d.tunnels.vxlan.is_none());
    let d = calc_with("Never", "CrossSubnet").desired();
    assert_eq!(
        route(&d, "10.244.2.0/24"),
        RouteTarget::Gateway("10.99.0.2".parse().unwrap())
    );
    assert!(matches!(
        route(&d, "10.244.3.0/24"),
        RouteTarget::Tunnel { .. }
    ));
}

#[test]
fn mode_switches_reroute_without_restart() {
    let mut calc = calc_with("Never", "Never");
    let plain = calc.desired();
    assert_eq!(
        route(&plain, "10.244.3.0/24"),
        RouteTarget::Gateway("10.99.1.3".parse().unwrap())
    );
    assert_eq!(plain.tunnels, Default::default());
    for (vx, ip) in [
        ("Always", "Never"),
        ("Never", "Always"),
        ("CrossSubnet", "Never"),
    ] {
        calc.apply(&[pool(vx, ip)]);
        assert_eq!(calc.desired(), calc_with(vx, ip).desired(), "{vx}/{ip}");
    }
    calc.apply(&[pool("Never", "Never")]);
    assert_eq!(
        calc.desired(),
        plain,
        "back to plain routes, no tunnel left"
    );
    // A node leaving takes its routes and peer with it.
    calc.apply(&[pool("Always", "Never")]);
    calc.apply(&[Update::delete(Key::cluster(Kind::Node, "n3").unwrap())]);
    let d = calc.desired();
    assert!(d.routes.iter().all(|r| r.dst != "10.244.3.0/24"));
    assert_eq!(d.tunnels.vxlan_peers.len(), 1);
}

#[test]
fn without_a_subnet_cross_subnet_encapsulates() {
    let mut calc = Calc::new(config(CalcMode::Networking));
    calc.apply(&[
        node(NODE, "10.99.0.1", "10.244.1.0/24"),
        node("n2", "10.99.0.2", "10.244.2.0/24"),
        pool("CrossSubnet", "Never"),
    ]);
    assert_eq!(route(&calc.desired(), "10.244.2.0/24"), vxlan("10.244.2.0"));
}

#[test]
fn dual_stack_nodes_route_ipv6_pod_cidrs_plainly_via_their_ipv6_address() {
    // Both pools ask for VXLAN; IPv6 encapsulation is not built, so the IPv6 pod CIDR
    // goes via the peer's first IPv6 address while the IPv4 one is encapsulated.
    let dual = |name: &str, v4: &str, v6: &str, n: u8| {
        Update::new(
            Key::cluster(Kind::Node, name).unwrap(),
            Some(Value::Node(pb::Node {
                name: name.into(),
                addresses: vec![v6.into(), v4.into()],
                pod_cidrs: vec![format!("10.244.{n}.0/24"), format!("fd00:10:244:{n}::/64")],
                labels: Default::default(),
                ipv4_address: format!("{v4}/24"),
            })),
        )
        .unwrap()
    };
    let pool6 = Update::new(
        Key::cluster(Kind::IpPool, "v6").unwrap(),
        Some(Value::IpPool(pb::IpPool {
            cidr: "fd00:10:244::/48".into(),
            vxlan_mode: "Always".into(),
            ..Default::default()
        })),
    )
    .unwrap();
    let mut calc = Calc::new(config(CalcMode::Networking));
    calc.apply(&[
        dual(NODE, "10.99.0.1", "fd99::1", 1),
        dual("n2", "10.99.0.2", "fd99::2", 2),
        pool("Always", "Never"),
        pool6,
    ]);
    let d = calc.desired();
    assert_eq!(route(&d, "10.244.2.0/24"), vxlan("10.244.2.0"));
    assert_eq!(
        route(&d, "fd00:10:244:2::/64"),
        RouteTarget::Gateway("fd99::2".parse().unwrap())
    );
    let peers: Vec<String> = d
        .tunnels
        .vxlan_peers
        .iter()
        .map(|p| p.node_ip.to_string())
        .collect();
    assert_eq!(peers, vec!["10.99.0.2"], "no IPv6 VXLAN peer");
}
