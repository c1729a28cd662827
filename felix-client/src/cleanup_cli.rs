//! `felix-client cleanup`: the uninstall step. Removes the agent's hooks and `cali-`
//! chains (every iptables flavour, both families), its `cali` ipsets and its protocol-80
//! routes from the node; foreign rules stay (see `dataplane::cleanup`). Run it on each
//! node after deleting the DaemonSet (docs/operations.md, "Uninstall").

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::dataplane::{self, DataplaneConfig};

/// `felix-client cleanup` flags.
#[derive(Debug, Parser)]
#[command(
    name = "felix-client cleanup",
    version,
    about = "Remove everything the agent programmed on this node"
)]
pub struct CleanupArgs {
    /// Clean the network namespace /var/run/netns/NAME instead of the agent's own.
    #[arg(long, env = "FELIX_NETNS")]
    pub netns: Option<String>,
    /// Leave ip6tables and IPv6 routes alone (hosts without IPv6).
    #[arg(long, env = "FELIX_DISABLE_IPV6")]
    pub disable_ipv6: bool,
}

/// Runs the subcommand with `args` (the first is `cleanup`); a failure prints its error
/// chain once (`edge::cli::exit_code`).
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: CleanupArgs = match edge::cli::parse(args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .try_init()
        .ok();
    edge::cli::exit_code("felix-client cleanup", clean(args))
}

fn clean(args: CleanupArgs) -> anyhow::Result<()> {
    let config = DataplaneConfig {
        netns: args.netns,
        ipv6: !args.disable_ipv6,
        ..DataplaneConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(dataplane::cleanup(&config))?;
    println!(
        "felix-client cleanup: {} table(s) cleaned, {} ipset(s) destroyed, routes with protocol {} flushed",
        report.tables_cleaned,
        report.ipsets_destroyed,
        dataplane::ROUTE_PROTOCOL
    );
    for tunnel in &report.tunnels {
        println!("tunnel device {tunnel}");
    }
    if !report.foreign_tables.is_empty() {
        println!(
            "left alone (another agent owns cali- chains there): {}",
            report.foreign_tables.join(", ")
        );
    }
    Ok(())
}
