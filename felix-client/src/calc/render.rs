//! Assembles the tables of one family from the calculation's state: the root chains,
//! the dispatch chains, one chain per local endpoint and direction, the active
//! policies' chains, and the NAT chain.
//!
//! Packet path (filter): `cali-FORWARD` accepts established flows, drops invalid ones,
//! sends traffic from a workload interface (`<prefix>+` for each configured prefix,
//! `cali+` by default) through `cali-from-wl-dispatch` (the source endpoint's egress
//! policy) and traffic to one through `cali-to-wl-dispatch` (the destination's ingress
//! policy), then accepts. Dispatch chains `goto` the endpoint chain of the exact
//! interface and drop any other workload interface. Invariant: an endpoint chain either drops or returns, and returns only when
//! the packet is allowed, so "came back" means "allowed".
//!
//! Endpoint chain with policies: clear the accept and pass bits, then per tier jump to
//! each policy's chain while no policy of the tier passed, returning as soon as one
//! accepted; at the end of a tier drop unless a policy passed. After the last tier the
//! chain returns (the namespace profile allows, as in Calico's Kubernetes profiles).
//! Without policies in a direction the chain is empty: allowed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use typha_proto::{Key, pb};

use super::engine::Local;
use super::names::{
    Dir, FORWARD, FROM_WL_DISPATCH, INPUT, MARK_ACCEPT, MARK_PASS, OUTPUT, POSTROUTING,
    TO_WL_DISPATCH, all_pools_set, endpoint_chain, masq_pools_set,
};
use super::objects::Net;
use super::policy::{PolicyState, SortKey};
use super::{CalcMode, Chains, Family, IpSet, IpSetKind};

/// What the filter table is built from.
pub(super) struct FilterInput<'a> {
    /// Local endpoints.
    pub local: &'a BTreeMap<Key, Local>,
    /// Policies by key.
    pub policies: &'a HashMap<Key, Box<PolicyState>>,
    /// Policies in order.
    pub order: &'a BTreeSet<SortKey>,
    /// Workload interface prefixes.
    pub prefixes: &'a [String],
}

/// `rules` once per prefix, `{if}` standing for `<prefix>+`, rule by rule (all
/// prefixes' first rule, then all prefixes' second rule, ...), so every stage applies
/// to every workload interface before the next.
fn per_prefix(prefixes: &[String], rules: &[&str]) -> Vec<String> {
    rules
        .iter()
        .flat_map(|r| {
            prefixes
                .iter()
                .map(move |p| r.replace("{if}", &format!("{p}+")))
        })
        .collect()
}

fn root_chains(chains: &mut Chains, prefixes: &[String]) {
    let mut forward = vec![
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
        "-m conntrack --ctstate INVALID -j DROP".to_string(),
    ];
    forward.extend(per_prefix(
        prefixes,
        &[
            &format!("-i {{if}} -j {FROM_WL_DISPATCH}"),
            &format!("-o {{if}} -j {TO_WL_DISPATCH}"),
            "-i {if} -j ACCEPT",
            "-o {if} -j ACCEPT",
        ],
    ));
    chains.insert(FORWARD.into(), forward);
    // Kubernetes NetworkPolicy: traffic between a pod and the node it runs on is always
    // allowed (kubelet probes, node-local agents), whatever policy selects the pod.
    chains.insert(
        INPUT.into(),
        per_prefix(
            prefixes,
            &[
                "-i {if} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-i {if} -m conntrack --ctstate INVALID -j DROP",
                "-i {if} -j ACCEPT",
            ],
        ),
    );
    chains.insert(
        OUTPUT.into(),
        per_prefix(
            prefixes,
            &[
                "-o {if} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-o {if} -m conntrack --ctstate INVALID -j DROP",
                "-o {if} -j ACCEPT",
            ],
        ),
    );
}

/// The rules of one endpoint chain, given its policies' (tier, chain) in order.
pub(super) fn endpoint_rules(policies: &[(&str, &str)]) -> Vec<String> {
    if policies.is_empty() {
        return Vec::new();
    }
    let both = MARK_ACCEPT | MARK_PASS;
    let mut rules = vec![format!("-j MARK --set-xmark 0x0/{both:#x}")];
    let mut i = 0;
    while i < policies.len() {
        let tier = policies[i].0;
        if i > 0 {
            rules.push(format!("-j MARK --set-xmark 0x0/{MARK_PASS:#x}"));
        }
        while i < policies.len() && policies[i].0 == tier {
            rules.push(format!(
                "-m mark --mark 0x0/{MARK_PASS:#x} -j {}",
                policies[i].1
            ));
            rules.push(format!(
                "-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j RETURN"
            ));
            i += 1;
        }
        rules.push(format!("-m mark --mark 0x0/{MARK_PASS:#x} -j DROP"));
    }
    rules
}

/// The filter table of `family`.
pub(super) fn filter_table(family: Family, input: &FilterInput<'_>) -> Chains {
    let mut chains = Chains::new();
    root_chains(&mut chains, input.prefixes);
    // (tier, chain) per local endpoint and direction, in policy order.
    type Lists<'a> = BTreeMap<&'a Key, [Vec<(&'a str, &'a str)>; 2]>;
    let mut lists: Lists<'_> = BTreeMap::new();
    for sort in input.order {
        let Some(p) = input.policies.get(&sort.key) else {
            continue;
        };
        if p.local.is_empty() {
            continue;
        }
        let Some(fc) = p.insert_chains(family, &mut chains) else {
            continue;
        };
        for ep in &p.local {
            let entry = lists.entry(ep).or_default();
            if fc.inbound.is_some() {
                entry[0].push((&sort.tier, &p.chain_in));
            }
            if fc.outbound.is_some() {
                entry[1].push((&sort.tier, &p.chain_out));
            }
        }
    }
    let mut by_iface: BTreeMap<&str, &Key> = BTreeMap::new();
    for (key, local) in input.local {
        by_iface.entry(local.iface.as_str()).or_insert(key);
    }
    let mut from_dispatch = Vec::new();
    let mut to_dispatch = Vec::new();
    for (iface, key) in by_iface {
        let tw = endpoint_chain(Dir::Ingress, iface);
        let fw = endpoint_chain(Dir::Egress, iface);
        let [ingress, egress] = lists.remove(key).unwrap_or_default();
        chains.insert(tw.clone(), endpoint_rules(&ingress));
        chains.insert(fw.clone(), endpoint_rules(&egress));
        from_dispatch.push(format!("-i {iface} -g {fw}"));
        to_dispatch.push(format!("-o {iface} -g {tw}"));
    }
    from_dispatch.push("-j DROP".into());
    to_dispatch.push("-j DROP".into());
    chains.insert(FROM_WL_DISPATCH.into(), from_dispatch);
    chains.insert(TO_WL_DISPATCH.into(), to_dispatch);
    chains
}

/// The pool sets and NAT chain of `family`.
pub(super) fn nat(
    family: Family,
    mode: CalcMode,
    pools: &BTreeMap<String, pb::IpPool>,
    cluster_cidrs: &[String],
    sets: &mut BTreeMap<String, IpSet>,
) -> Chains {
    let mut chains = Chains::new();
    chains.insert(POSTROUTING.into(), Vec::new());
    if mode != CalcMode::Networking {
        return chains;
    }
    let mut masq = BTreeSet::new();
    let mut all = BTreeSet::new();
    let mut everything = false;
    for pool in pools.values() {
        let Some(net) = Net::parse(&pool.cidr).filter(|n| n.family == family) else {
            continue;
        };
        everything |= net.prefix == 0;
        all.extend(net.hash_net_members());
        if pool.nat_outgoing && !pool.disabled {
            masq.extend(net.hash_net_members());
        }
    }
    for net in cluster_cidrs.iter().filter_map(|c| Net::parse(c)) {
        if net.family == family {
            everything |= net.prefix == 0;
            all.extend(net.hash_net_members());
        }
    }
    if masq.is_empty() || everything {
        return chains;
    }
    let (masq_name, all_name) = (masq_pools_set(family), all_pools_set(family));
    let rule = format!(
        "-m set --match-set {masq_name} src -m set ! --match-set {all_name} dst -j MASQUERADE"
    );
    chains.insert(POSTROUTING.into(), vec![rule]);
    for (name, members) in [(masq_name, masq), (all_name, all)] {
        sets.insert(
            name,
            IpSet {
                kind: IpSetKind::Net,
                family,
                members: Arc::new(members),
            },
        );
    }
    chains
}
