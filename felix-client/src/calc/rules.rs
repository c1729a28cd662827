//! Renders one policy's model rules into iptables rule arguments for one IP family.
//!
//! A model rule is a conjunction: protocol, ICMP type, and for each side (source,
//! destination) selector (AND namespace selector), not-selector, nets (OR within),
//! not-nets (none may match), ports (numeric ranges OR named ports) and not-ports.
//! Conjunctions become matches of one iptables rule; the only disjunctions left after
//! using ipsets for multi-CIDR lists are the port lists (a multiport match holds 15
//! ports, and named ports are separate sets), so a model rule renders as the cross
//! product of its source-port and destination-port alternatives: usually one rule.
//!
//! Actions: allow sets [`MARK_ACCEPT`] and returns, pass sets [`MARK_PASS`] and returns,
//! deny drops, log logs and continues. A rule that cannot match in this family (only
//! nets of the other family, ICMP of the other family, a not-net covering everything)
//! renders nothing, as Calico does. A log rule that renders as several alternatives
//! (port lists, named ports) marks the packet with [`MARK_LOG`] in each and logs once
//! after them, so a packet matching two alternatives is logged once, not twice.
//!
//! A rule whose selector does not parse renders nothing (it matches no packet, like a
//! selector matching no endpoint) and is reported to the caller: the rest of the policy,
//! and every other policy, keep working (the converters reject such policies already;
//! this guards the model from any other source).

use std::collections::BTreeSet;

use netmodel::selector::Selector;
use typha_proto::pb;

use super::Family;
use super::names::{MARK_ACCEPT, MARK_LOG, MARK_PASS};
use super::objects::{Net, port_protocol};
use super::sets::SetSpec;

/// A selector in a policy did not parse: the rule holding it renders nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {0:?}")]
pub(super) struct BadSelector(pub String);

/// Parses an optional selector text (`""` = no constraint).
pub(super) fn parse_selector(text: &str) -> Result<Option<Selector>, BadSelector> {
    Selector::parse(text).map_err(|_| BadSelector(text.to_string()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

impl Side {
    fn flag(self) -> &'static str {
        match self {
            Side::Src => "-s",
            Side::Dst => "-d",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Side::Src => "src",
            Side::Dst => "dst",
        }
    }

    fn ports(self) -> &'static str {
        match self {
            Side::Src => "--sports",
            Side::Dst => "--dports",
        }
    }
}

/// The matches of one rule under construction.
#[derive(Default)]
struct Matches {
    /// `-s`/`-d` matches (iptables prints them first).
    head: Vec<String>,
    /// `-p`.
    protocol: Option<&'static str>,
    /// Module matches, all required.
    tail: Vec<String>,
    /// Groups of alternatives: one of each group must match.
    any_of: Vec<Vec<String>>,
}

impl Matches {
    /// The rule's argument lists: head, protocol and tail, crossed with one alternative
    /// of each `any_of` group.
    fn alternatives(self) -> Vec<Vec<String>> {
        let mut prefix: Vec<String> = self.head;
        if let Some(p) = self.protocol {
            prefix.push(format!("-p {p}"));
        }
        prefix.extend(self.tail);
        let mut lines: Vec<Vec<String>> = vec![prefix];
        for group in &self.any_of {
            lines = lines
                .iter()
                .flat_map(|line| {
                    group.iter().map(move |alt| {
                        let mut l = line.clone();
                        l.push(alt.clone());
                        l
                    })
                })
                .collect();
        }
        lines
    }
}

/// What the renderer needs besides the rules.
pub(super) struct RenderContext<'a> {
    /// The family rendered.
    pub family: Family,
    /// The policy's own selector: in an ingress rule the destination, in an egress rule
    /// the source, is an endpoint it selects; used to scope named-port sets.
    pub policy_selector: Option<&'a Selector>,
    /// Inbound (true) or outbound rules.
    pub ingress: bool,
}

/// Renders `rules` into `out`, recording the ipsets they reference in `sets`; returns
/// the selectors of the rules skipped because a selector did not parse.
pub(super) fn render_rules(
    rules: &[pb::Rule],
    ctx: &RenderContext<'_>,
    sets: &mut BTreeSet<SetSpec>,
    out: &mut Vec<String>,
) -> Vec<BadSelector> {
    rules
        .iter()
        .filter_map(|rule| render_rule(rule, ctx, sets, out).err())
        .collect()
}

fn render_rule(
    rule: &pb::Rule,
    ctx: &RenderContext<'_>,
    sets: &mut BTreeSet<SetSpec>,
    out: &mut Vec<String>,
) -> Result<(), BadSelector> {
    let family = ctx.family;
    let mut m = Matches::default();
    let Some(protocol) = rule_protocol(rule, family) else {
        return Ok(());
    };
    m.protocol = protocol;
    let mut rule_sets = BTreeSet::new();
    let empty = pb::EntityRule::default();
    let sides = [
        (Side::Src, rule.source.as_ref().unwrap_or(&empty)),
        (Side::Dst, rule.destination.as_ref().unwrap_or(&empty)),
    ];
    for (side, entity) in sides {
        let local = matches!((side, ctx.ingress), (Side::Dst, true) | (Side::Src, false));
        let scope = if local { ctx.policy_selector } else { None };
        if !side_matches(side, entity, scope, &mut m, family, &mut rule_sets)? {
            return Ok(());
        }
    }
    if rule.has_icmp && !icmp_matches(rule, &mut m) {
        return Ok(());
    }
    let Some(action) = action_target(rule) else {
        return Ok(());
    };
    sets.extend(rule_sets);
    emit(rule, m.alternatives(), &action, out);
    Ok(())
}

/// The `-p` of `rule` in `family`: `Some(None)` for any protocol, `None` when the rule is
/// ICMP of the other family (it cannot match here).
fn rule_protocol(rule: &pb::Rule, family: Family) -> Option<Option<&'static str>> {
    let protocol = pb::Protocol::try_from(rule.protocol).unwrap_or(pb::Protocol::Unspecified);
    match (protocol, family) {
        (pb::Protocol::Unspecified, _) => Some(None),
        (pb::Protocol::Icmp, Family::V4) => Some(Some("icmp")),
        (pb::Protocol::Icmpv6, Family::V6) => Some(Some("ipv6-icmp")),
        (pb::Protocol::Icmp | pb::Protocol::Icmpv6, _) => None,
        _ => Some(port_protocol(rule.protocol)),
    }
}

/// Adds the ICMP type (and code) match; `false` when the rule's protocol is not ICMP.
fn icmp_matches(rule: &pb::Rule, m: &mut Matches) -> bool {
    let code = if rule.icmp_code >= 0 {
        format!("/{}", rule.icmp_code)
    } else {
        String::new()
    };
    match m.protocol {
        Some("icmp") => m
            .tail
            .push(format!("-m icmp --icmp-type {}{code}", rule.icmp_type)),
        Some("ipv6-icmp") => m
            .tail
            .push(format!("-m icmp6 --icmpv6-type {}{code}", rule.icmp_type)),
        _ => return false,
    }
    true
}

/// The jump of `rule`'s action; `None` for an unspecified action (the rule renders
/// nothing).
fn action_target(rule: &pb::Rule) -> Option<String> {
    match pb::Action::try_from(rule.action).unwrap_or(pb::Action::Unspecified) {
        pb::Action::Allow => Some(format!(
            "-j MARK --set-xmark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}"
        )),
        pb::Action::Pass => Some(format!("-j MARK --set-xmark {MARK_PASS:#x}/{MARK_PASS:#x}")),
        pb::Action::Deny => Some("-j DROP".to_string()),
        pb::Action::Log => Some("-j LOG --log-prefix calico-packet:".to_string()),
        pb::Action::Unspecified => None,
    }
}

/// Writes one line per alternative with `action`; a log with several alternatives marks
/// in each and logs once; allow and pass return once marked.
fn emit(rule: &pb::Rule, lines: Vec<Vec<String>>, action: &str, out: &mut Vec<String>) {
    let log = action.starts_with("-j LOG");
    if log && lines.len() > 1 {
        // Several alternatives: mark in each, log once.
        for mut line in lines {
            line.push(format!("-j MARK --set-xmark {MARK_LOG:#x}/{MARK_LOG:#x}"));
            out.push(line.join(" "));
        }
        out.push(format!(
            "-m mark --mark {MARK_LOG:#x}/{MARK_LOG:#x} {action}"
        ));
        out.push(format!("-j MARK --set-xmark 0x0/{MARK_LOG:#x}"));
        return;
    }
    for mut line in lines {
        line.push(action.to_string());
        out.push(line.join(" "));
    }
    match pb::Action::try_from(rule.action) {
        Ok(pb::Action::Allow) => out.push(format!(
            "-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j RETURN"
        )),
        Ok(pb::Action::Pass) => out.push(format!(
            "-m mark --mark {MARK_PASS:#x}/{MARK_PASS:#x} -j RETURN"
        )),
        _ => {}
    }
}

/// Nets of `family` from `texts`: `None` when the list is not empty but holds none of
/// this family (the constraint cannot be met here).
fn family_nets(texts: &[String], family: Family) -> Option<Vec<Net>> {
    let all: Vec<Net> = texts.iter().filter_map(|t| Net::parse(t)).collect();
    let mine: Vec<Net> = all.iter().filter(|n| n.family == family).cloned().collect();
    if !texts.is_empty() && mine.is_empty() {
        return None;
    }
    Some(mine)
}

fn nets_set(family: Family, nets: &[Net]) -> SetSpec {
    let mut texts: Vec<String> = nets.iter().map(Net::text).collect();
    texts.sort();
    texts.dedup();
    SetSpec::Nets {
        family,
        nets: texts,
    }
}

/// Adds one side's matches; `false` when the side can never match in this family.
fn side_matches(
    side: Side,
    entity: &pb::EntityRule,
    local_scope: Option<&Selector>,
    m: &mut Matches,
    family: Family,
    sets: &mut BTreeSet<SetSpec>,
) -> Result<bool, BadSelector> {
    let selector = Selector::and_all(
        [
            parse_selector(&entity.selector)?,
            parse_selector(&entity.namespace_selector)?,
        ]
        .into_iter()
        .flatten(),
    );
    let dir = side.dir();
    if let Some(sel) = &selector {
        let spec = SetSpec::Selector {
            family,
            selector: sel.to_string(),
        };
        m.tail
            .push(format!("-m set --match-set {} {dir}", spec.name()));
        sets.insert(spec);
    }
    if let Some(not) = parse_selector(&entity.not_selector)? {
        let spec = SetSpec::Selector {
            family,
            selector: not.to_string(),
        };
        m.tail
            .push(format!("-m set ! --match-set {} {dir}", spec.name()));
        sets.insert(spec);
    }
    if !net_matches(side, entity, m, family, sets) {
        return Ok(false);
    }
    if entity.ports.is_empty() && entity.not_ports.is_empty() {
        return Ok(true);
    }
    let Some(protocol) = m.protocol.filter(|p| matches!(*p, "tcp" | "udp" | "sctp")) else {
        // Ports without a port protocol cannot match (the converters reject this).
        return Ok(false);
    };
    let named_scope = Selector::and_all(selector.into_iter().chain(local_scope.cloned()))
        .unwrap_or(Selector::All)
        .to_string();
    let ports = PortContext {
        side,
        family,
        protocol,
        named_scope,
    };
    ports.add_matches(entity, m, sets);
    Ok(true)
}

/// Adds one side's nets and not-nets (a single net as `-s`/`-d`, several as a set);
/// `false` when they can never match in this family.
fn net_matches(
    side: Side,
    entity: &pb::EntityRule,
    m: &mut Matches,
    family: Family,
    sets: &mut BTreeSet<SetSpec>,
) -> bool {
    let dir = side.dir();
    let Some(nets) = family_nets(&entity.nets, family) else {
        return false;
    };
    let mut flag_used = false;
    if !nets.is_empty() && nets.iter().all(|n| n.prefix > 0) {
        let distinct: BTreeSet<&Net> = nets.iter().collect();
        if distinct.len() == 1 {
            m.head.push(format!("{} {}", side.flag(), nets[0].text()));
            flag_used = true;
        } else {
            let spec = nets_set(family, &nets);
            m.tail
                .push(format!("-m set --match-set {} {dir}", spec.name()));
            sets.insert(spec);
        }
    }
    let not_nets = family_nets(&entity.not_nets, family).unwrap_or_default();
    if not_nets.iter().any(|n| n.prefix == 0) {
        return false;
    }
    let distinct: BTreeSet<&Net> = not_nets.iter().collect();
    if distinct.len() == 1 && !flag_used {
        m.head
            .push(format!("! {} {}", side.flag(), not_nets[0].text()));
    } else if !not_nets.is_empty() {
        let spec = nets_set(family, &not_nets);
        m.tail
            .push(format!("-m set ! --match-set {} {dir}", spec.name()));
        sets.insert(spec);
    }
    true
}

/// What one side's port matches need: named ports become sets of the endpoints in
/// `named_scope` (the side's selector, and the policy's own where the side is local).
struct PortContext {
    side: Side,
    family: Family,
    protocol: &'static str,
    named_scope: String,
}

impl PortContext {
    /// Adds the ports (numeric lists OR named ports: alternatives when more than one)
    /// and the not-ports (all required).
    fn add_matches(&self, entity: &pb::EntityRule, m: &mut Matches, sets: &mut BTreeSet<SetSpec>) {
        let side = self.side;
        let dir = side.dir();
        let pair = format!("{dir},{dir}");
        if !entity.ports.is_empty() {
            let mut alternatives: Vec<String> = multiport_chunks(&entity.ports)
                .into_iter()
                .map(|list| format!("-m multiport {} {list}", side.ports()))
                .collect();
            for p in entity.ports.iter().filter(|p| !p.name.is_empty()) {
                let set = self.named(&p.name, sets);
                alternatives.push(format!("-m set --match-set {set} {pair}"));
            }
            if alternatives.len() == 1 {
                m.tail.extend(alternatives);
            } else {
                m.any_of.push(alternatives);
            }
        }
        for list in multiport_chunks(&entity.not_ports) {
            m.tail
                .push(format!("-m multiport ! {} {list}", side.ports()));
        }
        for p in entity.not_ports.iter().filter(|p| !p.name.is_empty()) {
            let set = self.named(&p.name, sets);
            m.tail.push(format!("-m set ! --match-set {set} {pair}"));
        }
    }

    /// The set of named port `name`, recorded in `sets`; returns its name.
    fn named(&self, name: &str, sets: &mut BTreeSet<SetSpec>) -> String {
        let spec = SetSpec::NamedPort {
            family: self.family,
            selector: self.named_scope.clone(),
            protocol: self.protocol,
            port: name.to_string(),
        };
        let set_name = spec.name();
        sets.insert(spec);
        set_name
    }
}

/// Numeric ports as multiport lists of at most 15 slots (a range takes two).
fn multiport_chunks(ports: &[pb::PortRange]) -> Vec<String> {
    let mut chunks: Vec<String> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut used = 0;
    for p in ports.iter().filter(|p| p.name.is_empty()) {
        let (item, cost) = if p.first == p.last {
            (p.first.to_string(), 1)
        } else {
            (format!("{}:{}", p.first, p.last), 2)
        };
        if used + cost > 15 {
            chunks.push(current.join(","));
            current.clear();
            used = 0;
        }
        current.push(item);
        used += cost;
    }
    if !current.is_empty() {
        chunks.push(current.join(","));
    }
    chunks
}
