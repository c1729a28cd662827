//! install-cni: what the DaemonSet's init container runs (`felix-cni install`). It copies
//! this binary into the host's CNI bin directory and writes the network config list into
//! the host's CNI config directory, both atomically (write a temporary file beside the
//! target, then rename), so the kubelet never reads half a file.
//!
//! Idempotent: a target whose bytes already match is left alone (a restarted init
//! container changes nothing), and [`Outcome`] says what was written.

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use crate::config::{DEFAULT_PREFIX, MAX_IFNAME, MIN_HASH_CHARS};

/// The binary's name in the host's CNI bin directory (the conflist's plugin type).
pub const PLUGIN_NAME: &str = "felix-cni";

/// Errors of the install subcommand.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read, written or renamed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The settings are unusable (no pod CIDR, a bad prefix).
    #[error("invalid install settings: {0}")]
    Invalid(String),
}

/// What to install.
#[derive(Clone, Debug)]
pub struct InstallConfig {
    /// The binary to copy (normally this process's own executable).
    pub source: PathBuf,
    /// The host's CNI bin directory (mounted from `/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The host's CNI config directory (mounted from `/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The conflist's file name (the kubelet uses the first in lexical order).
    pub conf_name: String,
    /// The network's name.
    pub network_name: String,
    /// This node's pod CIDR (host-local's range).
    pub pod_cidr: String,
    /// The host-side interface prefix.
    pub interface_prefix: String,
    /// MTU for the pods' interfaces (None: the kernel's default).
    pub mtu: Option<u32>,
    /// Where the plugin logs on the host.
    pub log_file: PathBuf,
}

/// What [`install`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The binary was (re)written.
    pub binary_written: bool,
    /// The conflist was (re)written.
    pub conflist_written: bool,
}

impl InstallConfig {
    fn validate(&self) -> Result<(), InstallError> {
        let cidr_ok = self.pod_cidr.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok()
        });
        if !cidr_ok {
            return Err(InstallError::Invalid(format!(
                "pod CIDR {:?}",
                self.pod_cidr
            )));
        }
        let p = &self.interface_prefix;
        if p.is_empty()
            || p.len() > MAX_IFNAME - MIN_HASH_CHARS
            || !p.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(InstallError::Invalid(format!("interface prefix {p:?}")));
        }
        if self.conf_name.contains('/') || !self.conf_name.ends_with(".conflist") {
            return Err(InstallError::Invalid(format!(
                "conflist name {:?}",
                self.conf_name
            )));
        }
        Ok(())
    }

    /// The network configuration list this config describes.
    pub fn conflist(&self) -> Json {
        let mut plugin = json!({
            "type": PLUGIN_NAME,
            "interfacePrefix": self.interface_prefix,
            "logFile": self.log_file,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.pod_cidr}]],
            },
        });
        if let Some(mtu) = self.mtu {
            plugin["mtu"] = json!(mtu);
        }
        json!({
            "name": self.network_name,
            "cniVersion": "1.0.0",
            "plugins": [plugin],
        })
    }
}

impl Default for InstallConfig {
    fn default() -> Self {
        InstallConfig {
            source: PathBuf::new(),
            bin_dir: "/host/opt/cni/bin".into(),
            conf_dir: "/host/etc/cni/net.d".into(),
            conf_name: "10-felix.conflist".into(),
            network_name: "k8s-pod-network".into(),
            pod_cidr: String::new(),
            interface_prefix: DEFAULT_PREFIX.into(),
            mtu: None,
            log_file: "/var/log/felix-cni/cni.log".into(),
        }
    }
}

/// Writes `bytes` to `target` through a temporary file and a rename, unless `target`
/// already holds exactly these bytes. Returns whether it wrote.
fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> Result<bool, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { what, path, source }
    };
    if std::fs::read(target).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("chmod", &tmp))?;
    std::fs::rename(&tmp, target).map_err(io("renaming into", target))?;
    Ok(true)
}

/// Installs the binary and the conflist.
pub fn install(config: &InstallConfig) -> Result<Outcome, InstallError> {
    config.validate()?;
    let binary = std::fs::read(&config.source).map_err(|source| InstallError::Io {
        what: "reading",
        path: config.source.clone(),
        source,
    })?;
    for dir in [&config.bin_dir, &config.conf_dir] {
        std::fs::create_dir_all(dir).map_err(|source| InstallError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
    }
    let binary_written = write_atomic(&config.bin_dir.join(PLUGIN_NAME), &binary, 0o755)?;
    let mut conflist = serde_json::to_vec_pretty(&config.conflist()).unwrap_or_default();
    conflist.push(b'\n');
    let conflist_written =
        write_atomic(&config.conf_dir.join(&config.conf_name), &conflist, 0o644)?;
    Ok(Outcome {
        binary_written,
        conflist_written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("felix-cni-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn install_writes_atomically_and_is_idempotent() {
        let dir = scratch("idem");
        let source = dir.join("src-binary");
        std::fs::write(&source, b"\x7fELF pretend").unwrap();
        let config = InstallConfig {
            source: source.clone(),
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            pod_cidr: "10.244.3.0/24".into(),
            ..InstallConfig::default()
        };
        let first = install(&config).unwrap();
        assert_eq!(
            first,
            Outcome {
                binary_written: true,
                conflist_written: true
            }
        );
        let conf: Json =
            serde_json::from_slice(&std::fs::read(dir.join("net.d/10-felix.conflist")).unwrap())
                .unwrap();
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        assert_eq!(conf["plugins"][0]["type"], PLUGIN_NAME);
        let again = install(&config).unwrap();
        assert_eq!(
            again,
            Outcome {
                binary_written: false,
                conflist_written: false
            }
        );
        // A changed setting rewrites only the conflist; no temporary file stays behind.
        let moved = InstallConfig {
            pod_cidr: "10.244.4.0/24".into(),
            ..config.clone()
        };
        assert_eq!(
            install(&moved).unwrap(),
            Outcome {
                binary_written: false,
                conflist_written: true
            }
        );
        let left: Vec<_> = std::fs::read_dir(dir.join("net.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("10-felix.conflist")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn install_refuses_bad_settings() {
        let bad = InstallConfig {
            pod_cidr: "not-a-cidr".into(),
            ..InstallConfig::default()
        };
        assert!(matches!(install(&bad), Err(InstallError::Invalid(_))));
        let prefix = InstallConfig {
            pod_cidr: "10.0.0.0/24".into(),
            interface_prefix: "a-b".into(),
            ..InstallConfig::default()
        };
        assert!(matches!(install(&prefix), Err(InstallError::Invalid(_))));
    }
}
