//! Host endpoints: the node's own interfaces under policy, as Calico's HostEndpoint.
//!
//! A HostEndpoint of this node names an interface (`eth0`) or all of them (`*`). A
//! (global) policy whose selector matches the endpoint's labels applies to traffic to
//! the host arriving on that interface (inbound rules, filter INPUT) and from the host
//! leaving through it (outbound rules, OUTPUT); with `applyOnForward` also to traffic
//! the host forwards in or out through it (FORWARD). Policies are tiered and ordered as
//! for workloads. When no policy decides (none applies, or every tier passed) the
//! endpoint's profiles do: `projectcalico-default-allow` allows, anything else denies
//! (Calico's default deny for host endpoints). Forwarded traffic is allowed when no
//! `applyOnForward` policy applies. Traffic of workload interfaces never reaches these
//! chains (the workload rules come first), nor does loopback.
//!
//! Failsafe (before any host endpoint policy, only while the node has host endpoints):
//! inbound connections to the configured host ports and outbound connections to the
//! configured remote ports are accepted, as are established flows and VXLAN datagrams
//! from and to this node's VXLAN peers, so a policy mistake never cuts the node off its
//! API server, SSH or the pod network.
//!
//! Not supported (counted in `felix_calc_unsupported_host_policies_total{what}` and
//! logged once per policy update): `preDNAT` and `doNotTrack` policies (they would need
//! the mangle and raw tables, which the agent does not program) are ignored; host
//! endpoints without an interface name (`expectedIPs` only) get no chains.
//!
//! With `auto_host_endpoints` every node gets an all-interfaces endpoint named
//! `<node>-auto-hep` with the node's labels, addresses and the default-allow profile
//! (Calico kube-controllers' automatic host endpoints), so rules can select nodes.
//!
//! Host endpoints are also labelled objects for rule selectors (their expected IPs
//! become ipset members), so a rule can admit "cluster nodes".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use netmodel::selector::Selector;
use typha_proto::{Key, Kind, pb};

use super::index::Index;
use super::names::{FORWARD, INPUT, OUTPUT, hash_hex};
use super::objects::NewObj;
use super::policy::{PolicyState, SortKey};
use super::render::endpoint_rules;
use super::{Chains, Family};

/// The profile that allows what no policy decided (Calico's name).
pub const DEFAULT_ALLOW_PROFILE: &str = "projectcalico-default-allow";
/// The interface name of an all-interfaces host endpoint.
pub const ALL_INTERFACES: &str = "*";
/// Dispatch of traffic to the host, by inbound interface.
pub const FROM_HOST_DISPATCH: &str = "cali-from-host-endpoint";
/// Dispatch of traffic from the host, by outbound interface.
pub const TO_HOST_DISPATCH: &str = "cali-to-host-endpoint";
/// Dispatch of forwarded traffic, by inbound interface.
pub const FROM_HOST_FORWARD: &str = "cali-from-hep-forward";
/// Dispatch of forwarded traffic, by outbound interface.
pub const TO_HOST_FORWARD: &str = "cali-to-hep-forward";
/// Inbound failsafe ports.
pub const FAILSAFE_IN: &str = "cali-failsafe-in";
/// Outbound failsafe ports.
pub const FAILSAFE_OUT: &str = "cali-failsafe-out";
/// The VXLAN port accepted from and to VXLAN peers.
const VXLAN_PORT: u16 = super::tunnels::VXLAN_PORT;

/// A failsafe port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailsafeProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// One failsafe port: `tcp:22`, `udp:68` (a bare number is TCP, as in Calico).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailsafePort {
    /// The protocol.
    pub protocol: FailsafeProtocol,
    /// The port.
    pub port: u16,
}

/// A failsafe list that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FailsafeError {
    /// An entry is not `[tcp|udp|sctp:]<port 1-65535>`.
    #[error("bad failsafe port {0:?} (want [tcp|udp|sctp:]PORT)")]
    BadPort(String),
}

impl FromStr for FailsafePort {
    type Err = FailsafeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || FailsafeError::BadPort(text.to_string());
        let (proto, port) = text.trim().rsplit_once(':').unwrap_or(("tcp", text.trim()));
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => FailsafeProtocol::Tcp,
            "udp" => FailsafeProtocol::Udp,
            "sctp" => FailsafeProtocol::Sctp,
            _ => return Err(bad()),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(FailsafePort { protocol, port })
    }
}

impl FailsafePort {
    fn rule(&self, side: &str) -> String {
        let p = match self.protocol {
            FailsafeProtocol::Tcp => "tcp",
            FailsafeProtocol::Udp => "udp",
            FailsafeProtocol::Sctp => "sctp",
        };
        format!("-p {p} -m {p} --{side} {} -j ACCEPT", self.port)
    }
}

/// A comma-separated failsafe list (`tcp:22,udp:68`; `none` for no port), as a flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailsafeList(pub Vec<FailsafePort>);

impl FromStr for FailsafeList {
    type Err = FailsafeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_failsafe(text).map(FailsafeList)
    }
}

/// Parses a comma-separated failsafe list; `none` (or empty) is no port.
pub fn parse_failsafe(text: &str) -> Result<Vec<FailsafePort>, FailsafeError> {
    if text.trim().is_empty() || text.trim().eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    text.split(',').map(FailsafePort::from_str).collect()
}

/// Calico's default inbound failsafe ports: SSH, DHCP, BGP, etcd, typha, the API
/// server, etcd (legacy ports).
pub const DEFAULT_FAILSAFE_INBOUND: &str =
    "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";
/// Calico's default outbound failsafe ports: DNS, DHCP, BGP, etcd, typha, the API
/// server, etcd (legacy ports).
pub const DEFAULT_FAILSAFE_OUTBOUND: &str =
    "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";

/// Host endpoint settings of the calculation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Host ports always open to inbound connections while host endpoints exist.
    pub failsafe_inbound: Vec<FailsafePort>,
    /// Remote ports the host may always connect to while host endpoints exist.
    pub failsafe_outbound: Vec<FailsafePort>,
    /// Give every node an all-interfaces host endpoint (see the module docs).
    pub auto_host_endpoints: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        let parse = |t| parse_failsafe(t).unwrap_or_default();
        HostConfig {
            failsafe_inbound: parse(DEFAULT_FAILSAFE_INBOUND),
            failsafe_outbound: parse(DEFAULT_FAILSAFE_OUTBOUND),
            auto_host_endpoints: false,
        }
    }
}

/// A local host endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostEp {
    iface: String,
    labels: BTreeMap<String, String>,
    default_allow: bool,
}

/// The host endpoint state of the calculation.
pub(super) struct Hosts {
    /// Settings.
    pub config: HostConfig,
    node: String,
    endpoints: BTreeMap<Key, HostEp>,
    /// The policies with `applyOnForward` (their selectors are the policy state's).
    forward: HashSet<Key>,
    /// Policy -> the local host endpoints it selects (only non-empty entries).
    selects: BTreeMap<Key, BTreeSet<Key>>,
}

/// The key of node `node`'s automatic host endpoint.
fn auto_key(node: &str) -> Option<Key> {
    Key::cluster(Kind::HostEndpoint, format!("{node}-auto-hep")).ok()
}

/// The automatic host endpoint of `node`.
fn auto_endpoint(node: &pb::Node) -> pb::HostEndpoint {
    let mut ips: Vec<String> = super::tunnels::node_addresses(node)
        .iter()
        .map(ToString::to_string)
        .collect();
    ips.dedup();
    pb::HostEndpoint {
        node: node.name.clone(),
        interface_name: ALL_INTERFACES.into(),
        expected_ips: ips,
        labels: node.labels.clone(),
        profile_ids: vec![DEFAULT_ALLOW_PROFILE.into()],
        ports: Vec::new(),
    }
}

fn unsupported(key: &Key, what: &'static str) {
    metrics::counter!("felix_calc_unsupported_host_policies_total", "what" => what).increment(1);
    tracing::warn!(policy = %key, what, "policy not applied to host endpoints (unsupported)");
}

impl Hosts {
    /// No host endpoints yet.
    pub fn new(node: &str, config: HostConfig) -> Hosts {
        Hosts {
            config,
            node: node.to_string(),
            endpoints: BTreeMap::new(),
            forward: HashSet::new(),
            selects: BTreeMap::new(),
        }
    }

    /// Whether this node has host endpoints (the tables change when this flips).
    pub fn any(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Folds a HostEndpoint update in (also into `index` for rule selectors); returns
    /// whether this node's host endpoints changed (the engine then calls
    /// [`Hosts::reselect`] for every policy).
    pub fn set_endpoint(
        &mut self,
        key: &Key,
        hep: Option<&pb::HostEndpoint>,
        index: &mut Index,
    ) -> bool {
        let obj = hep.map(NewObj::host_endpoint);
        index.set_object(key, obj.as_ref());
        let local = hep.filter(|h| h.node == self.node).and_then(|h| {
            let usable = h.interface_name == ALL_INTERFACES
                || super::names::usable_interface(&h.interface_name);
            if !usable {
                tracing::warn!(endpoint = %key, iface = h.interface_name, "host endpoint without a usable interface name: no chains");
            }
            usable.then(|| HostEp {
                iface: h.interface_name.clone(),
                labels: h.labels.clone(),
                default_allow: h.profile_ids.iter().any(|p| p == DEFAULT_ALLOW_PROFILE),
            })
        });
        let before = self.endpoints.get(key).cloned();
        match local {
            Some(ep) => self.endpoints.insert(key.clone(), ep),
            None => self.endpoints.remove(key),
        };
        before.as_ref() != self.endpoints.get(key)
    }

    /// Folds a Node update in for automatic host endpoints; returns whether this node's
    /// host endpoints changed (never without automatic host endpoints).
    pub fn set_node(&mut self, name: &str, node: Option<&pb::Node>, index: &mut Index) -> bool {
        if !self.config.auto_host_endpoints {
            return false;
        }
        let Some(key) = auto_key(name) else {
            return false;
        };
        let hep = node.map(auto_endpoint);
        self.set_endpoint(&key, hep.as_ref(), index)
    }

    /// Folds a policy update in, `selector` being the policy state's (`None`: it selects
    /// nothing); returns whether it selects a local host endpoint.
    pub fn set_policy(
        &mut self,
        key: &Key,
        policy: Option<&pb::Policy>,
        selector: Option<&Selector>,
    ) -> bool {
        self.forward.remove(key);
        match policy {
            // The policy state has no selector for these (nor for an unparsable one,
            // which it counted already).
            Some(p) if p.pre_dnat => unsupported(key, "preDNAT"),
            Some(p) if p.do_not_track => unsupported(key, "doNotTrack"),
            Some(p) if p.apply_on_forward => {
                self.forward.insert(key.clone());
            }
            _ => {}
        }
        self.reselect(key, selector)
    }

    /// Recomputes which local host endpoints policy `key` (whose state has `selector`)
    /// selects; returns whether it selects any.
    pub fn reselect(&mut self, key: &Key, selector: Option<&Selector>) -> bool {
        let selected: BTreeSet<Key> = match selector {
            Some(selector) => self
                .endpoints
                .iter()
                .filter(|(_, ep)| selector.matches(&|k: &str| ep.labels.get(k).map(String::as_str)))
                .map(|(k, _)| k.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        if selected.is_empty() {
            self.selects.remove(key);
            false
        } else {
            self.selects.insert(key.clone(), selected);
            true
        }
    }
}

/// The host endpoint chain of `kind` (`fh`, `th`, `fhfw`, `thfw`) for interface
/// `iface` (`*`: `-all`); hashed when too long.
pub fn host_chain(kind: &str, iface: &str) -> String {
    let name = if iface == ALL_INTERFACES {
        "-all"
    } else {
        iface
    };
    let chain = format!("cali-{kind}-{name}");
    if chain.len() <= super::names::MAX_CHAIN {
        chain
    } else {
        format!("cali-{kind}-{}", hash_hex(iface, 12))
    }
}

/// Per-interface (tier, chain) lists: inbound, outbound, forward in, forward out.
type Lists<'a> = [Vec<(&'a str, &'a str)>; 4];

/// What the host part of the filter table is built from.
pub(super) struct HostInput<'a> {
    /// The host endpoint state.
    pub hosts: &'a Hosts,
    /// Policies by key.
    pub policies: &'a HashMap<Key, Box<PolicyState>>,
    /// Policies in order.
    pub order: &'a BTreeSet<SortKey>,
    /// This node's VXLAN peers' addresses.
    pub vxlan_peers: Vec<std::net::IpAddr>,
}

/// Adds the host endpoint chains of `family` to `chains` (whose root chains exist);
/// nothing without local host endpoints.
pub(super) fn render(family: Family, input: &HostInput<'_>, chains: &mut Chains) {
    let hosts = input.hosts;
    if !hosts.any() {
        return;
    }
    // One endpoint per interface (the first by key); `*` last in every dispatch.
    let mut by_iface: BTreeMap<&str, &Key> = BTreeMap::new();
    for (key, ep) in &hosts.endpoints {
        by_iface.entry(ep.iface.as_str()).or_insert(key);
    }
    let mut lists = policy_lists(family, input, chains);
    let mut dispatch: [Vec<String>; 4] = Default::default();
    let ordered = by_iface
        .iter()
        .filter(|(i, _)| **i != ALL_INTERFACES)
        .chain(by_iface.iter().filter(|(i, _)| **i == ALL_INTERFACES));
    for (iface, key) in ordered {
        let ep = &hosts.endpoints[*key];
        let l = lists.remove(key).unwrap_or_default();
        let kinds = ["fh", "th", "fhfw", "thfw"];
        for (i, (kind, list)) in kinds.iter().zip(l.iter()).enumerate() {
            let chain = host_chain(kind, iface);
            let mut rules = endpoint_rules(list);
            // Forwarded traffic no applyOnForward policy covers is allowed.
            let forward_free = i >= 2 && list.is_empty();
            if !ep.default_allow && !forward_free {
                rules.push("-j DROP".into());
            }
            chains.insert(chain.clone(), rules);
            let side = if i % 2 == 0 { "-i" } else { "-o" };
            dispatch[i].push(match *iface {
                ALL_INTERFACES => format!("-g {chain}"),
                name => format!("{side} {name} -g {chain}"),
            });
        }
    }
    let names = [
        FROM_HOST_DISPATCH,
        TO_HOST_DISPATCH,
        FROM_HOST_FORWARD,
        TO_HOST_FORWARD,
    ];
    for (name, rules) in names.iter().zip(dispatch) {
        chains.insert(name.to_string(), rules);
    }
    root_rules(family, input, chains);
}

/// Per local host endpoint, the (tier, chain) of the policies selecting it, in order;
/// adds those policies' chains to `chains`.
fn policy_lists<'a>(
    family: Family,
    input: &HostInput<'a>,
    chains: &mut Chains,
) -> BTreeMap<&'a Key, Lists<'a>> {
    let hosts = input.hosts;
    let mut lists: BTreeMap<&Key, Lists<'_>> = BTreeMap::new();
    for sort in input.order {
        let (Some(selected), Some(p)) =
            (hosts.selects.get(&sort.key), input.policies.get(&sort.key))
        else {
            continue;
        };
        let apply_on_forward = hosts.forward.contains(&sort.key);
        let Some(fc) = p.insert_chains(family, chains) else {
            continue;
        };
        for ep in selected {
            let l = lists.entry(ep).or_default();
            let (tier, cin, cout) = (
                sort.tier.as_str(),
                p.chain_in.as_str(),
                p.chain_out.as_str(),
            );
            if fc.inbound.is_some() {
                l[0].push((tier, cin));
                if apply_on_forward {
                    l[2].push((tier, cin));
                }
            }
            if fc.outbound.is_some() {
                l[1].push((tier, cout));
                if apply_on_forward {
                    l[3].push((tier, cout));
                }
            }
        }
    }
    lists
}

/// The host part of the root chains, after the workload rules.
fn root_rules(family: Family, input: &HostInput<'_>, chains: &mut Chains) {
    let config = &input.hosts.config;
    let peers: Vec<String> = input
        .vxlan_peers
        .iter()
        .filter(|a| family == Family::V4 && a.is_ipv4())
        .map(ToString::to_string)
        .collect();
    let established = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string();
    let vxlan = |side: &str| {
        peers
            .iter()
            .map(|p| format!("-p udp -m udp --dport {VXLAN_PORT} {side} {p} -j ACCEPT"))
            .collect::<Vec<_>>()
    };
    let mut host_in = vec![established.clone(), "-i lo -j RETURN".into()];
    host_in.extend(vxlan("-s"));
    host_in.push(format!("-j {FAILSAFE_IN}"));
    host_in.push(format!("-j {FROM_HOST_DISPATCH}"));
    let mut host_out = vec![established, "-o lo -j RETURN".into()];
    host_out.extend(vxlan("-d"));
    host_out.push(format!("-j {FAILSAFE_OUT}"));
    host_out.push(format!("-j {TO_HOST_DISPATCH}"));
    let forward = [
        format!("-j {FROM_HOST_FORWARD}"),
        format!("-j {TO_HOST_FORWARD}"),
    ];
    let failsafe = |ports: &[FailsafePort], side| ports.iter().map(|p| p.rule(side)).collect();
    chains.insert(
        FAILSAFE_IN.into(),
        failsafe(&config.failsafe_inbound, "dport"),
    );
    chains.insert(
        FAILSAFE_OUT.into(),
        failsafe(&config.failsafe_outbound, "dport"),
    );
    for (root, extra) in [
        (INPUT, host_in),
        (OUTPUT, host_out),
        (FORWARD, forward.to_vec()),
    ] {
        chains.entry(root.into()).or_default().extend(extra);
    }
}
