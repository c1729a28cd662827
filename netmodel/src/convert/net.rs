//! IP address and CIDR parsing into the model's canonical text form.
//!
//! Canonical: the network address (host bits cleared) in Rust's standard formatting
//! (dotted quad; RFC 5952 for IPv6) and an explicit prefix length, so equal networks are
//! equal strings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ConvertError;

/// A single address as a host network: `/32` or `/128`.
pub(super) fn host_net(ip: &str) -> Result<String, ConvertError> {
    let addr: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| ConvertError::BadCidr(ip.to_string()))?;
    Ok(match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    })
}

/// A plain address, validated and printed canonically.
pub(super) fn address(ip: &str) -> Result<IpAddr, ConvertError> {
    ip.trim()
        .parse()
        .map_err(|_| ConvertError::BadCidr(ip.to_string()))
}

/// A CIDR (`10.0.0.0/8`) or a bare address (taken as a host network), masked to its
/// network address.
pub(super) fn cidr(text: &str) -> Result<String, ConvertError> {
    let bad = || ConvertError::BadCidr(text.to_string());
    let Some((addr, len)) = text.trim().split_once('/') else {
        return host_net(text);
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let len: u32 = len.parse().map_err(|_| bad())?;
    match addr {
        IpAddr::V4(a) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            Ok(format!("{}/{len}", Ipv4Addr::from(u32::from(a) & mask)))
        }
        IpAddr::V6(a) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            Ok(format!("{}/{len}", Ipv6Addr::from(u128::from(a) & mask)))
        }
        _ => Err(bad()),
    }
}

/// Every entry of `nets` through [`cidr`].
pub(super) fn cidrs(nets: &[String]) -> Result<Vec<String>, ConvertError> {
    nets.iter().map(|n| cidr(n)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_masked_and_canonical() {
        assert_eq!(cidr("10.1.2.3/8").unwrap(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3").unwrap(), "10.1.2.3/32");
        assert_eq!(cidr("0.0.0.0/0").unwrap(), "0.0.0.0/0");
        assert_eq!(cidr("fd00:0:0::1/64").unwrap(), "fd00::/64");
        assert_eq!(cidr("::/0").unwrap(), "::/0");
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(matches!(cidr(bad), Err(ConvertError::BadCidr(_))), "{bad}");
        }
        assert_eq!(host_net("fd00::0001").unwrap(), "fd00::1/128");
    }
}
