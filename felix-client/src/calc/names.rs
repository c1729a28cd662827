//! Names and mark bits of everything calc emits: chains, ipsets, and the packet mark
//! bits the rules use to talk between chains.
//!
//! Invariants: every name is a pure function of what it names (a policy's key, an
//! interface name, an ipset's defining spec), so the same state always gives the same
//! names (a restart is a no-op); chain names are at most 28 characters and ipset names
//! at most 31 (hash-based suffixes keep them short).

use typha_proto::Key;
use xxhash_rust::xxh3::xxh3_128;

use super::Family;

/// Packet mark bit a policy chain sets when a rule allows the packet.
pub const MARK_ACCEPT: u32 = 0x10000;
/// Packet mark bit a policy chain sets when a rule passes the packet to the next tier.
pub const MARK_PASS: u32 = 0x20000;
/// Scratch mark bit of a log rule with several alternatives (set by any, logged once,
/// cleared right after).
pub const MARK_LOG: u32 = 0x40000;

/// The filter root chain hooked from FORWARD.
pub const FORWARD: &str = "cali-FORWARD";
/// The filter root chain hooked from INPUT.
pub const INPUT: &str = "cali-INPUT";
/// The filter root chain hooked from OUTPUT.
pub const OUTPUT: &str = "cali-OUTPUT";
/// The nat root chain hooked from POSTROUTING.
pub const POSTROUTING: &str = "cali-POSTROUTING";
/// Dispatch of traffic coming from workloads, by interface.
pub const FROM_WL_DISPATCH: &str = "cali-from-wl-dispatch";
/// Dispatch of traffic going to workloads, by interface.
pub const TO_WL_DISPATCH: &str = "cali-to-wl-dispatch";

/// Longest chain name iptables accepts (28 characters + NUL).
pub const MAX_CHAIN: usize = 28;
/// Longest ipset name (31 characters + NUL).
pub const MAX_IPSET: usize = 31;

/// The direction of a rule or endpoint chain, from the workload's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Traffic to the workload (policy inbound rules).
    Ingress,
    /// Traffic from the workload (policy outbound rules).
    Egress,
}

/// `len` hex digits of a 128-bit hash of `input` (stable across builds and platforms).
pub(super) fn hash_hex(input: &str, len: usize) -> String {
    let hex = format!("{:032x}", xxh3_128(input.as_bytes()));
    hex[..len.min(hex.len())].to_string()
}

/// The chain of one policy's inbound (`cali-pi-`) or outbound (`cali-po-`) rules.
pub fn policy_chain(dir: Dir, key: &Key) -> String {
    let prefix = match dir {
        Dir::Ingress => "cali-pi-",
        Dir::Egress => "cali-po-",
    };
    format!("{prefix}{}", hash_hex(&key.to_string(), 16))
}

/// Whether an interface name can be used verbatim in rules and chain names.
pub(super) fn usable_interface(iface: &str) -> bool {
    !iface.is_empty()
        && iface.len() <= 15
        && iface
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The per-endpoint chain: `cali-tw-<iface>` (to the workload: ingress) or
/// `cali-fw-<iface>` (from the workload: egress).
pub fn endpoint_chain(dir: Dir, iface: &str) -> String {
    let prefix = match dir {
        Dir::Ingress => "cali-tw-",
        Dir::Egress => "cali-fw-",
    };
    let name = format!("{prefix}{iface}");
    if name.len() <= MAX_CHAIN {
        name
    } else {
        format!("{prefix}{}", hash_hex(iface, 16))
    }
}

/// The family digit of ipset names.
pub(super) fn family_digit(family: Family) -> char {
    match family {
        Family::V4 => '4',
        Family::V6 => '6',
    }
}

/// The set of natOutgoing (enabled) pool CIDRs of a family.
pub fn masq_pools_set(family: Family) -> String {
    format!("cali{}-masq-pools", family_digit(family))
}

/// The set of every pool CIDR plus the configured cluster CIDRs of a family.
pub fn all_pools_set(family: Family) -> String {
    format!("cali{}-all-pools", family_digit(family))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use typha_proto::Kind;

    #[test]
    fn names_are_short_and_stable() {
        let key = Key::new(Kind::K8sNetworkPolicy, "ns", "knp.default.a-very-long-name").unwrap();
        let a = policy_chain(Dir::Ingress, &key);
        assert_eq!(a, policy_chain(Dir::Ingress, &key));
        assert!(a.starts_with("cali-pi-") && a.len() <= MAX_CHAIN);
        assert_ne!(
            a,
            policy_chain(
                Dir::Ingress,
                &Key::new(Kind::NetworkPolicy, "ns", "knp.default.a-very-long-name").unwrap()
            )
        );
        assert_eq!(
            endpoint_chain(Dir::Egress, "cali0123456789a"),
            "cali-fw-cali0123456789a"
        );
        assert!(endpoint_chain(Dir::Ingress, "a-much-too-long-interface").len() <= MAX_CHAIN);
        assert!(all_pools_set(Family::V6).len() <= MAX_IPSET);
    }
}
