//! ipsets: programs the agent's ipsets (names starting with `cali`) by diffing them
//! against `ipset save` and writing the difference through `ipset -exist restore`.
//!
//! Two phases, because iptables rules reference sets by name: [`SetPlan::update`] runs
//! before iptables (creates sets, adds/removes members, so new rules find their sets)
//! and [`SetPlan::destroy`] after it (removes sets no rule references any more).
//!
//! Members are compared in the kernel's canonical form ([`normalize`]: `10.0.0.1/32` is
//! shown as `10.0.0.1`, networks are masked, IPv6 compressed, a bare port is tcp), so an
//! unchanged set plans nothing. A rewrite touching more members than the set will hold
//! (and at least [`REWRITE_MIN`]) fills a temporary set and swaps it in atomically. A set
//! whose type or family changed cannot be swapped (the kernel refuses swaps across
//! types), so it is destroyed and re-created: that fails while an iptables rule still
//! references it, which is counted, logged and retried like any write error.
//! Invariant: sets whose name does not start with `cali` are never read into the plan,
//! so never written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use super::DataplaneError;
use super::exec::Runner;
use crate::calc::{Family, IpSet, IpSetKind};

/// The prefix of every ipset the agent owns.
pub(crate) const SET_PREFIX: &str = "cali";
/// The temporary set used for swaps (owned by the agent; a leftover is destroyed).
pub(crate) const TEMP_SET: &str = "calitmp-swap";
/// The member limit every set is created with.
const MAX_ELEM: u32 = 1_048_576;
/// A diff at least this large (and larger than the set) is written by swap.
pub(crate) const REWRITE_MIN: usize = 1000;

/// One of the agent's sets as `ipset save` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelSet {
    /// The set type, `None` when it is not one the agent creates.
    pub(crate) kind: Option<IpSetKind>,
    /// The family, `None` when absent or unknown.
    pub(crate) family: Option<Family>,
    /// Members in canonical form.
    pub(crate) members: BTreeSet<String>,
}

/// The writes one apply needs; `None` where nothing is to be written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SetPlan {
    /// Creates, member changes and swaps (run before iptables).
    pub(crate) update: Option<String>,
    /// Destroys of sets no longer wanted (run after iptables).
    pub(crate) destroy: Option<String>,
    /// The sets `destroy` removes.
    pub(crate) destroyed: Vec<String>,
}

fn type_name(kind: IpSetKind) -> &'static str {
    match kind {
        IpSetKind::Net => "hash:net",
        IpSetKind::IpPort => "hash:ip,port",
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

/// Parses `ipset save` output, keeping only the agent's sets.
pub(crate) fn parse_save(text: &str) -> BTreeMap<String, KernelSet> {
    let mut sets: BTreeMap<String, KernelSet> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(verb), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        if !name.starts_with(SET_PREFIX) {
            continue;
        }
        match verb {
            "create" => {
                let kind = match words.next() {
                    Some("hash:net") => Some(IpSetKind::Net),
                    Some("hash:ip,port") => Some(IpSetKind::IpPort),
                    _ => None,
                };
                let mut family = None;
                while let Some(word) = words.next() {
                    if word == "family" {
                        family = match words.next() {
                            Some("inet") => Some(Family::V4),
                            Some("inet6") => Some(Family::V6),
                            _ => None,
                        };
                    }
                }
                let set = sets.entry(name.to_owned()).or_default();
                set.kind = kind;
                set.family = family;
            }
            "add" => {
                if let Some(member) = words.next() {
                    let entry = sets.entry(name.to_owned()).or_default();
                    let canonical = match entry.kind {
                        Some(kind) => normalize(kind, member),
                        None => member.to_owned(),
                    };
                    entry.members.insert(canonical);
                }
            }
            _ => {}
        }
    }
    sets
}

/// The kernel's canonical form of a member (unparsable input is returned unchanged).
pub(crate) fn normalize(kind: IpSetKind, member: &str) -> String {
    match kind {
        IpSetKind::Net => normalize_net(member).unwrap_or_else(|| member.to_owned()),
        IpSetKind::IpPort => match member.split_once(',') {
            Some((ip, port)) => {
                let ip = ip
                    .parse::<IpAddr>()
                    .map_or_else(|_| ip.to_owned(), |ip| ip.to_string());
                let port = match port.split_once(':') {
                    Some((proto, number)) => format!("{}:{number}", proto.to_ascii_lowercase()),
                    None => format!("tcp:{port}"),
                };
                format!("{ip},{port}")
            }
            None => member.to_owned(),
        },
    }
}

fn normalize_net(member: &str) -> Option<String> {
    let (ip, len) = match member.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
        None => (member.parse::<IpAddr>().ok()?, None),
    };
    let (masked, full) = match ip {
        IpAddr::V4(v4) => {
            let len = len.unwrap_or(32).min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            (
                IpAddr::from((u32::from(v4) & mask).to_be_bytes()),
                len == 32,
            )
        }
        IpAddr::V6(v6) => {
            let len = len.unwrap_or(128).min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            (
                IpAddr::from((u128::from(v6) & mask).to_be_bytes()),
                len == 128,
            )
        }
    };
    Some(match (full, len) {
        (true, _) => masked.to_string(),
        (false, Some(len)) => format!("{masked}/{len}"),
        (false, None) => masked.to_string(),
    })
}

/// What the agent knows about one of its sets without reading the kernel: its type and
/// family, and its members when it holds exactly a desired member set (`None`: contents
/// unknown, the set is only ever destroyed or rewritten whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CachedSet {
    /// The set type.
    pub(crate) kind: IpSetKind,
    /// The family.
    pub(crate) family: Family,
    /// The desired members the set was last brought in line with.
    pub(crate) members: Option<Arc<BTreeSet<String>>>,
}

/// The agent's sets as the agent last wrote (or read) them.
pub(crate) type SetCache = BTreeMap<String, CachedSet>;

/// What a plan is computed against.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Current<'a> {
    /// A fresh `ipset save`: members compared in canonical form.
    Kernel(&'a BTreeMap<String, KernelSet>),
    /// The cache: members compared as the calculation wrote them, and an unchanged
    /// `Arc` is not compared at all.
    Cache(&'a SetCache),
}

impl Current<'_> {
    fn names(&self) -> Vec<&String> {
        match self {
            Current::Kernel(k) => k.keys().collect(),
            Current::Cache(c) => c.keys().collect(),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Current::Kernel(k) => k.contains_key(name),
            Current::Cache(c) => c.contains_key(name),
        }
    }
}

/// The member changes that turn one existing set into `set`, normalized; `None` when
/// its contents are unknown (it must be rewritten whole).
fn member_diff(
    set: &IpSet,
    current: Current<'_>,
    name: &str,
) -> Option<(Vec<String>, Vec<String>)> {
    let norm = |m: &String| normalize(set.kind, m);
    match current {
        Current::Kernel(k) => {
            let have = &k.get(name)?.members;
            let want: BTreeSet<String> = set.members.iter().map(norm).collect();
            let adds = want.difference(have).cloned().collect();
            let dels = have.difference(&want).cloned().collect();
            Some((adds, dels))
        }
        Current::Cache(c) => {
            let have = c.get(name)?.members.as_ref()?;
            if Arc::ptr_eq(have, &set.members) {
                return Some((Vec::new(), Vec::new()));
            }
            // BTreeSet::difference walks both sets in order (or searches the larger
            // one when sizes differ a lot); only the changed members are normalized.
            let adds = set.members.difference(have).map(norm).collect();
            let dels = have.difference(&set.members).map(norm).collect();
            Some((adds, dels))
        }
    }
}

/// The type and family of an existing set, `None` each where unknown.
fn existing(current: Current<'_>, name: &str) -> Option<(Option<IpSetKind>, Option<Family>)> {
    match current {
        Current::Kernel(k) => k.get(name).map(|s| (s.kind, s.family)),
        Current::Cache(c) => c.get(name).map(|s| (Some(s.kind), Some(s.family))),
    }
}

/// Computes the writes that turn `current` into `desired`.
pub(crate) fn plan(desired: &BTreeMap<String, IpSet>, current: Current<'_>) -> SetPlan {
    let mut update = String::new();
    let mut temp_used = false;
    for (name, set) in desired.iter().filter(|(n, _)| n.starts_with(SET_PREFIX)) {
        plan_set(&mut update, &mut temp_used, name, set, current);
    }
    let mut destroy = String::new();
    let mut destroyed = Vec::new();
    for name in current.names() {
        let keep = desired.contains_key(name) || (temp_used && name == TEMP_SET);
        if !keep {
            let _ = writeln!(destroy, "destroy {name}");
            destroyed.push(name.clone());
        }
    }
    SetPlan {
        update: (!update.is_empty()).then_some(update),
        destroy: (!destroy.is_empty()).then_some(destroy),
        destroyed,
    }
}

/// Appends to `update` the writes that bring set `name` to `set`: created (or
/// recreated with another type or family) and filled, flushed and refilled when its
/// members are unknown, rewritten through the temporary set (`temp_used` then) when
/// most members change, otherwise its member differences.
fn plan_set(
    update: &mut String,
    temp_used: &mut bool,
    name: &str,
    set: &IpSet,
    current: Current<'_>,
) {
    let create = |target: &str| {
        format!(
            "create {target} {} family {} maxelem {MAX_ELEM}\n",
            type_name(set.kind),
            family_name(set.family)
        )
    };
    let rewrite = match existing(current, name) {
        None => {
            *update += &create(name);
            false
        }
        Some((kind, family)) if kind != Some(set.kind) || family != Some(set.family) => {
            let _ = writeln!(update, "destroy {name}");
            *update += &create(name);
            false
        }
        Some(_) => true,
    };
    if !rewrite {
        add_all(update, name, set);
        return;
    }
    let Some((adds, dels)) = member_diff(set, current, name) else {
        let _ = writeln!(update, "flush {name}");
        add_all(update, name, set);
        return;
    };
    if adds.len() + dels.len() >= REWRITE_MIN && adds.len() + dels.len() > set.members.len() {
        if !*temp_used && current.contains(TEMP_SET) {
            let _ = writeln!(update, "destroy {TEMP_SET}");
        }
        *temp_used = true;
        *update += &create(TEMP_SET);
        let _ = writeln!(update, "flush {TEMP_SET}");
        add_all(update, TEMP_SET, set);
        let _ = writeln!(update, "swap {TEMP_SET} {name}\ndestroy {TEMP_SET}");
        return;
    }
    for member in dels {
        let _ = writeln!(update, "del {name} {member}");
    }
    for member in adds {
        let _ = writeln!(update, "add {name} {member}");
    }
}

/// The cache once `plan` has been written: every desired set holds its members; the sets
/// of `plan.destroyed` still exist (with unknown members) unless `destroyed` says the
/// destroy script ran too.
pub(crate) fn cache_after(
    desired: &BTreeMap<String, IpSet>,
    plan: &SetPlan,
    destroyed: bool,
) -> SetCache {
    let mut cache: SetCache = desired
        .iter()
        .filter(|(n, _)| n.starts_with(SET_PREFIX))
        .map(|(name, set)| {
            let cached = CachedSet {
                kind: set.kind,
                family: set.family,
                members: Some(Arc::clone(&set.members)),
            };
            (name.clone(), cached)
        })
        .collect();
    if !destroyed {
        for name in &plan.destroyed {
            // Type and family do not matter: a set no longer wanted is only destroyed,
            // and one wanted again is rewritten whole (unknown members).
            let leftover = CachedSet {
                kind: IpSetKind::Net,
                family: Family::V4,
                members: None,
            };
            cache.insert(name.clone(), leftover);
        }
    }
    cache
}

fn add_all(out: &mut String, name: &str, set: &IpSet) {
    for member in set.members.iter() {
        let _ = writeln!(out, "add {name} {}", normalize(set.kind, member));
    }
}

/// Reads the agent's sets from the kernel.
pub(crate) async fn read(runner: &Runner) -> Result<BTreeMap<String, KernelSet>, DataplaneError> {
    let text = runner.run("ipset", &["save"], None).await?;
    Ok(parse_save(&text))
}

/// Runs one `ipset restore` script.
pub(crate) async fn restore(runner: &Runner, script: &str) -> Result<(), DataplaneError> {
    tracing::debug!(lines = script.lines().count(), "ipset restore");
    runner
        .run("ipset", &["-exist", "restore"], Some(script))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn set(kind: IpSetKind, family: Family, members: &[&str]) -> IpSet {
        IpSet {
            kind,
            family,
            members: Arc::new(members.iter().map(|m| m.to_string()).collect()),
        }
    }

    #[test]
    fn normalizes_like_the_kernel() {
        assert_eq!(normalize(IpSetKind::Net, "10.0.0.1/32"), "10.0.0.1");
        assert_eq!(normalize(IpSetKind::Net, "10.1.2.3/16"), "10.1.0.0/16");
        assert_eq!(normalize(IpSetKind::Net, "fd00:0::0001/128"), "fd00::1");
        assert_eq!(normalize(IpSetKind::Net, "0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(
            normalize(IpSetKind::IpPort, "fd00::0001,TCP:80"),
            "fd00::1,tcp:80"
        );
        assert_eq!(
            normalize(IpSetKind::IpPort, "10.0.0.1,53"),
            "10.0.0.1,tcp:53"
        );
        assert_eq!(normalize(IpSetKind::Net, "junk"), "junk");
    }

    #[test]
    fn parses_only_agent_sets() {
        let k = parse_save(
            "create foo hash:net family inet hashsize 1024\nadd foo 1.1.1.1\n\
             create cali40a hash:net family inet hashsize 1024 maxelem 1048576\nadd cali40a 10.0.0.1\n\
             create cali60b hash:ip,port family inet6\nadd cali60b fd00::1,tcp:80\n",
        );
        assert_eq!(k.keys().collect::<Vec<_>>(), ["cali40a", "cali60b"]);
        assert_eq!(k["cali60b"].kind, Some(IpSetKind::IpPort));
        assert_eq!(k["cali60b"].family, Some(Family::V6));
        assert!(k["cali40a"].members.contains("10.0.0.1"));
    }

    #[test]
    fn plans_creates_diffs_and_destroys() {
        let kernel = parse_save(
            "create cali40a hash:net family inet\nadd cali40a 10.0.0.1\nadd cali40a 10.0.0.2\n\
             create cali40old hash:net family inet\n",
        );
        let desired: BTreeMap<String, IpSet> = [
            (
                "cali40a".to_string(),
                set(IpSetKind::Net, Family::V4, &["10.0.0.1/32", "10.0.0.3/32"]),
            ),
            (
                "cali40new".to_string(),
                set(IpSetKind::IpPort, Family::V4, &["10.0.0.1,tcp:80"]),
            ),
        ]
        .into();
        let plan = plan(&desired, Current::Kernel(&kernel));
        assert_eq!(
            plan.update.unwrap(),
            "del cali40a 10.0.0.2\nadd cali40a 10.0.0.3\n\
             create cali40new hash:ip,port family inet maxelem 1048576\nadd cali40new 10.0.0.1,tcp:80\n"
        );
        assert_eq!(plan.destroy.unwrap(), "destroy cali40old\n");
    }

    #[test]
    fn unchanged_sets_plan_nothing() {
        let kernel = parse_save(
            "create cali40a hash:net family inet\nadd cali40a 10.0.0.1\nadd cali40a 10.2.0.0/16\n",
        );
        let desired: BTreeMap<String, IpSet> = [(
            "cali40a".to_string(),
            set(IpSetKind::Net, Family::V4, &["10.0.0.1/32", "10.2.0.0/16"]),
        )]
        .into();
        assert_eq!(plan(&desired, Current::Kernel(&kernel)), SetPlan::default());
    }

    #[test]
    fn type_change_recreates_and_huge_rewrite_swaps() {
        let kernel = parse_save(
            "create cali40a hash:net family inet\nadd cali40a 10.0.0.1\ncreate cali40b hash:net family inet\nadd cali40b 10.8.0.1\n",
        );
        let many: Vec<String> = (0..REWRITE_MIN)
            .map(|i| format!("10.9.{}.{}", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let desired: BTreeMap<String, IpSet> = [
            (
                "cali40a".to_string(),
                set(IpSetKind::Net, Family::V6, &["fd00::1"]),
            ),
            (
                "cali40b".to_string(),
                set(IpSetKind::Net, Family::V4, &many),
            ),
        ]
        .into();
        let update = plan(&desired, Current::Kernel(&kernel)).update.unwrap();
        assert!(update.starts_with("destroy cali40a\ncreate cali40a hash:net family inet6"));
        assert!(update.contains(&format!("create {TEMP_SET} hash:net family inet")));
        assert!(update.ends_with(&format!("swap {TEMP_SET} cali40b\ndestroy {TEMP_SET}\n")));
    }

    #[test]
    fn cached_plans_skip_the_same_arc_and_diff_the_rest() {
        let old = set(IpSetKind::Net, Family::V4, &["10.0.0.1/32", "10.0.0.2/32"]);
        let desired: BTreeMap<String, IpSet> = [("cali40a".to_string(), old.clone())].into();
        let cache = cache_after(&desired, &SetPlan::default(), true);
        assert_eq!(plan(&desired, Current::Cache(&cache)), SetPlan::default());
        let new = set(IpSetKind::Net, Family::V4, &["10.0.0.1/32", "10.0.0.3/32"]);
        let changed: BTreeMap<String, IpSet> = [("cali40a".to_string(), new)].into();
        let p = plan(&changed, Current::Cache(&cache));
        assert_eq!(
            p.update.as_deref(),
            Some("del cali40a 10.0.0.2\nadd cali40a 10.0.0.3\n")
        );
        // A set left over (destroy not yet run) and wanted again is rewritten whole.
        let leftover = cache_after(
            &BTreeMap::new(),
            &plan(&BTreeMap::new(), Current::Cache(&cache)),
            false,
        );
        let p = plan(&desired, Current::Cache(&leftover));
        assert_eq!(
            p.update.as_deref(),
            Some("flush cali40a\nadd cali40a 10.0.0.1\nadd cali40a 10.0.0.2\n")
        );
    }
}
