//! The ipsets the active policies reference: what each holds ([`SetSpec`], whose hash
//! names it) and its members ([`SetEntry`]).
//!
//! Members are canonical text (`10.0.0.1/32`, `10.0.0.1,tcp:80`), as the dataplane
//! writes them. Two objects may contribute the same member (a network set overlapping a
//! pod), so a member is removed only when its last contributor goes: the extra
//! contributors are counted in `extra`, which is empty in the usual case (each member
//! from one object), so a member costs one string in the set and nothing more. The
//! member set is an `Arc` changed copy-on-write ([`Arc::make_mut`]): while the dataplane
//! holds the previous [`super::Desired`], a change clones the set, so `Arc::ptr_eq`
//! between two `Desired`s proves a set unchanged.
//!
//! Invariant: `members` holds each member with at least one contributor, and `extra`
//! maps a member to its number of contributors minus one when that is positive.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::names::{family_digit, hash_hex};
use super::objects::{Net, Obj};
use super::store::Store;
use super::{Family, IpSetKind};

/// What an ipset holds; its name is a hash of this.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SetSpec {
    /// `hash:net`: the addresses / nets of the objects a selector matches.
    Selector {
        /// Family of the members.
        family: Family,
        /// Canonical selector text.
        selector: String,
    },
    /// `hash:ip,port`: `ip,proto:port` of the endpoints a selector matches that have a
    /// port of that name and protocol.
    NamedPort {
        /// Family of the members.
        family: Family,
        /// Canonical selector text.
        selector: String,
        /// `tcp`, `udp` or `sctp`.
        protocol: &'static str,
        /// The port's name.
        port: String,
    },
    /// `hash:net`: a fixed list of nets (a rule with several CIDRs).
    Nets {
        /// Family of the members.
        family: Family,
        /// Canonical CIDRs, sorted.
        nets: Vec<String>,
    },
}

impl SetSpec {
    /// The ipset name: `cali<family><s|p|n>-` and 20 hex digits of a hash of the spec.
    pub fn name(&self) -> String {
        let (family, tag, text) = match self {
            SetSpec::Selector { family, selector } => (*family, 's', format!("s:{selector}")),
            SetSpec::NamedPort {
                family,
                selector,
                protocol,
                port,
            } => (*family, 'p', format!("p:{protocol}:{port}:{selector}")),
            SetSpec::Nets { family, nets } => (*family, 'n', format!("n:{}", nets.join(","))),
        };
        format!("cali{}{tag}-{}", family_digit(family), hash_hex(&text, 20))
    }

    /// The selector text of a selector-derived set.
    pub fn selector(&self) -> Option<&str> {
        match self {
            SetSpec::Selector { selector, .. } | SetSpec::NamedPort { selector, .. } => {
                Some(selector)
            }
            SetSpec::Nets { .. } => None,
        }
    }

    /// The members' family.
    pub fn family(&self) -> Family {
        match self {
            SetSpec::Selector { family, .. }
            | SetSpec::NamedPort { family, .. }
            | SetSpec::Nets { family, .. } => *family,
        }
    }

    /// The ipset type.
    pub fn kind(&self) -> IpSetKind {
        match self {
            SetSpec::NamedPort { .. } => IpSetKind::IpPort,
            _ => IpSetKind::Net,
        }
    }

    /// The members `obj` contributes when the spec's selector matches it.
    pub fn contributions(&self, store: &Store, obj: &Obj, out: &mut Vec<String>) {
        match self {
            SetSpec::Selector { family, .. } => {
                for net in obj.addrs.nets().filter(|n| n.family == *family) {
                    out.extend(net.hash_net_members());
                }
            }
            SetSpec::NamedPort {
                family,
                protocol,
                port,
                ..
            } => {
                let ports = store
                    .ports(obj)
                    .iter()
                    .filter(|p| store.string(p.name) == port && p.protocol == *protocol);
                for p in ports {
                    for net in obj.addrs.nets().filter(|n| n.family == *family) {
                        out.push(format!("{},{}:{}", net.addr, p.protocol, p.port));
                    }
                }
            }
            SetSpec::Nets { .. } => {}
        }
    }
}

/// One live set: its spec, its references (policies using it) and its members.
pub(super) struct SetEntry {
    /// What it holds.
    pub spec: SetSpec,
    /// The number of active policy references.
    pub refs: u32,
    /// The members (see the module docs).
    pub members: Arc<BTreeSet<String>>,
    /// Contributors beyond the first, per member (see the module docs).
    extra: HashMap<String, u32>,
}

impl SetEntry {
    /// An empty set of `spec` with one reference; a fixed list of nets is filled now.
    pub fn new(spec: &SetSpec) -> SetEntry {
        let mut entry = SetEntry {
            spec: spec.clone(),
            refs: 1,
            members: Arc::new(BTreeSet::new()),
            extra: HashMap::new(),
        };
        if let SetSpec::Nets { nets, .. } = spec {
            for net in nets.iter().filter_map(|n| Net::parse(n)) {
                for m in net.hash_net_members() {
                    entry.add(m);
                }
            }
        }
        entry
    }

    /// Counts one more contributor of `member`.
    pub fn add(&mut self, member: String) {
        if self.members.contains(&member) {
            *self.extra.entry(member).or_insert(0) += 1;
        } else {
            Arc::make_mut(&mut self.members).insert(member);
        }
    }

    /// Counts one contributor of `member` less.
    pub fn remove(&mut self, member: &str) {
        match self.extra.get_mut(member) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.extra.remove(member);
            }
            None => {
                if self.members.contains(member) {
                    Arc::make_mut(&mut self.members).remove(member);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_member_leaves_with_its_last_contributor() {
        let mut set = SetEntry::new(&SetSpec::Nets {
            family: Family::V4,
            nets: vec!["10.0.0.0/8".into()],
        });
        assert_eq!(set.members.len(), 1);
        set.add("10.0.0.1/32".into());
        set.add("10.0.0.1/32".into());
        set.remove("10.0.0.1/32");
        assert!(set.members.contains("10.0.0.1/32"), "one contributor left");
        set.remove("10.0.0.1/32");
        assert!(!set.members.contains("10.0.0.1/32"));
        assert!(set.extra.is_empty());
        // Removing an absent member changes nothing.
        let before = Arc::clone(&set.members);
        set.remove("10.9.9.9/32");
        assert!(Arc::ptr_eq(&before, &set.members));
    }
}
