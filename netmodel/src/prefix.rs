//! Host-side interface prefixes (`--interface-prefix`, a comma-separated list, Calico's
//! `FELIX_INTERFACEPREFIX`): the first names pods' interfaces in WorkloadEndpoints (and
//! the CNI plugin's veths); the agent treats every interface starting with any of them
//! as a workload interface.
//!
//! Invariant: a parsed list is non-empty, without duplicates, and every prefix is 1 to
//! [`MAX_PREFIX_LEN`] ASCII letters or digits, so a prefix plus at least three hash
//! digits fits Linux's 15-character interface names and an iptables `-i <prefix>+`
//! match needs no quoting.

use std::str::FromStr;

/// The longest prefix (15 characters minus three hash digits).
pub const MAX_PREFIX_LEN: usize = 12;

/// A validated, ordered list of interface prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfacePrefixes(Vec<String>);

/// Why a prefix list is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The list is empty.
    #[error("no interface prefix given")]
    Empty,
    /// A prefix is empty, too long or has characters other than ASCII letters and digits.
    #[error("interface prefix {0:?}: 1 to 12 ASCII letters or digits")]
    Invalid(String),
    /// A prefix appears twice.
    #[error("interface prefix {0:?} given twice")]
    Duplicate(String),
}

impl InterfacePrefixes {
    /// The prefix that names pods' interfaces (the first).
    pub fn primary(&self) -> &str {
        &self.0[0]
    }

    /// Every prefix, in order.
    pub fn all(&self) -> &[String] {
        &self.0
    }

    /// True when `iface` starts with one of the prefixes.
    pub fn matches(&self, iface: &str) -> bool {
        self.0.iter().any(|p| iface.starts_with(p.as_str()))
    }
}

impl Default for InterfacePrefixes {
    fn default() -> Self {
        InterfacePrefixes(vec![crate::DEFAULT_INTERFACE_PREFIX.to_string()])
    }
}

impl FromStr for InterfacePrefixes {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out: Vec<String> = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if p.len() > MAX_PREFIX_LEN || !p.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(PrefixError::Invalid(p.to_string()));
            }
            if out.iter().any(|o| o == p) {
                return Err(PrefixError::Duplicate(p.to_string()));
            }
            out.push(p.to_string());
        }
        if out.is_empty() {
            return Err(PrefixError::Empty);
        }
        Ok(InterfacePrefixes(out))
    }
}

impl std::fmt::Display for InterfacePrefixes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_lists_parse_and_validate() {
        let p: InterfacePrefixes = "cali, eni,veth".parse().unwrap();
        assert_eq!(p.primary(), "cali");
        assert_eq!(p.all().len(), 3);
        assert!(p.matches("eni123") && p.matches("cali0") && !p.matches("eth0"));
        assert_eq!(p.to_string(), "cali,eni,veth");
        assert_eq!("".parse::<InterfacePrefixes>(), Err(PrefixError::Empty));
        assert!(matches!(
            "cali,cali".parse::<InterfacePrefixes>(),
            Err(PrefixError::Duplicate(_))
        ));
        assert!(matches!(
            "cali+".parse::<InterfacePrefixes>(),
            Err(PrefixError::Invalid(_))
        ));
        assert!(matches!(
            "abcdefghijklm".parse::<InterfacePrefixes>(),
            Err(PrefixError::Invalid(_))
        ));
        assert_eq!(InterfacePrefixes::default().primary(), "cali");
    }
}
