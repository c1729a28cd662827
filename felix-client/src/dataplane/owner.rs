//! owner: refuses to share the `cali-` namespace with another agent. Calico's Felix
//! programs chains with the same names (`cali-INPUT`, `cali-FORWARD`, ...); two agents
//! rewriting each other's chains would flap and enforce neither's policy. So before its
//! first write, the agent reads the tables it programs and stops with a clear error when
//! a `cali-` chain or a hook into one carries rules that are not its own.
//!
//! Ownership marker: every rule the agent writes carries the comment `cali:<16 lowercase
//! hex digits>` (its chained hash), and its hooks `cali:hook-<chain>`. Felix's rules carry
//! `cali:` plus 16 base64url characters, which practically never are all lowercase hex;
//! a rule with no `cali:` comment at all is foreign too. Empty `cali-` chains are not
//! evidence either way and are treated as the agent's.

use super::exec::Runner;
use super::iptables::{self, CHAIN_PREFIX, KernelRule, KernelTable, Table};
use super::{DataplaneConfig, DataplaneError};
use crate::calc::Family;

/// True for a tag the agent writes.
fn ours(tag: Option<&str>) -> bool {
    match tag {
        Some(t) if t.starts_with("hook-") => t["hook-".len()..].starts_with(CHAIN_PREFIX),
        Some(t) => {
            t.len() == 16
                && t.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

/// True when `rule` jumps or goes to a `cali-` chain.
fn targets_cali(rule: &KernelRule) -> bool {
    rule.text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| {
            matches!(w[0], "-j" | "-g" | "--jump" | "--goto") && w[1].starts_with(CHAIN_PREFIX)
        })
}

/// The first foreign rule in or into the agent's chains, as `chain: rule`.
pub(crate) fn foreign_rule(table: &KernelTable) -> Option<String> {
    for (chain, rules) in &table.chains {
        let mine = chain.starts_with(CHAIN_PREFIX);
        for rule in rules {
            let relevant = mine || targets_cali(rule);
            if relevant && !ours(rule.tag.as_deref()) {
                return Some(format!("{chain}: {}", rule.text));
            }
        }
    }
    None
}

/// The tables the agent programs for `config`.
pub(crate) fn tables(config: &DataplaneConfig) -> Vec<(Family, Table)> {
    let families: &[Family] = if config.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    families
        .iter()
        .flat_map(|f| [(*f, Table::Filter), (*f, Table::Nat)])
        .collect()
}

/// Fails with [`DataplaneError::ForeignChains`] when another agent owns `cali-` chains in
/// any table the agent would program through `runner`.
pub(crate) async fn check(runner: &Runner, config: &DataplaneConfig) -> Result<(), DataplaneError> {
    for (family, table) in tables(config) {
        let kernel = match iptables::read(runner, family, table).await {
            Ok(kernel) => kernel,
            // A host without ip6tables support: nothing there to own.
            Err(e) if family == Family::V6 => {
                tracing::debug!(error = %e, "cannot read ip6tables; skipping the ownership check");
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(rule) = foreign_rule(&kernel) {
            return Err(DataplaneError::ForeignChains {
                table: format!(
                    "{}{}",
                    if family == Family::V6 { "ip6 " } else { "" },
                    table.name()
                ),
                rule,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(save: &str) -> KernelTable {
        iptables::parse_save(save).unwrap()
    }

    #[test]
    fn our_rules_and_hooks_are_ours_felix_rules_are_not() {
        let ours = table(concat!(
            "*filter\n:INPUT ACCEPT [0:0]\n:cali-INPUT - [0:0]\n",
            "-A INPUT -m comment --comment \"cali:hook-cali-INPUT\" -j cali-INPUT\n",
            "-A INPUT -s 10.0.0.1/32 -j DROP\n",
            "-A cali-INPUT -i cali+ -m comment --comment \"cali:0123456789abcdef\" -j ACCEPT\nCOMMIT\n"
        ));
        assert_eq!(foreign_rule(&ours), None);
        let felix = table(concat!(
            "*filter\n:INPUT ACCEPT [0:0]\n:cali-INPUT - [0:0]\n",
            "-A INPUT -m comment --comment \"cali:Cz_u1IQiXIMmKD4c\" -j cali-INPUT\nCOMMIT\n"
        ));
        assert!(foreign_rule(&felix).unwrap().starts_with("INPUT: "));
        let uncommented =
            table("*filter\n:cali-FORWARD - [0:0]\n-A cali-FORWARD -j ACCEPT\nCOMMIT\n");
        assert_eq!(
            foreign_rule(&uncommented).as_deref(),
            Some("cali-FORWARD: -j ACCEPT")
        );
    }
}
