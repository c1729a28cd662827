//! IPAM delegation: runs the IPAM plugin the config names (host-local) the way the
//! runtime ran us (same environment, same config on stdin, `CNI_COMMAND` set per call)
//! and reads its result.
//!
//! Invariant: an IPAM error result reaches our caller as [`CniError::Ipam`] with the IPAM
//! plugin's code, never as a generic failure.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde::Deserialize;

use crate::config::{Command, RuntimeEnv};
use crate::error::CniError;

/// One address IPAM handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    /// The address.
    pub ip: Ipv4Addr,
}

#[derive(Deserialize)]
struct IpamIp {
    address: String,
}

#[derive(Deserialize)]
struct IpamResult {
    #[serde(default)]
    ips: Vec<IpamIp>,
}

#[derive(Deserialize)]
struct IpamError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find(env: &RuntimeEnv, plugin: &str) -> Result<PathBuf, CniError> {
    env.path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::IpamNotFound(plugin.to_string()))
}

/// Runs the IPAM plugin `binary` for `command` with `config` on stdin; returns stdout.
fn run(binary: &Path, command: Command, config: &[u8]) -> Result<Vec<u8>, CniError> {
    let failed = |e: std::io::Error| CniError::Io {
        what: format!("running {}", binary.display()),
        source: e,
    };
    let mut child = Process::new(binary)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(config).map_err(failed)?;
    }
    let out = child.wait_with_output().map_err(failed)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let plugin = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Err(match serde_json::from_slice::<IpamError>(&out.stdout) {
        Ok(e) => CniError::Ipam {
            plugin,
            code: e.code,
            msg: e.msg,
            details: e.details,
        },
        Err(_) => CniError::Ipam {
            plugin,
            code: 999,
            msg: format!("exited with {}", out.status),
            details: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
    })
}

/// IPAM ADD: the IPv4 addresses handed out (at least one).
pub fn add(binary: &Path, config: &[u8]) -> Result<Vec<Assigned>, CniError> {
    let out = run(binary, Command::Add, config)?;
    let result: IpamResult =
        serde_json::from_slice(&out).map_err(|e| CniError::IpamResult(e.to_string()))?;
    let mut assigned = Vec::new();
    for ip in result.ips {
        let addr = ip.address.split('/').next().unwrap_or_default();
        match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => assigned.push(Assigned { ip: v4 }),
            Ok(std::net::IpAddr::V6(_)) => {
                return Err(CniError::IpamResult(format!(
                    "IPv6 address {} (this plugin is IPv4 only)",
                    ip.address
                )));
            }
            Err(_) => return Err(CniError::IpamResult(format!("address {}", ip.address))),
        }
    }
    if assigned.is_empty() {
        return Err(CniError::IpamResult("no IPv4 address".into()));
    }
    Ok(assigned)
}

/// IPAM DEL (host-local treats an unknown container as success).
pub fn del(binary: &Path, config: &[u8]) -> Result<(), CniError> {
    run(binary, Command::Del, config).map(|_| ())
}

/// IPAM CHECK.
pub fn check(binary: &Path, config: &[u8]) -> Result<(), CniError> {
    run(binary, Command::Check, config).map(|_| ())
}
