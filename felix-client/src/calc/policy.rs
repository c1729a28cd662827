//! One policy as calc keeps it: parsed selector, types, sort position, and its chains
//! rendered once per family (a policy's chains depend on the policy alone, so they are
//! rendered when it changes or becomes active, never when endpoints change). Inactive
//! policies keep only their encoded form (see [`PolicyState`]).

use std::cmp::Ordering;
use std::collections::BTreeSet;

use netmodel::selector::Selector;
use prost::Message;
use typha_proto::{Key, pb};

use super::names::{Dir, policy_chain};
use super::rules::{BadSelector, RenderContext, parse_selector, render_rules};
use super::sets::SetSpec;
use super::{Chains, Family};

/// A policy's `order` with Calico's rule: no order sorts after every order.
#[derive(Clone, Copy, Debug)]
pub(super) struct Order(pub f64);

impl PartialEq for Order {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Order {}
impl PartialOrd for Order {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Order {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Where a policy sorts: tiers by name with `default` last (the model carries no tier
/// orders), then order ascending, then name, namespace and kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SortKey {
    /// `false` for named tiers, `true` for `default` (so it sorts last).
    pub default_tier: bool,
    /// The tier's name.
    pub tier: String,
    /// The order.
    pub order: Order,
    /// The key, for the tie-break (name first).
    pub name: String,
    /// Namespace tie-break.
    pub namespace: String,
    /// The full key.
    pub key: Key,
}

/// The rendered chains of one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct FamilyChains {
    /// Inbound rules (when the policy has the Ingress type).
    pub inbound: Option<Vec<String>>,
    /// Outbound rules (when the policy has the Egress type).
    pub outbound: Option<Vec<String>>,
}

/// What a policy renders to: its chains per family and the ipsets its rules reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Rendered {
    /// IPv4 chains.
    pub v4: FamilyChains,
    /// IPv6 chains.
    pub v6: FamilyChains,
    /// The ipsets its rules reference (both families).
    pub sets: BTreeSet<SetSpec>,
}

/// One policy. Only an active policy (one selecting a local workload or host endpoint)
/// keeps its rendered
/// chains and sets; an inactive one keeps the policy as received, encoded, and renders
/// it again when it becomes active (most of a large cluster's policies select nothing
/// on a given node).
pub(super) struct PolicyState {
    /// Sort position.
    pub sort: SortKey,
    /// Endpoints it applies to; `None` = none (unparsable selector, or a policy for
    /// host endpoints only).
    pub selector: Option<Selector>,
    /// Chain names.
    pub chain_in: String,
    /// Chain names.
    pub chain_out: String,
    /// The policy's protobuf encoding, to render it again.
    source: Box<[u8]>,
    /// Its chains and sets, kept while it is active.
    rendered: Option<Box<Rendered>>,
    /// Local endpoints it selects.
    pub local: BTreeSet<Key>,
    /// Whether it selects a local host endpoint (see `hosts`).
    pub hosts: bool,
}

impl PolicyState {
    /// Builds the state of `policy` stored under `key`, rendered (reporting invalid
    /// selectors once); the caller drops the rendering if the policy is inactive.
    pub fn new(key: &Key, policy: &pb::Policy) -> PolicyState {
        let selector = match parse_selector(&policy.selector) {
            Ok(s) => Some(s.unwrap_or(Selector::All)),
            Err(e) => {
                invalid_selector(key, "policy", &e);
                None
            }
        };
        // Workload endpoints ignore host-endpoint-only policies, as Calico does.
        let selector = selector.filter(|_| !policy.pre_dnat && !policy.do_not_track);
        let (rendered, bad) = render(policy, selector.as_ref());
        for e in &bad {
            invalid_selector(key, "rule", e);
        }
        PolicyState {
            sort: sort_key(key, policy),
            selector,
            chain_in: policy_chain(Dir::Ingress, key),
            chain_out: policy_chain(Dir::Egress, key),
            source: policy.encode_to_vec().into_boxed_slice(),
            rendered: Some(Box::new(rendered)),
            local: BTreeSet::new(),
            hosts: false,
        }
    }

    /// The sets of an active policy (rendering it again if it was inactive).
    pub fn activate(&mut self) -> &BTreeSet<SetSpec> {
        let rendered = self.rendered.get_or_insert_with(|| {
            match pb::Policy::decode(&self.source[..]) {
                Ok(policy) => Box::new(render(&policy, self.selector.as_ref()).0),
                // Unreachable: the bytes are this build's own encoding.
                Err(e) => {
                    tracing::warn!(policy = %self.sort.key, error = %e, "policy does not decode");
                    Box::default()
                }
            }
        });
        &rendered.sets
    }

    /// Drops the rendering of a policy no longer active; returns its sets.
    pub fn deactivate(&mut self) -> BTreeSet<SetSpec> {
        self.rendered.take().map(|r| r.sets).unwrap_or_default()
    }

    /// The sets an active policy holds references on (none while inactive).
    pub fn sets(&self) -> impl Iterator<Item = &SetSpec> + '_ {
        self.rendered.iter().flat_map(|r| r.sets.iter())
    }

    /// Whether it applies on this node (selects a local workload or host endpoint):
    /// only then is it rendered and are its sets held.
    pub fn is_active(&self) -> bool {
        !self.local.is_empty() || self.hosts
    }

    /// Adds this policy's chains of `family` to a table's `chains` (when active);
    /// returns them.
    pub fn insert_chains(&self, family: Family, chains: &mut Chains) -> Option<&FamilyChains> {
        let fc = self.chains(family)?;
        if let Some(rules) = &fc.inbound {
            chains.insert(self.chain_in.clone(), rules.clone());
        }
        if let Some(rules) = &fc.outbound {
            chains.insert(self.chain_out.clone(), rules.clone());
        }
        Some(fc)
    }

    /// The chains of `family` (rendered only while active).
    pub fn chains(&self, family: Family) -> Option<&FamilyChains> {
        let rendered = self.rendered.as_ref()?;
        Some(match family {
            Family::V4 => &rendered.v4,
            Family::V6 => &rendered.v6,
        })
    }
}

fn sort_key(key: &Key, policy: &pb::Policy) -> SortKey {
    let tier = if policy.tier.is_empty() {
        "default".to_string()
    } else {
        policy.tier.clone()
    };
    SortKey {
        default_tier: tier == "default",
        tier,
        order: Order(if policy.has_order {
            policy.order
        } else {
            f64::INFINITY
        }),
        name: key.name().to_string(),
        namespace: key.namespace().to_string(),
        key: key.clone(),
    }
}

/// Renders both families' chains of `policy`; returns them with each bad rule selector
/// once (each was seen once per family).
fn render(policy: &pb::Policy, selector: Option<&Selector>) -> (Rendered, Vec<BadSelector>) {
    let (ingress, egress) = types(policy);
    let mut sets = BTreeSet::new();
    let mut bad = Vec::new();
    let mut render = |family: Family| -> FamilyChains {
        let mut chains = |rules: &[pb::Rule], on: bool, is_ingress: bool| {
            on.then(|| {
                let ctx = RenderContext {
                    family,
                    policy_selector: selector,
                    ingress: is_ingress,
                };
                let mut out = Vec::new();
                bad.extend(render_rules(rules, &ctx, &mut sets, &mut out));
                out
            })
        };
        let inbound = chains(&policy.inbound_rules, ingress, true);
        let outbound = chains(&policy.outbound_rules, egress, false);
        FamilyChains { inbound, outbound }
    };
    let v4 = render(Family::V4);
    let v6 = render(Family::V6);
    bad.sort_by(|a, b| a.0.cmp(&b.0));
    bad.dedup();
    (Rendered { v4, v6, sets }, bad)
}

/// Reports a selector that does not parse: a warning naming the policy, and
/// `felix_calc_invalid_selectors_total{place}` (`policy`: the policy selects nothing;
/// `rule`: that rule matches nothing). Nothing else changes: no chain fails closed.
fn invalid_selector(key: &Key, place: &'static str, error: &BadSelector) {
    metrics::counter!("felix_calc_invalid_selectors_total", "place" => place).increment(1);
    tracing::warn!(policy = %key, place, %error, "unparsable selector ignored");
}

/// Whether the policy applies to ingress and/or egress; an empty type list defaults as
/// Calico does (Ingress, plus Egress when there are outbound rules; Egress alone when
/// there are only outbound rules).
fn types(policy: &pb::Policy) -> (bool, bool) {
    let listed: Vec<pb::PolicyType> = policy
        .types
        .iter()
        .filter_map(|t| pb::PolicyType::try_from(*t).ok())
        .collect();
    if listed.is_empty() {
        let has_in = !policy.inbound_rules.is_empty();
        let has_out = !policy.outbound_rules.is_empty();
        return (has_in || !has_out, has_out);
    }
    (
        listed.contains(&pb::PolicyType::Ingress),
        listed.contains(&pb::PolicyType::Egress),
    )
}
