//! The plugin's errors and their CNI error result.
//!
//! The CNI specification (1.0, "Error") has a plugin print
//! `{"cniVersion", "code", "msg", "details"}` on stdout and exit non-zero. Codes 1-99 are
//! the specification's; 100 and above are ours ([`CniError::code`] documents every one).
//! An IPAM plugin's own error result is passed through with its code, so the runtime sees
//! what host-local said (an exhausted range, for example).

use serde::Serialize;

/// The CNI version our results and errors carry when the config's is unknown.
pub const DEFAULT_VERSION: &str = "1.0.0";

/// Everything that can make a plugin command fail.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The config asks for a CNI version we do not speak (code 1).
    #[error("incompatible CNI version {0}")]
    IncompatibleVersion(String),
    /// A required `CNI_*` variable is missing or invalid (code 4).
    #[error("invalid environment: {0}")]
    InvalidEnv(String),
    /// The network configuration on stdin is not valid JSON of the expected shape (code 6).
    #[error("cannot decode the network configuration: {0}")]
    Decode(#[from] serde_json::Error),
    /// The network configuration is well-formed but unusable (code 7).
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// The container's network namespace does not exist (code 3).
    #[error("network namespace {0} does not exist")]
    NoNetns(String),
    /// Reading stdin or a file failed (code 5).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The IPAM plugin the config names is not in any `CNI_PATH` directory (code 100).
    #[error("IPAM plugin {0:?} not found in CNI_PATH")]
    IpamNotFound(String),
    /// The IPAM plugin answered with a CNI error result (its own code is passed on).
    #[error("IPAM plugin {plugin}: {msg}")]
    Ipam {
        /// The IPAM plugin's type.
        plugin: String,
        /// Its error code.
        code: u32,
        /// Its message.
        msg: String,
        /// Its details.
        details: String,
    },
    /// The IPAM plugin's result has no IPv4 address, or one we cannot parse (code 102).
    #[error("unusable IPAM result: {0}")]
    IpamResult(String),
    /// A network command (`ip`, `nsenter`) failed (code 101).
    #[error("{command}: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr (or how it failed to start).
        stderr: String,
    },
    /// CHECK found the container's networking differs from the previous result (code 103).
    #[error("check failed: {0}")]
    Check(String),
}

impl CniError {
    /// The CNI error code: 1 incompatible version, 3 unknown container (netns), 4 invalid
    /// environment, 5 I/O, 6 decode, 7 invalid config; ours: 100 IPAM plugin missing,
    /// 101 network command failed, 102 unusable IPAM result, 103 CHECK mismatch; IPAM
    /// errors keep the IPAM plugin's code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => 1,
            CniError::NoNetns(_) => 3,
            CniError::InvalidEnv(_) => 4,
            CniError::Io { .. } => 5,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig(_) => 7,
            CniError::IpamNotFound(_) => 100,
            CniError::Command { .. } => 101,
            CniError::IpamResult(_) => 102,
            CniError::Check(_) => 103,
            CniError::Ipam { code, .. } => *code,
        }
    }

    /// The error result to print on stdout.
    pub fn result(&self, cni_version: &str) -> ErrorResult {
        let details = match self {
            CniError::Ipam { details, .. } => details.clone(),
            CniError::Command { stderr, .. } => stderr.clone(),
            _ => String::new(),
        };
        ErrorResult {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details,
        }
    }
}

/// A CNI error result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResult {
    /// The CNI version of the result.
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details (may be empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_results_carry_spec_codes() {
        let e = CniError::InvalidEnv("CNI_IFNAME missing".into());
        let json = serde_json::to_value(e.result("1.0.0")).unwrap();
        assert_eq!(json["code"], 4);
        assert_eq!(json["cniVersion"], "1.0.0");
        assert!(json.get("details").is_none());
        let ipam = CniError::Ipam {
            plugin: "host-local".into(),
            code: 999,
            msg: "no IP addresses available".into(),
            details: "range 10.0.0.0/30".into(),
        };
        let json = serde_json::to_value(ipam.result("0.4.0")).unwrap();
        assert_eq!(json["code"], 999);
        assert_eq!(json["details"], "range 10.0.0.0/30");
    }
}
