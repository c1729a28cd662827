//! The CNI commands: ADD, DEL, CHECK and VERSION over [`crate::ipam`] and [`crate::link`].
//!
//! Invariants:
//! - ADD either succeeds completely or leaves nothing behind: a failure after IPAM handed
//!   out addresses removes the veth (if created) and releases the addresses.
//! - DEL is idempotent: a missing namespace, a missing veth or already released addresses
//!   are success. It removes the veth before releasing the addresses, so an address is
//!   never handed out again while still routed to the old pod.
//! - Nothing is printed here: the binary prints the returned result (stdout is the CNI
//!   result channel), and logs go to a file.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value as Json, json};

use crate::config::{Command, NetConf, RuntimeEnv, SUPPORTED_VERSIONS};
use crate::error::CniError;
use crate::link::{self, GATEWAY, HOST_MAC, Wiring};
use crate::{ipam, names};

/// Runs one CNI command; returns the JSON to print on stdout, if any.
pub fn run(env: &RuntimeEnv, stdin: &[u8]) -> Result<Option<Json>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version()));
    }
    let conf = NetConf::parse(stdin)?;
    let host = names::host_interface(conf.prefix(), env);
    tracing::info!(
        command = env.command.as_str(),
        container = env.container_id,
        host,
        "request"
    );
    match env.command {
        Command::Add => add(env, &conf, stdin, &host).map(Some),
        Command::Del => del(env, &conf, stdin, &host).map(|()| None),
        Command::Check => check(env, &conf, stdin, &host).map(|()| None),
        Command::Version => Ok(Some(version())),
    }
}

/// The VERSION result.
pub fn version() -> Json {
    json!({
        "cniVersion": crate::error::DEFAULT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

fn ipam_binary(env: &RuntimeEnv, conf: &NetConf) -> Result<std::path::PathBuf, CniError> {
    let plugin = conf
        .ipam
        .as_ref()
        .map(|i| i.plugin.as_str())
        .unwrap_or_default();
    ipam::find(env, plugin)
}

fn netns_of(env: &RuntimeEnv) -> Result<&Path, CniError> {
    let netns = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::InvalidEnv("CNI_NETNS is not set".into()))?;
    if !netns.exists() {
        return Err(CniError::NoNetns(netns.display().to_string()));
    }
    Ok(netns)
}

/// What the pod's interface is wired with: its namespace, the runtime's interface name,
/// the host-side name `host`, its addresses and the configured MTU.
fn wiring<'a>(
    netns: &'a Path,
    env: &'a RuntimeEnv,
    conf: &NetConf,
    host: &'a str,
    ips: &'a [Ipv4Addr],
) -> Wiring<'a> {
    Wiring {
        netns,
        ifname: &env.ifname,
        host,
        ips,
        mtu: conf.mtu,
    }
}

fn add(env: &RuntimeEnv, conf: &NetConf, stdin: &[u8], host: &str) -> Result<Json, CniError> {
    let netns = netns_of(env)?;
    let binary = ipam_binary(env, conf)?;
    if link::host_link_exists(host) {
        // A previous sandbox of the same pod that was never deleted: its name is ours.
        tracing::warn!(host, "removing a stale host interface");
        link::delete_host(host)?;
    }
    let ips: Vec<Ipv4Addr> = ipam::add(&binary, stdin)?
        .into_iter()
        .map(|a| a.ip)
        .collect();
    let wired = link::create(&wiring(netns, env, conf, host, &ips))
        .and_then(|()| link::pod_mac(netns, &env.ifname));
    match wired {
        Ok(mac) => {
            tracing::info!(host, ?ips, "added");
            Ok(result(conf, env, host, &mac, &ips))
        }
        Err(e) => {
            tracing::warn!(error = %e, host, "ADD failed; undoing");
            if let Err(undo) = link::delete_host(host) {
                tracing::warn!(error = %undo, host, "cannot remove the host interface");
            }
            if let Err(undo) = ipam::del(&binary, stdin) {
                tracing::warn!(error = %undo, "cannot release the addresses");
            }
            Err(e)
        }
    }
}

fn result(conf: &NetConf, env: &RuntimeEnv, host: &str, mac: &str, ips: &[Ipv4Addr]) -> Json {
    let legacy = conf.cni_version != "1.0.0";
    let ips: Vec<Json> = ips
        .iter()
        .map(|ip| {
            let mut entry = json!({
                "address": format!("{ip}/32"),
                "gateway": GATEWAY,
                "interface": 1,
            });
            if legacy {
                entry["version"] = json!("4");
            }
            entry
        })
        .collect();
    let sandbox = env
        .netns
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": host, "mac": HOST_MAC},
            {"name": env.ifname, "mac": mac, "sandbox": sandbox},
        ],
        "ips": ips,
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
        "dns": {},
    })
}

fn del(env: &RuntimeEnv, conf: &NetConf, stdin: &[u8], host: &str) -> Result<(), CniError> {
    let binary = ipam_binary(env, conf)?;
    link::delete_host(host)?;
    ipam::del(&binary, stdin)?;
    tracing::info!(host, "deleted");
    Ok(())
}

/// The addresses of a previous result's `ips`.
fn prev_ips(conf: &NetConf) -> Result<Vec<Ipv4Addr>, CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::InvalidConfig("CHECK needs prevResult".into()))?;
    let ips = prev["ips"]
        .as_array()
        .ok_or_else(|| CniError::InvalidConfig("prevResult has no ips".into()))?;
    ips.iter()
        .map(|ip| {
            let text = ip["address"].as_str().unwrap_or_default();
            text.split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| CniError::InvalidConfig(format!("prevResult address {text:?}")))
        })
        .collect()
}

fn check(env: &RuntimeEnv, conf: &NetConf, stdin: &[u8], host: &str) -> Result<(), CniError> {
    let netns = netns_of(env)?;
    let ips = prev_ips(conf)?;
    link::verify(&wiring(netns, env, conf, host, &ips))?;
    ipam::check(&ipam_binary(env, conf)?, stdin)
}
