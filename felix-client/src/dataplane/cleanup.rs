//! cleanup: removes everything the agent owns from a node (`felix-client cleanup`, the
//! uninstall step): its hooks and `cali-` chains in every iptables flavour that runs
//! (legacy and nft, IPv4 and IPv6), its `cali` ipsets, its routes (protocol 80) and its
//! tunnel devices (`vxlan.calico` deleted; `tunl0` deleted, or set down when it is the
//! kernel's undeletable fallback device). Foreign rules, chains, sets and routes stay.
//!
//! A table where another agent owns `cali-` chains ([`super::owner`]) is left alone, and
//! so are the ipsets and tunnel devices then (they would be that agent's); the report
//! says so.

use super::backend::Programs;
use super::exec::Runner;
use super::iptables;
use super::routes::ROUTE_PROTOCOL;
use super::{DataplaneConfig, DataplaneError, ipsets, owner, tunnels};
use crate::calc::{Chains, Family};

/// What [`cleanup`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// iptables-restore transactions run (one per table that held something of ours).
    pub tables_cleaned: usize,
    /// ipsets destroyed.
    pub ipsets_destroyed: usize,
    /// Tables left alone because another agent owns their `cali-` chains.
    pub foreign_tables: Vec<String>,
    /// What happened to each tunnel device found (`vxlan.calico deleted`, ...).
    pub tunnels: Vec<String>,
}

/// The iptables flavours whose programs run here (plain `iptables-*` when neither does).
async fn flavours(runner: &Runner) -> Vec<Programs> {
    let mut found = Vec::new();
    for flavour in [Programs::Legacy, Programs::Nft] {
        let (save, _) = flavour.save_restore(Family::V4);
        if runner.run(save, &["-t", "filter"], None).await.is_ok() {
            found.push(flavour);
        }
    }
    if found.is_empty() {
        found.push(Programs::Plain);
    }
    found
}

async fn clean_tables(
    runner: &mut Runner,
    config: &DataplaneConfig,
    report: &mut CleanupReport,
) -> Result<(), DataplaneError> {
    for flavour in flavours(runner).await {
        runner.iptables = flavour;
        for (family, table) in owner::tables(config) {
            let Ok(kernel) = iptables::read(runner, family, table).await else {
                continue;
            };
            let name = format!("{} {family:?} {}", flavour.as_str(), table.name());
            if let Some(rule) = owner::foreign_rule(&kernel) {
                tracing::warn!(
                    table = name,
                    rule,
                    "another agent owns cali- chains here; left alone"
                );
                report.foreign_tables.push(name);
                continue;
            }
            let ops = iptables::plan_ops(table, &Chains::new(), &kernel, None);
            if let Some(input) = iptables::render(table, &ops) {
                let (_, restore) = flavour.save_restore(family);
                runner
                    .run(restore, &["--noflush", "-w", "10"], Some(&input))
                    .await?;
                report.tables_cleaned += 1;
            }
        }
    }
    Ok(())
}

async fn clean_ipsets(runner: &Runner, report: &mut CleanupReport) -> Result<(), DataplaneError> {
    let sets = ipsets::parse_save(&runner.run("ipset", &["save"], None).await?);
    let names: Vec<&String> = sets.keys().collect();
    if names.is_empty() {
        return Ok(());
    }
    let script: String = names.iter().map(|n| format!("destroy {n}\n")).collect();
    runner.run("ipset", &["restore"], Some(&script)).await?;
    report.ipsets_destroyed = names.len();
    Ok(())
}

/// Removes everything the agent owns (see the module docs).
pub async fn cleanup(config: &DataplaneConfig) -> Result<CleanupReport, DataplaneError> {
    let mut runner = Runner::new(config.netns.clone());
    let mut report = CleanupReport::default();
    clean_tables(&mut runner, config, &mut report).await?;
    if report.foreign_tables.is_empty() {
        clean_ipsets(&runner, &mut report).await?;
        report.tunnels = tunnels::remove(&runner).await?;
    }
    let proto = ROUTE_PROTOCOL.to_string();
    for family in ["-4", "-6"] {
        if family == "-6" && !config.ipv6 {
            continue;
        }
        runner
            .run("ip", &[family, "route", "flush", "proto", &proto], None)
            .await?;
    }
    Ok(report)
}
