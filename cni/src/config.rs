//! What a runtime hands the plugin: the `CNI_*` environment and the network configuration
//! on stdin, parsed and validated once.
//!
//! Invariants after parsing: the interface names fit Linux's 15 bytes; the interface
//! prefix leaves room for at least [`MIN_HASH_CHARS`] hash digits; ADD, DEL and CHECK have
//! a container id, an interface name and a `CNI_PATH`; ADD and CHECK have a netns path.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::CniError;

/// The CNI versions whose configs we accept (results have the same shape for all of them,
/// except `ips[].version` before 1.0.0).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The interface prefix when the config names none (Calico's).
pub const DEFAULT_PREFIX: &str = "cali";
/// The shortest hash suffix a host interface name may have.
pub const MIN_HASH_CHARS: usize = 3;
/// Linux's limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// The CNI operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create the container's networking.
    Add,
    /// Remove it (idempotent).
    Del,
    /// Verify it against the previous result.
    Check,
    /// Report supported versions.
    Version,
}

impl Command {
    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// The runtime's `CNI_*` variables.
#[derive(Clone, Debug)]
pub struct RuntimeEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (a path; may be absent for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface name inside the container.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...).
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH` directories, searched for the IPAM plugin.
    pub path: Vec<PathBuf>,
}

fn var(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).filter(|v| !v.is_empty())
}

fn required(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<String, CniError> {
    var(get, name).ok_or_else(|| CniError::InvalidEnv(format!("{name} is not set")))
}

/// True for a usable Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name.contains(['/', ':', ' ', '\t', '\n', '%'])
}

impl RuntimeEnv {
    /// Reads the variables through `get` (`std::env::var` in the binary).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<RuntimeEnv, CniError> {
        let command = match required(&get, "CNI_COMMAND")?.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::InvalidEnv(format!(
                    "unknown CNI_COMMAND {other:?}"
                )));
            }
        };
        let mut env = RuntimeEnv {
            command,
            container_id: var(&get, "CNI_CONTAINERID").unwrap_or_default(),
            netns: var(&get, "CNI_NETNS").map(PathBuf::from),
            ifname: var(&get, "CNI_IFNAME").unwrap_or_default(),
            args: parse_args(&var(&get, "CNI_ARGS").unwrap_or_default()),
            path: var(&get, "CNI_PATH")
                .unwrap_or_default()
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        if command == Command::Version {
            return Ok(env);
        }
        env.container_id = required(&get, "CNI_CONTAINERID")?;
        env.ifname = required(&get, "CNI_IFNAME")?;
        if !valid_ifname(&env.ifname) {
            return Err(CniError::InvalidEnv(format!(
                "CNI_IFNAME {:?} is not an interface name",
                env.ifname
            )));
        }
        if env.path.is_empty() {
            return Err(CniError::InvalidEnv("CNI_PATH is not set".into()));
        }
        if command != Command::Del && env.netns.is_none() {
            return Err(CniError::InvalidEnv("CNI_NETNS is not set".into()));
        }
        Ok(env)
    }

    /// The pod this container belongs to, when the runtime is Kubernetes'.
    pub fn pod(&self) -> Option<(&str, &str)> {
        let ns = self.args.get("K8S_POD_NAMESPACE")?;
        let name = self.args.get("K8S_POD_NAME")?;
        Some((ns.as_str(), name.as_str()))
    }
}

fn parse_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `ipam` section: only its type matters here; the IPAM plugin reads the whole config.
#[derive(Clone, Debug, Deserialize)]
pub struct IpamConf {
    /// The IPAM plugin's binary name (`host-local`).
    #[serde(rename = "type")]
    pub plugin: String,
}

/// The network configuration on stdin (unknown keys are ignored: runtimes add some).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The config's CNI version.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The plugin type (this binary's name).
    #[serde(rename = "type")]
    pub plugin: String,
    /// IPAM delegation (required).
    pub ipam: Option<IpamConf>,
    /// Host-side interface prefix (default [`DEFAULT_PREFIX`]); must match the first of
    /// typha's and the agent's `--interface-prefix`.
    #[serde(default)]
    pub interface_prefix: Option<String>,
    /// Where the plugin logs (default `/var/log/felix-cni/cni.log`).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// MTU of both veth ends (default: the kernel's, 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The previous result (CHECK, and DEL from CNI 0.4.0 on).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

impl NetConf {
    /// Parses and validates the config bytes.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes)?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion(conf.cni_version));
        }
        let prefix = conf.prefix();
        if prefix.is_empty()
            || prefix.len() > MAX_IFNAME - MIN_HASH_CHARS
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(CniError::InvalidConfig(format!(
                "interfacePrefix {prefix:?}: 1 to {} ASCII letters or digits",
                MAX_IFNAME - MIN_HASH_CHARS
            )));
        }
        match &conf.ipam {
            None => Err(CniError::InvalidConfig("no ipam section".into())),
            Some(ipam) if ipam.plugin.is_empty() || ipam.plugin.contains('/') => Err(
                CniError::InvalidConfig(format!("ipam type {:?}", ipam.plugin)),
            ),
            Some(_) => Ok(conf),
        }
    }

    /// The host-side interface prefix.
    pub fn prefix(&self) -> &str {
        self.interface_prefix.as_deref().unwrap_or(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<RuntimeEnv, CniError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RuntimeEnv::from_vars(|k| map.get(k).cloned())
    }

    const ADD: [(&str, &str); 6] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a",
        ),
    ];

    #[test]
    fn runtime_env_parses_and_validates() {
        let e = env(&ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.pod(), Some(("x", "a")));
        assert_eq!(e.path.len(), 2);
        let missing_netns: Vec<_> = ADD
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        assert!(matches!(env(&missing_netns), Err(CniError::InvalidEnv(_))));
        let mut del = missing_netns.clone();
        del[0] = ("CNI_COMMAND", "DEL");
        assert!(env(&del).is_ok(), "DEL without a netns is fine");
        let mut long = ADD;
        long[3] = ("CNI_IFNAME", "a-very-long-interface");
        assert!(env(&long).is_err());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "BOGUS")]).is_err());
    }

    #[test]
    fn net_conf_validates_version_prefix_and_ipam() {
        let ok =
            br#"{"cniVersion":"1.0.0","name":"n","type":"felix-cni","ipam":{"type":"host-local"}}"#;
        assert_eq!(NetConf::parse(ok).unwrap().prefix(), "cali");
        let v =
            br#"{"cniVersion":"9.9.9","name":"n","type":"felix-cni","ipam":{"type":"host-local"}}"#;
        assert_eq!(NetConf::parse(v).unwrap_err().code(), 1);
        let no_ipam = br#"{"cniVersion":"1.0.0","name":"n","type":"felix-cni"}"#;
        assert_eq!(NetConf::parse(no_ipam).unwrap_err().code(), 7);
        let prefix = br#"{"cniVersion":"1.0.0","name":"n","type":"t","interfacePrefix":"a-b","ipam":{"type":"host-local"}}"#;
        assert_eq!(NetConf::parse(prefix).unwrap_err().code(), 7);
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code(), 6);
    }
}
