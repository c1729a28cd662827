//! iptables: programs the agent's `cali-*` chains of one table (filter or nat, IPv4 or
//! IPv6) by diffing them against `iptables-save` and writing only the difference through
//! one `iptables-restore --noflush` transaction per table.
//!
//! Every rule carries a comment `cali:<hash>`; the hash covers the chain name, the rule
//! text and the previous rule's hash, so a rule's hash also pins its position. The diff
//! compares hashes position by position: equal hashes are left alone (their packet
//! counters survive), different ones are replaced in place (`-R`), missing ones appended,
//! surplus ones deleted from the end. Because the hashes are chained, changing rule k
//! rewrites rules k.. of that chain; rules before it and all other chains are untouched.
//!
//! Invariants: only chains named `cali-*` are written, flushed or deleted. The only
//! writes outside them are the hook rules (one per built-in chain, identified by its own
//! comment `cali:hook-<target>`), kept at position 1. An existing chain is never declared
//! in the restore input (with `--noflush` that would flush it). A chain that is no longer
//! wanted is flushed and deleted in the same transaction after every rule of ours that
//! referenced it is gone; one still referenced by a foreign rule is flushed but kept.
//! Nothing to change means no restore process at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

use super::DataplaneError;
use super::exec::Runner;
use crate::calc::{Chains, Family};

/// The prefix of every chain the agent owns.
pub(crate) const CHAIN_PREFIX: &str = "cali-";
/// The prefix of the agent's rule comments.
const COMMENT_PREFIX: &str = "cali:";

/// An iptables table the agent writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
}

impl Table {
    /// The table's name for `-t`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }

    /// (built-in chain, agent root chain) pairs hooked in this table.
    fn hooks(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Table::Filter => &[
                ("INPUT", "cali-INPUT"),
                ("FORWARD", "cali-FORWARD"),
                ("OUTPUT", "cali-OUTPUT"),
            ],
            Table::Nat => &[("POSTROUTING", "cali-POSTROUTING")],
        }
    }
}

/// One rule as `iptables-save` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelRule {
    /// The agent comment's payload after `cali:` (a hash or `hook-<target>`), if any.
    pub(crate) tag: Option<String>,
    /// The rule's arguments after `-A <chain> `.
    pub(crate) text: String,
}

/// One table as `iptables-save -t <table>` shows it: every chain (built-in, foreign
/// and the agent's) with its rules in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelTable {
    /// chain -> rules.
    pub(crate) chains: BTreeMap<String, Vec<KernelRule>>,
}

/// Parses `iptables-save -t <table>` output (one table).
pub(crate) fn parse_save(text: &str) -> Result<KernelTable, DataplaneError> {
    let mut table = KernelTable::default();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            table.chains.entry(name.to_owned()).or_default();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let rule = KernelRule {
                tag: comment_tag(text),
                text: text.to_owned(),
            };
            table.chains.entry(chain.to_owned()).or_default().push(rule);
        } else if line.starts_with('-') {
            return Err(DataplaneError::Parse {
                what: "iptables-save",
                line: line.to_owned(),
            });
        }
    }
    Ok(table)
}

/// The payload of a `--comment "cali:..."` (quoted or not) in a rule, if present.
fn comment_tag(text: &str) -> Option<String> {
    let (_, after) = text.split_once("--comment ")?;
    let after = after.strip_prefix('"').unwrap_or(after);
    let payload = after.strip_prefix(COMMENT_PREFIX)?;
    let end = payload
        .find(|c: char| c == '"' || c.is_whitespace())
        .unwrap_or(payload.len());
    Some(payload[..end].to_owned())
}

/// The chained hashes of a chain's rules (16 hex digits each).
pub(crate) fn rule_hashes(chain: &str, rules: &[String]) -> Vec<String> {
    let mut previous = String::new();
    let mut hashes = Vec::with_capacity(rules.len());
    let mut input = Vec::new();
    for rule in rules {
        input.clear();
        for part in [chain, previous.as_str(), rule.as_str()] {
            input.extend_from_slice(part.as_bytes());
            input.push(0);
        }
        previous = format!("{:016x}", xxh3_64(&input));
        hashes.push(previous.clone());
    }
    hashes
}

/// The comment tag of the hook rule jumping to `target`.
fn hook_tag(target: &str) -> String {
    format!("hook-{target}")
}

/// One change of an `iptables-restore --noflush` transaction. Positions are 1-based, as
/// iptables counts them; `line` is the rule's arguments after `<op> <chain> [n] `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Declare (create) a chain that does not exist yet.
    NewChain(String),
    /// Replace the rule at a position.
    Replace(String, usize, String),
    /// Append a rule.
    Append(String, String),
    /// Insert a rule at a position.
    Insert(String, usize, String),
    /// Delete the rule at a position.
    Delete(String, usize),
    /// Flush a chain.
    Flush(String),
    /// Delete an (empty, unreferenced) chain.
    DeleteChain(String),
}

/// Renders a transaction for `table`, or `None` when there is nothing to do.
pub(crate) fn render(table: Table, ops: &[Op]) -> Option<String> {
    if ops.is_empty() {
        return None;
    }
    let mut out = format!("*{}\n", table.name());
    for op in ops {
        let _ = match op {
            Op::NewChain(c) => writeln!(out, ":{c} - [0:0]"),
            Op::Replace(c, n, line) => writeln!(out, "-R {c} {n} {line}"),
            Op::Append(c, line) => writeln!(out, "-A {c} {line}"),
            Op::Insert(c, n, line) => writeln!(out, "-I {c} {n} {line}"),
            Op::Delete(c, n) => writeln!(out, "-D {c} {n}"),
            Op::Flush(c) => writeln!(out, "-F {c}"),
            Op::DeleteChain(c) => writeln!(out, "-X {c}"),
        };
    }
    out.push_str("COMMIT\n");
    Some(out)
}

impl KernelTable {
    /// Applies a committed transaction to this view, so that it stays what `iptables-save`
    /// would show (rule texts differ in form, not in tag, which is all the diff reads).
    pub(crate) fn apply(&mut self, ops: &[Op]) {
        let rule = |line: &str| KernelRule {
            tag: comment_tag(line),
            text: line.to_owned(),
        };
        for op in ops {
            match op {
                Op::NewChain(c) => {
                    self.chains.entry(c.clone()).or_default();
                }
                Op::Replace(c, n, line) => {
                    if let Some(slot) = self.chain(c).get_mut(n.saturating_sub(1)) {
                        *slot = rule(line);
                    }
                }
                Op::Append(c, line) => self.chain(c).push(rule(line)),
                Op::Insert(c, n, line) => {
                    let rules = self.chain(c);
                    let at = n.saturating_sub(1).min(rules.len());
                    rules.insert(at, rule(line));
                }
                Op::Delete(c, n) => {
                    let rules = self.chain(c);
                    if *n >= 1 && *n <= rules.len() {
                        rules.remove(n - 1);
                    }
                }
                Op::Flush(c) => self.chain(c).clear(),
                Op::DeleteChain(c) => {
                    self.chains.remove(c);
                }
            }
        }
    }

    fn chain(&mut self, name: &str) -> &mut Vec<KernelRule> {
        self.chains.entry(name.to_owned()).or_default()
    }
}

/// The chains most recently written to a table (or found there): what lets a pass skip
/// every chain whose desired rules did not change without hashing them.
pub(crate) type Applied = Chains;

/// Computes the `iptables-restore --noflush` input that turns `kernel` into `desired`
/// for the agent's chains and hooks, or `None` when nothing differs.
#[cfg(test)]
pub(crate) fn plan(table: Table, desired: &Chains, kernel: &KernelTable) -> Option<String> {
    render(table, &plan_ops(table, desired, kernel, None))
}

/// The changes that turn `kernel` into `desired` for the agent's chains and hooks.
/// With `applied` (the chains `kernel` is known to hold exactly, from the last committed
/// pass), a chain whose rules equal its applied rules is skipped without hashing.
pub(crate) fn plan_ops(
    table: Table,
    desired: &Chains,
    kernel: &KernelTable,
    applied: Option<&Applied>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let wanted: BTreeMap<&str, &Vec<String>> = desired
        .iter()
        .filter(|(name, _)| name.starts_with(CHAIN_PREFIX))
        .map(|(name, rules)| (name.as_str(), rules))
        .collect();
    for name in wanted.keys() {
        if !kernel.chains.contains_key(*name) {
            ops.push(Op::NewChain((*name).to_owned()));
        }
    }
    let none = Vec::new();
    for (name, rules) in &wanted {
        if applied.and_then(|a| a.get(*name)) == Some(*rules) && kernel.chains.contains_key(*name) {
            continue;
        }
        let current = kernel.chains.get(*name).unwrap_or(&none);
        plan_chain(&mut ops, name, rules, current);
    }
    for (builtin, target) in table.hooks() {
        let current = kernel.chains.get(*builtin).unwrap_or(&none);
        plan_hook(
            &mut ops,
            builtin,
            target,
            wanted.contains_key(target),
            current,
        );
    }
    plan_removals(&mut ops, &wanted, kernel, table);
    ops
}

/// The position-by-position rewrite of one wanted chain.
fn plan_chain(ops: &mut Vec<Op>, chain: &str, rules: &[String], current: &[KernelRule]) {
    let hashes = rule_hashes(chain, rules);
    for (i, (rule, hash)) in rules.iter().zip(&hashes).enumerate() {
        let line = || format!("-m comment --comment \"{COMMENT_PREFIX}{hash}\" {rule}");
        match current.get(i) {
            Some(k) if k.tag.as_deref() == Some(hash.as_str()) => {}
            Some(_) => ops.push(Op::Replace(chain.to_owned(), i + 1, line())),
            None => ops.push(Op::Append(chain.to_owned(), line())),
        }
    }
    for position in (rules.len()..current.len()).rev() {
        ops.push(Op::Delete(chain.to_owned(), position + 1));
    }
}

/// Keeps exactly one hook rule, at position 1 of `builtin`, while `target` is wanted;
/// removes every hook rule otherwise.
fn plan_hook(ops: &mut Vec<Op>, builtin: &str, target: &str, wanted: bool, current: &[KernelRule]) {
    let tag = hook_tag(target);
    let positions: Vec<usize> = current
        .iter()
        .enumerate()
        .filter(|(_, r)| r.tag.as_deref() == Some(tag.as_str()))
        .map(|(i, _)| i + 1)
        .collect();
    if wanted && positions == [1] {
        return;
    }
    for position in positions.iter().rev() {
        ops.push(Op::Delete(builtin.to_owned(), *position));
    }
    if wanted {
        let line = format!("-m comment --comment \"{COMMENT_PREFIX}{tag}\" -j {target}");
        ops.push(Op::Insert(builtin.to_owned(), 1, line));
    }
}

/// Flushes and deletes the agent's chains that are no longer wanted.
fn plan_removals(
    ops: &mut Vec<Op>,
    wanted: &BTreeMap<&str, &Vec<String>>,
    kernel: &KernelTable,
    table: Table,
) {
    let unwanted: Vec<&str> = kernel
        .chains
        .keys()
        .map(String::as_str)
        .filter(|name| name.starts_with(CHAIN_PREFIX) && !wanted.contains_key(name))
        .collect();
    if unwanted.is_empty() {
        return;
    }
    let hook_tags: BTreeSet<String> = table.hooks().iter().map(|(_, t)| hook_tag(t)).collect();
    let foreign = foreign_targets(kernel, &hook_tags);
    for name in &unwanted {
        if kernel
            .chains
            .get(*name)
            .is_some_and(|rules| !rules.is_empty())
        {
            ops.push(Op::Flush((*name).to_owned()));
        }
    }
    for name in &unwanted {
        if foreign.contains(*name) {
            tracing::warn!(
                chain = name,
                table = table.name(),
                "chain no longer wanted is referenced by a foreign rule; flushed, not deleted"
            );
        } else {
            ops.push(Op::DeleteChain((*name).to_owned()));
        }
    }
}

/// Chains that rules outside the agent's chains (other than its hooks) jump or go to.
fn foreign_targets<'a>(kernel: &'a KernelTable, hook_tags: &BTreeSet<String>) -> BTreeSet<&'a str> {
    let mut targets = BTreeSet::new();
    for (chain, rules) in &kernel.chains {
        if chain.starts_with(CHAIN_PREFIX) {
            continue;
        }
        for rule in rules {
            if rule.tag.as_ref().is_some_and(|t| hook_tags.contains(t)) {
                continue;
            }
            let mut words = rule.text.split_whitespace();
            while let Some(word) = words.next() {
                if matches!(word, "-j" | "-g" | "--jump" | "--goto")
                    && let Some(target) = words.next()
                {
                    targets.insert(target);
                }
            }
        }
    }
    targets
}

/// Reads one table from the kernel.
pub(crate) async fn read(
    runner: &Runner,
    family: Family,
    table: Table,
) -> Result<KernelTable, DataplaneError> {
    let (save, _) = runner.iptables.save_restore(family);
    let text = runner.run(save, &["-t", table.name()], None).await?;
    parse_save(&text)
}

/// What the agent knows one table holds.
#[derive(Clone, Debug, Default)]
pub(crate) struct TableCache {
    /// The table as `iptables-save` showed it, with every transaction since applied.
    pub(crate) kernel: KernelTable,
    /// Whether the agent's chains are exactly the last pass's desired chains (set once a
    /// pass committed or found nothing to do), so unchanged chains need no hashing.
    pub(crate) matches_last: bool,
}

/// What syncing one table did.
#[derive(Debug, Default)]
pub(crate) struct TableOutcome {
    /// Restore processes run (a failed one counts).
    pub(crate) restores: u64,
    /// `iptables-save` runs.
    pub(crate) reads: u64,
    /// Time spent reading, planning and writing.
    pub(crate) timings: super::PassTimings,
}

/// Brings one table in line with `desired`, planning against `cache` when it is there
/// and reading the kernel when not. A write planned from the cache that fails is retried
/// once against a fresh read (the kernel may have drifted under the cache); any failure
/// leaves the cache empty, so the next pass reads the kernel again.
pub(crate) async fn sync_table(
    runner: &Runner,
    family: Family,
    table: Table,
    desired: &Chains,
    last: Option<&Chains>,
    cache: &mut Option<TableCache>,
    outcome: &mut TableOutcome,
) -> Result<(), DataplaneError> {
    let (_, restore) = runner.iptables.save_restore(family);
    loop {
        let fresh = cache.is_none();
        let current = match cache {
            Some(c) => c,
            None => {
                let started = Instant::now();
                let kernel = read(runner, family, table).await;
                outcome.reads += 1;
                outcome.timings.read += started.elapsed();
                cache.insert(TableCache {
                    kernel: kernel?,
                    matches_last: false,
                })
            }
        };
        let started = Instant::now();
        let applied = last.filter(|_| current.matches_last);
        let ops = plan_ops(table, desired, &current.kernel, applied);
        let input = render(table, &ops);
        outcome.timings.plan += started.elapsed();
        let Some(input) = input else {
            current.matches_last = true;
            return Ok(());
        };
        tracing::debug!(
            ?family,
            table = table.name(),
            ops = ops.len(),
            fresh,
            "iptables-restore"
        );
        match write(runner, restore, &input, outcome).await {
            Ok(()) => {
                current.kernel.apply(&ops);
                current.matches_last = true;
                return Ok(());
            }
            Err(e) => {
                *cache = None;
                if fresh {
                    return Err(e);
                }
                tracing::info!(?family, table = table.name(), error = %e, "write planned from the cache failed; re-reading the kernel");
            }
        }
    }
}

/// Runs one `iptables-restore --noflush` with `input`, counting its time and the run (a
/// failed restore counts; one that could not be started does not).
async fn write(
    runner: &Runner,
    restore: &str,
    input: &str,
    outcome: &mut TableOutcome,
) -> Result<(), DataplaneError> {
    let started = Instant::now();
    let result = runner
        .run(restore, &["--noflush", "-w", "10"], Some(input))
        .await;
    outcome.timings.write += started.elapsed();
    if matches!(result, Ok(_) | Err(DataplaneError::CommandFailed { .. })) {
        outcome.restores += 1;
    }
    result.map(drop)
}

#[cfg(test)]
mod tests;
